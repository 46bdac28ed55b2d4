"""Benchmark results as pytest-benchmark JSON, and rank-max timing, for the scripts in benchmarks/.

The document is what ``ascend_conformance.report.benchmarks`` reads (``machine_info`` from
``report.environment.machine_info()``, ``commit_info``, ``benchmarks`` with ``stats`` in seconds and the
figures in ``extra_info``). Kept here until the package grows a shared writer / ``bench.py``.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess


def rank_max_times(times: list) -> list:
    """Per-iteration maximum over the ranks of the world (collective on the default group)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(times, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def timed(fn, iters: int, warmup: int) -> list:
    """Seconds of ``fn()`` per iteration, rank-max, each iteration started together after a barrier."""
    import time

    import torch.distributed as dist

    from ascend_conformance import platform

    plat = platform.get()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        dist.barrier()
        plat.synchronize()
        started = time.perf_counter()
        fn()
        plat.synchronize()
        times.append(time.perf_counter() - started)
    return rank_max_times(times)


def timed_interleaved(fns: dict, iters: int, warmup: int) -> dict:
    """Like :func:`timed` for several variants, run round-robin (one iteration of each per round) so that a
    change of host load between variants affects them alike; ``{name: rank-max seconds per iteration}``."""
    import time

    import torch.distributed as dist

    from ascend_conformance import platform

    plat = platform.get()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            dist.barrier()
            plat.synchronize()
            started = time.perf_counter()
            fn()
            plat.synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: rank_max_times(values) for name, values in times.items()}


def stats(times: list) -> dict:
    """pytest-benchmark's stats block (seconds)."""
    data = sorted(float(t) for t in times)
    n = len(data)
    if n == 0:
        raise ValueError("no timings")
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if n > 1 else 0.0
    q1, q3 = (statistics.quantiles(data, n=4)[0], statistics.quantiles(data, n=4)[2]) if n > 1 else (data[0], data[0])
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    inside = [t for t in data if low <= t <= high] or data
    return {
        "min": data[0], "max": data[-1], "mean": mean, "stddev": stddev, "rounds": n,
        "median": statistics.median(data), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": sum(1 for t in data if t < low or t > high),
        "stddev_outliers": sum(1 for t in data if abs(t - mean) > stddev) if stddev else 0,
        "outliers": f"{sum(1 for t in data if abs(t - mean) > stddev) if stddev else 0};"
                    f"{sum(1 for t in data if t < low or t > high)}",
        "ld15iqr": inside[0], "hd15iqr": inside[-1], "ops": 1.0 / mean if mean > 0 else 0.0,
        "total": sum(data), "iterations": 1, "data": data,
    }


def entry(name: str, group: str, times: list | None, extra: dict, params: dict | None = None,
          fullname: str | None = None) -> dict:
    """One benchmark; ``times`` None for figures that are not timings (stats of a single 0)."""
    return {"group": group, "name": name, "fullname": fullname or f"benchmarks/{group}::{name}",
            "params": params or {}, "param": None, "extra_info": extra,
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": len(times or [0]),
                        "max_time": 0, "min_time": 0, "warmup": False},
            "stats": stats(times if times else [0.0])}


def _commit_info() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"id": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "project": "ascend-conformance"}


def document(benchmarks: list) -> dict:
    try:
        from ascend_conformance.report.environment import machine_info

        machine = machine_info()
    except Exception as exc:  # noqa: BLE001 - the figures matter more than the environment block
        import platform as host

        machine = {"node": host.node(), "machine": host.machine(), "platform": "unknown",
                   "environment_error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"machine_info": machine, "commit_info": _commit_info(), "benchmarks": benchmarks,
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": "ascend-conformance"}


def write(path: str, benchmarks: list) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document(benchmarks), handle, indent=2)
    return path
