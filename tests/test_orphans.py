"""No orphans: rank processes (and the forkserver they come from) never outlive their session.

Covers a clean WorldRunner.shutdown(), pools dropped after a failure or evicted, a parent SIGKILLed
while it holds a warm 4-rank pool, a whole pytest run, and a pytest run interrupted by SIGINT (to the
pytest process alone, and to its process group as a terminal's Ctrl-C does). The processes a test
starts inside a rank (a `sleep` here) go with their rank in every one of those cases.

A process counts as gone when it no longer exists, is a zombie, or its pid now belongs to a process
with another start time (pid reuse).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ascend_conformance.harness import rank_context
from ascend_conformance.harness.world import WorldOptions, WorldRunner
from ascend_conformance.platform import CpuPlatform
from tests.events import HANG_GUARD, read_line, wait_for

pytest_plugins = ["pytester"]

# Every wait is for an event (a line, a marker, a process's exit); tests/events.py's HANG_GUARD only ends a hang.


# --- liveness -------------------------------------------------------------------------------------------
def _identity(pid: int) -> dict:
    proc = psutil.Process(pid)
    return {"pid": pid, "create_time": proc.create_time(), "cmdline": " ".join(proc.cmdline())[:160]}


def _alive(entry: dict) -> bool:
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["create_time"]) > 0.05:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_all_gone(entries, what: str, *, dying: bool = False) -> None:
    """Every process of ``entries`` is gone: at once, or (``dying``: they were sent their end, e.g. by the
    kernel when their parent died) once each has exited, however long a loaded box takes to run their exit."""
    assert entries, f"nothing recorded for {what}: the check would prove nothing"
    if dying:
        wait_for(lambda: not any(_alive(e) for e in entries), f"{what} to exit")
    alive = [e for e in entries if _alive(e)]
    assert not alive, f"{what}: {len(alive)} process(es) still alive: {alive}"


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill every process of the session this test started with start_new_session=True."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def _subprocess_env() -> dict:
    env = dict(os.environ)
    for var in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "RANK", "WORLD_SIZE"):
        env.pop(var, None)
    return env


# --- rank functions for the in-process runners ----------------------------------------------------------
def rank_pid():
    return os.getpid()


def fail_on_rank_1():
    if rank_context().rank == 1:
        raise ValueError("deliberate failure on rank 1")
    return os.getpid()


def signal_started_then_block(marker_dir):
    """Say it started, then answer only after the parent was interrupted: the answer comes late, as a slow
    rank's would."""
    with open(os.path.join(marker_dir, f"started-{rank_context().rank}"), "w"):
        pass
    while not os.path.exists(os.path.join(marker_dir, "interrupted")):
        time.sleep(0.01)
    return "interrupted run", rank_context().rank


def echo(tag):
    return "echo", tag, rank_context().rank


_CHILDREN = []  # keeps the Popen objects (and so the children) alive in the rank


def start_child():
    """What a test may do in a rank: start a process (a server under test, a helper) and leave it running."""
    _CHILDREN.append(subprocess.Popen(["sleep", "infinity"]))  # ends only when killed
    return os.getpid(), _CHILDREN[-1].pid


@pytest.fixture
def runner(tmp_path):
    created = []

    def make(**overrides) -> WorldRunner:
        options = dict(platform=CpuPlatform(), physical_ids=tuple(range(8)), lease_dir=str(tmp_path / "leases"),
                       log_root=str(tmp_path / f"logs{len(created)}"), rank_timeout=HANG_GUARD,
                       lease_timeout=HANG_GUARD)
        options.update(overrides)
        world = WorldRunner(WorldOptions(**options))
        created.append(world)
        return world

    try:
        yield make
    finally:
        for world in created:
            world.shutdown()


# --- (a) shutdown, failure, eviction --------------------------------------------------------------------
def test_shutdown_leaves_no_rank(runner):
    world = runner()
    pids2 = world.run(2, rank_pid, (), {}, "orphans::two")
    pids4 = world.run(4, rank_pid, (), {}, "orphans::four")
    assert sorted(world.rank_pids) == sorted(pids2 + pids4), "rank_pids must list every warm rank"
    ranks = [_identity(pid) for pid in world.rank_pids]
    assert all(_alive(r) for r in ranks), "warm ranks must be alive between runs"
    world.shutdown()
    assert world.rank_pids == []
    # shutdown() joins its ranks: they must be gone on return, not some time later
    _assert_all_gone(ranks, "ranks after WorldRunner.shutdown()")


def test_a_failed_pool_and_an_evicted_pool_leave_no_rank(runner):
    world = runner(max_warm_ranks=4)
    first = [_identity(pid) for pid in world.run(2, rank_pid, (), {}, "orphans::evicted")]
    world.run(4, rank_pid, (), {}, "orphans::evictor")  # 2 + 4 > 4 warm ranks: the 2-rank pool is stopped
    _assert_all_gone(first, "ranks of the evicted 2-rank pool")

    world.run(2, rank_pid, (), {}, "orphans::before-failure")
    [pool] = [pool for key, pool in world.pools.items() if key[:2] == (2, (0, 1))]
    doomed = [_identity(pid) for pid in pool.pids]
    with pytest.raises(AssertionError, match="rank 1 of 2 raised"):
        world.run(2, fail_on_rank_1, (), {}, "orphans::failure")
    _assert_all_gone(doomed, "ranks of the pool dropped after a failure")
    world.shutdown()


def test_children_a_rank_started_die_with_its_pool(runner):
    world = runner()
    started = world.run(2, start_child, (), {}, "orphans::child-then-failure")
    children = [_identity(child) for _, child in started]
    assert all(_alive(c) for c in children)
    with pytest.raises(AssertionError, match="rank 1 of 2 raised"):
        world.run(2, fail_on_rank_1, (), {}, "orphans::failure-kills-pool")
    _assert_all_gone(children, "children of ranks of a pool killed after a failure", dying=True)

    children = [_identity(child) for _, child in world.run(2, start_child, (), {}, "orphans::child-then-shutdown")]
    world.shutdown()
    _assert_all_gone(children, "children of ranks after WorldRunner.shutdown()", dying=True)


# --- (b) the parent is SIGKILLed while it holds a warm 4-rank pool --------------------------------------
NOOP_MODULE = '''
import os
import subprocess
import threading

_CHILDREN = []


def noop():
    _CHILDREN.append(subprocess.Popen(["sleep", "infinity"]))  # a process the test started in the rank
    return os.getpid()


def block(marker_dir):
    with open(os.path.join(marker_dir, f"busy-{os.getpid()}"), "w"):
        pass
    threading.Event().wait()  # ends only when killed
'''

PARENT_SCRIPT = '''
import json
import os
import sys
import threading

import psutil

from ascend_conformance.harness.world import WorldOptions, WorldRunner
from ascend_conformance.platform import CpuPlatform


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import orphan_noop

    lease_dir, log_root, state, marker_dir = sys.argv[1:5]
    runner = WorldRunner(WorldOptions(platform=CpuPlatform(), physical_ids=tuple(range(8)), lease_dir=lease_dir,
                                      log_root=log_root, rank_timeout=1800.0, lease_timeout=1800.0))  # HANG_GUARD
    results = runner.run(4, orphan_noop.noop, (), {}, "orphans::parent-killed")
    descendants = []
    ranks = set(runner.rank_pids)
    for proc in psutil.Process().children(recursive=True):
        cmdline = " ".join(proc.cmdline())
        role = ("rank" if proc.pid in ranks else
                "rank-reaper" if proc.ppid() in ranks and proc.name() == "rank-reaper" else
                "rank-child" if proc.ppid() in ranks and cmdline.startswith("sleep") else
                "forkserver" if "multiprocessing.forkserver" in cmdline and proc.ppid() == os.getpid() else
                "resource_tracker" if "resource_tracker" in cmdline else "other")
        descendants.append({"pid": proc.pid, "create_time": proc.create_time(), "role": role,
                            "cmdline": cmdline[:160]})
    print(json.dumps({"ranks": runner.rank_pids, "results": results, "descendants": descendants}), flush=True)
    if state == "busy":  # the ranks are inside a test function when the parent dies, not waiting for work
        runner.run(4, orphan_noop.block, (marker_dir,), {}, "orphans::parent-killed-busy")
    threading.Event().wait()  # until the test kills this parent


if __name__ == "__main__":
    main()
'''


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_ranks_and_forkserver_die_when_the_parent_is_sigkilled(tmp_path, state):
    (tmp_path / "orphan_noop.py").write_text(NOOP_MODULE)
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    markers = tmp_path / "markers"
    markers.mkdir()
    stderr = open(tmp_path / "parent.stderr", "w+b")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "leases"), str(tmp_path / "logs"), state,
                             str(markers)],
                            stdout=subprocess.PIPE, stderr=stderr, cwd=tmp_path, env=_subprocess_env(),
                            start_new_session=True)
    try:
        try:
            report = json.loads(read_line(proc, "the parent script's report"))
        except BaseException:
            stderr.seek(0)
            sys.stderr.write(stderr.read().decode(errors="replace")[-3000:])
            raise
        assert sorted(report["results"]) == sorted(report["ranks"]) and len(report["ranks"]) == 4
        descendants = report["descendants"]
        roles = [d["role"] for d in descendants]
        assert roles.count("rank") == 4 and roles.count("forkserver") == 1, f"unexpected process tree: {descendants}"
        assert roles.count("rank-child") == 4, f"each rank's sleep should be there: {descendants}"
        assert all(_alive(d) for d in descendants)
        if state == "busy":
            wait_for(lambda: len(os.listdir(markers)) >= 4, "all 4 ranks to enter the blocking function",
                     possible=lambda: proc.poll() is None)

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # SIGKILL: it exits
        assert proc.returncode == -signal.SIGKILL
        _assert_all_gone(descendants, f"ranks ({state}), their children, forkserver and helpers of a SIGKILLed "
                                      f"parent holding a 4-rank pool", dying=True)
    finally:
        _kill_session(proc)
        stderr.close()


# --- (c) a whole pytest run -----------------------------------------------------------------------------
INNER_TESTS = '''
import json
import os

import psutil

from ascend_conformance.harness import rank_context

PID_DIR = {pid_dir!r}


def _record(role, proc):
    entry = {{"pid": proc.pid, "create_time": proc.create_time(), "role": role,
              "cmdline": " ".join(proc.cmdline())[:160]}}
    with open(os.path.join(PID_DIR, f"{{role}}-{{proc.pid}}.json"), "w") as handle:
        json.dump(entry, handle)


def record_rank():
    me = psutil.Process()
    _record("rank", me)
    _record("forkserver", me.parent())  # ranks are forked by the forkserver
    return os.getpid()


def record_then_fail_on_rank_1():
    record_rank()
    if rank_context().rank == 1:
        raise ValueError("deliberate failure on rank 1")


def _record_descendants():
    for proc in psutil.Process().children(recursive=True):
        _record("descendant", proc)


def test_two(world):
    assert len(set(world(2).run(record_rank))) == 2
    _record_descendants()


def test_four(world):
    assert len(set(world(4).run(record_rank))) == 4
    _record_descendants()


def test_failure_replaces_the_pool(world):
    world(2).run(record_then_fail_on_rank_1)


def test_after_failure(world):
    assert len(set(world(2).run(record_rank))) == 2
    _record_descendants()
'''


def _records(pid_dir) -> list[str]:
    """The finished records (a rank writes `name.tmp` first, then renames it)."""
    return sorted(name for name in os.listdir(pid_dir) if name.endswith(".json"))


def _recorded(pid_dir) -> list[dict]:
    entries = []
    for name in _records(pid_dir):
        with open(os.path.join(pid_dir, name)) as handle:
            entries.append(json.load(handle))
    return entries


def test_no_process_remains_after_a_pytest_run(pytester, tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    pytester.makepyfile(test_inner=INNER_TESTS.format(pid_dir=str(pid_dir)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--lease-dir", str(tmp_path / "leases"),
                                           timeout=HANG_GUARD)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*rank 1 of 2 raised*deliberate failure on rank 1*"])
    entries = _recorded(pid_dir)
    roles = {e["role"] for e in entries}
    assert {"rank", "forkserver", "descendant"} <= roles, f"recorded roles {roles}"
    # warm 2-rank pool (reused by the failing test, then dropped) + 4-rank pool + the 2-rank replacement
    assert len({e["pid"] for e in entries if e["role"] == "rank"}) == 2 + 4 + 2
    _assert_all_gone(entries, "processes of a finished pytest run", dying=True)


# --- (d) a pytest run interrupted by SIGINT mid-test ----------------------------------------------------
BLOCKING_TEST = '''
import json
import os
import threading

import psutil

from ascend_conformance.harness import rank_context

PID_DIR = {pid_dir!r}


def record_and_block():
    me = psutil.Process()
    entry = {{"pid": me.pid, "create_time": me.create_time(), "role": "rank", "cmdline": "rank"}}
    path = os.path.join(PID_DIR, f"rank{{rank_context().rank}}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(entry, handle)
    os.replace(path + ".tmp", path)
    threading.Event().wait()  # until the run is interrupted


def test_blocks(world):
    world(2).run(record_and_block)
'''


@pytest.mark.parametrize("target", ["pytest-process", "process-group"])
def test_sigint_mid_test_leaves_no_process(tmp_path, target):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    test_file = tmp_path / "test_blocking.py"
    test_file.write_text(BLOCKING_TEST.format(pid_dir=str(pid_dir)))
    output = open(tmp_path / "inner.out", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", str(test_file), "-p", "no:cacheprovider", "-q",
                             "--lease-dir", str(tmp_path / "leases"), "--basetemp", str(tmp_path / "basetemp")],
                            stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path, env=_subprocess_env(),
                            start_new_session=True)
    try:
        wait_for(lambda: len(_records(pid_dir)) >= 2, "both ranks of the inner test to record their pids",
                 possible=lambda: proc.poll() is None)
        assert proc.poll() is None, f"the inner pytest exited early:\n{_text(output)}"
        ranks = _recorded(pid_dir)
        tree = [_identity(p.pid) for p in psutil.Process(proc.pid).children(recursive=True)]
        assert {r["pid"] for r in ranks} <= {t["pid"] for t in tree}
        if target == "pytest-process":
            os.kill(proc.pid, signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            proc.wait(HANG_GUARD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pytest did not stop after SIGINT ({HANG_GUARD:g}s):\n{_text(output)}", pytrace=False)
        text = _text(output)
        assert proc.returncode == 2, f"expected exit code 2 (interrupted), got {proc.returncode}:\n{text}"
        assert "KeyboardInterrupt" in text, text
        _assert_all_gone(ranks + tree, f"ranks and helpers of a pytest run interrupted by SIGINT to the {target}",
                         dying=True)
    finally:
        _kill_session(proc)
        output.close()


def _text(handle) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read().decode(errors="replace")[-4000:]


# --- an interrupted run must not poison the pool --------------------------------------------------------
class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt / a pytest-timeout signal raised in the parent during run()."""


def test_a_run_interrupted_in_the_parent_does_not_answer_the_next_run(runner, tmp_path):
    world = runner()
    world.run(2, echo, (0,), {}, "orphans::warm")
    markers = tmp_path / "markers"
    markers.mkdir()

    def interrupt_when_started():
        wait_for(lambda: len(os.listdir(markers)) >= 2, "both ranks to start the run to interrupt")
        os.kill(os.getpid(), signal.SIGUSR2)

    def raise_interrupted(signum, frame):
        (markers / "interrupted").touch()  # the ranks answer now: after the interrupt, however late it came
        raise _Interrupted()

    previous = signal.signal(signal.SIGUSR2, raise_interrupted)
    thread = threading.Thread(target=interrupt_when_started, daemon=True)
    try:
        thread.start()
        with pytest.raises(_Interrupted):
            world.run(2, signal_started_then_block, (str(markers),), {}, "orphans::interrupted")
    finally:
        thread.join(HANG_GUARD)
        signal.signal(signal.SIGUSR2, previous)
    results = world.run(2, echo, (2,), {}, "orphans::next")
    assert results == [("echo", 2, 0), ("echo", 2, 1)], f"the next run got {results}"
