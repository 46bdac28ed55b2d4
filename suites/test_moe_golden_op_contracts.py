"""The golden-op contracts vllm-ascend's unquantized MoE path relies on (docs/ops.md), against independent
oracles: small float64 formulas and loops that share nothing with the models.

* ``npu_swiglu``: ``silu(first half) · second half`` along ``dim``, computed once in float32;
* ``npu_moe_token_unpermute``: an index of -1 (an entry ``npu_moe_init_routing_v2`` left outside its active
  range, which vllm-ascend's A5 adaptor passes as is) contributes nothing, not even a non-finite row's NaN;
  ``restore_shape`` names the output shape;
* ``npu_moe_init_routing_v2``: the A5 adaptor's ``x_dtype=None`` is the unquantized call.
"""
from __future__ import annotations

import math

import pytest
import torch

from ascend_conformance import golden
from ascend_conformance.errors import ConfigError
from ascend_conformance.tolerance import Kind, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _swiglu_oracle(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Element by element in float64: a / (1 + e^-a) · b for the two halves along ``dim``."""
    moved = x.double().movedim(dim, -1)
    half = moved.shape[-1] // 2
    out = torch.empty((*moved.shape[:-1], half), dtype=torch.float64)
    for index in range(half):
        a, b = moved[..., index], moved[..., half + index]
        out[..., index] = a / (1.0 + torch.exp(-a)) * b
    return out.movedim(-1, dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", [((5, 8), -1), ((3, 4, 6), 1), ((6, 2), 0)])
def test_swiglu_is_silu_of_the_first_half_times_the_second(dtype, shape, dim):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 3).to(dtype)
    out = golden.npu_swiglu(x, dim=dim)
    expected = _swiglu_oracle(x, dim)
    assert out.dtype == dtype and list(out.shape) == list(expected.shape)
    assert_close(out, expected.to(dtype), kind=Kind.ACCUMULATED, what=f"npu_swiglu {dtype} dim {dim}")


def test_swiglu_worked_example():
    out = golden.npu_swiglu(torch.tensor([[0.0, 2.0, 3.0, 5.0]]))
    assert out[0, 0].item() == 0.0 and math.isclose(out[0, 1].item(), 2.0 / (1 + math.exp(-2.0)) * 5.0, rel_tol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: golden.npu_swiglu(torch.ones(2, 3)), "npu_swiglu: x must have an even size along dim -1"),
    (lambda: golden.npu_swiglu(torch.ones(2, 4), dim=2), "npu_swiglu: dim must be an int in [-2, 2), got 2"),
    (lambda: golden.npu_swiglu(torch.ones(2, 4, dtype=torch.int32)), "npu_swiglu: x must be float16, bfloat16 or"),
])
def test_swiglu_refuses_bad_input_in_one_line(call, message):
    with pytest.raises(ConfigError) as caught:
        call()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def _unpermute_oracle(rows, index, probs):
    """Loops: out[n] = Σ_k probs[n, k] · rows[index[n·K + k]] over the entries whose index is not -1."""
    tokens, top_k = probs.shape
    out = torch.zeros((tokens, rows.shape[1]), dtype=torch.float64)
    for n in range(tokens):
        for k in range(top_k):
            j = int(index[n * top_k + k])
            if j >= 0:
                out[n] += float(probs[n, k]) * rows[j].double()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpermute_skips_never_routed_entries_even_past_a_non_finite_row(dtype):
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(6, 4, generator=gen).to(dtype)
    rows[5] = float("inf")  # past the valid rows: what a real op may leave there
    index = torch.tensor([0, -1, 2, 1, -1, -1, 3, 4], dtype=torch.int32)  # 4 tokens, K 2
    probs = torch.rand(4, 2, generator=gen)
    out = golden.npu_moe_token_unpermute(rows, index, probs=probs)
    assert_close(out, _unpermute_oracle(rows, index, probs).to(dtype), kind=Kind.ACCUMULATED, what="unpermute -1")
    assert torch.equal(out[2], torch.zeros(4, dtype=dtype)), "a token with no routed entry is zero"
    plain = golden.npu_moe_token_unpermute(rows, index)
    assert torch.equal(plain[1], torch.zeros(4, dtype=dtype)) and torch.equal(plain[0], rows[0])


def test_unpermute_restore_shape_names_the_output_shape():
    rows, index, probs = torch.ones(4, 3), torch.arange(4, dtype=torch.int32), torch.ones(2, 2)
    assert list(golden.npu_moe_token_unpermute(rows, index, probs=probs, restore_shape=torch.Size([2, 3])).shape) == [2, 3]
    with pytest.raises(ConfigError, match=r"restore_shape \[4, 3\] must be the output shape \[2, 3\]"):
        golden.npu_moe_token_unpermute(rows, index, probs=probs, restore_shape=(4, 3))
    with pytest.raises(ConfigError, match=r"sorted_indices values must be \[-1, 4\), got -2"):
        golden.npu_moe_token_unpermute(rows, torch.tensor([0, -2, 1, 2], dtype=torch.int32), probs=probs)


def test_init_routing_accepts_the_a5_adaptors_unquantized_x_dtype():
    x = torch.arange(8.0).view(4, 2)
    ids = torch.tensor([[1], [0], [1], [0]], dtype=torch.int32)
    plain = golden.npu_moe_init_routing_v2(x, ids, expert_num=2, expert_tokens_num_type=1)
    same = golden.npu_moe_init_routing_v2(x, ids, expert_num=2, expert_tokens_num_type=1, x_dtype=None)
    assert all(torch.equal(a, b) for a, b in zip(plain, same))
    assert plain[0][:, 0].tolist() == [2.0, 6.0, 0.0, 4.0]  # expert 0's tokens 1, 3, then expert 1's 0, 2
    with pytest.raises(ConfigError, match="x_dtype=.* is not modelled by the golden op"):
        golden.npu_moe_init_routing_v2(x, ids, expert_num=2, x_dtype=torch.int8)
