"""What a rank knows about itself while a test function runs in it, and the per-test clean-up hooks.

``rank_context()`` is valid inside a function shipped by ``world(n).run(fn)`` (and in torchrun mode);
outside one it raises, so a test cannot silently read a stale context.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable


@dataclasses.dataclass(frozen=True)
class RankContext:
    rank: int
    world_size: int
    local_rank: int
    device: str  # torch device string the rank is bound to, e.g. "npu:3" or "cpu"
    device_index: int  # leased physical device index (on cpu: the lease slot)
    platform: str
    backend: str
    test_id: str
    seed: int  # differs per rank: for data that is private to a rank
    world_seed: int  # same on every rank: for data every rank must agree on (global inputs)
    log_path: str | None = None


def seeds_for(test_id: str, rank: int) -> tuple[int, int]:
    """(per-rank seed, world seed) derived from the test id, so a failing test reproduces exactly."""
    world_seed = zlib.crc32(test_id.encode()) & 0x7FFFFFFF
    return (world_seed * 1009 + rank) & 0x7FFFFFFF, world_seed


_current: RankContext | None = None
_cleanups: list[Callable[[], None]] = []


def rank_context() -> RankContext:
    if _current is None:
        raise RuntimeError("rank_context() is only valid inside a function run by world(n).run(...)")
    return _current


def set_rank_context(context: RankContext | None) -> None:
    global _current
    _current = context


def register_cleanup(hook: Callable[[], None]) -> None:
    """Run `hook` in every rank after every test (e.g. a test module that keeps per-rank state).

    A module registers its hook once at import; a hook that raises marks the rank pool unclean, and the
    pool is replaced before the next test. The reference implementation does not register anything
    (it knows nothing of the harness): :mod:`~ascend_conformance.harness.reference_state` resets it.
    """
    if hook not in _cleanups:
        _cleanups.append(hook)


def run_cleanups() -> None:
    """The registered hooks, then the reference implementation's resets (groups last)."""
    from ascend_conformance.harness.reference_state import reset_reference_state

    for hook in list(_cleanups):
        hook()
    reset_reference_state()
