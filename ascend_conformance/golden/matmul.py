"""Golden model of ``npu_grouped_matmul``: the expert MLP's per-expert matmuls over rows sorted by expert."""
from __future__ import annotations

import torch

from ascend_conformance.golden.validation import (
    FLOAT_NAMES, FLOATS, check_choice, check_range, check_tensor, check_unsupported, fail, got, got_list,
)


def _one_tensor(op: str, name: str, value, spec: str) -> torch.Tensor:
    """The tensor of a list of one (the single-tensor mode torch_npu takes them in)."""
    if not isinstance(value, (list, tuple)) or len(value) != 1:
        fail(op, f"{name} must be a list of one tensor {spec}, got {got_list(value)}")
    return value[0]


def _group_ends(op: str, group_list, group_list_type: int, n_groups: int, rows: int) -> torch.Tensor:
    """int64 [G] on the CPU: the row where each group ends, from a cumsum (type 0) or counts (type 1).

    >>> _group_ends("op", [2, 2, 5], 0, 3, 6).tolist(), _group_ends("op", torch.tensor([2, 0, 3]), 1, 3, 6).tolist()
    ([2, 2, 5], [2, 2, 5])
    """
    if group_list is None:
        fail(op, "group_list is required for group_type=0")
    if isinstance(group_list, torch.Tensor):
        check_tensor(op, "group_list", group_list, (torch.int64,), (1,), f"int64 [{n_groups}]")
        sizes = group_list.to("cpu", torch.int64)
    else:
        if group_list_type != 0:
            fail(op, f"a list group_list is a cumsum (group_list_type=0), got group_list_type={group_list_type}")
        sizes = torch.tensor(list(group_list), dtype=torch.int64)
    if sizes.numel() != n_groups:
        fail(op, f"group_list must have one entry per group ({n_groups}), got {sizes.numel()}")
    check_range(op, "group_list", sizes, 0, None)
    if group_list_type == 0:
        if n_groups and bool((sizes[1:] < sizes[:-1]).any()):
            fail(op, f"group_list with group_list_type=0 must be a non-decreasing cumsum, got {sizes.tolist()}")
        ends = sizes
    else:
        ends = sizes.cumsum(0)
    if n_groups and int(ends[-1]) > rows:
        fail(op, f"group_list covers {int(ends[-1])} rows but x[0] has {rows}")
    return ends


def _group_bias(op: str, bias, n_groups: int, columns: int) -> torch.Tensor | None:
    """bias[0] ``[G, N]``, or None."""
    if bias is None:
        return None
    if not isinstance(bias, (list, tuple)) or len(bias) != 1:
        fail(op, f"bias must be None or a list of one tensor [G, N], got {got_list(bias)}")
    check_tensor(op, "bias[0]", bias[0], FLOATS, (2,), f"float [{n_groups}, {columns}]")
    if list(bias[0].shape) != [n_groups, columns]:
        fail(op, f"bias[0] must be [{n_groups}, {columns}], got {got(bias[0])}")
    return bias[0]


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

    Two experts scaling by 1 and by 10, rows [0, 2) to expert 0 and [2, 3) to expert 1 (cumsum [2, 3]):

    >>> w = torch.tensor([[[1.0]], [[10.0]]])
    >>> npu_grouped_matmul([torch.tensor([[1.0], [2.0], [3.0]])], [w], group_list=[2, 3])[0].flatten().tolist()
    [1.0, 2.0, 30.0]
    """
    op = "npu_grouped_matmul"
    check_unsupported(op, scale=(scale, None), offset=(offset, None), antiquant_scale=(antiquant_scale, None),
                      antiquant_offset=(antiquant_offset, None), per_token_scale=(per_token_scale, None),
                      activation_input=(activation_input, None),
                      activation_quant_scale=(activation_quant_scale, None),
                      activation_quant_offset=(activation_quant_offset, None), act_type=(act_type, 0),
                      x_dtype=(x_dtype, None), weight_dtype=(weight_dtype, None), scale_dtype=(scale_dtype, None),
                      per_token_scale_dtype=(per_token_scale_dtype, None))
    check_choice(op, "split_item", split_item, (2, 3), " (one output tensor; per-group outputs are not modelled)")
    check_choice(op, "group_type", group_type, (0,), " (grouping along M is the modelled mode)")
    check_choice(op, "group_list_type", group_list_type, (0, 1), " (0 cumsum, 1 counts)")
    matrix = _one_tensor(op, "x", x, "[M, K]")
    weights = _one_tensor(op, "weight", weight, "[G, K, N]")
    check_tensor(op, "x[0]", matrix, FLOATS, (2,), f"{FLOAT_NAMES} [M, K]")
    check_tensor(op, "weight[0]", weights, (matrix.dtype,), (3,), f"{matrix.dtype} [G, K, N] (x's dtype)")
    if weights.shape[1] != matrix.shape[1]:
        fail(op, f"weight[0] must be [G, {matrix.shape[1]}, N] to match x[0] {list(matrix.shape)}, "
                 f"got {got(weights)}")
    if output_dtype is not None and output_dtype != matrix.dtype:
        fail(op, f"output_dtype must be None or x's dtype {matrix.dtype} (no quantised output), got {output_dtype}")
    n_groups, rows = weights.shape[0], matrix.shape[0]
    ends = _group_ends(op, group_list, group_list_type, n_groups, rows)
    group_bias = _group_bias(op, bias, n_groups, weights.shape[2])

    out = matrix.new_zeros((rows, weights.shape[2]))
    starts = torch.cat([ends.new_zeros(1), ends[:-1]]) if n_groups else ends
    # One matmul per non-empty group: G is the expert count (small); gathering W per row instead would
    # cost M·K·N memory.
    for group, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        if end > start:
            product = matrix[start:end].float() @ weights[group].float()
            if group_bias is not None:
                product = product + group_bias[group].float()
            out[start:end] = product.to(matrix.dtype)
    return [out]
