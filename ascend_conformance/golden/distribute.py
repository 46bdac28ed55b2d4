"""Golden models of the collective MoE ops: ``npu_moe_distribute_dispatch(_v2)`` and
``npu_moe_distribute_combine(_v2)``, over ``torch.distributed.all_to_all_single`` on the EP group.

Expert ``e`` lives on EP rank ``e // L`` (``L = moe_expert_num / ep_world_size`` local experts). Dispatch
sends every active routing entry's token row to the rank owning its expert; a rank keeps what it receives
ordered by (local expert, source rank, source order). Combine sends every row back to the rank it came from
and weights it into its token. Each op runs in three steps:

1. every rank checks its own inputs (:mod:`~ascend_conformance.golden.distribute_inputs`);
2. the header handshake (:mod:`~ascend_conformance.golden.handshake`): a bad input anywhere raises on every
   rank, and the ranks check that they agree on the shapes and on how many rows go where;
3. the data moves.

Worked example, 2 EP ranks, 4 experts (L = 2), one token per rank with K = 2: rank 0's token picks experts
[3, 0], rank 1's picks [1, 2]. Rank 0 receives the rows for its experts 0 and 1: expert 0 ← rank 0's token,
expert 1 ← rank 1's token, so ``expert_token_nums = [1, 1]`` and ``ep_recv_counts`` (cumsum per (local
expert, source rank)) = [1, 1, 1, 2] for the segments (e0, r0), (e0, r1), (e1, r0), (e1, r1).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError
from ascend_conformance.golden.distribute_inputs import (
    check_active_mask, check_ep_shape, check_expert_ids, check_expert_scales, check_no_tp_no_shared, entry_mask,
)
from ascend_conformance.golden.handshake import DTYPE_CODES, agree, agree_on, ep_group
from ascend_conformance.golden.routing import stable_expert_order
from ascend_conformance.golden.validation import (
    FLOAT_NAMES, FLOATS, check_choice, check_range, check_tensor, check_unsupported, fail, got,
)

COMM_ALGS = ("", "fullmesh", "hierarchy", "fullmesh_v1", "fullmesh_v2")  # change speed, not results


def segment_order(counts: torch.Tensor, major_first_keys: torch.Tensor) -> torch.Tensor:
    """Permutation that stably sorts rows laid out as consecutive segments (`counts`, flattened in their
    current order) by the segment keys `major_first_keys` (same layout).

    Rows arrived as (source rank, local expert) segments of sizes [[1, 0], [2, 1]]; ordered by (local expert,
    source rank) the segment keys are [[0, 2], [1, 3]]:

    >>> segment_order(torch.tensor([[1, 0], [2, 1]]), torch.tensor([[0, 2], [1, 3]])).tolist()
    [0, 1, 2, 3]
    >>> segment_order(torch.tensor([[1, 1], [1, 1]]), torch.tensor([[0, 2], [1, 3]])).tolist()
    [0, 2, 1, 3]
    """
    row_keys = major_first_keys.reshape(-1).repeat_interleave(counts.reshape(-1))
    return torch.argsort(row_keys, stable=True)


def _local_expert_major(local_experts: int, world: int, device) -> torch.Tensor:
    """Keys [source rank, local expert] that order segments by local expert, then source rank."""
    return (torch.arange(local_experts, device=device).unsqueeze(0) * world
            + torch.arange(world, device=device).unsqueeze(1))


def _source_major(local_experts: int, world: int, device) -> torch.Tensor:
    """Keys [local expert, source rank] that order segments by source rank, then local expert."""
    return (torch.arange(world, device=device).unsqueeze(0) * local_experts
            + torch.arange(local_experts, device=device).unsqueeze(1))


def _move_rows(rows: torch.Tensor, send_splits: list[int], recv_splits: list[int], arrival_order: torch.Tensor,
               capacity: int, group) -> torch.Tensor:
    """All-to-all of `rows` (already in send order), the received ones put in `arrival_order` at the top of
    a zeroed buffer of `capacity` rows."""
    received = sum(recv_splits)
    arrived = rows.new_empty((received, *rows.shape[1:]))
    dist.all_to_all_single(arrived, rows.contiguous(), output_split_sizes=recv_splits, input_split_sizes=send_splits,
                           group=group)
    out = rows.new_zeros((capacity, *rows.shape[1:]))
    out[:received] = arrived.index_select(0, arrival_order)
    return out


# ------------------------------------------------------------------------------------------- dispatch

def _dispatch_header(op, x, expert_ids, world, rank, ep_world_size, ep_rank_id, moe_expert_num, *, x_active_mask,
                     expert_scales, global_bs, expert_token_nums_type, local_checks) -> list[int]:
    """This rank's checks; the header fields every rank must agree on (ConfigError when a check fails)."""
    local_checks()
    check_ep_shape(op, world, rank, ep_world_size, ep_rank_id, moe_expert_num)
    check_tensor(op, "x", x, FLOATS, (2,), f"{FLOAT_NAMES} [BS, H]")
    n_tokens, hidden = x.shape
    check_expert_ids(op, expert_ids, n_tokens, moe_expert_num)
    top_k = expert_ids.shape[1]
    check_active_mask(op, x_active_mask, n_tokens, top_k)
    if expert_scales is not None:
        check_expert_scales(op, expert_scales, n_tokens, top_k)
    check_choice(op, "expert_token_nums_type", expert_token_nums_type, (0, 1), " (0 cumsum, 1 count)")
    if not isinstance(global_bs, int) or global_bs < 0:
        fail(op, f"global_bs must be an int >= 0, got {global_bs!r}")
    return [n_tokens, hidden, moe_expert_num, global_bs, DTYPE_CODES.index(x.dtype), int(expert_scales is not None)]


def _check_dispatch_agreement(op: str, everyone: list[list[int]], global_bs: int, world: int) -> None:
    token_counts = [row[0] for row in everyone]
    for index, name in ((1, "H (x.shape[1])"), (2, "moe_expert_num"), (3, "global_bs"), (5, "expert_scales given")):
        agree_on(op, name, [row[index] for row in everyone])
    agree_on(op, "x dtype", [row[4] for row in everyone], lambda code: DTYPE_CODES[code])
    if global_bs == 0 and len(set(token_counts)) > 1:
        fail(op, f"EP ranks hold different token counts {token_counts}; pass global_bs = max_bs * ep_world_size "
                 f"= {max(token_counts) * world} (torch_npu requires it)")
    if global_bs and global_bs < max(token_counts) * world:
        fail(op, f"global_bs={global_bs} is less than max_bs * ep_world_size = {max(token_counts)} * {world}")


def _dispatch_rows(x, expert_ids, group, world: int, moe_expert_num: int, *, x_active_mask, expert_scales,
                   global_bs: int, expert_token_nums_type: int) -> tuple:
    """The data movement of a dispatch whose inputs every rank accepted; the op's seven outputs."""
    device = x.device
    n_tokens, hidden = x.shape
    top_k = expert_ids.shape[1]
    local_experts = moe_expert_num // world
    row_capacity = (global_bs or n_tokens * world) * min(local_experts, top_k)  # torch_npu's A
    flat_ids = expert_ids.reshape(-1).long()
    sent = entry_mask(x_active_mask, n_tokens, top_k, device)
    # Sorting by global expert id groups the rows by destination rank, then local expert, then token.
    send_order, sent_count = stable_expert_order(flat_ids, sent, moe_expert_num)
    send_position = torch.full((n_tokens * top_k,), -1, dtype=torch.int64, device=device)
    send_position[send_order] = torch.arange(sent_count, device=device)

    per_expert = torch.bincount(flat_ids[sent], minlength=moe_expert_num)
    received_per_source = torch.empty_like(per_expert)  # [source rank, local expert] after the exchange
    dist.all_to_all_single(received_per_source, per_expert, group=group)
    received_per_source = received_per_source.view(world, local_experts)
    send_splits = per_expert.view(world, local_experts).sum(dim=1).tolist()
    recv_splits = received_per_source.sum(dim=1).tolist()

    # Arrival order is (source rank, local expert, token); the contract is (local expert, source rank, token).
    by_expert = segment_order(received_per_source, _local_expert_major(local_experts, world, device))
    expand_x = _move_rows(x.index_select(0, send_order // top_k), send_splits, recv_splits, by_expert,
                          row_capacity, group)
    expand_scales = None
    if expert_scales is not None:
        expand_scales = _move_rows(expert_scales.reshape(-1).index_select(0, send_order), send_splits, recv_splits,
                                   by_expert, row_capacity, group)

    token_nums = received_per_source.sum(dim=0)
    expert_token_nums = (token_nums.cumsum(0) if expert_token_nums_type == 0 else token_nums).to(torch.int64)
    ep_recv_counts = received_per_source.t().reshape(-1).cumsum(0).to(torch.int32)
    tp_recv_counts = torch.tensor([sum(recv_splits)], dtype=torch.int32, device=device)
    return (expand_x, None, send_position.to(torch.int32), expert_token_nums, ep_recv_counts, tp_recv_counts,
            expand_scales)


def _dispatch(op: str, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, x_active_mask,
              expert_scales, global_bs, expert_token_nums_type, local_checks) -> tuple:
    group, world, rank = ep_group(op, group_ep)
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    error, fields = None, [-1] * 6
    try:
        fields = _dispatch_header(op, x, expert_ids, world, rank, ep_world_size, ep_rank_id, moe_expert_num,
                                  x_active_mask=x_active_mask, expert_scales=expert_scales, global_bs=global_bs,
                                  expert_token_nums_type=expert_token_nums_type, local_checks=local_checks)
    except ConfigError as exc:
        error = str(exc)
    _check_dispatch_agreement(op, agree(op, group, device, error, fields), global_bs, world)
    return _dispatch_rows(x, expert_ids, group, world, moe_expert_num, x_active_mask=x_active_mask,
                          expert_scales=expert_scales, global_bs=global_bs,
                          expert_token_nums_type=expert_token_nums_type)


def npu_moe_distribute_dispatch_v2(x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *,
                                   scales=None, x_active_mask=None, expert_scales=None, elastic_info=None,
                                   performance_info=None, group_tp="", tp_world_size=0, tp_rank_id=0,
                                   expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0,
                                   quant_mode=0, global_bs=0, expert_token_nums_type=1, comm_alg="",
                                   zero_expert_num=0, copy_expert_num=0, const_expert_num=0):
    """Send every (active) routing entry's token row to the EP rank owning its expert. Collective.

    Returns ``(expand_x, dynamic_scales, assist_info_for_combine, expert_token_nums, ep_recv_counts,
    tp_recv_counts, expand_scales)``. expand_x ``[A, H]`` with ``A = (global_bs or BS·ep_world_size) ·
    min(L, K)``: its first rows are the received ones, ordered (local expert, source rank, source order);
    the rest are undefined. expert_token_nums int64 ``[L]``: per local expert, cumsum (type 0) or count (1).
    x_active_mask (bool ``[BS]``, True first, or ``[BS, K]``) False entries send nothing. expand_scales is
    expert_scales moved with the rows (None when not given); dynamic_scales is None (no quantisation).
    """
    op = "npu_moe_distribute_dispatch_v2"

    def local_checks():
        check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                              expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        check_unsupported(op, scales=(scales, None), elastic_info=(elastic_info, None),
                          performance_info=(performance_info, None), quant_mode=(quant_mode, 0),
                          zero_expert_num=(zero_expert_num, 0), copy_expert_num=(copy_expert_num, 0),
                          const_expert_num=(const_expert_num, 0))
        check_choice(op, "comm_alg", comm_alg, COMM_ALGS)

    return _dispatch(op, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num,
                     x_active_mask=x_active_mask, expert_scales=expert_scales, global_bs=global_bs,
                     expert_token_nums_type=expert_token_nums_type, local_checks=local_checks)


def npu_moe_distribute_dispatch(x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *,
                                scales=None, x_active_mask=None, expert_scales=None, group_tp="", tp_world_size=0,
                                tp_rank_id=0, expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0,
                                quant_mode=0, global_bs=0, expert_token_nums_type=1):
    """v1 of :func:`npu_moe_distribute_dispatch_v2`: the same rows and counts; the third output is
    ``expand_idx`` (opaque, for :func:`npu_moe_distribute_combine`)."""
    op = "npu_moe_distribute_dispatch"

    def local_checks():
        check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                              expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        check_unsupported(op, scales=(scales, None), quant_mode=(quant_mode, 0))

    return _dispatch(op, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num,
                     x_active_mask=x_active_mask, expert_scales=expert_scales, global_bs=global_bs,
                     expert_token_nums_type=expert_token_nums_type, local_checks=local_checks)


# -------------------------------------------------------------------------------------------- combine

@dataclasses.dataclass(frozen=True)
class _CombinePlan:
    """What a rank's combine inputs say about the rows to move, derived before the handshake."""

    hidden: int
    n_tokens: int
    top_k: int
    local_experts: int
    sent: torch.Tensor             # bool [BS·K]: the entries the dispatch sent
    positions: torch.Tensor        # int64: send position of each sent entry, in entry order
    segment_counts: torch.Tensor   # rows held per (local expert, source rank) segment
    returned: int                  # rows the dispatch delivered to this rank
    returns_to: torch.Tensor       # [world]: rows this rank sends back to each rank
    comes_back_from: torch.Tensor  # [world]: rows each rank sends back to this rank


def _check_combine_handle(op: str, handle_name: str, handle, n_tokens: int, top_k: int, x_active_mask, device):
    """(sent, positions) from the dispatch's handle: its sent entries' positions must be 0..sent-1."""
    check_tensor(op, handle_name, handle, (torch.int32,), (1,), f"int32 [{n_tokens * top_k}] from the dispatch")
    if handle.numel() != n_tokens * top_k:
        fail(op, f"{handle_name} must be the dispatch's int32 [{n_tokens * top_k}] (BS*K), got {got(handle)}")
    sent = handle.long() >= 0
    positions = handle.long()[sent]
    if not torch.equal(positions.sort().values, torch.arange(positions.numel(), device=device)):
        fail(op, f"{handle_name} is not a dispatch handle (its send positions are not 0..{positions.numel() - 1})")
    check_active_mask(op, x_active_mask, n_tokens, top_k)
    if x_active_mask is not None and not torch.equal(entry_mask(x_active_mask, n_tokens, top_k, device), sent):
        fail(op, f"x_active_mask differs from the one the dispatch used (recorded in {handle_name})")
    return sent, positions


def _check_send_counts(op: str, ep_send_counts, expand_x, world: int, local_experts: int):
    """(segment sizes, rows delivered) from the dispatch's cumulative ep_recv_counts."""
    check_tensor(op, "ep_send_counts", ep_send_counts, (torch.int32,), (1,),
                 f"int32 [{world * local_experts}] (the dispatch's ep_recv_counts)")
    if ep_send_counts.numel() != world * local_experts:
        fail(op, f"ep_send_counts must be the dispatch's int32 [{world * local_experts}], got {got(ep_send_counts)}")
    segment_counts = torch.diff(ep_send_counts.long(), prepend=ep_send_counts.new_zeros(1).long())
    check_range(op, "ep_send_counts (as segment sizes)", segment_counts, 0, None)
    returned = int(ep_send_counts[-1])
    if expand_x.shape[0] < returned:
        fail(op, f"expand_x has {expand_x.shape[0]} rows but the dispatch delivered {returned} to this rank")
    return segment_counts, returned


def _check_shared_expert_x(op: str, shared_expert_x, expand_x, n_tokens: int, hidden: int):
    if shared_expert_x is None:
        return
    check_tensor(op, "shared_expert_x", shared_expert_x, (expand_x.dtype,), (2, 3),
                 f"{expand_x.dtype} [{n_tokens}, {hidden}]")
    if shared_expert_x.shape[-1] != hidden or shared_expert_x.numel() != n_tokens * hidden:
        fail(op, f"shared_expert_x must be {expand_x.dtype} [{n_tokens}, {hidden}] (or 3-D with BS = "
                 f"dim0*dim1), got {got(shared_expert_x)}")


def _combine_plan(op, handle_name, expand_x, expert_ids, handle, ep_send_counts, expert_scales, world, rank,
                  ep_world_size, ep_rank_id, moe_expert_num, *, x_active_mask, shared_expert_x, local_checks,
                  device) -> _CombinePlan:
    """This rank's checks and what its inputs say about the rows to move (ConfigError when a check fails)."""
    local_checks()
    check_ep_shape(op, world, rank, ep_world_size, ep_rank_id, moe_expert_num)
    local_experts = moe_expert_num // world
    check_tensor(op, "expand_x", expand_x, FLOATS, (2,), f"{FLOAT_NAMES} [A, H]")
    hidden = expand_x.shape[1]
    check_tensor(op, "expert_ids", expert_ids, (torch.int32,), (2,), "int32 [BS, K]")
    n_tokens, top_k = expert_ids.shape
    check_expert_ids(op, expert_ids, n_tokens, moe_expert_num)
    sent, positions = _check_combine_handle(op, handle_name, handle, n_tokens, top_k, x_active_mask, device)
    segment_counts, returned = _check_send_counts(op, ep_send_counts, expand_x, world, local_experts)
    check_expert_scales(op, expert_scales, n_tokens, top_k)
    _check_shared_expert_x(op, shared_expert_x, expand_x, n_tokens, hidden)
    returns_to = segment_counts.view(local_experts, world).sum(dim=0)  # rows this rank sends back, per rank
    comes_back_from = torch.bincount(expert_ids.reshape(-1).long()[sent] // local_experts, minlength=world)
    return _CombinePlan(hidden, n_tokens, top_k, local_experts, sent, positions, segment_counts, returned,
                        returns_to, comes_back_from)


def _header_fields(plan: _CombinePlan, moe_expert_num: int, dtype: torch.dtype) -> list[int]:
    return [plan.hidden, moe_expert_num, DTYPE_CODES.index(dtype), *plan.returns_to.tolist(),
            *plan.comes_back_from.tolist()]


def _check_combine_agreement(op: str, handle_name: str, everyone: list[list[int]], world: int) -> None:
    """Same H, expert count and dtype everywhere, and rank `owner` holds exactly the rows that rank `source`
    expects back from it."""
    agree_on(op, "H (expand_x.shape[1])", [row[0] for row in everyone])
    agree_on(op, "moe_expert_num", [row[1] for row in everyone])
    agree_on(op, "expand_x dtype", [row[2] for row in everyone], lambda code: DTYPE_CODES[code])
    for source in range(world):
        for owner in range(world):
            gives, expects = everyone[owner][3 + source], everyone[source][3 + world + owner]
            if gives != expects:
                fail(op, f"rank {owner} holds {gives} rows of rank {source} but rank {source} expects {expects}; "
                         f"pass expert_ids, {handle_name} and ep_recv_counts from the same dispatch")


def _return_rows(expand_x, plan: _CombinePlan, group, world: int, device) -> torch.Tensor:
    """The expert outputs back on the ranks that sent the rows, in their send order."""
    # Expert side: rows sit in (local expert, source rank) segments; send each source its rows back in the
    # order it sent them, (local expert, token).
    by_source = segment_order(plan.segment_counts.view(plan.local_experts, world),
                              _source_major(plan.local_experts, world, device))
    outgoing = expand_x[:plan.returned].index_select(0, by_source).contiguous()
    back = expand_x.new_empty((plan.positions.numel(), plan.hidden))
    dist.all_to_all_single(back, outgoing, output_split_sizes=plan.comes_back_from.tolist(),
                           input_split_sizes=plan.returns_to.tolist(), group=group)
    return back


def _weigh_into_tokens(back, plan: _CombinePlan, expert_scales, shared_expert_x, dtype, device) -> torch.Tensor:
    """``out[t] = Σ_k expert_scales[t, k] · Y(t, k) (+ shared_expert_x[t])`` in float32, then `dtype`."""
    # Token side: the rows come back in send order, so entry f's expert output is back[handle[f]].
    sent_entries = plan.sent.nonzero().flatten()
    entry_scales = expert_scales.reshape(-1).index_select(0, sent_entries).unsqueeze(1)
    weighted = back.float().index_select(0, plan.positions) * entry_scales
    out = torch.zeros((plan.n_tokens, plan.hidden), dtype=torch.float32, device=device)
    out.index_add_(0, sent_entries // plan.top_k, weighted)
    if shared_expert_x is not None:
        active_token = plan.sent.view(plan.n_tokens, plan.top_k).any(dim=1, keepdim=True)
        out = out + torch.where(active_token, shared_expert_x.reshape(plan.n_tokens, plan.hidden).float(), 0.0)
    return out.to(dtype)


def _combine(op: str, handle_name: str, expand_x, expert_ids, handle, ep_send_counts, expert_scales, group_ep,
             ep_world_size, ep_rank_id, moe_expert_num, *, x_active_mask, shared_expert_x, local_checks):
    group, world, rank = ep_group(op, group_ep)
    device = expand_x.device if isinstance(expand_x, torch.Tensor) else torch.device("cpu")
    error, fields, plan = None, [-1] * (3 + 2 * world), None
    try:
        plan = _combine_plan(op, handle_name, expand_x, expert_ids, handle, ep_send_counts, expert_scales, world,
                             rank, ep_world_size, ep_rank_id, moe_expert_num, x_active_mask=x_active_mask,
                             shared_expert_x=shared_expert_x, local_checks=local_checks, device=device)
        fields = _header_fields(plan, moe_expert_num, expand_x.dtype)
    except ConfigError as exc:
        error = str(exc)
    _check_combine_agreement(op, handle_name, agree(op, group, device, error, fields), world)
    back = _return_rows(expand_x, plan, group, world, device)
    return _weigh_into_tokens(back, plan, expert_scales, shared_expert_x, expand_x.dtype, device)


def npu_moe_distribute_combine_v2(expand_x, expert_ids, assist_info_for_combine, ep_send_counts, expert_scales,
                                  group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, tp_send_counts=None,
                                  x_active_mask=None, expand_scales=None, shared_expert_x=None, elastic_info=None,
                                  ori_x=None, const_expert_alpha_1=None, const_expert_alpha_2=None,
                                  const_expert_v=None, performance_info=None, group_tp="", tp_world_size=0,
                                  tp_rank_id=0, expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0,
                                  global_bs=0, comm_quant_mode=0, comm_alg="", zero_expert_num=0,
                                  copy_expert_num=0, const_expert_num=0):
    """Return the expert outputs to their tokens and weight them. Collective; pairs with dispatch_v2.

    ``expand_x`` is the experts' output in the dispatch's row order; ``assist_info_for_combine`` and
    ``ep_send_counts`` (= the dispatch's ep_recv_counts) are the dispatch's handles. Returns ``[BS, H]``:
    ``out[t] = Σ_k expert_scales[t, k] · Y(t, k) (+ shared_expert_x[t])`` accumulated in float32, and 0 for
    tokens the dispatch's x_active_mask left out. tp_send_counts and expand_scales are not needed here.
    """
    op = "npu_moe_distribute_combine_v2"

    def local_checks():
        check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                              expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        check_unsupported(op, elastic_info=(elastic_info, None), ori_x=(ori_x, None),
                          const_expert_alpha_1=(const_expert_alpha_1, None),
                          const_expert_alpha_2=(const_expert_alpha_2, None), const_expert_v=(const_expert_v, None),
                          performance_info=(performance_info, None), comm_quant_mode=(comm_quant_mode, 0),
                          zero_expert_num=(zero_expert_num, 0), copy_expert_num=(copy_expert_num, 0),
                          const_expert_num=(const_expert_num, 0))
        check_choice(op, "comm_alg", comm_alg, COMM_ALGS)

    return _combine(op, "assist_info_for_combine", expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                    expert_scales, group_ep, ep_world_size, ep_rank_id, moe_expert_num,
                    x_active_mask=x_active_mask, shared_expert_x=shared_expert_x, local_checks=local_checks)


def npu_moe_distribute_combine(expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales, group_ep,
                               ep_world_size, ep_rank_id, moe_expert_num, *, tp_send_counts=None,
                               x_active_mask=None, activation_scale=None, weight_scale=None, group_list=None,
                               expand_scales=None, shared_expert_x=None, group_tp="", tp_world_size=0, tp_rank_id=0,
                               expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0, global_bs=0,
                               out_dtype=0, comm_quant_mode=0, group_list_type=0):
    """v1 of :func:`npu_moe_distribute_combine_v2`, taking the v1 dispatch's ``expand_idx``.

    torch_npu documents activation_scale, weight_scale, group_list, out_dtype, group_list_type and
    shared_expert_x as reserved in v1, so only their defaults are accepted.
    """
    op = "npu_moe_distribute_combine"

    def local_checks():
        check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                              expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        check_unsupported(op, activation_scale=(activation_scale, None), weight_scale=(weight_scale, None),
                          group_list=(group_list, None), shared_expert_x=(shared_expert_x, None),
                          out_dtype=(out_dtype, 0), comm_quant_mode=(comm_quant_mode, 0),
                          group_list_type=(group_list_type, 0))

    return _combine(op, "expand_idx", expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales, group_ep,
                    ep_world_size, ep_rank_id, moe_expert_num, x_active_mask=x_active_mask, shared_expert_x=None,
                    local_checks=local_checks)
