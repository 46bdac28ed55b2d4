"""MoE benchmarks: permute + unpermute throughput against the memory-bandwidth floor, dispatch + combine
latency / bandwidth per method against a raw all_to_all_single of the same rows, peak memory per method.

    python benchmarks/moe.py [--world-size 4] [--tokens 128] [--hidden 1024] [--experts 64] [--top-k 8]
                             [--dtype bfloat16] [--rounds 20] [--warmup 3] [--json reports/moe_bench.json]

Runs on the detected platform (gloo ranks on CPU) through the harness's warm pools; see
``ascend_conformance/bench/moe.py`` for what is measured and how bytes are counted. A method and its raw
baseline are timed alike (one platform timer around the op alone, rounds interleaved); every result is
checked once, outside the timed calls. Prints a table and,
with --json, writes pytest-benchmark-schema JSON (what ``ascend-conformance compare`` and the HTML report
read). The ranks come from a forkserver, which re-imports this file: keep everything under the guard.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=4, help="ranks for dispatch + combine (DP = EP)")
    parser.add_argument("--methods", default="native_allgather,allgather,alltoall,mc2")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per rank for dispatch + combine")
    parser.add_argument("--throughput-tokens", type=int, default=2048, help="tokens for permute + unpermute")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--copy-mib", type=int, default=256, help="size of the copy that measures memory bandwidth")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", default=None, help="write pytest-benchmark-schema JSON here")
    return parser.parse_args(argv)


def run(args) -> tuple[dict, dict | None, dict]:
    from ascend_conformance.harness.world import standalone_runner
    from ascend_conformance.bench import moe as benchmark
    from ascend_conformance.report.progress import Progress

    shape = {"world_size": args.world_size, "tokens": args.tokens, "throughput_tokens": args.throughput_tokens,
             "hidden": args.hidden, "experts": args.experts, "top_k": args.top_k, "dtype": args.dtype}
    method_names = args.methods.split(",")
    with standalone_runner(min_cpu_slots=args.world_size) as runner, \
            Progress("moe benchmark", total=len(method_names) + (not args.skip_throughput)) as progress:
        throughput = None
        if not args.skip_throughput:
            throughput = runner.run(1, benchmark.permute_unpermute_on_rank,
                                    (args.throughput_tokens, args.hidden, args.experts, args.top_k, args.dtype),
                                    {"rounds": args.rounds, "warmup": args.warmup,
                                     "copy_bytes": args.copy_mib << 20}, "bench::moe::throughput")[0]
            progress.advance(detail="permute+unpermute throughput")
        methods = {}
        for method in method_names:
            scenario = benchmark.bench_scenario(method, args.world_size, args.tokens, args.hidden, args.experts,
                                                args.top_k, args.dtype)
            per_rank = runner.run(args.world_size, benchmark.dispatch_combine_on_rank, (scenario.to_dict(),),
                                  {"rounds": args.rounds, "warmup": args.warmup}, f"bench::moe::{method}")
            methods[method] = benchmark.method_figures(method, per_rank)
            progress.advance(detail=method)
    return shape, throughput, methods


def main(argv=None) -> int:
    args = parse_args(argv)
    from ascend_conformance.bench import moe as benchmark

    shape, throughput, methods = run(args)
    print(benchmark.format_table(shape, throughput, methods))
    if args.json:
        from ascend_conformance.report import benchmark_json

        entries = benchmark.benchmark_entries(shape, throughput, methods)
        print(f"wrote {benchmark_json.write(args.json, benchmark_json.document(entries))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
