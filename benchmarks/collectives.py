"""Collective benchmarks over every group kind of a layout, nccl-tests style, with the raw-loop baseline.

For each world size, each group kind (groups of more than one rank) and each collective, sweep message
sizes and print a table per (kind, op): size, count, type, time in us (median over rounds of the slowest
rank's per-op time), algbw and busbw (GB/s, nccl-tests' factors), #wrong from a correctness pass
outside the timed loop, and the same op as a hand-written torch.distributed loop with the ratio of the
two. Both loops are timed the same way (``bench.time_round``: one platform timer — device events on an
accelerator — around the ops alone), in alternating rounds. Worlds come from the suite's warm rank pools
(``WorldRunner``), not from pytest; run it with the host to itself.

    python benchmarks/collectives.py -b 8 -e 1M -f 4 --world-size 2,4,8 --ops all_reduce,all_gather \\
        --groups tp,ep --dtype float32 --iters 20 --warmup 5 --noise-floor --json reports/collectives.json

The layout per world size is the suite's representative configuration (``bench.representative_config``:
8 ranks DP2 PP2 TP2 with OTP 2, FlashComm2 OTP 2 and layer sharding; 4 ranks TP4 with FlashComm2 OTP 2,
layer sharding and p_tp; 2 ranks DP2 with the fine-grained TP kinds); ``--tp/--pp/--dp/--pcp`` replace it
with a plain layout of those sizes.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _csv(text: str | None) -> tuple | None:
    return None if text is None else tuple(item.strip() for item in text.split(",") if item.strip())


def parse_args(argv=None) -> argparse.Namespace:
    from ascend_conformance import bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--minbytes", default="8", help="smallest message, bytes with K/M/G (default 8)")
    parser.add_argument("-e", "--maxbytes", default="64K", help="largest message (default 64K)")
    parser.add_argument("-f", "--stepfactor", type=int, default=4, help="size multiplication factor (default 4)")
    parser.add_argument("--world-size", default="8", help="world sizes, comma separated (default 8)")
    parser.add_argument("--ops", default=",".join(bench.COLLECTIVES),
                        help=f"collectives, comma separated (default {','.join(bench.COLLECTIVES)})")
    parser.add_argument("--groups", default=None,
                        help="group kinds, comma separated (default: every kind with groups of more than one rank)")
    parser.add_argument("--dtype", default="float32", choices=sorted(bench.DTYPES))
    parser.add_argument("--iters", type=int, default=20, help="back-to-back ops per timed round (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed ops before timing (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (default 5)")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also time the raw loop against itself (A/A) and print that ratio next to suite/raw: "
                             "the spread a suite/raw ratio must be read against on a shared host")
    for size in ("tp", "pp", "dp", "pcp"):
        parser.add_argument(f"--{size}", type=int, default=None,
                            help=f"{size.upper()} size of a plain layout instead of the representative one")
    parser.add_argument("--json", default=None, help="also write pytest-benchmark JSON here")
    parser.add_argument("--rank-timeout", type=float, default=1800.0, help="seconds one world may take")
    return parser.parse_args(argv)


def layout_config(args, world_size: int) -> dict:
    from ascend_conformance import bench

    if all(getattr(args, size) is None for size in ("tp", "pp", "dp", "pcp")):
        return bench.representative_config(world_size)
    return dict(world_size=world_size, tp=args.tp or 1, pp=args.pp or 1, dp=args.dp or 1, pcp=args.pcp or 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ascend_conformance import bench
    from ascend_conformance import platform as platforms
    from ascend_conformance.errors import ConfigError
    from ascend_conformance.harness.world import standalone_runner
    from ascend_conformance.report import benchmark_json
    from ascend_conformance.report.progress import Progress

    try:
        world_sizes = [int(w) for w in _csv(args.world_size)]
        sizes = tuple(bench.size_sweep(args.minbytes, args.maxbytes, args.stepfactor))
        specs = {w: bench.SweepSpec(config=layout_config(args, w), ops=_csv(args.ops), kinds=_csv(args.groups),
                                    dtype=args.dtype, sizes=sizes, iters=args.iters, warmup=args.warmup,
                                    rounds=args.rounds, noise_floor=args.noise_floor) for w in world_sizes}
        for spec in specs.values():
            bench.measured_kinds(spec)  # unknown kinds fail here, before any world starts
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    plat = platforms.get()
    reason = plat.unavailable_reason()
    if reason:
        print(f"error: platform {plat.name} unavailable: {reason}", file=sys.stderr)
        return 2
    entries = []
    with standalone_runner(rank_timeout=args.rank_timeout, min_cpu_slots=max(world_sizes),
                           max_warm_ranks=max(world_sizes)) as runner, \
            Progress("collective sweep", total=len(specs)) as progress:
        for world_size, spec in specs.items():
            skip = runner.skip_reason(world_size)
            if skip:
                print(f"# world {world_size}: skipped: {skip}")
                continue
            from ascend_conformance.topology import ParallelConfig

            print(f"\n# world {world_size}: {ParallelConfig(**spec.config).describe()}, platform {plat.name} "
                  f"({plat.backend}), dtype {spec.dtype}", flush=True)
            for kind, why in bench.skipped_kinds(spec).items():
                print(f"# {kind}: skipped ({why})")
            rows = runner.run(world_size, bench.run_sweep, (spec,), {}, f"benchmarks/collectives.py::w{world_size}")[0]
            print(bench.format_table(rows, world_size, spec), flush=True)
            entries += bench.benchmark_entries(rows, world_size, spec, plat.name)
            progress.advance(detail=f"world {world_size}")
    if args.json:
        path = benchmark_json.write(args.json, benchmark_json.document(entries))
        print(f"\n# wrote {len(entries)} benchmarks to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
