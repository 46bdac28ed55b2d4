"""Shared-weight series: forward time per layer with prefetch_step k = 0, 1, 2 and memory per rank.

For a stack of ``--layers`` Linear(H, H) layers starting at ``--start`` (a later PP stage), on a world of
``--world-size`` ranks, every figure the rank-max over ranks of the per-iteration time:

* unsharded — every weight resident on every rank: the forward is compute alone (no communication);
* broadcast alone — each layer's weight broadcast from its owner, one after the other, no compute;
* sharded k — the series with prefetch_step k: ``reach_layer`` + forward per layer.

``hidden = (unsharded + broadcast - sharded_k) / broadcast`` is the share of the broadcast the prefetch
hides (0: fully exposed, 1: fully hidden). Weights, windows and activations live on the rank's device.
Memory per rank: weight storage counted from the live tensors on the rank's device (gc, deduplicated by
data_ptr) against docs/shared_weight.md's (owned)*W + (k+1)*W, and the peak
extra bytes allocated during a pass (``platform.get().measure_peak()``: activations only, no weights).

    python benchmarks/shared_weight.py [--world-size 2] [--hidden 1024] [--tokens 32] [--layers 8]
                                       [--start 3] [--iters 20] [--json reports/bench_shared_weight.json]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ascend_conformance.report.benchmark_json import benchmark_entry, document, figure_entry, write  # noqa: E402


def write_json(path: str, entries: list) -> None:
    print(f"wrote {write(path, document(entries))}")

KS = (0, 1, 2)


def _weight(layer: int, hidden: int):
    import torch

    gen = torch.Generator().manual_seed(9173 * layer + 5)
    return torch.randn(hidden, hidden, generator=gen) / hidden ** 0.5


def _live_float_storages(device) -> dict:
    """float32 storages on ``device`` (the weights'; a transport's host copies are not device storage)."""
    import torch

    gc.collect()
    out = {}
    for obj in gc.get_objects():
        if (isinstance(obj, torch.Tensor) and not obj.is_meta and obj.dtype == torch.float32
                and obj.device == device):
            storage = obj.untyped_storage()
            if storage.nbytes() and storage.data_ptr():
                out[storage.data_ptr()] = (storage.nbytes(), obj)
    return out


def _new_bytes(before: dict, device) -> int:
    return sum(n for ptr, (n, _) in _live_float_storages(device).items() if ptr not in before)


def shared_weight_rank(hidden: int, tokens: int, count: int, start: int, ks, iters: int, warmup: int) -> dict:
    """Run on every rank of a world: timings (rank-max lists, variants interleaved) and this rank's memory."""
    import torch
    import torch.distributed as dist

    from ascend_conformance import bench, platform
    from ascend_conformance import shared_weight as sw
    from ascend_conformance.harness import rank_context

    rank, n = dist.get_rank(), dist.get_world_size()
    device = torch.device(rank_context().device)  # weights, windows and activations on the rank's device
    ranks = list(range(n))
    dist.new_group(ranks)  # the series' own communicator (a ranks list resolves to it)
    layer_ids = list(range(start, start + count))
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(1)).to(device)
    w_bytes = hidden * hidden * 4

    before = _live_float_storages(device)
    full = [_weight(i, hidden).to(device) for i in layer_ids]
    unsharded_bytes = _new_bytes(before, device)

    def unsharded_pass():
        y = x
        for w in full:
            y = torch.tanh(torch.nn.functional.linear(y, w))
        return y

    buffer = torch.empty(hidden, hidden, device=device)
    pg = dist.new_group(ranks)

    def broadcast_pass():
        for j, i in enumerate(layer_ids):
            src = i % n
            dist.broadcast(full[j] if src == rank else buffer, src=src, group=pg, async_op=True).wait()

    reference = unsharded_pass()
    variants = {"unsharded": unsharded_pass, "broadcast": broadcast_pass}
    memory, stacks = {}, {}
    for k in ks:
        if k > max(0, count - 2):
            continue
        before_k = _live_float_storages(device)  # holds the stacks of the other k: only this one's bytes are new
        layers = []
        for j, i in enumerate(layer_ids):
            layer = torch.nn.Linear(hidden, hidden, bias=False, device=device)
            layer.requires_grad_(False)
            if i % n == rank:
                layer.weight.copy_(full[j])
            layers.append(layer)
        name = f"bench_k{k}"
        for i, layer in zip(layer_ids, layers):
            sw.register_layer(name, ranks, layer, i, prefetch_step=k)
        sw.finish_setup(name)
        owned = sum(1 for i in layer_ids if i % n == rank)
        memory[k] = {"owned": owned, "theory": owned * w_bytes + (k + 1) * w_bytes,
                     "measured": _new_bytes(before_k, device)}
        del before_k

        def sharded_pass(layers=layers):
            y = x
            for layer in layers:
                sw.reach_layer(layer)
                y = torch.tanh(layer(y))
            return y

        if not torch.equal(sharded_pass(), reference):
            raise AssertionError(f"k={k}: sharded output differs from the unsharded model")
        stacks[k] = layers
        variants[f"k{k}"] = sharded_pass
    times = bench.time_interleaved(variants, warmup=warmup, rounds=iters)
    for k in stacks:
        with platform.get().measure_peak() as peak:
            variants[f"k{k}"]()
        memory[k].update(pass_peak=peak.peak_bytes, peak_method=peak.method)
        sw.get_series(f"bench_k{k}").drain()
        sw.release_series(f"bench_k{k}")
    return {"rank": rank, "unsharded": times["unsharded"], "broadcast": times["broadcast"],
            "sharded": {k: times[f"k{k}"] for k in stacks}, "unsharded_bytes": unsharded_bytes, "w_bytes": w_bytes,
            "memory": memory}


def summarize(results: list, count: int) -> dict:
    """Per-layer medians (seconds), hidden share of the broadcast per k, the memory table per rank."""
    import statistics

    r0 = results[0]  # timings are rank-max already: identical on every rank
    per_layer = lambda times: statistics.median(times) / count  # noqa: E731
    unsharded, broadcast = per_layer(r0["unsharded"]), per_layer(r0["broadcast"])
    rows = {}
    for k, times in sorted(r0["sharded"].items()):
        t = per_layer(times)
        rows[k] = {"per_layer_s": t, "vs_unsharded": t / unsharded,
                   "hidden_share": max(0.0, min(1.0, (unsharded + broadcast - t) / broadcast)) if broadcast else 0.0}
    memory = [{"rank": r["rank"], "unsharded_theory": count * r["w_bytes"], "unsharded_measured": r["unsharded_bytes"],
               **{f"k{k}": m for k, m in r["memory"].items()}} for r in results]
    return {"unsharded_per_layer_s": unsharded, "broadcast_per_layer_s": broadcast, "sharded": rows,
            "memory": memory}


def print_tables(summary: dict, world_size: int, hidden: int, tokens: int, count: int, start: int) -> None:
    print(f"shared-weight series: {count} layers from {start}, Linear({hidden}, {hidden}) fp32, {tokens} tokens, "
          f"{world_size} ranks (per layer, median of rank-max)")
    print(f"  {'unsharded (compute alone)':<30}{summary['unsharded_per_layer_s'] * 1e3:>10.3f} ms")
    print(f"  {'broadcast alone':<30}{summary['broadcast_per_layer_s'] * 1e3:>10.3f} ms")
    for k, row in summary["sharded"].items():
        print(f"  {f'sharded k={k}':<30}{row['per_layer_s'] * 1e3:>10.3f} ms   x{row['vs_unsharded']:.2f} of unsharded, "
              f"{row['hidden_share'] * 100:5.1f}% of the broadcast hidden")
    ks = sorted(summary["sharded"])
    print("  weight storage per rank (bytes): theory / measured")
    print(f"  {'rank':<6}{'unsharded':>24}" + "".join(f"{f'k={k}':>26}" for k in ks) + f"{'pass peak k=' + str(ks[-1]):>18}")
    for m in summary["memory"]:
        cells = "".join(f"{m[f'k{k}']['theory']:>12} / {m[f'k{k}']['measured']:<11}" for k in ks)
        print(f"  {m['rank']:<6}{m['unsharded_theory']:>11} / {m['unsharded_measured']:<11}{cells}"
              f"{m[f'k{ks[-1]}']['pass_peak']:>18}")


def bench_entries(summary: dict, results: list, world_size: int, hidden: int, tokens: int, count: int,
                  start: int, fullname_prefix: str = "benchmarks/shared_weight.py") -> list:
    r0 = results[0]
    common = {"area": "shared_weight", "world_size": world_size, "dtype": "float32", "size_bytes": hidden * hidden * 4,
              "hidden": hidden, "tokens": tokens, "layers": count, "start_layer": start}
    scale = lambda times: [t / count for t in times]  # noqa: E731 - per-layer seconds
    forward = {**common, "op": "shared_weight_forward"}
    out = [benchmark_entry("unsharded", f"{fullname_prefix}::unsharded", scale(r0["unsharded"]),
                           extra_info={**forward, "variant": "unsharded"}, group="shared_weight"),
           benchmark_entry("broadcast_alone", f"{fullname_prefix}::broadcast_alone", scale(r0["broadcast"]),
                           extra_info={**common, "op": "shared_weight_broadcast", "variant": "broadcast_alone"},
                           group="shared_weight")]
    for k, row in summary["sharded"].items():
        worst = max(results, key=lambda r: r["memory"][k]["measured"])["memory"][k]
        figures = {**forward, "variant": f"k={k}", "prefetch_step": k,
                   "hidden_share": row["hidden_share"], "vs_unsharded": row["vs_unsharded"],
                   "memory_bytes": worst["measured"], "memory_theory_bytes": worst["theory"],
                   "pass_peak_bytes": max(r["memory"][k]["pass_peak"] for r in results),
                   "memory_per_rank": [{"rank": r["rank"], "theory": r["memory"][k]["theory"],
                                        "measured": r["memory"][k]["measured"]} for r in results]}
        out.append(benchmark_entry(f"sharded_k{k}", f"{fullname_prefix}::sharded[k={k}]", scale(r0["sharded"][k]),
                                   extra_info=figures, params={"k": k}, group="shared_weight"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--start", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="write pytest-benchmark JSON here")
    args = parser.parse_args()

    from ascend_conformance.harness.world import standalone_runner

    with standalone_runner() as runner:
        results = runner.run(args.world_size, shared_weight_rank,
                             (args.hidden, args.tokens, args.layers, args.start, KS, args.iters, args.warmup), {},
                             "bench::shared_weight")
    summary = summarize(results, args.layers)
    print_tables(summary, args.world_size, args.hidden, args.tokens, args.layers, args.start)
    if args.json:
        write_json(args.json, bench_entries(summary, results, args.world_size, args.hidden, args.tokens,
                                            args.layers, args.start))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
