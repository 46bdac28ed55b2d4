"""The host's register of warm pools (harness/host_register.py): every live pool owns its HCCL port block,
and ``--max-warm-ranks`` bounds the warm ranks of all runners and processes of a lease directory.

Runners here share a private lease directory (tmp_path), as the xdist workers and sessions of one host
share theirs; ranks are cpu (gloo) processes.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ascend_conformance.harness.host_register import HostRegister, LeaseTimeout
from ascend_conformance.harness.world import CPU_MAX_WARM_RANKS, WorldOptions, WorldRunner
from ascend_conformance.platform import PORTS_PER_BLOCK, CpuPlatform, NpuPlatform
from tests.events import HANG_GUARD, wait_for

HCCL_VARIABLES = ("HCCL_IF_BASE_PORT", "HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE")
# Every wait is for an event (a line, a registration, a process's exit); HANG_GUARD only ends a hang.


class CpuWithHcclPorts(CpuPlatform):
    """cpu ranks that also get the npu platform's HCCL port variables: a gloo world that shows which
    ports an NPU world of the same pool would use."""

    def rank_environment(self, physical_ids, port_block, port_base):
        return NpuPlatform.rank_environment(self, physical_ids, port_block, port_base)


# --- rank functions (module level: ranks import them) ---------------------------------------------------
def hccl_environment():
    return {name: os.environ.get(name) for name in HCCL_VARIABLES}


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def pid_once_released(marker):
    """Hold the run until the test creates ``marker`` (the run lasts as long as the test needs it to)."""
    while not os.path.exists(marker):
        time.sleep(0.01)
    return os.getpid()


# --- helpers --------------------------------------------------------------------------------------------
def ports_of(env: dict) -> set[int]:
    base = int(env["HCCL_IF_BASE_PORT"])
    ports = set(range(base, base + PORTS_PER_BLOCK))  # HCCL takes 16 ports from the base
    for name in HCCL_VARIABLES[1:]:
        low, high = map(int, env[name].split("-"))
        ports |= set(range(low, high + 1))
    return ports


@pytest.fixture
def runners(tmp_path):
    """make(**options) -> a WorldRunner on the shared lease directory tmp_path/leases."""
    made = []

    def make(**overrides) -> WorldRunner:
        options = dict(platform=CpuPlatform(), physical_ids=tuple(range(8)), lease_dir=str(tmp_path / "leases"),
                       log_root=str(tmp_path / f"logs{len(made)}"), rank_timeout=HANG_GUARD,
                       lease_timeout=HANG_GUARD)
        options.update(overrides)
        runner = WorldRunner(WorldOptions(**options))
        made.append(runner)
        return runner

    try:
        yield make
    finally:
        for runner in made:
            runner.shutdown()


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


# --- port blocks ----------------------------------------------------------------------------------------
def test_warm_pools_of_different_sizes_and_runners_never_share_hccl_ports(runners):
    first = runners(platform=CpuWithHcclPorts())
    envs = {}
    for n in (1, 2, 4):  # leases (0,), (0, 1), (0, 1, 2, 3): the same worker and the same first device
        replies = first.run(n, hccl_environment, (), {}, f"warm::ports-{n}")
        assert all(reply == replies[0] for reply in replies), f"ranks of one pool disagree: {replies}"
        envs[f"worker A, {n} ranks"] = replies[0]
    assert sorted(key[0] for key in first.pools) == [1, 2, 4], "all three pools must still be warm"
    # Another worker or session of the host (the same xdist worker name in another session) on devices
    # (0, 1), while the first runner's pools are idle and keep their ports.
    second = runners(platform=CpuWithHcclPorts())
    envs["worker B, 2 ranks"] = second.run(2, hccl_environment, (), {}, "warm::ports-other")[0]

    for env in envs.values():
        assert all(env[name] for name in HCCL_VARIABLES), envs
    for (a, env_a), (b, env_b) in itertools.combinations(envs.items(), 2):
        shared = ports_of(env_a) & ports_of(env_b)
        assert not shared, f"{a} and {b} share HCCL ports {sorted(shared)[:4]}...: {env_a} vs {env_b}"


def test_port_blocks_are_the_lowest_free_reused_after_release_and_after_a_dead_owner(tmp_path):
    lease_dir = str(tmp_path / "leases")
    a, b = HostRegister(lease_dir), HostRegister(lease_dir)
    with a.transaction() as state:
        a2 = state.add(a.new_key(), 2, (0, 1))
        a4 = state.add(a.new_key(), 4, (0, 1, 2, 3))
    with b.transaction() as state:
        b2 = state.add(b.new_key(), 2, (0, 1))
    assert [p.port_block for p in (a2, a4, b2)] == [0, 1, 2]
    a.release(a4.key)
    with b.transaction() as state:
        b8 = state.add(b.new_key(), 8, tuple(range(8)))
    assert b8.port_block == 1, "the block of a stopped pool is free again"

    # A process that registers a pool and dies without releasing it (a crashed or SIGKILLed worker):
    # its entry, ranks and port block stop counting.
    code = ("import sys; from ascend_conformance.harness.host_register import HostRegister\n"
            "r = HostRegister(sys.argv[1])\n"
            "with r.transaction() as s: print(s.add(r.new_key(), 4, (4, 5, 6, 7)).port_block)\n")
    result = subprocess.run([sys.executable, "-c", code, lease_dir], capture_output=True, text=True,
                            timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3"]
    a.release_all()
    assert [(p.n, p.port_block) for p in b.pools()] == [(2, 2), (8, 1)], \
        "the dead process's pool must be off the register; a's pools were released"
    with a.transaction() as state:
        assert state.add(a.new_key(), 1, (0,)).port_block == 0


# --- the host-wide bound --------------------------------------------------------------------------------
def test_default_bound_is_the_device_count_on_accelerators(tmp_path):
    def bound(platform, ids, explicit=None):
        return WorldRunner(WorldOptions(platform=platform, physical_ids=ids, lease_dir=str(tmp_path / "leases"),
                                        log_root=str(tmp_path), max_warm_ranks=explicit)).max_warm_ranks

    assert bound(NpuPlatform(), tuple(range(8))) == 8
    assert bound(NpuPlatform(), (2, 3, 5, 7)) == 4  # an outer ASCEND_RT_VISIBLE_DEVICES mask
    assert bound(CpuPlatform(), tuple(range(8))) == CPU_MAX_WARM_RANKS
    assert bound(NpuPlatform(), tuple(range(8)), explicit=3) == 3


HOLDER_FUNCTIONS = '''
import os


def pid():
    return os.getpid()
'''

HOLDER_SCRIPT = '''
import json
import os
import sys
import threading
import time

from ascend_conformance.harness.world import WorldOptions, WorldRunner
from ascend_conformance.platform import CpuPlatform


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import warm_holder_functions

    lease_dir, log_root = sys.argv[1:3]
    runner = WorldRunner(WorldOptions(platform=CpuPlatform(), physical_ids=tuple(range(8)), lease_dir=lease_dir,
                                      log_root=log_root, rank_timeout=1800.0, lease_timeout=1800.0,  # HANG_GUARD
                                      max_warm_ranks=2))
    print(json.dumps(runner.run(2, warm_holder_functions.pid, (), {}, "warm::holder")), flush=True)
    # From here on the process is idle, like an xdist worker busy with tests that need no world; it says when
    # another process stopped its pool (the test waits for that line).
    while runner.pools:
        time.sleep(0.05)
    print(json.dumps("stopped"), flush=True)
    threading.Event().wait()  # until the test kills it


if __name__ == "__main__":
    main()
'''


def test_an_idle_pool_of_another_process_is_stopped_when_the_host_bound_needs_room(tmp_path, runners):
    (tmp_path / "warm_holder_functions.py").write_text(HOLDER_FUNCTIONS)
    (tmp_path / "holder.py").write_text(HOLDER_SCRIPT)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(tmp_path / "leases"),
                               str(tmp_path / "holder-logs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path, text=True, start_new_session=True)
    try:
        line = _read_line(holder)
        holder_ranks = json.loads(line)
        assert len(holder_ranks) == 2, line
        assert _alive(holder_ranks) == holder_ranks, "the holder's pool must be warm before the test goes on"

        # This process needs 2 ranks under the same host-wide bound of 2: the holder's idle pool must go.
        mine = runners(max_warm_ranks=2)
        my_ranks = mine.run(2, sleep_then_pid, (0.0,), {}, "warm::needs-room")
        assert json.loads(_read_line(holder)) == "stopped", "the other process kept its idle pool"
        wait_for(lambda: not _alive(holder_ranks), "the holder's stopped ranks to exit")
        held = [(p.pid, p.n) for p in mine.register.pools()]
        assert held == [(os.getpid(), 2)], f"the register must hold only this process's 2 ranks: {held}"
        assert sorted(my_ranks) == sorted(mine.rank_pids)
    finally:
        holder.kill()
        holder.wait()


def test_waiting_for_room_held_by_a_running_pool_times_out_naming_the_bound_and_holders(runners, tmp_path):
    busy = runners(max_warm_ranks=2)
    waiting = runners(max_warm_ranks=2, lease_timeout=1.0)
    outcome = {}
    release = tmp_path / "release-busy"  # the busy run lasts until the waiting one has given up
    runner_thread = threading.Thread(
        target=lambda: outcome.update(pids=busy.run(2, pid_once_released, (str(release),), {}, "warm::busy")))
    runner_thread.start()
    try:
        wait_for(lambda: busy.register.pools(), "the busy runner's pool to register", possible=runner_thread.is_alive)
        with pytest.raises(LeaseTimeout) as info:
            waiting.run(2, sleep_then_pid, (0.0,), {}, "warm::waits")  # leases (2, 3); no room while busy runs
        message = str(info.value)
        assert "\n" not in message, message
        assert message.startswith("warm::waits: waited 1s for room to keep 2 more ranks warm"), message
        assert "the host's bound is 2 (--max-warm-ranks)" in message and f"pid {os.getpid()}: 2" in message, message
        assert not waiting.pools, "no pool may start past the bound"
    finally:
        release.touch()
        runner_thread.join(HANG_GUARD)
    assert len(outcome.get("pids", [])) == 2, "the running pool must finish its run undisturbed"
    with waiting.register.transaction() as state:
        assert not state.waiting, "a runner that gave up must withdraw its wait"


def _read_line(proc: subprocess.Popen) -> str:
    """The next line of ``proc`` (text mode): waits for the line or the process's exit (an empty read)."""
    result = {}
    reader = threading.Thread(target=lambda: result.update(line=proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(HANG_GUARD)
    line = result.get("line")
    if not line:
        proc.kill()
        pytest.fail(f"no line from the subprocess (it exited, or {HANG_GUARD:g}s passed); stderr:\n"
                    f"{proc.stderr.read()[-3000:]}", pytrace=False)
    return line
