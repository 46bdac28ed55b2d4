"""Both sides of every benchmark ratio are timed the same way, with nothing but the op in the timed region.

* The collectives sweep (``bench._timed_rounds``) and ``bench.time_interleaved`` (the MoE, shared-weight and
  EPLB benchmarks) are run against a platform whose timers record their start and stop: every round of
  every variant — suite, raw, raw again — must be barrier, timer start, the op ``iters`` times, the same
  timer's stop; nothing else (no synchronise or second clock on one side only).
* The MoE benchmark's raw all_to_all_single baseline: every function ``dispatch_combine_on_rank`` hands to
  the timing loop runs under a recorder of the dispatched ops; the raw ones must issue one
  ``all_to_all_single`` each and nothing else (a correctness check with its host sync belongs outside).
"""
from __future__ import annotations

import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ascend_conformance import bench, platform
from tests.events import HANG_GUARD


class _Timer:
    def __init__(self, events: list):
        self.events = events

    def start(self):
        self.events.append(("start", id(self)))

    def stop(self):
        self.events.append(("stop", id(self)))
        return 1.0


@pytest.fixture
def events(monkeypatch) -> list:
    log: list = []
    fake = types.SimpleNamespace(name="fake", timer=lambda: _Timer(log), synchronize=lambda: log.append("synchronize"))
    monkeypatch.setattr(platform, "get", lambda: fake)
    return log


def _rounds(events: list) -> list[list]:
    """The events between one barrier and the next."""
    rounds = []
    for event in events:
        if event == "barrier":
            rounds.append([])
        else:
            rounds[-1].append(event)
    return rounds


def _check_round(events: list, iters: int) -> str:
    """The op of a round timed as: one timer's start, the same op `iters` times, the same timer's stop."""
    start, *ops, stop = events
    assert start[0] == "start" and stop == ("stop", start[1]), f"not one timer around the round: {events}"
    assert len(ops) == iters and len(set(ops)) == 1 and str(ops[0]).endswith(" op"), f"not only the op timed: {events}"
    return ops[0]


def test_the_collectives_sweep_times_suite_and_raw_loops_alike(events):
    prepared = bench._Prepared(suite=lambda: events.append("suite op"), raw=lambda: events.append("raw op"),
                               check=lambda: 0)
    spec = bench.SweepSpec(config=dict(world_size=1, tp=1, pp=1, dp=1), iters=3, rounds=4, noise_floor=True)

    samples = bench._timed_rounds(prepared, spec, lambda: events.append("barrier"))

    rounds = _rounds(events)
    assert len(rounds) == 3 * 4
    ops = [_check_round(r, 3) for r in rounds]
    assert sorted(ops) == ["raw op"] * 8 + ["suite op"] * 4
    assert samples == {"suite": [1 / 3] * 4, "raw": [1 / 3] * 4, "raw_again": [1 / 3] * 4}


def test_time_interleaved_times_every_function_alike(events):
    functions = {name: (lambda name=name: events.append(f"{name} op")) for name in ("method", "baseline")}
    world = types.SimpleNamespace(barrier=lambda: events.append("barrier"), world_size=1)

    times = bench.time_interleaved(functions, warmup=1, rounds=3, world=world)

    warmup = events[:2]
    assert warmup == ["method op", "baseline op"]
    rounds = _rounds(events[2:])
    assert sorted(_check_round(r, 1) for r in rounds) == ["baseline op"] * 3 + ["method op"] * 3
    assert times == {"method": [1.0] * 3, "baseline": [1.0] * 3}


# -- the MoE benchmark's raw baseline --------------------------------------------------------------

class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def timed_ops_on_rank(values: dict) -> dict:
    """Rank function: the ops each function handed to the timing loop issues (one call each)."""
    from ascend_conformance.bench import moe as benchmark

    handed = []

    def recording_time_interleaved(fns, *, warmup, rounds, world=None):
        ops = {}
        for name, fn in fns.items():
            with _OpRecorder() as recorder:
                fn()
            ops[name] = recorder.ops
        handed.append(ops)
        return {name: [1.0] * rounds for name in fns}

    original = bench.time_interleaved
    bench.time_interleaved = recording_time_interleaved
    try:
        benchmark.dispatch_combine_on_rank(values, rounds=2, warmup=0)
    finally:
        bench.time_interleaved = original
    return {"calls": len(handed), "ops": handed[0]}


def test_the_moe_raw_baseline_times_the_all_to_all_alone(world):
    from ascend_conformance.bench import moe as benchmark

    scenario = benchmark.bench_scenario("alltoall", 2, tokens=4, hidden=8, experts=4, top_k=2, dtype="float32")
    for rank, result in enumerate(world(2, timeout=HANG_GUARD).run(timed_ops_on_rank, scenario.to_dict())):
        assert result["calls"] == 1, "the method and its baseline must be timed in one interleaved loop"
        assert sorted(result["ops"]) == ["combine", "dispatch", "raw_combine", "raw_dispatch"]
        for name in ("raw_dispatch", "raw_combine"):
            assert result["ops"][name] == ["c10d.alltoall_base_.default"], \
                f"rank {rank}: the timed {name} issues {result['ops'][name]}, not the all_to_all_single alone"
