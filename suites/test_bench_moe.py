"""MoE benchmarks (``pytest suites/test_bench_moe.py -m bench -p no:xdist``): what ``benchmarks/moe.py``
measures, as tests that also check what they time (see ``ascend_conformance/bench/moe.py``).

* permute + unpermute throughput of native / golden (/ torch_npu on an NPU) against the bandwidth of a
  large copy on the same device (into an existing buffer, and a clone into a fresh one);
* dispatch + combine latency and bandwidth per method, DeepEP-style payload (rows sent to other ranks),
  against a raw all_to_all_single of AllToAll's rows (target <= 1.3x; enforced on accelerators, where the
  op path runs real kernels — on CPU the golden models' single-threaded arithmetic dominates, so the
  ratio is reported, not asserted);
* peak memory per method.

Each test writes pytest-benchmark-schema JSON to ``reports/benchmarks/moe_<test>.json`` and attaches
its figures to the report. Every timed path was first checked against ``x · Σ w`` (identity experts).
"""
from __future__ import annotations

import pytest
import torch

from ascend_conformance import platform as platforms
from ascend_conformance.bench import moe as benchmark

pytestmark = pytest.mark.bench

# Real devices: the large shapes and the ratio target. cpu slots and emulated NPUs share the host's cores (the
# emulated device runs each op on host copies), so they take the small shapes and report without a target.
ON_ACCELERATOR = not platforms.get().virtual_devices
SHAPE = {"world_size": 8 if ON_ACCELERATOR else 4, "tokens": 256 if ON_ACCELERATOR else 128,
         "throughput_tokens": 4096 if ON_ACCELERATOR else 1024, "hidden": 7168 if ON_ACCELERATOR else 1024,
         "experts": 64, "top_k": 8, "dtype": "bfloat16"}
ROUNDS, WARMUP = (50, 10) if ON_ACCELERATOR else (10, 2)
METHODS = ("native_allgather", "allgather", "alltoall", "mc2")


def test_permute_unpermute_throughput(world, report, request):
    result = world(1, timeout=1800).run(benchmark.permute_unpermute_on_rank, SHAPE["throughput_tokens"],
                                        SHAPE["hidden"], SHAPE["experts"], SHAPE["top_k"], SHAPE["dtype"],
                                        rounds=ROUNDS, warmup=WARMUP)[0]
    variants = result["variants"]
    expected = {"native", "golden"} | ({"torch_npu"} if platforms.get().name == "npu" else set())
    assert set(variants) == expected
    element = torch.empty((), dtype=getattr(torch, SHAPE["dtype"])).element_size()
    tokens, top_k, hidden = SHAPE["throughput_tokens"], SHAPE["top_k"], SHAPE["hidden"]
    assert result["bytes"] == 2 * (tokens * top_k + tokens) * hidden * element
    report.figure("large copy bandwidth", result["copy"]["gbps"], "GB/s")
    report.figure("large clone bandwidth (fresh buffer)", result["clone"]["gbps"], "GB/s")
    for name, figures in variants.items():
        report.figure(f"{name} permute+unpermute", figures["median_s"] * 1e3, "ms")
        report.figure(f"{name} throughput", figures["gbps"], "GB/s")
        report.figure(f"{name} time / copy floor", figures["times_floor"], "x")
        report.figure(f"{name} time / clone floor", figures["times_clone_floor"], "x")
        # Moving the bytes cannot take less than copying them (10 % for timer noise).
        assert figures["times_floor"] > 0.9, f"{name} beats the copy floor: the byte accounting is wrong"
    shape = {**SHAPE, "world_size": 1}
    path = report.benchmark_json("moe_permute_unpermute.json",
                                 benchmark.benchmark_entries(shape, result, {}, source="suites/test_bench_moe.py"))
    report.attach("table", benchmark.format_table(shape, result, {}) + f"\n\nJSON: {path}")


def _expected_payload(scenario, rank: int) -> int:
    """Rows of `rank`'s routing entries whose expert another rank holds, × H × element size (row by row)."""
    placement = scenario.expert_placement()
    _, ids, _ = scenario.inputs(rank)
    remote = sum(1 for expert in ids.flatten().tolist() if placement.owner[expert] != rank)
    return remote * scenario.hidden * torch.empty((), dtype=scenario.torch_dtype).element_size()


@pytest.mark.parametrize("method", METHODS)
def test_dispatch_combine_latency_bandwidth_and_memory(world, report, request, method):
    scenario = benchmark.bench_scenario(method, SHAPE["world_size"], SHAPE["tokens"], SHAPE["hidden"],
                                        SHAPE["experts"], SHAPE["top_k"], SHAPE["dtype"])
    per_rank = world(scenario.world_size, timeout=1800).run(benchmark.dispatch_combine_on_rank, scenario.to_dict(),
                                                            rounds=ROUNDS, warmup=WARMUP)
    for rank, result in enumerate(per_rank):
        assert result["payload_bytes"] == _expected_payload(scenario, rank), f"rank {rank}: routed payload"
        assert result["peak_memory_bytes"] > 0, f"rank {rank}: no allocation seen by {result['memory_method']}"
    figures = benchmark.method_figures(method, per_rank)
    for phase in ("dispatch", "combine"):
        report.figure(f"{phase} time", figures[phase]["median_s"] * 1e3, "ms")
        report.figure(f"{phase} bandwidth", figures[phase]["gbps"], "GB/s")
        report.figure(f"{phase} / raw all_to_all_single", figures[phase]["ratio"], "x")
    report.figure("dispatch+combine / raw", figures["ratio"], "x", target=benchmark.TARGET_RATIO)
    report.figure("peak memory", figures["peak_memory_bytes"] / 2**20, "MiB")
    path = report.benchmark_json(f"moe_dispatch_combine_{method}.json",
                                 benchmark.benchmark_entries(SHAPE, None, {method: figures},
                                                             source="suites/test_bench_moe.py",
                                                             raw_baseline=method == "alltoall"))
    report.attach("table", benchmark.format_table(SHAPE, None, {method: figures}) + f"\n\nJSON: {path}")
    if ON_ACCELERATOR and method in ("alltoall", "mc2"):
        assert figures["ratio"] <= benchmark.TARGET_RATIO, \
            f"{method} dispatch+combine takes {figures['ratio']:.2f}x a raw all_to_all_single of the same rows"
