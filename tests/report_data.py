"""Fixture data for the report tests: benchmark JSON in pytest-benchmark's schema and result records,
shaped like what the suites' benchmarks and the report plugin write."""
from __future__ import annotations

import json
import random

from ascend_conformance.report import benchmark_json, results

MACHINE = {"node": "npu-host-01", "machine": "aarch64", "python_version": "3.11.7", "system": "Linux",
           "release": "5.10", "platform": "npu", "device_model": "Ascend910B3", "soc": "Ascend910B3",
           "device_count": "8", "cann": "8.0.RC3", "torch": "2.5.1", "torch_npu": "2.5.1"}
COLLECTIVES = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n}
BUSBW_PEAK = {"all_reduce": 160.0, "all_gather": 180.0}  # GB/s at large sizes, made up but plausible


def bench(name: str, fullname: str, seconds: float, extra: dict, group: str | None = None, seed: int = 0) -> dict:
    """One benchmark entry from the suite's own writer, ten rounds within ±1 % of ``seconds``."""
    rng = random.Random(f"{name}-{seed}")
    samples = [seconds * (1 + rng.uniform(-0.01, 0.01)) for _ in range(10)]
    return benchmark_json.benchmark_entry(name, fullname, samples, extra_info=extra, group=group,
                                          options={"timer": "device events", "warmup": 5})


def collective_benchmarks(scale: float = 1.0, busbw_scale: float = 1.0, seed: int = 0) -> list[dict]:
    out = []
    for op, factor in COLLECTIVES.items():
        for world in (2, 8):
            for power in range(10, 27, 4):  # 1 KiB .. 64 MiB
                size = 1 << power
                busbw = BUSBW_PEAK[op] * size / (size + 4e6)  # ramps up with size
                seconds = 20e-6 + size * factor(world) / (busbw * 1e9)
                seconds *= scale
                algbw = size / seconds / 1e9
                out.append(bench(f"test_{op}_bench[{world}-{size}-bfloat16]",
                                 f"suites/test_collectives.py::test_{op}_bench[{world}-{size}-bfloat16]", seconds,
                                 {"op": op, "size_bytes": size, "dtype": "bfloat16", "world_size": world,
                                  "group_kind": "world", "algbw_gbps": algbw,
                                  "busbw_gbps": algbw * factor(world) * busbw_scale, "wrong": 0},
                                 group=op, seed=seed))
    return out


def moe_benchmarks(seed: int = 0, memory_scale: float = 1.0) -> list[dict]:
    out = []
    for i, method in enumerate(("native_allgather", "allgather", "alltoall", "mc2")):
        for phase, base in (("dispatch", 180e-6), ("combine", 150e-6)):
            out.append(bench(f"test_moe_{phase}_bench[{method}]", f"suites/test_moe_bench.py::test_moe_{phase}_bench[{method}]",
                             base * (1.0 + 0.3 * i), {"op": f"{phase}:{method}", "method": method, "phase": phase,
                                                      "world_size": 8, "size_bytes": 7168 * 2 * 256, "dtype": "bfloat16",
                                                      "peak_memory_bytes": int((40 + 12 * i) * (1 << 20) * memory_scale),
                                                      "area": "moe"}, seed=seed))
    return out


def eplb_benchmarks(seed: int = 0) -> list[dict]:
    out = []
    for load, rebalanced, round_robin in (("uniform", 1.0, 0.8), ("zipf1.0", 0.97, 0.52), ("zipf1.5", 0.93, 0.31)):
        for placement, value in (("rebalanced", rebalanced), ("round_robin", round_robin)):
            out.append(bench(f"test_balancedness[{load}-{placement}]", f"suites/test_eplb_redistribute.py::"
                             f"test_balancedness[{load}-{placement}]", 2e-3,
                             {"op": f"balancedness:{placement}", "load": load, "placement": placement,
                              "balancedness": value, "world_size": 8, "area": "eplb",
                              "variant": f"load={load}"}, seed=seed))
    out.append(bench("test_redistribute_bench", "suites/test_eplb_redistribute.py::test_redistribute_bench", 8e-3,
                     {"op": "redistribute", "world_size": 8, "peak_memory_bytes": 96 << 20, "area": "eplb"}, seed=seed))
    return out


def document(benchmarks: list[dict], machine: dict | None = None) -> dict:
    return benchmark_json.document(benchmarks, machine_info=dict(machine or MACHINE),
                                   commit={"id": "0123abc", "dirty": False, "project": "ascend-conformance"})


def write(path, doc) -> str:
    with open(path, "w") as handle:
        json.dump(doc, handle)
    return str(path)


def record(nodeid: str, outcome: str, reason: str = "", **extra) -> dict:
    labels = results.derive_labels(nodeid)
    base = {"schema": results.SCHEMA, "nodeid": nodeid, "area": labels.area, "feature": labels.feature,
            "story": labels.story, "outcome": outcome, "reason": reason, "longrepr": "", "duration": 0.1,
            "start": 1.0, "stop": 2.0, "worker": "gw0", "session": "s1", "markers": [], "params": {},
            "figures": [], "attachments": [], "findings": [], "properties": [], "repro": f"pytest {nodeid}"}
    base.update(extra)
    return base
