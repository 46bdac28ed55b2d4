"""`ascend-conformance stack [--install] [--check] [--json]`: the systems under test this environment has.

Without flags: one line per package (vllm, vllm_ascend): version, host install or project stack, where.
``--install`` installs what is missing of the pinned pair (``ascend_conformance/sut/release.py``) and
leaves host installs alone (never torch); ``--vllm-ascend-source DIR`` links your own vllm-ascend
checkout instead of the pinned source. ``--check`` imports the modules the SUT adapters drive in a fresh
interpreter (exit 1 with the error when they do not import).
"""
from __future__ import annotations

NAME = "stack"
HELP = "show (or --install) the vLLM / vllm-ascend systems under test of this environment"


def add_arguments(parser) -> None:
    parser.add_argument("--install", action="store_true", help="install what is missing of the pinned pair")
    parser.add_argument("--vllm-ascend-source", metavar="DIR",
                        help="with --install: use this vllm-ascend source checkout (linked, not copied)")
    parser.add_argument("--check", action="store_true", help="import the modules the SUT adapters drive")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of lines")


def run(args) -> int:
    import json

    from ascend_conformance.errors import ConfigError
    from ascend_conformance.sut import release, stack

    if args.vllm_ascend_source and not args.install:
        raise ConfigError("--vllm-ascend-source needs --install")
    log = (lambda line: None) if args.json else print
    packages = stack.install(vllm_ascend_source=args.vllm_ascend_source, log=log) if args.install else stack.inspect()
    error = stack.import_check() if args.check else None
    if args.json:
        print(json.dumps({"pinned": {"vllm": release.VLLM_VERSION, "vllm_ascend": release.VLLM_ASCEND_VERSION},
                          "packages": {name: {"version": p.version, "origin": p.origin, "location": p.location}
                                       for name, p in packages.items()},
                          **({"import_check": error or "ok"} if args.check else {})}, indent=1))
    else:
        for package in packages.values():
            print(package.describe())
        if args.check:
            print(f"import check: {error or 'ok'}")
    return 1 if error else 0
