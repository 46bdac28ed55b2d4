"""`ascend-conformance compare BASELINE NEW`: exit 1 on a time, busbw or memory regression or a new
failure, 0 on identical runs; matching by (platform, device model, world size, op, size, dtype);
--update-baseline; the files stay readable by pytest-benchmark's own `compare`."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from ascend_conformance.cli import main
from ascend_conformance.report import baseline as baseline_compare
from ascend_conformance.report.benchmarks import load_file
from tests import report_data as data
from tests.events import HANG_GUARD


@pytest.fixture
def baseline(tmp_path):
    doc = data.document(data.collective_benchmarks() + data.moe_benchmarks() + data.eplb_benchmarks())
    return data.write(tmp_path / "baseline.json", doc)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_identical_runs_pass(capsys, baseline, tmp_path):
    new = data.write(tmp_path / "new.json", json.load(open(baseline)))
    code, out, _ = run_cli(capsys, baseline, new)
    assert code == 0, out
    assert "0 regression(s)" in out and "REGRESSION" not in out


def test_a_ten_percent_slowdown_fails_and_names_the_benchmark(capsys, baseline, tmp_path):
    doc = data.document(data.collective_benchmarks(scale=1.10) + data.moe_benchmarks() + data.eplb_benchmarks())
    new = data.write(tmp_path / "new.json", doc)
    code, out, err = run_cli(capsys, baseline, new)
    print(out)
    assert code == 1
    assert "REGRESSION" in err
    regressions = [line for line in out.splitlines() if line.startswith("REGRESSION")]
    assert len(regressions) == 20, "every collective size of both ops and world sizes is 10 % slower"
    assert all("time +10.0% > +5%" in line for line in regressions)
    assert any("all_reduce" in line and "64 MiB" in line and "bfloat16" in line for line in regressions)
    assert sum(1 for line in out.splitlines() if line.startswith("ok ")) == 15, "moe and eplb unchanged"
    # a looser limit accepts the same slowdown
    assert run_cli(capsys, baseline, new, "--time-tolerance", "12%")[0] == 0


def test_a_faster_run_passes_and_says_so(capsys, baseline, tmp_path):
    doc = data.document(data.collective_benchmarks(scale=0.8) + data.moe_benchmarks() + data.eplb_benchmarks())
    code, out, _ = run_cli(capsys, baseline, data.write(tmp_path / "new.json", doc))
    assert code == 0
    assert sum(1 for line in out.splitlines() if line.startswith("faster ")) == 20


def test_busbw_below_ninety_percent_fails_even_at_equal_time(capsys, baseline, tmp_path):
    doc = data.document(data.collective_benchmarks(busbw_scale=0.85) + data.moe_benchmarks() + data.eplb_benchmarks())
    code, out, _ = run_cli(capsys, baseline, data.write(tmp_path / "new.json", doc))
    assert code == 1
    assert "busbw 0.85x < 0.9x" in out
    doc = data.document(data.collective_benchmarks(busbw_scale=0.95) + data.moe_benchmarks() + data.eplb_benchmarks())
    assert run_cli(capsys, baseline, data.write(tmp_path / "new2.json", doc))[0] == 0


def test_memory_growth_fails(capsys, baseline, tmp_path):
    doc = data.document(data.collective_benchmarks() + data.moe_benchmarks(memory_scale=1.2) + data.eplb_benchmarks())
    code, out, _ = run_cli(capsys, baseline, data.write(tmp_path / "new.json", doc))
    assert code == 1
    memory_lines = [line for line in out.splitlines() if "memory +20.0% > +5%" in line]
    assert len(memory_lines) == 8 and all("dispatch:" in line or "combine:" in line for line in memory_lines)


def test_new_failures_from_result_records(capsys, baseline, tmp_path):
    same = data.write(tmp_path / "new.json", json.load(open(baseline)))
    before = {"tests": [data.record("suites/test_moe_ops.py::test_known_bad", "failed", "known"),
                        data.record("suites/test_topology.py::test_ok", "passed")]}
    after = {"tests": [data.record("suites/test_moe_ops.py::test_known_bad", "failed", "known"),
                       data.record("suites/test_topology.py::test_ok", "failed", "AssertionError: tp group")]}
    base_results, new_results = tmp_path / "base_results.json", tmp_path / "new_results.json"
    base_results.write_text(json.dumps(before))
    new_results.write_text(json.dumps(after))
    code, out, _ = run_cli(capsys, baseline, same, "--results", new_results, "--baseline-results", base_results)
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("NEW FAILURE")]
    assert len(failures) == 1 and "suites/test_topology.py::test_ok" in failures[0] and "tp group" in failures[0]
    # without baseline records, every failure of the new run counts
    code, out, _ = run_cli(capsys, baseline, same, "--results", new_results)
    assert code == 1 and sum(1 for line in out.splitlines() if line.startswith("NEW FAILURE")) == 2


def test_keys_separate_platform_device_world_size_and_dtype(tmp_path):
    base = data.document(data.collective_benchmarks())
    other_device = data.document(data.collective_benchmarks(scale=2.0), dict(data.MACHINE, device_model="Ascend910B4"))
    comparison = baseline_compare.compare_rows(load_file(data.write(tmp_path / "b.json", base)),
                                      load_file(data.write(tmp_path / "n.json", other_device)))
    assert {f.status for f in comparison.findings} == {"missing", "new"}, "another device is never compared"
    assert comparison.exit_code == 0
    assert baseline_compare.compare_rows([], [], baseline_compare.Thresholds(fail_on_missing=True)).exit_code == 0
    strict = baseline_compare.compare_rows(load_file(str(tmp_path / "b.json")), load_file(str(tmp_path / "n.json")),
                                  baseline_compare.Thresholds(fail_on_missing=True))
    assert strict.exit_code == 1

    rows = load_file(str(tmp_path / "b.json"))
    keys = {row.key for row in rows}
    assert len(keys) == len(rows), "world size and size tell the sweep points apart"
    assert ("npu", "Ascend910B3", 8, "all_reduce", 1 << 26, "bfloat16", "") in keys
    fp16 = copy.deepcopy(base)
    for bench in fp16["benchmarks"]:
        bench["extra_info"]["dtype"] = "float16"
        bench["stats"]["mean"] *= 3
    comparison = baseline_compare.compare_rows(rows, load_file(data.write(tmp_path / "h.json", fp16)))
    assert comparison.exit_code == 0 and {f.status for f in comparison.findings} == {"missing", "new"}


def test_cases_sharing_a_key_are_matched_by_name_with_a_warning(tmp_path):
    doc = data.document(data.eplb_benchmarks())
    for bench in doc["benchmarks"]:
        bench["extra_info"].pop("variant", None)  # loads no longer tell the cases apart
    slower = copy.deepcopy(doc)
    slower["benchmarks"][2]["stats"]["mean"] *= 1.2  # zipf1.0 rebalanced
    comparison = baseline_compare.compare_rows(load_file(data.write(tmp_path / "b.json", doc)),
                                      load_file(data.write(tmp_path / "n.json", slower)))
    assert [f.new.name for f in comparison.regressions] == ["test_balancedness[zipf1.0-rebalanced]"]
    text = baseline_compare.table(comparison)
    assert "warning: 3 benchmarks share the key" in text and "set extra_info['variant']" in text


def test_update_baseline_accepts_the_new_run(capsys, tmp_path):
    baseline = tmp_path / "stored" / "baseline.json"
    first = data.write(tmp_path / "first.json", data.document(data.collective_benchmarks()))
    code, out, _ = run_cli(capsys, baseline, first, "--update-baseline")
    assert code == 0 and "baseline updated" in out and baseline.exists()

    slower_dir = tmp_path / "nightly"
    slower_dir.mkdir()
    data.write(slower_dir / "collectives.json", data.document(data.collective_benchmarks(scale=1.1)))
    data.write(slower_dir / "moe.json", data.document(data.moe_benchmarks()))
    (slower_dir / "not-a-benchmark.json").write_text('{"tests": []}')
    assert run_cli(capsys, baseline, slower_dir)[0] == 1
    code, out, _ = run_cli(capsys, baseline, slower_dir, "--update-baseline")
    assert code == 0 and "REGRESSION" in out and "(28 benchmarks)" in out
    assert run_cli(capsys, baseline, slower_dir)[0] == 0, "the accepted run is the new baseline"

    # pytest-benchmark's own compare reads the stored baseline
    done = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(baseline)],
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    assert "test_all_reduce_bench[8-67108864-bfloat16]" in done.stdout


def test_bad_inputs_are_one_line_errors(capsys, tmp_path, baseline):
    code, _, err = run_cli(capsys, tmp_path / "absent.json", baseline)
    assert code == 2 and err.strip().splitlines() == [f"error: baseline {tmp_path / 'absent.json'} does not exist"]
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    code, _, err = run_cli(capsys, baseline, junk)
    assert code == 2 and "no benchmark JSON" in err and len(err.strip().splitlines()) == 1


def test_the_installed_command_exits_1_on_regression(baseline, tmp_path):
    slower = data.write(tmp_path / "new.json", data.document(data.collective_benchmarks(scale=1.1)
                                                           + data.moe_benchmarks() + data.eplb_benchmarks()))
    done = subprocess.run([sys.executable, "-m", "ascend_conformance", "compare", baseline, slower],
                          capture_output=True, text=True, timeout=HANG_GUARD, env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 1 and "REGRESSION" in done.stdout
