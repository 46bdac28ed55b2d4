"""Golden model of ``npu_swiglu``: the gated activation between the two grouped matmuls of the expert MLP.

torch_npu's contract (its ``npu_swiglu(x, dim=-1)`` documentation): split ``x`` in two halves along
``dim``, the first half ``a`` and the second ``b``, and return ``silu(a) · b``; the output has ``x``'s dtype
and half of its size along ``dim``. vllm-ascend stores ``w13`` with the gate rows first, so ``a`` is the
gate projection and ``b`` the up projection. The NPU kernel computes in float32 and rounds once.

Worked example, one row ``x = [0, 2, 3, 5]`` (halves ``a = [0, 2]``, ``b = [3, 5]``)::

    silu(a) = a · sigmoid(a) = [0, 1.7616]      out = [0 · 3, 1.7616 · 5] = [0, 8.8080]
"""
from __future__ import annotations

import torch

from ascend_conformance.golden.validation import FLOAT_NAMES, FLOATS, check_tensor, fail, got


def npu_swiglu(x, dim=-1):
    """``silu(a) · b`` with ``a, b = x.chunk(2, dim)``, computed in float32 and rounded once to x's dtype.

    >>> [round(v, 4) for v in npu_swiglu(torch.tensor([[0.0, 2.0, 3.0, 5.0]]))[0].tolist()]
    [0.0, 8.808]
    """
    op = "npu_swiglu"
    check_tensor(op, "x", x, FLOATS, tuple(range(1, 9)), f"{FLOAT_NAMES} [..., 2n, ...]")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        fail(op, f"dim must be an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    if x.shape[dim] % 2:
        fail(op, f"x must have an even size along dim {dim} (two halves), got {got(x)}")
    gate, up = x.float().chunk(2, dim=dim)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
