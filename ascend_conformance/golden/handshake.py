"""The header the EP ranks exchange before a golden dispatch / combine moves any data.

A bad input on one rank must not leave the other ranks blocked in a collective it will never join. So
every rank first checks its own inputs, then all ranks all-gather one small int64 row each: an error flag
and the fields the ranks must agree on (hidden size, expert count, dtype code, row counts, ...). If any
rank's flag is set, *every* rank raises ConfigError (the bad rank with its own message, the others naming
it); otherwise every rank holds every rank's fields and checks that they agree. Only then does data move.

Worked example, 2 EP ranks, rank 1 passes expert ids out of range::

    rank 0 sends [0, 4, 16, ...]       rank 1 sends [1, -1, -1, ...]   (flag 1, fields unset)
    rank 0 raises "... EP rank(s) [1] rejected their inputs (their own error says why); no data was exchanged"
    rank 1 raises its own message, e.g. "... expert_ids values must be [0, 16), got 16 at index [0, 1]"
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError
from ascend_conformance.golden.validation import fail, got

# Shared with peers in the header, so every rank decodes the same dtype from a code.
DTYPE_CODES = (torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.float64)


def ep_group(op: str, group_ep):
    """(group, world size, rank) of the EP group; raised at once, since without it nobody can be told."""
    if not isinstance(group_ep, dist.ProcessGroup):
        fail(op, f"group_ep must be a torch.distributed.ProcessGroup in the golden model (torch_npu takes the "
                 f"HCCL communicator name), got {got(group_ep)}")
    return group_ep, dist.get_world_size(group_ep), dist.get_rank(group_ep)


def agree(op: str, group, device, local_error: str | None, fields: Sequence[int]) -> list[list[int]]:
    """All-gather each rank's (error flag, fields) and raise on every rank if any rank's inputs were bad.

    Returns the fields of every rank, in group-rank order; `fields` must have the same length everywhere.
    """
    mine = torch.tensor([1 if local_error else 0, *fields], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    if local_error:
        raise ConfigError(local_error)
    rows = [g.tolist() for g in gathered]
    failed = [rank for rank, row in enumerate(rows) if row[0]]
    if failed:
        fail(op, f"EP rank(s) {failed} rejected their inputs (their own error says why); no data was exchanged")
    return [row[1:] for row in rows]


def agree_on(op: str, name: str, values: Sequence[int], shown=str):
    """Every rank's value of one header field must be the same.

    >>> agree_on("op", "H", [8, 8])
    >>> agree_on("op", "x dtype", [1, 2], lambda code: DTYPE_CODES[code])
    Traceback (most recent call last):
    ...
    ascend_conformance.errors.ConfigError: op: x dtype must be the same on every EP rank, got [torch.bfloat16, torch.float32] (rank order)
    """
    if len(set(values)) > 1:
        fail(op, f"{name} must be the same on every EP rank, got {[shown(v) for v in values]} (rank order)")
