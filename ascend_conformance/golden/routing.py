"""Golden models of the single-rank routing ops: sort token copies by expert and bring them back.

``npu_moe_init_routing_v2`` and ``npu_moe_token_permute`` expand ``[N, H]`` tokens into one row per routing
entry, sorted by expert (stably); ``npu_moe_token_unpermute`` and ``npu_moe_finalize_routing`` gather the
expert outputs back into token order and weight them. Notation (``s``, ``A``, flat index ``f = n·K + k``) and
a worked example are in the package docstring (:mod:`ascend_conformance.golden`).
"""
from __future__ import annotations

import torch

from ascend_conformance.golden.validation import (
    FLOAT_NAMES, FLOATS, check_choice, check_range, check_rows, check_tensor, check_unsupported, fail, got,
)


def stable_expert_order(flat_ids: torch.Tensor, valid: torch.Tensor, past_last: int) -> tuple[torch.Tensor, int]:
    """(s, A): flat indices of the valid entries sorted by expert, ties by flat index; A = their count.

    >>> ids = torch.tensor([2, 0, 0, 3])
    >>> stable_expert_order(ids, torch.ones(4, dtype=torch.bool), 4)
    (tensor([1, 2, 0, 3]), 4)
    >>> stable_expert_order(ids, ids < 2, 2)                # active experts [0, 2)
    (tensor([1, 2]), 2)
    """
    key = torch.where(valid, flat_ids, torch.full_like(flat_ids, past_last))  # invalid ones sort last
    order = torch.argsort(key, stable=True)
    count = int(valid.sum())
    return order[:count], count


def dynamic_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: scale = rowmax|x| / 127, q = round-half-even(x / scale). All-zero rows: 0, 0.

    >>> q, scale = dynamic_int8(torch.tensor([[127.0, -63.5, 0.5], [0.0, 0.0, 0.0]]))
    >>> q.tolist(), scale.tolist()
    ([[127, -64, 0], [0, 0, 0]], [1.0, 0.0])
    """
    scale = rows.abs().amax(dim=1) / 127.0 if rows.shape[1] else rows.new_zeros(rows.shape[0])
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)
    quantised = torch.round(rows / divisor).clamp_(-127, 127)  # torch.round rounds half to even
    return quantised.to(torch.int8), scale


# ------------------------------------------------------------------------------ npu_moe_init_routing_v2

def _active_expert_range(op: str, active_expert_range, expert_num: int) -> tuple[int, int]:
    """[lo, hi): the given range, or all of expert_num's experts when the range is empty."""
    if active_expert_range is None or len(active_expert_range) == 0:
        if expert_num <= 0:
            fail(op, f"needs expert_num > 0 or active_expert_range [lo, hi], got expert_num={expert_num} "
                     f"and active_expert_range={active_expert_range!r}")
        return 0, int(expert_num)
    if len(active_expert_range) == 2:
        lo, hi = (int(v) for v in active_expert_range)
        if not 0 <= lo < hi or (expert_num > 0 and hi > expert_num):
            fail(op, f"active_expert_range must be [lo, hi] with 0 <= lo < hi <= expert_num, got "
                     f"{list(active_expert_range)} with expert_num={expert_num}")
        return lo, hi
    fail(op, f"active_expert_range must be [] or [lo, hi], got {list(active_expert_range)!r}")


def _check_routing_scale(op: str, x, scale, quant_mode: int, lo: int, hi: int) -> None:
    """quant_mode 1 takes an optional smooth scale per active expert ``[hi-lo, H]``; without quantisation
    an optional ``[N]`` scale is carried along with each token's rows."""
    n_tokens, hidden = x.shape
    if quant_mode == 1:
        if x.dtype == torch.int8:
            fail(op, "quant_mode=1 quantises a floating x, got x int8")
        if scale is not None:
            smooth_spec = f"float32 [{hi - lo}, {hidden}] (per-expert smooth scale)"
            check_tensor(op, "scale", scale, (torch.float32,), (2,), smooth_spec)
            if list(scale.shape) != [hi - lo, hidden]:
                fail(op, f"scale must be {smooth_spec}, got {got(scale)}")
    elif scale is not None:
        check_tensor(op, "scale", scale, (torch.float32,), (1,), f"float32 [{n_tokens}]")
        check_rows(op, "scale", scale, n_tokens, f"float32 [{n_tokens}]")


def _expanded_rows(x, scale, quant_mode: int, source_token, source_expert, out_rows: int):
    """(expanded_x, expanded_scale): row j < len(source_token) is ``x[source_token[j]]`` (quantised with
    quant_mode 1, after the smooth scale of its expert ``source_expert[j]``); rows past it stay zero."""
    hidden, kept = x.shape[1], source_token.numel()
    expanded_scale = torch.zeros(out_rows, dtype=torch.float32, device=x.device)
    if quant_mode == 1:
        rows = x.index_select(0, source_token).float()
        if scale is not None:
            rows = rows * scale.index_select(0, source_expert)
        quantised, row_scale = dynamic_int8(rows)
        expanded_x = torch.zeros((out_rows, hidden), dtype=torch.int8, device=x.device)
        expanded_x[:kept] = quantised
        expanded_scale[:kept] = row_scale
        return expanded_x, expanded_scale
    expanded_x = x.new_zeros((out_rows, hidden))
    expanded_x[:kept] = x.index_select(0, source_token)
    if scale is not None:
        expanded_scale[:kept] = scale.index_select(0, source_token)
    return expanded_x, expanded_scale


def _expanded_row_index(order, valid_count: int, entries: int, row_idx_type: int, device) -> torch.Tensor:
    """int32 [N·K]: type 0 maps entry f to its destination row (-1 when invalid), type 1 maps destination
    row j < A to its entry s[j] (-1 past A)."""
    index = torch.full((entries,), -1, dtype=torch.int64, device=device)
    if row_idx_type == 0:
        index[order] = torch.arange(valid_count, device=device)
    else:
        index[:valid_count] = order
    return index.to(torch.int32)


def _expert_tokens(counts: torch.Tensor, lo: int, expert_tokens_num_type: int) -> torch.Tensor:
    """int64 tokens per active expert: cumsum (type 0), counts (1), or (expert id, count) rows of the
    non-empty experts (2).

    >>> counts = torch.tensor([2, 0, 1, 1])
    >>> [_expert_tokens(counts, 0, kind).tolist() for kind in (0, 1)]
    [[2, 2, 3, 4], [2, 0, 1, 1]]
    >>> _expert_tokens(counts, 0, 2).tolist()
    [[0, 2], [2, 1], [3, 1]]
    """
    if expert_tokens_num_type == 1:
        tokens = counts
    elif expert_tokens_num_type == 0:
        tokens = counts.cumsum(0)
    else:
        non_empty = counts.nonzero().flatten()
        tokens = torch.stack([non_empty + lo, counts[non_empty]], dim=1)
    return tokens.to(torch.int64)


def npu_moe_init_routing_v2(x, expert_idx, *, scale=None, offset=None, active_num=-1, expert_capacity=-1,
                            expert_num=-1, drop_pad_mode=0, expert_tokens_num_type=0,
                            expert_tokens_num_flag=False, quant_mode=-1, active_expert_range=(),
                            row_idx_type=0, x_dtype=None):
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
    ``x_dtype`` (newer torch_npu: the quantised dtype of the MX / FP8 modes) is accepted only as None.

    >>> x = torch.tensor([[1.0], [2.0]])
    >>> expanded_x, row_idx, tokens, _ = npu_moe_init_routing_v2(
    ...     x, torch.tensor([[2, 0], [0, 3]], dtype=torch.int32), expert_num=4, expert_tokens_num_type=1)
    >>> expanded_x.flatten().tolist(), row_idx.tolist(), tokens.tolist()
    ([1.0, 2.0, 1.0, 2.0], [2, 0, 1, 3], [2, 0, 1, 1])
    """
    op = "npu_moe_init_routing_v2"
    check_tensor(op, "x", x, FLOATS + (torch.int8,), (2,), "float16, bfloat16, float32 or int8 [N, H]")
    check_tensor(op, "expert_idx", expert_idx, (torch.int32,), (2,), "int32 [N, K]")
    check_rows(op, "expert_idx", expert_idx, x.shape[0], "int32 [N, K]")
    check_choice(op, "drop_pad_mode", drop_pad_mode, (0,), " (dropless; drop/pad mode is not modelled)")
    check_choice(op, "quant_mode", quant_mode, (-1, 1), " (-1 none, 1 dynamic int8; static 0 is unsupported)")
    check_choice(op, "row_idx_type", row_idx_type, (0, 1))
    check_choice(op, "expert_tokens_num_type", expert_tokens_num_type, (0, 1, 2))
    check_unsupported(op, offset=(offset, None), x_dtype=(x_dtype, None))
    lo, hi = _active_expert_range(op, active_expert_range, expert_num)
    check_range(op, "expert_idx", expert_idx, 0, expert_num if expert_num > 0 else None)
    _check_routing_scale(op, x, scale, quant_mode, lo, hi)

    n_tokens, top_k = expert_idx.shape
    flat = expert_idx.reshape(-1).long()
    valid = (flat >= lo) & (flat < hi)
    order, valid_count = stable_expert_order(flat, valid, hi)
    out_rows = active_num if active_num > 0 else n_tokens * top_k
    kept = order[:min(valid_count, out_rows)]
    expanded_x, expanded_scale = _expanded_rows(x, scale, quant_mode, kept // top_k, flat[kept] - lo, out_rows)
    expanded_row_idx = _expanded_row_index(order, valid_count, n_tokens * top_k, row_idx_type, x.device)
    expert_tokens = _expert_tokens(torch.bincount(flat[valid] - lo, minlength=hi - lo), lo, expert_tokens_num_type)
    return expanded_x, expanded_row_idx, expert_tokens, expanded_scale


# --------------------------------------------------------------------------------- permute / unpermute

def npu_moe_token_permute(tokens, indices, num_out_tokens=None, padded_mode=False):
    """Copy every token once per routing entry, rows sorted by expert (stable).

    ``o`` = stable argsort of ``indices.flatten()`` (``[N, K]``, or ``[N]`` meaning K = 1). Returns
    ``(permuted_tokens, sorted_indices)``: ``permuted_tokens[j] = tokens[o[j] // K]`` for the first
    num_out_tokens rows (None or 0: all N·K; negative: N·K + num_out_tokens), and int32
    ``sorted_indices`` = inverse of o, the destination row of every flat entry (source → destination).

    >>> permuted, sorted_indices = npu_moe_token_permute(torch.tensor([[1.0], [2.0]]),
    ...                                                  torch.tensor([[2, 0], [0, 3]]))
    >>> permuted.flatten().tolist(), sorted_indices.tolist()
    ([1.0, 2.0, 1.0, 2.0], [2, 0, 1, 3])
    """
    op = "npu_moe_token_permute"
    check_tensor(op, "tokens", tokens, FLOATS, (2, 3, 4, 5, 6), f"{FLOAT_NAMES} [N, H, ...]")
    check_tensor(op, "indices", indices, (torch.int32, torch.int64), (1, 2), "int32 or int64 [N, K] or [N]")
    check_rows(op, "indices", indices, tokens.shape[0], "int32 or int64 [N, K] or [N]")
    check_unsupported(op, padded_mode=(padded_mode, False))
    check_range(op, "indices", indices, 0, None)
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
    ``restore_shape`` (``[N, H]``, the shape of the tokens before permute) is accepted when it is the
    output's shape; the op never reshapes to anything else. An index of -1 marks an entry that was never
    routed (``npu_moe_init_routing_v2`` outside its active range): it contributes nothing, its weight
    unused, so not even a non-finite row reaches the token (without probs its row is zeros). vllm-ascend's
    A5 adaptor passes the routing's -1 entries as they are and relies on this.

    >>> rows = torch.tensor([[1.0], [2.0], [1.0], [2.0]])
    >>> order = torch.tensor([2, 0, 1, 3], dtype=torch.int32)
    >>> npu_moe_token_unpermute(rows, order, torch.tensor([[0.5, 0.5], [0.25, 0.75]])).flatten().tolist()
    [1.0, 2.0]
    """
    op = "npu_moe_token_unpermute"
    check_tensor(op, "permuted_tokens", permuted_tokens, FLOATS, (2,), f"{FLOAT_NAMES} [N*K, H]")
    check_tensor(op, "sorted_indices", sorted_indices, (torch.int32,), (1,), "int32 [N*K]")
    check_unsupported(op, padded_mode=(padded_mode, False))
    check_range(op, "sorted_indices", sorted_indices, -1, permuted_tokens.shape[0])
    routed = (sorted_indices >= 0).unsqueeze(-1)
    index = sorted_indices.long().clamp(min=0)
    if probs is None:
        rows = permuted_tokens.index_select(0, index) if permuted_tokens.shape[0] else \
            permuted_tokens.new_zeros((index.numel(), permuted_tokens.shape[-1]))
        return _restored(op, torch.where(routed, rows, torch.zeros_like(rows)), restore_shape)
    check_tensor(op, "probs", probs, FLOATS, (2,), f"{FLOAT_NAMES} [N, K]")
    if probs.numel() != index.numel():
        fail(op, f"probs [N, K] must have N*K = {index.numel()} elements (one per sorted index), got {got(probs)}")
    n_tokens, top_k = probs.shape
    # the hidden size is explicit: with 0 tokens a -1 would be ambiguous
    hidden = permuted_tokens.shape[-1]
    rows = (permuted_tokens.index_select(0, index) if permuted_tokens.shape[0] else
            permuted_tokens.new_zeros((index.numel(), hidden))).float().view(n_tokens, top_k, hidden)
    weighted = torch.where(routed.view(n_tokens, top_k, 1), rows * probs.float().unsqueeze(-1), 0.0)
    return _restored(op, weighted.sum(dim=1).to(permuted_tokens.dtype), restore_shape)


def _restored(op: str, out: torch.Tensor, restore_shape) -> torch.Tensor:
    """``out`` when restore_shape is None or names out's own shape; a ConfigError otherwise."""
    if restore_shape is not None and [int(d) for d in restore_shape] != list(out.shape):
        fail(op, f"restore_shape {list(restore_shape)} must be the output shape {list(out.shape)}")
    return out


# ----------------------------------------------------------------------------- npu_moe_finalize_routing

def _finalize_top_k(op: str, expanded_src_to_dst_row, scales, k, dtype) -> tuple[int, int]:
    """(K, N): K from scales ``[N, K]``, else from ``k``; N = the index's length / K."""
    if scales is not None:
        check_tensor(op, "scales", scales, (dtype,), (2,), f"{dtype} [N, K] (the rows' dtype)")
        top_k = scales.shape[1]
    else:
        if not isinstance(k, int) or k < 1:
            fail(op, f"k must be the top-k (>= 1) when scales is None, got {k!r}")
        top_k = k
    total = expanded_src_to_dst_row.numel()
    if top_k == 0 or total % top_k:
        fail(op, f"expanded_src_to_dst_row must have N*K elements with K={top_k}, got {total}")
    n_tokens = total // top_k
    if scales is not None and scales.shape[0] != n_tokens:
        fail(op, f"scales must be {dtype} [{n_tokens}, {top_k}], got {got(scales)}")
    return top_k, n_tokens


def _check_finalize_addends(op: str, skip1, skip2, bias, export_for_source_row, dtype, n_tokens: int,
                            top_k: int, hidden: int) -> None:
    """skip1 / skip2 ``[N, H]`` (skip2 needs skip1); bias ``[E, H]`` needs export_for_source_row ``[N, K]``."""
    for name, skip in (("skip1", skip1), ("skip2", skip2)):
        if skip is not None:
            check_tensor(op, name, skip, (dtype,), (2,), f"{dtype} [{n_tokens}, {hidden}]")
            if list(skip.shape) != [n_tokens, hidden]:
                fail(op, f"{name} must be {dtype} [{n_tokens}, {hidden}], got {got(skip)}")
    if skip2 is not None and skip1 is None:
        fail(op, "skip2 needs skip1 (torch_npu requires skip2 None when skip1 is None)")
    if export_for_source_row is not None:
        check_tensor(op, "export_for_source_row", export_for_source_row, (torch.int32,), (2,),
                     f"int32 [{n_tokens}, {top_k}]")
        if list(export_for_source_row.shape) != [n_tokens, top_k]:
            fail(op, f"export_for_source_row must be int32 [{n_tokens}, {top_k}], got {got(export_for_source_row)}")
    if bias is not None:
        check_tensor(op, "bias", bias, (dtype,), (2,), f"{dtype} [E, {hidden}]")
        if bias.shape[1] != hidden:
            fail(op, f"bias must be {dtype} [E, {hidden}], got {got(bias)}")
        if export_for_source_row is None:
            fail(op, "bias needs export_for_source_row (the expert of every entry)")
        check_range(op, "export_for_source_row", export_for_source_row, 0, bias.shape[0])


def npu_moe_finalize_routing(expanded_permuted_rows, skip1, skip2, bias, scales, expanded_src_to_dst_row,
                             export_for_source_row, drop_pad_mode=0, k=1):
    """Combine the expert outputs of each token: ``out[i] = skip1[i] + skip2[i] + Σ_k scales[i, k] ·
    (rows[idx] + bias[export_for_source_row[i, k]])``.

    ``idx = expanded_src_to_dst_row[k·N + i]`` (drop_pad_mode 0/1, column layout) or ``[i·K + k]`` (2/3,
    row layout, the layout init_routing_v2 produces); idx -1 contributes nothing. Modes 1/3 take rows as
    ``[E, C, H]`` (capacity-padded). skip1, skip2, bias and scales may be None (scales None: weight 1 and
    K = ``k``); skip2 needs skip1. Accumulated in float32, output dtype = rows dtype.

    >>> rows = torch.tensor([[1.0], [2.0], [1.0], [2.0]])
    >>> index = torch.tensor([2, 0, 1, -1], dtype=torch.int32)      # token 1's second entry was dropped
    >>> npu_moe_finalize_routing(rows, None, None, None, torch.tensor([[0.5, 0.5], [0.25, 0.75]]), index,
    ...                          None, drop_pad_mode=2).flatten().tolist()
    [1.0, 0.5]
    """
    op = "npu_moe_finalize_routing"
    check_choice(op, "drop_pad_mode", drop_pad_mode, (0, 1, 2, 3))
    row_dims = 2 if drop_pad_mode in (0, 2) else 3
    row_spec = f"{FLOAT_NAMES} " + ("[N*K, H]" if row_dims == 2 else "[E, C, H]")
    check_tensor(op, "expanded_permuted_rows", expanded_permuted_rows, FLOATS, (row_dims,),
                 f"{row_spec} for drop_pad_mode={drop_pad_mode}")
    dtype = expanded_permuted_rows.dtype
    hidden = expanded_permuted_rows.shape[-1]
    rows = expanded_permuted_rows.reshape(-1, hidden)
    check_tensor(op, "expanded_src_to_dst_row", expanded_src_to_dst_row, (torch.int32,), (1,), "int32 [N*K]")
    top_k, n_tokens = _finalize_top_k(op, expanded_src_to_dst_row, scales, k, dtype)
    check_range(op, "expanded_src_to_dst_row", expanded_src_to_dst_row, -1, rows.shape[0])
    _check_finalize_addends(op, skip1, skip2, bias, export_for_source_row, dtype, n_tokens, top_k, hidden)

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
