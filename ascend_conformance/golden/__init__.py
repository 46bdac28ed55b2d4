"""Pure-PyTorch models of the torch_npu MoE ops of docs/ops.md, with torch_npu's names and keywords.

Where torch_npu is present the suites run these next to the real ops on the same inputs; everywhere else
they stand in for the real ops, so a native MoE path and an op path still cross-check two implementations.
Every model validates its inputs and raises :class:`~ascend_conformance.errors.ConfigError` with a one-line
message naming the op, the argument and the offending dtype / shape / value.

Notation
--------
Routing input ``expert_idx`` (or ``expert_ids`` / ``indices``) is ``[N, K]``: token n chose K experts.
Its entries are addressed by the **flat index** ``f = n·K + k``. An entry is *valid* when its expert lies
in the active range ``[lo, hi)``; ``A`` is the number of valid entries. ``s`` is the **stable** argsort of
the valid entries by expert id: ascending expert, ties kept in flat-index order (token order, since one
token never picks an expert twice). Destination row ``j`` of the expanded (permuted) tensor holds the
token of entry ``s[j]``, i.e. ``x[s[j] // K]``.

Worked example, N=2, K=2, E=4, ``expert_idx = [[2, 0], [0, 3]]`` → flat ids ``[2, 0, 0, 3]`` (f = 0..3)::

    s                          = [1, 2, 0, 3]      experts 0 (f=1), 0 (f=2), 2 (f=0), 3 (f=3)
    expanded_x                 = x[[0, 1, 0, 1]]   x[s // K]
    expanded_row_idx, type 0   = [2, 0, 1, 3]      source → destination: entry f went to row [f]
    expanded_row_idx, type 1   = [1, 2, 0, 3]      destination → source: row j came from entry s[j]
    expert tokens, count       = [2, 0, 1, 1]      cumsum [2, 2, 3, 4]; key-value [[0, 2], [2, 1], [3, 1]]
    with active_expert_range=[0, 2):  s = [1, 2], A = 2, type 0 = [-1, 0, 1, -1], counts = [2, 0]

Rows documented as undefined (past ``A``, past the sum of a group list, past the rows a rank received)
are written as zeros (indices: -1) here; real ops leave garbage there, so nothing may rely on them.

Collective ops
--------------
``npu_moe_distribute_dispatch(_v2)`` / ``npu_moe_distribute_combine(_v2)`` are modelled over
``torch.distributed.all_to_all_single`` on the EP group. torch_npu takes ``group_ep`` as an HCCL
communicator *name*; these models take the same keyword but need the ``torch.distributed.ProcessGroup``
itself. Expert ``e`` lives on EP rank ``e // L`` with ``L = moe_expert_num / ep_world_size``. A rank
receives its rows ordered by local expert, then source rank, then source order. Before moving any data the
ranks exchange a small header, so a bad input on one rank makes *every* rank raise ConfigError instead of
leaving the others blocked in a collective. ``assist_info_for_combine`` / ``expand_idx``,
``ep_recv_counts``, ``tp_recv_counts`` and ``expand_scales`` are opaque handles from dispatch to combine:
here ``expand_idx`` / ``assist_info_for_combine`` is int32 ``[BS·K]`` (the entry's position in the
rank's send order, -1 when not sent; torch_npu's v2 handle is ``[A·128]``) and ``ep_recv_counts`` is the
int32 cumsum of received rows per (local expert, source rank) segment. Compare nothing about them.

Where these models differ from torch_npu's documentation (docs/ops.md decides)
--------------------------------------------------------------------------------
* ``npu_moe_init_routing_v2``: ``quant_mode`` defaults to -1 (none; torch_npu's default 0, static
  quantisation, is unsupported there too); ``expert_tokens_num_type=2`` returns ``[n, 2]`` rows for the n
  non-empty experts (torch_npu: ``[expert_num, 2]`` with those rows first); type 0 (cumsum) and
  ``active_num`` truncation are modelled although current torch_npu documents only types 1/2 and
  ``active_num == N·K``; the third output is computed even when ``expert_tokens_num_flag`` is False.
* ``npu_moe_finalize_routing``: a -1 destination contributes nothing, bias included (torch_npu's numpy
  reference adds ``scale·bias`` for it).
* ``npu_grouped_matmul``: ``split_item`` defaults to 3 and ``group_type`` to 0, the only modelled mode
  (torch_npu: 0 and -1).
* dispatch / combine also accept float32 ``x`` (torch_npu: bf16 / fp16 only) and ranks holding 0 tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError

__all__ = [
    "npu_moe_init_routing_v2",
    "npu_moe_token_permute",
    "npu_moe_token_unpermute",
    "npu_moe_finalize_routing",
    "npu_grouped_matmul",
    "npu_moe_distribute_dispatch",
    "npu_moe_distribute_dispatch_v2",
    "npu_moe_distribute_combine",
    "npu_moe_distribute_combine_v2",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_FLOAT_NAMES = "float16, bfloat16 or float32"
# Shared with peers in the dispatch/combine header, so every rank decodes the same dtype from a code.
_DTYPE_CODES = (torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.float64)
_COMM_ALGS = ("", "fullmesh", "hierarchy", "fullmesh_v1", "fullmesh_v2")  # change speed, not results


# --------------------------------------------------------------------------------------------- checks

def _fail(op: str, message: str):
    raise ConfigError(f"{op}: {message}")


def _got(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def _got_list(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return _got(value)


def _check_tensor(op: str, name: str, value, dtypes: Sequence[torch.dtype], ndims: Sequence[int], spec: str):
    """`value` must be a tensor of one of `dtypes` with one of `ndims` dimensions; `spec` is how the message
    names what was expected, e.g. ``int32 [N, K]``."""
    if not isinstance(value, torch.Tensor) or value.dtype not in dtypes or value.dim() not in ndims:
        _fail(op, f"{name} must be {spec}, got {_got(value)}")


def _check_rows(op: str, name: str, value: torch.Tensor, rows: int, spec: str):
    if value.shape[0] != rows:
        _fail(op, f"{name} must be {spec} with {rows} rows, got {_got(value)}")


def _check_range(op: str, name: str, value: torch.Tensor, lo: int, hi: int | None):
    """Every element of `value` in [lo, hi) (hi None: no upper bound)."""
    if value.numel() == 0:
        return
    bad = value < lo
    if hi is not None:
        bad |= value >= hi
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        _fail(op, f"{name} values must be {bound}, got {int(value[where])} at index {list(where)}")


def _check_choice(op: str, name: str, value, allowed: Sequence, why: str = ""):
    if value not in allowed:
        _fail(op, f"{name} must be one of {list(allowed)}{why}, got {value!r}")


def _check_unsupported(op: str, **given):
    """Each keyword is (value, default): a non-default value is a feature these models do not implement."""
    for name, (value, default) in given.items():
        differs = (value is not None) if default is None else (value != default)
        if differs:
            shown = _got_list(value) if isinstance(value, (list, tuple)) else _got(value)
            shown = shown if isinstance(value, (list, tuple, torch.Tensor)) else repr(value)
            _fail(op, f"{name}={shown} is not modelled by the golden op (only {default!r} is)")


# ------------------------------------------------------------------------------------ routing helpers

def _stable_expert_order(flat_ids: torch.Tensor, valid: torch.Tensor, past_last: int) -> tuple[torch.Tensor, int]:
    """(s, A): flat indices of the valid entries sorted by expert, ties by flat index; A = their count."""
    key = torch.where(valid, flat_ids, torch.full_like(flat_ids, past_last))  # invalid ones sort last
    order = torch.argsort(key, stable=True)
    count = int(valid.sum())
    return order[:count], count


def _dynamic_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: scale = rowmax|x| / 127, q = round-half-even(x / scale). All-zero rows: 0, 0."""
    scale = rows.abs().amax(dim=1) / 127.0 if rows.shape[1] else rows.new_zeros(rows.shape[0])
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)
    quantised = torch.round(rows / divisor).clamp_(-127, 127)  # torch.round rounds half to even
    return quantised.to(torch.int8), scale


# ------------------------------------------------------------------------------------ routing ops

def npu_moe_init_routing_v2(x, expert_idx, *, scale=None, offset=None, active_num=-1, expert_capacity=-1,
                            expert_num=-1, drop_pad_mode=0, expert_tokens_num_type=0,
                            expert_tokens_num_flag=False, quant_mode=-1, active_expert_range=(),
                            row_idx_type=0):
    """Sort the token copies of the valid routing entries by expert (dropless).

    Returns ``(expanded_x, expanded_row_idx, expert_tokens, expanded_scale)``:

    * expanded_x ``[N·K, H]`` (``[active_num, H]`` when active_num > 0): row j < min(A, active_num) is
      ``x[s[j] // K]``; int8 with quant_mode 1.
    * expanded_row_idx int32 ``[N·K]``: row_idx_type 0 → ``[f]`` = destination row of entry f, -1 when
      invalid; row_idx_type 1 → ``[j]`` = s[j] for j < A.
    * expert_tokens int64 for the experts of ``[lo, hi)``: type 1 counts ``[hi-lo]``, type 0 their cumsum,
      type 2 ``[n, 2]`` (expert id, count) rows of the non-empty experts.
    * expanded_scale float32, one per expanded_x row: the dynamic scale (quant_mode 1), or ``scale[token]``
      when a ``[N]`` scale is given without quantisation; undefined otherwise.

    quant_mode 1 quantises each expanded row (after multiplying by ``scale[expert - lo]`` when a smooth
    ``scale [hi-lo, H]`` is given): scale = rowmax|x| / 127, q = round-half-even(x / scale).
    """
    op = "npu_moe_init_routing_v2"
    _check_tensor(op, "x", x, _FLOATS + (torch.int8,), (2,), "float16, bfloat16, float32 or int8 [N, H]")
    _check_tensor(op, "expert_idx", expert_idx, (torch.int32,), (2,), "int32 [N, K]")
    _check_rows(op, "expert_idx", expert_idx, x.shape[0], "int32 [N, K]")
    _check_choice(op, "drop_pad_mode", drop_pad_mode, (0,), " (dropless; drop/pad mode is not modelled)")
    _check_choice(op, "quant_mode", quant_mode, (-1, 1), " (-1 none, 1 dynamic int8; static 0 is unsupported)")
    _check_choice(op, "row_idx_type", row_idx_type, (0, 1))
    _check_choice(op, "expert_tokens_num_type", expert_tokens_num_type, (0, 1, 2))
    _check_unsupported(op, offset=(offset, None))
    if active_expert_range is None or len(active_expert_range) == 0:
        if expert_num <= 0:
            _fail(op, f"needs expert_num > 0 or active_expert_range [lo, hi], got expert_num={expert_num} "
                      f"and active_expert_range={active_expert_range!r}")
        lo, hi = 0, int(expert_num)
    elif len(active_expert_range) == 2:
        lo, hi = (int(v) for v in active_expert_range)
        if not 0 <= lo < hi or (expert_num > 0 and hi > expert_num):
            _fail(op, f"active_expert_range must be [lo, hi] with 0 <= lo < hi <= expert_num, got "
                      f"{list(active_expert_range)} with expert_num={expert_num}")
    else:
        _fail(op, f"active_expert_range must be [] or [lo, hi], got {list(active_expert_range)!r}")
    _check_range(op, "expert_idx", expert_idx, 0, expert_num if expert_num > 0 else None)
    n_tokens, top_k = expert_idx.shape
    hidden = x.shape[1]
    if quant_mode == 1:
        if x.dtype == torch.int8:
            _fail(op, "quant_mode=1 quantises a floating x, got x int8")
        if scale is not None:
            smooth_spec = f"float32 [{hi - lo}, {hidden}] (per-expert smooth scale)"
            _check_tensor(op, "scale", scale, (torch.float32,), (2,), smooth_spec)
            if list(scale.shape) != [hi - lo, hidden]:
                _fail(op, f"scale must be {smooth_spec}, got {_got(scale)}")
    elif scale is not None:
        _check_tensor(op, "scale", scale, (torch.float32,), (1,), f"float32 [{n_tokens}]")
        _check_rows(op, "scale", scale, n_tokens, f"float32 [{n_tokens}]")

    flat = expert_idx.reshape(-1).long()
    valid = (flat >= lo) & (flat < hi)
    order, valid_count = _stable_expert_order(flat, valid, hi)
    out_rows = active_num if active_num > 0 else n_tokens * top_k
    kept = order[:min(valid_count, out_rows)]
    source_token = kept // top_k

    expanded_scale = torch.zeros(out_rows, dtype=torch.float32, device=x.device)
    if quant_mode == 1:
        rows = x.index_select(0, source_token).float()
        if scale is not None:
            rows = rows * scale.index_select(0, flat[kept] - lo)
        quantised, row_scale = _dynamic_int8(rows)
        expanded_x = torch.zeros((out_rows, hidden), dtype=torch.int8, device=x.device)
        expanded_x[:kept.numel()] = quantised
        expanded_scale[:kept.numel()] = row_scale
    else:
        expanded_x = x.new_zeros((out_rows, hidden))
        expanded_x[:kept.numel()] = x.index_select(0, source_token)
        if scale is not None:
            expanded_scale[:kept.numel()] = scale.index_select(0, source_token)

    expanded_row_idx = torch.full((n_tokens * top_k,), -1, dtype=torch.int64, device=x.device)
    if row_idx_type == 0:
        expanded_row_idx[order] = torch.arange(valid_count, device=x.device)
    else:
        expanded_row_idx[:valid_count] = order

    counts = torch.bincount(flat[valid] - lo, minlength=hi - lo)
    if expert_tokens_num_type == 1:
        expert_tokens = counts
    elif expert_tokens_num_type == 0:
        expert_tokens = counts.cumsum(0)
    else:
        non_empty = counts.nonzero().flatten()
        expert_tokens = torch.stack([non_empty + lo, counts[non_empty]], dim=1)
    return expanded_x, expanded_row_idx.to(torch.int32), expert_tokens.to(torch.int64), expanded_scale


def npu_moe_token_permute(tokens, indices, num_out_tokens=None, padded_mode=False):
    """Copy every token once per routing entry, rows sorted by expert (stable).

    ``o`` = stable argsort of ``indices.flatten()`` (``[N, K]``, or ``[N]`` meaning K = 1). Returns
    ``(permuted_tokens, sorted_indices)``: ``permuted_tokens[j] = tokens[o[j] // K]`` for the first
    num_out_tokens rows (None or 0: all N·K; negative: N·K + num_out_tokens), and int32
    ``sorted_indices`` = inverse of o, the destination row of every flat entry (source → destination).
    """
    op = "npu_moe_token_permute"
    _check_tensor(op, "tokens", tokens, _FLOATS, (2, 3, 4, 5, 6), f"{_FLOAT_NAMES} [N, H, ...]")
    _check_tensor(op, "indices", indices, (torch.int32, torch.int64), (1, 2), "int32 or int64 [N, K] or [N]")
    _check_rows(op, "indices", indices, tokens.shape[0], "int32 or int64 [N, K] or [N]")
    _check_unsupported(op, padded_mode=(padded_mode, False))
    _check_range(op, "indices", indices, 0, None)
    top_k = 1 if indices.dim() == 1 else indices.shape[1]
    total = indices.numel()
    if num_out_tokens is None or num_out_tokens == 0:
        out_rows = total
    elif num_out_tokens > 0:
        out_rows = min(int(num_out_tokens), total)
    else:
        out_rows = max(total + int(num_out_tokens), 0)
    order = torch.argsort(indices.reshape(-1), stable=True)
    permuted = tokens.index_select(0, order[:out_rows] // top_k)
    sorted_indices = torch.empty(total, dtype=torch.int64, device=tokens.device)
    sorted_indices[order] = torch.arange(total, device=tokens.device)
    return permuted, sorted_indices.to(torch.int32)


def npu_moe_token_unpermute(permuted_tokens, sorted_indices, probs=None, padded_mode=False, restore_shape=None):
    """Gather rows back into token order, optionally weighting and summing the K copies of each token.

    Without probs: ``out[i] = permuted_tokens[sorted_indices[i]]``. With probs ``[N, K]``:
    ``out[n] = Σ_k probs[n, k] · permuted_tokens[sorted_indices[n·K + k]]``, accumulated in float32.
    Output dtype = permuted_tokens dtype. Repeated indices are allowed (callers map dropped entries onto
    a real row and give them weight 0); a non-finite row still poisons a weight-0 product, as on the NPU.
    """
    op = "npu_moe_token_unpermute"
    _check_tensor(op, "permuted_tokens", permuted_tokens, _FLOATS, (2,), f"{_FLOAT_NAMES} [N*K, H]")
    _check_tensor(op, "sorted_indices", sorted_indices, (torch.int32,), (1,), "int32 [N*K]")
    _check_unsupported(op, padded_mode=(padded_mode, False), restore_shape=(restore_shape, None))
    _check_range(op, "sorted_indices", sorted_indices, 0, permuted_tokens.shape[0])
    index = sorted_indices.long()
    if probs is None:
        return permuted_tokens.index_select(0, index)
    _check_tensor(op, "probs", probs, _FLOATS, (2,), f"{_FLOAT_NAMES} [N, K]")
    if probs.numel() != index.numel():
        _fail(op, f"probs [N, K] must have N*K = {index.numel()} elements (one per sorted index), got {_got(probs)}")
    n_tokens, top_k = probs.shape
    # the hidden size is explicit: with 0 tokens a -1 would be ambiguous
    rows = permuted_tokens.index_select(0, index).float().view(n_tokens, top_k, permuted_tokens.shape[-1])
    return (rows * probs.float().unsqueeze(-1)).sum(dim=1).to(permuted_tokens.dtype)


def npu_moe_finalize_routing(expanded_permuted_rows, skip1, skip2, bias, scales, expanded_src_to_dst_row,
                             export_for_source_row, drop_pad_mode=0, k=1):
    """Combine the expert outputs of each token: ``out[i] = skip1[i] + skip2[i] + Σ_k scales[i, k] ·
    (rows[idx] + bias[export_for_source_row[i, k]])``.

    ``idx = expanded_src_to_dst_row[k·N + i]`` (drop_pad_mode 0/1, column layout) or ``[i·K + k]`` (2/3,
    row layout, the layout init_routing_v2 produces); idx -1 contributes nothing. Modes 1/3 take rows as
    ``[E, C, H]`` (capacity-padded). skip1, skip2, bias and scales may be None (scales None: weight 1 and
    K = ``k``); skip2 needs skip1. Accumulated in float32, output dtype = rows dtype.
    """
    op = "npu_moe_finalize_routing"
    _check_choice(op, "drop_pad_mode", drop_pad_mode, (0, 1, 2, 3))
    row_dims = 2 if drop_pad_mode in (0, 2) else 3
    row_spec = f"{_FLOAT_NAMES} " + ("[N*K, H]" if row_dims == 2 else "[E, C, H]")
    _check_tensor(op, "expanded_permuted_rows", expanded_permuted_rows, _FLOATS, (row_dims,),
                  f"{row_spec} for drop_pad_mode={drop_pad_mode}")
    dtype = expanded_permuted_rows.dtype
    hidden = expanded_permuted_rows.shape[-1]
    rows = expanded_permuted_rows.reshape(-1, hidden)
    _check_tensor(op, "expanded_src_to_dst_row", expanded_src_to_dst_row, (torch.int32,), (1,), "int32 [N*K]")
    if scales is not None:
        _check_tensor(op, "scales", scales, (dtype,), (2,), f"{dtype} [N, K] (the rows' dtype)")
        top_k = scales.shape[1]
    else:
        if not isinstance(k, int) or k < 1:
            _fail(op, f"k must be the top-k (>= 1) when scales is None, got {k!r}")
        top_k = k
    total = expanded_src_to_dst_row.numel()
    if top_k == 0 or total % top_k:
        _fail(op, f"expanded_src_to_dst_row must have N*K elements with K={top_k}, got {total}")
    n_tokens = total // top_k
    if scales is not None and scales.shape[0] != n_tokens:
        _fail(op, f"scales must be {dtype} [{n_tokens}, {top_k}], got {_got(scales)}")
    _check_range(op, "expanded_src_to_dst_row", expanded_src_to_dst_row, -1, rows.shape[0])
    for name, skip in (("skip1", skip1), ("skip2", skip2)):
        if skip is not None:
            _check_tensor(op, name, skip, (dtype,), (2,), f"{dtype} [{n_tokens}, {hidden}]")
            if list(skip.shape) != [n_tokens, hidden]:
                _fail(op, f"{name} must be {dtype} [{n_tokens}, {hidden}], got {_got(skip)}")
    if skip2 is not None and skip1 is None:
        _fail(op, "skip2 needs skip1 (torch_npu requires skip2 None when skip1 is None)")
    if export_for_source_row is not None:
        _check_tensor(op, "export_for_source_row", export_for_source_row, (torch.int32,), (2,),
                      f"int32 [{n_tokens}, {top_k}]")
        if list(export_for_source_row.shape) != [n_tokens, top_k]:
            _fail(op, f"export_for_source_row must be int32 [{n_tokens}, {top_k}], got {_got(export_for_source_row)}")
    if bias is not None:
        _check_tensor(op, "bias", bias, (dtype,), (2,), f"{dtype} [E, {hidden}]")
        if bias.shape[1] != hidden:
            _fail(op, f"bias must be {dtype} [E, {hidden}], got {_got(bias)}")
        if export_for_source_row is None:
            _fail(op, "bias needs export_for_source_row (the expert of every entry)")
        _check_range(op, "export_for_source_row", export_for_source_row, 0, bias.shape[0])

    index = expanded_src_to_dst_row.long()
    index = index.view(top_k, n_tokens).t() if drop_pad_mode in (0, 1) else index.view(n_tokens, top_k)
    taken = (index >= 0).unsqueeze(-1)
    gathered = rows.float()[index.clamp(min=0)]  # [N, K, H]
    if bias is not None:
        gathered = gathered + bias.float()[export_for_source_row.long()]
    weights = scales.float().unsqueeze(-1) if scales is not None else torch.ones_like(gathered[..., :1])
    # torch.where, not a multiply by 0: a dropped entry must not turn an inf / NaN of row 0 into NaN.
    out = torch.where(taken, weights * gathered, torch.zeros_like(gathered)).sum(dim=1)
    for skip in (skip1, skip2):
        if skip is not None:
            out = out + skip.float()
    return out.to(dtype)


def npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None,
                       antiquant_offset=None, per_token_scale=None, group_list=None, activation_input=None,
                       activation_quant_scale=None, activation_quant_offset=None, split_item=3, group_type=0,
                       group_list_type=0, act_type=0, output_dtype=None, tuning_config=None, x_dtype=None,
                       weight_dtype=None, scale_dtype=None, per_token_scale_dtype=None):
    """Row-grouped matmul: rows of group g of ``x=[X]`` (``[M, Kd]``) get ``X_g @ W[g] (+ bias[g])`` with
    ``weight=[W]`` ``[G, Kd, Nd]``; returns ``[Y]`` with Y ``[M, Nd]`` in X's dtype.

    group_list (int64 tensor ``[G]`` or a list of ints) gives the group sizes as a cumsum
    (group_list_type 0) or as counts (1). Rows past the sum of the counts are undefined (zeros here).
    Each group is one float32-accumulated matmul rounded once to the output dtype. tuning_config is a
    performance hint and ignored; quantisation, activation and multi-tensor modes are not modelled.
    """
    op = "npu_grouped_matmul"
    _check_unsupported(op, scale=(scale, None), offset=(offset, None), antiquant_scale=(antiquant_scale, None),
                       antiquant_offset=(antiquant_offset, None), per_token_scale=(per_token_scale, None),
                       activation_input=(activation_input, None),
                       activation_quant_scale=(activation_quant_scale, None),
                       activation_quant_offset=(activation_quant_offset, None), act_type=(act_type, 0),
                       x_dtype=(x_dtype, None), weight_dtype=(weight_dtype, None), scale_dtype=(scale_dtype, None),
                       per_token_scale_dtype=(per_token_scale_dtype, None))
    _check_choice(op, "split_item", split_item, (2, 3), " (one output tensor; per-group outputs are not modelled)")
    _check_choice(op, "group_type", group_type, (0,), " (grouping along M is the modelled mode)")
    _check_choice(op, "group_list_type", group_list_type, (0, 1), " (0 cumsum, 1 counts)")
    if not isinstance(x, (list, tuple)) or len(x) != 1:
        _fail(op, f"x must be a list of one tensor [M, K], got {_got_list(x)}")
    if not isinstance(weight, (list, tuple)) or len(weight) != 1:
        _fail(op, f"weight must be a list of one tensor [G, K, N], got {_got_list(weight)}")
    matrix, weights = x[0], weight[0]
    _check_tensor(op, "x[0]", matrix, _FLOATS, (2,), f"{_FLOAT_NAMES} [M, K]")
    _check_tensor(op, "weight[0]", weights, (matrix.dtype,), (3,), f"{matrix.dtype} [G, K, N] (x's dtype)")
    if weights.shape[1] != matrix.shape[1]:
        _fail(op, f"weight[0] must be [G, {matrix.shape[1]}, N] to match x[0] {list(matrix.shape)}, "
                  f"got {_got(weights)}")
    if output_dtype is not None and output_dtype != matrix.dtype:
        _fail(op, f"output_dtype must be None or x's dtype {matrix.dtype} (no quantised output), got {output_dtype}")
    n_groups, rows = weights.shape[0], matrix.shape[0]
    if group_list is None:
        _fail(op, "group_list is required for group_type=0")
    if isinstance(group_list, torch.Tensor):
        _check_tensor(op, "group_list", group_list, (torch.int64,), (1,), f"int64 [{n_groups}]")
        sizes = group_list.to("cpu", torch.int64)
    else:
        if group_list_type != 0:
            _fail(op, f"a list group_list is a cumsum (group_list_type=0), got group_list_type={group_list_type}")
        sizes = torch.tensor(list(group_list), dtype=torch.int64)
    if sizes.numel() != n_groups:
        _fail(op, f"group_list must have one entry per group ({n_groups}), got {sizes.numel()}")
    _check_range(op, "group_list", sizes, 0, None)
    if group_list_type == 0:
        if n_groups and bool((sizes[1:] < sizes[:-1]).any()):
            _fail(op, f"group_list with group_list_type=0 must be a non-decreasing cumsum, got {sizes.tolist()}")
        ends = sizes
    else:
        ends = sizes.cumsum(0)
    if n_groups and int(ends[-1]) > rows:
        _fail(op, f"group_list covers {int(ends[-1])} rows but x[0] has {rows}")
    if bias is not None:
        if not isinstance(bias, (list, tuple)) or len(bias) != 1:
            _fail(op, f"bias must be None or a list of one tensor [G, N], got {_got_list(bias)}")
        _check_tensor(op, "bias[0]", bias[0], _FLOATS, (2,), f"float [{n_groups}, {weights.shape[2]}]")
        if list(bias[0].shape) != [n_groups, weights.shape[2]]:
            _fail(op, f"bias[0] must be [{n_groups}, {weights.shape[2]}], got {_got(bias[0])}")

    out = matrix.new_zeros((rows, weights.shape[2]))
    starts = torch.cat([ends.new_zeros(1), ends[:-1]]) if n_groups else ends
    # One matmul per non-empty group: G is the expert count (small); gathering W per row instead would
    # cost M·K·N memory.
    for group, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        if end > start:
            product = matrix[start:end].float() @ weights[group].float()
            if bias is not None:
                product = product + bias[0][group].float()
            out[start:end] = product.to(matrix.dtype)
    return [out]


# ------------------------------------------------------------------------------ collective dispatch/combine

def _ep_group(op: str, group_ep):
    """(group, world size, rank) of the EP group; raised at once, since without it nobody can be told."""
    if not isinstance(group_ep, dist.ProcessGroup):
        _fail(op, f"group_ep must be a torch.distributed.ProcessGroup in the golden model (torch_npu takes the "
                  f"HCCL communicator name), got {_got(group_ep)}")
    return group_ep, dist.get_world_size(group_ep), dist.get_rank(group_ep)


def _agree(op: str, group, device, local_error: str | None, fields: Sequence[int]) -> list[list[int]]:
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
        _fail(op, f"EP rank(s) {failed} rejected their inputs (their own error says why); no data was exchanged")
    return [row[1:] for row in rows]


def _agree_on(op: str, name: str, values: Sequence[int], shown=str):
    if len(set(values)) > 1:
        _fail(op, f"{name} must be the same on every EP rank, got {[shown(v) for v in values]} (rank order)")


def _check_active_mask(op: str, mask, n_tokens: int, top_k: int):
    if mask is None:
        return
    _check_tensor(op, "x_active_mask", mask, (torch.bool,), (1, 2), f"bool [{n_tokens}] or [{n_tokens}, {top_k}]")
    if list(mask.shape) not in ([n_tokens], [n_tokens, top_k]):
        _fail(op, f"x_active_mask must be bool [{n_tokens}] or [{n_tokens}, {top_k}], got {_got(mask)}")
    if mask.dim() == 1 and n_tokens and bool((mask[1:] & ~mask[:-1]).any()):
        _fail(op, "x_active_mask [BS] must put every True before every False (torch_npu requires it)")


def _entry_mask(mask, n_tokens: int, top_k: int, device) -> torch.Tensor:
    """bool [BS·K]: which routing entries take part (1-D masks select whole tokens)."""
    if mask is None:
        return torch.ones(n_tokens * top_k, dtype=torch.bool, device=device)
    if mask.dim() == 1:
        return mask.unsqueeze(1).expand(n_tokens, top_k).reshape(-1)
    return mask.reshape(-1)


def _check_expert_ids(op: str, expert_ids, n_tokens: int, experts: int):
    _check_tensor(op, "expert_ids", expert_ids, (torch.int32,), (2,), f"int32 [{n_tokens}, K]")
    _check_rows(op, "expert_ids", expert_ids, n_tokens, "int32 [BS, K]")
    if expert_ids.shape[1] < 1 or expert_ids.shape[1] > experts:
        _fail(op, f"expert_ids must have 1 <= K <= moe_expert_num={experts} columns, got {_got(expert_ids)}")
    _check_range(op, "expert_ids", expert_ids, 0, experts)
    if expert_ids.numel():
        ordered = expert_ids.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if bool(repeated.any()):
            token = int(repeated.nonzero()[0])
            _fail(op, f"expert_ids row {token} repeats an expert ({expert_ids[token].tolist()}); torch_npu needs K "
                      f"distinct experts per token")


def _check_ep_shape(op: str, world: int, rank: int, ep_world_size: int, ep_rank_id: int, moe_expert_num: int):
    if ep_world_size != world:
        _fail(op, f"ep_world_size={ep_world_size} but group_ep has {world} ranks")
    if ep_rank_id != rank:
        _fail(op, f"ep_rank_id={ep_rank_id} but this process is rank {rank} of group_ep")
    if moe_expert_num < 1 or moe_expert_num % ep_world_size:
        _fail(op, f"moe_expert_num={moe_expert_num} must be a positive multiple of ep_world_size={ep_world_size}")


def _check_no_tp_no_shared(op: str, *, tp_world_size, tp_rank_id, expert_shard_type, shared_expert_rank_num):
    if tp_world_size not in (0, 1) or tp_rank_id != 0:
        _fail(op, f"the golden model has no TP domain (tp_world_size 0 or 1, tp_rank_id 0), got "
                  f"tp_world_size={tp_world_size}, tp_rank_id={tp_rank_id}")
    _check_unsupported(op, expert_shard_type=(expert_shard_type, 0), shared_expert_rank_num=(shared_expert_rank_num, 0))


def _segment_order(counts: torch.Tensor, major_first_keys: torch.Tensor) -> torch.Tensor:
    """Permutation that stably sorts rows laid out as consecutive segments (`counts`, flattened in their
    current order) by the segment keys `major_first_keys` (same layout)."""
    row_keys = major_first_keys.reshape(-1).repeat_interleave(counts.reshape(-1))
    return torch.argsort(row_keys, stable=True)


def _dispatch(op: str, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, x_active_mask,
              expert_scales, global_bs, expert_token_nums_type, local_checks) -> tuple:
    group, world, rank = _ep_group(op, group_ep)
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    error, fields = None, [-1] * 6
    try:
        local_checks()
        _check_ep_shape(op, world, rank, ep_world_size, ep_rank_id, moe_expert_num)
        _check_tensor(op, "x", x, _FLOATS, (2,), f"{_FLOAT_NAMES} [BS, H]")
        n_tokens, hidden = x.shape
        _check_expert_ids(op, expert_ids, n_tokens, moe_expert_num)
        top_k = expert_ids.shape[1]
        _check_active_mask(op, x_active_mask, n_tokens, top_k)
        if expert_scales is not None:
            _check_tensor(op, "expert_scales", expert_scales, (torch.float32,), (2,), f"float32 [{n_tokens}, {top_k}]")
            if list(expert_scales.shape) != [n_tokens, top_k]:
                _fail(op, f"expert_scales must be float32 [{n_tokens}, {top_k}], got {_got(expert_scales)}")
        _check_choice(op, "expert_token_nums_type", expert_token_nums_type, (0, 1), " (0 cumsum, 1 count)")
        if not isinstance(global_bs, int) or global_bs < 0:
            _fail(op, f"global_bs must be an int >= 0, got {global_bs!r}")
        fields = [n_tokens, hidden, moe_expert_num, global_bs, _DTYPE_CODES.index(x.dtype),
                  int(expert_scales is not None)]
    except ConfigError as exc:
        error = str(exc)
    everyone = _agree(op, group, device, error, fields)
    token_counts = [row[0] for row in everyone]
    for index, name in ((1, "H (x.shape[1])"), (2, "moe_expert_num"), (3, "global_bs"), (5, "expert_scales given")):
        _agree_on(op, name, [row[index] for row in everyone])
    _agree_on(op, "x dtype", [row[4] for row in everyone], lambda code: _DTYPE_CODES[code])
    if global_bs == 0 and len(set(token_counts)) > 1:
        _fail(op, f"EP ranks hold different token counts {token_counts}; pass global_bs = max_bs * ep_world_size "
                  f"= {max(token_counts) * world} (torch_npu requires it)")
    if global_bs and global_bs < max(token_counts) * world:
        _fail(op, f"global_bs={global_bs} is less than max_bs * ep_world_size = {max(token_counts)} * {world}")

    local_experts = moe_expert_num // world
    row_capacity = (global_bs or n_tokens * world) * min(local_experts, top_k)  # torch_npu's A
    flat_ids = expert_ids.reshape(-1).long()
    sent = _entry_mask(x_active_mask, n_tokens, top_k, device)
    send_order, sent_count = _stable_expert_order(flat_ids, sent, moe_expert_num)
    send_position = torch.full((n_tokens * top_k,), -1, dtype=torch.int64, device=device)
    send_position[send_order] = torch.arange(sent_count, device=device)
    # Sorting by global expert id groups the rows by destination rank, then local expert, then token.
    per_expert = torch.bincount(flat_ids[sent], minlength=moe_expert_num)
    received_per_source = torch.empty_like(per_expert)  # [source rank, local expert] after the exchange
    dist.all_to_all_single(received_per_source, per_expert, group=group)
    received_per_source = received_per_source.view(world, local_experts)
    send_splits = per_expert.view(world, local_experts).sum(dim=1).tolist()
    recv_splits = received_per_source.sum(dim=1).tolist()
    received = sum(recv_splits)

    arrived = x.new_empty((received, hidden))
    dist.all_to_all_single(arrived, x.index_select(0, send_order // top_k).contiguous(),
                           output_split_sizes=recv_splits, input_split_sizes=send_splits, group=group)
    # Arrival order is (source rank, local expert, token); the contract is (local expert, source rank, token).
    by_expert = _segment_order(received_per_source,
                               torch.arange(local_experts, device=device).unsqueeze(0) * world
                               + torch.arange(world, device=device).unsqueeze(1))
    expand_x = x.new_zeros((row_capacity, hidden))
    expand_x[:received] = arrived.index_select(0, by_expert)

    expand_scales = None
    if expert_scales is not None:
        arrived_scales = expert_scales.new_empty(received)
        dist.all_to_all_single(arrived_scales, expert_scales.reshape(-1).index_select(0, send_order).contiguous(),
                               output_split_sizes=recv_splits, input_split_sizes=send_splits, group=group)
        expand_scales = expert_scales.new_zeros(row_capacity)
        expand_scales[:received] = arrived_scales.index_select(0, by_expert)

    token_nums = received_per_source.sum(dim=0)
    expert_token_nums = (token_nums.cumsum(0) if expert_token_nums_type == 0 else token_nums).to(torch.int64)
    ep_recv_counts = received_per_source.t().reshape(-1).cumsum(0).to(torch.int32)
    tp_recv_counts = torch.tensor([received], dtype=torch.int32, device=device)
    return (expand_x, None, send_position.to(torch.int32), expert_token_nums, ep_recv_counts, tp_recv_counts,
            expand_scales)


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
        _check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                               expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        _check_unsupported(op, scales=(scales, None), elastic_info=(elastic_info, None),
                           performance_info=(performance_info, None), quant_mode=(quant_mode, 0),
                           zero_expert_num=(zero_expert_num, 0), copy_expert_num=(copy_expert_num, 0),
                           const_expert_num=(const_expert_num, 0))
        _check_choice(op, "comm_alg", comm_alg, _COMM_ALGS)

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
        _check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                               expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        _check_unsupported(op, scales=(scales, None), quant_mode=(quant_mode, 0))

    return _dispatch(op, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num,
                     x_active_mask=x_active_mask, expert_scales=expert_scales, global_bs=global_bs,
                     expert_token_nums_type=expert_token_nums_type, local_checks=local_checks)


def _combine(op: str, handle_name: str, expand_x, expert_ids, handle, ep_send_counts, expert_scales, group_ep,
             ep_world_size, ep_rank_id, moe_expert_num, *, x_active_mask, shared_expert_x, local_checks):
    group, world, rank = _ep_group(op, group_ep)
    device = expand_x.device if isinstance(expand_x, torch.Tensor) else torch.device("cpu")
    error, fields = None, [-1] * (3 + 2 * world)
    try:
        local_checks()
        _check_ep_shape(op, world, rank, ep_world_size, ep_rank_id, moe_expert_num)
        local_experts = moe_expert_num // world
        _check_tensor(op, "expand_x", expand_x, _FLOATS, (2,), f"{_FLOAT_NAMES} [A, H]")
        hidden = expand_x.shape[1]
        _check_tensor(op, "expert_ids", expert_ids, (torch.int32,), (2,), "int32 [BS, K]")
        n_tokens, top_k = expert_ids.shape
        _check_expert_ids(op, expert_ids, n_tokens, moe_expert_num)
        _check_tensor(op, handle_name, handle, (torch.int32,), (1,), f"int32 [{n_tokens * top_k}] from the dispatch")
        if handle.numel() != n_tokens * top_k:
            _fail(op, f"{handle_name} must be the dispatch's int32 [{n_tokens * top_k}] (BS*K), got {_got(handle)}")
        sent = handle.long() >= 0
        positions = handle.long()[sent]
        if not torch.equal(positions.sort().values, torch.arange(positions.numel(), device=device)):
            _fail(op, f"{handle_name} is not a dispatch handle (its send positions are not 0..{positions.numel() - 1})")
        _check_active_mask(op, x_active_mask, n_tokens, top_k)
        if x_active_mask is not None and not torch.equal(_entry_mask(x_active_mask, n_tokens, top_k, device), sent):
            _fail(op, f"x_active_mask differs from the one the dispatch used (recorded in {handle_name})")
        _check_tensor(op, "ep_send_counts", ep_send_counts, (torch.int32,), (1,),
                      f"int32 [{world * local_experts}] (the dispatch's ep_recv_counts)")
        if ep_send_counts.numel() != world * local_experts:
            _fail(op, f"ep_send_counts must be the dispatch's int32 [{world * local_experts}], "
                      f"got {_got(ep_send_counts)}")
        segment_counts = torch.diff(ep_send_counts.long(), prepend=ep_send_counts.new_zeros(1).long())
        _check_range(op, "ep_send_counts (as segment sizes)", segment_counts, 0, None)
        returned = int(ep_send_counts[-1])
        if expand_x.shape[0] < returned:
            _fail(op, f"expand_x has {expand_x.shape[0]} rows but the dispatch delivered {returned} to this rank")
        _check_tensor(op, "expert_scales", expert_scales, (torch.float32,), (2,), f"float32 [{n_tokens}, {top_k}]")
        if list(expert_scales.shape) != [n_tokens, top_k]:
            _fail(op, f"expert_scales must be float32 [{n_tokens}, {top_k}], got {_got(expert_scales)}")
        if shared_expert_x is not None:
            _check_tensor(op, "shared_expert_x", shared_expert_x, (expand_x.dtype,), (2, 3),
                          f"{expand_x.dtype} [{n_tokens}, {hidden}]")
            if shared_expert_x.shape[-1] != hidden or shared_expert_x.numel() != n_tokens * hidden:
                _fail(op, f"shared_expert_x must be {expand_x.dtype} [{n_tokens}, {hidden}] (or 3-D with BS = "
                          f"dim0*dim1), got {_got(shared_expert_x)}")
        returns_to = segment_counts.view(local_experts, world).sum(dim=0)  # rows this rank sends back, per rank
        comes_back_from = torch.bincount(expert_ids.reshape(-1).long()[sent] // local_experts, minlength=world)
        fields = [hidden, moe_expert_num, _DTYPE_CODES.index(expand_x.dtype), *returns_to.tolist(),
                  *comes_back_from.tolist()]
    except ConfigError as exc:
        error = str(exc)
    everyone = _agree(op, group, device, error, fields)
    _agree_on(op, "H (expand_x.shape[1])", [row[0] for row in everyone])
    _agree_on(op, "moe_expert_num", [row[1] for row in everyone])
    _agree_on(op, "expand_x dtype", [row[2] for row in everyone], lambda code: _DTYPE_CODES[code])
    for source in range(world):
        for owner in range(world):
            gives, expects = everyone[owner][3 + source], everyone[source][3 + world + owner]
            if gives != expects:
                _fail(op, f"rank {owner} holds {gives} rows of rank {source} but rank {source} expects {expects}; "
                          f"pass expert_ids, {handle_name} and ep_recv_counts from the same dispatch")

    # Expert side: rows sit in (local expert, source rank) segments; send each source its rows back in the
    # order it sent them, (local expert, token).
    by_source = _segment_order(segment_counts.view(local_experts, world),
                               torch.arange(world, device=device).unsqueeze(0) * local_experts
                               + torch.arange(local_experts, device=device).unsqueeze(1))
    outgoing = expand_x[:returned].index_select(0, by_source).contiguous()
    back = expand_x.new_empty((positions.numel(), hidden))
    dist.all_to_all_single(back, outgoing, output_split_sizes=comes_back_from.tolist(),
                           input_split_sizes=returns_to.tolist(), group=group)
    # Token side: the rows come back in send order, so entry f's expert output is back[handle[f]].
    sent_entries = sent.nonzero().flatten()
    entry_scales = expert_scales.reshape(-1).index_select(0, sent_entries).unsqueeze(1)
    weighted = back.float().index_select(0, positions) * entry_scales
    out = torch.zeros((n_tokens, hidden), dtype=torch.float32, device=device)
    out.index_add_(0, sent_entries // top_k, weighted)
    if shared_expert_x is not None:
        active_token = sent.view(n_tokens, top_k).any(dim=1, keepdim=True)
        out = out + torch.where(active_token, shared_expert_x.reshape(n_tokens, hidden).float(), 0.0)
    return out.to(expand_x.dtype)


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
        _check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                               expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        _check_unsupported(op, elastic_info=(elastic_info, None), ori_x=(ori_x, None),
                           const_expert_alpha_1=(const_expert_alpha_1, None),
                           const_expert_alpha_2=(const_expert_alpha_2, None), const_expert_v=(const_expert_v, None),
                           performance_info=(performance_info, None), comm_quant_mode=(comm_quant_mode, 0),
                           zero_expert_num=(zero_expert_num, 0), copy_expert_num=(copy_expert_num, 0),
                           const_expert_num=(const_expert_num, 0))
        _check_choice(op, "comm_alg", comm_alg, _COMM_ALGS)

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
        _check_no_tp_no_shared(op, tp_world_size=tp_world_size, tp_rank_id=tp_rank_id,
                               expert_shard_type=expert_shard_type, shared_expert_rank_num=shared_expert_rank_num)
        _check_unsupported(op, activation_scale=(activation_scale, None), weight_scale=(weight_scale, None),
                           group_list=(group_list, None), shared_expert_x=(shared_expert_x, None),
                           out_dtype=(out_dtype, 0), comm_quant_mode=(comm_quant_mode, 0),
                           group_list_type=(group_list_type, 0))

    return _combine(op, "expand_idx", expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales, group_ep,
                    ep_world_size, ep_rank_id, moe_expert_num, x_active_mask=x_active_mask, shared_expert_x=None,
                    local_checks=local_checks)
