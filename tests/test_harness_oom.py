"""A rank killed by SIGKILL is reported with the likely cause: the OOM-kill counters and the peak RSS seen."""
from __future__ import annotations

import re

import pytest

from ascend_conformance.harness import oom
from ascend_conformance.harness.pool import PoolConfig, RankFailure, RankPool
from tests import rank_functions as fns


def test_a_sigkill_after_a_memory_peak_names_the_peak(world):
    with pytest.raises(RankFailure) as failure:
        world(2).run(fns.hold_memory_then_sigkill, 1, 256, 1.5)
    first = str(failure.value).splitlines()[0]
    assert first.startswith("rank 1 of 2 was killed by SIGKILL (signal 9); "), first
    match = re.search(r"peak RSS seen ([\d.]+) (MiB|GiB)", first)
    assert match, first
    mib = float(match.group(1)) * (1024 if match.group(2) == "GiB" else 1)
    assert mib >= 256, f"the rank held 256 MiB, the message says {match.group(0)}"


def test_a_rise_of_the_oom_kill_counter_is_named_as_the_likely_cause(tmp_path):
    """The parent reads the counter at pool start and when a rank is found dead of SIGKILL (here a
    stand-in events file that the rank bumps, as the kernel would, before it dies)."""
    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    pool = RankPool(2, PoolConfig(platform="cpu", devices=(0, 1), env={}, log_dir=str(tmp_path / "logs"),
                                  oom_counter_files=(str(counter),))).start()
    try:
        with pytest.raises(RankFailure) as failure:
            pool.run(fns.count_oom_kill_then_sigkill, (1, str(counter)), {}, "oom::counter", 60.0)
    finally:
        pool.kill()
    first = str(failure.value).splitlines()[0]
    assert first.startswith(f"rank 1 of 2 was killed by SIGKILL (signal 9); likely the kernel's OOM killer: "
                            f"oom_kill rose by 1 in {counter} since the pool started"), first


def test_cgroup_paths_v1_and_v2():
    mountinfo = [
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
        "36 31 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
    ]
    cgroup = ["4:memory:/ci/job7", "3:cpu:/", "0::/ci/job7"]
    assert oom.cgroup_paths(cgroup, mountinfo) == ["/sys/fs/cgroup/memory/ci/job7", "/sys/fs/cgroup/unified/ci/job7"]
    v2_only = ["29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"]
    assert oom.cgroup_paths(["0::/user.slice/session-3.scope"], v2_only) == \
        ["/sys/fs/cgroup/user.slice/session-3.scope"]
    bind_mounted = ["50 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw"]
    assert oom.cgroup_paths(["0::/kubepods/pod1"], bind_mounted) == []  # the path does not apply below a bind


def test_counters_and_limits_are_read_from_the_files(tmp_path):
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    (tmp_path / "memory.limit_in_bytes").write_text(str(512 << 20))
    assert oom.read_oom_kills(str(v1)) == 4
    assert oom.memory_limit(str(v1)) == 512 << 20
    (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1 "unlimited"
    assert oom.memory_limit(str(v1)) is None
    assert oom.read_oom_kills(str(tmp_path / "absent")) is None
    assert oom.format_bytes(3 << 30) == "3.0 GiB" and oom.format_bytes(1536) == "1.5 KiB"
