"""The report layer end to end: records written as tests finish, merged across xdist workers, JUnit XML,
allure-results with derived labels and environment.properties, every result naming its system under test
and ops, a killed session keeping its finished tests and reading incomplete, torchrun ranks other than 0
writing nothing; plus the pure parts (labels, merge, completeness, progress)."""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from ascend_conformance.cli import main
from ascend_conformance.errors import ConfigError
from ascend_conformance.report import environment, results, sut_labels
from ascend_conformance.report.progress import Progress
from ascend_conformance.sut import stack

pytest_plugins = ["pytester"]

SUITE = '''
import os, signal
import pytest
import torch
import torch.distributed as dist
from ascend_conformance.tolerance import Kind, assert_close
from ascend_conformance.harness import rank_context


def rank_sum():
    t = torch.ones(1) * (rank_context().rank + 1)
    dist.all_reduce(t)
    return float(t)


def rank_one_raises():
    if rank_context().rank == 1:
        raise ValueError("deliberate failure on rank 1")
    dist.barrier()


@pytest.mark.parametrize("method", ["allgather", "alltoall"])
def test_dispatch(method, report):
    report.figure("latency", 1.25, "ms", method=method)
    report.attach("per-rank table", "rank time\\n0 1.2\\n1 1.3")


@pytest.mark.feature("finalize_routing")
def test_numeric_mismatch():
    assert_close(torch.ones(4), torch.tensor([1.0, 2.0, 1.0, 1.0]), kind=Kind.EXACT, what="combine output")


def test_skipped():
    pytest.skip("needs torch_npu")


def test_two_ranks(world, report):
    assert world(2).run(rank_sum) == [3.0, 3.0]
    report.findings("reference DP1 TP2", [])


def test_two_ranks_one_fails(world):
    world(2).run(rank_one_raises)


@pytest.mark.area("eplb")
def test_properties(record_property):
    record_property("balancedness", 0.97)


@pytest.mark.sut("vllm_ascend")
def test_sut_marked(report):
    report.sut(device_type="A3")


@pytest.mark.sut("vllm")
def test_worker_dies():
    os.kill(os.getpid(), signal.SIGKILL)
'''


def _line_matches(run, pattern: str) -> None:
    """A line of the run's stdout matches ``pattern``, where only ``*`` is special."""
    run.stdout.re_match_lines([".*".join(re.escape(part) for part in pattern.split("*")) + "$"])


def _records_in(results_dir) -> list[dict]:
    found = []
    for path in glob.glob(os.path.join(str(results_dir), "*.jsonl")):
        found.extend(results.read_lines(path))
    return found


def test_xdist_session_writes_merged_records_junit_and_allure(pytester):
    pytester.makepyfile(test_moe_fake=SUITE)
    # Own lease directory: CPU slots are virtual, and the sessions around this one (make test's workers)
    # must not make its two-rank tests wait for devices. No wall-clock bound: the inner session ends when its
    # tests do (48 s on a quiet box, 225 s at load average 30); its own rank timeouts bound a hang.
    run = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--junitxml=junit.xml",
                                        "--alluredir=allure", f"--lease-dir={pytester.path / 'leases'}")
    run.assert_outcomes(passed=5, failed=3, skipped=1)
    root = pytester.path
    vllm, vllm_ascend = sut_labels.label("vllm", "cpu"), sut_labels.label("vllm_ascend", "cpu")
    assert vllm_ascend == f"vllm_ascend {stack.inspect()['vllm_ascend'].version}"

    # --- records: one per test, from the workers (and the controller for the crashed worker's test)
    merged = json.loads((root / "reports" / "results.json").read_text())
    tests = {t["nodeid"].split("::")[1]: t for t in merged["tests"]}
    assert set(tests) == {"test_dispatch[allgather]", "test_dispatch[alltoall]", "test_numeric_mismatch",
                          "test_skipped", "test_two_ranks", "test_two_ranks_one_fails", "test_properties",
                          "test_sut_marked", "test_worker_dies"}
    worker_files = glob.glob(str(root / "reports" / "results" / "*-gw*.jsonl"))
    assert worker_files, "each xdist worker appends to its own file"
    assert sorted(r["nodeid"] for r in _records_in(root / "reports" / "results")) == \
        sorted(t["nodeid"] for t in merged["tests"]), "the merge holds exactly the records the workers wrote"
    assert merged["verdict"] == "fail"
    assert (merged["summary"]["moe"]["failed"], merged["summary"]["moe"]["error"]) == (2, 1)
    assert merged["summary"]["moe"]["verdict"] == "fail"
    assert merged["summary"]["eplb"] == dict(merged["summary"]["eplb"], passed=1, total=1, verdict="pass")
    assert merged["environment"]["platform"] == "cpu"

    # --- the system under test of every record: the marker's (none: reference), with its release
    assert {name: (t["sut"], t["ops"], t.get("device_type")) for name, t in tests.items()
            if name in ("test_sut_marked", "test_worker_dies", "test_two_ranks")} == {
        "test_sut_marked": (vllm_ascend, "golden", "A3"),      # device type from report.sut(...)
        "test_worker_dies": (vllm, "golden", None),            # recorded by the controller, sut from the collection
        "test_two_ranks": ("reference", "golden", None)}
    assert {t["sut"] for name, t in tests.items() if name not in ("test_sut_marked", "test_worker_dies")} == \
        {"reference"}
    assert {sut: entry["verdict"] for sut, entry in merged["by_sut"].items()} == \
        {"reference": "fail", vllm: "fail", vllm_ascend: "pass"}
    assert merged["by_sut"][vllm_ascend]["device_types"] == ["A3"]
    # --- the session recorded what it collected (once, by the first worker) and that it finished
    assert len(glob.glob(str(root / "reports" / "results" / "*-collected.json"))) == 1
    assert len(glob.glob(str(root / "reports" / "results" / "*-finished.json"))) == 1
    assert merged["completeness"] | {"text": ""} == {"complete": True, "recorded": 9, "collected": 9,
                                                    "missing_count": 0, "missing": [], "unfinished_sessions": [],
                                                    "text": ""}

    dispatch = tests["test_dispatch[allgather]"]
    assert (dispatch["area"], dispatch["feature"], dispatch["story"], dispatch["outcome"]) == \
        ("moe", "allgather", "allgather", "passed")
    assert dispatch["figures"] == [{"name": "latency", "value": 1.25, "unit": "ms",
                                    "context": {"method": "allgather"}}]
    assert dispatch["attachments"][0]["name"] == "per-rank table"

    mismatch = tests["test_numeric_mismatch"]
    assert (mismatch["feature"], mismatch["outcome"]) == ("finalize_routing", "failed")
    table = next(a for a in mismatch["attachments"] if a["kind"] == "mismatch")
    assert table["text"].startswith("combine output (exact): 1 of 4 elements differ") and "(1,)" in table["text"]
    repro = next(a for a in mismatch["attachments"] if a["kind"] == "repro")["text"]
    assert "test_moe_fake.py::test_numeric_mismatch -p no:xdist --platform cpu" in repro

    assert tests["test_skipped"]["outcome"] == "skipped"
    assert tests["test_skipped"]["reason"] == "needs torch_npu"

    assert tests["test_two_ranks"]["outcome"] == "passed"
    assert tests["test_two_ranks"]["findings"] == [{"subject": "reference DP1 TP2", "checked": True, "count": 0}]
    multi = tests["test_two_ranks_one_fails"]
    assert multi["reason"].startswith("ascend_conformance.harness.pool.RankFailure: rank 1 of 2 raised")
    kinds = {a["name"]: a["kind"] for a in multi["attachments"]}
    assert kinds["rank 1 traceback"] == "rank_traceback" and kinds["rank 1 log tail"] == "rank_log"
    assert "deliberate failure on rank 1" in next(a["text"] for a in multi["attachments"]
                                                  if a["name"] == "rank 1 traceback")

    assert tests["test_properties"]["area"] == "eplb", "@pytest.mark.area overrides the module's area"
    assert tests["test_properties"]["properties"] == [["balancedness", 0.97]]

    crashed = tests["test_worker_dies"]
    assert crashed["outcome"] == "error" and crashed["worker"] == "controller"
    assert "crashed while running" in crashed["reason"]

    # --- JUnit XML (pytest's own writer, merged by xdist's controller)
    suite = ET.parse(root / "junit.xml").getroot().find("testsuite")
    assert {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")} == \
        {"tests": 9, "failures": 2, "errors": 1, "skipped": 1}
    junit_properties = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
                        for case in suite.iter("testcase")}
    assert junit_properties["test_sut_marked"] == {"sut": vllm_ascend, "ops": "golden", "device_type": "A3"}
    assert junit_properties["test_properties"] == {"balancedness": "0.97", "sut": "reference", "ops": "golden"}

    # --- allure-results: labels, excluded figure parameters, attachments, environment.properties
    allure = {}
    for path in glob.glob(str(root / "allure" / "*-result.json")):
        data = json.loads(open(path).read())
        allure[data["name"]] = data
    labels = {name: {(l["name"], l["value"]) for l in data["labels"]} for name, data in allure.items()}
    assert {("epic", "moe"), ("feature", "alltoall"), ("story", "alltoall")} <= labels["test_dispatch[alltoall]"]
    assert {("epic", "moe"), ("feature", "finalize_routing"), ("story", "default")} <= labels["test_numeric_mismatch"]
    assert ("epic", "eplb") in labels["test_properties"]
    assert {("sut", vllm_ascend), ("ops", "golden"), ("device_type", "A3")} <= labels["test_sut_marked"]
    assert {("sut", "reference"), ("ops", "golden")} <= labels["test_dispatch[alltoall]"]
    parameters = {p["name"]: p for p in allure["test_dispatch[alltoall]"]["parameters"]}
    assert parameters["latency [ms]"]["excluded"] is True and parameters["latency [ms]"]["value"] == "1.25"
    assert "excluded" not in parameters["method"] or not parameters["method"]["excluded"]
    attachments = {a["name"]: a["source"] for a in allure["test_numeric_mismatch"]["attachments"]}
    assert "elements differ" in (root / "allure" / attachments["mismatch table"]).read_text()
    assert {"rank 1 traceback", "rank 0 log tail", "repro command"} <= \
        {a["name"] for a in allure["test_two_ranks_one_fails"]["attachments"]}
    props = environment.read_properties(str(root / "allure" / "environment.properties"))
    assert {"platform", "soc", "driver", "cann", "torch", "torch_npu", "vllm", "host", "device_count"} <= set(props)
    assert props["platform"] == "cpu" and props["device_count"] == "8"
    installed = stack.inspect()
    for name in ("vllm", "vllm_ascend"):
        assert props[name] == (installed[name].version or "not installed")
        assert props[f"{name}_origin"].startswith(installed[name].origin)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_killed_session_keeps_its_finished_tests_and_reads_incomplete(pytester, workers, capsys):
    flag = pytester.path / "in_flight"
    pytester.makepyfile(test_kill=f'''
import threading

def test_first():
    pass

def test_second():
    assert True

def test_third_hangs():
    open({str(flag)!r}, "w").close()
    threading.Event().wait()  # until the session is killed, however long the box takes to get there
''')
    results_dir = pytester.path / "reports" / "results"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *(workers or ["-p", "no:xdist"]), "-p", "no:cacheprovider",
                             "-q", f"--lease-dir={pytester.path / 'leases'}"],
                            cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # Bounded by events: the hanging test started with both records written, or the session ended.
        while (not flag.exists() or len(_records_in(results_dir)) < 2) and proc.poll() is None:
            time.sleep(0.1)
        assert flag.exists(), "the hanging test never started"
        # Still running: the finished tests' records are on disk already.
        live = _records_in(results_dir)
        assert sorted(r["nodeid"] for r in live) == ["test_kill.py::test_first", "test_kill.py::test_second"]
        os.kill(proc.pid, signal.SIGKILL)  # the controller: no hook of it runs again
        proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started (xdist workers)
        proc.wait()
    assert not (pytester.path / "reports" / "results.json").exists(), "the session never reached its end"
    document = results.load(str(results_dir))
    assert [(t["nodeid"], t["outcome"]) for t in document["tests"]] == \
        [("test_kill.py::test_first", "passed"), ("test_kill.py::test_second", "passed")]
    assert document["environment"]["platform"] == "cpu", "the environment is written when the session starts"
    session = live[0]["session"]
    assert (document["verdict"], document["completeness"]["text"]) == \
        ("incomplete", f"2 of 3 tests have records; session {session} has no completion mark: killed or still running")
    assert document["completeness"]["missing"] == ["test_kill.py::test_third_hangs"]

    out = pytester.path / "index.html"
    assert main(["report", "--results", str(results_dir), "--out", str(out), "--benchmarks"]) == 0
    assert (f"{out}: verdict incomplete (2 of 3 tests have records; session {session} has no completion mark: "
            f"killed or still running) [by SUT: reference incomplete], 2 tests, 0 benchmarks") in capsys.readouterr().out
    page = out.read_text()
    assert '<header class="incomplete">' in page and "2 of 3 tests have records" in page


def test_a_finished_session_reads_pass_or_fail_as_before(pytester):
    pytester.makepyfile(test_done="def test_ok():\n    pass\n\ndef test_bad():\n    assert False\n")
    run = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1, failed=1)
    _line_matches(run, "results: *results.json: this session 2 tests, verdict fail [by SUT: reference fail]; "
                       "HTML: ascend-conformance report")
    document = results.load(str(pytester.path / "reports" / "results"))
    assert (document["verdict"], document["completeness"]["complete"]) == ("fail", True)
    assert [s["exitstatus"] for s in document["sessions"]] == [1]


def test_torchrun_ranks_other_than_zero_write_nothing(pytester, monkeypatch):
    pytester.makepyfile(test_rank="def test_ok():\n    pass\n")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "reporting-test")  # torchrun's own: RANK alone is not torchrun
    run = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", "--junitxml=junit.xml")
    run.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()
    assert not (pytester.path / "junit.xml").exists()


def test_results_dir_option_and_clean(pytester):
    pytester.makepyfile(test_one="def test_ok():\n    pass\n")
    for _ in range(2):
        run = pytester.runpytest("-p", "no:xdist", "--results-dir", "out/res")
        run.assert_outcomes(passed=1)
    assert len(glob.glob(str(pytester.path / "out" / "res" / "*.jsonl"))) == 2, "sessions append side by side"
    _line_matches(run, "results: *results.json: this session 1 tests, verdict pass [by SUT: reference pass]; "
                       "merged with 1 other session(s) of *res: 1 tests, verdict pass [by SUT: reference pass]; "
                       "HTML: ascend-conformance report")
    pytester.runpytest("-p", "no:xdist", "--results-dir", "out/res", "--clean-results").assert_outcomes(passed=1)
    assert len(glob.glob(str(pytester.path / "out" / "res" / "*.jsonl"))) == 1
    assert len(glob.glob(str(pytester.path / "out" / "res" / "*-collected.json"))) == 1, "earlier sessions' files go too"
    assert json.loads((pytester.path / "out" / "results.json").read_text())["verdict"] == "pass"


def test_progress_from_a_test_gets_past_pytest_capture(pytester, monkeypatch):
    monkeypatch.delenv("ASCEND_CONFORMANCE_PROGRESS", raising=False)
    pytester.makepyfile(test_sweep="""
def test_sweep(report):
    with report.progress("size sweep", total=3, delay=0, interval=0) as progress:
        for size in (1, 2, 4):
            progress.advance(detail=f"{size} MiB")
""")
    run = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", "--results-dir=")
    run.assert_outcomes(passed=1)
    # The elapsed time is the wall clock's (a loaded box shows more than 0:00): any is right.
    assert re.search(r"size sweep: 3/3 \(100%\) elapsed \d+:\d\d \| 4 MiB", run.stderr.str(), re.MULTILINE)
    assert re.search(r"size sweep: 3/3 \(100%\) elapsed \d+:\d\d finished", run.stderr.str(), re.MULTILINE)


@pytest.mark.parametrize("marker, error", [
    ("area", "@pytest.mark.area takes one name*"),
    ("sut", '@pytest.mark.sut takes one name, e.g. @pytest.mark.sut("vllm_ascend")'),
    ('sut("vllm-ascend")', "@pytest.mark.sut: unknown system under test 'vllm-ascend': choose one of reference, vllm, "
                           "vllm_ascend"),
])
def test_a_report_marker_without_a_known_name_is_a_usage_error(pytester, marker, error):
    pytester.makepyfile(test_marked=f"import pytest\n\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    run = pytester.runpytest("-p", "no:xdist", "--results-dir=")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    run.stderr.fnmatch_lines([f"*test_marked.py::test_x: {error}"])


def test_a_test_refines_what_its_system_under_test_ran_on(report):
    report.sut(ops="golden", device_type="A2")
    assert report.ran_on == {"ops": "golden", "device_type": "A2"}
    with pytest.raises(ConfigError, match="^ops must be one of golden, torch_npu, got 'cuda'$"):
        report.sut(ops="cuda")


# ----------------------------------------------------------------------------------------------------
# Pure parts
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodeid, expected", [
    ("suites/test_topology.py::test_worked_example_dp2_pp2_tp2", ("groups", "worked_example_dp2_pp2_tp2", "default")),
    ("suites/test_collectives.py::test_all_reduce[tp-4-bf16]", ("collectives", "all_reduce", "tp-4-bf16")),
    ("suites/test_moe_methods.py::TestMethods::test_combine[mc2]", ("moe", "combine", "mc2")),
    ("suites/test_shared_weight.py::test_prefetch[k=1]", ("shared_weight", "prefetch", "k=1")),
    ("suites/test_eplb_redistribute.py::test_plan", ("eplb", "plan", "default")),
    ("tests/test_harness_faults.py::test_exit[SIGKILL]", ("harness", "exit", "SIGKILL")),
    ("suites/test_new_thing.py::test_x", ("new_thing", "x", "default")),
    ("suites/test_sut_moe.py::test_method[vllm_ascend-alltoall]", ("moe", "method", "vllm_ascend-alltoall")),
    ("suites/test_sut_layer_shard.py::test_forward", ("shared_weight", "forward", "default")),
    ("suites/test_live_layout.py::test_layout[W8]", ("groups", "layout", "W8")),
    ("benchmarks/collectives.py::collective[all_reduce-tp-float32-1024B-w8]",
     ("collectives", "collective", "all_reduce-tp-float32-1024B-w8")),
])
def test_labels_derive_from_the_node_id(nodeid, expected):
    labels = results.derive_labels(nodeid)
    assert (labels.area, labels.feature, labels.story) == expected


def test_labels_prefer_markers_then_parameters():
    nodeid = "suites/test_collectives.py::test_op[all_gather-4]"
    assert results.derive_labels(nodeid, params={"op": "all_gather", "n": 4}).feature == "all_gather"
    assert results.derive_labels(nodeid, area="groups", feature="gather", params={"op": "x"}) == \
        results.Labels("groups", "gather", "all_gather-4")


def test_merge_keeps_a_run_result_over_a_later_skip_and_the_latest_run():
    rec = lambda outcome, stop, session: {"nodeid": "a::t", "area": "moe", "outcome": outcome, "stop": stop,
                                          "session": session}
    assert results.merge([rec("passed", 1, "conf"), rec("skipped", 2, "bench")])[0]["session"] == "conf"
    assert results.merge([rec("skipped", 1, "conf"), rec("passed", 2, "bench")])[0]["session"] == "bench"
    assert results.merge([rec("passed", 1, "old"), rec("failed", 2, "new")])[0]["outcome"] == "failed"
    summary = results.summarize([rec("passed", 1, "s"), {"nodeid": "b", "area": "eplb", "outcome": "skipped"}])
    assert (summary["moe"]["verdict"], summary["eplb"]["verdict"], results.overall_verdict(summary)) == \
        ("pass", "skipped", "pass")


def test_a_session_is_complete_when_every_collected_test_has_a_record(tmp_path):
    def session(name, nodeids, recorded, finished):
        results.write_collection(str(tmp_path), name, {n: ("reference", "moe") for n in nodeids})
        writer = results.RecordWriter(str(tmp_path / f"{name}-main.jsonl"))
        for stop, nodeid in enumerate(recorded):
            writer.write({"nodeid": nodeid, "area": "moe", "outcome": "passed", "session": name, "stop": stop})
        writer.close()
        if finished:
            results.write_finished(str(tmp_path), name, 0)

    session("a-killed", ["m::x", "m::y", "m::z"], ["m::x"], finished=False)
    document = results.merge_directory(str(tmp_path))
    assert (document["verdict"], document["completeness"]["text"]) == \
        ("incomplete", "1 of 3 tests have records; session a-killed has no completion mark: killed or still running")
    moe = document["summary"]["moe"]
    assert (moe["passed"], moe["missing"], moe["total"], moe["verdict"]) == (1, 2, 3, "incomplete")
    assert not results.write_collection(str(tmp_path), "a-killed", {}), "every xdist worker collects: the first wins"

    session("b-rerun", ["m::y", "m::z"], ["m::y", "m::z"], finished=True)  # reruns what the killed one missed
    document = results.merge_directory(str(tmp_path))
    assert (document["verdict"], document["completeness"]["complete"]) == ("pass", True)
    assert document["completeness"]["unfinished_sessions"] == ["a-killed"], "still listed, no longer missing anything"

    writer = results.RecordWriter(str(tmp_path / "c-main.jsonl"))  # a session killed before its collection was recorded
    writer.write({"nodeid": "m::w", "area": "moe", "outcome": "passed", "session": "c", "stop": 9})
    writer.close()
    document = results.merge_directory(str(tmp_path))
    assert (document["verdict"], document["completeness"]["text"]) == \
        ("incomplete", "4 of at least 4 tests have records; 2 sessions have no completion mark: killed or still running")
    results.write_finished(str(tmp_path), "c", 2)
    assert results.merge_directory(str(tmp_path))["verdict"] == "pass"


def test_a_failure_outweighs_an_incomplete_session_and_per_sut_verdicts_are_apart():
    records = [{"nodeid": "a", "area": "moe", "outcome": "failed", "sut": "vllm_ascend 0.23.0.post1"},
               {"nodeid": "b", "area": "moe", "outcome": "passed"}]
    expected = {"a": ("vllm_ascend 0.23.0.post1", "moe"), "b": ("reference", "moe"), "c": ("reference", "eplb")}
    by_sut = results.summarize_by_sut(records, expected)
    assert {sut: entry["verdict"] for sut, entry in by_sut.items()} == \
        {"reference": "incomplete", "vllm_ascend 0.23.0.post1": "fail"}
    assert results.overall_verdict(results.summarize(records, expected)) == "fail"
    assert results.combine(["pass"], complete=False) == "incomplete"
    assert results.combine([], complete=False) == "incomplete" and results.combine([]) == "no results"


def test_a_torn_last_line_is_dropped(tmp_path):
    writer = results.RecordWriter(str(tmp_path / "s-gw0.jsonl"))
    writer.write({"nodeid": "a::t", "outcome": "passed"})
    writer.close()
    with open(tmp_path / "s-gw0.jsonl", "a") as handle:
        handle.write('{"nodeid": "a::u", "outc')
    assert [r["nodeid"] for r in results.read_lines(str(tmp_path / "s-gw0.jsonl"))] == ["a::t"]


def test_properties_file_round_trips_any_text(tmp_path):
    env = {"host": "npu-host-01", "odd key=:#": "C:\\path\nline two é 😀", "cann": " 8.0.RC3"}
    environment.write_allure_properties(str(tmp_path), env)
    assert environment.read_properties(str(tmp_path / "environment.properties")) == env


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_is_silent_for_short_work_and_rate_limited_for_long_work(monkeypatch):
    monkeypatch.delenv("ASCEND_CONFORMANCE_PROGRESS", raising=False)
    clock, out = _Clock(), io.StringIO()
    with Progress("quick", total=10, stream=out, clock=clock) as progress:
        for _ in range(10):
            clock.now += 0.1
            progress.advance()
    assert out.getvalue() == ""

    clock, out = _Clock(), io.StringIO()
    with Progress("sweep", total=100, stream=out, clock=clock, delay=3.0, interval=2.0) as progress:
        for step in range(100):
            clock.now += 0.5
            progress.advance(detail=f"size {step}")
    lines = out.getvalue().splitlines()
    # first line at 3.0 s (step 6), then one per 2 s up to 50 s, then the final line
    assert lines[0] == "sweep: 6/100 (6%) elapsed 0:03 ETA 0:47 | size 5"
    assert len(lines) == 1 + (50 - 3) // 2 + 1
    assert lines[-1] == "sweep: 100/100 (100%) elapsed 0:50 finished"


def test_progress_can_be_switched_off_and_forced(monkeypatch):
    clock, out = _Clock(), io.StringIO()
    monkeypatch.setenv("ASCEND_CONFORMANCE_PROGRESS", "0")
    with Progress("off", total=2, stream=out, clock=clock) as progress:
        clock.now = 100.0
        progress.advance(2)
    assert out.getvalue() == ""
    monkeypatch.setenv("ASCEND_CONFORMANCE_PROGRESS", "1")
    with Progress("forced", stream=out, clock=clock) as progress:
        progress.advance()
    assert out.getvalue().splitlines() == ["forced: 1 done elapsed 0:00", "forced: 1 done elapsed 0:00 finished"]
