"""Result records: one JSON object per finished test, written as the test finishes, merged afterwards.

Layout of a results directory (default ``reports/results``)::

    <session>-<worker>.jsonl   one line per finished test, appended and flushed by the process that ran it
                               (one file per xdist worker; ``main`` without xdist; ``controller`` for
                               tests whose worker crashed)
    <session>-environment.json the environment of that session (written when the session starts)

``reports/results.json`` is the merge of every file of the directory (:func:`merge_directory`): written
by the controlling pytest process at the end of the session, or rebuilt at any time from whatever lines
survived (``ascend-conformance report`` does that), so a killed session loses only its test in flight.

A record (``SCHEMA`` 1) holds: ``nodeid``, ``area`` / ``feature`` / ``story`` (the report's grouping: the
suite's area, the op or method under test, the configuration), ``outcome`` (one of ``OUTCOMES``),
``reason`` (skip reason or the first line of the failure), ``longrepr``, ``duration``, ``start`` /
``stop`` (epoch seconds), ``worker``, ``session``, ``markers``, ``params``, ``figures`` (``name``,
``value``, ``unit``), ``attachments`` (``name``, ``kind``, ``text``), ``findings`` (``subject``,
``rule``, ``kind``, ``text``), ``properties`` (pytest's ``record_property`` pairs) and ``repro``.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Iterable, Mapping

SCHEMA = 1
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
FAILING = frozenset({"failed", "error"})

# Suite module -> area. Longest matching prefix of the module's file name wins; a test can override it
# with ``@pytest.mark.area("...")``. Modules not listed use their own name without ``test_``.
AREA_BY_MODULE_PREFIX = {
    "test_topology": "groups",
    "test_groups": "groups",
    "test_layout": "groups",
    "test_collectives": "collectives",
    "test_moe": "moe",
    "test_shared_weight": "shared_weight",
    "test_eplb": "eplb",
    "test_harness": "harness",
    "test_leases": "harness",
    "test_platform": "harness",
}
AREAS = ("groups", "collectives", "moe", "shared_weight", "eplb", "harness")

# Parameter names whose value names the op or method under test (the report's "feature").
FEATURE_PARAMS = ("op", "collective", "method", "comm_method", "feature", "kind")


@dataclasses.dataclass(frozen=True)
class Labels:
    area: str
    feature: str
    story: str


_NODEID = re.compile(r"^(?P<path>[^:]+)(?:::(?P<rest>.*))?$")


def split_nodeid(nodeid: str) -> tuple[str, str, str]:
    """``path::Class::name[param-id]`` -> (module stem, function name, param id or '')."""
    match = _NODEID.match(nodeid)
    path, rest = (match.group("path"), match.group("rest") or "") if match else (nodeid, "")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = rest.split("::")[-1] if rest else stem
    param = ""
    if name.endswith("]") and "[" in name:
        name, param = name[:name.index("[")], name[name.index("[") + 1:-1]
    return stem, name, param


def area_of_module(stem: str) -> str:
    """``test_moe_methods`` -> moe; benchmark scripts name their module without ``test_``
    (``benchmarks/collectives.py`` -> collectives)."""
    best = ""
    candidates = (stem,) if stem.startswith("test_") else (stem, f"test_{stem}")
    for candidate in candidates:
        for prefix in AREA_BY_MODULE_PREFIX:
            if candidate.startswith(prefix) and len(prefix) > len(best):
                best = prefix
    if best:
        return AREA_BY_MODULE_PREFIX[best]
    return stem[len("test_"):] if stem.startswith("test_") else stem


def derive_labels(nodeid: str, area: str | None = None, feature: str | None = None,
                  params: Mapping[str, object] | None = None) -> Labels:
    """The report grouping of a test from its node id, its ``area`` / ``feature`` markers and params."""
    stem, name, param_id = split_nodeid(nodeid)
    if not feature:
        for key in FEATURE_PARAMS:
            if params and key in params:
                feature = str(params[key])
                break
    if not feature:
        feature = name[len("test_"):] if name.startswith("test_") else name
    return Labels(area=area or area_of_module(stem), feature=feature, story=param_id or "default")


# ----------------------------------------------------------------------------------------------------
# Writing and reading
# ----------------------------------------------------------------------------------------------------

class RecordWriter:
    """Appends one record per line to ``path``; every line is flushed before ``write`` returns."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: Mapping) -> None:
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        self._handle.write(line)  # one write per record: a kill leaves at most one torn last line
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_lines(path: str) -> list[dict]:
    """The records of one JSON-lines file; a torn last line (the process died mid-write) is dropped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "nodeid" in record:
                records.append(record)
    return records


def read_directory(results_dir: str) -> tuple[list[dict], list[dict]]:
    """(every record of every ``*.jsonl`` file, every session environment) of a results directory."""
    records: list[dict] = []
    environments: list[dict] = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.jsonl"))):
        records.extend(read_lines(path))
    for path in sorted(glob.glob(os.path.join(results_dir, "*-environment.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                environments.append(json.load(handle))
        except (OSError, json.JSONDecodeError):
            continue
    return records, environments


def merge(records: Iterable[Mapping]) -> list[dict]:
    """One record per node id.

    Sessions may share a directory (the conformance run, then the benchmark run that runs only the tests
    the first one skipped): a test that ran beats a record that only says it was skipped; otherwise the
    record that finished last wins. Sorted by area, then node id.
    """
    chosen: dict[str, dict] = {}
    for record in records:
        record = dict(record)
        current = chosen.get(record["nodeid"])
        if current is None or _rank(record) >= _rank(current):
            chosen[record["nodeid"]] = record
    return sorted(chosen.values(), key=lambda r: (r.get("area", ""), r["nodeid"]))


def _rank(record: Mapping) -> tuple[int, float]:
    return (0 if record.get("outcome") == "skipped" else 1, float(record.get("stop") or 0.0))


def summarize(records: Iterable[Mapping]) -> dict[str, dict]:
    """Counts per outcome and a verdict per area: ``fail`` when any test failed or errored, ``pass`` when
    at least one passed and none failed, ``skipped`` when nothing ran."""
    areas: dict[str, dict] = {}
    for record in records:
        entry = areas.setdefault(record.get("area") or "other", {o: 0 for o in OUTCOMES} | {"total": 0})
        entry[record.get("outcome", "error")] = entry.get(record.get("outcome", "error"), 0) + 1
        entry["total"] += 1
    for entry in areas.values():
        entry["verdict"] = verdict_of(entry)
    return dict(sorted(areas.items(), key=lambda kv: (AREAS.index(kv[0]) if kv[0] in AREAS else len(AREAS), kv[0])))


def verdict_of(counts: Mapping[str, int]) -> str:
    if counts.get("failed", 0) or counts.get("error", 0):
        return "fail"
    if counts.get("passed", 0) or counts.get("xfailed", 0) or counts.get("xpassed", 0):
        return "pass"
    return "skipped" if counts.get("skipped", 0) else "no tests"


def overall_verdict(summary: Mapping[str, Mapping]) -> str:
    verdicts = {entry["verdict"] for entry in summary.values()}
    if not verdicts:
        return "no results"
    if "fail" in verdicts:
        return "fail"
    return "pass" if "pass" in verdicts else "skipped"


def merge_directory(results_dir: str, out_path: str | None = None) -> dict:
    """Merge a results directory into one document; write it to ``out_path`` when given.

    ``sessions`` lists every session that wrote records, with how many of the merged records are its
    own (a session whose tests were all rerun later contributes none).
    """
    records, environments = read_directory(results_dir)
    merged = merge(records)
    summary = summarize(merged)
    started = {e.get("session"): e.get("started") for e in environments}
    counts: dict[str, int] = {}
    for record in merged:
        counts[record.get("session", "")] = counts.get(record.get("session", ""), 0) + 1
    document = {
        "schema": SCHEMA,
        "results_dir": os.path.abspath(results_dir),
        "sessions": [{"session": s, "started": started.get(s), "tests": counts.get(s, 0)}
                     for s in sorted({r.get("session", "") for r in records})],
        "environment": environments[-1] if environments else {},
        "summary": summary,
        "verdict": overall_verdict(summary),
        "tests": merged,
    }
    if out_path:
        tmp = f"{out_path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, default=str, ensure_ascii=False)
        os.replace(tmp, out_path)  # readers never see half a file
    return document


def load(path: str) -> dict:
    """A merged results document (``results.json``), or the merge of a results directory."""
    if os.path.isdir(path):
        return merge_directory(path)
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or "tests" not in document:
        raise ValueError(f"{path} is not a merged results file (no 'tests' list)")
    return document
