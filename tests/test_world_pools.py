"""Named pool families: ``world(n, pool=name)`` never shares ranks with another name's pools.

A system under test leaves its imports (vLLM, vllm-ascend, the torch_npu stand-in) and their patches of
torch in a rank for the rest of its life; its tests therefore run on pools of their own.

What the harness promises is per key (n, devices, name): a run reuses the warm pool of its key, and
prefers to lease the devices of its family's warm pools; when another process holds those devices the
run takes other free devices and starts a pool there (it never waits for the warm set). So the tests of
warmth run on a runner of their own (a private lease directory), where no other xdist worker's lease
can move a run to other devices, and the same runner plays the other worker on purpose.
"""
from __future__ import annotations

import os

import pytest

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness.host_register import HostRegister
from ascend_conformance.harness.world import WorldOptions, WorldRunner
from ascend_conformance.platform import CpuPlatform
from tests.events import HANG_GUARD

NAME = "vllm_ascend"


def rank_pid():  # module level: ranks import it
    return os.getpid()


@pytest.fixture
def runner(tmp_path):
    """A WorldRunner on a private lease directory (tmp_path/leases), 8 cpu slots."""
    made = WorldRunner(WorldOptions(platform=CpuPlatform(), physical_ids=tuple(range(8)),
                                    lease_dir=str(tmp_path / "leases"), log_root=str(tmp_path / "logs"),
                                    rank_timeout=HANG_GUARD, lease_timeout=HANG_GUARD))
    try:
        yield made
    finally:
        made.shutdown()


def run(runner, name=""):
    return runner.run(2, rank_pid, (), {}, "test_world_pools", pool_name=name)


def test_pools_of_different_names_never_share_ranks(runner):
    plain = run(runner)
    named = run(runner, NAME)
    assert not set(plain) & set(named), "a named pool reused the default pool's ranks"
    assert run(runner, NAME) == named, "the named pool is warm: the same ranks again"
    assert run(runner) == plain, "the default pool is still warm beside it"


def test_on_the_same_devices_a_named_run_never_takes_another_names_pool(runner, tmp_path):
    """Another process holding (0, 1) moves both families' runs to (2, 3): there the default family has a
    warm pool, and the named run still starts its own. Once (0, 1) is free again each family is warm on
    its most recently used set."""
    other = HostRegister(str(tmp_path / "leases"), tuple(range(8)))  # another xdist worker of the session
    try:
        first = run(runner)  # (0, 1)
        with other.acquire(2, HANG_GUARD, preferred=[(0, 1)]) as lease:
            assert lease.devices == (0, 1)
            plain = run(runner)  # the warm set is busy: a new default pool on (2, 3)
            named = run(runner, NAME)  # (2, 3) as well: its first free window
        assert not set(first) & set(plain), "a run on other devices is a pool of its own"
        assert sorted(runner.pools) == [(2, (0, 1), ""), (2, (2, 3), ""), (2, (2, 3), NAME)]
        assert not set(named) & (set(plain) | set(first)), "a named pool reused a default pool's ranks"
        assert run(runner) == plain, "the default family's most recently used pool is warm"
        assert run(runner, NAME) == named, "the named pool is warm beside it, on the same devices"
    finally:
        other.close()


def test_the_world_fixture_passes_the_pool_name(world):
    """Through the fixture (the session's runner, shared with other xdist workers): which devices a run
    gets depends on the other workers, that its ranks are not the default family's does not."""
    assert not set(world(2).run(rank_pid)) & set(world(2, pool=NAME).run(rank_pid))


def test_a_pool_name_must_be_a_string(world):
    with pytest.raises(ConfigError, match=r"^world\(n, pool=\.\.\.\) must be a name \(str\), got 3$"):
        world(2, pool=3)
