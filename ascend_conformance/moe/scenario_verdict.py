"""The verdict on a MoE scenario: one rank's output against the dense oracle, and every rank's folded
into the JSON-able summary the CLI prints and the suites assert on.

The verdict comes from the single tolerance policy (:mod:`ascend_conformance.tolerance`): ``ACCUMULATED``
for the computing methods against the float32 oracle rounded to the output dtype, ``EXACT`` for Dummy,
which must hand back its token buffer unchanged.
"""
from __future__ import annotations

import math

import torch

from ascend_conformance.moe.methods import COMPUTING_METHODS
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.tolerance import Kind, assert_close, tolerance


def compare_result(out: torch.Tensor, expected: torch.Tensor, kind: Kind, what: str) -> dict:
    """Errors against the float32 `expected`; the verdict from the policy on `expected` rounded to out's dtype.

    >>> result = compare_result(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), Kind.EXACT, "demo")
    >>> result["ok"], result["max_abs_err"], round(result["max_rel_err"], 6)
    (False, 0.5, 0.2)
    """
    result = {"max_abs_err": 0.0, "max_rel_err": 0.0, "tolerance_used": 0.0, "ok": True, "message": None}
    if out.shape == expected.shape and out.numel():
        # A NaN anywhere counts as an infinite error (max() would otherwise skip or propagate it at random).
        diff = (out.float() - expected.float()).abs().nan_to_num(nan=math.inf)
        result["max_abs_err"] = float(diff.max())
        result["max_rel_err"] = float((diff / expected.float().abs().clamp_min(1e-6)).max())
        rounded = expected.to(out.dtype).float()
        rtol, atol = tolerance(out.dtype, kind)
        if rtol or atol:  # share of the allowed error used by the worst element (1.0 = at the limit)
            used = (out.float() - rounded).abs() / (atol + rtol * rounded.abs())
            result["tolerance_used"] = float(used.nan_to_num(nan=math.inf).max())
    try:
        assert_close(out, expected.to(out.dtype), kind=kind, what=what)
    except AssertionError as exc:
        result.update(ok=False, message=str(exc))
    return result


def summarize(scenario: Scenario, rank_results: list[dict]) -> dict:
    """The JSON-able summary of one scenario from every rank's result (rank order)."""
    rtol, atol = tolerance(scenario.torch_dtype, Kind.ACCUMULATED if scenario.method in COMPUTING_METHODS
                           else Kind.EXACT)
    failures = [r for r in rank_results if not r["ok"]]
    return {
        **scenario.to_dict(),
        "tokens_per_dp": list(scenario.token_counts()),
        "expert_placement": scenario.expert_placement().describe(),
        "ops": rank_results[0]["ops"] if rank_results else None,
        "oracle": "dense float32" if scenario.method in COMPUTING_METHODS else "input (dummy keeps the token buffer)",
        "max_abs_err": _json_number(max((r["max_abs_err"] for r in rank_results), default=0.0)),
        "max_rel_err": _json_number(max((r["max_rel_err"] for r in rank_results), default=0.0)),
        "tolerance_used": _json_number(max((r["tolerance_used"] for r in rank_results), default=0.0)),
        "rtol": rtol,
        "atol": atol,
        "ok": not failures,
        "failing_ranks": [r["rank"] for r in failures],
        "first_failure": failures[0]["message"] if failures else None,
        "repro": scenario.repro(),
    }


def _json_number(value: float):
    """The value, or the string "inf" for a non-finite error (strict JSON has no Infinity).

    >>> _json_number(0.25), _json_number(math.inf)
    (0.25, 'inf')
    """
    return value if math.isfinite(value) else "inf"
