"""``ascend-conformance expectations --from results.json``: the entries a run suggests, from a small
results file, read back by the parser the plugin uses; bad input is one line and exit 2."""
from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from ascend_conformance import expectations as spec
from ascend_conformance.cli import main

RELEASE_FILE = "vllm_ascend-9.9.0.post1.toml"
HEAD = 'sut = "vllm_ascend"\nrelease = "9.9.0.post1"\n'


def _record(nodeid: str, outcome: str, reason: str, sut: str = "vllm_ascend 9.9.0.post1") -> dict:
    return {"nodeid": nodeid, "sut": sut, "outcome": outcome, "reason": reason, "longrepr": reason}


RESULTS = {"tests": [
    _record("suites/test_sut_groups.py::test_live_layout[vllm_ascend-W4-DP2-PP2-otp2]", "failed",
            "ascend_conformance.errors.Divergence: vllm_ascend 9.9.0.post1 (on vllm 9.9.0) builds a layout other than "
            "the reference for world 4 = DP2 x PP2, otp 2"),
    _record("suites/test_sut_groups.py::test_live_layout[vllm_ascend-W8-PCP2]", "failed",
            "ascend_conformance.harness.pool.RankFailure: rank 0 of 8 raised builtins.RuntimeError: shape '[1, 2, 2]' "
            "is invalid for input of size 8"),
    _record("suites/test_sut_groups.py::test_destroy_leaves_no_group[vllm_ascend-W8-PCP2]", "failed",
            "sut_batch.BatchRunFailed: the world run of batch vllm_ascend-layouts-W8-PCP2 crashed: RankFailure: rank 0 "
            "of 8 raised builtins.RuntimeError: shape '[1, 2, 2]' is invalid for input of size 8"),
    _record("suites/test_sut_eplb.py::test_policy[default]", "failed",
            "[XPASS(strict)] suites/test_sut_eplb.py::test_policy[default] no longer diverges: delete "
            "suites/expectations/vllm_ascend-9.9.0.post1.toml entry 4 (test = 'x') (finding: f)"),
    _record("suites/test_sut_layer_shard.py::test_series[W2]", "failed",
            "[expectation not matched] suites/expectations/vllm_ascend-9.9.0.post1.toml entry 2 (test = "
            "'suites/test_sut_layer_shard.py::test_series[W2]') expects a Divergence matching r'prefetch distance'; "
            "got a Divergence: 'memory 2.0x the unsharded layer'"),
    _record("suites/test_sut_groups.py::test_vllm_coordinator[W4-all_reduce]", "failed",
            "ascend_conformance.errors.Divergence: vllm 9.9.0 GroupCoordinator all_reduce differs", sut="vllm 9.9.0"),
    _record("suites/test_collectives.py::test_all_reduce", "failed", "AssertionError: a reference failure",
            sut="reference"),
    _record("suites/test_sut_moe.py::test_comm_method[x]", "xfailed", "known [ref]"),
    _record("suites/test_sut_moe.py::test_comm_method[y]", "passed", ""),
]}


def _suggest(path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["expectations", "--from", str(path)])
    return code, out.getvalue(), err.getvalue()


def test_the_cli_suggests_entries_from_a_run_and_edits_nothing(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    code, out, _ = _suggest(path)
    assert code == 0
    assert "# -- suites/expectations/vllm_ascend-9.9.0.post1.toml (5 suggestions)" in out
    assert ("# entry 2 of suites/expectations/vllm_ascend-9.9.0.post1.toml did not match "
            "suites/test_sut_layer_shard.py::test_series[W2]: it got a Divergence: 'memory 2.0x the unsharded "
            "layer'") in out
    assert "# -- suites/expectations/vllm-9.9.0.toml (1 suggestion)" in out
    assert "# delete entry 4 of suites/expectations/vllm_ascend-9.9.0.post1.toml: " \
           "suites/test_sut_eplb.py::test_policy[default] passes" in out
    assert "a reference failure" not in out and "test_comm_method" not in out
    # The suggested tables, with a reference written in, are valid entries that waive the failures they came from.
    tables = [block for block in out.split("\n\n") if block.startswith("[[expectation]]")]
    assert len(tables) == 4
    ascend = spec.parse_text(HEAD + "\n".join(f'{t}\nreference = "r"\n' for t in tables[:3]), RELEASE_FILE,
                             sut="vllm_ascend", release="9.9.0.post1").entries
    divergence, crash, batch = ascend
    assert divergence.kind == "divergence" and divergence.test.endswith("[vllm_ascend-W4-DP2-PP2-otp2]")
    assert divergence.finding.startswith("vllm_ascend 9.9.0.post1 (on vllm 9.9.0) builds a layout other than")
    assert divergence.waives("Divergence", RESULTS["tests"][0]["reason"].split(": ", 1)[1], divergence=True)
    assert (crash.kind, crash.exception, batch.kind, batch.exception) == ("crash", "RankFailure", "crash", "RankFailure")
    message = "rank 0 of 8 raised builtins.RuntimeError: shape '[1, 2, 2]' is invalid for input of size 8"
    assert crash.waives("RankFailure", message, divergence=False) and batch.waives("RankFailure", message,
                                                                                   divergence=False)
    assert "# reference = \"...\" is required" in out
    assert not list(tmp_path.glob("*.toml"))


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"no": "tests"})])
def test_the_cli_refuses_bad_input_in_one_line(tmp_path, content):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    code, out, err = _suggest(path)
    assert code == 2 and out == ""
    assert err.startswith(f"error: --from {path}: ") and err.count("\n") == 1


def test_a_suggested_match_is_the_escaped_first_line_cut_at_a_word():
    message = "vllm_ascend 9.9 builds otp [[0, 1]] " + "word " * 40 + "\nsecond line"
    match = spec.suggested_match(message)
    assert match.startswith(r"vllm_ascend\ 9\.9\ builds\ otp\ \[\[0,\ 1\]\]") and "second" not in match
    assert len(match.replace("\\", "")) <= spec.MATCH_LENGTH and not match.endswith("\\ ")
    assert re.search(match, message)
