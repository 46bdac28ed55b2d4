"""`ascend-conformance topology`: print the reference rank layout of a parallel configuration, or the one a
live vLLM / vllm-ascend builds.

    python -m ascend_conformance topology --world-size 8 --tp 2 --pp 2 --dp 2 --otp 2 --json
    {"world": [[0, 1, 2, 3, 4, 5, 6, 7]], "tp": [[0, 1], [2, 3], [4, 5], [6, 7]], ...}

Without ``--json`` it prints one table per group kind. ``--check`` also runs the invariant checker
(exit 1 on a violation); with ``--layout FILE`` (a JSON object in the ``--json`` format, e.g. captured
from a live system) it checks and compares that layout instead of the reference. A bad configuration
raises ConfigError, which the CLI turns into one ``error: ...`` line and exit code 2.

``--live vllm`` / ``--live vllm-ascend`` runs the installed release's own group construction on a world of
ranks of the detected platform (the harness's standalone runner; adapters in ``ascend_conformance/sut/``) and
prints what it built, in the same shapes; ``--check`` then judges that layout (exit 1 on a violation). A
SUT that is not installed, or a configuration the release refuses, is one ``error: ...`` line naming the
release and its own message, exit 2; a release that crashes building the groups exits 1 with its error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from ascend_conformance.errors import ConfigError
from ascend_conformance.invariants import check_layout, compare_layouts
from ascend_conformance.sut import CLI_NAMES
from ascend_conformance.topology import ParallelConfig, build_layout

NAME = "topology"
LIVE_TIMEOUT = 900.0
HELP = "print every parallel group's rank lists for a configuration (docs/layout.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sizes = parser.add_argument_group("parallel sizes")
    sizes.add_argument("--world-size", type=int, required=True, metavar="W")
    sizes.add_argument("--tp", type=int, required=True, metavar="T", help="tensor parallel size")
    sizes.add_argument("--pp", type=int, required=True, metavar="P", help="pipeline parallel size")
    sizes.add_argument("--dp", type=int, required=True, metavar="D", help="data parallel size")
    sizes.add_argument("--pcp", type=int, default=1, metavar="C",
                       help="prefill context parallel size (default 1)")

    ascend = parser.add_argument_group("vllm-ascend groups")
    ascend.add_argument("--otp", type=int, metavar="N", help="o_proj fine-grained TP size (divides DP)")
    ascend.add_argument("--lmhead-tp", type=int, metavar="N", help="LM head fine-grained TP size")
    ascend.add_argument("--embed-tp", type=int, metavar="N", help="embedding fine-grained TP size")
    ascend.add_argument("--mlp-tp", type=int, metavar="N", help="MLP fine-grained TP size")
    ascend.add_argument("--flashcomm2-otp", type=int, metavar="N",
                        help="FlashComm2 o_proj TP size (divides TP)")
    ascend.add_argument("--layer-sharding", action="store_true", help="build shard_weight groups")
    ascend.add_argument("--dsa-cp", action="store_true",
                        help="DSA context parallel: shard_weight spans the whole PP stage")

    pd = parser.add_argument_group("PD disaggregation (p_tp groups on a KV producer)")
    pd.add_argument("--pd-tp-ratio", type=int, metavar="N", help="prefill TP / decode TP (divides TP)")
    pd.add_argument("--pd-head-ratio", type=int, metavar="N", help="p_tp groups exist when > 1")
    pd.add_argument("--num-head-replica", type=int, metavar="N")
    pd.add_argument("--kv-producer", action="store_true", help="this instance is the KV producer")

    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object {group name: [[ranks], ...]}")
    out.add_argument("--check", action="store_true",
                     help="run the invariant checker too; exit 1 on a violation")
    out.add_argument("--layout", metavar="FILE",
                     help="with --check: check this JSON layout (e.g. captured live) against the config")

    live = parser.add_argument_group("systems under test (docs/systems_under_test.md)")
    live.add_argument("--live", choices=[name for name in CLI_NAMES if name != "reference"],
                      help="build the groups with the installed release on a world of W ranks and print those")
    live.add_argument("--rank-timeout", type=float, default=LIVE_TIMEOUT, metavar="SECONDS",
                      help=f"with --live: how long the world may take (default {LIVE_TIMEOUT:g})")


def config_from_args(args: argparse.Namespace) -> ParallelConfig:
    return ParallelConfig(
        world_size=args.world_size, tp=args.tp, pp=args.pp, dp=args.dp, pcp=args.pcp,
        otp=args.otp, lmhead_tp=args.lmhead_tp, embed_tp=args.embed_tp, mlp_tp=args.mlp_tp,
        flashcomm2_otp=args.flashcomm2_otp, layer_sharding=args.layer_sharding, dsa_cp=args.dsa_cp,
        pd_tp_ratio=args.pd_tp_ratio, pd_head_ratio=args.pd_head_ratio,
        num_head_replica=args.num_head_replica, kv_producer=args.kv_producer)


def format_table(config: ParallelConfig, layout: dict[str, list[list[int]]]) -> str:
    """One table per kind: group index and its ranks in group-rank order."""
    width = len(str(config.world_size - 1))
    lines = [config.describe()]
    for kind, groups in layout.items():
        sizes = sorted({len(group) for group in groups})
        size_text = " or ".join(map(str, sizes))
        lines += ["", f"{kind}: {len(groups)} group{'s' if len(groups) != 1 else ''} of "
                      f"{size_text} rank{'s' if sizes != [1] else ''}",
                  f"  {'#':>4}  ranks (group rank order)"]
        lines += [f"  {index:>4}  " + " ".join(f"{rank:>{width}}" for rank in group)
                  for index, group in enumerate(groups)]
    return "\n".join(lines)


def _load_layout(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            layout = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read layout {path}: {exc}".replace("\n", " ")) from None
    if not isinstance(layout, dict):
        raise ConfigError(f"layout {path} is not a JSON object of group name -> rank lists")
    return layout


def capture_live(sut: str, config: ParallelConfig, timeout: float) -> dict | str:
    """The layout release ``sut`` builds for ``config`` on a world of the detected platform, or (a crash) the
    release's error. A missing SUT, a feature the release lacks or a refused configuration raises
    ConfigError / SutRefused."""
    from ascend_conformance.harness.pool import RankFailure
    from ascend_conformance.harness.world import standalone_runner
    from ascend_conformance.layout_verdict import merge_rank_views
    from ascend_conformance.sut import stack
    from ascend_conformance.sut.captured_layouts import adapter, capture_views, outcome

    reason = stack.unavailable_reason(sut)
    if reason:
        raise ConfigError(f"cannot build {sut}'s groups: {reason}")
    absent = adapter(sut).missing(config) or adapter(sut).host_reason(config)
    if absent:
        raise ConfigError(f"cannot build {sut}'s groups of {config.describe()}: {absent}")
    n = config.world_size
    fields = dataclasses.asdict(config)
    with standalone_runner(rank_timeout=timeout, min_cpu_slots=n, max_warm_ranks=n,
                           preload=["ascend_conformance.sut.dependency_preload"]) as runner:
        skip = runner.skip_reason(n)
        if skip:
            raise ConfigError(f"cannot build {sut}'s groups here: {skip}")
        try:
            per_rank = runner.run(n, capture_views, (sut, [fields]), {}, f"topology --live {sut}", timeout)
        except RankFailure as failure:
            return str(failure)
    what, value = outcome([captured[0] for captured in per_rank])
    if what == "refused":
        from ascend_conformance.errors import SutRefused

        raise SutRefused(value)
    if what == "not_in_release":
        raise ConfigError(f"cannot build {sut}'s groups of {config.describe()}: {value}")
    if what == "crashed":
        return value
    return merge_rank_views(value)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.layout and not args.check:
        raise ConfigError("--layout is only used with --check")
    if args.live:
        if args.layout:
            raise ConfigError("--layout and --live exclude each other: --live checks the layout it captures")
        return _run_live(args, config)
    reference = build_layout(config)

    if args.json:
        print(json.dumps(reference))
    else:
        print(format_table(config, reference))
    if not args.check:
        return 0

    # With --json, stdout holds exactly one JSON object; the check report goes to stderr.
    report = sys.stderr if args.json else sys.stdout
    checked = _load_layout(args.layout) if args.layout else reference
    violations = check_layout(checked, config)
    subject = f"layout {args.layout}" if args.layout else "reference layout"
    if not args.json:
        print(file=report)
    if violations:
        print(f"{subject}: {len(violations)} violation{'s' if len(violations) > 1 else ''}", file=report)
        for violation in violations:
            print(f"  [{violation.rule}] {violation.explanation}", file=report)
    else:
        print(f"{subject}: all invariants hold ({len(checked)} kinds)", file=report)
    if args.layout:
        differences = compare_layouts(reference, checked)
        print(f"differences from the reference: {len(differences)}", file=report)
        for difference in differences:
            print(f"  [{difference.change}] {difference.explanation}", file=report)
    return 1 if violations else 0


def _run_live(args: argparse.Namespace, config: ParallelConfig) -> int:
    from ascend_conformance.layout_verdict import judge
    from ascend_conformance.sut.captured_layouts import adapter

    sut = CLI_NAMES[args.live]
    if not math.isfinite(args.rank_timeout) or args.rank_timeout <= 0:
        raise ConfigError(f"--rank-timeout must be a finite number of seconds > 0, got {args.rank_timeout}")
    captured = capture_live(sut, config, args.rank_timeout)
    module = adapter(sut)
    release = module.label()
    if isinstance(captured, str):
        print(f"{release} failed building the groups of {config.describe()}:\n{captured}", file=sys.stderr)
        return 1
    print(json.dumps(captured) if args.json else format_table(config, captured).replace(
        config.describe(), f"{config.describe()}: as {release} builds it", 1))
    if not args.check:
        return 0
    report = sys.stderr if args.json else sys.stdout
    judgement = judge(captured, config, module.kinds())
    if not args.json:
        print(file=report)
    subject = f"{release} layout"
    if judgement.violations:
        count = len(judgement.violations)
        print(f"{subject}: {count} violation{'s' if count > 1 else ''}", file=report)
        for violation in judgement.violations:
            print(f"  [{violation.rule}] {violation.explanation}", file=report)
    else:
        print(f"{subject}: all invariants hold ({len(judgement.kinds)} kinds)", file=report)
    print(f"differences from the reference: {len(judgement.differences)}", file=report)
    for difference in judgement.differences:
        print(f"  [{difference.change}] {difference.explanation}", file=report)
    return 1 if judgement.violations else 0
