"""An npu profile run on npu-emulated: every check still runs, and the verdict is EMULATED with its own
exit code (3), never ACCEPTABLE (ascend_conformance/acceptance/verify.py, docs/acceptance.md)."""
from __future__ import annotations

import types

import pytest

from ascend_conformance import cli
from ascend_conformance import platform as platforms
from ascend_conformance.acceptance import profiles, run, verify
from ascend_conformance.errors import ConfigError

EMULATED_ENVIRONMENT = {
    "platform": "npu-emulated", "backend": "hccl", "device_count": "8",
    "soc": "none: emulated npu on the host (golden ops; device type A2 / A3 / A5 per test)",
    "driver": "not found", "firmware": "not found", "cann": "not found",
    "torch_npu": "not used: the emulated device runs the torch_npu stand-in's golden ops",
    "torch": "2.13.0+cpu", "vllm": "0.23.0", "vllm_ascend": "0.23.0.post1", "host": "box",
}


def _record(nodeid: str, **fields) -> dict:
    return {"nodeid": nodeid, "outcome": "passed", "sut": "reference", "ops": "golden", "device": "emulated"} | fields


def _check(environment: dict, tests: list[dict], profile_name: str = "npu-a3") -> verify.Report:
    bundle = types.SimpleNamespace(json=lambda name: environment)
    report = verify.Report("b.tar.gz")
    verify._check_environment(bundle, {"tests": tests, "environment": environment}, profiles.get(profile_name), report)
    return report


def test_an_emulated_run_is_emulated_not_acceptable_and_notes_what_emulation_lacks():
    report = _check(EMULATED_ENVIRONMENT, [_record("suites/test_a.py::test_one")])
    assert report.problems == [], "golden ops, no SoC / CANN / driver / torch_npu: inherent, noted, not problems"
    assert report.emulated and not report.acceptable and report.exit_code == verify.EXIT_EMULATED == 3
    assert report.notes == ["emulated: platform npu-emulated stands in for npu; golden ops in place of torch_npu, and "
                            "no SoC, CANN, driver, firmware or torch_npu to check"]
    assert report.render().splitlines()[-1] == ("verdict  EMULATED: run on an emulated npu, which never signs off a "
                                                "release; the checks found 0 problems")


def test_an_emulated_run_still_reports_what_the_checks_find():
    report = _check(EMULATED_ENVIRONMENT | {"backend": "gloo"},
                    [_record("suites/test_a.py::test_one"), _record("suites/test_a.py::test_two", device="cpu"),
                     _record("suites/test_a.py::test_three", ops="torch_npu")])
    report.problem("mustpass", "suites/test_a.py::test_four: missing")
    assert [text for _, text in report.problems] == [
        "backend gloo: profile npu-a3 runs on hccl",
        "1 test(s) ran with ops other than golden (profile npu-a3 on an emulated npu), e.g. suites/test_a.py::test_three",
        "1 test(s) do not say device emulated in an emulated run, e.g. suites/test_a.py::test_two",
        "suites/test_a.py::test_four: missing"]
    lines = report.render().splitlines()
    assert lines[0].startswith("host     ") and lines[1].startswith("note     emulated: ")
    assert lines[2] == ("verdict  EMULATED: run on an emulated npu, which never signs off a release; the checks "
                        "found 4 problems (below)")
    assert lines[3:] == [f"{kind}: {text}" for kind, text in report.problems]
    assert report.exit_code == 3


def _mustpass(report: verify.Report, tests: list[dict]) -> None:
    listed = types.SimpleNamespace(tests=[t["nodeid"] for t in tests], version="0.1.0", profile="npu-a3")
    bundle = types.SimpleNamespace(index={}, names=lambda prefix, suffix: [])
    verify._check_mustpass(bundle, {"tests": tests}, listed, profiles.get("npu-a3"), {}, report)


def test_without_torch_npu_the_golden_vs_real_skips_are_allowed_only_when_emulated():
    skipped = [_record("suites/test_moe_ops.py::test_real", outcome="skipped",
                       reason="torch_npu not installed (pip install -e .[npu] on an NPU host)"),
               _record("suites/test_moe_ops.py::test_other", outcome="skipped", reason="no reason the profile allows")]
    emulated = verify.Report("b", emulated=True)
    _mustpass(emulated, skipped)
    assert [text for _, text in emulated.problems] == [
        "suites/test_moe_ops.py::test_other: no reason the profile allows (not a skip profile npu-a3 allows)"]
    assert "1 allowed skip(s): the golden-vs-real torch_npu comparisons need an NPU host" in emulated.summary[-1]
    real = verify.Report("b")
    _mustpass(real, skipped)
    assert len(real.problems) == 2, "on an NPU host torch_npu must be there"


def test_npu_emulated_does_not_stand_in_for_the_cpu_profile():
    report = _check(EMULATED_ENVIRONMENT | {"backend": "gloo"}, [_record("suites/test_a.py::test_one")],
                    "cpu-reference")
    assert not report.emulated and report.exit_code == verify.EXIT_NOT_ACCEPTABLE
    assert "platform npu-emulated: profile cpu-reference runs on platform cpu" in [t for _, t in report.problems]


def test_real_verdicts_keep_their_exit_codes():
    assert verify.Report("b").exit_code == 0
    broken = verify.Report("b")
    broken.problem("mustpass", "x")
    assert broken.exit_code == 1 and broken.render().splitlines()[-2] == "verdict  NOT ACCEPTABLE: 1 problem"


def test_acceptance_run_puts_npu_profiles_on_the_emulated_platform(monkeypatch):
    monkeypatch.setenv(platforms.PLATFORM_ENV, "npu-emulated")
    assert run.platform_args(profiles.get("npu-a3")) == ["--platform", "npu-emulated", "--full"]
    with pytest.raises(ConfigError, match="^npu-emulated stands in for the npu profiles only; profile cpu-reference "
                                          "runs on platform cpu$"):
        run.platform_args(profiles.get("cpu-reference"))
    monkeypatch.setenv(platforms.PLATFORM_ENV, "cpu")
    assert run.platform_args(profiles.get("npu-a3")) == ["--platform", "npu", "--full"]


def test_verify_exits_3_on_an_emulated_bundle(monkeypatch, capsys):
    emulated = verify.Report("b.tar.gz", summary=["bundle   b.tar.gz"], emulated=True)
    monkeypatch.setattr(verify, "verify", lambda path, checkout, releases=None: emulated)
    assert cli.main(["acceptance", "verify", "b.tar.gz"]) == 3
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict  EMULATED: ")
