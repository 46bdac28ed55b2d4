"""Which EP rank holds which expert: the ``expert_map`` of docs/moe.md, for every rank at once.

A rank's ``expert_map`` is int32 ``[E]``: the expert's local index on that rank, or -1 when another rank
holds it. The methods need the placement of *every* rank (AllToAll and MC2 send each routing entry to the
owner of its expert), so :class:`ExpertPlacement` keeps the global view: ``owner[e]`` and ``local[e]``.
Every expert lives on exactly one rank; a rank holds ``L_r >= 1`` experts, ``L_r`` may differ between
ranks (uneven) and a rank's experts need not be consecutive global ids (non-contiguous).

Default (no expert_map): rank r owns ``[r·L, (r+1)·L)`` with ``L = E / P``, local id ``e - r·L``.

Slots
-----
The op path addresses experts by position, not by map: ``npu_moe_init_routing_v2`` keeps the entries of an
``active_expert_range [lo, hi)`` and the distribute ops send expert ``e`` to rank ``e // L``. A placement
is brought into that form by **slot ids**: ``slot(e) = owner[e]·L_max + local[e]`` with ``L_max = max_r
L_r``. Rank r then owns the slots ``[r·L_max, r·L_max + L_r)`` in local-id order, and the slot space has
``P·L_max`` entries (slots past ``L_r`` on a rank are never used). For the default placement ``L_max = L``
and ``slot(e) = e``: the translation is the identity, so the op calls are exactly vllm-ascend's.

Worked example, E = 6, P = 2, rank 0 holds experts 4, 1, 5 (local 0, 1, 2), rank 1 holds 0, 2, 3::

    expert_map rank 0 = [-1, 1, -1, -1, 0, 2]      rank 1 = [0, -1, 1, 2, -1, -1]
    owner = [1, 0, 1, 1, 0, 0]   local = [0, 1, 1, 2, 0, 2]   L_max = 3
    slot  = [3, 1, 4, 5, 0, 2]   rank 0 owns slots [0, 3), rank 1 owns [3, 6)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ascend_conformance.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ExpertPlacement:
    """Global placement: ``owner[e]`` (EP rank) and ``local[e]`` (index on that rank) of every expert."""

    owner: tuple[int, ...]
    local: tuple[int, ...]
    ep_size: int

    def __post_init__(self):
        experts, size = len(self.owner), self.ep_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"ep_size must be a whole number >= 1, got {size!r}")
        if experts < 1 or len(self.local) != experts:
            raise ConfigError(f"owner and local must both list every expert, got {experts} and {len(self.local)} entries")
        bad = [e for e, r in enumerate(self.owner) if not 0 <= r < size]
        if bad:
            raise ConfigError(f"expert {bad[0]} is placed on rank {self.owner[bad[0]]}, outside EP ranks 0..{size - 1}")
        for rank in range(size):
            ids = sorted(self.local[e] for e in range(experts) if self.owner[e] == rank)
            if not ids:
                raise ConfigError(f"EP rank {rank} holds no expert (every rank needs >= 1; owners {list(self.owner)})")
            if ids != list(range(len(ids))):
                raise ConfigError(f"local ids on EP rank {rank} must be 0..{len(ids) - 1} once each, got {ids}")

    # -- constructors -----------------------------------------------------------------------------

    @classmethod
    def contiguous(cls, num_experts: int, ep_size: int) -> "ExpertPlacement":
        """The default: rank r owns ``[r·L, (r+1)·L)``, ``L = E / P`` (E must be a multiple of P)."""
        if ep_size < 1 or num_experts < ep_size or num_experts % ep_size:
            raise ConfigError(f"experts {num_experts} must be a positive multiple of the EP size {ep_size} "
                              f"(without an expert_map every rank holds E/P experts)")
        per_rank = num_experts // ep_size
        return cls(tuple(e // per_rank for e in range(num_experts)), tuple(e % per_rank for e in range(num_experts)),
                   ep_size)

    @classmethod
    def from_expert_maps(cls, maps: Sequence) -> "ExpertPlacement":
        """From every EP rank's expert_map (rank order): each ``[E]`` of local id or -1."""
        rows = [torch.as_tensor(m).to(torch.int64).reshape(-1).tolist() for m in maps]
        if not rows:
            raise ConfigError("from_expert_maps needs one expert_map per EP rank, got none")
        experts = len(rows[0])
        if any(len(row) != experts for row in rows):
            raise ConfigError(f"expert_maps must all have E entries, got lengths {[len(r) for r in rows]}")
        owner, local = [], []
        for e in range(experts):
            holders = [r for r, row in enumerate(rows) if row[e] >= 0]
            if len(holders) != 1:
                raise ConfigError(f"expert {e} must be held by exactly one EP rank, held by {holders}")
            owner.append(holders[0])
            local.append(rows[holders[0]][e])
        return cls(tuple(owner), tuple(local), len(rows))

    @classmethod
    def scattered(cls, num_experts: int, ep_size: int, seed: int) -> "ExpertPlacement":
        """A seeded non-contiguous, uneven placement: every rank gets >= 1 expert, the rest land on random
        ranks, and local ids are a random order of each rank's experts (so neither owners nor local ids
        follow the global ids)."""
        if num_experts < ep_size:
            raise ConfigError(f"experts {num_experts} < EP size {ep_size}: some rank would hold no expert")
        gen = torch.Generator().manual_seed(seed)
        experts = torch.randperm(num_experts, generator=gen)
        owner = torch.empty(num_experts, dtype=torch.int64)
        owner[experts[:ep_size]] = torch.arange(ep_size)  # one guaranteed expert per rank
        owner[experts[ep_size:]] = torch.randint(0, ep_size, (num_experts - ep_size,), generator=gen)
        local = torch.empty(num_experts, dtype=torch.int64)
        order = torch.randperm(num_experts, generator=gen)  # local ids follow this random order per rank
        rank_of_ordered = owner[order]
        position = torch.argsort(rank_of_ordered, stable=True)  # grouped by rank, random order within
        counts = torch.bincount(rank_of_ordered, minlength=ep_size)
        starts = torch.cumsum(counts, 0) - counts
        sorted_ranks = rank_of_ordered[position]
        local[order[position]] = torch.arange(num_experts) - starts[sorted_ranks]
        return cls(tuple(owner.tolist()), tuple(local.tolist()), ep_size)

    # -- views ---------------------------------------------------------------------------------------

    @property
    def num_experts(self) -> int:
        return len(self.owner)

    def num_local(self, rank: int) -> int:
        return sum(1 for r in self.owner if r == rank)

    @property
    def local_counts(self) -> list[int]:
        return [self.num_local(r) for r in range(self.ep_size)]

    @property
    def max_local(self) -> int:
        """L_max: the slot stride."""
        return max(self.local_counts)

    @property
    def is_default(self) -> bool:
        """True when this is the contiguous E/P placement (no expert_map needed)."""
        if self.num_experts % self.ep_size:
            return False
        return self == ExpertPlacement.contiguous(self.num_experts, self.ep_size)

    def expert_map(self, rank: int, device=None) -> torch.Tensor:
        """int32 [E]: local id on `rank`, -1 for experts other ranks hold."""
        owner = torch.tensor(self.owner)
        local = torch.tensor(self.local)
        return torch.where(owner == rank, local, -1).to(dtype=torch.int32, device=device)

    def local_experts(self, rank: int) -> list[int]:
        """Global ids of `rank`'s experts, in local-id order (the order of its weights)."""
        mine = [(self.local[e], e) for e in range(self.num_experts) if self.owner[e] == rank]
        return [e for _, e in sorted(mine)]

    def slot_table(self, device=None) -> torch.Tensor:
        """int64 [E]: the slot id of every expert (identity for the default placement)."""
        return (torch.tensor(self.owner) * self.max_local + torch.tensor(self.local)).to(device=device)

    def slot_range(self, rank: int) -> tuple[int, int]:
        """[lo, hi): the slots `rank` owns."""
        lo = rank * self.max_local
        return lo, lo + self.num_local(rank)

    @property
    def num_slots(self) -> int:
        return self.ep_size * self.max_local

    def describe(self) -> str:
        if self.is_default:
            return f"contiguous {self.num_experts}/{self.ep_size}"
        return f"expert_map owners {list(self.owner)} local {list(self.local)}"

    def to_dict(self) -> dict:
        return {"owner": list(self.owner), "local": list(self.local), "ep_size": self.ep_size}
