"""`ascend-conformance compare BASELINE NEW`: benchmark regressions and new failures against a baseline.

BASELINE and NEW are benchmark JSON files in pytest-benchmark's schema, or directories holding them.
Prints a table; exit code 1 when anything regressed (time, busbw, memory, new failures), else 0;
``--update-baseline`` accepts NEW as the baseline (exit 0).
"""
from __future__ import annotations

import os
import sys

NAME = "compare"
HELP = "compare benchmark JSON (and results) of a run against a stored baseline; exit 1 on regression"


def _fraction(text: str) -> float:
    value = float(text.rstrip("%"))
    return value / 100.0 if text.endswith("%") or value > 1 else value


def add_arguments(parser) -> None:
    parser.add_argument("baseline", metavar="BASELINE", help="baseline benchmark JSON file or directory")
    parser.add_argument("new", metavar="NEW", nargs="+", help="benchmark JSON files or directories of the new run")
    parser.add_argument("--time-tolerance", type=_fraction, default=0.05, metavar="FRACTION",
                        help="fail when the mean time exceeds the baseline by more than this (default 0.05 = 5%%; "
                             "'7%%' or 0.07)")
    parser.add_argument("--busbw-ratio", type=float, default=0.9, metavar="RATIO",
                        help="fail when busbw falls below RATIO x baseline (default 0.9)")
    parser.add_argument("--memory-tolerance", type=_fraction, default=0.05, metavar="FRACTION",
                        help="fail when peak memory exceeds the baseline by more than this (default 0.05)")
    parser.add_argument("--fail-on-missing", action="store_true",
                        help="a baseline benchmark absent from the new run is a regression")
    parser.add_argument("--results", metavar="RESULTS",
                        help="merged results (reports/results.json) or results directory of the new run: its "
                             "failing tests count as regressions unless they failed in --baseline-results too")
    parser.add_argument("--baseline-results", metavar="RESULTS",
                        help="merged results of the baseline run, to tell new failures from known ones")
    parser.add_argument("--update-baseline", action="store_true",
                        help="accept NEW as the baseline (writes BASELINE) after printing the comparison")


def run(args) -> int:
    from ascend_conformance.errors import ConfigError
    from ascend_conformance.report import baseline, results

    thresholds = baseline.Thresholds(time_tolerance=args.time_tolerance, busbw_ratio=args.busbw_ratio,
                                    memory_tolerance=args.memory_tolerance, fail_on_missing=args.fail_on_missing)
    try:
        new_tests = results.load(args.results)["tests"] if args.results else None
        base_tests = results.load(args.baseline_results)["tests"] if args.baseline_results else None
        if args.update_baseline and not os.path.exists(args.baseline):
            print(f"no baseline at {args.baseline} yet")
            comparison = None
        else:
            comparison = baseline.compare_paths([args.baseline], args.new, thresholds, new_tests, base_tests)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if comparison is not None:
        print(baseline.table(comparison))
    if args.update_baseline:
        try:
            where = baseline.update_baseline(args.baseline, args.new)
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        print(f"baseline updated: {where}")
        return 0
    if comparison.exit_code:
        print(f"REGRESSION: {len(comparison.regressions)} finding(s) beyond the limits", file=sys.stderr)
    return comparison.exit_code
