"""suites/test_moe_ops.py's golden-vs-torch_npu tests touch an NPU only inside a world, whose ranks hold
the device leases; the pytest worker never does (under ``-n 8`` a worker that called ``.npu()`` itself
would open a context on npu:0 next to a world that leased it exclusively).

Checked by running every ``test_npu_*`` function of the suite against stand-ins: a ``torch_npu`` whose ops
(the golden models) and ``Tensor.npu`` record whether they were called inside ``world(n).run``, a
``world`` fixture that runs a world of one in this process (with a rank context, as a rank has) and only
notes bigger worlds, and a platform that says npu. Every recorded touch must be inside a world, and the
single-device tests must touch the device at all (so the stand-ins are in the path).
"""
from __future__ import annotations

import importlib.util
import inspect
import pathlib
import sys
import types

import pytest
import torch

from ascend_conformance import golden
from ascend_conformance import platform as platforms
from ascend_conformance.harness.context import RankContext, set_rank_context

SUITE = pathlib.Path(__file__).resolve().parent.parent / "suites" / "test_moe_ops.py"
OPS = ("npu_moe_init_routing_v2", "npu_moe_token_permute", "npu_moe_token_unpermute", "npu_moe_finalize_routing",
       "npu_grouped_matmul")


class BiggerWorld(Exception):
    """A test asked for a world of more than one rank (noted, not run here)."""


class DeviceLog:
    def __init__(self):
        self.in_world = False
        self.touches: list[tuple[str, bool]] = []  # (what, inside a world)

    def touch(self, what: str) -> None:
        self.touches.append((what, self.in_world))


class FakeWorld:
    def __init__(self, log: DeviceLog, n: int):
        self.log, self.n = log, n

    def run(self, fn, *args, **kwargs):
        if self.n > 1:
            raise BiggerWorld(f"world({self.n})")
        self.log.in_world = True
        set_rank_context(RankContext(rank=0, world_size=1, local_rank=0, device="cpu", device_index=0,
                                     platform="npu", backend="hccl", test_id="fake", seed=0, world_seed=0))
        try:
            return [fn(*args, **kwargs)]
        finally:
            set_rank_context(None)
            self.log.in_world = False


def _fake_torch_npu(log: DeviceLog) -> types.ModuleType:
    module = types.ModuleType("torch_npu")

    def recorded(name):
        def op(*args, **kwargs):
            log.touch(name)
            return getattr(golden, name)(*args, **kwargs)
        return op

    for name in OPS:
        setattr(module, name, recorded(name))
    module.npu = types.SimpleNamespace(is_available=lambda: True, get_soc_version=lambda: 250)
    return module


def _load_suite():
    spec = importlib.util.spec_from_file_location("moe_ops_suite_under_check", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_params(fn) -> dict:
    """The first value set of every parametrize mark of `fn`."""
    values = {}
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, first = mark.args[0], mark.args[1][0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        values.update(zip(names, first if len(names) > 1 else (first,)))
    return values


@pytest.fixture
def npu_stand_ins(monkeypatch):
    log = DeviceLog()
    monkeypatch.setitem(sys.modules, "torch_npu", _fake_torch_npu(log))
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)

    def tensor_npu(self, *args, **kwargs):
        log.touch("Tensor.npu")
        return self

    monkeypatch.setattr(torch.Tensor, "npu", tensor_npu, raising=False)
    monkeypatch.setattr(platforms, "get", lambda: types.SimpleNamespace(name="npu"))
    return log


def _device_tests(suite) -> list[str]:
    return sorted(name for name, fn in vars(suite).items() if name.startswith("test_npu_") and callable(fn))


def test_the_suite_has_golden_vs_torch_npu_tests():
    names = _device_tests(_load_suite())
    assert len(names) >= 5, names


@pytest.mark.parametrize("name", _device_tests(_load_suite()))
def test_torch_npu_is_touched_only_inside_a_world(npu_stand_ins, name):
    suite = _load_suite()
    fn = getattr(suite, name)
    kwargs = _first_params(fn)
    if "world" in inspect.signature(fn).parameters:
        kwargs["world"] = lambda n, timeout=None: FakeWorld(npu_stand_ins, n)
    try:
        fn(**kwargs)
    except BiggerWorld:
        pass  # a multi-rank world: its ranks hold the leases
    outside = [what for what, in_world in npu_stand_ins.touches if not in_world]
    assert not outside, f"{name} touched the device in the pytest worker, outside any world: {outside}"
    if name != "test_npu_dispatch_combine_match_golden":
        assert npu_stand_ins.touches, f"{name} never reached torch_npu: the stand-ins are not in its path"
