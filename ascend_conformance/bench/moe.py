"""MoE benchmarks: what the script (``benchmarks/moe.py``) and the bench suite (``suites/test_bench_moe.py``)
measure, as rank functions, plus the pytest-benchmark-schema JSON they write.

1. **permute + unpermute throughput** (one rank): the local routing steps with identity experts —
   ``native`` (NativeAllGather: argsort, index_select, weighted index_add), ``golden`` (AllGather on the
   golden init_routing_v2 / token_unpermute) and ``torch_npu`` (AllGather on the real ops, on an NPU).
   Bytes moved = 2·(N·K + N)·H·elem (permute reads x and writes N·K rows; unpermute reads them back and
   writes N rows); the floor is the same bytes at the bandwidth of a large ``copy_`` on the same device
   (read + write counted), timed round-robin with the variants in the same process. A second floor,
   ``clone()`` of the same buffer, includes what every op pays for a fresh output (on CPU the first touch
   of newly mapped pages costs about as much as the copy itself).
2. **dispatch + combine per method** (a world; DP = EP = world, TP 1): dispatch = prepare + permute,
   combine = unpermute + finalize, with identity experts (the MLP is not timed). Byte accounting
   DeepEP-style: the real routed payload of a rank is the rows of its routing entries whose expert lives
   on *another* rank, ``remote_entries · H · elem``; bandwidth = payload / time. The baseline is a raw
   ``all_to_all_single`` moving exactly the rows AllToAll moves (the same per-destination splits, local
   chunk included), once per direction, timed interleaved with the method (round-robin); ratio = median
   over rounds of method time / raw time (target for alltoall and mc2: <= 1.3). The AllGather family
   moves whole token batches instead, so its ratio shows that cost.
3. **peak memory per method**: ``platform.measure_peak()`` over one dispatch + combine, max over ranks.

Timing (``ascend_conformance.bench.time_interleaved``): after warm-up, every call is bracketed by a barrier
on the world's CPU group and the platform timer (device events on accelerators, perf_counter after a sync on
CPU), the same for a method and its baseline; the variants of a measurement run round-robin; a round's time
is the max over ranks. JSON through ``report.benchmark_json`` (pytest-benchmark's schema).
Every measured path is also checked, once, before and outside the timed calls: with identity experts the
output must be ``x · Σ_k w`` (= x, the weights sum to 1) within the ACCUMULATED tolerance, and the raw
baseline must bring every row back unchanged; so a benchmark never times a wrong result, and a timed call
is the op alone.
"""
from __future__ import annotations

import statistics

import torch
import torch.distributed as dist

from ascend_conformance import bench, platform
from ascend_conformance import groups as live
from ascend_conformance.tolerance import Kind, assert_close
from ascend_conformance.moe.context import forward_context
from ascend_conformance.report import benchmark_json
from ascend_conformance.moe.methods import AllGather, NativeAllGather
from ascend_conformance.moe.ops import GoldenOps, op_provider
from ascend_conformance.moe.parallel import moe_groups
from ascend_conformance.moe.placement import ExpertPlacement
from ascend_conformance.moe.scenario import DTYPES, Scenario
from ascend_conformance.moe.scenario_on_rank import setup_on_rank
from ascend_conformance.topology import ParallelConfig

TARGET_RATIO = 1.3


# ------------------------------------------------------------------------------------------ timing

def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "mean_s": statistics.mean(times),
            "rounds": len(times), "times": times}


def _identity_reference(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What dispatch + combine must return with identity experts: x · Σ_k w."""
    return (x.float() * weights.float().sum(dim=1, keepdim=True)).to(x.dtype)


# ------------------------------------------------------------------------ permute + unpermute (1 rank)

def permute_unpermute_on_rank(tokens: int, hidden: int, experts: int, top_k: int, dtype: str, *, rounds: int,
                              warmup: int, copy_bytes: int = 256 << 20) -> dict:
    """Rank function for a world of 1: throughput of every available permute + unpermute variant, timed
    round-robin with a large ``copy_`` (read + write bytes / time: the memory-bandwidth floor)."""
    groups = moe_groups(ParallelConfig(world_size=1, tp=1, pp=1, dp=1))
    device = groups.ep.device
    placement = ExpertPlacement.contiguous(experts, 1)
    scenario = Scenario("native_allgather", 1, experts, top_k, tokens, hidden, 1, dtype, seed=0)
    x, ids, weights = (t.to(device) for t in scenario.inputs(0))
    ctx = forward_context([tokens], 0, 1, device)
    variants = {"native": NativeAllGather(groups, placement, device=device),
                "golden": AllGather(groups, placement, ops=GoldenOps(), device=device)}
    if op_provider(device).name == "torch_npu":
        variants["torch_npu"] = AllGather(groups, placement, device=device)
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()
    moved = 2 * (tokens * top_k + tokens) * hidden * element
    src = torch.ones(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    # copy_ into a buffer that exists is the bandwidth floor; clone() also pays for a fresh buffer, as every
    # op does for its outputs (on CPU, first touch of freshly mapped pages costs as much as the copy).
    functions = {"copy": lambda: dst.copy_(src), "clone": src.clone}
    for name, method in variants.items():
        prepared = method.prepare(x, ids, weights, ctx)

        def permute_unpermute(method=method, prepared=prepared):
            dispatched = method.permute(prepared)
            return method.unpermute(dispatched.hidden, dispatched, prepared)

        assert_close(permute_unpermute(), _identity_reference(x, weights), kind=Kind.ACCUMULATED,
                     what=f"{name} permute + unpermute with identity experts")
        functions[name] = permute_unpermute
    times = bench.time_interleaved(functions, warmup=warmup, rounds=rounds, world=live.get_world_group())
    copy, clone = times.pop("copy"), times.pop("clone")
    results = {"copy": {**summary(copy), "bytes": 2 * copy_bytes, "gbps": 2 * copy_bytes / statistics.median(copy) / 1e9},
               "clone": {**summary(clone), "bytes": 2 * copy_bytes,
                         "gbps": 2 * copy_bytes / statistics.median(clone) / 1e9},
               "bytes": moved, "variants": {}}
    for name, variant_times in times.items():
        # Per round: this round's time over the time the copy of this round needs for the same bytes.
        floors = [moved * c / (2 * copy_bytes) for c in copy]
        median = statistics.median(variant_times)
        results["variants"][name] = {**summary(variant_times), "gbps": moved / median / 1e9,
                                     "floor_s": statistics.median(floors),
                                     "times_floor": statistics.median(t / f for t, f in zip(variant_times, floors)),
                                     "times_clone_floor": statistics.median(
                                         t / (moved * c / (2 * copy_bytes)) for t, c in zip(variant_times, clone))}
    return results


# ---------------------------------------------------------------------- dispatch + combine (a world)

def bench_scenario(method: str, world_size: int, tokens: int, hidden: int, experts: int, top_k: int,
                   dtype: str, seed: int = 0) -> Scenario:
    """DP = EP = world, TP 1, every rank holding `tokens` (identity experts: intermediate is unused)."""
    return Scenario(method=method, world_size=world_size, dp=world_size, tp=1, experts=experts, top_k=top_k,
                    tokens=tokens, hidden=hidden, intermediate=1, dtype=dtype, seed=seed,
                    tokens_per_dp=(tokens,) * world_size)


def routed_payload(topk_ids: torch.Tensor, placement: ExpertPlacement, rank: int, hidden: int, element: int) -> dict:
    """DeepEP-style accounting of one rank's dispatch: rows per destination rank (one per routing entry),
    and the payload bytes of the rows that leave the rank."""
    owners = torch.tensor(placement.owner, device=topk_ids.device)[topk_ids.long().reshape(-1)]
    per_destination = torch.bincount(owners, minlength=placement.ep_size)
    remote = int(per_destination.sum() - per_destination[rank])
    return {"rows_per_destination": per_destination.tolist(), "remote_rows": remote,
            "payload_bytes": remote * hidden * element}


def dispatch_combine_on_rank(values: dict, *, rounds: int, warmup: int, with_raw: bool = True) -> dict:
    """Rank function: dispatch / combine times of the scenario's method, its raw all_to_all_single
    baseline, the routed payload and the peak memory of one dispatch + combine."""
    scenario = Scenario.from_dict(values)
    setup = setup_on_rank(scenario)
    rank = setup.groups.ep.rank_in_group
    method = setup.method(scenario.method)
    x, ids, weights = setup.inputs_on_device()
    weights = weights.float()
    ctx = setup.ctx

    def dispatch():
        prepared = method.prepare(x, ids, weights, ctx)
        return prepared, method.permute(prepared)

    def combine(prepared, dispatched):
        return method.finalize(method.unpermute(dispatched.hidden, dispatched, prepared), prepared, ctx)

    out = combine(*dispatch())
    assert_close(out, _identity_reference(x, weights), kind=Kind.ACCUMULATED,
                 what=f"rank {setup.rank}: {scenario.method} dispatch + combine with identity experts")
    plat = platform.get()
    with plat.measure_peak() as peak:
        combine(*dispatch())
    state = dispatch()
    functions = {"dispatch": dispatch, "combine": lambda: combine(*state)}
    if with_raw:
        functions.update(raw_all_to_all(x, ids, setup))
    times = bench.time_interleaved(functions, warmup=warmup, rounds=rounds, world=live.get_world_group())
    return {"rank": setup.rank, **{name: summary(values) for name, values in times.items()},
            "peak_memory_bytes": peak.peak_bytes, "memory_method": peak.method,
            **routed_payload(ids, setup.placement, rank, scenario.hidden, x.element_size())}


def raw_all_to_all(x: torch.Tensor, ids: torch.Tensor, setup) -> dict:
    """The floor: ``{"raw_dispatch", "raw_combine"}`` functions doing all_to_all_single of exactly the rows
    AllToAll sends (one per routing entry, grouped by destination), there and back, and nothing else.
    Collective setup, which also runs both once and checks that the rows came back."""
    group = setup.groups.ep.device_group
    owners = torch.tensor(setup.placement.owner, device=x.device)[ids.long().reshape(-1)]
    order = torch.argsort(owners, stable=True)
    send = x.index_select(0, order // ids.shape[1]).contiguous()
    send_splits = torch.bincount(owners, minlength=setup.placement.ep_size)
    recv_splits = torch.empty_like(send_splits)
    dist.all_to_all_single(recv_splits, send_splits, group=group)
    send_splits, recv_splits = send_splits.tolist(), recv_splits.tolist()
    received = x.new_empty((sum(recv_splits), x.shape[1]))
    returned = torch.empty_like(send)

    def there():
        dist.all_to_all_single(received, send, output_split_sizes=recv_splits, input_split_sizes=send_splits,
                               group=group)

    def back():
        dist.all_to_all_single(returned, received, output_split_sizes=send_splits, input_split_sizes=recv_splits,
                               group=group)

    # Checked once here, outside the timed calls: a comparison and its host sync in `back` would be timed
    # on the baseline's side of the ratio only.
    there()
    back()
    if not torch.equal(returned, send):
        raise AssertionError("raw all_to_all_single did not bring the rows back")
    return {"raw_dispatch": there, "raw_combine": back}


# ---------------------------------------------------------------------------------- aggregation

def method_figures(method: str, per_rank: list[dict]) -> dict:
    """Per phase: median time (rank-max rounds), mean payload per rank, bandwidth; with the raw baseline
    the median over rounds of method time / raw time (rounds were interleaved, so each ratio compares
    calls made under the same load)."""
    first = per_rank[0]  # every rank holds the same rank-max rounds
    figures = {"method": method, "peak_memory_bytes": max(r["peak_memory_bytes"] for r in per_rank),
               "memory_method": first["memory_method"],
               "payload_bytes": statistics.mean(r["payload_bytes"] for r in per_rank)}
    for phase in ("dispatch", "combine"):
        median = first[phase]["median_s"]
        entry = {"median_s": median, "times": first[phase]["times"], "gbps": figures["payload_bytes"] / median / 1e9}
        if f"raw_{phase}" in first:
            raw = first[f"raw_{phase}"]
            entry.update(raw_s=raw["median_s"], raw_times=raw["times"],
                         raw_gbps=figures["payload_bytes"] / raw["median_s"] / 1e9,
                         ratio=statistics.median(t / r for t, r in zip(first[phase]["times"], raw["times"])))
        figures[phase] = entry
    figures["dispatch_combine_s"] = figures["dispatch"]["median_s"] + figures["combine"]["median_s"]
    if "raw_dispatch" in first:
        totals = [d + c for d, c in zip(first["dispatch"]["times"], first["combine"]["times"])]
        raws = [d + c for d, c in zip(first["raw_dispatch"]["times"], first["raw_combine"]["times"])]
        figures["ratio"] = statistics.median(t / r for t, r in zip(totals, raws))
    return figures


def _entry(name: str, fullname: str, times: list[float], extra: dict, group: str) -> dict:
    return benchmark_json.benchmark_entry(name, fullname, times, extra_info={"area": "moe", **extra}, group=group,
                                          options={"timer": "platform timer, rank-max, interleaved rounds"})


def benchmark_entries(shape: dict, throughput: dict | None, methods: dict, source: str = "benchmarks/moe.py",
                      raw_baseline: bool = True) -> list:
    """pytest-benchmark entries: the copy floor, every permute + unpermute variant, and per method
    dispatch / combine; with raw_baseline also the raw all_to_all_single baseline as its own entries,
    once (from the alltoall run when there is one), so a baseline file never holds it twice."""
    entries = []
    dtype, world = shape["dtype"], shape["world_size"]
    if throughput:
        copy = throughput["copy"]
        entries.append(_entry("moe_memory_copy", f"{source}::memory_copy", copy["times"],
                              {"op": "memory_copy", "size_bytes": copy["bytes"], "world_size": 1, "algbw_gbps": copy["gbps"],
                               "variant": "floor"}, "moe permute+unpermute"))
        clone = throughput["clone"]
        entries.append(_entry("moe_memory_clone", f"{source}::memory_clone", clone["times"],
                              {"op": "memory_clone", "size_bytes": clone["bytes"], "world_size": 1,
                               "algbw_gbps": clone["gbps"], "variant": "floor, fresh buffer"}, "moe permute+unpermute"))
        for name, figures in throughput["variants"].items():
            entries.append(_entry(f"moe_permute_unpermute[{name}]", f"{source}::permute_unpermute[{name}]",
                                  figures["times"], {"op": f"permute_unpermute:{name}", "method": name,
                                                     "phase": "permute+unpermute", "size_bytes": throughput["bytes"],
                                                     "dtype": dtype, "world_size": 1, "algbw_gbps": figures["gbps"],
                                                     "times_floor": figures["times_floor"],
                                                     "times_clone_floor": figures["times_clone_floor"],
                                                     "copy_gbps": copy["gbps"], "tokens": shape["throughput_tokens"],
                                                     "hidden": shape["hidden"], "top_k": shape["top_k"]},
                                  "moe permute+unpermute"))
    for method, figures in methods.items():
        for phase in ("dispatch", "combine"):
            data = figures[phase]
            extra = {"op": f"{phase}:{method}", "method": method, "phase": phase, "world_size": world,
                     "size_bytes": int(figures["payload_bytes"]), "dtype": dtype, "algbw_gbps": data["gbps"],
                     "peak_memory_bytes": figures["peak_memory_bytes"], "tokens_per_rank": shape["tokens"],
                     "hidden": shape["hidden"], "experts": shape["experts"], "top_k": shape["top_k"]}
            if "ratio" in data:
                extra.update(raw_all_to_all_s=data["raw_s"], ratio_to_raw=data["ratio"], target_ratio=TARGET_RATIO)
            entries.append(_entry(f"moe_{phase}[{method}]", f"{source}::{phase}[{method}]", data["times"], extra,
                                  f"moe {phase}"))
            baseline_from = "alltoall" if "alltoall" in methods else next(iter(methods))
            if raw_baseline and "raw_times" in data and method == baseline_from:
                entries.append(_entry(f"moe_{phase}[raw_all_to_all_single]", f"{source}::{phase}[raw_all_to_all_single]",
                                      data["raw_times"], {"op": f"{phase}:raw_all_to_all_single", "phase": phase,
                                                          "method": "raw_all_to_all_single", "world_size": world,
                                                          "size_bytes": int(figures["payload_bytes"]), "dtype": dtype,
                                                          "algbw_gbps": data["raw_gbps"], "variant": "baseline"},
                                      f"moe {phase}"))
    return entries


def format_table(shape: dict, throughput: dict | None, methods: dict) -> str:
    """The human-readable table the script prints."""
    lines = []
    if throughput:
        copy = throughput["copy"]
        lines += [f"permute + unpermute, 1 rank, N={shape['throughput_tokens']} K={shape['top_k']} H={shape['hidden']} "
                  f"{shape['dtype']}: {throughput['bytes'] / 2**20:.1f} MiB moved; large copy_ {copy['gbps']:.2f} GB/s, "
                  f"clone (fresh buffer) {throughput['clone']['gbps']:.2f} GB/s",
                  f"  {'variant':<12}{'median':>12}{'GB/s':>10}{'x copy_':>10}{'x clone':>10}"]
        for name, figures in throughput["variants"].items():
            lines.append(f"  {name:<12}{figures['median_s'] * 1e3:>10.3f}ms{figures['gbps']:>10.2f}"
                         f"{figures['times_floor']:>9.1f}x{figures['times_clone_floor']:>9.1f}x")
        lines.append("")
    if methods:
        lines += [f"dispatch + combine, world {shape['world_size']} (DP=EP), {shape['tokens']} tokens/rank, "
                  f"E={shape['experts']} K={shape['top_k']} H={shape['hidden']} {shape['dtype']}",
                  f"  {'method':<18}{'dispatch':>11}{'combine':>11}{'payload':>11}{'GB/s':>8}"
                  f"{'raw a2a':>11}{'ratio':>8}{'peak mem':>11}"]
        for method, figures in methods.items():
            total = figures["dispatch_combine_s"]
            raw = figures["dispatch"].get("raw_s", float("nan")) + figures["combine"].get("raw_s", float("nan"))
            lines.append(f"  {method:<18}{figures['dispatch']['median_s'] * 1e3:>9.3f}ms"
                         f"{figures['combine']['median_s'] * 1e3:>9.3f}ms{figures['payload_bytes'] / 2**20:>8.2f}MiB"
                         f"{2 * figures['payload_bytes'] / total / 1e9:>8.2f}{raw * 1e3:>9.3f}ms"
                         f"{figures.get('ratio', float('nan')):>7.2f}x{figures['peak_memory_bytes'] / 2**20:>8.2f}MiB")
        lines.append(f"  (payload: rows sent to other ranks per rank per direction; GB/s over dispatch + combine; "
                     f"ratio = method / raw all_to_all_single of AllToAll's rows, target <= {TARGET_RATIO})")
    return "\n".join(lines)
