"""The self-tests run on the cpu platform on every host; the conformance suites (suites/) keep the
detected one.

The harness's own tests check gloo worlds, lease slots and rank output that only the cpu platform
gives on any machine; on an NPU host the detected platform would be npu. So, for tests under tests/
only (this conftest's scope), and also when one session runs tests/ and suites/ together (`make test`):
- ``world_runner`` (and so ``world``) is the session's cpu runner: the conformance tests' own on a cpu
  host, one of its own next to the detected platform's elsewhere;
- each test sees ``platform.get()`` as cpu and has ``ASCEND_CONFORMANCE_PLATFORM=cpu`` in its
  environment, so pytest sessions, CLI calls and scripts it starts run on cpu too (a test that wants
  another platform passes ``--platform`` or sets the variable itself).
"""
from __future__ import annotations

import importlib
import sys

import pytest

from ascend_conformance import platform as platforms

SELF_TEST_PLATFORM = "cpu"


def _plugin():
    # The plugin module as loaded (installed entry point or the checkout's fixtures/), not a second copy.
    return sys.modules.get("ascend_conformance_fixtures.plugin") or importlib.import_module("fixtures.plugin")


def _cpu_platform(config) -> platforms.Platform:
    plat = platforms.by_name(SELF_TEST_PLATFORM)
    plat.slots = config.getoption("--devices")
    return plat


@pytest.fixture(scope="session")
def world_runner(request, tmp_path_factory):
    runner = _plugin().make_world_runner(request.config, tmp_path_factory, _cpu_platform(request.config))
    yield runner
    runner.shutdown()

@pytest.fixture(scope="session")
def emulated_runner(request, tmp_path_factory):
    """The session's runner on npu-emulated (built once; skipped with the reason when it cannot be)."""
    plat = platforms.by_name("npu-emulated")
    plat.slots = request.config.getoption("--devices")
    reason = plat.unavailable_reason()
    if reason:
        pytest.skip(reason)
    runner = _plugin().make_world_runner(request.config, tmp_path_factory, plat)
    yield runner
    runner.shutdown()


@pytest.fixture
def emulated_world(emulated_runner, request):
    """``emulated_world(n, pool="")``: a world of n ranks on the emulated npu (the self-tests' ``world`` is cpu)."""
    def make(n: int, pool: str = ""):
        reason = emulated_runner.skip_reason(n)
        if reason:
            pytest.skip(reason)
        return _plugin().World(emulated_runner, n, request.node.nodeid, None, pool)

    return make


@pytest.fixture(autouse=True)
def _self_tests_run_on_cpu(request, monkeypatch):
    previous = platforms.get()  # the session's (detected) platform, given back to suites/ afterwards
    monkeypatch.setenv(platforms.PLATFORM_ENV, SELF_TEST_PLATFORM)
    platforms.set_current(_cpu_platform(request.config))
    try:
        yield
    finally:
        platforms.set_current(previous)
