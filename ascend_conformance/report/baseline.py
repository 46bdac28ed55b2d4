"""Baseline comparison: benchmark JSON of a new run against a stored baseline, plus new test failures.

Benchmarks are matched on ``BenchRow.key`` = (platform, device model, world size, op, size, dtype,
variant); benchmarks of one run that still share a key are told apart by their name (with a warning:
the writer should set ``variant``). Per matched benchmark:

- time: regression when the new mean exceeds the baseline mean by more than ``time_tolerance``
  (default 5 %); "faster" when it is below by more than the same margin;
- busbw: regression when the new bus bandwidth is below ``busbw_ratio`` × baseline (default 0.9);
- memory: regression when the new peak exceeds the baseline by more than ``memory_tolerance`` (5 %).

Benchmarks only in the baseline are "missing" (a regression with ``fail_on_missing``), only in the new
run "new" (no baseline yet). With result records, tests that fail in the new run but did not fail in
the baseline records (or every failing test, when no baseline records are given) are "new failure".
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Mapping

from ascend_conformance.report import benchmark_json
from ascend_conformance.report.benchmarks import BenchRow, find_files, load_all
from ascend_conformance.report.results import FAILING


@dataclasses.dataclass(frozen=True)
class Thresholds:
    time_tolerance: float = 0.05
    busbw_ratio: float = 0.9
    memory_tolerance: float = 0.05
    fail_on_missing: bool = False


@dataclasses.dataclass
class Finding:
    key: tuple
    status: str  # ok | faster | regression | missing | new | new failure
    reasons: list[str]
    base: BenchRow | None = None
    new: BenchRow | None = None
    nodeid: str = ""

    @property
    def is_regression(self) -> bool:
        return self.status in ("regression", "new failure") or (self.status == "missing" and "fail" in self.reasons)


@dataclasses.dataclass
class Comparison:
    findings: list[Finding]
    duplicates: list[tuple]
    thresholds: Thresholds

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.is_regression]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def _index(rows: Iterable[BenchRow]) -> tuple[dict, list]:
    grouped: dict[tuple, list[BenchRow]] = {}
    for row in rows:
        grouped.setdefault(row.key, []).append(row)
    indexed: dict[tuple, BenchRow] = {}
    duplicates = []
    for key, same in grouped.items():
        if len(same) == 1:
            indexed[key] = same[0]
            continue
        duplicates.append((key, [r.name for r in same]))
        for row in same:
            indexed[key + (row.name,)] = row
    return indexed, duplicates


def compare_rows(baseline: Iterable[BenchRow], new: Iterable[BenchRow], thresholds: Thresholds = Thresholds()
                 ) -> Comparison:
    base_index, base_dups = _index(baseline)
    new_index, new_dups = _index(new)
    duplicates = base_dups + [d for d in new_dups if d not in base_dups]
    findings = []
    for key in sorted(set(base_index) | set(new_index), key=lambda k: tuple("" if v is None else str(v) for v in k)):
        base, cur = base_index.get(key), new_index.get(key)
        if cur is None:
            findings.append(Finding(key, "missing", ["fail"] if thresholds.fail_on_missing else [], base, None))
            continue
        if base is None:
            findings.append(Finding(key, "new", [], None, cur))
            continue
        reasons, faster = [], False
        if base.mean and cur.mean is not None:
            change = cur.mean / base.mean - 1.0
            if change > thresholds.time_tolerance:
                reasons.append(f"time +{change * 100:.1f}% > +{thresholds.time_tolerance * 100:g}%")
            elif change < -thresholds.time_tolerance:
                faster = True
        if base.busbw and cur.busbw is not None and cur.busbw < thresholds.busbw_ratio * base.busbw:
            reasons.append(f"busbw {cur.busbw / base.busbw:.2f}x < {thresholds.busbw_ratio:g}x")
        if base.memory and cur.memory is not None and cur.memory > base.memory * (1 + thresholds.memory_tolerance):
            reasons.append(f"memory +{(cur.memory / base.memory - 1) * 100:.1f}% > "
                           f"+{thresholds.memory_tolerance * 100:g}%")
        status = "regression" if reasons else ("faster" if faster else "ok")
        findings.append(Finding(key, status, reasons, base, cur))
    return Comparison(findings, duplicates, thresholds)


def new_failures(new_tests: Iterable[Mapping], baseline_tests: Iterable[Mapping] | None) -> list[Finding]:
    failed_before = None if baseline_tests is None else {
        t["nodeid"] for t in baseline_tests if t.get("outcome") in FAILING}
    findings = []
    for test in new_tests:
        if test.get("outcome") in FAILING and (failed_before is None or test["nodeid"] not in failed_before):
            findings.append(Finding((test["nodeid"],), "new failure", [test.get("reason") or test["outcome"]],
                                    nodeid=test["nodeid"]))
    return findings


def compare_paths(baseline: list[str], new: list[str], thresholds: Thresholds = Thresholds(),
                  new_results: list[Mapping] | None = None, baseline_results: list[Mapping] | None = None
                  ) -> Comparison:
    for label, paths in (("baseline", baseline), ("new", new)):
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"{label} {missing[0]} does not exist")
        if not find_files(paths):
            raise ValueError(f"{label} {', '.join(paths)}: no benchmark JSON (pytest-benchmark schema) found")
    comparison = compare_rows(load_all(baseline), load_all(new), thresholds)
    if new_results is not None:
        comparison.findings.extend(new_failures(new_results, baseline_results))
    return comparison


# ----------------------------------------------------------------------------------------------------
# Presentation
# ----------------------------------------------------------------------------------------------------

def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value} B"


def human_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value / 1e-9:.4g} ns"


def _pair(base, new, fmt) -> str:
    if base is None and new is None:
        return "-"
    return f"{fmt(base)} -> {fmt(new)}"


def table(comparison: Comparison) -> str:
    header = ("status", "platform", "device", "world", "op", "variant", "size", "dtype", "time base -> new", "change",
              "busbw GB/s", "memory", "why")
    lines = []
    for f in comparison.findings:
        if f.status == "new failure":
            lines.append(("NEW FAILURE", "", "", "", f.nodeid, "", "", "", "", "", "", "", "; ".join(f.reasons)[:120]))
            continue
        row = f.new or f.base
        change = ""
        if f.base and f.new and f.base.mean and f.new.mean is not None:
            change = f"{(f.new.mean / f.base.mean - 1) * 100:+.1f}%"
        lines.append((
            f.status.upper() if f.is_regression else f.status,
            row.platform, row.device_model, "-" if row.world_size is None else str(row.world_size), row.op,
            row.variant or "-", human_bytes(row.size), row.dtype or "-",
            _pair(f.base.mean if f.base else None, f.new.mean if f.new else None, human_seconds), change or "-",
            _pair(f.base.busbw if f.base else None, f.new.busbw if f.new else None,
                  lambda v: "-" if v is None else f"{v:.3g}"),
            _pair(f.base.memory if f.base else None, f.new.memory if f.new else None, human_bytes),
            "; ".join(r for r in f.reasons if r != "fail") or ("no new result" if f.status == "missing" else "")))
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)] if lines else [len(h) for h in header]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
    counts: dict[str, int] = {}
    for f in comparison.findings:
        counts[f.status] = counts.get(f.status, 0) + 1
    t = comparison.thresholds
    out.append("")
    out.append(f"{len(comparison.regressions)} regression(s); " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
               + f"  (limits: time +{t.time_tolerance * 100:g}%, busbw {t.busbw_ratio:g}x, "
                 f"memory +{t.memory_tolerance * 100:g}%)")
    for key, names in comparison.duplicates:
        out.append(f"warning: {len(names)} benchmarks share the key {key} and were matched by name "
                   f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); set extra_info['variant']")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# Accepting a new baseline
# ----------------------------------------------------------------------------------------------------

def combined_document(paths: list[str]) -> dict:
    """One pytest-benchmark-schema document holding every benchmark of the files under `paths`."""
    files = find_files(paths)
    documents = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            documents.append(json.load(handle))
    first = documents[0]
    combined = benchmark_json.document([bench for doc in documents for bench in doc["benchmarks"]],
                                       machine_info=first.get("machine_info") or {},
                                       commit=first.get("commit_info") or {})
    for key in ("datetime", "version"):  # when the new run was measured, not when it was accepted
        if first.get(key):
            combined[key] = first[key]
    return combined


def update_baseline(baseline: str, new: list[str]) -> str:
    """Accept `new` as the baseline: a directory baseline receives copies of the new files (its old
    benchmark files removed); a file baseline becomes one document with every new benchmark."""
    files = find_files(new)
    if not files:
        raise ValueError(f"{', '.join(new)}: no benchmark JSON to accept as the baseline")
    if os.path.isdir(baseline):
        for old in find_files([baseline]):
            os.remove(old)
        for path in files:
            shutil.copy2(path, os.path.join(baseline, os.path.basename(path)))
        return f"{baseline}/ ({len(files)} files)"
    document = combined_document(files)
    benchmark_json.write(baseline, document)
    return f"{baseline} ({len(document['benchmarks'])} benchmarks)"
