"""The static HTML report: rendered from fixture data, every section present (empty ones say so), text
escaped, the verdict per system under test × area and the known divergences, a killed session's banner
saying incomplete, and — in headless Chromium — the verdict and every plot actually shown."""
from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser

import pytest

from ascend_conformance.cli import main
from ascend_conformance.report import benchmarks, results
from ascend_conformance.report import html as report_html
from tests import report_data as data

SECTIONS = ("areas", "failures", "divergences", "matrix", "performance", "perf-collectives", "perf-moe", "perf-other", "perf-memory",
            "perf-balancedness", "figures", "findings", "environment")


class _Page(HTMLParser):
    """Ids, plot images, the header's class, the cells of every table with an id, and the text of the
    page, as a browser-free check."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.plots, self.chips, self.scripts = set(), [], [], 0
        self.text: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.header_class = None
        self._chip = None
        self._table = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "header":
            self.header_class = attrs.get("class")
        if tag == "table" and "id" in attrs:
            self._table = self.tables.setdefault(attrs["id"], [])
        if self._table is not None and tag == "tr":
            self._table.append([])
        if self._table is not None and tag in ("td", "th"):
            self._table[-1].append("")
        if tag == "img" and "plot" in attrs.get("class", ""):
            self.plots.append(attrs)
        if tag == "script" or tag in ("link",) or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            self.scripts += 1
        if tag == "span" and "chip" in attrs.get("class", ""):
            self._chip = attrs

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None

    def handle_data(self, text):
        self.text.append(text)
        if self._table is not None and self._table and self._table[-1]:
            self._table[-1][-1] = " ".join((self._table[-1][-1] + " " + text).split())
        if self._chip is not None:
            self.chips.append((self._chip["class"].split()[1], text, self._chip.get("title", "")))
            self._chip = None


def fixture_document() -> dict:
    tests = [
        data.record("suites/test_topology.py::test_layout[dp2-pp2-tp2]", "passed",
                    findings=[{"subject": "vllm-ascend DP2 PP2 TP2 OTP2", "checked": True, "count": 1},
                              {"subject": "vllm-ascend DP2 PP2 TP2 OTP2", "rule": "crosses_stages", "kind": "otp",
                               "text": "otp group [0, 2] crosses PP stages: rank 0 is in stage 0, rank 2 in stage 1"}]),
        data.record("suites/test_topology.py::test_layout[dp1-tp8]", "passed"),
        data.record("suites/test_collectives.py::test_all_reduce[tp-bf16]", "passed",
                    figures=[{"name": "busbw", "value": 12.5, "unit": "GB/s"}]),
        data.record("suites/test_collectives.py::test_all_reduce[ep-fp16]", "failed",
                    "AssertionError: <script>alert(1)</script> 3 of 64 elements differ",
                    attachments=[{"name": "mismatch table", "kind": "mismatch", "mime": "text/plain",
                                  "text": "3 of 64 elements differ (rtol=0, atol=0, dtype=torch.float16)"}]),
        data.record("suites/test_moe_ops.py::test_dispatch[mc2]", "skipped",
                    "torch_npu not importable: libhccl.so: cannot open shared object file"),
        data.record("suites/test_shared_weight.py::test_series[k=1]", "passed",
                    figures=[{"name": "peak memory", "value": 48.0, "unit": "MiB"}]),
        data.record("suites/test_eplb_placement.py::test_plan", "passed",
                    properties=[["balancedness_uniform", "1.0000 vs round-robin 0.8000"]]),
        data.record("suites/test_sut_groups.py::test_live_layout[vllm-DP1-PP2-TP2]", "passed", sut=VLLM,
                    ops="golden"),
        data.record("suites/test_sut_moe.py::test_method[vllm_ascend-alltoall]", "passed", sut=VLLM_ASCEND,
                    ops="golden", device_type="A3"),
        data.record("suites/test_sut_moe.py::test_method[vllm_ascend-allgather-scattered]", "xfailed", DIVERGENCE,
                    sut=VLLM_ASCEND, ops="golden", device_type="A3", observed=OBSERVED),
    ]
    summary = results.summarize(tests)
    return {"tests": tests, "summary": summary, "verdict": results.overall_verdict(summary),
            "by_sut": results.summarize_by_sut(tests),
            "environment": {"platform": "npu", "device_model": "Ascend910B3", "cann": "8.0.RC3",
                            "torch": "2.5.1", "host": "npu-host-01"},
            "sessions": [{"session": "conformance-1", "started": 1.7e9, "tests": 6},
                         {"session": "bench-1", "started": 1.7e9 + 600, "tests": 1}]}


VLLM, VLLM_ASCEND = "vllm 0.23.0", "vllm_ascend 0.23.0.post1"
FINDING = "AllGather routes by a contiguous expert range, so a scattered expert_map sends tokens to the wrong rank"
REFERENCE = "vllm_ascend/ops/fused_moe/token_dispatcher.py TokenDispatcherWithAllGather"
DIVERGENCE = f"{FINDING} [{REFERENCE}]"  # the xfail reason fixtures/expectations.py gives
OBSERVED = "Divergence: vllm_ascend 0.23.0.post1 allgather: 96 of 128 output elements differ from the dense oracle"


def fixture_rows(tmp_path) -> list:
    path = data.write(tmp_path / "bench.json", data.document(
        data.collective_benchmarks() + data.moe_benchmarks() + data.eplb_benchmarks()))
    return benchmarks.load_file(path)


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("page")
    return report_html.write(str(tmp_path / "reports" / "index.html"), fixture_document(), fixture_rows(tmp_path))


def test_page_has_verdict_matrix_plots_findings_and_environment(page_file):
    text = open(page_file, encoding="utf-8").read()
    page = _Page(text)
    assert set(SECTIONS) <= page.ids
    assert "FAIL" in page.text and "verdict" in page.ids
    # two collectives (latency + busbw each), MoE per method, memory, balancedness
    assert [p["alt"] for p in page.plots] == ["all_gather: latency and busbw against size",
                                              "all_reduce: latency and busbw against size",
                                              "MoE dispatch / combine per method", "eplb: time per benchmark",
                                              "Peak memory per feature", "EPLB balancedness"]
    assert all(p["src"].startswith("data:image/png;base64,iVBOR") for p in page.plots)
    assert page.scripts == 0, "self-contained: no scripts, stylesheets or images from elsewhere"
    assert ("failed", "ep-fp16", "failed: AssertionError: <script>alert(1)</script> 3 of 64 elements differ") in page.chips
    assert ("skipped", "mc2", "skipped: torch_npu not importable: libhccl.so: cannot open shared object file") in page.chips
    assert ("passed", "dp2-pp2-tp2", "passed") in page.chips
    assert "<script>alert" not in text, "test text is escaped"
    body = " ".join(page.text)
    assert "otp group [0, 2] crosses PP stages" in body and "crosses_stages" in body
    assert "Ascend910B3" in body and "8.0.RC3" in body
    assert "48.0" in body and "shared_weight: series [k=1] peak memory" not in body  # plotted, not tabulated
    assert "busbw" in body and "12.5" in body
    assert "balancedness_uniform" in body and "1.0000 vs round-robin 0.8000" in body
    assert "merged from 2 pytest sessions" in body and "conformance-1" in body and "bench-1" in body
    assert page.header_class == "fail" and "completeness" not in page.ids, "a finished run says nothing of it"


def test_page_shows_the_verdict_per_system_under_test_and_area(page_file):
    page = _Page(open(page_file, encoding="utf-8").read())
    header, *rows = page.tables["sut-matrix"]
    assert header == ["area", "reference fail", f"{VLLM} pass golden ops",
                      f"{VLLM_ASCEND} pass golden ops; emulating A3"]
    assert rows == [["groups", "pass 2 passed", "pass 1 passed", "—"],
                    ["collectives", "fail 1 passed, 1 failed", "—", "—"],
                    ["moe", "skipped 1 skipped", "—", "pass 1 passed, 1 xfailed"],
                    ["shared_weight", "pass 1 passed", "—", "—"],
                    ["eplb", "pass 1 passed", "—", "—"]]
    assert page.tables["divergence-list"] == [
        ["system under test", "test", "finding", "upstream reference", "observed in this run"],
        [VLLM_ASCEND, "suites/test_sut_moe.py::test_method[vllm_ascend-allgather-scattered]", FINDING, REFERENCE,
         OBSERVED]]
    assert page.tables["conformance-moe"] == [
        ["feature", "system under test", "configurations"], ["dispatch", "reference", "mc2"],
        ["method", VLLM_ASCEND, "vllm_ascend-alltoall vllm_ascend-allgather-scattered"]], \
        "the conformance matrix names each configuration's system under test"


def test_sections_without_data_say_so(tmp_path):
    page = _Page(open(report_html.write(str(tmp_path / "index.html"), {"tests": []}, []), encoding="utf-8").read())
    body = " ".join(page.text)
    assert set(SECTIONS) <= page.ids and not page.plots
    for sentence in ("No test results: run", "No failures", "No collective benchmarks in this run",
                     "No MoE benchmarks in this run", "No other timed benchmarks in this run", "No memory measurements in this run",
                     "No balancedness figures in this run", "No benchmark JSON found", "No test recorded figures",
                     "No layout invariant findings recorded", "No environment recorded",
                     "No known divergence was hit in this run"):
        assert sentence in body, sentence
    assert "NO RESULTS" in body


def _session_dir(results_dir, tests, recorded: int, finished: bool) -> None:
    """A results directory as a session leaves it: its collection, the records of the first `recorded`
    tests, and its completion mark when it `finished`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    results.write_collection(str(results_dir), "s1", {t["nodeid"]: (t.get("sut", "reference"), t["area"])
                                                      for t in tests})
    writer = results.RecordWriter(str(results_dir / "s1-gw0.jsonl"))
    for record in tests[:recorded]:
        writer.write(record)
    writer.close()
    if finished:
        results.write_finished(str(results_dir), "s1", 0)


def test_report_command_builds_the_page_from_a_results_directory(tmp_path, capsys):
    results_dir = tmp_path / "reports" / "results"
    tests = fixture_document()["tests"]
    _session_dir(results_dir, tests, recorded=len(tests), finished=True)
    bench_dir = tmp_path / "reports" / "bench"
    bench_dir.mkdir()
    data.write(bench_dir / "collectives.json", data.document(data.collective_benchmarks()))
    out = tmp_path / "reports" / "index.html"
    assert main(["report", "--results", str(results_dir), "--out", str(out)]) == 0
    assert f"{out}: verdict fail [by SUT: reference fail, {VLLM} pass, {VLLM_ASCEND} pass], 10 tests, 20 benchmarks" \
        in capsys.readouterr().out
    page = _Page(out.read_text())
    assert [p["alt"] for p in page.plots] == ["all_gather: latency and busbw against size",
                                              "all_reduce: latency and busbw against size", "Peak memory per feature"]
    assert "FAIL" in page.text


def test_a_session_that_did_not_finish_reads_incomplete(tmp_path, capsys):
    passing = [t for t in fixture_document()["tests"] if t["outcome"] in ("passed", "xfailed", "skipped")]
    results_dir, out = tmp_path / "results", tmp_path / "index.html"
    _session_dir(results_dir, passing, recorded=5, finished=False)
    assert main(["report", "--results", str(results_dir), "--out", str(out), "--benchmarks"]) == 0
    line = capsys.readouterr().out
    assert (f"verdict incomplete (5 of 9 tests have records; session s1 has no completion mark: killed or still "
            f"running) [by SUT: reference incomplete, {VLLM} incomplete, {VLLM_ASCEND} incomplete], 5 tests") in line
    page = _Page(out.read_text())
    assert page.header_class == "incomplete" and "INCOMPLETE" in page.text
    assert "5 of 9 tests have records" in " ".join(page.text)
    header, *rows = page.tables["sut-matrix"]
    assert rows[0] == ["groups", "pass 2 passed", "incomplete 1 missing", "—"]

    results.write_finished(str(results_dir), "s1", 2)  # ended (interrupted) before its last three tests
    document = results.load(str(results_dir))
    assert (document["verdict"], document["completeness"]["text"]) == ("incomplete", "5 of 9 tests have records")
    assert document["completeness"]["missing"] == sorted(t["nodeid"] for t in passing[5:])

    _session_dir(results_dir, passing, recorded=len(passing), finished=True)
    document = results.load(str(results_dir))
    assert (document["verdict"], document["completeness"]["complete"]) == ("pass", True)


# ----------------------------------------------------------------------------------------------------
# Headless Chromium
# ----------------------------------------------------------------------------------------------------

def _browser() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium not installed (pip install -e .[dev])")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser: install the Debian packages chromium and chromium-driver "
                    "(make setup-browser)")
    return binary, driver


@pytest.fixture
def chromium(tmp_path):
    binary, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def test_headless_chromium_shows_the_verdict_and_every_plot(chromium, page_file, tmp_path):
    from selenium.webdriver.common.by import By

    chromium.get("file://" + os.path.abspath(page_file))
    verdict = chromium.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and verdict.text == "FAIL"
    assert chromium.title.endswith("FAIL")
    colour = chromium.execute_script("return getComputedStyle(document.querySelector('header')).backgroundColor")
    assert colour == "rgb(179, 38, 30)", "a failing run has the red banner"
    plots = chromium.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(plots) == 6
    for plot in plots:
        chromium.execute_script("arguments[0].scrollIntoView()", plot)
        decoded = chromium.execute_script(
            "const i = arguments[0]; return i.complete && i.naturalWidth > 300 && i.naturalHeight > 150", plot)
        assert decoded, f"plot {plot.get_attribute('alt')!r} did not decode"
        assert plot.is_displayed() and plot.size["width"] > 300 and plot.size["height"] > 150
    chromium.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "report.png"
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
