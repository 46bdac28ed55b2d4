"""ascend-conformance matrix: records -> cells, changes between releases, the report, the CLI.

The table is pure and checked on records written by hand; the whole command runs once on a throwaway suite
of three SUT-marked tests in this environment (seconds, no world), which exercises the runner, the progress
lines, the merge of results, the labels from the environment and the exit status. A real second release is
used only where its pair environment exists here (`make test` never installs one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ascend_conformance.cli import main
from ascend_conformance.errors import ConfigError
from ascend_conformance.matrix import render, table
from ascend_conformance.matrix.run import parse_releases
from ascend_conformance.sut import installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(nodeid, outcome, reason="", **extra):
    return {"nodeid": nodeid, "outcome": outcome, "reason": reason, "area": "groups", **extra}


@pytest.mark.parametrize("rec, kind", [
    (record("t", "passed"), "pass"),
    (record("t", "xfailed", "otp crosses PP stages [parallel_state.py]"), "expected divergence"),
    (record("t", "xfailed", "known crash [x.py]", expectation_kind="crash"), "expected crash"),
    (record("t", "failed", "ascend_conformance.errors.Divergence: vllm_ascend 0.18.0 otp differs"), "new divergence"),
    (record("t", "failed", "AttributeError: 'NoneType' object has no attribute 'is_deepseek_mla'"), "crash"),
    (record("t", "failed", "x", exception="ascend_conformance.errors.Divergence"), "new divergence"),
    (record("t", "error", "ascend_conformance.errors.Divergence: in a fixture"), "crash"),
    (record("t", "failed", "[XPASS(strict)] t no longer diverges: delete entry 3"), "fixed"),
    (record("t", "not_in_release", "not in vllm_ascend main@182b75ea84: layer_sharding"), "not in release"),
    (record("t", "skipped", "no NPU on this host"), "skipped"),
    (None, "no result"),
])
def test_every_record_is_one_cell(rec, kind):
    assert table.cell_of(rec).kind == kind


def test_changes_between_adjacent_releases_and_the_unexpected_count():
    old = table.Column("0.18.0", "vllm_ascend 0.18.0", 3.0, {
        "a": record("a", "xfailed", "finding A"), "b": record("b", "passed"),
        "c": record("c", "not_in_release", "not in vllm_ascend 0.18.0: x"), "d": record("d", "passed")})
    new = table.Column("main", "vllm_ascend main@1", 4.0, {
        "a": record("a", "passed"), "b": record("b", "failed", "ascend_conformance.errors.Divergence: B"),
        "c": record("c", "passed"), "d": record("d", "not_in_release", "not in vllm_ascend main@1: y")})
    document = table.build([old, new])
    change = document["changes"][0]
    assert [t["nodeid"] for t in change["findings_fixed"]] == ["a"]
    assert [t["nodeid"] for t in change["findings_introduced"]] == ["b"]
    assert [t["nodeid"] for t in change["newly_applicable"]] == ["c"]
    assert [t["nodeid"] for t in change["no_longer_applicable"]] == ["d"]
    assert document["unexpected"] == 1, "only the new divergence of b is unexpected"
    assert document["columns"][1]["counts"]["new divergence"] == 1
    assert [row["area"] for row in document["rows"]] == ["groups"]


def test_a_test_missing_from_one_release_is_no_result_and_unexpected():
    one = table.Column("0.18.0", "x", 1.0, {"a": record("a", "passed")})
    two = table.Column("0.23.0.post1", "y", 1.0, {"a": record("a", "passed"), "b": record("b", "passed")})
    document = table.build([one, two])
    cells = {t["nodeid"]: [c["kind"] for c in t["cells"]] for t in document["rows"][0]["tests"]}
    assert cells["b"] == ["no result", "pass"] and document["unexpected"] == 1


def test_the_report_has_every_cell_and_column(tmp_path):
    columns = [table.Column("0.18.0", "vllm_ascend 0.18.0 + vllm 0.18.0", 2.5,
                            {"a": record("a", "passed"), "b": record("b", "not_in_release", "not in z: q")}),
               table.Column("main", "vllm_ascend main@abc + vllm 0.27.1", None, {}, run_error="pytest exited 4")]
    document = table.build(columns)
    document["host"] = {"hostname": "h", "torch": "t", "platform": "p", "date": "d"}
    json_path, html_path = render.write(document, str(tmp_path))
    html = open(html_path).read()
    assert "vllm_ascend main@abc + vllm 0.27.1" in html and "pytest exited 4" in html and "not in release" in html
    assert json.load(open(json_path))["unexpected"] == 3  # two missing results and the dead run


@pytest.mark.parametrize("text, message", [
    ("", "--releases is empty"),
    ("0.18.0,0.18.0", "--releases names 0.18.0 more than once"),
    ("latest", "'latest' is neither a vllm-ascend version"),
    ("main=/nowhere", "/nowhere holds no vllm_ascend package"),
])
def test_bad_release_lists_are_one_line_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_releases(text)


def test_the_command_refuses_bad_input_with_exit_2(capsys):
    assert main(["matrix", "--releases", "0.18.0", "-n", "0"]) == 2
    assert capsys.readouterr().err == "error: -n must be at least 1, got 0\n"


FAKE_SUITE = '''
import pytest
from ascend_conformance.errors import Divergence

pytestmark = [pytest.mark.sut("vllm_ascend"), pytest.mark.area("groups")]

def test_holds():
    pass

def test_diverges():
    raise Divergence("the planted finding")

def test_lacks_a_feature():
    pytest.skip("not in the release: planted_feature (planted.module: no such module)")
'''


def test_one_release_in_this_environment_end_to_end(tmp_path):
    """The command on this environment's release over a throwaway suite: progress, labels, cells, exit 1."""
    release = installed.installed("vllm_ascend")
    if release is None or release.is_checkout:
        pytest.skip("this environment has no released vllm-ascend installed (make setup STACK=pinned installs one)")
    suite = tmp_path / "test_fake_sut.py"
    suite.write_text(textwrap.dedent(FAKE_SUITE))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ascend_conformance", "matrix", "--releases", release.name,
                           "--no-install", "--out", str(out), "-n", "1", "--suites", str(suite)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr  # the planted divergence is unexpected
    assert f"[1/1] vllm-ascend {release.name} (this environment): running 1 suite file(s)" in done.stdout
    document = json.loads((out / "matrix.json").read_text())
    column = document["columns"][0]
    assert column["label"].startswith(release.label), "the label comes from what ran, not from what was asked"
    kinds = {t["nodeid"].rsplit("::", 1)[-1]: t["cells"][0]["kind"] for t in document["rows"][0]["tests"]}
    assert kinds == {"test_holds": "pass", "test_diverges": "new divergence", "test_lacks_a_feature": "not in release"}
    assert (out / release.name / "junit.xml").exists() and (out / "matrix.html").exists()
