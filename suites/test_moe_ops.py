"""MoE op level: the golden torch_npu models (``ascend_conformance.golden``), docs/ops.md, as a spec.

Three kinds of check:

* NPU hosts: golden vs the real torch_npu op on the same inputs (skipped elsewhere, with the import error
  as the reason). The real ops run only in ranks of a world, which hold their NPUs' leases (world(1) for
  the single-device ops): the pytest worker never touches a device. The distribute ops' shape is checked
  against their documented limits first (``moe/mc2_applicability.py``) and skips with the reason where
  the SoC's ops do not take it;
* everywhere: every op against a brute-force oracle written here with plain Python loops over small
  inputs — properties no single implementation can fake (stable expert order, inverse index maps,
  counts, exact scales, layouts) — and every validation error;
* dispatch / combine on real multi-rank worlds: each rank's received rows against an oracle built from all
  ranks' inputs, which the test process rebuilds from the same seed.

Inputs are small integers (and quarters) wherever a sum is compared, so every summation order gives the
same bits and the comparison can be exact.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ascend_conformance import golden
from ascend_conformance import platform as platforms
from ascend_conformance.errors import ConfigError
from ascend_conformance.moe.mc2_applicability import MC2Shape, mc2_unsupported_reason, ops_soc
from ascend_conformance.tolerance import Kind, assert_close


# ----------------------------------------------------------------------------------- inputs and oracles

def _integers(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Small integers: exact in every float dtype, and so is every short sum of them."""
    return torch.randint(-8, 9, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _normal(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _routing(tokens: int, top_k: int, experts: int, seed: int) -> torch.Tensor:
    """int32 [tokens, top_k] with K distinct experts per token, as a top-k gate produces."""
    scores = torch.rand(tokens, experts, generator=torch.Generator().manual_seed(seed))
    return scores.argsort(dim=1)[:, :top_k].to(torch.int32)


def _bruteforce_order(expert_idx: torch.Tensor, lo: int, hi: int) -> list[int]:
    """Flat indices of the entries with an expert in [lo, hi): expert by expert, each scan in flat order."""
    flat = expert_idx.flatten().tolist()
    return [f for expert in range(lo, hi) for f, chosen in enumerate(flat) if chosen == expert]


def _bruteforce_counts(expert_idx: torch.Tensor, lo: int, hi: int) -> list[int]:
    flat = expert_idx.flatten().tolist()
    return [sum(1 for chosen in flat if chosen == expert) for expert in range(lo, hi)]


def _rows(source: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Row-by-row copy, so the oracle shares no indexing path with the code under test."""
    if not indices:
        return source.new_zeros((0, *source.shape[1:]))
    return torch.stack([source[i] for i in indices])


def _int32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _int64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# --------------------------------------------------------------------------- npu_moe_init_routing_v2

def test_init_routing_reproduces_the_worked_example_of_the_module_docstring():
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0]])
    ids = _int32([[2, 0], [0, 3]])

    expanded_x, to_dst, counts, _ = golden.npu_moe_init_routing_v2(x, ids, expert_num=4, expert_tokens_num_type=1)
    _, to_src, cumsum, _ = golden.npu_moe_init_routing_v2(x, ids, expert_num=4, row_idx_type=1)
    _, _, pairs, _ = golden.npu_moe_init_routing_v2(x, ids, expert_num=4, expert_tokens_num_type=2)
    _, in_range, range_counts, _ = golden.npu_moe_init_routing_v2(
        x, ids, expert_num=4, active_expert_range=[0, 2], expert_tokens_num_type=1)

    assert_close(expanded_x, torch.tensor([[1.0, 10.0], [2.0, 20.0], [1.0, 10.0], [2.0, 20.0]]), kind=Kind.EXACT,
                 what="expanded_x")
    assert_close(to_dst, _int32([2, 0, 1, 3]), kind=Kind.EXACT, what="row_idx_type 0")
    assert_close(to_src, _int32([1, 2, 0, 3]), kind=Kind.EXACT, what="row_idx_type 1")
    assert_close(counts, _int64([2, 0, 1, 1]), kind=Kind.EXACT, what="counts")
    assert_close(cumsum, _int64([2, 2, 3, 4]), kind=Kind.EXACT, what="cumsum")
    assert_close(pairs, _int64([[0, 2], [2, 1], [3, 1]]), kind=Kind.EXACT, what="key-value counts")
    assert_close(in_range, _int32([-1, 0, 1, -1]), kind=Kind.EXACT, what="row_idx_type 0 in range [0, 2)")
    assert_close(range_counts, _int64([2, 0]), kind=Kind.EXACT, what="counts in range [0, 2)")


def test_init_routing_breaks_expert_ties_by_flat_index():
    ids = _int32([[3, 1], [3, 1], [3, 1]])  # every token picks the same two experts
    x = _integers((3, 4), seed=1)

    _, to_src, _, _ = golden.npu_moe_init_routing_v2(x, ids, expert_num=4, row_idx_type=1)

    assert_close(to_src, _int32([1, 3, 5, 0, 2, 4]), kind=Kind.EXACT, what="expert 1's entries, then expert 3's")


@pytest.mark.parametrize("lo, hi", [(0, 8), (2, 5), (7, 8)])
@pytest.mark.parametrize("row_idx_type", [0, 1])
def test_init_routing_matches_bruteforce_sort(row_idx_type, lo, hi):
    tokens, top_k, experts = 9, 3, 8
    x, ids = _integers((tokens, 5), seed=2), _routing(tokens, top_k, experts, seed=3)
    order = _bruteforce_order(ids, lo, hi)

    expanded_x, row_idx, counts, _ = golden.npu_moe_init_routing_v2(
        x, ids, expert_num=experts, active_expert_range=[lo, hi], row_idx_type=row_idx_type,
        expert_tokens_num_type=1)

    valid = len(order)
    assert expanded_x.shape == (tokens * top_k, 5)
    assert_close(expanded_x[:valid], _rows(x, [f // top_k for f in order]), kind=Kind.EXACT, what="expanded_x rows")
    if row_idx_type == 0:
        destination = [-1] * (tokens * top_k)
        for row, f in enumerate(order):
            destination[f] = row
        assert_close(row_idx, _int32(destination), kind=Kind.EXACT, what="source -> destination")
    else:
        assert_close(row_idx[:valid], _int32(order), kind=Kind.EXACT, what="destination -> source")
    assert_close(counts, _int64(_bruteforce_counts(ids, lo, hi)), kind=Kind.EXACT, what="counts per expert")


def test_init_routing_row_idx_types_0_and_1_are_inverse_maps():
    tokens, top_k, experts, lo, hi = 11, 4, 8, 1, 6
    x, ids = _integers((tokens, 3), seed=4), _routing(tokens, top_k, experts, seed=5)
    kwargs = dict(expert_num=experts, active_expert_range=[lo, hi])

    _, to_dst, _, _ = golden.npu_moe_init_routing_v2(x, ids, row_idx_type=0, **kwargs)
    _, to_src, _, _ = golden.npu_moe_init_routing_v2(x, ids, row_idx_type=1, **kwargs)

    valid = len(_bruteforce_order(ids, lo, hi))
    round_trip = [int(to_dst[int(to_src[row])]) for row in range(valid)]
    assert_close(_int32(round_trip), torch.arange(valid, dtype=torch.int32), kind=Kind.EXACT,
                 what="to_dst[to_src[j]] == j")
    mapped = sorted(f for f in range(tokens * top_k) if int(to_dst[f]) >= 0)
    assert_close(_int32(sorted(to_src[:valid].tolist())), _int32(mapped), kind=Kind.EXACT,
                 what="to_src lists exactly the mapped entries")


@pytest.mark.parametrize("expert_tokens_num_type", [0, 1, 2])
def test_init_routing_expert_token_counts_sum_to_the_valid_entries(expert_tokens_num_type):
    tokens, top_k, experts, lo, hi = 10, 2, 6, 1, 5
    x, ids = _integers((tokens, 3), seed=6), _routing(tokens, top_k, experts, seed=7)
    counts = _bruteforce_counts(ids, lo, hi)

    _, _, expert_tokens, _ = golden.npu_moe_init_routing_v2(
        x, ids, expert_num=experts, active_expert_range=[lo, hi], expert_tokens_num_type=expert_tokens_num_type)

    if expert_tokens_num_type == 1:
        expected = _int64(counts)
    elif expert_tokens_num_type == 0:
        expected = _int64([sum(counts[:i + 1]) for i in range(len(counts))])
    else:
        expected = _int64([[lo + i, c] for i, c in enumerate(counts) if c]).reshape(-1, 2)
    assert_close(expert_tokens, expected, kind=Kind.EXACT, what=f"expert_tokens type {expert_tokens_num_type}")
    assert sum(counts) == len(_bruteforce_order(ids, lo, hi))


@pytest.mark.parametrize("active_num", [5, 40])
def test_init_routing_active_num_sets_the_row_count(active_num):
    tokens, top_k, experts = 8, 3, 6
    x, ids = _integers((tokens, 4), seed=8), _routing(tokens, top_k, experts, seed=9)
    order = _bruteforce_order(ids, 0, experts)

    expanded_x, to_dst, _, expanded_scale = golden.npu_moe_init_routing_v2(x, ids, expert_num=experts,
                                                                         active_num=active_num)

    kept = order[:active_num]
    assert expanded_x.shape == (active_num, 4) and expanded_scale.shape == (active_num,)
    assert_close(expanded_x[:len(kept)], _rows(x, [f // top_k for f in kept]), kind=Kind.EXACT, what="kept rows")
    assert_close(to_dst[_int64(order)], torch.arange(len(order), dtype=torch.int32), kind=Kind.EXACT,
                 what="every valid entry keeps its destination")


def _bruteforce_dynamic_int8(row: list[float]) -> tuple[float, list[int]]:
    """(scale, q) of one row: scale = max|x| / 127 in float32, q = round-half-even(x / scale) in float32."""
    scale = (torch.tensor(max(abs(v) for v in row), dtype=torch.float32) / 127).item()
    if scale == 0:
        return 0.0, [0] * len(row)
    quotients = [(torch.tensor(v, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)).item()
                 for v in row]
    return scale, [round(q) for q in quotients]  # Python's round() is round-half-to-even


@pytest.mark.parametrize("smooth_scale", [False, True], ids=["per-token", "smooth-scale"])
def test_init_routing_dynamic_int8_scale_is_exact_and_round_trips_within_half_a_step(smooth_scale):
    tokens, top_k, experts, hidden, lo, hi = 7, 2, 5, 16, 0, 5
    x = _normal((tokens, hidden), seed=10) * 3
    x[2] = 0.0  # an all-zero row: scale 0, q 0
    x[4, 3] = 2.5 * x[4].abs().max()  # a lone outlier dominating its row's scale
    ids = _routing(tokens, top_k, experts, seed=11)
    smooth = torch.rand(hi - lo, hidden, generator=torch.Generator().manual_seed(12)) + 0.5 if smooth_scale else None

    quantised, _, _, scales = golden.npu_moe_init_routing_v2(x, ids, expert_num=experts, quant_mode=1,
                                                             scale=smooth)

    expected_q, expected_scale = [], []
    for row_index, f in enumerate(_bruteforce_order(ids, lo, hi)):
        row = x[f // top_k].tolist()
        if smooth is not None:
            expert = int(ids.flatten()[f])
            row = [(torch.tensor(v, dtype=torch.float32) * smooth[expert - lo, i]).item() for i, v in enumerate(row)]
        scale, q = _bruteforce_dynamic_int8(row)
        expected_q.append(q)
        expected_scale.append(scale)
        for value, level in zip(row, q):  # dequantised value within half a step (+ the float32 division's rounding)
            assert abs(level * scale - value) <= scale * (0.5 + 2.0 ** -16), (row_index, value, level, scale)
    valid = len(expected_q)
    assert quantised.dtype == torch.int8
    assert_close(quantised[:valid], torch.tensor(expected_q, dtype=torch.int8), kind=Kind.EXACT, what="int8 rows")
    assert_close(scales[:valid], torch.tensor(expected_scale, dtype=torch.float32), kind=Kind.EXACT, what="scales")


# ------------------------------------------------------------------- npu_moe_token_permute / unpermute

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_permute_then_unpermute_restores_every_token(dtype):
    tokens, top_k, experts = 9, 4, 6
    x, ids = _integers((tokens, 6), seed=13, dtype=dtype), _routing(tokens, top_k, experts, seed=14)

    permuted, sorted_indices = golden.npu_moe_token_permute(x, ids)
    quarter = torch.full((tokens, top_k), 0.25, dtype=dtype)
    restored = golden.npu_moe_token_unpermute(permuted, sorted_indices, probs=quarter)
    copies = golden.npu_moe_token_unpermute(permuted, sorted_indices)

    assert_close(restored, x, kind=Kind.SUM_EXACT, what="Σ_k 0.25·x")
    assert_close(copies, x.repeat_interleave(top_k, dim=0), kind=Kind.EXACT, what="entry f's copy is token f // K")


@pytest.mark.parametrize("num_out_tokens", [None, 0, 7, -5, 100])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_permute_rows_follow_the_stable_expert_order(num_out_tokens, index_dtype):
    tokens, top_k, experts = 8, 3, 5
    x, ids = _integers((tokens, 4), seed=15), _routing(tokens, top_k, experts, seed=16).to(index_dtype)
    order = _bruteforce_order(ids, 0, experts)
    total = tokens * top_k
    if not num_out_tokens:
        kept = total
    else:
        kept = min(num_out_tokens, total) if num_out_tokens > 0 else total + num_out_tokens

    permuted, sorted_indices = golden.npu_moe_token_permute(x, ids, num_out_tokens=num_out_tokens)

    destination = [0] * total
    for row, f in enumerate(order):
        destination[f] = row
    assert_close(permuted, _rows(x, [f // top_k for f in order[:kept]]), kind=Kind.EXACT, what="permuted rows")
    assert_close(sorted_indices, _int32(destination), kind=Kind.EXACT, what="sorted_indices (source -> destination)")


def test_permute_accepts_one_expert_per_token_as_1d_indices():
    x, ids = _integers((6, 3), seed=17), _int32([2, 0, 2, 1, 0, 2])

    permuted, sorted_indices = golden.npu_moe_token_permute(x, ids)

    assert_close(permuted, _rows(x, [1, 4, 3, 0, 2, 5]), kind=Kind.EXACT, what="permuted rows")
    assert_close(sorted_indices, _int32([3, 0, 4, 2, 1, 5]), kind=Kind.EXACT, what="sorted_indices")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpermute_weighted_sum_matches_loops_with_repeated_indices(dtype):
    tokens, top_k, hidden = 6, 3, 5
    permuted = _normal((tokens * top_k, hidden), seed=18, dtype=dtype)
    indices = torch.randperm(tokens * top_k, generator=torch.Generator().manual_seed(19))
    indices[[2, 7]] = 1  # the abs(-1) -> row 1 trick: dropped entries point at row 1 with weight 0
    probs = _normal((tokens, top_k), seed=20, dtype=dtype)
    probs[0, 2], probs[2, 1] = 0, 0

    out = golden.npu_moe_token_unpermute(permuted, indices.to(torch.int32), probs=probs)

    expected = torch.zeros(tokens, hidden, dtype=torch.float64)
    for n in range(tokens):
        for k in range(top_k):
            for h in range(hidden):
                expected[n, h] += float(probs[n, k]) * float(permuted[int(indices[n * top_k + k]), h])
    assert_close(out, expected.to(dtype), kind=Kind.ACCUMULATED, what="Σ_k probs·permuted[sorted_indices]")


def test_unpermute_weight_zero_does_not_hide_a_non_finite_row():
    permuted = torch.tensor([[1.0, 1.0], [float("inf"), 2.0], [3.0, 3.0], [4.0, 4.0]])
    indices = _int32([0, 1, 2, 1])  # token 1's second entry was dropped and points at row 1
    probs = torch.tensor([[1.0, 0.5], [1.0, 0.0]])

    out = golden.npu_moe_token_unpermute(permuted, indices, probs=probs)

    # 0 · inf is NaN: a dropped entry mapped onto a non-finite row poisons its token, as on the NPU.
    assert_close(out, torch.tensor([[float("inf"), 2.0], [float("nan"), 3.0]]), kind=Kind.EXACT, what="out")


# ----------------------------------------------------------------------------- npu_moe_finalize_routing

def _finalize_case(drop_pad_mode: int, seed: int, dtype=torch.float32):
    """Inputs of finalize_routing and the logical map dest[n][k] (-1: dropped)."""
    tokens, top_k, experts, capacity, hidden = 5, 3, 6, 4, 4
    generator = torch.Generator().manual_seed(seed)
    if drop_pad_mode in (0, 2):
        rows = _normal((tokens * top_k, hidden), seed, dtype)
        dest = torch.randperm(tokens * top_k, generator=generator).view(tokens, top_k)
        dest[1, 2] = dest[3, 0] = -1
    else:
        rows = _normal((experts, capacity, hidden), seed, dtype)
        dest = torch.randint(-1, experts * capacity, (tokens, top_k), generator=generator)
    column_layout = drop_pad_mode in (0, 1)
    src_to_dst = (dest.t() if column_layout else dest).reshape(-1).to(torch.int32)
    return dict(
        rows=rows, dest=dest.tolist(), src_to_dst=src_to_dst,
        skip1=_normal((tokens, hidden), seed + 1, dtype), skip2=_normal((tokens, hidden), seed + 2, dtype),
        bias=_normal((experts, hidden), seed + 3, dtype), scales=_normal((tokens, top_k), seed + 4, dtype),
        experts=torch.randint(0, experts, (tokens, top_k), generator=generator).to(torch.int32))


def _finalize_args(case) -> tuple:
    return (case["rows"], case["skip1"], case["skip2"], case["bias"], case["scales"], case["src_to_dst"],
            case["experts"])


def _bruteforce_finalize(case) -> torch.Tensor:
    rows = case["rows"].reshape(-1, case["rows"].shape[-1]).double()
    out = case["skip1"].double() + case["skip2"].double()
    for n, destinations in enumerate(case["dest"]):
        for k, row in enumerate(destinations):
            if row >= 0:
                expert = int(case["experts"][n, k])
                out[n] += float(case["scales"][n, k]) * (rows[row] + case["bias"][expert].double())
    return out


@pytest.mark.parametrize("drop_pad_mode", [0, 1, 2, 3])
def test_finalize_routing_matches_loops_and_skips_dropped_entries(drop_pad_mode):
    case = _finalize_case(drop_pad_mode, seed=21)

    out = golden.npu_moe_finalize_routing(*_finalize_args(case), drop_pad_mode=drop_pad_mode)

    assert_close(out, _bruteforce_finalize(case).float(), kind=Kind.ACCUMULATED, what=f"drop_pad_mode {drop_pad_mode}")


def test_finalize_routing_column_and_row_layouts_of_one_map_agree():
    column, row = _finalize_case(0, seed=22), _finalize_case(2, seed=22)
    assert column["dest"] == row["dest"]  # same map, laid out k-major (column) vs n-major (row)

    assert_close(golden.npu_moe_finalize_routing(*_finalize_args(column), drop_pad_mode=0),
                 golden.npu_moe_finalize_routing(*_finalize_args(row), drop_pad_mode=2), kind=Kind.EXACT,
                 what="mode 0 vs 2")


def test_finalize_routing_all_dropped_leaves_the_skips_and_no_bias():
    tokens, top_k, hidden = 3, 2, 4
    skip1, skip2 = _integers((tokens, hidden), seed=23), _integers((tokens, hidden), seed=24)
    rows = torch.full((tokens * top_k, hidden), float("inf"))

    bias, scales = _integers((2, hidden), seed=25), torch.ones(tokens, top_k)
    dropped = torch.full((tokens * top_k,), -1, dtype=torch.int32)

    out = golden.npu_moe_finalize_routing(rows, skip1, skip2, bias, scales, dropped,
                                          torch.zeros(tokens, top_k, dtype=torch.int32), drop_pad_mode=2)

    assert_close(out, skip1 + skip2, kind=Kind.EXACT, what="skip1 + skip2")


def test_finalize_routing_without_scales_weights_each_entry_once():
    tokens, top_k, hidden = 4, 2, 3
    rows = _integers((tokens * top_k, hidden), seed=26)

    out = golden.npu_moe_finalize_routing(rows, None, None, None, None, torch.arange(tokens * top_k, dtype=torch.int32),
                                          None, drop_pad_mode=2, k=top_k)

    assert_close(out, torch.stack([rows[2 * n] + rows[2 * n + 1] for n in range(tokens)]), kind=Kind.SUM_EXACT,
                 what="Σ_k rows")


# ------------------------------------------------------------------------------------ npu_grouped_matmul

def _bruteforce_grouped_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, counts: list[int]):
    """Row by row: find the row's group by walking the counts, then a float64 dot product per output."""
    out = []
    for row in range(sum(counts)):
        group, start = 0, 0
        while row >= start + counts[group]:
            start += counts[group]
            group += 1
        out.append([sum(float(x[row, i]) * float(weight[group, i, j]) for i in range(x.shape[1]))
                    + float(bias[group, j]) for j in range(weight.shape[2])])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, weight.shape[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_list_type", [0, 1], ids=["cumsum", "counts"])
def test_grouped_matmul_matches_per_row_loop_with_empty_groups(group_list_type, dtype):
    counts = [0, 3, 0, 5, 2, 0]
    rows, k_dim, n_dim = sum(counts) + 2, 8, 6  # 2 trailing rows past the groups: undefined, not compared
    x, weight = _normal((rows, k_dim), 27, dtype), _normal((len(counts), k_dim, n_dim), 28, dtype)
    bias = _normal((len(counts), n_dim), 29, dtype)
    group_list = _int64(counts).cumsum(0) if group_list_type == 0 else _int64(counts)

    (out,) = golden.npu_grouped_matmul([x], [weight], bias=[bias], group_list=group_list, split_item=3, group_type=0,
                                       group_list_type=group_list_type)

    assert out.shape == (rows, n_dim)
    assert_close(out[:sum(counts)], _bruteforce_grouped_matmul(x, weight, bias, counts).to(dtype),
                 kind=Kind.ACCUMULATED, what="grouped rows")


def test_grouped_matmul_accepts_a_cumsum_list():
    counts = [2, 0, 3]
    x, weight = _integers((5, 4), seed=30), _integers((3, 4, 2), seed=31)

    (out,) = golden.npu_grouped_matmul([x], [weight], group_list=[2, 2, 5])

    assert_close(out, _bruteforce_grouped_matmul(x, weight, torch.zeros(3, 2), counts).float(), kind=Kind.SUM_EXACT,
                 what="integer grouped matmul")


# ---------------------------------------------------------------------------------- validation errors

def _x(rows=4, hidden=3, dtype=torch.float32):
    return torch.zeros(rows, hidden, dtype=dtype)


def _ids(rows=4, top_k=2, dtype=torch.int32):
    return torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]][:rows], dtype=dtype)[:, :top_k]


def _gmm(**overrides):
    kwargs = dict(group_list=_int64([1, 3]))
    kwargs.update(overrides)
    x = kwargs.pop("x", [_x(4, 3)])
    weight = kwargs.pop("weight", [torch.zeros(2, 3, 5)])
    return golden.npu_grouped_matmul(x, weight, **kwargs)


_INVALID_CALLS = {
    "routing: int64 expert_idx": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(dtype=torch.int64), expert_num=4),
        "npu_moe_init_routing_v2: expert_idx must be int32 [N, K], got torch.int64 [4, 2]"),
    "routing: 1-D expert_idx": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids().flatten(), expert_num=4),
        "expert_idx must be int32 [N, K]"),
    "routing: 1-D x": (lambda: golden.npu_moe_init_routing_v2(_x().flatten(), _ids(), expert_num=4), "x must be"),
    "routing: x and expert_idx rows differ": (
        lambda: golden.npu_moe_init_routing_v2(_x(rows=3), _ids(), expert_num=4),
        "with 3 rows, got torch.int32 [4, 2]"),
    "routing: expert id >= expert_num": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=3), "expert_idx values must be [0, 3), got 3"),
    "routing: negative expert id": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids() - 1, expert_num=4),
        "expert_idx values must be [0, 4), got -1"),
    "routing: no expert count": (lambda: golden.npu_moe_init_routing_v2(_x(), _ids()), "needs expert_num > 0"),
    "routing: range past expert_num": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, active_expert_range=[2, 6]),
        "0 <= lo < hi <= expert_num, got [2, 6]"),
    "routing: empty range": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, active_expert_range=[3, 3]),
        "0 <= lo < hi <= expert_num, got [3, 3]"),
    "routing: range of 3 numbers": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, active_expert_range=[0, 1, 2]),
        "active_expert_range must be [] or [lo, hi]"),
    "routing: row_idx_type 2": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, row_idx_type=2),
        "row_idx_type must be one of"),
    "routing: expert_tokens_num_type 3": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, expert_tokens_num_type=3),
        "expert_tokens_num_type must be one of [0, 1, 2]"),
    "routing: static quant": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, quant_mode=0), "quant_mode must be one of"),
    "routing: drop/pad mode": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, drop_pad_mode=1), "drop_pad_mode must be"),
    "routing: offset": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, offset=torch.zeros(4)),
        "offset=torch.float32 [4] is not modelled"),
    "routing: smooth scale of the wrong shape": (
        lambda: golden.npu_moe_init_routing_v2(_x(), _ids(), expert_num=4, quant_mode=1, scale=torch.ones(4, 2)),
        "scale must be float32 [4, 3]"),
    "routing: quantising int8 x": (
        lambda: golden.npu_moe_init_routing_v2(_x(dtype=torch.int8), _ids(), expert_num=4, quant_mode=1),
        "quant_mode=1 quantises a floating x"),
    "permute: float indices": (
        lambda: golden.npu_moe_token_permute(_x(), _ids().float()), "indices must be int32 or int64"),
    "permute: indices rows differ": (lambda: golden.npu_moe_token_permute(_x(rows=2), _ids()), "with 2 rows"),
    "permute: negative index": (lambda: golden.npu_moe_token_permute(_x(), _ids() - 1), "indices values must be >= 0"),
    "permute: padded mode": (
        lambda: golden.npu_moe_token_permute(_x(), _ids(), padded_mode=True), "padded_mode=True is not modelled"),
    "unpermute: int64 sorted_indices": (
        lambda: golden.npu_moe_token_unpermute(_x(8), torch.arange(8)), "sorted_indices must be int32 [N*K]"),
    "unpermute: index past the rows": (
        lambda: golden.npu_moe_token_unpermute(_x(8), torch.arange(1, 9, dtype=torch.int32)),
        "sorted_indices values must be [-1, 8), got 8"),
    "unpermute: probs of the wrong size": (
        lambda: golden.npu_moe_token_unpermute(_x(8), torch.arange(8, dtype=torch.int32), probs=torch.ones(3, 2)),
        "probs [N, K] must have N*K = 8 elements"),
    "finalize: drop_pad_mode 4": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, None, None, None, torch.arange(8, dtype=torch.int32),
                                                None, drop_pad_mode=4), "drop_pad_mode must be one of [0, 1, 2, 3]"),
    "finalize: 2-D rows in drop/pad mode": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, None, None, None, torch.arange(8, dtype=torch.int32),
                                                None, drop_pad_mode=1), "[E, C, H] for drop_pad_mode=1"),
    "finalize: scales of another dtype": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, None, None, torch.ones(4, 2, dtype=torch.float16),
                                                torch.arange(8, dtype=torch.int32), None),
        "scales must be torch.float32 [N, K]"),
    "finalize: index past the rows": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, None, None, torch.ones(4, 2),
                                                torch.arange(1, 9, dtype=torch.int32), None),
        "expanded_src_to_dst_row values must be [-1, 8), got 8"),
    "finalize: bias without experts": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, None, _x(2), torch.ones(4, 2),
                                                torch.arange(8, dtype=torch.int32), None),
        "bias needs export_for_source_row"),
    "finalize: expert past the bias rows": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, None, _x(2), torch.ones(4, 2),
                                                torch.arange(8, dtype=torch.int32), _ids()),
        "export_for_source_row values must be [0, 2), got 2"),
    "finalize: skip2 without skip1": (
        lambda: golden.npu_moe_finalize_routing(_x(8), None, _x(4), None, torch.ones(4, 2),
                                                torch.arange(8, dtype=torch.int32), None), "skip2 needs skip1"),
    "finalize: skip1 of the wrong shape": (
        lambda: golden.npu_moe_finalize_routing(_x(8), _x(3), None, None, torch.ones(4, 2),
                                                torch.arange(8, dtype=torch.int32), None),
        "skip1 must be torch.float32 [4, 3], got torch.float32 [3, 3]"),
    "gmm: two x tensors": (lambda: _gmm(x=[_x(), _x()]), "x must be a list of one tensor [M, K], got list of 2"),
    "gmm: 2-D weight": (lambda: _gmm(weight=[torch.zeros(3, 5)]), "weight[0] must be torch.float32 [G, K, N]"),
    "gmm: weight K differs": (lambda: _gmm(weight=[torch.zeros(2, 4, 5)]), "weight[0] must be [G, 3, N]"),
    "gmm: weight dtype differs": (
        lambda: _gmm(weight=[torch.zeros(2, 3, 5, dtype=torch.float16)]), "weight[0] must be torch.float32"),
    "gmm: group_list length": (lambda: _gmm(group_list=_int64([1, 2, 4])), "one entry per group (2), got 3"),
    "gmm: int32 group_list": (lambda: _gmm(group_list=_int32([1, 3])), "group_list must be int64 [2]"),
    "gmm: decreasing cumsum": (lambda: _gmm(group_list=_int64([3, 1])), "non-decreasing cumsum, got [3, 1]"),
    "gmm: counts past the rows": (
        lambda: _gmm(group_list=_int64([3, 3]), group_list_type=1), "group_list covers 6 rows but x[0] has 4"),
    "gmm: group_list_type 2": (lambda: _gmm(group_list_type=2), "group_list_type must be one of [0, 1]"),
    "gmm: per-group outputs": (lambda: _gmm(split_item=0), "split_item must be one of [2, 3]"),
    "gmm: no grouping": (lambda: _gmm(group_type=-1), "group_type must be one of [0]"),
    "gmm: quantised": (lambda: _gmm(per_token_scale=[torch.ones(4)]), "per_token_scale=list of 1 is not modelled"),
    "dispatch: HCCL name instead of a group": (
        lambda: golden.npu_moe_distribute_dispatch_v2(_x(), _ids(), "hccl_world_group", 2, 0, 4),
        "group_ep must be a torch.distributed.ProcessGroup in the golden model (torch_npu takes the HCCL "
        "communicator name), got str 'hccl_world_group'"),
    "combine: HCCL name instead of a group": (
        lambda: golden.npu_moe_distribute_combine(_x(), _ids(), _int32([0] * 8), _int32([0, 0]), torch.ones(4, 2),
                                                  "hccl_world_group", 2, 0, 4),
        "npu_moe_distribute_combine: group_ep must be a torch.distributed.ProcessGroup"),
}


@pytest.mark.parametrize("case", list(_INVALID_CALLS))
def test_invalid_input_raises_a_one_line_config_error(case):
    call, fragment = _INVALID_CALLS[case]

    with pytest.raises(ConfigError) as raised:
        call()

    message = str(raised.value)
    assert "\n" not in message and message.startswith("npu_"), message
    assert fragment in message, message


# --------------------------------------------------------------- dispatch / combine on multi-rank worlds

def _world_inputs(token_counts, experts, top_k, hidden, seed, dtype, mask_kind):
    """Every rank's (x, expert_ids, expert_scales, x_active_mask); any process rebuilds them from the seed."""
    generator = torch.Generator().manual_seed(seed)
    per_rank = []
    for tokens in token_counts:
        x = torch.randint(-8, 9, (tokens, hidden), generator=generator).to(dtype)
        ids = torch.rand(tokens, experts, generator=generator).argsort(dim=1)[:, :top_k].to(torch.int32)
        scales = torch.randint(1, 8, (tokens, top_k), generator=generator).float() / 4  # quarters: exact sums
        if mask_kind == "prefix":
            mask = torch.arange(tokens) < (tokens + 1) // 2
        elif mask_kind == "entries":
            mask = torch.rand(tokens, top_k, generator=generator) < 0.6
        else:
            mask = None
        per_rank.append((x, ids, scales, mask))
    return per_rank


def _active(mask, n: int, k: int) -> bool:
    return mask is None or bool(mask[n] if mask.dim() == 1 else mask[n, k])


def _global_bs(token_counts) -> int:
    """torch_npu wants max_bs · ep_world_size when ranks hold different token counts, else 0 is fine."""
    return max(token_counts) * len(token_counts) if len(set(token_counts)) > 1 else 0


def _dispatch_combine_on_rank(token_counts, experts, top_k, hidden, seed, dtype, mask_kind, version, token_nums_type):
    """One rank: dispatch its inputs, combine the received rows unchanged (identity experts)."""
    from ascend_conformance.harness import rank_context

    context = rank_context()
    x, ids, scales, mask = (t if t is None else t.to(context.device)
                            for t in _world_inputs(token_counts, experts, top_k, hidden, seed, dtype,
                                                   mask_kind)[context.rank])
    ep = dict(group_ep=dist.group.WORLD, ep_world_size=context.world_size, ep_rank_id=context.rank,
              moe_expert_num=experts)
    if version == 2:
        expand_x, _, handle, token_nums, recv_counts, _, expand_scales = golden.npu_moe_distribute_dispatch_v2(
            x, ids, **ep, x_active_mask=mask, expert_scales=scales, global_bs=_global_bs(token_counts),
            expert_token_nums_type=token_nums_type)
        combined = golden.npu_moe_distribute_combine_v2(expand_x, ids, handle, recv_counts, scales, **ep,
                                                        x_active_mask=mask, shared_expert_x=_shared_expert_output(x),
                                                        global_bs=_global_bs(token_counts))
    else:
        expand_x, _, handle, token_nums, recv_counts, _, expand_scales = golden.npu_moe_distribute_dispatch(
            x, ids, **ep, x_active_mask=mask, expert_scales=scales, global_bs=_global_bs(token_counts),
            expert_token_nums_type=token_nums_type)
        combined = golden.npu_moe_distribute_combine(expand_x, ids, handle, recv_counts, scales, **ep,
                                                     global_bs=_global_bs(token_counts))
    return {"expand_x": expand_x.cpu(), "expand_scales": expand_scales.cpu(), "expert_token_nums": token_nums.cpu(),
            "combined": combined.cpu()}


def _expected_on_rank(inputs, rank: int, experts: int):
    """Rows (and their scales) rank `rank` must receive: local expert, then source rank, then source order."""
    local = experts // len(inputs)
    rows, scales, counts = [], [], []
    for expert in range(rank * local, (rank + 1) * local):
        before = len(rows)
        for x, ids, expert_scales, mask in inputs:
            for n in range(ids.shape[0]):
                for k in range(ids.shape[1]):
                    if int(ids[n, k]) == expert and _active(mask, n, k):
                        rows.append(x[n])
                        scales.append(float(expert_scales[n, k]))
        counts.append(len(rows) - before)
    return rows, scales, counts


def _shared_expert_output(x: torch.Tensor) -> torch.Tensor:
    """What the v2 runs pass as shared_expert_x: small integers, different from x."""
    return x.flip(1) * 2


def _expected_combined(x, ids, expert_scales, mask, with_shared: bool) -> torch.Tensor:
    """Identity experts: out[t] = Σ_k active · scale[t, k] · x[t] (+ shared[t] when t takes part at all)."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    shared = _shared_expert_output(x).double()
    for n in range(x.shape[0]):
        for k in range(ids.shape[1]):
            if _active(mask, n, k):
                out[n] += float(expert_scales[n, k]) * x[n].double()
        if with_shared and any(_active(mask, n, k) for k in range(ids.shape[1])):
            out[n] += shared[n]
    return out.to(x.dtype)


def _check_dispatch_combine(results, token_counts, experts, top_k, hidden, seed, dtype, mask_kind, version,
                            token_nums_type):
    inputs = _world_inputs(token_counts, experts, top_k, hidden, seed, dtype, mask_kind)
    world_size = len(token_counts)
    capacity = (_global_bs(token_counts) or token_counts[0] * world_size) * min(experts // world_size, top_k)
    for rank, got in enumerate(results):
        rows, scales, counts = _expected_on_rank(inputs, rank, experts)
        received = len(rows)
        nums = [sum(counts[:i + 1]) for i in range(len(counts))] if token_nums_type == 0 else counts
        assert got["expand_x"].shape == (capacity, hidden), f"rank {rank}: expand_x is [A, H] with A = {capacity}"
        assert_close(got["expand_x"][:received], torch.stack(rows) if rows else torch.zeros(0, hidden, dtype=dtype),
                     kind=Kind.EXACT, what=f"rank {rank} received rows")
        assert_close(got["expand_scales"][:received], torch.tensor(scales, dtype=torch.float32), kind=Kind.EXACT,
                     what=f"rank {rank} received scales")
        assert_close(got["expert_token_nums"], _int64(nums), kind=Kind.EXACT, what=f"rank {rank} expert_token_nums")
        assert_close(got["combined"], _expected_combined(*inputs[rank], with_shared=version == 2), kind=Kind.SUM_EXACT,
                     what=f"rank {rank} combined tokens")


_WORLD_CASES = {
    # name: (token counts per rank, experts, top_k, dtype, x_active_mask kind, expert_token_nums_type)
    "2 ranks, one with 0 tokens": ([5, 0], 4, 2, torch.float32, "prefix", 1),
    "2 ranks, equal tokens, cumsum": ([4, 4], 6, 3, torch.bfloat16, "none", 0),
    "4 ranks, uneven, one with 0 tokens": ([3, 0, 6, 2], 8, 3, torch.float32, "prefix", 1),
    "4 ranks, per-entry mask": ([4, 4, 4, 4], 8, 4, torch.float32, "entries", 0),
}


@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
@pytest.mark.parametrize("case", list(_WORLD_CASES))
def test_dispatch_combine_world_matches_the_all_ranks_oracle(world, case, version):
    token_counts, experts, top_k, dtype, mask_kind, token_nums_type = _WORLD_CASES[case]
    args = (token_counts, experts, top_k, 8, 1234, dtype, mask_kind)

    results = world(len(token_counts), timeout=120).run(_dispatch_combine_on_rank, *args, version, token_nums_type)

    _check_dispatch_combine(results, *args, version, token_nums_type)


@pytest.mark.full
@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
@pytest.mark.parametrize("mask_kind", ["none", "prefix", "entries"])
@pytest.mark.parametrize("token_counts, experts, top_k", [
    ([7, 7, 7, 7], 16, 4), ([1, 0, 0, 9], 8, 2), ([0, 0], 4, 1), ([12, 3], 2, 2), ([6] * 8, 64, 8),
    ([2, 9, 0, 4, 1, 0, 7, 3], 16, 8),
])
def test_dispatch_combine_world_sweep(world, token_counts, experts, top_k, mask_kind, version):
    args = (token_counts, experts, top_k, 16, 99, torch.bfloat16, mask_kind)

    results = world(len(token_counts), timeout=300).run(_dispatch_combine_on_rank, *args, version, 1)

    _check_dispatch_combine(results, *args, version, 1)


def _dispatch_rejection_on_rank(bad_rank: int, problem: str):
    """Every rank dispatches; `bad_rank` passes a bad input. Returns the ConfigError each rank raised."""
    from ascend_conformance.harness import rank_context

    context = rank_context()
    tokens = 3 if problem == "uneven tokens" and context.rank == bad_rank else 4
    x = torch.zeros(tokens, 8, device=context.device)
    ids = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]], dtype=torch.int32, device=context.device)[:tokens]
    if problem == "int64 ids" and context.rank == bad_rank:
        ids = ids.long()
    try:
        golden.npu_moe_distribute_dispatch_v2(x, ids, dist.group.WORLD, context.world_size, context.rank, 4)
    except ConfigError as exc:
        return str(exc)
    return None


def test_dispatch_bad_input_on_one_rank_raises_on_every_rank(world):
    messages = world(2, timeout=60).run(_dispatch_rejection_on_rank, 1, "int64 ids")

    assert messages[1] == "npu_moe_distribute_dispatch_v2: expert_ids must be int32 [4, K], got torch.int64 [4, 2]"
    assert messages[0] == ("npu_moe_distribute_dispatch_v2: EP rank(s) [1] rejected their inputs (their own error "
                           "says why); no data was exchanged")


def _combine_with_foreign_expert_ids_on_rank():
    """Rank 0 hands combine expert_ids that differ from the ones its dispatch used."""
    from ascend_conformance.harness import rank_context

    context = rank_context()
    x = torch.ones(2, 8, device=context.device)
    ids = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32, device=context.device)
    ep = dict(group_ep=dist.group.WORLD, ep_world_size=context.world_size, ep_rank_id=context.rank, moe_expert_num=4)
    expand_x, _, handle, _, recv_counts, _, _ = golden.npu_moe_distribute_dispatch_v2(x, ids, **ep)
    if context.rank == 0:
        ids = torch.tensor([[2, 3], [3, 2]], dtype=torch.int32, device=context.device)
    try:
        scales = torch.ones(2, 2, device=context.device)
        golden.npu_moe_distribute_combine_v2(expand_x, ids, handle, recv_counts, scales, **ep)
    except ConfigError as exc:
        return str(exc)
    return None


def test_combine_with_handles_of_another_dispatch_raises_on_every_rank(world):
    messages = world(2, timeout=60).run(_combine_with_foreign_expert_ids_on_rank)

    expected = ("npu_moe_distribute_combine_v2: rank 0 holds 3 rows of rank 0 but rank 0 expects 0; pass expert_ids, "
                "assist_info_for_combine and ep_recv_counts from the same dispatch")
    assert messages == [expected, expected]


def test_dispatch_uneven_tokens_without_global_bs_raises_on_every_rank(world):
    messages = world(2, timeout=60).run(_dispatch_rejection_on_rank, 0, "uneven tokens")

    expected = ("npu_moe_distribute_dispatch_v2: EP ranks hold different token counts [3, 4]; pass global_bs = "
                "max_bs * ep_world_size = 8 (torch_npu requires it)")
    assert messages == [expected, expected]


# ----------------------------------------------------------------------- golden vs torch_npu (NPU hosts)
#
# The real op runs in a rank of world(1): the rank holds the lease of one NPU, as every world's ranks hold
# theirs, so under `-n 8` no pytest worker opens a context on an NPU that a world leased exclusively. The
# pytest worker itself never touches a device: it builds the inputs, runs the golden model on the CPU and
# compares.

def _npu_world(world, n: int = 1):
    """A world of `n` ranks on leased NPUs, or skip naming why not (the real import error, e.g. a missing
    libhccl.so, when torch_npu does not import). Nothing here touches a device."""
    plat = platforms.get()
    if plat.name != "npu":
        reason = platforms.torch_npu_import_error()
        pytest.skip(reason or f"torch_npu compared only on the npu platform; the platform under test is {plat.name}")
    return world(n, timeout=300)


def _moved(value, device):
    """`value` with every tensor in it (also inside lists, tuples and dicts) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def _torch_npu_op_on_rank(op: str, *args, **kwargs):
    """Rank function: torch_npu's `op` on the arguments moved to this rank's leased NPU; results on the CPU."""
    import torch_npu

    from ascend_conformance.harness import rank_context

    device = rank_context().device
    return _moved(getattr(torch_npu, op)(*_moved(args, device), **_moved(kwargs, device)), "cpu")


@pytest.mark.parametrize("row_idx_type", [0, 1])
@pytest.mark.parametrize("quant_mode, expert_tokens_num_type", [(-1, 1), (1, 2), (-1, 2), (1, 1)])
def test_npu_init_routing_v2_matches_golden(world, row_idx_type, quant_mode, expert_tokens_num_type):
    npu = _npu_world(world)
    tokens, top_k, experts, hidden, lo, hi = 64, 8, 32, 256, 8, 24
    x, ids = _normal((tokens, hidden), 40, torch.bfloat16), _routing(tokens, top_k, experts, seed=41)
    kwargs = dict(active_num=tokens * top_k, expert_num=experts, expert_tokens_num_type=expert_tokens_num_type,
                  expert_tokens_num_flag=True, quant_mode=quant_mode, active_expert_range=[lo, hi],
                  row_idx_type=row_idx_type)

    real = npu.run(_torch_npu_op_on_rank, "npu_moe_init_routing_v2", x, ids, **kwargs)[0]
    ours = golden.npu_moe_init_routing_v2(x, ids, **kwargs)

    valid = len(_bruteforce_order(ids, lo, hi))
    assert_close(real[0][:valid], ours[0][:valid], kind=Kind.EXACT, what="expanded_x")
    index_rows = valid if row_idx_type == 1 else tokens * top_k
    assert_close(real[1][:index_rows], ours[1][:index_rows], kind=Kind.EXACT, what="expanded_row_idx")
    # torch_npu's key-value counts are [expert_num, 2] with the non-empty experts first.
    assert_close(real[2][:ours[2].shape[0]], ours[2], kind=Kind.EXACT, what="expert tokens")
    if quant_mode == 1:
        assert_close(real[3][:valid], ours[3][:valid], kind=Kind.EXACT, what="dynamic scales")


def test_npu_token_permute_unpermute_match_golden(world):
    npu = _npu_world(world)
    tokens, top_k, experts, hidden = 128, 4, 16, 512
    x, ids = _normal((tokens, hidden), 42, torch.bfloat16), _routing(tokens, top_k, experts, seed=43)
    probs = torch.softmax(_normal((tokens, top_k), 44), dim=1).to(torch.bfloat16)

    real_permuted, real_indices = npu.run(_torch_npu_op_on_rank, "npu_moe_token_permute", x, ids)[0]
    ours_permuted, ours_indices = golden.npu_moe_token_permute(x, ids)
    real_out = npu.run(_torch_npu_op_on_rank, "npu_moe_token_unpermute", real_permuted, real_indices, probs=probs)[0]
    ours_out = golden.npu_moe_token_unpermute(ours_permuted, ours_indices, probs=probs)

    assert_close(real_permuted, ours_permuted, kind=Kind.EXACT, what="permuted tokens")
    assert_close(real_indices, ours_indices, kind=Kind.EXACT, what="sorted_indices")
    assert_close(real_out, ours_out, kind=Kind.ACCUMULATED, what="unpermuted tokens")


@pytest.mark.parametrize("drop_pad_mode", [0, 2])
def test_npu_finalize_routing_matches_golden(world, drop_pad_mode):
    npu = _npu_world(world)
    args = _finalize_args(_finalize_case(drop_pad_mode, seed=45))

    real = npu.run(_torch_npu_op_on_rank, "npu_moe_finalize_routing", *args, drop_pad_mode=drop_pad_mode)[0]
    ours = golden.npu_moe_finalize_routing(*args, drop_pad_mode=drop_pad_mode)

    assert_close(real, ours, kind=Kind.ACCUMULATED, what="finalized tokens")


@pytest.mark.parametrize("group_list_type", [0, 1])
def test_npu_grouped_matmul_matches_golden(world, group_list_type):
    npu = _npu_world(world)
    counts = [16, 0, 40, 8]
    x, weight = _normal((sum(counts), 256), 46, torch.bfloat16), _normal((len(counts), 256, 128), 47, torch.bfloat16)
    group_list = _int64(counts).cumsum(0) if group_list_type == 0 else _int64(counts)
    kwargs = dict(split_item=2, group_type=0, group_list_type=group_list_type)

    (real,) = npu.run(_torch_npu_op_on_rank, "npu_grouped_matmul", [x], [weight], group_list=group_list, **kwargs)[0]
    (ours,) = golden.npu_grouped_matmul([x], [weight], group_list=group_list, **kwargs)

    assert_close(real, ours, kind=Kind.ACCUMULATED, what="grouped matmul")


# The distribute ops' comparison: 8 ranks of 16 bf16 tokens, H 7168, 16 experts, K 4 (the shape of the v2
# pages' examples; on A3 the v1 pages' limits hold too). A2's ops want an EP group of 16 or more: there the
# ranks skip with the reason of the table in moe/mc2_applicability.py.
_NPU_DISPATCH_SHAPE = MC2Shape(dtype="bfloat16", batch=16, hidden=7168, top_k=4, ep_size=8, experts=16)


def _npu_vs_golden_dispatch_combine_on_rank(shape: MC2Shape, seed: int, version: int):
    """One NPU rank: the real op (HCCL communicator name) and the golden (process group) on the same inputs."""
    import torch_npu

    from ascend_conformance.harness import rank_context

    context = rank_context()
    reason = mc2_unsupported_reason(shape, ops_soc(context.device))
    if reason:
        pytest.skip(reason)
    experts = shape.experts
    x, ids, scales, _ = (t if t is None else t.to(context.device)
                         for t in _world_inputs([shape.batch] * shape.ep_size, experts, shape.top_k, shape.hidden,
                                                seed, torch.bfloat16, "none")[context.rank])
    group = dist.group.WORLD
    hccl_name = group._get_backend(torch.device("npu")).get_hccl_comm_name(context.rank)
    ep = dict(ep_world_size=context.world_size, ep_rank_id=context.rank, moe_expert_num=experts)
    dispatch = torch_npu.npu_moe_distribute_dispatch_v2 if version == 2 else torch_npu.npu_moe_distribute_dispatch
    combine = torch_npu.npu_moe_distribute_combine_v2 if version == 2 else torch_npu.npu_moe_distribute_combine
    golden_dispatch = golden.npu_moe_distribute_dispatch_v2 if version == 2 else golden.npu_moe_distribute_dispatch
    golden_combine = golden.npu_moe_distribute_combine_v2 if version == 2 else golden.npu_moe_distribute_combine
    results = {}
    for name, group_ep, dispatch_op, combine_op in (("real", hccl_name, dispatch, combine),
                                                   ("golden", group, golden_dispatch, golden_combine)):
        expand_x, _, handle, token_nums, recv_counts, tp_counts, _ = dispatch_op(x, ids, group_ep=group_ep, **ep)
        combined = combine_op(expand_x, ids, handle, recv_counts, scales, group_ep=group_ep, tp_send_counts=tp_counts,
                              **ep)
        results[name] = {"expand_x": expand_x.cpu(), "expert_token_nums": token_nums.cpu(), "combined": combined.cpu()}
    return results


@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
def test_npu_dispatch_combine_match_golden(world, version):
    shape = _NPU_DISPATCH_SHAPE

    results = _npu_world(world, shape.ep_size).run(_npu_vs_golden_dispatch_combine_on_rank, shape, 50, version)

    for rank, result in enumerate(results):
        real, ours = result["real"], result["golden"]
        received = int(ours["expert_token_nums"].sum())
        assert_close(real["expert_token_nums"], ours["expert_token_nums"], kind=Kind.EXACT, what=f"rank {rank} counts")
        assert_close(real["expand_x"][:received], ours["expand_x"][:received], kind=Kind.EXACT,
                     what=f"rank {rank} received rows")
        assert_close(real["combined"], ours["combined"], kind=Kind.ACCUMULATED, what=f"rank {rank} combined tokens")


def test_unpermute_with_probs_and_no_tokens_returns_an_empty_hidden_block():
    """A rank with 0 tokens still calls the combine path: [0, H] in, [0, H] out."""
    out = golden.npu_moe_token_unpermute(torch.zeros(0, 4, dtype=torch.bfloat16), torch.zeros(0, dtype=torch.int32),
                                         probs=torch.zeros(0, 2))
    assert out.shape == (0, 4) and out.dtype == torch.bfloat16
