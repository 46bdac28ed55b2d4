"""EPLB: balancedness of the placement and the cost of redistributing expert weights.

1. Balancedness (mean GPU load / max GPU load, mean and worst over layers) of DeepSeek's placement
   (``rebalance_experts``) against the round-robin baseline, for token loads drawn from a uniform, a
   Zipf 1.0 and a Zipf 1.5 popularity over experts (each layer its own popularity order), with and
   without redundant slots. Pure computation.
2. Redistribution from the round-robin placement to the rebalanced one on a world of ``--world-size``
   ranks over a dynamic_eplb group, the expert weights and maps on each rank's device: time per layer (rank-max), bytes received per rank and layer, and the
   peak extra memory per rank MEASURED with ``platform.get().measure_peak()`` against one layer's moved
   experts + O(E).

    python benchmarks/eplb.py [--world-size 4] [--experts 32] [--redundant 8] [--layers 8] [--hidden 256]
                              [--intermediate 128] [--iters 5] [--json reports/bench_eplb.json]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ascend_conformance.report.benchmark_json import benchmark_entry, document, figure_entry, write  # noqa: E402


def write_json(path: str, entries: list) -> None:
    print(f"wrote {write(path, document(entries))}")

LOADS = (("uniform", 0.0), ("zipf1.0", 1.0), ("zipf1.5", 1.5))


def balancedness_table(num_layers: int, num_experts: int, num_gpus: int, redundant_options, num_nodes: int = 1,
                       num_groups: int = 1, tokens: int = 8192, top_k: int = 8) -> list:
    from ascend_conformance.eplb import balancedness, rebalance_experts, round_robin_placement, summarize_balancedness
    from ascend_conformance.eplb.loads import sampled_zipf_loads

    rows = []
    for load_name, exponent in LOADS:
        loads = sampled_zipf_loads(num_layers, num_experts, exponent, tokens, top_k, seed=int(exponent * 10) + 1)
        for redundant in redundant_options:
            replicas = num_experts + redundant
            rr = round_robin_placement(num_layers, num_experts, replicas, num_gpus)
            eplb = rebalance_experts(loads, replicas, num_groups, num_nodes, num_gpus)
            for placement, (phy2log, _, logcnt) in (("round_robin", rr), ("eplb", eplb)):
                summary = summarize_balancedness(balancedness(loads, phy2log, logcnt, num_gpus))
                rows.append({"load": load_name, "placement": placement, "replicas": replicas, "experts": num_experts,
                             "gpus": num_gpus, "layers": num_layers, "mean": summary.mean, "worst": summary.worst})
    return rows


def _expert_weights(layer: int, expert: int, hidden: int, inter: int):
    import torch

    gen = torch.Generator().manual_seed(100_003 * layer + expert)
    return torch.randn(2 * inter, hidden, generator=gen), torch.randn(hidden, inter, generator=gen)


def _local(phy2log, rank: int, world_size: int, hidden: int, inter: int, device) -> list:
    import torch

    slots = phy2log.shape[1] // world_size
    out = []
    for layer, row in enumerate(phy2log.tolist()):
        pairs = [_expert_weights(layer, e, hidden, inter) for e in row[rank * slots:(rank + 1) * slots]]
        out.append([torch.stack([p[i] for p in pairs]).to(device) for i in (0, 1)])
    return out


def _log2phy(phy2log, num_experts: int):
    import torch

    logcnt = torch.stack([torch.bincount(row, minlength=num_experts) for row in phy2log])
    log2phy = torch.full((phy2log.shape[0], num_experts, int(logcnt.max())), -1, dtype=torch.int64)
    for layer, row in enumerate(phy2log.tolist()):
        seen = [0] * num_experts
        for slot, e in enumerate(row):
            log2phy[layer, e, seen[e]] = slot
            seen[e] += 1
    return log2phy, logcnt


def redistribution_rank(num_layers: int, num_experts: int, redundant: int, hidden: int, inter: int,
                        iters: int) -> dict:
    """Round-robin -> rebalanced (Zipf 1.5) and back, ``iters`` times; per-layer times and measured peaks."""
    import torch
    import torch.distributed as dist

    from ascend_conformance import bench, platform
    from ascend_conformance.eplb import rebalance_experts, round_robin_placement
    from ascend_conformance.eplb.loads import sampled_zipf_loads
    from ascend_conformance.eplb.redistribute import ExpertState, rebalance
    from ascend_conformance.harness import rank_context

    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device(rank_context().device)  # weights and maps on the rank's device, placements on the host
    group = dist.new_group(list(range(world_size)))  # dynamic_eplb: EP ranks, its own communicator
    replicas = num_experts + redundant
    loads = sampled_zipf_loads(num_layers, num_experts, 1.5, 8192, 8, seed=15)
    rr = round_robin_placement(num_layers, num_experts, replicas, world_size)
    eplb = rebalance_experts(loads, replicas, 1, 1, world_size)
    targets = [eplb, rr]
    state = ExpertState.create(rank, world_size, _local(rr[0], rank, world_size, hidden, inter, device),
                               *(t.to(device) for t in (rr[0], *_log2phy(rr[0], num_experts))))
    layer_times, peaks, received = [], [], []
    dist.barrier(group=group)  # first use of the communicator by every rank (NCCL/HCCL P2P note)
    for it in range(2 * iters):
        phy2log = targets[it % 2][0]
        log2phy, logcnt = _log2phy(phy2log, num_experts)  # the caller's new maps: not part of the move
        dist.barrier()
        with platform.get().measure_peak() as peak:
            stats = rebalance(state, phy2log, log2phy, logcnt, group)
        layer_times.append([s.seconds for s in stats.layers])
        peaks.append(peak.peak_bytes)
        received.append([s.received for s in stats.layers])
    expected = _local(targets[(2 * iters - 1) % 2][0], rank, world_size, hidden, inter, device)
    for layer, (got, want) in enumerate(zip(state.weights, expected)):
        if not all(torch.equal(a, b) for a, b in zip(got, want)):
            raise AssertionError(f"rank {rank}: layer {layer} weights differ from the placement after the moves")
    per_iteration = bench.rank_max([sum(t) for t in layer_times])
    expert_bytes = (2 * inter * hidden + hidden * inter) * 4
    # One layer's moved experts on this rank (distinct experts written into changed slots), from the placements.
    slots = replicas // world_size
    lo, hi = rank * slots, (rank + 1) * slots
    moved = max(len({int(b[layer, s]) for s in range(lo, hi) if a[layer, s] != b[layer, s]})
                for a, b in ((rr[0], eplb[0]), (eplb[0], rr[0])) for layer in range(num_layers))
    return {"rank": rank, "per_iteration_s": per_iteration, "peaks": peaks, "received": received,
            "expert_bytes": expert_bytes, "method": peak.method, "layers": num_layers,
            "budget_bytes": moved * expert_bytes + 64 * num_experts + 1024}


def redistribution_summary(results: list) -> dict:
    import statistics

    layers = results[0]["layers"]
    per_layer = [t / layers for t in results[0]["per_iteration_s"]]
    rows = []
    for r in results:
        forward = [r["received"][i] for i in range(0, len(r["received"]), 2)]  # round-robin -> eplb moves
        worst_receive = max(max(x) for x in r["received"]) * r["expert_bytes"]
        rows.append({"rank": r["rank"], "received_per_layer_rr_to_eplb": forward[0],
                     "max_layer_receive_bytes": worst_receive, "measured_peak_bytes": max(r["peaks"]),
                     "budget_bytes": r["budget_bytes"]})
    return {"per_layer_s": per_layer, "median_per_layer_s": statistics.median(per_layer), "ranks": rows,
            "expert_bytes": results[0]["expert_bytes"], "method": results[0]["method"]}


def print_balancedness(rows: list) -> None:
    print("EPLB balancedness (mean GPU load / max GPU load; mean and worst over layers)")
    print(f"  {'load':<10}{'slots':>6}{'round-robin mean':>18}{'worst':>8}{'eplb mean':>12}{'worst':>8}")
    keyed = {(r["load"], r["replicas"], r["placement"]): r for r in rows}
    for load, replicas in sorted({(r["load"], r["replicas"]) for r in rows}, key=lambda x: ([l for l, _ in LOADS].index(x[0]), x[1])):
        a, b = keyed[load, replicas, "round_robin"], keyed[load, replicas, "eplb"]
        print(f"  {load:<10}{replicas:>6}{a['mean']:>18.4f}{a['worst']:>8.4f}{b['mean']:>12.4f}{b['worst']:>8.4f}")


def print_redistribution(summary: dict, world_size: int, experts: int, replicas: int, hidden: int, inter: int) -> None:
    e = summary["expert_bytes"]
    print(f"redistribution round-robin <-> eplb (Zipf 1.5), {world_size} ranks, {experts} experts in {replicas} slots, "
          f"expert {e} B (H {hidden}, I {inter}, fp32)")
    print(f"  time per layer (rank-max, median over moves): {summary['median_per_layer_s'] * 1e3:.3f} ms")
    print(f"  {'rank':<6}{'experts received per layer (rr->eplb)':<42}{'max layer receive B':>20}"
          f"{'measured peak B':>17}{'budget B':>12}")
    for r in summary["ranks"]:
        print(f"  {r['rank']:<6}{str(r['received_per_layer_rr_to_eplb']):<42}{r['max_layer_receive_bytes']:>20}"
              f"{r['measured_peak_bytes']:>17}{r['budget_bytes']:>12}")
    print(f"  (peak measured with {summary['method']}; budget = one layer's moved experts + 64 B x E + 1 KiB)")


def bench_entries(balance_rows: list, summary: dict, results: list, world_size: int, experts: int, replicas: int,
                  hidden: int, inter: int, fullname_prefix: str = "benchmarks/eplb.py") -> list:
    out = []
    for r in balance_rows:
        variant = f"{r['load']} R={r['replicas']}"
        name = f"balancedness[{r['placement']}-{variant}]"
        figures = {"area": "eplb", "op": "eplb_balancedness", "placement": r["placement"], "load": r["load"],
                   "variant": f"{r['placement']} {variant}", "balancedness": r["mean"],
                   "balancedness_worst": r["worst"], "world_size": r["gpus"], "experts": r["experts"],
                   "replicas": r["replicas"], "layers": r["layers"]}
        out.append(figure_entry(name, f"{fullname_prefix}::{name}", figures, group="eplb_balancedness",
                                params={"placement": r["placement"], "load": r["load"], "replicas": r["replicas"]}))
    figures = {"area": "eplb", "op": "eplb_redistribution", "world_size": world_size, "dtype": "float32",
               "size_bytes": summary["expert_bytes"], "experts": experts, "replicas": replicas,
               "hidden": hidden, "intermediate": inter, "variant": "round_robin<->eplb zipf1.5",
               "peak_memory_bytes": max(r["measured_peak_bytes"] for r in summary["ranks"]),
               "max_layer_receive_bytes": max(r["max_layer_receive_bytes"] for r in summary["ranks"]),
               "per_rank": summary["ranks"], "peak_method": summary["method"]}
    out.append(benchmark_entry("redistribution_per_layer", f"{fullname_prefix}::redistribution_per_layer",
                               summary["per_layer_s"], extra_info=figures, group="eplb_redistribution"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--redundant", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--balance-experts", type=int, default=64)
    parser.add_argument("--balance-gpus", type=int, default=8)
    parser.add_argument("--balance-layers", type=int, default=16)
    parser.add_argument("--json", default=None, help="write pytest-benchmark JSON here")
    args = parser.parse_args()

    balance = balancedness_table(args.balance_layers, args.balance_experts, args.balance_gpus,
                                 (0, args.balance_gpus * 2))
    print_balancedness(balance)

    from ascend_conformance.harness.world import standalone_runner

    with standalone_runner() as runner:
        results = runner.run(args.world_size, redistribution_rank,
                             (args.layers, args.experts, args.redundant, args.hidden, args.intermediate,
                              args.iters), {}, "bench::eplb")
    summary = redistribution_summary(results)
    replicas = args.experts + args.redundant
    print_redistribution(summary, args.world_size, args.experts, replicas, args.hidden, args.intermediate)
    if args.json:
        write_json(args.json, bench_entries(balance, summary, results, args.world_size, args.experts, replicas,
                                       args.hidden, args.intermediate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
