"""Named pool families: ``world(n, pool=name)`` never shares ranks with another name's pools.

A system under test leaves its imports (vLLM, vllm-ascend, the torch_npu stand-in) and their patches of
torch in a rank for the rest of its life; its tests therefore run on pools of their own.
"""
from __future__ import annotations

import os

import pytest

from ascend_conformance.errors import ConfigError


def rank_pid():  # module level: ranks import it
    return os.getpid()


def test_pools_of_different_names_never_share_ranks(world):
    plain = world(2).run(rank_pid)
    named = world(2, pool="vllm_ascend").run(rank_pid)
    assert not set(plain) & set(named), "a named pool reused the default pool's ranks"
    assert world(2, pool="vllm_ascend").run(rank_pid) == named, "the named pool is warm: the same ranks again"
    assert world(2).run(rank_pid) == plain, "the default pool is still warm beside it"


def test_a_pool_name_must_be_a_string(world):
    with pytest.raises(ConfigError, match=r"^world\(n, pool=\.\.\.\) must be a name \(str\), got 3$"):
        world(2, pool=3)
