"""Execution of an EPLB redistribution over the ``dynamic_eplb`` group (docs/eplb.md).

:func:`execute_plan` carries out a :class:`~ascend_conformance.eplb.plan.RedistributionPlan` on one EP
rank, one layer after the other, following the plan's execution contract:

1. ``batch_isend_irecv`` of exactly the planned transfers over the given group: each send reads a row of
   the rank's *old* weights in place (no send buffer); each receive lands in a buffer of
   ``len(recvs)`` experts — what this rank receives in this layer, nothing sized by the world;
2. the local copies, reading old weights before writing any slot: they are a parallel assignment
   (slots may swap or rotate), sequenced so that one expert-sized temporary breaks each cycle;
3. the received rows written into their new slots; the buffer is freed before the next layer.

Nothing else is communicated: no all_gather of loads, no barrier, nothing on the default group (vllm-ascend
PRs 6729 / 7344: a collective on the default communicator or a world-sized gather costs buffers far above
the experts that move). Peak extra memory is therefore one layer's received experts plus at most one
expert of temporary, plus O(E) of metadata (the new expert_map row) — never the whole model or world.

:func:`rebalance` wraps it for a rank's :class:`ExpertState`: plan from the current to the new
placement, execute, and after each layer swap that layer's ``expert_map`` / ``phy2log`` / ``logcnt`` /
``log2phy`` rows in place (the weight tensors keep their identity, so kernels or graphs holding them stay
valid; ``log2phy`` is replaced at the end when the new one has a different replica width).

The group is a ``torch.distributed`` ProcessGroup or a GroupCoordinator-like object (``ranks`` in
group-rank order, ``device_group``) whose group rank ``g`` is EP rank ``g`` of the plan. Passing the
default group is refused. With NCCL/HCCL the first P2P call on a fresh communicator should involve every
rank of it (torch's note on batch_isend_irecv); use a group that has already run a collective.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError
from ascend_conformance.eplb.placement import _validate_phy2log, expert_map_for_rank
from ascend_conformance.eplb.plan import RedistributionPlan, plan_redistribution

__all__ = ["LayerStats", "RedistributionStats", "ExpertState", "execute_plan", "rebalance", "resolve_group"]


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """What one rank did for one layer (its own account; the suites count independently)."""
    layer: int
    sent: int  # experts sent
    received: int  # experts received (= rows of the receive buffer)
    local_copies: int  # slots written from another local slot
    recv_buffer_bytes: int
    temp_bytes: int  # the cycle-breaking temporary (0 or one expert)
    seconds: float


@dataclasses.dataclass(frozen=True)
class RedistributionStats:
    expert_bytes: int
    layers: tuple

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.layers)

    @property
    def received(self) -> int:
        return sum(s.received for s in self.layers)

    @property
    def max_layer_buffer_bytes(self) -> int:
        return max((s.recv_buffer_bytes + s.temp_bytes for s in self.layers), default=0)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.layers)


@dataclasses.dataclass(frozen=True)
class _Group:
    ranks: tuple
    process_group: object
    rank: int  # this process's group rank


def resolve_group(group) -> _Group:
    """(ranks, process group, my group rank) of a ProcessGroup or GroupCoordinator; refuses the default group."""
    if not dist.is_initialized():
        raise ConfigError("torch.distributed is not initialised: redistribution needs the dynamic_eplb group")
    if isinstance(group, dist.ProcessGroup):
        pg, ranks = group, tuple(dist.get_process_group_ranks(group))
    elif hasattr(group, "ranks") and hasattr(group, "device_group"):
        pg, ranks = group.device_group, tuple(int(r) for r in group.ranks)
    else:
        raise ConfigError(f"group must be the dynamic_eplb ProcessGroup or GroupCoordinator, got {type(group).__name__}")
    if pg is None or pg is dist.group.WORLD or pg is dist.distributed_c10d._get_default_group():
        raise ConfigError(f"redistribution must not run on the default process group (ranks {list(ranks)}): pass "
                          f"the dynamic_eplb group")
    me = dist.get_rank()
    if me not in ranks:
        raise ConfigError(f"rank {me} is not a member of the redistribution group {list(ranks)}")
    return _Group(ranks, pg, ranks.index(me))


def _validate_weights(plan: RedistributionPlan, layer_weights) -> list:
    if len(layer_weights) != len(plan.layers):
        raise ConfigError(f"weights cover {len(layer_weights)} layers, the plan {len(plan.layers)}")
    out = []
    for layer, tensors in enumerate(layer_weights):
        tensors = list(tensors) if not isinstance(tensors, torch.Tensor) else [tensors]
        if not tensors:
            raise ConfigError(f"layer {layer}: no weight tensors")
        for j, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] != plan.slots_per_rank:
                shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ConfigError(f"layer {layer} tensor {j}: expected [{plan.slots_per_rank} slots, ...], got {shape}")
            if not t.is_contiguous():
                raise ConfigError(f"layer {layer} tensor {j}: expert weights must be contiguous (stride "
                                  f"{tuple(t.stride())}): rows are sent in place")
            if t.device != tensors[0].device:
                raise ConfigError(f"layer {layer}: tensors on {tensors[0].device} and {t.device}")
        out.append(tensors)
    return out


def _expert_bytes(tensors: list) -> int:
    return sum(t[0].numel() * t.element_size() for t in tensors)


def _apply_local_copies(tensors: list, copies: list) -> int:
    """Parallel assignment ``slot[dst] = old slot[src]`` for every (src, dst): each destination is written
    once, sources may be destinations too. Destinations nobody still reads go first; when only cycles
    remain, one slot's old value is parked in a temporary (one expert, reused). Returns the temp bytes."""
    src_of = {dst: src for src, dst in copies}
    readers = Counter(src_of.values())
    parked: Optional[int] = None
    temp: Optional[list] = None
    ready = [dst for dst in src_of if readers[dst] == 0]
    while src_of:
        if not ready:
            # Every pending destination is still read by another copy: pure cycles. Park one old value.
            victim = next(iter(src_of))
            if temp is None:
                temp = [torch.empty_like(t[victim]) for t in tensors]
            for t, buf in zip(tensors, temp):
                buf.copy_(t[victim])
            parked = victim
            ready.append(victim)
        dst = ready.pop()
        src = src_of.pop(dst)
        for j, t in enumerate(tensors):
            t[dst].copy_(temp[j] if src == parked else t[src])
        readers[src] -= 1
        if readers[src] == 0 and src in src_of and src != parked:
            ready.append(src)
    return 0 if temp is None else _expert_bytes([b.unsqueeze(0) for b in temp])


def _execute_layer(plan: RedistributionPlan, layer: int, tensors: list, group: _Group) -> LayerStats:
    started = time.perf_counter()
    step = plan.layers[layer].for_rank(group.rank)
    recv_buffers = None
    if step.recvs:
        recv_buffers = [t.new_empty((len(step.recvs), *t.shape[1:])) for t in tensors]
    ops = []
    for move in step.sends:
        for t in tensors:
            ops.append(dist.P2POp(dist.isend, t[move.src_slot], group.ranks[move.dst_rank], group.process_group))
    for i, move in enumerate(step.recvs):
        for buf in recv_buffers:
            ops.append(dist.P2POp(dist.irecv, buf[i], group.ranks[move.src_rank], group.process_group))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    copies = [(move.src_slot, dst) for move in step.local_copies for dst in move.dst_slots]
    temp_bytes = _apply_local_copies(tensors, copies) if copies else 0
    for i, move in enumerate(step.recvs):
        for t, buf in zip(tensors, recv_buffers):
            for dst in move.dst_slots:
                t[dst].copy_(buf[i])
    recv_bytes = sum(b.numel() * b.element_size() for b in recv_buffers) if recv_buffers else 0
    del recv_buffers
    return LayerStats(layer, len(step.sends), len(step.recvs), len(copies), recv_bytes, temp_bytes,
                      time.perf_counter() - started)


def execute_plan(plan: RedistributionPlan, layer_weights: Sequence, group, *, on_layer_done=None
                 ) -> RedistributionStats:
    """Move this rank's expert weights as ``plan`` says, in place, one layer at a time.

    ``layer_weights[l]`` is the list of this rank's weight tensors of MoE layer ``l`` (e.g. ``[w13, w2]``),
    each ``[slots_per_rank, ...]`` and contiguous; row ``s`` is local slot ``s``. ``on_layer_done(l)`` runs
    after layer ``l`` is complete (where :func:`rebalance` swaps that layer's maps). Every rank of the
    group must call this with the same plan.
    """
    if not isinstance(plan, RedistributionPlan):
        raise ConfigError(f"plan must be a RedistributionPlan, got {type(plan).__name__}")
    resolved = resolve_group(group)
    if len(resolved.ranks) != plan.num_ranks:
        raise ConfigError(f"the plan is for {plan.num_ranks} EP ranks, the group {list(resolved.ranks)} has "
                          f"{len(resolved.ranks)}")
    weights = _validate_weights(plan, layer_weights)
    stats = []
    for layer in range(len(plan.layers)):
        stats.append(_execute_layer(plan, layer, weights[layer], resolved))
        if on_layer_done is not None:
            on_layer_done(layer)
    return RedistributionStats(_expert_bytes(weights[0]) if weights else 0, tuple(stats))


@dataclasses.dataclass
class ExpertState:
    """What one EP rank holds for every MoE layer: its slots' weights and the placement maps.

    ``weights[l]``: tensors ``[slots_per_rank, ...]`` (local slot order); ``phy2log [L, R]``,
    ``log2phy [L, E, maxcnt]``, ``logcnt [L, E]`` (global, as :func:`rebalance_experts` returns them);
    ``expert_map [L, E]`` int32, logical expert -> local slot or -1 (lowest local slot when replicated).
    The maps stay on the device they were created on (:meth:`create`: ``phy2log``'s, e.g. the rank's NPU
    where kernels read them); :func:`rebalance` updates them in place there from host-side placements.
    """
    rank: int
    num_ranks: int
    weights: list
    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor
    expert_map: torch.Tensor

    @classmethod
    def create(cls, rank: int, num_ranks: int, weights: list, phy2log, log2phy, logcnt) -> "ExpertState":
        num_logical = logcnt.shape[1]
        view = expert_map_for_rank(phy2log, rank, num_ranks, num_logical)  # computed on the host
        return cls(rank, num_ranks, weights, phy2log.clone(), log2phy.clone(), logcnt.clone(),
                   view.expert_map.to(phy2log.device))


def rebalance(state: ExpertState, phy2log_new, log2phy_new, logcnt_new, group) -> RedistributionStats:
    """Move ``state`` to the new placement over ``group`` and swap its maps layer by layer."""
    new = _validate_phy2log(phy2log_new, "phy2log_new")
    if tuple(logcnt_new.shape) != tuple(state.logcnt.shape) or log2phy_new.shape[:2] != state.log2phy.shape[:2]:
        raise ConfigError(f"new placement shapes log2phy {list(log2phy_new.shape)} logcnt {list(logcnt_new.shape)} "
                          f"do not match the current {list(state.log2phy.shape)} {list(state.logcnt.shape)}")
    plan = plan_redistribution(state.phy2log, new, state.num_ranks)
    resolved = resolve_group(group)
    if resolved.rank != state.rank:
        raise ConfigError(f"state is for EP rank {state.rank} but this process is group rank {resolved.rank}")
    same_width = log2phy_new.shape == state.log2phy.shape
    slots = plan.slots_per_rank
    num_logical = state.expert_map.shape[1]

    def swap_maps(layer: int) -> None:
        row = [-1] * num_logical
        mine = new[layer, state.rank * slots:(state.rank + 1) * slots].tolist()
        for slot in reversed(range(slots)):  # the lowest local slot wins
            row[mine[slot]] = slot
        expert_map = state.expert_map
        expert_map[layer].copy_(torch.tensor(row, dtype=expert_map.dtype, device=expert_map.device))
        state.phy2log[layer].copy_(new[layer])
        state.logcnt[layer].copy_(logcnt_new[layer])
        if same_width:
            state.log2phy[layer].copy_(log2phy_new[layer])

    stats = execute_plan(plan, state.weights, group, on_layer_done=swap_maps)
    if not same_width:
        state.log2phy = log2phy_new.to(state.log2phy.device, copy=True)
    return stats
