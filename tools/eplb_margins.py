"""Measure the margins of suites/test_sut_eplb.py on the installed release pair (docs/systems_under_test.md, EPLB).

Runs the suite's own policy cases in this process (no world: the policies are pure CPU code) and prints, as
one JSON object, what each margin of the suite is derived from:

* ``tie_gap``: vLLM's ``DefaultEplbPolicy`` on the tied cases of ``test_vllm_default_policy``: per layer,
  vLLM's balancedness minus the reference's; the lowest of all, and how many layers were compared
  (``TIE_MARGIN`` must cover the lowest);
* per vllm-ascend policy, over the layers whose table the release can apply: ``floor_gap``, the policy's
  balancedness minus the given placement's (``FLOOR_MARGIN``), and for default / flashlb ``bound_gap``,
  minus the reference greedy's under the release's rule (``POLICY_MARGIN``); each as counts and the
  cases by their lowest layer, lowest first. The cases whose table the release cannot apply are listed
  apart (they are judged on that, not on balancedness).

Usage, from the checkout, with the pair's interpreter:
    .venv-sut/0.18.0-0.18.0/bin/python tools/eplb_margins.py [--vllm-only | --ascend-only] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite():
    sys.path.insert(0, os.path.join(ROOT, "suites"))
    import test_sut_eplb

    return test_sut_eplb


def vllm_tie_gaps(suite) -> dict:
    from ascend_conformance.eplb import balancedness, rebalance_experts
    from ascend_conformance.eplb.placement import why_not_unique
    from ascend_conformance.sut import vllm_eplb

    gaps = []
    for case_key in suite.VLLM_CASES:
        case = suite._vllm_case(*case_key)
        sizes = [case[k] for k in ("num_replicas", "num_groups", "num_nodes", "num_ranks")]
        if why_not_unique(case["weight"], *sizes) is None:
            continue
        got = vllm_eplb.run_cases([case])[0]
        reference = rebalance_experts(case["weight"], *sizes)
        ours = balancedness(case["weight"], reference[0], reference[2], case["num_ranks"])
        theirs = balancedness(case["weight"], got["phy2log"], got["logcnt"], case["num_ranks"])
        gaps += [(float(t - o), "-".join(map(str, case_key)), layer)
                 for layer, (t, o) in enumerate(zip(theirs.tolist(), ours.tolist()))]
    low = min(gaps)
    return {"release": vllm_eplb.label(), "tied_layers": len(gaps), "lowest": low[0], "lowest_at": low[1:],
            "below_zero": sum(g < 0 for g, _, _ in gaps), "cases_lowest_first": _worst_per_case(gaps)[:8]}


def _worst_per_case(values: list) -> list:
    """``[[case, its lowest gap, at layer], ...]``, lowest first."""
    worst: dict = {}
    for gap, name, layer in values:
        if name not in worst or gap < worst[name][0]:
            worst[name] = (gap, layer)
    return sorted(([name, round(gap, 6), layer] for name, (gap, layer) in worst.items()), key=lambda row: row[1])


def _summary(values: list) -> dict:
    per_case = _worst_per_case(values)
    below = [g for g, _, _ in values if g < 0]
    return {"layers": len(values), "below_zero": len(below), "nearest_below_zero": max(below, default=None),
            "cases_lowest_first": per_case[:16]}


def ascend_gaps(suite) -> dict:
    from ascend_conformance.sut import vllm_ascend_eplb

    floor: dict[str, list] = {}
    bound: dict[str, list] = {}
    invalid: dict[str, list] = {}
    for policy, kind, setup in suite.ASCEND_CASES:
        case = suite._ascend_case(policy, kind, setup)
        result = vllm_ascend_eplb.run_cases([case])[0]
        name = f"{policy}-{kind}-{setup}"
        if "raised" in result:
            invalid.setdefault(policy, []).append(f"{name}: {result['raised']}")
            continue
        old, new = result["initial"], result["table"]
        if suite.table_violations(old, new, case["weight"].shape[1]):
            invalid.setdefault(policy, []).append(name)
            continue
        before = suite.table_balancedness(case["weight"], old)
        after = suite.table_balancedness(case["weight"], new)
        floor.setdefault(policy, []).extend((float(a - b), name, layer)
                                            for layer, (a, b) in enumerate(zip(after.tolist(), before.tolist())))
        if policy in ("default", "flashlb"):
            reference = suite.one_replica_per_rank_balancedness(case["weight"], old.shape[1] * old.shape[2],
                                                                case["num_ranks"])
            bound.setdefault(policy, []).extend((float(a - r), name, layer)
                                                for layer, (a, r) in enumerate(zip(after.tolist(), reference.tolist())))
    out = {"release": vllm_ascend_eplb.label(), "policies": {}}
    for policy in sorted(set(floor) | set(invalid)):
        entry = {"cases_with_a_table_the_release_cannot_apply": invalid.get(policy, [])}
        if policy in floor:
            entry["floor_gap"] = _summary(floor[policy])
        if policy in bound:
            entry["bound_gap"] = _summary(bound[policy])
        out["policies"][policy] = entry
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-only", action="store_true")
    parser.add_argument("--ascend-only", action="store_true")
    parser.add_argument("--out", help="write the JSON here (vLLM logs to stdout too)")
    args = parser.parse_args(argv)
    suite = _suite()
    result = {}
    if not args.ascend_only:
        result["vllm"] = vllm_tie_gaps(suite)
    if not args.vllm_only:
        result["vllm_ascend"] = ascend_gaps(suite)
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
