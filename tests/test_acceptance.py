"""Vendor acceptance end to end (docs/acceptance.md), on a small checkout built in a temporary directory.

The small checkout is a snapshot of this package and its pytest plugin (first on PYTHONPATH, so in-flight
edits elsewhere in the tree cannot change what it hashes) with a few suites of its own: a cpu-reference
mustpass list of six tests — a pass, an allowed skip (torch_npu missing), a test that fails and one that
skips for a reason no profile allows when ACCEPTANCE_TINY_BREAK is set, a known divergence of the
installed vllm-ascend (an expectation) and a SUT test that agrees — plus tests the rules leave out (full
tier, harness area). ``acceptance list --write``, ``release``, ``run`` and ``verify`` are the real
commands in subprocesses. Bundles are then tampered with, each way rejected with a line naming it.

The real cpu-reference run of the whole suite is the ``--full`` test at the end.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from filelock import FileLock

from ascend_conformance.acceptance import checkout as checkout_mod
from ascend_conformance.acceptance import manifest, mustpass, verify
from ascend_conformance.cli import main
from ascend_conformance.sut import stack
from tests.events import HANG_GUARD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BREAK = "ACCEPTANCE_TINY_BREAK"
TOPOLOGY = "suites/test_topology_tiny.py"
SUT = "suites/test_sut_moe_tiny.py"
LISTED = sorted([f"{TOPOLOGY}::test_rank_formula", f"{TOPOLOGY}::test_golden_vs_real_op",
                 f"{TOPOLOGY}::test_breaks_when_told", f"{TOPOLOGY}::test_skips_when_told",
                 f"{SUT}::test_known_divergence", f"{SUT}::test_agrees"])

TOPOLOGY_SUITE = f'''
import os

import pytest

BREAK = "{BREAK}"


def test_rank_formula():
    assert [r // 2 for r in range(4)] == [0, 0, 1, 1]


def test_golden_vs_real_op():
    pytest.skip("torch_npu not importable: No module named 'torch_npu'")


def test_breaks_when_told():
    assert not os.environ.get(BREAK), "told to break"


def test_skips_when_told():
    if os.environ.get(BREAK):
        pytest.skip("vllm not installed here")


@pytest.mark.full
def test_full_tier_only():
    pass
'''

SUT_SUITE = '''
import pytest

from ascend_conformance.errors import Divergence

pytestmark = pytest.mark.sut("vllm_ascend")


def test_known_divergence():
    raise Divergence("vllm_ascend: combine drops the last row")


def test_agrees():
    pass
'''

HARNESS_SUITE = '''
def test_outside_the_conformance_areas():
    pass
'''


def _snapshot_package(root: str) -> None:
    """This package and the pytest plugin, copied into ``root`` (imported from there via PYTHONPATH)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(REPO, "ascend_conformance"), os.path.join(root, "ascend_conformance"), ignore=ignore)
    shutil.copytree(os.path.join(REPO, "fixtures"), os.path.join(root, checkout_mod.PLUGIN_PACKAGE), ignore=ignore)
    for name in ("pyproject.toml", "conftest.py"):
        shutil.copyfile(os.path.join(REPO, name), os.path.join(root, name))


def build_tiny_checkout(root: str, vllm_ascend_version: str) -> str:
    _snapshot_package(root)
    os.makedirs(os.path.join(root, "suites", "expectations"))
    for name, text in (("test_topology_tiny.py", TOPOLOGY_SUITE), ("test_sut_moe_tiny.py", SUT_SUITE),
                       ("test_harness_tiny.py", HARNESS_SUITE)):
        with open(os.path.join(root, "suites", name), "w") as handle:
            handle.write(text)
    with open(os.path.join(root, "suites", "expectations", f"vllm_ascend-{vllm_ascend_version}.toml"), "w") as handle:
        handle.write(f'sut = "vllm_ascend"\nrelease = "{vllm_ascend_version}"\n\n# moe\n[[expectation]]\n'
                     f'test = "{SUT}::test_known_divergence"\nmatch = "^vllm_ascend: combine drops the last row$"\n'
                     f'finding = "combine drops the last row"\n'
                     f'reference = "vllm_ascend/ops/fused_moe (tiny test)"\n')
    return root


def cli(root: str, *args: str, env: dict | None = None, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess:
    """``ascend-conformance`` in a subprocess that imports the snapshot in ``root`` (not as an xdist worker)."""
    environment = {k: v for k, v in os.environ.items()
                   if k != BREAK and not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    environment.update(PYTHONPATH=root, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ascend_conformance", *args], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def cli_main(*args: str) -> int:
    """The command in this process (its bad-input paths never start pytest)."""
    try:
        return main(list(args))
    except SystemExit as exit_:  # argparse's own errors
        return int(exit_.code)


def _installed_vllm_ascend() -> str:
    reason = stack.unavailable_reason("vllm_ascend")
    if reason:
        pytest.skip(f"cpu-reference judges vLLM and vllm-ascend: {reason}")
    return stack.inspect()["vllm_ascend"].version


def _once(tmp_path_factory, name: str, make) -> dict:
    """``make(directory) -> dict`` once for the whole session, xdist workers included (the workers share the
    parent of their temporary directories): later callers read the JSON the first one left."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory, done = shared / f"acceptance-{name}", shared / f"acceptance-{name}.json"
    with FileLock(str(shared / f"acceptance-{name}.lock")):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            done.write_text(json.dumps(make(str(directory))))
    return json.loads(done.read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The small checkout with its cpu-reference list written and its suite version released."""
    version = _installed_vllm_ascend()

    def make(root):
        build_tiny_checkout(root, version)
        written = cli(root, "acceptance", "list", "--profile", "cpu-reference", "--write")
        released = cli(root, "acceptance", "release")
        return {"root": root, "setup": [written.returncode, released.returncode],
                "output": written.stdout + written.stderr + released.stdout + released.stderr}

    made = _once(tmp_path_factory, "tiny", make)
    assert made["setup"] == [0, 0], made["output"]
    return made["root"]


def _bundle(tmp_path_factory, tiny: str, name: str, workers: str, env: dict | None = None) -> tuple[str, dict]:
    def make(directory):
        out = os.path.join(directory, f"{name}.tar.gz")
        done = cli(tiny, "acceptance", "run", "--profile", "cpu-reference", "--out", out, "--workers", workers, env=env)
        return {"path": out, "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    made = _once(tmp_path_factory, name, make)
    assert os.path.exists(made["path"]), made["stdout"][-3000:] + made["stderr"]
    return made["path"], made


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory, tiny):
    return _bundle(tmp_path_factory, tiny, "good", "2")


@pytest.fixture(scope="module")
def broken_bundle(tmp_path_factory, tiny):
    return _bundle(tmp_path_factory, tiny, "broken", "0", env={BREAK: "1"})


def verify_lines(tiny: str, path: str) -> tuple[int, list[str]]:
    done = cli(tiny, "acceptance", "verify", path, "--all")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, done.stdout.splitlines()


def in_process_verify(tiny: str, path: str) -> verify.Report:
    """verify against the small checkout's lists and releases, in this process (cheap for the tampering)."""
    local = checkout_mod.Checkout(tiny, os.path.join(tiny, "ascend_conformance"),
                                  os.path.join(tiny, checkout_mod.PLUGIN_PACKAGE))
    return verify.verify(path, local)


def problems(report: verify.Report) -> list[str]:
    return [f"{kind}: {text}" for kind, text in report.problems]


# -- rewriting a bundle ---------------------------------------------------------------------------------

def read_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isfile()}


def write_members(path: str, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tampered(source: str, target: str, edit) -> str:
    members = read_members(source)
    edit(members)
    return write_members(target, members)


def edit_records(members: dict[str, bytes], nodeid: str, change) -> None:
    """Apply ``change(record) -> record or None`` (None drops it) to ``nodeid`` in results.json and results/."""
    document = json.loads(members["results.json"])
    document["tests"] = [r for r in (change(dict(t)) if t["nodeid"] == nodeid else t for t in document["tests"])
                         if r is not None]
    members["results.json"] = json.dumps(document).encode()
    for name in [n for n in members if n.startswith("results/") and n.endswith(".jsonl")]:
        lines = []
        for line in members[name].decode().splitlines():
            record = json.loads(line)
            if record["nodeid"] == nodeid:
                record = change(record)
            if record is not None:
                lines.append(json.dumps(record))
        members[name] = ("\n".join(lines) + "\n").encode() if lines else b""


# -- the list -------------------------------------------------------------------------------------------

def test_list_write_selects_by_the_profile_rules(tiny):
    listed = mustpass.read_list(os.path.join(tiny, "acceptance", "mustpass", "0.1.0", "cpu-reference.txt"))
    assert (listed.profile, listed.version) == ("cpu-reference", "0.1.0")
    assert list(listed.tests) == LISTED  # not the full-tier test, not the harness-area test
    release = manifest.read_release(os.path.join(tiny, "acceptance", "releases", "0.1.0.json"))
    assert release["profiles"] == ["cpu-reference"]
    assert "acceptance/mustpass/0.1.0/cpu-reference.txt" in release["files"]
    assert f"{SUT}" in release["files"] and "fixtures/plugin.py" in release["files"]


def test_a_test_added_later_is_not_in_the_list_and_a_vanished_one_breaks_it(tiny, tmp_path):
    """On a copy of the small checkout: a test added after the list was written is shown as not in the list,
    and is no problem; a listed test renamed away makes the list unrunnable (exit 1, named). The committed
    list stays as it was."""
    root = str(tmp_path / "copy")
    shutil.copytree(tiny, root)
    path = os.path.join(root, "acceptance", "mustpass", "0.1.0", "cpu-reference.txt")
    before = open(path).read()
    with open(os.path.join(root, "suites", "test_eplb_added_later.py"), "w") as handle:
        handle.write("def test_new():\n    pass\n")
    sut_suite = os.path.join(root, "suites", "test_sut_moe_tiny.py")
    with open(sut_suite) as handle:
        text = handle.read()
    with open(sut_suite, "w") as handle:
        handle.write(text.replace("def test_agrees", "def test_renamed"))
    checked = cli(root, "acceptance", "list", "--profile", "cpu-reference", "--check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert "not in the list: suites/test_eplb_added_later.py::test_new" in lines
    assert f"not in the list: {SUT}::test_renamed" in lines
    assert f"listed, not selected today: {SUT}::test_agrees" in lines
    assert "acceptance/mustpass/0.1.0/cpu-reference.txt: 5 listed tests selected today, 2 not in the list, " \
           "1 listed but not selected" in lines
    assert open(path).read() == before


def test_list_write_is_refused_for_a_released_version(tiny, capsys):
    assert cli_main("acceptance", "list", "--profile", "cpu-reference", "--write", "--checkout", tiny) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "suite 0.1.0 is released" in error and "frozen" in error


# -- run and verify -------------------------------------------------------------------------------------

def test_run_writes_a_bundle_that_verify_accepts(tiny, good_bundle):
    path, done = good_bundle
    assert done["returncode"] == 0, done["stdout"][-4000:] + done["stderr"]
    assert "verdict  ACCEPTABLE" in done["stdout"]
    assert "[100%]" in done["stdout"]  # pytest's progress reached the terminal
    code, lines = verify_lines(tiny, path)
    assert code == 0, "\n".join(lines)
    summary = "\n".join(lines)
    assert "6 tests; 4 passed, 1 xfailed (known divergences), 1 skipped (allowed)" in summary
    assert "files match the release manifest" in summary
    names = set(read_members(path))
    for member in ("bundle.json", "manifest.json", "mustpass.txt", "profile.json", "environment.json",
                   "results.json", "junit.xml", "console.log", "index.html",
                   f"expectations/vllm_ascend-{stack.inspect()['vllm_ascend'].version}.toml"):
        assert member in names, member
    assert any(n.startswith("allure-results/") and n.endswith("-result.json") for n in names)
    assert any(n.startswith("results/") and n.endswith("-finished.json") for n in names)
    environment = json.loads(read_members(path)["environment.json"])
    assert set(verify.REQUIRED_ENVIRONMENT) <= set(environment)
    assert "test_full_tier_only" not in read_members(path)["results.json"].decode()  # exactly the list ran


def test_failures_and_unallowed_skips_are_rejected_naming_the_test(tiny, broken_bundle):
    path, done = broken_bundle
    assert done["returncode"] == 1
    code, lines = verify_lines(tiny, path)
    assert code == 1
    assert any(line.startswith(f"failed: {TOPOLOGY}::test_breaks_when_told: ") for line in lines), lines
    assert (f"skipped: {TOPOLOGY}::test_skips_when_told: vllm not installed here (not a skip profile "
            f"cpu-reference allows)") in lines
    assert "verdict  NOT ACCEPTABLE: 2 problems" in lines


def test_a_failed_result_edited_to_passed_is_caught_by_its_junit_and_allure_counterparts(tiny, broken_bundle, tmp_path):
    nodeid = f"{TOPOLOGY}::test_breaks_when_told"

    def to_passed(record):
        record.update(outcome="passed", reason="", longrepr="")
        return record

    path = tampered(broken_bundle[0], str(tmp_path / "edited.tar.gz"), lambda m: edit_records(m, nodeid, to_passed))
    lines = problems(in_process_verify(tiny, path))
    assert f"junit: junit.xml says failed, results.json says passed: {nodeid}" in lines
    assert f"allure: allure-results says failed, results.json says passed: {nodeid}" in lines
    assert not any(line.startswith(f"failed: {nodeid}") for line in lines)


def test_results_json_edited_alone_disagrees_with_the_records(tiny, broken_bundle, tmp_path):
    nodeid = f"{TOPOLOGY}::test_breaks_when_told"

    def edit(members):
        document = json.loads(members["results.json"])
        for test in document["tests"]:
            if test["nodeid"] == nodeid:
                test["outcome"] = "passed"
        members["results.json"] = json.dumps(document).encode()

    lines = problems(in_process_verify(tiny, tampered(broken_bundle[0], str(tmp_path / "e.tar.gz"), edit)))
    assert f"results: results.json says passed, its record in results/ says failed: {nodeid}" in lines


def test_a_mustpass_test_with_its_records_removed_is_missing(tiny, good_bundle, tmp_path):
    nodeid = f"{SUT}::test_agrees"
    path = tampered(good_bundle[0], str(tmp_path / "removed.tar.gz"), lambda m: edit_records(m, nodeid, lambda r: None))
    lines = problems(in_process_verify(tiny, path))
    assert f"missing: {nodeid} has no result" in lines


def test_a_changed_suite_file_is_a_modified_suite(tiny, good_bundle, tmp_path):
    def edit(members):
        document = json.loads(members["manifest.json"])
        document["files"][TOPOLOGY] = "0" * 64
        members["manifest.json"] = json.dumps(document).encode()

    lines = problems(in_process_verify(tiny, tampered(good_bundle[0], str(tmp_path / "m.tar.gz"), edit)))
    assert f"modified suite: these files differ from release 0.1.0: {TOPOLOGY} (changed)" in lines


def test_an_interrupted_session_is_rejected(tiny, good_bundle, tmp_path):
    def drop_completion_mark(members):
        for name in [n for n in members if n.endswith("-finished.json")]:
            del members[name]

    def exit_interrupted(members):
        for name in [n for n in members if n.endswith("-finished.json")]:
            members[name] = json.dumps(dict(json.loads(members[name]), exitstatus=2)).encode()

    killed = tampered(good_bundle[0], str(tmp_path / "k.tar.gz"), drop_completion_mark)
    killed = problems(in_process_verify(tiny, killed))
    assert any(line.startswith("session: session ") and line.endswith(
        "was interrupted: it has no completion mark (killed, or still running)") for line in killed), killed
    stopped = problems(in_process_verify(tiny, tampered(good_bundle[0], str(tmp_path / "i.tar.gz"), exit_interrupted)))
    assert any(line.endswith("was interrupted: pytest exit status 2 (interrupted)") for line in stopped), stopped


def test_a_skip_turned_from_an_allowed_reason_to_another_is_rejected(tiny, good_bundle, tmp_path):
    nodeid = f"{TOPOLOGY}::test_golden_vs_real_op"

    def other_reason(record):
        record["reason"] = "full tier: run with --full (accelerator hosts)"
        return record

    path = tampered(good_bundle[0], str(tmp_path / "s.tar.gz"), lambda m: edit_records(m, nodeid, other_reason))
    lines = problems(in_process_verify(tiny, path))
    assert (f"skipped: {nodeid}: full tier: run with --full (accelerator hosts) (not a skip profile cpu-reference "
            f"allows)") in lines


def test_an_xfail_needs_a_bundled_expectation(tiny, good_bundle, tmp_path):
    def drop(members):
        for name in [n for n in members if n.startswith("expectations/")]:
            del members[name]

    lines = problems(in_process_verify(tiny, tampered(good_bundle[0], str(tmp_path / "x.tar.gz"), drop)))
    expected = f"xfailed: {SUT}::test_known_divergence: xfailed, but no bundled expectation"
    assert any(line.startswith(expected) for line in lines), lines


def test_a_shortened_mustpass_list_is_rejected(tiny, good_bundle, tmp_path):
    def shorten(members):
        members["mustpass.txt"] = "\n".join(line for line in members["mustpass.txt"].decode().splitlines()
                                            if not line.endswith("test_breaks_when_told")).encode()

    lines = problems(in_process_verify(tiny, tampered(good_bundle[0], str(tmp_path / "l.tar.gz"), shorten)))
    listed = "acceptance/mustpass/0.1.0/cpu-reference.txt"
    assert any(line.startswith(f"mustpass list: the bundle's mustpass.txt is not {listed}: 1 test(s) dropped")
               for line in lines), lines
    assert f"modified suite: the bundle's mustpass.txt is not the {listed} its manifest hashed" in lines


def test_an_environment_that_does_not_fit_the_profile_is_rejected(tiny, good_bundle, tmp_path):
    def edit(members):
        environment = json.loads(members["environment.json"])
        environment.update(platform="npu", vllm_ascend="0.9.9")
        del environment["firmware"]
        members["environment.json"] = json.dumps(environment).encode()

    lines = problems(in_process_verify(tiny, tampered(good_bundle[0], str(tmp_path / "env.tar.gz"), edit)))
    assert "environment: environment.json names no firmware" in lines
    assert "environment: platform npu: profile cpu-reference runs on platform cpu" in lines
    assert any(line.startswith("environment: results name vllm_ascend ")
               and line.endswith("the environment has vllm_ascend 0.9.9") for line in lines), lines


def test_an_unreleased_suite_version_is_rejected(tiny, good_bundle, tmp_path):
    local = checkout_mod.Checkout(tiny, os.path.join(tiny, "ascend_conformance"),
                                  os.path.join(tiny, checkout_mod.PLUGIN_PACKAGE))
    report = verify.verify(good_bundle[0], local, releases_dir=str(tmp_path / "no-releases"))
    lines = problems(report)
    assert any(line.startswith("modified suite: suite 0.1.0 is not a released version: no ") for line in lines)


# -- bad input: one line, exit 2 ------------------------------------------------------------------------

def test_bad_input_is_one_line(tiny, tmp_path, capsys):
    not_a_bundle = tmp_path / "notes.txt"
    not_a_bundle.write_text("hello\n")
    bare = write_members(str(tmp_path / "bare.tar.gz"), {"results.json": b"{}"})
    cases = {
        ("acceptance", "run", "--profile", "npu-a9"):
            "error: unknown profile 'npu-a9': choose one of cpu-reference, npu-a2, npu-a3",
        ("acceptance", "list", "--profile", "gpu"): "error: unknown profile 'gpu'",
        ("acceptance", "verify", str(tmp_path / "missing.tar.gz")):
            f"error: {tmp_path / 'missing.tar.gz'}: no such file",
        ("acceptance", "verify", str(not_a_bundle)):
            f"error: {not_a_bundle} is not an acceptance bundle: not a readable tar.gz",
        ("acceptance", "verify", bare): f"error: {bare} is not an acceptance bundle: it has no bundle.json",
        ("acceptance", "run", "--profile", "cpu-reference", "--out", str(tmp_path / "no" / "b.tar.gz")):
            f"error: --out {tmp_path / 'no' / 'b.tar.gz'}: directory {tmp_path / 'no'} does not exist",
        ("acceptance", "run", "--profile", "npu-a2"): "error: no mustpass list for profile npu-a2 of suite 0.1.0",
        ("acceptance", "profiles", "--checkout", str(tmp_path)):
            f"error: --checkout {tmp_path}: no suites/ directory there",
        ("acceptance", "run"):
            "error: ascend-conformance acceptance run: the following arguments are required: --profile",
    }
    for args, start in cases.items():
        checkout = () if "--checkout" in args else ("--checkout", tiny)
        assert cli_main(*args, *checkout) == 2, args
        out, err = capsys.readouterr()
        assert err.startswith(start) and err.count("\n") == 1, (args, err)
        assert out == "", (args, out)
    assert not os.path.exists(tmp_path / "no")


# -- the real suite ---------------------------------------------------------------------------------------

def snapshot_checkout(root: str) -> str:
    """This checkout's package, plugin, suites and mustpass lists, copied into ``root``."""
    _snapshot_package(root)
    shutil.copytree(os.path.join(REPO, "suites"), os.path.join(root, "suites"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(os.path.join(REPO, "acceptance", "mustpass"), os.path.join(root, "acceptance", "mustpass"))
    return root


@pytest.mark.full
def test_cpu_reference_acceptance_of_the_whole_suite(tmp_path):
    """The Done-when of issue 12: `acceptance run --profile cpu-reference` of this suite's committed list
    produces a bundle `verify` accepts (on a snapshot of the tree, released there)."""
    _installed_vllm_ascend()
    root = snapshot_checkout(str(tmp_path / "checkout"))
    released = cli(root, "acceptance", "release")
    assert released.returncode == 0, released.stderr
    out = str(tmp_path / "cpu-reference.tar.gz")
    done = cli(root, "acceptance", "run", "--profile", "cpu-reference", "--out", out, timeout=6 * 3600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr
    assert cli(root, "acceptance", "verify", out).returncode == 0
