"""Result records: one JSON object per finished test, written as the test finishes, merged afterwards.

Layout of a results directory (default ``reports/results``)::

    <session>-<worker>.jsonl   one line per finished test, appended and flushed by the process that ran it
                               (one file per xdist worker; ``main`` without xdist; ``controller`` for
                               tests whose worker crashed)
    <session>-environment.json the environment of that session (written when the session starts)
    <session>-collected.json   what the session set out to run: every collected test with its system
                               under test and area (written once collection is done, before any test runs)
    <session>-finished.json    the completion mark (written when the session ends, with pytest's exit status)

``reports/results.json`` is the merge of every file of the directory (:func:`merge_directory`): written
by the controlling pytest process at the end of the session, or rebuilt at any time from whatever lines
survived (``ascend-conformance report`` does that), so a killed session loses only its test in flight —
and is never mistaken for a finished one: a collected test without a record, or a session without its
completion mark, makes the merge ``incomplete`` ("7 of 10 tests have records").

A record (``SCHEMA`` 1) holds: ``nodeid``, ``area`` / ``feature`` / ``story`` (the report's grouping: the
suite's area, the op or method under test, the configuration), ``sut`` (the system under test's label:
``reference``, ``vllm 0.23.0``, ``vllm_ascend 0.23.0.post1``) and ``ops`` (``golden`` or ``torch_npu``:
what ran the torch_npu leaf ops; ``device_type`` too when the test said which one a stand-in emulated),
``outcome`` (one of ``OUTCOMES``; ``not_in_release`` is a skip naming a feature the installed release of the
system under test lacks), ``reason`` (skip reason, the first line of the failure, or the xfail
reason: a known divergence's finding and reference), ``observed`` (an xfailed test's own failure line),
``longrepr``, ``duration``, ``start`` / ``stop`` (epoch seconds), ``worker``, ``session``, ``markers``,
``params``, ``figures`` (``name``, ``value``, ``unit``), ``attachments`` (``name``, ``kind``, ``text``),
``findings`` (``subject``, ``rule``, ``kind``, ``text``), ``properties`` (pytest's ``record_property``
pairs) and ``repro``. Records written before ``sut`` existed read as ``reference``.
Every record also says what its tensors were on: ``device`` (``cpu``, ``cuda``, ``npu``, or ``emulated``
on the npu-emulated platform; absent in records written before it existed).

Verdicts (per area, per system under test and area, per system under test, overall): ``fail`` when a
test failed or errored (more tests cannot undo a failure), else ``incomplete`` when a collected test
has no record, else ``pass`` when something ran, else ``skipped``.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time
from collections.abc import Iterable, Mapping

SCHEMA = 1
OUTCOMES = ("passed", "failed", "error", "skipped", "not_in_release", "xfailed", "xpassed")
# A skip whose reason starts so is a feature the installed release of a system under test does not have
# ("not in vllm_ascend main@182b75ea84: layer_sharding (...)", raised by ascend_conformance.sut.lines): an
# outcome of its own, counted apart from skips of the host (no NPU, no compiler).
NOT_IN_RELEASE_PREFIX = "not in "


def skip_outcome(reason: str) -> str:
    """``not_in_release`` for a skip reason naming a feature a release lacks, else ``skipped``.

    >>> skip_outcome("not in vllm_ascend main@182b75ea84: layer_sharding"), skip_outcome("no NPU here")
    ('not_in_release', 'skipped')
    """
    return "not_in_release" if reason.startswith(NOT_IN_RELEASE_PREFIX) else "skipped"
FAILING = frozenset({"failed", "error"})
REFERENCE = "reference"  # the sut of a record that names none (written before the field existed)

RECORDS_SUFFIX = ".jsonl"
ENVIRONMENT_SUFFIX = "-environment.json"
COLLECTED_SUFFIX = "-collected.json"
FINISHED_SUFFIX = "-finished.json"
SESSION_FILE_SUFFIXES = (RECORDS_SUFFIX, ENVIRONMENT_SUFFIX, COLLECTED_SUFFIX, FINISHED_SUFFIX)

# Suite module -> area. Longest matching prefix of the module's file name wins; a test can override it
# with ``@pytest.mark.area("...")``. Modules not listed use their own name without ``test_``.
AREA_BY_MODULE_PREFIX = {
    "test_topology": "groups",
    "test_groups": "groups",
    "test_layout": "groups",
    "test_live_layout": "groups",
    "test_collectives": "collectives",
    "test_moe": "moe",
    "test_shared_weight": "shared_weight",
    "test_layer_shard": "shared_weight",
    "test_eplb": "eplb",
    "test_harness": "harness",
    "test_leases": "harness",
    "test_platform": "harness",
}
AREAS = ("groups", "collectives", "moe", "shared_weight", "eplb", "harness")
# The suites of systems under test are named after the area they judge: test_sut_moe -> moe.
SUT_SUITE_PREFIX = "test_sut_"

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
    """``test_moe_methods`` -> moe, ``test_sut_moe`` -> moe; benchmark scripts name their module without
    ``test_`` (``benchmarks/collectives.py`` -> collectives)."""
    if stem.startswith(SUT_SUITE_PREFIX):
        stem = "test_" + stem[len(SUT_SUITE_PREFIX):]
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


def sut_of(record: Mapping) -> str:
    return record.get("sut") or REFERENCE


def _write_json(path: str, document: Mapping, exclusive: bool = False) -> bool:
    """Write ``path`` whole or not at all (readers never see half a file). ``exclusive``: only when
    ``path`` does not exist yet; False when another process got there first."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, default=str, ensure_ascii=False)
    try:
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic and fails when the file exists: the first writer wins
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: a narrower race, the same outcome
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_collection(results_dir: str, session: str, tests: Mapping[str, tuple[str, str]]) -> bool:
    """Record what ``session`` set out to run: ``tests`` maps each collected node id to its (sut, area).

    Every xdist worker collects the same tests; the first to get here writes the file (True), the
    others find it written (False).
    """
    document = {"session": session, "collected": len(tests), "written": time.time(),
                "tests": {nodeid: [sut, area] for nodeid, (sut, area) in tests.items()}}
    return _write_json(os.path.join(results_dir, f"{session}{COLLECTED_SUFFIX}"), document, exclusive=True)


def write_finished(results_dir: str, session: str, exitstatus: int) -> None:
    """The completion mark of ``session``: it reached its end (``exitstatus`` is pytest's)."""
    _write_json(os.path.join(results_dir, f"{session}{FINISHED_SUFFIX}"),
                {"session": session, "finished": time.time(), "exitstatus": int(exitstatus)})


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


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def read_directory(results_dir: str) -> tuple[list[dict], list[dict]]:
    """(every record of every ``*.jsonl`` file, every session environment) of a results directory."""
    records: list[dict] = []
    environments: list[dict] = []
    for path in sorted(glob.glob(os.path.join(results_dir, f"*{RECORDS_SUFFIX}"))):
        records.extend(read_lines(path))
    for path in sorted(glob.glob(os.path.join(results_dir, f"*{ENVIRONMENT_SUFFIX}"))):
        environment = _read_json(path)
        if environment is not None:
            environments.append(environment)
    return records, environments


def read_sessions(results_dir: str, records: Iterable[Mapping] = (),
                  environments: Iterable[Mapping] = ()) -> dict[str, dict]:
    """Every session of a results directory (seen through its records, environment, collection or
    completion mark): ``started``, ``collected`` (count, None when never recorded), ``expected`` (node id
    -> (sut, area)), ``recorded`` (how many records it wrote), ``finished`` (epoch seconds or None) and
    ``exitstatus``."""
    sessions: dict[str, dict] = {}

    def entry(session: str) -> dict:
        return sessions.setdefault(session, {"started": None, "collected": None, "expected": None, "recorded": 0,
                                             "finished": None, "exitstatus": None})

    for record in records:
        entry(record.get("session", ""))["recorded"] += 1
    for environment in environments:
        entry(environment.get("session", ""))["started"] = environment.get("started")
    for path in glob.glob(os.path.join(results_dir, f"*{COLLECTED_SUFFIX}")):
        document = _read_json(path)
        if document is not None and isinstance(document.get("tests"), dict):
            info = entry(document.get("session") or os.path.basename(path)[:-len(COLLECTED_SUFFIX)])
            info["expected"] = {nodeid: tuple(value) for nodeid, value in document["tests"].items()}
            info["collected"] = len(info["expected"])
    for path in glob.glob(os.path.join(results_dir, f"*{FINISHED_SUFFIX}")):
        document = _read_json(path)
        if document is not None:
            info = entry(document.get("session") or os.path.basename(path)[:-len(FINISHED_SUFFIX)])
            info["finished"], info["exitstatus"] = document.get("finished"), document.get("exitstatus")
    return dict(sorted(sessions.items()))


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
    return (0 if record.get("outcome") in ("skipped", "not_in_release") else 1, float(record.get("stop") or 0.0))


# ----------------------------------------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------------------------------------

def _area_order(area: str) -> tuple:
    return (AREAS.index(area) if area in AREAS else len(AREAS), area)


def _new_counts() -> dict:
    return {o: 0 for o in OUTCOMES} | {"missing": 0, "total": 0}


def _missing(records: Iterable[Mapping], expected: Mapping[str, tuple[str, str]] | None) -> list[tuple[str, str]]:
    """(sut, area) of every expected test without a record."""
    if not expected:
        return []
    recorded = {record["nodeid"] for record in records}
    return [tuple(value) for nodeid, value in expected.items() if nodeid not in recorded]


def summarize(records: Iterable[Mapping], expected: Mapping[str, tuple[str, str]] | None = None) -> dict[str, dict]:
    """Counts per outcome and a verdict per area (see the module's docstring for the verdicts).

    ``expected`` (node id -> (sut, area), from the sessions' collections) adds the tests that have no
    record as ``missing``; ``total`` counts both.
    """
    records = list(records)
    areas: dict[str, dict] = {}
    for record in records:
        entry = areas.setdefault(record.get("area") or "other", _new_counts())
        entry[record.get("outcome", "error")] = entry.get(record.get("outcome", "error"), 0) + 1
        entry["total"] += 1
    for _, area in _missing(records, expected):
        entry = areas.setdefault(area or "other", _new_counts())
        entry["missing"] += 1
        entry["total"] += 1
    for entry in areas.values():
        entry["verdict"] = verdict_of(entry)
    return dict(sorted(areas.items(), key=lambda kv: _area_order(kv[0])))


def summarize_by_sut(records: Iterable[Mapping],
                     expected: Mapping[str, tuple[str, str]] | None = None) -> dict[str, dict]:
    """Per system under test (label): its ``verdict``, the ``ops`` and emulated ``device_types`` its
    records name, and its ``areas`` (the counts and verdict of :func:`summarize`, per area).

    >>> records = [{"nodeid": "a", "area": "moe", "outcome": "passed", "sut": "vllm_ascend 0.23.0.post1",
    ...             "ops": "golden"},
    ...            {"nodeid": "b", "area": "moe", "outcome": "failed"}]
    >>> by_sut = summarize_by_sut(records, expected={"c": ("vllm_ascend 0.23.0.post1", "eplb")})
    >>> [(sut, entry["verdict"], entry["ops"]) for sut, entry in by_sut.items()]
    [('reference', 'fail', []), ('vllm_ascend 0.23.0.post1', 'incomplete', ['golden'])]
    >>> {area: counts["verdict"] for area, counts in by_sut["vllm_ascend 0.23.0.post1"]["areas"].items()}
    {'moe': 'pass', 'eplb': 'incomplete'}
    """
    from ascend_conformance.report.sut_labels import sort_key

    records = list(records)
    grouped: dict[str, list[Mapping]] = {}
    for record in records:
        grouped.setdefault(sut_of(record), []).append(record)
    missing: dict[str, dict[str, tuple[str, str]]] = {}
    recorded = {record["nodeid"] for record in records}
    for nodeid, (sut, area) in (expected or {}).items():
        if nodeid not in recorded:
            missing.setdefault(sut or REFERENCE, {})[nodeid] = (sut, area)
            grouped.setdefault(sut or REFERENCE, [])
    out = {}
    for sut in sorted(grouped, key=sort_key):
        areas = summarize(grouped[sut], missing.get(sut))
        out[sut] = {"verdict": combine(entry["verdict"] for entry in areas.values()),
                    "ops": sorted({r["ops"] for r in grouped[sut] if r.get("ops")}),
                    "device_types": sorted({r["device_type"] for r in grouped[sut] if r.get("device_type")}),
                    "areas": areas}
    return out


def verdict_of(counts: Mapping[str, int]) -> str:
    if counts.get("failed", 0) or counts.get("error", 0):
        return "fail"
    if counts.get("missing", 0):
        return "incomplete"
    if counts.get("passed", 0) or counts.get("xfailed", 0) or counts.get("xpassed", 0):
        return "pass"
    return "skipped" if counts.get("skipped", 0) or counts.get("not_in_release", 0) else "no tests"


def combine(verdicts: Iterable[str], complete: bool = True) -> str:
    """One verdict from many: fail, else incomplete, else pass, else skipped (``no results`` from none)."""
    verdicts = set(verdicts)
    if "fail" in verdicts:
        return "fail"
    if "incomplete" in verdicts or not complete:
        return "incomplete"
    if not verdicts:
        return "no results"
    return "pass" if "pass" in verdicts else "skipped"


def overall_verdict(summary: Mapping[str, Mapping], complete: bool = True) -> str:
    return combine((entry["verdict"] for entry in summary.values()), complete)


def completeness(records: Iterable[Mapping], sessions: Mapping[str, Mapping]) -> dict:
    """Whether every test the sessions collected has a record, and every session reached its end.

    A session without its completion mark (killed, or still running) leaves the merge incomplete unless
    each test it collected has a record (its own or a later session's); one killed before its collection
    was recorded leaves it incomplete. ``text`` says it in one line: "2 of 3 tests have records".
    """
    recorded = {record["nodeid"] for record in records}
    expected: set[str] = set()
    for info in sessions.values():
        expected.update(info.get("expected") or ())
    missing = sorted(expected - recorded)
    unfinished = [s for s, info in sessions.items() if not info.get("finished")]
    uncollected = [s for s in unfinished if sessions[s].get("expected") is None]
    complete = not missing and not uncollected
    total = len(expected | recorded)
    parts = []
    if not complete:
        parts.append(f"{len(recorded)} of {'at least ' if uncollected else ''}{total} tests have records")
    if unfinished and not complete:
        parts.append(f"session {unfinished[0]} has no completion mark: killed or still running" if len(unfinished) == 1
                     else f"{len(unfinished)} sessions have no completion mark: killed or still running")
    return {"complete": complete, "recorded": len(recorded), "collected": total, "missing_count": len(missing),
            "missing": missing[:50], "unfinished_sessions": unfinished, "text": "; ".join(parts)}


def document_of(records: Iterable[Mapping], sessions: Mapping[str, Mapping],
                environments: list[Mapping] = (), results_dir: str | None = None) -> dict:
    """The merged document (what ``results.json`` holds) of these records and sessions."""
    merged = merge(records)
    expected: dict[str, tuple[str, str]] = {}
    for info in sessions.values():
        expected.update(info.get("expected") or {})
    summary = summarize(merged, expected)
    whole = completeness(merged, sessions)
    counts: dict[str, int] = {}
    for record in merged:
        counts[record.get("session", "")] = counts.get(record.get("session", ""), 0) + 1
    document = {
        "schema": SCHEMA,
        "results_dir": os.path.abspath(results_dir) if results_dir else None,
        "sessions": [{"session": s, "started": info.get("started"), "tests": counts.get(s, 0),
                      "recorded": info.get("recorded", 0), "collected": info.get("collected"),
                      "finished": info.get("finished"), "exitstatus": info.get("exitstatus")}
                     for s, info in sessions.items()],
        "environment": dict(environments[-1]) if environments else {},
        "summary": summary,
        "by_sut": summarize_by_sut(merged, expected),
        "completeness": whole,
        "verdict": overall_verdict(summary, whole["complete"]),
        "tests": merged,
    }
    return document


def merge_directory(results_dir: str, out_path: str | None = None) -> dict:
    """Merge a results directory into one document; write it to ``out_path`` when given.

    ``sessions`` lists every session that wrote records, with how many of the merged records are its
    own (``tests``: a session whose tests were all rerun later contributes none), how many it wrote, how
    many it collected and when it finished (None: no completion mark).
    """
    records, environments = read_directory(results_dir)
    document = document_of(records, read_sessions(results_dir, records, environments), environments, results_dir)
    if out_path:
        _write_json(out_path, document)
    return document


def verdict_line(document: Mapping) -> str:
    """One line: the verdict, why it is incomplete, and the verdict per system under test.

    >>> verdict_line({"verdict": "incomplete", "completeness": {"complete": False, "text": "2 of 3 tests have records"},
    ...               "by_sut": {"reference": {"verdict": "incomplete"}, "vllm 0.23.0": {"verdict": "pass"}}})
    'verdict incomplete (2 of 3 tests have records) [by SUT: reference incomplete, vllm 0.23.0 pass]'
    """
    verdict = document.get("verdict") or overall_verdict(summarize(document.get("tests") or []))
    line = f"verdict {verdict}"
    whole = document.get("completeness") or {}
    if whole.get("text"):
        line += f" ({whole['text']})"
    by_sut = document.get("by_sut") or {}
    if by_sut:
        line += " [by SUT: " + ", ".join(f"{sut} {entry['verdict']}" for sut, entry in by_sut.items()) + "]"
    return line


def load(path: str) -> dict:
    """A merged results document (``results.json``), or the merge of a results directory."""
    if os.path.isdir(path):
        return merge_directory(path)
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or "tests" not in document:
        raise ValueError(f"{path} is not a merged results file (no 'tests' list)")
    return document
