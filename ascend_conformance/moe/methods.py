"""The MoE communication methods of docs/moe.md: prepare → permute → expert MLP → unpermute → finalize.

Every method is constructed for one rank from its groups and the global expert placement, and runs::

    method = AllToAll(groups, placement)              # device: the groups'; ops: op_provider(device)
    prepared = method.prepare(x, topk_ids, topk_weights, ctx)   # pad / gather / split tokens
    dispatched = method.permute(prepared)              # rows grouped by local expert + group_list
    y = mlp(dispatched.hidden, dispatched.group_list, dispatched.group_list_type)
    combined = method.unpermute(y, dispatched, prepared)        # weighted sum per prepared token
    out = method.finalize(combined, prepared, ctx)     # [ctx.num_tokens, H] on every rank
    # or: out = method.forward(x, topk_ids, topk_weights, mlp, ctx)

Inputs of rank (d, t): the tokens of DP rank d, identical on the TP ranks of a DP group (TP replicates
activations): ``x [n, H]``, ``topk_ids [n, K]`` int32 global expert ids (K distinct per token),
``topk_weights [n, K]`` (used in float32). The output is ``out[n] = Σ_k w[n,k]·MLP_{ids[n,k]}(x[n])``
summed over the experts of every EP rank, in x's dtype, on every rank.

Routing is given, not computed: where vllm-ascend pads and gathers router logits in prepare and routes
afterwards, these methods pad and gather ``topk_ids`` / ``topk_weights`` instead. Padding rows are
``x = 0`` with experts ``0..K-1`` at weight 0 (their rows are computed, weighted by 0, and cut).

Methods (``METHODS`` by CLI name):

========================  ==========================================================================
``dummy``                 shapes only: K copies of every row, zero counts, the token buffer unchanged
``native_allgather``      DP all-gather; pure-torch sort by local expert; index_add back; DP reduce-
                          scatter + TP all-reduce
``allgather``             the same collectives; ``npu_moe_init_routing_v2`` / ``npu_moe_token_unpermute``
``alltoall``              TP split; counts all-gather; ``npu_moe_token_permute`` + all_to_all_single over
                          EP; re-permute by local expert; the reverse; TP all-gather
``mc2``                   pad to padded_num_tokens, TP split with mc2_mask;
                          ``npu_moe_distribute_dispatch_v2`` / ``_combine_v2`` over EP; TP all-gather
========================  ==========================================================================

Two choices where vllm-ascend's code is not a specification:

* AllGather's unpermute needs a valid row for entries of other ranks' experts (init_routing_v2 marks them
  -1). vllm-ascend points them at row ``abs(-1) = 1`` and relies on their zeroed weight; a weight of 0
  times a non-finite row is NaN. Here they point at row ``A`` (the first row past the valid ones), which
  is zeroed first, *and* carry weight 0.
* Placements other than the default are expressed as slot ids (see ``placement.py``) for the op path;
  for the default placement slot ids are the expert ids and the op calls are vllm-ascend's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError
from ascend_conformance.moe.context import ForwardContext
from ascend_conformance.moe.ops import op_provider
from ascend_conformance.moe.parallel import MoEGroups
from ascend_conformance.moe.placement import ExpertPlacement


@dataclasses.dataclass
class Prepared:
    """Tokens this rank routes after prepare."""

    x: torch.Tensor  # [M, H]
    topk_ids: torch.Tensor  # [M, K] int32 global expert ids
    topk_weights: torch.Tensor  # [M, K] float32
    num_tokens: int  # the rank's own tokens (finalize cuts back to them)
    rows_before_split: int  # rows before the TP split (AllToAll, MC2)
    mc2_mask: torch.Tensor | None = None  # bool [M] (MC2)


@dataclasses.dataclass
class Dispatched:
    """Rows for the local experts, grouped by local expert; rows past sum(group_list) are undefined."""

    hidden: torch.Tensor  # [R, H]
    group_list: torch.Tensor  # int64 [L_r]
    group_list_type: int  # 0 cumsum, 1 count
    handle: Any  # what unpermute needs (method-private)
    source_token: torch.Tensor | None = None  # prepared-token index of every defined row, where known


class MoECommMethod:
    """The contract; subclasses implement the four steps."""

    name: ClassVar[str] = ""

    def __init__(self, groups: MoEGroups, placement: ExpertPlacement, ops=None, device=None):
        if placement.ep_size != groups.ep.world_size:
            raise ConfigError(f"{self.name}: placement is for {placement.ep_size} EP ranks, the EP group has "
                              f"{groups.ep.world_size}")
        self.groups = groups
        self.placement = placement
        self.ep_rank = groups.ep.rank_in_group
        self.num_local = placement.num_local(self.ep_rank)
        # The groups' device (this rank's, where the EP group's collectives run) unless told otherwise.
        self.device = torch.device(device) if device is not None else groups.ep.device
        self.ops = ops if ops is not None else op_provider(self.device)
        self.expert_map = placement.expert_map(self.ep_rank, self.device).to(torch.int64)
        self.slot_table = placement.slot_table(self.device)

    # -- the contract ------------------------------------------------------------------------------

    def prepare(self, x, topk_ids, topk_weights, ctx: ForwardContext) -> Prepared:
        raise NotImplementedError

    def permute(self, prepared: Prepared) -> Dispatched:
        raise NotImplementedError

    def unpermute(self, expert_out: torch.Tensor, dispatched: Dispatched, prepared: Prepared) -> torch.Tensor:
        raise NotImplementedError

    def finalize(self, combined: torch.Tensor, prepared: Prepared, ctx: ForwardContext,
                 reduce_results: bool = True) -> torch.Tensor:
        """[ctx.num_tokens, H]. reduce_results: the AllGather family all-reduces over TP only when True
        (else the caller reduces); AllToAll / MC2 combine already sums every expert, so it changes nothing."""
        raise NotImplementedError

    def forward(self, x, topk_ids, topk_weights, mlp, ctx: ForwardContext, reduce_results: bool = True):
        self.check_inputs(x, topk_ids, topk_weights, ctx)
        prepared = self.prepare(x, topk_ids, topk_weights.float(), ctx)
        dispatched = self.permute(prepared)
        expert_out = mlp(dispatched.hidden, dispatched.group_list, dispatched.group_list_type)
        combined = self.unpermute(expert_out, dispatched, prepared)
        return self.finalize(combined, prepared, ctx, reduce_results)

    # -- shared pieces -----------------------------------------------------------------------------

    def check_inputs(self, x, topk_ids, topk_weights, ctx: ForwardContext) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ConfigError(f"{self.name}: x must be a float [N, H] tensor, got {_shape(x)}")
        if not isinstance(topk_ids, torch.Tensor) or topk_ids.dtype != torch.int32 or topk_ids.dim() != 2:
            raise ConfigError(f"{self.name}: topk_ids must be int32 [N, K], got {_shape(topk_ids)}")
        if not isinstance(topk_weights, torch.Tensor) or list(topk_weights.shape) != list(topk_ids.shape):
            raise ConfigError(f"{self.name}: topk_weights must be [N, K] like topk_ids {list(topk_ids.shape)}, "
                              f"got {_shape(topk_weights)}")
        if x.shape[0] != topk_ids.shape[0] or x.shape[0] != ctx.num_tokens:
            raise ConfigError(f"{self.name}: x has {x.shape[0]} tokens, topk_ids {topk_ids.shape[0]}, the forward "
                              f"context {ctx.num_tokens}")
        experts = self.placement.num_experts
        if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= experts):
            raise ConfigError(f"{self.name}: topk_ids must lie in [0, {experts}), got {int(topk_ids.min())}.."
                              f"{int(topk_ids.max())}")

    @staticmethod
    def pad_tokens(x, topk_ids, topk_weights, rows: int):
        """Append rows of x = 0, experts 0..K-1 and weight 0 up to `rows` tokens."""
        missing = rows - x.shape[0]
        if missing <= 0:
            return x, topk_ids, topk_weights
        top_k = topk_ids.shape[1]
        ids = torch.arange(top_k, dtype=topk_ids.dtype, device=topk_ids.device).expand(missing, top_k)
        return (torch.cat([x, x.new_zeros((missing, x.shape[1]))]), torch.cat([topk_ids, ids]),
                torch.cat([topk_weights, topk_weights.new_zeros((missing, top_k))]))

    def slots_of(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """int32 slot ids (= expert ids for the default placement), same shape."""
        return self.slot_table[topk_ids.long()].to(torch.int32)


# ------------------------------------------------------------------------------------------ Dummy

class Dummy(MoECommMethod):
    """Shapes only, no communication: K copies of each row, zero counts (the MLP computes nothing), and
    combine writes nothing, so the token buffer — the input — comes back unchanged."""

    name = "dummy"

    def prepare(self, x, topk_ids, topk_weights, ctx):
        return Prepared(x, topk_ids, topk_weights, x.shape[0], x.shape[0])

    def permute(self, prepared):
        top_k = prepared.topk_ids.shape[1]
        return Dispatched(prepared.x.repeat_interleave(top_k, dim=0),
                          torch.zeros(self.num_local, dtype=torch.int64, device=prepared.x.device), 1, None)

    def unpermute(self, expert_out, dispatched, prepared):
        return prepared.x

    def finalize(self, combined, prepared, ctx, reduce_results=True):
        return combined


# ------------------------------------------------------------------------------ the AllGather family

class _AllGatherFamily(MoECommMethod):
    """prepare: pad to max_tokens_across_dp and all-gather over DP; finalize: reduce-scatter over DP, cut
    to num_tokens, all-reduce over TP (with reduce_results). Every rank then holds all tokens of its DP
    group and computes its own experts' share of each."""

    def prepare(self, x, topk_ids, topk_weights, ctx):
        dp = self.groups.dp
        if dp.world_size > 1:
            x, topk_ids, topk_weights = self.pad_tokens(x, topk_ids, topk_weights, ctx.max_tokens_across_dp)
            x, topk_ids, topk_weights = (dp.all_gather(t, dim=0) for t in (x, topk_ids, topk_weights))
        return Prepared(x, topk_ids, topk_weights, ctx.num_tokens, x.shape[0])

    def finalize(self, combined, prepared, ctx, reduce_results=True):
        out = combined
        if self.groups.dp.world_size > 1:
            out = self.groups.dp.reduce_scatter(out, dim=0)[:prepared.num_tokens]
        if reduce_results:
            out = self.groups.tp.all_reduce(out)
        return out

    def local_weights(self, topk_ids, topk_weights):
        """topk_weights · (expert_map[ids] != -1): entries of other ranks' experts weigh 0."""
        return topk_weights * (self.expert_map[topk_ids.long()] >= 0)


class NativeAllGather(_AllGatherFamily):
    """Pure torch: stable sort of this rank's entries by local expert, gather rows, count; weight the
    expert rows and index_add them back to their tokens."""

    name = "native_allgather"

    def permute(self, prepared):
        ids = prepared.topk_ids
        top_k = ids.shape[1]
        local = self.expert_map[ids.long()].reshape(-1)
        mine = local >= 0
        # Entries of other ranks' experts sort last (key = num_local) and are dropped.
        order = torch.argsort(torch.where(mine, local, self.num_local), stable=True)
        kept = order[:int(mine.sum())]
        tokens = kept // top_k
        counts = torch.bincount(local.index_select(0, kept), minlength=self.num_local)
        weights = self.local_weights(ids, prepared.topk_weights).reshape(-1)
        return Dispatched(prepared.x.index_select(0, tokens), counts, 1, (kept, tokens, weights), tokens)

    def unpermute(self, expert_out, dispatched, prepared):
        kept, tokens, weights = dispatched.handle
        rows = expert_out[:kept.numel()].float() * weights.index_select(0, kept).unsqueeze(1)
        out = torch.zeros((prepared.x.shape[0], expert_out.shape[1]), dtype=torch.float32, device=expert_out.device)
        return out.index_add_(0, tokens, rows).to(expert_out.dtype)


class AllGather(_AllGatherFamily):
    """NPU ops: ``npu_moe_init_routing_v2`` over this rank's slot range; ``npu_moe_token_unpermute`` with
    the masked weights as probs."""

    name = "allgather"

    def permute(self, prepared):
        x, ids = prepared.x, prepared.topk_ids
        tokens, top_k = ids.shape
        weights = self.local_weights(ids, prepared.topk_weights)
        if tokens == 0:  # every DP rank is empty: nothing to route (no collective is skipped)
            empty = torch.zeros(self.num_local, dtype=torch.int64, device=x.device)
            return Dispatched(x.new_zeros((0, x.shape[1])), empty, 1, (None, 0, weights))
        lo, hi = self.placement.slot_range(self.ep_rank)
        expanded_x, row_idx, counts, _ = self.ops.npu_moe_init_routing_v2(
            x, self.slots_of(ids), active_num=tokens * top_k, expert_num=self.placement.num_slots,
            expert_tokens_num_type=1, expert_tokens_num_flag=True, active_expert_range=[lo, hi], quant_mode=-1)
        return Dispatched(expanded_x, counts, 1, (row_idx, int(counts.sum()), weights))

    def unpermute(self, expert_out, dispatched, prepared):
        row_idx, valid, weights = dispatched.handle
        if row_idx is None:
            return expert_out.new_zeros((0, expert_out.shape[1]))
        rows, index = self.unpermute_rows(expert_out, row_idx, valid)
        return self.ops.npu_moe_token_unpermute(rows, index, probs=weights)

    def unpermute_rows(self, expert_out, row_idx, valid):
        """(rows, int32 index) for npu_moe_token_unpermute: entries marked -1 (other ranks' experts) read
        row `valid`, the first undefined row, zeroed here; when every entry is valid there is none."""
        if valid == row_idx.numel():
            return expert_out, row_idx
        expert_out[valid].zero_()
        return expert_out, torch.where(row_idx >= 0, row_idx, valid).to(torch.int32)


# ---------------------------------------------------------------------------------- AllToAll and MC2

class _TensorParallelSplit(MoECommMethod):
    """finalize of AllToAll and MC2: all-gather the TP chunks of prepare, cut to num_tokens."""

    def split_sizes(self, rows: int) -> list[int]:
        """torch.tensor_split's chunk sizes of `rows` over the TP ranks."""
        tp = self.groups.tp.world_size
        return [rows // tp + (1 if i < rows % tp else 0) for i in range(tp)]

    def take_tp_chunk(self, *tensors):
        """This TP rank's torch.tensor_split chunk of every tensor (along rows)."""
        tp = self.groups.tp
        if tp.world_size == 1:
            return tensors
        return tuple(torch.tensor_split(t, tp.world_size, dim=0)[tp.rank_in_group] for t in tensors)

    def finalize(self, combined, prepared, ctx, reduce_results=True):
        tp = self.groups.tp
        out = combined
        if tp.world_size > 1:
            sizes = self.split_sizes(prepared.rows_before_split)
            widest = max(sizes)
            padded = torch.cat([out, out.new_zeros((widest - out.shape[0], out.shape[1]))])
            gathered = tp.all_gather(padded, dim=0)  # [TP·widest, H]
            keep = torch.cat([torch.arange(size, device=out.device) + i * widest for i, size in enumerate(sizes)])
            out = gathered.index_select(0, keep)
        return out[:prepared.num_tokens]


class AllToAll(_TensorParallelSplit):
    """AllToAll(V): per-slot counts all-gathered over EP; rows permuted by slot (= by destination rank,
    then local expert), exchanged with all_to_all_single, re-permuted by local expert so they end up
    ordered (local expert, source rank, source order). Combine runs the same steps backwards."""

    name = "alltoall"

    def prepare(self, x, topk_ids, topk_weights, ctx):
        rows = max(x.shape[0], self.groups.tp.world_size)  # pad only when there are fewer tokens than TP ranks
        x, topk_ids, topk_weights = self.pad_tokens(x, topk_ids, topk_weights, rows)
        x, topk_ids, topk_weights = self.take_tp_chunk(x, topk_ids, topk_weights)
        return Prepared(x, topk_ids, topk_weights, ctx.num_tokens, rows)

    def permute(self, prepared):
        x, ids = prepared.x, prepared.topk_ids
        ep, ranks, stride = self.groups.ep, self.placement.ep_size, self.placement.max_local
        slots = self.slots_of(ids)
        per_slot = torch.bincount(slots.reshape(-1).long(), minlength=self.placement.num_slots)
        every_rank = ep.all_gather(per_slot.unsqueeze(0), dim=0).view(ranks, ranks, stride)  # [source, dest, local]
        send_splits = per_slot.view(ranks, stride).sum(dim=1).tolist()
        from_sources = every_rank[:, self.ep_rank]  # [source, local]: rows each source sends me per expert
        recv_splits = from_sources.sum(dim=1).tolist()

        permuted, sorted_by_slot = self.ops.npu_moe_token_permute(x, slots)
        received = x.new_empty((sum(recv_splits), x.shape[1]))
        dist.all_to_all_single(received, permuted, output_split_sizes=recv_splits, input_split_sizes=send_splits,
                               group=ep.device_group)
        # Arrival order is (source rank, local expert, source order); regroup by local expert.
        local_of_row = torch.arange(stride, device=x.device).repeat(ranks).repeat_interleave(from_sources.reshape(-1))
        hidden, sorted_by_local = self.ops.npu_moe_token_permute(received, local_of_row.to(torch.int32))
        counts = from_sources.sum(dim=0)[:self.num_local]
        return Dispatched(hidden, counts, 1, (sorted_by_slot, sorted_by_local, send_splits, recv_splits))

    def unpermute(self, expert_out, dispatched, prepared):
        sorted_by_slot, sorted_by_local, send_splits, recv_splits = dispatched.handle
        arrival_order = self.ops.npu_moe_token_unpermute(expert_out, sorted_by_local)
        returned = expert_out.new_empty((sum(send_splits), expert_out.shape[1]))
        dist.all_to_all_single(returned, arrival_order.contiguous(), output_split_sizes=send_splits,
                               input_split_sizes=recv_splits, group=self.groups.ep.device_group)
        return self.ops.npu_moe_token_unpermute(returned, sorted_by_slot, probs=prepared.topk_weights)


class MC2(_TensorParallelSplit):
    """MC2: every rank pads to padded_num_tokens (so all EP ranks send the same batch size), takes its TP
    chunk and the matching slice of mc2_mask (padding rows are inactive: they send nothing), and
    dispatches / combines with the distribute ops over the EP (= mc2) group."""

    name = "mc2"

    def prepare(self, x, topk_ids, topk_weights, ctx):
        rows = ctx.padded_num_tokens
        x, topk_ids, topk_weights = self.pad_tokens(x, topk_ids, topk_weights, rows)
        x, topk_ids, topk_weights, mask = self.take_tp_chunk(x, topk_ids, topk_weights, ctx.mc2_mask)
        return Prepared(x, topk_ids, topk_weights, ctx.num_tokens, rows, mask)

    def permute(self, prepared):
        ep = self.groups.mc2
        slots = self.slots_of(prepared.topk_ids)
        expand_x, _, assist_info, token_nums, ep_recv_counts, tp_recv_counts, _ = \
            self.ops.npu_moe_distribute_dispatch_v2(
                prepared.x, slots, ep.device_group, ep.world_size, self.ep_rank, self.placement.num_slots,
                x_active_mask=prepared.mc2_mask, expert_token_nums_type=1, global_bs=0)
        return Dispatched(expand_x, token_nums[:self.num_local], 1, (slots, assist_info, ep_recv_counts, tp_recv_counts))

    def unpermute(self, expert_out, dispatched, prepared):
        ep = self.groups.mc2
        slots, assist_info, ep_recv_counts, tp_recv_counts = dispatched.handle
        return self.ops.npu_moe_distribute_combine_v2(
            expert_out, slots, assist_info, ep_recv_counts, prepared.topk_weights, ep.device_group, ep.world_size,
            self.ep_rank, self.placement.num_slots, tp_send_counts=tp_recv_counts, x_active_mask=prepared.mc2_mask)


METHODS: dict[str, type[MoECommMethod]] = {
    cls.name: cls for cls in (Dummy, NativeAllGather, AllGather, AllToAll, MC2)
}
# The methods whose forward computes the MoE output (Dummy only keeps shapes).
COMPUTING_METHODS = ("native_allgather", "allgather", "alltoall", "mc2")


def method_class(name: str) -> type[MoECommMethod]:
    if name not in METHODS:
        raise ConfigError(f"unknown MoE method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__
