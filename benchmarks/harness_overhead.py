"""What the multi-rank runtime costs a test, measured side by side in one run.

1. Warm: a no-op `run` on a warm 4-rank pool, repeated (median), against a faithful spawn-per-test
   baseline in the style of PyTorch's MultiProcessTestCase: spawn 4 fresh interpreters, each imports
   torch, joins a gloo world through a FileStore, runs the no-op, destroys the group; the parent joins.
   The floor is a bare pipe round trip to 4 processes.
2. Cold: a new 8-rank world once the session has started (forkserver up): pool created, ranks joined,
   first run returned — against bare spawn + init_process_group of 8 ranks.

    python benchmarks/harness_overhead.py [--warm-iters 200] [--baseline-iters 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def noop():
    return None


def _spawned_test_body(rank: int, world_size: int, store_path: str) -> None:
    """What MultiProcessTestCase does in each child: import torch, init, run the test, tear down."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=120))
    noop()
    dist.barrier()
    dist.destroy_process_group()


def spawn_per_test(world_size: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        started = time.perf_counter()
        procs = [ctx.Process(target=_spawned_test_body, args=(r, world_size, store)) for r in range(world_size)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        elapsed = time.perf_counter() - started
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError(f"baseline child failed: exit codes {[p.exitcode for p in procs]}")
    return elapsed


def _echo(conn) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(message)


def pipe_round_trip_floor(world_size: int, iters: int) -> float:
    """Median time to send a small message to `world_size` processes and get all answers back."""
    ctx = multiprocessing.get_context("fork")
    pairs = [ctx.Pipe() for _ in range(world_size)]
    procs = [ctx.Process(target=_echo, args=(child,), daemon=True) for _, child in pairs]
    for proc in procs:
        proc.start()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        for parent, _ in pairs:
            parent.send(("task", b"x" * 200))
        for parent, _ in pairs:
            parent.recv()
        times.append(time.perf_counter() - started)
    for parent, _ in pairs:
        parent.send(None)
    for proc in procs:
        proc.join()
    return statistics.median(times)


def make_runner(log_root: str, lease_dir: str):
    from ascend_conformance.harness.world import WorldOptions, WorldRunner
    from ascend_conformance.platform import CpuPlatform

    return WorldRunner(WorldOptions(platform=CpuPlatform(), physical_ids=tuple(range(8)), lease_dir=lease_dir,
                                    log_root=log_root, max_warm_ranks=16))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-iters", type=int, default=200)
    parser.add_argument("--baseline-iters", type=int, default=3,
                        help="spawn-per-test repetitions (each costs seconds: every rank re-imports torch)")
    parser.add_argument("--cold-iters", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch  # noqa: F401 - the parent imports torch anyway in a pytest session

    from ascend_conformance.harness.pool import prestart_forkserver

    with tempfile.TemporaryDirectory() as tmp:
        prestart_forkserver()
        runner = make_runner(os.path.join(tmp, "logs"), os.path.join(tmp, "leases"))
        try:
            runner.run(4, noop, (), {}, "bench::warmup")  # forkserver preload + first pool
            warm = []
            for i in range(args.warm_iters):
                started = time.perf_counter()
                runner.run(4, noop, (), {}, "bench::warm")
                warm.append(time.perf_counter() - started)
            cold = []
            for i in range(args.cold_iters):
                runner.shutdown()
                started = time.perf_counter()
                runner.run(8, noop, (), {}, "bench::cold")
                cold.append(time.perf_counter() - started)
        finally:
            runner.shutdown()

    floor = pipe_round_trip_floor(4, 200)
    baseline4 = [spawn_per_test(4) for _ in range(args.baseline_iters)]
    baseline8 = [spawn_per_test(8) for _ in range(args.baseline_iters)]

    figures = {
        "warm_4rank_run_median_s": statistics.median(warm),
        "warm_4rank_run_p90_s": sorted(warm)[int(0.9 * len(warm))],
        "pipe_round_trip_4_median_s": floor,
        "spawn_per_test_4rank_median_s": statistics.median(baseline4),
        "cold_8rank_world_median_s": statistics.median(cold),
        "spawn_and_init_8rank_median_s": statistics.median(baseline8),
        "warm_iters": args.warm_iters, "baseline_iters": args.baseline_iters, "cold_iters": args.cold_iters,
        "cpu_count": os.cpu_count(),
    }
    w, b = figures["warm_4rank_run_median_s"], figures["spawn_per_test_4rank_median_s"]
    c, s = figures["cold_8rank_world_median_s"], figures["spawn_and_init_8rank_median_s"]
    print(f"{'measurement':<58}{'median':>12}{'ratio':>10}")
    print(f"{'pipe round trip to 4 processes (floor)':<58}{floor * 1e3:>10.3f}ms")
    print(f"{'warm pool: no-op run on 4 ranks':<58}{w * 1e3:>10.3f}ms")
    print(f"{'spawn per test: spawn+init+run+join of 4 ranks':<58}{b * 1e3:>10.1f}ms{b / w:>9.0f}x")
    print(f"{'new 8-rank world from the warm forkserver (first run)':<58}{c * 1e3:>10.1f}ms")
    print(f"{'bare spawn + init_process_group of 8 ranks':<58}{s * 1e3:>10.1f}ms{s / c:>9.1f}x")
    print(f"targets: warm <= 5 ms ({'met' if w <= 0.005 else 'MISSED'}), "
          f"new 8-rank world <= 1 s ({'met' if c <= 1.0 else 'MISSED'})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
