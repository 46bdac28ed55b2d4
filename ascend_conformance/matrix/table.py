"""The cross-release table: tests × releases, one verdict per cell, and what changed between releases.

Input: one merged results document (``results.json``, :mod:`ascend_conformance.report.results`) per release,
in release order. A record becomes one of the :data:`CELLS`:

=====================  ================================================================================
pass                   the test passed
expected divergence    xfailed on an expectation of the release (a known finding, still there)
expected crash         xfailed on a crash expectation (a known crash of the release, still there)
new divergence         failed with a Divergence no expectation names: a finding to report (unexpected)
crash                  failed or errored with anything else: the release or the suite crashed (unexpected)
fixed                  an expectation's test passed (XPASS): the finding is gone (unexpected: delete it)
not in release         the release lacks the feature (``not in <release>: ...``)
skipped                skipped for a reason of the host (no NPU, no compiler: the reason is kept)
no result              collected for no release that ran it, or its release's run died (unexpected)
=====================  ================================================================================

Between adjacent releases (in the order given) the changes are: findings fixed (a divergence or crash
becomes a pass), findings introduced (a pass becomes a divergence or crash), tests newly applicable (not in
the earlier release, judged in the later one) and no longer applicable (the reverse).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ascend_conformance.report import results as results_mod

CELLS = ("pass", "expected divergence", "expected crash", "new divergence", "crash", "fixed", "not in release",
         "skipped", "no result")
UNEXPECTED = frozenset({"new divergence", "crash", "fixed", "no result"})
FINDINGS = frozenset({"expected divergence", "expected crash", "new divergence", "crash"})
DIVERGENCE_TYPE = "Divergence"
XPASS_MARK = "[XPASS(strict)]"


@dataclasses.dataclass(frozen=True)
class Cell:
    kind: str  # one of CELLS
    text: str = ""  # the reason: finding, failure line, skip reason

    def to_dict(self) -> dict:
        return {"kind": self.kind, "text": self.text}


def exception_type(record: Mapping) -> str:
    """The failing exception's type name: the record's ``exception`` field, else the ``module.Type:`` that
    pytest puts first on the failure line.

    >>> exception_type({"reason": "ascend_conformance.errors.Divergence: vllm_ascend 0.18.0 ..."})
    'Divergence'
    >>> exception_type({"reason": "AttributeError: 'NoneType' object has no attribute 'x'"})
    'AttributeError'
    """
    if record.get("exception"):
        return str(record["exception"]).rsplit(".", 1)[-1]
    head = (record.get("reason") or "").split(":", 1)[0].strip()
    return head.rsplit(".", 1)[-1] if head and " " not in head else ""


def cell_of(record: Mapping | None) -> Cell:
    if record is None:
        return Cell("no result")
    outcome, reason = record.get("outcome"), (record.get("reason") or "").splitlines()[0:1]
    reason = reason[0] if reason else ""
    if outcome == "passed":
        return Cell("pass")
    if outcome == "xfailed":
        kind = "expected crash" if record.get("expectation_kind") == "crash" else "expected divergence"
        return Cell(kind, reason)
    if outcome == "xpassed" or (outcome == "failed" and XPASS_MARK in (record.get("longrepr") or reason)):
        return Cell("fixed", reason)
    if outcome in ("failed", "error"):
        if outcome == "failed" and exception_type(record) == DIVERGENCE_TYPE:
            return Cell("new divergence", reason)
        return Cell("crash", reason)
    if outcome == "not_in_release":
        return Cell("not in release", reason)
    if outcome == "skipped":
        return Cell("skipped", reason)
    return Cell("no result", f"unknown outcome {outcome!r}")


@dataclasses.dataclass
class Column:
    """One release's run: its label (``vllm_ascend 0.18.0 + vllm 0.18.0``), minutes, and its records."""

    name: str  # the release as asked for: 0.18.0, main
    label: str
    minutes: float | None
    records: dict[str, dict]  # nodeid -> record
    run_error: str | None = None  # the run itself failed to produce results


def build(columns: Sequence[Column]) -> dict:
    """The matrix document: columns, rows grouped by area, changes between adjacent columns, counts."""
    nodeids = sorted({n for column in columns for n in column.records})
    areas: dict[str, list[dict]] = {}
    counts = [{kind: 0 for kind in CELLS} for _ in columns]
    for nodeid in nodeids:
        cells = [cell_of(column.records.get(nodeid)) for column in columns]
        for index, cell in enumerate(cells):
            counts[index][cell.kind] += 1
        any_record = next(column.records[nodeid] for column in columns if nodeid in column.records)
        area = any_record.get("area") or results_mod.derive_labels(nodeid).area
        areas.setdefault(area, []).append({"nodeid": nodeid, "cells": [cell.to_dict() for cell in cells]})
    order = list(results_mod.AREAS)
    rows = [{"area": area, "tests": areas[area]}
            for area in sorted(areas, key=lambda a: (order.index(a) if a in order else len(order), a))]
    changes = [_changes(columns[i], columns[i + 1], rows, i) for i in range(len(columns) - 1)]
    unexpected = sum(counts[i][kind] for i in range(len(columns)) for kind in UNEXPECTED)
    unexpected += sum(1 for column in columns if column.run_error)
    return {"columns": [{"name": c.name, "label": c.label, "minutes": c.minutes, "run_error": c.run_error,
                         "counts": counts[i]} for i, c in enumerate(columns)],
            "rows": rows, "changes": changes, "unexpected": unexpected, "cells": list(CELLS)}


def _changes(before: Column, after: Column, rows: list[dict], index: int) -> dict:
    fixed, introduced, applicable, gone = [], [], [], []
    for area in rows:
        for test in area["tests"]:
            old, new = test["cells"][index]["kind"], test["cells"][index + 1]["kind"]
            if old in FINDINGS and new == "pass":
                fixed.append({"nodeid": test["nodeid"], "was": test["cells"][index]["text"]})
            elif old == "pass" and new in FINDINGS:
                introduced.append({"nodeid": test["nodeid"], "now": test["cells"][index + 1]["text"]})
            if old == "not in release" and new not in ("not in release", "no result"):
                applicable.append({"nodeid": test["nodeid"], "now": new})
            elif new == "not in release" and old not in ("not in release", "no result"):
                gone.append({"nodeid": test["nodeid"], "reason": test["cells"][index + 1]["text"]})
    return {"from": before.name, "to": after.name, "findings_fixed": fixed, "findings_introduced": introduced,
            "newly_applicable": applicable, "no_longer_applicable": gone}


__all__ = ["CELLS", "UNEXPECTED", "Cell", "Column", "cell_of", "build", "exception_type"]
