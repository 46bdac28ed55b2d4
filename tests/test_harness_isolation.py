"""Warm-pool isolation: what one test changes for a whole rank process never reaches the next test.

The rank tests use a private runner (own lease directory, one 2-rank pool for the module), so "the next
run" is guaranteed to be on the same processes; the last tests make the pool unusable on purpose.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
import warnings

import pytest
import torch

from ascend_conformance.harness import rank_context
from ascend_conformance.harness.isolation import StateGuard
from ascend_conformance.harness.pool import RankFailure
from ascend_conformance.harness.world import WorldOptions, WorldRunner
from ascend_conformance.platform import CpuPlatform
from tests import rank_functions as fns
from tests.events import HANG_GUARD

LEAK_VAR = "ASCEND_CONFORMANCE_ISOLATION_LEAK"


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    base = tmp_path_factory.mktemp("isolation")
    world = WorldRunner(WorldOptions(platform=CpuPlatform(), physical_ids=(0, 1), lease_dir=str(base / "leases"),
                                     log_root=str(base / "logs"), rank_timeout=HANG_GUARD,
                                     lease_timeout=HANG_GUARD))
    yield world
    world.shutdown()


def run(runner, fn, *args, timeout=None):
    return runner.run(2, fn, args, {}, f"isolation::{fn.__name__}", timeout)


# --- functions the ranks run ------------------------------------------------------------------------------
def _ignore(signum, frame):
    pass


def observe_state():
    """Everything a test could leave behind, in a comparable form."""
    root = logging.getLogger()
    return {
        "pid": os.getpid(),
        "leak_var": os.environ.get(LEAK_VAR), "path_var": os.environ.get("PATH"), "home": os.environ.get("HOME"),
        "cwd": os.getcwd(),
        "grad": torch.is_grad_enabled(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "anomaly": torch.is_anomaly_enabled(), "threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()), "device": str(torch.empty(0).device),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "sys_path": list(sys.path), "warning_filters": [f[0] for f in warnings.filters],
        "root_level": root.level, "torch_level": logging.getLogger("torch").level,
        "root_handlers": len(root.handlers),
        "sigusr1": str(signal.getsignal(signal.SIGUSR1)), "sigterm": str(signal.getsignal(signal.SIGTERM)),
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        "alarm": signal.getitimer(signal.ITIMER_REAL)[0] > 0,
        "recursion_limit": sys.getrecursionlimit(),
        "stdout": id(sys.stdout),
    }


def change_process_state(directory):
    os.environ[LEAK_VAR] = "1"  # added
    del os.environ["PATH"]  # removed
    os.environ["HOME"] = directory  # changed
    os.chdir(directory)
    torch.set_grad_enabled(False)
    torch._C._set_deterministic_algorithms(True, warn_only=True)  # the public call imports inductor: seconds
    torch.autograd.set_detect_anomaly(True)
    torch.set_num_threads(3)
    torch.set_default_dtype(torch.float64)
    torch.set_default_device("meta")
    torch.set_float32_matmul_precision("medium")
    sys.path.insert(0, directory)
    warnings.simplefilter("error")
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("torch").setLevel(logging.CRITICAL)
    logging.getLogger().addHandler(logging.NullHandler())
    signal.signal(signal.SIGUSR1, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    signal.alarm(3600)
    sys.setrecursionlimit(sys.getrecursionlimit() + 1000)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - left open on purpose: a test that forgot it
    return observe_state(), rank_context().log_path


def install_sigusr1_handler():
    signal.signal(signal.SIGUSR1, _ignore)
    return os.getpid()


def start_thread(daemon):
    threading.Thread(target=time.sleep, args=(60,), daemon=daemon, name="left-behind-worker").start()
    return os.getpid(), rank_context().log_path


def start_and_join_thread():
    worker = threading.Thread(target=time.sleep, args=(0.01,), name="joined-worker")
    worker.start()
    worker.join()
    return os.getpid()


def rank_pid():
    return os.getpid()


LAZY_MODULE = "_isolation_lazily_imported"
LAZY_SOURCE = """
import os
import warnings

os.environ["ISOLATION_SET_AT_IMPORT"] = "by the module"
warnings.filterwarnings("ignore", message="isolation-lazy")
"""


def import_lazily(directory):
    """What a SUT adapter does: import a module inside the rank function (here one that sets an
    environment variable at import, as vllm's env_override.py does)."""
    sys.path.insert(0, directory)
    importlib.import_module(LAZY_MODULE)
    os.environ[LEAK_VAR] = "by the test"
    return os.environ["ISOLATION_SET_AT_IMPORT"]


def lazily_imported_state():
    return (LAZY_MODULE in sys.modules, os.environ.get("ISOLATION_SET_AT_IMPORT"), os.environ.get(LEAK_VAR),
            any(f[1] is not None and f[1].pattern == "isolation-lazy" for f in warnings.filters))


# --- tests ------------------------------------------------------------------------------------------------
def test_state_a_test_changes_is_put_back_before_the_next(runner, tmp_path):
    before = run(runner, observe_state)
    changed = run(runner, change_process_state, str(tmp_path))
    for (state, _), base in zip(changed, before):
        differing = {key for key in base if state[key] != base[key]}
        assert differing == set(base) - {"pid"}, f"the test function did not change {set(base) - differing - {'pid'}}"
    after = run(runner, observe_state)
    assert after == before, "state of one test reached the next"
    log_path = changed[0][1]
    with open(log_path) as log:
        text = log.read()
    assert "change_process_state changed process-wide state, put back:" in text
    for item in (f"env {LEAK_VAR} (unset)", "env PATH", "env HOME", "working directory", "grad mode",
                 "default device", "SIGUSR1 handler", "signal mask", "pending alarm (cancelled)"):
        assert item in text, f"{item!r} missing from the rank log's restore line"


def test_what_a_module_sets_when_a_test_imports_it_stays_with_it(runner, tmp_path):
    (tmp_path / f"{LAZY_MODULE}.py").write_text(LAZY_SOURCE)
    assert run(runner, import_lazily, str(tmp_path)) == ["by the module"] * 2
    assert run(runner, lazily_imported_state) == [(True, "by the module", None, True)] * 2


def test_a_joined_thread_keeps_the_pool(runner):
    first = run(runner, start_and_join_thread)
    assert run(runner, rank_pid) == first


def test_a_sigusr1_handler_left_by_a_test_does_not_hide_a_later_hang(runner):
    pids = run(runner, install_sigusr1_handler)
    with pytest.raises(RankFailure) as failure:
        run(runner, fns.sleep_forever_on, 1, timeout=3)
    text = str(failure.value)
    assert "did not answer SIGUSR1" not in text, text
    assert "--- rank 0 stack ---" in text and "--- rank 1 stack ---" in text
    assert "in sleep_forever_on" in text and "in barrier" in text
    assert set(pids) - set(runner.rank_pids) == set(pids), "the hung pool must have been replaced"


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "non-daemon"])
def test_a_thread_left_running_recycles_the_pool_and_the_log_says_why(runner, daemon):
    started = run(runner, start_thread, daemon)
    assert started[0][1], "rank log path"
    after = run(runner, rank_pid)
    assert not {pid for pid, _ in started} & set(after), "a pool with a test's thread still running was reused"
    with open(started[0][1]) as log:
        text = log.read()
    kind = "daemon" if daemon else "non-daemon"
    assert (f"start_thread left state that cannot be put back, the pool will be replaced: a {kind} thread the "
            f"test started is still running: 'left-behind-worker'") in text


# --- the guard in this process (no ranks) ------------------------------------------------------------------
def test_the_guard_keeps_import_time_settings_and_puts_back_the_tests(tmp_path, monkeypatch):
    name = "_isolation_guard_lazy"
    (tmp_path / f"{name}.py").write_text("import os\nos.environ['ISOLATION_GUARD_IMPORT'] = 'by the module'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(LEAK_VAR, raising=False)
    guard = StateGuard(rearm=lambda signals: None, watch_imports=True)
    try:
        guard.before_run()
        importlib.import_module(name)
        os.environ[LEAK_VAR] = "by the test"
        outcome = guard.after_run()
        assert os.environ.get("ISOLATION_GUARD_IMPORT") == "by the module"
        assert LEAK_VAR not in os.environ
        assert outcome.restored == [f"env {LEAK_VAR} (unset)"] and outcome.unrestorable == []
    finally:
        guard.close()
        sys.modules.pop(name, None)
        os.environ.pop("ISOLATION_GUARD_IMPORT", None)


def test_import_time_settings_of_a_new_module_are_kept(monkeypatch):
    """What a module sets when it is imported belongs to it: the baseline is re-taken after imports."""
    guard = StateGuard(rearm=lambda signals: None)
    guard.before_run()
    monkeypatch.setitem(sys.modules, "_isolation_fake_module", object())  # "a module was imported"
    monkeypatch.setenv(LEAK_VAR, "set at import")
    guard.before_run()
    os.environ[LEAK_VAR] = "changed by the test"
    outcome = guard.after_run()
    assert os.environ[LEAK_VAR] == "set at import"
    assert outcome.restored == [f"env {LEAK_VAR}"] and outcome.unrestorable == []
