"""The single tolerance policy of the suite, and mismatch reports people can read.

Every comparison in the suites goes through :func:`assert_close` with a :class:`Kind` that says what sort
of result is compared; the tolerance follows from (kind, dtype) and nowhere else.

Kinds
-----
EXACT
    Indices, counts, routing maps and gathered / permuted rows: bit-for-bit, dtype and shape included
    (NaN matches NaN in the same place).
SUM_EXACT
    Reductions over exactly representable inputs (small integers in the float dtype), as nccl-tests
    checks collectives: every summation order gives the same bits, so 0 ulp.
AVERAGE
    ``avg`` reductions of exactly representable inputs: the final division rounds once, 2 ulp
    (nccl-tests' bound).
ACCUMULATED
    Weighted sums and matmuls whose summation order legitimately differs between two implementations
    (the MoE output against the dense oracle, grouped matmul against per-group matmul). Tolerance per
    dtype from the rounding of the narrowest intermediate; see ``_ACCUMULATED``.

Integer and bool dtypes are always compared exactly whatever the kind.
"""
from __future__ import annotations

import enum

import torch


class Kind(enum.Enum):
    EXACT = "exact"
    SUM_EXACT = "sum_exact"
    AVERAGE = "average"
    ACCUMULATED = "accumulated"


# (rtol, atol) for results whose summation order differs between implementations. fp32 and fp64 are
# torch.testing's defaults. For 16-bit types every intermediate of an expert MLP (h, silu(h)*g, y) is
# rounded once to the dtype, so errors of a few units of the dtype's epsilon (fp16 2^-10, bf16 2^-7) are
# expected against a float32 oracle: 2 eps relative plus the same absolute floor for values near zero.
_ACCUMULATED = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (2.0e-3, 2.0e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype, kind: Kind) -> tuple[float, float]:
    """(rtol, atol) the policy assigns to a result of `kind` held in `dtype`."""
    if not dtype.is_floating_point or kind in (Kind.EXACT, Kind.SUM_EXACT):
        return 0.0, 0.0
    if kind is Kind.AVERAGE:
        # 2 ulp relative to the value; the absolute floor is 2 ulp of the smallest normal number.
        info = torch.finfo(dtype)
        return 2 * info.eps, 2 * info.tiny
    if kind is Kind.ACCUMULATED:
        if dtype not in _ACCUMULATED:
            raise ValueError(f"no ACCUMULATED tolerance for dtype {dtype}")
        return _ACCUMULATED[dtype]
    raise ValueError(f"unknown comparison kind {kind!r}")


def mismatch_report(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float,
                    max_rows: int = 8) -> str:
    """A table of the worst mismatching elements: index, actual, expected, |diff|, allowed."""
    a = actual.detach().to("cpu")
    e = expected.detach().to("cpu")
    wide = torch.float64 if (a.is_floating_point() or e.is_floating_point()) else torch.int64
    a64, e64 = a.to(wide), e.to(wide)
    diff = (a64 - e64).abs()
    both_nan = torch.isnan(a64) & torch.isnan(e64) if wide is torch.float64 else torch.zeros_like(diff, dtype=torch.bool)
    allowed = atol + rtol * e64.abs()
    bad = ~both_nan & ~(diff <= allowed)  # NaN diffs count as bad
    count = int(bad.sum())
    lines = [f"{count} of {a.numel()} elements differ (rtol={rtol:g}, atol={atol:g}, dtype={actual.dtype})"]
    if count == 0:
        return lines[0]
    flat_bad = bad.flatten().nonzero().flatten()
    order = diff.flatten()[flat_bad].nan_to_num(nan=float("inf")).argsort(descending=True)[:max_rows]
    lines.append(f"{'index':>20} {'actual':>14} {'expected':>14} {'|diff|':>12} {'allowed':>12}")
    for i in flat_bad[order].tolist():
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), a.shape)) if a.dim() else ()
        lines.append(f"{str(idx):>20} {a64.flatten()[i].item():>14.6g} {e64.flatten()[i].item():>14.6g} "
                     f"{diff.flatten()[i].item():>12.4g} {allowed.flatten()[i].item():>12.4g}")
    return "\n".join(lines)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, kind: Kind, what: str = "result") -> None:
    """Raise AssertionError naming `what` with a mismatch table unless `actual` matches `expected`.

    Shapes and dtypes must agree exactly; values within the policy's tolerance for (kind, dtype).
    """
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise AssertionError(f"{what}: expected two tensors, got {type(actual).__name__} and "
                             f"{type(expected).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype} != expected {expected.dtype}")
    rtol, atol = tolerance(actual.dtype, kind)
    try:
        torch.testing.assert_close(actual.detach().cpu(), expected.detach().cpu(), rtol=rtol, atol=atol,
                                   equal_nan=True, check_device=False)
    except AssertionError:
        raise AssertionError(f"{what} ({kind.value}): " + mismatch_report(actual, expected, rtol, atol)) from None
