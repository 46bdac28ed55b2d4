"""`ascend-conformance info`: the platform, its devices and the versions a report must name."""
from __future__ import annotations

import argparse
import json

NAME = "info"
HELP = "print the detected platform, devices and versions (torch, torch_npu, CANN, driver, vllm)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ascend_conformance.platform import PLATFORM_NAMES

    parser.add_argument("--platform", choices=PLATFORM_NAMES, default=None,
                        help="describe this platform instead of the detected one")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")


def run(args: argparse.Namespace) -> int:
    from ascend_conformance import platform as platforms

    plat = platforms.by_name(args.platform) if args.platform else platforms.detect()
    info = plat.describe()
    if plat.name != "npu":
        # The NPU stack is what this suite is for: say why it is not in use, every time.
        npu = platforms.NpuPlatform()
        info["npu"] = npu.unavailable_reason() or "available"
        info.update({k: v for k, v in npu.versions().items() if k not in info})
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {', '.join(value) if isinstance(value, list) else value}")
    return 0
