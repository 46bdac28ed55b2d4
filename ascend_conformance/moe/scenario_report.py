"""What a failing MoE scenario prints: the verdict, the first mismatch table and the repro line."""
from __future__ import annotations


def failure_report(summary: dict) -> str:
    """What a failing test prints for one scenario: the verdict, the first mismatch table, the repro.

    >>> print(failure_report({"method": "mc2", "world_size": 2, "dp": 2, "tp": 1, "tokens_per_dp": [3, 0],
    ...                       "failing_ranks": [1], "rtol": 0.016, "atol": 1e-05, "max_abs_err": 0.5,
    ...                       "first_failure": "<mismatch table>", "repro": "python -m ascend_conformance moe ..."}))
    mc2 world 2 dp2 tp1 tokens_per_dp [3, 0]: ranks [1] exceed rtol 0.016 atol 1e-05 (max abs err 0.5)
    <mismatch table>
    repro: python -m ascend_conformance moe ...
    """
    return (f"{summary['method']} world {summary['world_size']} dp{summary['dp']} tp{summary['tp']} "
            f"tokens_per_dp {summary['tokens_per_dp']}: ranks {summary['failing_ranks']} exceed rtol "
            f"{summary['rtol']:g} atol {summary['atol']:g} (max abs err {summary['max_abs_err']})\n"
            f"{summary['first_failure']}\nrepro: {summary['repro']}")
