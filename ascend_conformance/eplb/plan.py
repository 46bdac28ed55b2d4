"""Pure planning of an EPLB redistribution: which expert weights move where when the placement changes.

Input: the old and the new ``phy2log [L, R]`` (see :mod:`ascend_conformance.eplb.placement`) for ``G`` EP
ranks; rank ``g`` owns physical slots ``[g*R/G, (g+1)*R/G)``, addressed here by their *local* index
``0 <= slot < R/G``. Output: per layer, the moves that turn every rank's old local experts into the new
ones, without torch.distributed (execution over the ``dynamic_eplb`` group is built on top of this).

Rules
-----
* A new slot that already held the same logical expert is left alone.
* A logical expert the destination rank already holds *anywhere* in the old placement is never sent:
  it is a **local copy** from the lowest old local slot holding it.
* Otherwise it is a **network transfer**, one per (destination rank, logical expert): received once and
  written into every new slot of that expert on that rank (``dst_slots``), so a rank never receives the
  same expert twice in a layer.
* Source of a network transfer: among the ranks holding the expert in the old placement, the one with
  the fewest sends assigned so far in this layer (ties: the lowest rank), from its lowest local slot
  holding the expert. Spreading evens out the bytes each rank sends when hot experts are replicated.
* Canonical order of a layer's transfers: by destination rank, then first destination slot. Each rank's
  ``sends`` and ``recvs`` are subsequences of it, so between any two ranks the i-th send of one matches
  the i-th receive of the other: posting them in list order pairs isend/irecv deterministically.

Execution contract (one layer; the order matters because sources are *old* slots):
  1. post ``isend(old_weights[m.src_slot] -> m.dst_rank)`` for ``m in sends`` and
     ``irecv(recv_buffer[i] <- m.src_rank)`` for ``i, m in enumerate(recvs)``; wait for all;
  2. apply every local copy reading the old weights before writing any slot (copies can form cycles,
     e.g. two slots swapping experts), e.g. ``w[dsts] = w[srcs]`` in one indexed assignment;
  3. write ``recv_buffer[i]`` into every slot of ``recvs[i].dst_slots``.
  The receive buffer of a layer holds ``len(recvs)`` experts: :meth:`RedistributionPlan.byte_accounting`.

Worked example (2 ranks, 2 slots each)::

    old [[0, 1 | 2, 3]]  ->  new [[0, 2 | 1, 3]]
    expert 2: rank 1 slot 0 -> rank 0 slot 1     expert 1: rank 0 slot 1 -> rank 1 slot 0
    rank 0 sends [expert 1 to rank 1], receives [expert 2 from rank 1]; no local copies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ascend_conformance.errors import ConfigError
from ascend_conformance.eplb.placement import _require_positive_int, _validate_phy2log

__all__ = ["ExpertMove", "RankStep", "LayerPlan", "ByteAccounting", "RedistributionPlan", "plan_redistribution"]


@dataclass(frozen=True)
class ExpertMove:
    """One logical expert's weights copied from an old slot into one or more new slots.

    ``src_slot`` is a local slot of ``src_rank`` in the old placement; ``dst_slots`` (ascending) are local
    slots of ``dst_rank`` in the new placement. A network transfer when the ranks differ, else a local copy.
    """
    logical_expert: int
    src_rank: int
    src_slot: int
    dst_rank: int
    dst_slots: tuple[int, ...]

    @property
    def is_local(self) -> bool:
        return self.src_rank == self.dst_rank


@dataclass(frozen=True)
class RankStep:
    """One rank's part of one layer: ordered ``sends`` and ``recvs`` (recv i lands in receive-buffer row
    i) and its ``local_copies``."""
    rank: int
    sends: tuple[ExpertMove, ...]
    recvs: tuple[ExpertMove, ...]
    local_copies: tuple[ExpertMove, ...]


@dataclass(frozen=True)
class LayerPlan:
    """All moves of one layer: network ``transfers`` in canonical order and ``local_copies``."""
    layer: int
    num_ranks: int
    transfers: tuple[ExpertMove, ...]
    local_copies: tuple[ExpertMove, ...]

    def for_rank(self, rank: int) -> RankStep:
        """The sends, receives and local copies of ``rank``, in canonical order.

        >>> plan = plan_redistribution(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 1, 3]]), 2)
        >>> [(m.logical_expert, m.dst_rank) for m in plan.layers[0].for_rank(0).sends]
        [(1, 1)]
        """
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.num_ranks:
            raise ConfigError(f"rank must be an int in [0, {self.num_ranks}), got {rank!r}")
        return RankStep(
            rank=rank,
            sends=tuple(m for m in self.transfers if m.src_rank == rank),
            recvs=tuple(m for m in self.transfers if m.dst_rank == rank),
            local_copies=tuple(m for m in self.local_copies if m.dst_rank == rank),
        )


@dataclass(frozen=True)
class ByteAccounting:
    """Bytes per layer and rank for experts of ``expert_bytes`` each.

    ``sent`` / ``received`` are [L, G] int64 (network only; local copies cost no traffic).
    ``recv_buffer`` [G] is the receive buffer a rank needs for one layer at a time: the largest layer's
    received bytes (received experts x expert_bytes), since layers move one after the other.
    """
    expert_bytes: int
    sent: torch.Tensor
    received: torch.Tensor
    recv_buffer: torch.Tensor


@dataclass(frozen=True)
class RedistributionPlan:
    """Per-layer moves from one placement to another for ``num_ranks`` ranks of ``slots_per_rank`` slots."""
    num_ranks: int
    slots_per_rank: int
    layers: tuple[LayerPlan, ...]

    @property
    def is_empty(self) -> bool:
        """True when nothing moves at all (identical placements)."""
        return all(not lp.transfers and not lp.local_copies for lp in self.layers)

    def byte_accounting(self, expert_bytes: int) -> ByteAccounting:
        """Network bytes per layer and rank, and the per-rank one-layer receive buffer.

        >>> plan = plan_redistribution(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 1, 3]]), 2)
        >>> plan.byte_accounting(expert_bytes=1000).sent
        tensor([[1000, 1000]])
        """
        if isinstance(expert_bytes, bool) or not isinstance(expert_bytes, int) or expert_bytes < 0:
            raise ConfigError(f"expert_bytes must be an int >= 0, got {expert_bytes!r}")
        sent = torch.zeros((len(self.layers), self.num_ranks), dtype=torch.int64)
        received = torch.zeros_like(sent)
        for layer in self.layers:
            for move in layer.transfers:
                sent[layer.layer, move.src_rank] += expert_bytes
                received[layer.layer, move.dst_rank] += expert_bytes
        recv_buffer = received.max(0).values if len(self.layers) else torch.zeros(self.num_ranks, dtype=torch.int64)
        return ByteAccounting(expert_bytes, sent, received, recv_buffer)


def _plan_layer(layer: int, old: list[int], new: list[int], num_ranks: int, slots_per_rank: int) -> LayerPlan:
    def local_slots(row: list[int], rank: int) -> list[int]:
        return row[rank * slots_per_rank:(rank + 1) * slots_per_rank]

    # old_holders[e] = {rank: lowest old local slot holding e}, ranks in ascending order.
    old_holders: dict[int, dict[int, int]] = {}
    for rank in range(num_ranks):
        for slot, expert in enumerate(local_slots(old, rank)):
            old_holders.setdefault(expert, {}).setdefault(rank, slot)

    transfers: list[ExpertMove] = []
    local_copies: list[ExpertMove] = []
    sends_so_far = [0] * num_ranks
    for dst_rank in range(num_ranks):
        old_here, new_here = local_slots(old, dst_rank), local_slots(new, dst_rank)
        # New slots whose content changes, grouped by expert in order of their first slot.
        changed: dict[int, list[int]] = {}
        for slot, expert in enumerate(new_here):
            if old_here[slot] != expert:
                changed.setdefault(expert, []).append(slot)
        for expert, dst_slots in changed.items():
            holders = old_holders.get(expert)
            if not holders:
                raise ConfigError(f"layer {layer}: logical expert {expert} is in the new placement but has "
                                  f"no replica in the old one")
            if dst_rank in holders:
                local_copies.append(ExpertMove(expert, dst_rank, holders[dst_rank], dst_rank, tuple(dst_slots)))
                continue
            src_rank = min(holders, key=lambda r: (sends_so_far[r], r))
            sends_so_far[src_rank] += 1
            transfers.append(ExpertMove(expert, src_rank, holders[src_rank], dst_rank, tuple(dst_slots)))
    return LayerPlan(layer, num_ranks, tuple(transfers), tuple(local_copies))


def plan_redistribution(phy2log_old: torch.Tensor, phy2log_new: torch.Tensor, num_ranks: int) -> RedistributionPlan:
    """Plan the move from ``phy2log_old`` to ``phy2log_new`` (both [L, R], integer) over ``num_ranks`` ranks.

    See the module docstring for the rules, source choice and execution contract. Raises
    :class:`ConfigError` when the shapes differ, ``R`` is not divisible by ``num_ranks``, or a layer
    needs an expert that no rank held before.

    >>> plan = plan_redistribution(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 0, 2, 3]]), 2)
    >>> plan.layers[0].transfers, [(m.src_slot, m.dst_slots) for m in plan.layers[0].local_copies]
    ((), [(1, (0,)), (0, (1,))])
    """
    old = _validate_phy2log(phy2log_old, "phy2log_old")
    new = _validate_phy2log(phy2log_new, "phy2log_new")
    num_ranks = _require_positive_int("num_ranks", num_ranks)
    if old.shape != new.shape:
        raise ConfigError(f"phy2log_old {tuple(old.shape)} and phy2log_new {tuple(new.shape)} differ in shape")
    num_layers, num_replicas = old.shape
    if num_replicas % num_ranks != 0:
        raise ConfigError(f"{num_replicas} physical slots are not divisible by num_ranks {num_ranks}")
    slots_per_rank = num_replicas // num_ranks
    old_rows, new_rows = old.tolist(), new.tolist()
    layers = tuple(_plan_layer(layer, old_rows[layer], new_rows[layer], num_ranks, slots_per_rank)
                   for layer in range(num_layers))
    return RedistributionPlan(num_ranks, slots_per_rank, layers)
