"""The parts of vendor acceptance on their own (docs/acceptance.md): profiles, mustpass lists, manifests and
release manifests, the bundle's writing and reading, JUnit / Allure outcomes, the verifier's summary.
No pytest subprocess here; tests/test_acceptance.py runs the commands end to end."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest

from ascend_conformance.acceptance import bundle, counterparts, manifest, mustpass, profiles, verify
from ascend_conformance.acceptance.checkout import Checkout, locate
from ascend_conformance.errors import ConfigError

LIST_TEXT = """# ascend-conformance mustpass list
# profile: cpu-reference
# suite version: 0.1.0
# rules: r
# tests: 2
suites/test_a.py::test_one
suites/test_b.py::TestX::test_two[p-1]
"""


# -- profiles -----------------------------------------------------------------------------------------

def test_profiles_select_by_area_tier_sut_and_device_type():
    inventory = [
        {"nodeid": "suites/test_a.py::t1", "area": "groups", "sut": "reference", "tier": "default"},
        {"nodeid": "suites/test_a.py::t2", "area": "harness", "sut": "reference", "tier": "default"},
        {"nodeid": "suites/test_a.py::t3", "area": "moe", "sut": "vllm", "tier": "full"},
        {"nodeid": "suites/test_a.py::t4", "area": "bench_moe", "sut": "vllm", "tier": "bench"},
        {"nodeid": "suites/test_a.py::t4b", "area": "bench_moe", "sut": "reference", "tier": "default"},
        {"nodeid": "suites/test_a.py::t5[A2]", "area": "moe", "sut": "vllm_ascend", "tier": "default",
         "device_type": "A2"},
        {"nodeid": "suites/test_a.py::t5[A5]", "area": "moe", "sut": "vllm_ascend", "tier": "default",
         "device_type": "A5"},
    ]
    assert mustpass.select(inventory, profiles.get("cpu-reference")) == [
        "suites/test_a.py::t1", "suites/test_a.py::t5[A2]", "suites/test_a.py::t5[A5]"]
    assert mustpass.select(inventory, profiles.get("npu-a2")) == [
        "suites/test_a.py::t1", "suites/test_a.py::t3", "suites/test_a.py::t4", "suites/test_a.py::t5[A2]"]


def test_profiles_allow_only_their_skips():
    cpu, npu = profiles.get("cpu-reference"), profiles.get("npu-a3")
    assert cpu.allowed_skip("gloo does not support all_reduce AVG on int64 (torch 2.13.0): boom").why.startswith(
        "a known gap of gloo")
    assert cpu.allowed_skip("vllm_ascend not installed (make setup installs ...)") is None
    assert npu.allowed_skip("torch_npu not importable: libhccl.so: cannot open shared object file") is None
    # the skip messages of suites/test_sut_groups.py's GroupCoordinator verdicts
    not_offered = ("vllm 0.23.0 GroupCoordinator gather float32 (values) on W4-DP2-TP2: 10 checks right, not "
                   "available on pp: NoneType: NotImplementedError: gather needs a device communicator")
    assert cpu.allowed_skip(not_offered.replace(": 10 checks", ": 0 checks")) is None  # nothing was judged
    assert cpu.allowed_skip(not_offered.replace(": 10 checks", ": 01 checks")) is None
    from_last = ("vllm 0.23.0 GroupCoordinator broadcast_object_from_last (values) on W4-DP2-TP2: 12 checks right, "
                 "not available on tp: broadcast_object from a group rank other than 0 on a group with a "
                 "message-queue broadcaster (...)")
    assert cpu.allowed_skip(not_offered) and cpu.allowed_skip(from_last)
    assert npu.allowed_skip(not_offered) is None and npu.allowed_skip(from_last)
    # all_gatherv / reduce_scatterv: no communicator implements them, anywhere; allowed only when every group says so
    v_cases = ("vllm 0.23.0 GroupCoordinator all_gatherv int32 (values) on W4-DP2-TP2: 0 checks right, not available "
               "on dp: DeviceCommunicatorBase: NotImplementedError; pp: NoneType: NotImplementedError: all_gatherv "
               "needs a device communicator, which vLLM gives no group of one")
    assert cpu.allowed_skip(v_cases) and npu.allowed_skip(v_cases)
    assert npu.allowed_skip(v_cases.replace("; pp: NoneType: NotImplementedError", "; pp: RuntimeError")) is None
    # A2's MC2 ops need EP >= 16: an npu-a2 host's skip of that rule alone
    a2_ep = ("every scenario is outside the MC2 ops' documented limits on A2: the A2 MC2 ops do not take this shape: "
             "ep_world_size 2 is not one of 16, 32, 64, 128, 256 (the EP group spans servers of 8 NPUs) "
             "[torch_npu.npu_moe_distribute_dispatch_v2 / combine_v2: ep_world_size]")
    assert profiles.get("npu-a2").allowed_skip(a2_ep) and npu.allowed_skip(a2_ep) is None
    assert profiles.get("npu-a2").allowed_skip(a2_ep.replace(" [torch", "; H 8 is not a multiple of 32 [torch")) is None
    # the emulated hccl's integer AVG: accepted in an emulated run only (acceptance/verify.py), never by a profile
    avg = "hccl (emulated, over gloo) does not support all_reduce AVG on int64 (torch 2.13.0): boom"
    assert npu.allowed_skip(avg) is None and any(rule.matches(avg) for rule in profiles.EMULATED_RUN_SKIPS)
    assert mustpass.collection_args(npu) == ["--platform", "npu", "--full"]
    assert mustpass.collection_args(cpu) == ["--platform", "cpu", "--devices", "8"]


def test_unknown_profile_is_one_line():
    with pytest.raises(ConfigError, match=r"^unknown profile 'npu-a1': choose one of cpu-reference, npu-a2, npu-a3$"):
        profiles.get("npu-a1")


# -- mustpass lists ------------------------------------------------------------------------------------

def test_list_text_round_trips():
    listed = mustpass.parse_list(LIST_TEXT, "x.txt")
    tests = ("suites/test_a.py::test_one", "suites/test_b.py::TestX::test_two[p-1]")
    assert listed == mustpass.MustpassList("cpu-reference", "0.1.0", tests, "r")
    assert mustpass.parse_list(listed.text(), "y.txt") == listed


@pytest.mark.parametrize("text, message", [
    ("suites/test_a.py::t\n",
     r"^x.txt is not a mustpass list \(its first line is not '# ascend-conformance mustpass list'\)$"),
    (LIST_TEXT + "not a node id\n", r"^x.txt line 8: 'not a node id' is not a test node id$"),
    (LIST_TEXT + "suites/test_a.py::test_one\n", r"^x.txt: 1 tests listed twice, e.g. suites/test_a.py::test_one$"),
    ("# ascend-conformance mustpass list\n# profile: p\n", r"^x.txt: the header names no profile or suite version$"),
])
def test_a_bad_list_is_one_line(text, message):
    with pytest.raises(ConfigError, match=message):
        mustpass.parse_list(text, "x.txt")


def _checkout(tmp_path) -> Checkout:
    """A checkout of three directories in tmp_path (package, plugin, suites)."""
    for directory in ("pkg", "plugin", "suites/expectations", "pkg/__pycache__"):
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    (tmp_path / "pkg" / "__init__.py").write_text("version = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pkg" / ".notes.swp").write_text("editor")
    (tmp_path / "plugin" / "plugin.py").write_text("# plugin\n")
    (tmp_path / "suites" / "test_a.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "suites" / "expectations" / "vllm-0.1.toml").write_text('sut = "vllm"\n')
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\nxfail_strict = true\n")
    return Checkout(str(tmp_path), str(tmp_path / "pkg"), str(tmp_path / "plugin"))


def test_committed_list_is_read_from_its_versioned_path(tmp_path):
    checkout = _checkout(tmp_path)
    profile = profiles.get("cpu-reference")
    with pytest.raises(ConfigError, match=r"^no mustpass list for profile cpu-reference of suite 0.1.0: "
                                          r"acceptance/mustpass/0.1.0/cpu-reference.txt \(make it with: "):
        mustpass.committed(checkout, "0.1.0", profile)
    path = mustpass.write(checkout, mustpass.parse_list(LIST_TEXT, "x"), released=False)
    assert path == str(tmp_path / "acceptance" / "mustpass" / "0.1.0" / "cpu-reference.txt")
    assert mustpass.committed(checkout, "0.1.0", profile).tests[0] == "suites/test_a.py::test_one"
    with pytest.raises(ConfigError, match=r"says profile cpu-reference, suite version 0.1.0; "
                                          r"the path says npu-a2, 0.1.0$"):
        os.makedirs(os.path.dirname(checkout.mustpass_path("0.1.0", "npu-a2")), exist_ok=True)
        with open(checkout.mustpass_path("0.1.0", "npu-a2"), "w") as handle:
            handle.write(LIST_TEXT)
        mustpass.committed(checkout, "0.1.0", profiles.get("npu-a2"))
    with pytest.raises(ConfigError, match=r"^suite 0.1.0 is released .*: its mustpass lists are frozen"):
        mustpass.write(checkout, mustpass.parse_list(LIST_TEXT, "x"), released=True)


def test_locate_needs_suites(tmp_path):
    with pytest.raises(ConfigError, match=rf"^--checkout {tmp_path}: no suites/ directory there$"):
        locate(str(tmp_path))
    assert os.path.isdir(os.path.join(locate().root, "suites"))


# -- manifests -----------------------------------------------------------------------------------------

def test_manifest_hashes_the_suite_and_names_a_changed_file(tmp_path):
    checkout = _checkout(tmp_path)
    mustpass.write(checkout, mustpass.parse_list(LIST_TEXT, "x"), released=False)
    before = manifest.compute(checkout, "0.1.0", ["cpu-reference"])
    assert sorted(before["files"]) == ["acceptance/mustpass/0.1.0/cpu-reference.txt", "ascend_conformance/__init__.py",
                                       "fixtures/plugin.py", "pyproject.toml", "suites/expectations/vllm-0.1.toml",
                                       "suites/test_a.py"]
    (tmp_path / "suites" / "test_a.py").write_text("def test_one():\n    assert True\n")
    (tmp_path / "suites" / "test_new.py").write_text("")
    (tmp_path / "pyproject.toml").unlink()
    after = manifest.compute(checkout, "0.1.0", ["cpu-reference"])
    assert manifest.diff(after, before, "cpu-reference") == manifest.Diff(
        changed=("suites/test_a.py",), added=("suites/test_new.py",), missing=("pyproject.toml",))
    assert manifest.diff(before, before, "cpu-reference").empty


def test_release_manifest_is_written_once_and_frozen(tmp_path):
    checkout = _checkout(tmp_path)
    with pytest.raises(ConfigError, match=r"^suite 0.1.0 has no mustpass list yet"):
        manifest.release(checkout, "0.1.0", list(profiles.PROFILES))
    mustpass.write(checkout, mustpass.parse_list(LIST_TEXT, "x"), released=False)
    path = manifest.release(checkout, "0.1.0", list(profiles.PROFILES))
    released = manifest.read_release(path)
    assert released["profiles"] == ["cpu-reference"] and released["suite_version"] == "0.1.0"
    assert manifest.release(checkout, "0.1.0", list(profiles.PROFILES)) == path  # the same tree: no change
    (tmp_path / "suites" / "test_a.py").write_text("# changed after the release\n")
    with pytest.raises(ConfigError, match=r"^suite 0.1.0 is already released .* with other files: a release is frozen"):
        manifest.release(checkout, "0.1.0", list(profiles.PROFILES))


def test_release_is_refused_with_uncommitted_changes(tmp_path):
    checkout = _checkout(tmp_path)
    mustpass.write(checkout, mustpass.parse_list(LIST_TEXT, "x"), released=False)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "suite"], check=True)
    (tmp_path / "suites" / "test_a.py").write_text("# edited, not committed\n")
    with pytest.raises(ConfigError, match=r"^release from a committed tree: git shows 1 uncommitted change\(s\) to the "
                                          r"suite, e.g. suites/test_a.py$"):
        manifest.release(checkout, "0.1.0", ["cpu-reference"])
    subprocess.run([*git, "commit", "-qam", "edit"], check=True)
    released = manifest.read_release(manifest.release(checkout, "0.1.0", ["cpu-reference"]))
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert released["commit"] == head


# -- the bundle file -----------------------------------------------------------------------------------

def test_bundle_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "b.tar.gz"
    with pytest.raises(FileNotFoundError):
        bundle.write(str(out), {"format": bundle.FORMAT}, {"a.txt": b"a", "z.txt": str(tmp_path / "absent")})
    assert list(tmp_path.iterdir()) == []
    index = {"format": bundle.FORMAT, "format_version": bundle.FORMAT_VERSION, "profile": "cpu-reference",
             "suite_version": "0.1.0"}
    bundle.write(str(out), index, {"a.txt": b"a"})
    read = bundle.read(str(out))
    assert read.index == index and read.text("a.txt") == "a" and read.names() == ["a.txt", "bundle.json"]


def _tar(path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("members, message", [
    ({"x": b""}, "is not an acceptance bundle: it has no bundle.json"),
    ({"bundle.json": b"{"}, "is not an acceptance bundle: bundle.json is not JSON"),
    ({"bundle.json": b'{"format": "other"}'}, "is not an acceptance bundle: bundle.json does not say format"),
    ({"bundle.json": json.dumps({"format": bundle.FORMAT, "format_version": 9}).encode()},
     ": bundle format version 9; this verifier reads version 1"),
    ({"bundle.json": json.dumps({"format": bundle.FORMAT, "format_version": 1, "profile": "p"}).encode()},
     "is not an acceptance bundle: bundle.json names no suite_version"),
    ({"../evil": b"", "bundle.json": b"{}"}, "member '../evil' has an unsafe path: not an acceptance bundle"),
])
def test_an_unreadable_bundle_is_one_line(tmp_path, members, message):
    path = _tar(tmp_path / "b.tar.gz", members)
    with pytest.raises(ConfigError) as caught:
        bundle.read(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_directory_or_missing_file_is_not_a_bundle(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not an acceptance bundle"):
        bundle.read(str(tmp_path))
    with pytest.raises(ConfigError, match=r": no such file$"):
        bundle.read(str(tmp_path / "none.tar.gz"))


# -- JUnit and Allure ----------------------------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="suites.test_a" name="test_ok" />
<testcase classname="suites.test_a" name="test_bad"><failure message="x">x</failure></testcase>
<testcase classname="suites.test_a" name="test_err"><error message="x">x</error></testcase>
<testcase classname="suites.test_a.TestC" name="test_skip[p::q]"><skipped type="pytest.skip" message="m" /></testcase>
<testcase classname="suites.test_a" name="test_known"><skipped type="pytest.xfail" message="finding" /></testcase>
</testsuite></testsuites>"""


def test_junit_outcomes_by_node_id():
    outcomes = counterparts.junit_outcomes([JUNIT])
    by_nodeid = {nodeid: outcomes[counterparts.junit_key(nodeid)] for nodeid in (
        "suites/test_a.py::test_ok", "suites/test_a.py::test_bad", "suites/test_a.py::test_err",
        "suites/test_a.py::TestC::test_skip[p::q]", "suites/test_a.py::test_known")}
    assert by_nodeid == {"suites/test_a.py::test_ok": ["passed"], "suites/test_a.py::test_bad": ["failed"],
                         "suites/test_a.py::test_err": ["failed"],
                         "suites/test_a.py::TestC::test_skip[p::q]": ["skipped"],
                         "suites/test_a.py::test_known": ["xfailed"]}
    with pytest.raises(ValueError, match="^not XML"):
        counterparts.junit_outcomes(["<testsuites>"])


def test_allure_outcomes_by_node_id():
    def result(name, status, message=""):
        return json.dumps({"name": name, "status": status, "statusDetails": {"message": message},
                           "labels": [{"name": "package", "value": "suites.test_a"}]})

    outcomes = counterparts.allure_outcomes([result("test_ok", "passed"), result("test_bad", "broken"),
                                             result("test_known", "skipped", "XFAIL finding\n\nDivergence"),
                                             result("test_skip", "skipped", "Skipped: m"), "not json"])
    assert {key[1]: value for key, value in outcomes.items()} == {
        "test_ok": ["passed"], "test_bad": ["failed"], "test_known": ["xfailed"], "test_skip": ["skipped"]}
    assert counterparts.allure_key("suites/test_a.py::TestC::test_known") == ("suites.test_a", "test_known")


# -- the summary ---------------------------------------------------------------------------------------

def test_the_summary_fits_a_screen_and_all_lists_every_problem():
    report = verify.Report("b.tar.gz", summary=["bundle   b.tar.gz"])
    for number in range(25):
        report.problem("failed", f"suites/test_a.py::test_{number}: assert 0")
    report.problem("session", "session s was interrupted: it has no completion mark (killed, or still running)")
    short = report.render().splitlines()
    assert short[1] == "verdict  NOT ACCEPTABLE: 26 problems"
    assert len(short) == 2 + verify.PER_KIND_SHOWN + 1 + 1
    assert short[-1] == "... and 15 more 'failed' problems (acceptance verify --all lists every one)"
    assert "session: session s was interrupted: it has no completion mark (killed, or still running)" in short
    assert len(report.render(show_all=True).splitlines()) == 2 + 26
    assert verify.Report("b").render().endswith("verdict  ACCEPTABLE")
