"""torchrun mode: pytest itself runs as every rank of a 2-process `torch.distributed.run --standalone`.

The inner session (written to tmp_path) checks `world(2).run(fn)` in place (rank_context() fields, an
all_reduce, results gathered to every rank), that `world(4)` skips naming both sizes, that a rank that
raises fails the test on every rank naming that rank, and that the world still works afterwards. The
plugin is loaded through its pytest11 entry point (the package is installed in editable mode), as it
would be on a multi-node job.

Each inner rank records its test outcomes into its own file as each test finishes (a small conftest),
so the checks below never depend on how the launcher interleaves or cuts the ranks' console output.
The same conftest orders the end of the session so that a second junit writer cannot hide:
rank 1 finishes only after rank 0's junit file is complete (had rank 1 written one too, it would
overwrite rank 0's and carry rank 1's properties), and rank 0 exits only after rank 1 is done (torchrun
kills the remaining workers as soon as one exits with failed tests).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.events import HANG_GUARD

RUN_TIMEOUT = HANG_GUARD  # torchrun ends when its ranks do; this only ends a hang


def _torchrun_unavailable() -> str | None:
    try:
        import torch.distributed as dist
    except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
        return f"torch.distributed not importable: {exc}"
    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if importlib.util.find_spec("torch.distributed.run") is None:
        return "torch.distributed.run (torchrun) is unavailable in this torch build"
    if not dist.is_gloo_available():
        return "torchrun self-test needs the gloo backend, missing from this torch build"
    return None


pytestmark = pytest.mark.skipif(_torchrun_unavailable() is not None, reason=str(_torchrun_unavailable()))
pytest_plugins = ["pytester"]

INNER_TESTS = '''
import json
import os

import pytest
import torch
import torch.distributed as dist

from ascend_conformance.harness import rank_context


def context_and_all_reduce():
    ctx = rank_context()
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    return {"rank": ctx.rank, "world_size": ctx.world_size, "local_rank": ctx.local_rank, "device": ctx.device,
            "device_index": ctx.device_index, "platform": ctx.platform, "backend": ctx.backend,
            "test_id": ctx.test_id, "seed": ctx.seed, "world_seed": ctx.world_seed, "sum": t.item(),
            "pid": os.getpid()}


def raise_on_rank_1():
    if rank_context().rank == 1:
        raise ValueError("deliberate failure on rank 1")
    return rank_context().rank


def test_world2_runs_in_place(world, record_property):
    results = world(2).run(context_and_all_reduce)
    record_property("rank", os.environ["RANK"])
    record_property("results", json.dumps(results))
    me = int(os.environ["RANK"])
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["local_rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 for r in results), results
    assert results[me]["pid"] == os.getpid(), "torchrun mode must run the function in this process"
    assert len({r["pid"] for r in results}) == 2


def test_world4_skips(world, record_property):
    record_property("rank", os.environ["RANK"])
    world(4).run(context_and_all_reduce)
    raise AssertionError("world(4) must have skipped in a 2-rank torchrun world")


def test_rank1_raises(world, record_property):
    record_property("rank", os.environ["RANK"])
    world(2).run(raise_on_rank_1)


def test_world_still_works_after_a_failure(world, record_property):
    record_property("rank", os.environ["RANK"])
    assert [r["sum"] for r in world(2).run(context_and_all_reduce)] == [3.0, 3.0]
'''

INNER_CONFTEST = '''
import json
import os
import time

import pytest

RANK = os.environ["RANK"]
OUT = os.environ["TORCHRUN_SELFTEST_DIR"]
JUNIT = os.environ["TORCHRUN_SELFTEST_JUNIT"]
BOUND = 1800.0  # a hang guard only (tests/events.py HANG_GUARD): the wait is for an event


def _wait(predicate, what):
    deadline = time.monotonic() + BOUND
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {RANK}: timed out waiting for {what}")
        time.sleep(0.05)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        with open(os.path.join(OUT, f"outcomes-rank{RANK}.jsonl"), "a") as handle:
            handle.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                                     "longrepr": str(report.longrepr or "")}) + "\\n")


def _junit_complete():
    try:
        with open(JUNIT) as handle:
            return handle.read().rstrip().endswith("</testsuites>")
    except OSError:
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    if RANK != "0":
        _wait(_junit_complete, "rank 0 to write its junit file")


def pytest_unconfigure(config):
    if RANK == "0":
        _wait(lambda: os.path.exists(os.path.join(OUT, "rank1-done")), "rank 1 to finish")
    else:
        open(os.path.join(OUT, f"rank{RANK}-done"), "w").close()
'''


class TorchrunResult:
    def __init__(self, returncode: int, output: str, out_dir: str, junit: str):
        self.returncode, self.output, self.out_dir, self.junit = returncode, output, out_dir, junit

    def outcomes(self, rank: int) -> dict:
        path = os.path.join(self.out_dir, f"outcomes-rank{rank}.jsonl")
        assert os.path.exists(path), f"rank {rank} recorded no outcome; torchrun output:\n{self.output}"
        with open(path) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        return {r["nodeid"].split("::")[-1]: r for r in records}


def _run_torchrun(tmp_path, *pytest_args) -> TorchrunResult:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "test_in_torchrun.py").write_text(INNER_TESTS)
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    junit = tmp_path / "junit.xml"  # the same path for every rank: nothing rank-specific in it
    env = dict(os.environ)
    for var in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "RANK", "WORLD_SIZE",
                "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.update(TORCHRUN_SELFTEST_DIR=str(out_dir), TORCHRUN_SELFTEST_JUNIT=str(junit))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--tee", "3", "--log-dir", str(tmp_path / "torchrun-logs"),
               "-m", "pytest", "test_in_torchrun.py", "-p", "no:cacheprovider", "-q", "-rA", "--platform", "cpu",
               "--rank-timeout", str(HANG_GUARD), "--junitxml", str(junit), *pytest_args]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {RUN_TIMEOUT:g}s:\n{output.decode(errors='replace')[-5000:]}",
                    pytrace=False)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's workers, should any have survived it
        except ProcessLookupError:
            pass
    return TorchrunResult(proc.returncode, output.decode(errors="replace"), str(out_dir), str(junit))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> TorchrunResult:
    return _run_torchrun(tmp_path_factory.mktemp("torchrun-mixed"))


def test_a_clean_torchrun_session_passes_on_both_ranks(tmp_path):
    result = _run_torchrun(tmp_path, "-k", "not rank1_raises")
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.output[-5000:]}"
    for rank in (0, 1):
        outcomes = result.outcomes(rank)
        assert {name: r["outcome"] for name, r in outcomes.items()} == {
            "test_world2_runs_in_place": "passed", "test_world4_skips": "skipped",
            "test_world_still_works_after_a_failure": "passed"}, result.output[-5000:]
        assert re.search(rf"\[default{rank}\]:.*2 passed, 1 skipped", result.output), result.output[-5000:]


def test_world_of_the_launched_size_runs_in_place_on_every_rank(mixed_run):
    for rank in (0, 1):
        outcome = mixed_run.outcomes(rank)["test_world2_runs_in_place"]
        assert outcome["outcome"] == "passed", f"rank {rank}: {outcome['longrepr']}"
    # rank 0's junit carries the results it gathered: rank_context() of both ranks and the all_reduce
    results = json.loads(_properties(mixed_run, "test_world2_runs_in_place")["results"])
    assert [(r["rank"], r["local_rank"], r["world_size"]) for r in results] == [(0, 0, 2), (1, 1, 2)]
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert [(r["platform"], r["backend"], r["device"]) for r in results] == [("cpu", "gloo", "cpu")] * 2
    assert [r["device_index"] for r in results] == [0, 1]
    assert len({r["pid"] for r in results}) == 2
    assert results[0]["world_seed"] == results[1]["world_seed"] and results[0]["seed"] != results[1]["seed"]
    assert all(r["test_id"].endswith("test_world2_runs_in_place") for r in results)


def test_other_world_sizes_skip_naming_both_sizes(mixed_run):
    for rank in (0, 1):
        outcome = mixed_run.outcomes(rank)["test_world4_skips"]
        assert outcome["outcome"] == "skipped", f"rank {rank}: {outcome}"
        reason = outcome["longrepr"]
        assert re.search(r"\b2\b", reason) and re.search(r"\b4\b", reason), \
            f"rank {rank}: skip reason must name the launched size (2) and the requested one (4): {reason}"


def test_a_raising_rank_fails_the_test_on_every_rank_naming_it(mixed_run):
    assert mixed_run.returncode != 0, "a failed test on the ranks must fail the torchrun job"
    for rank in (0, 1):
        outcome = mixed_run.outcomes(rank)["test_rank1_raises"]
        assert outcome["outcome"] == "failed", f"rank {rank}: {outcome}"
        assert "rank 1 of 2 raised builtins.ValueError: deliberate failure on rank 1" in outcome["longrepr"], \
            f"rank {rank} must name rank 1 and its error: {outcome['longrepr'][-3000:]}"
        assert "rank 0 of 2 raised" not in outcome["longrepr"], f"rank {rank} blames rank 0"
        assert re.search(rf"\[default{rank}\]:FAILED test_in_torchrun.py::test_rank1_raises", mixed_run.output), \
            f"rank {rank}'s console output lacks the failure:\n{mixed_run.output[-5000:]}"
        after = mixed_run.outcomes(rank)["test_world_still_works_after_a_failure"]
        assert after["outcome"] == "passed", f"rank {rank}: the world is unusable after a failure: {after}"


def test_only_rank_0_writes_the_junit_file(mixed_run):
    assert os.path.exists(mixed_run.junit), f"no junit file was written:\n{mixed_run.output[-5000:]}"
    root = ET.parse(mixed_run.junit).getroot()
    cases = root.findall(".//testcase")
    names = sorted(case.get("name") for case in cases)
    assert names == sorted(["test_world2_runs_in_place", "test_world4_skips", "test_rank1_raises",
                            "test_world_still_works_after_a_failure"]), \
        f"the junit file must count the tests of one rank exactly once: {names}"
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    writers = {prop.get("value") for prop in root.iter("property") if prop.get("name") == "rank"}
    assert writers == {"0"}, f"the junit file was written by rank(s) {sorted(writers)}, must be rank 0 only"


def _properties(result: TorchrunResult, test_name: str) -> dict:
    root = ET.parse(result.junit).getroot()
    for case in root.iter("testcase"):
        if case.get("name") == test_name:
            return {prop.get("name"): prop.get("value") for prop in case.iter("property")}
    raise AssertionError(f"{test_name} not in the junit file")


# --- when torchrun mode switches on ---------------------------------------------------------------------
POD = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599"}  # Volcano / k8s


@pytest.mark.parametrize("extra, expected", [
    ({}, False),  # a Kubernetes / Volcano pod: RANK and WORLD_SIZE for every process
    ({"TORCHELASTIC_RUN_ID": "job-1"}, True),
    ({"LOCAL_WORLD_SIZE": "8"}, True),
    ({"GROUP_RANK": "0"}, True),
])
def test_torchrun_mode_needs_torchrun_s_own_variables(extra, expected):
    from ascend_conformance.harness.torchrun import launched_by_torchrun

    assert launched_by_torchrun({**POD, **extra}) is expected
    assert launched_by_torchrun(extra) is False, "without RANK / WORLD_SIZE there is no launched world"


POD_TESTS = '''
import os


def pid():
    return os.getpid()


def test_pool(world):
    pids = world(2).run(pid)
    assert len(set(pids)) == 2 and os.getpid() not in pids, "the world must come from a warm pool"
'''


def _pytest_env(monkeypatch, variables: dict) -> None:
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "GROUP_RANK", "LOCAL_RANK", "PYTEST_XDIST_WORKER",
                 "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_a_pod_with_rank_and_world_size_runs_warm_pools_and_writes_its_results(pytester, monkeypatch, tmp_path):
    _pytest_env(monkeypatch, POD)
    pytester.makepyfile(test_pod=POD_TESTS)
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess("--platform", "cpu", f"--results-dir={results}", "-rs")
    result.assert_outcomes(passed=1)
    assert any(name.endswith(".jsonl") for name in os.listdir(results)), \
        "a pod's RANK=1 must not turn the results off as a torchrun rank other than 0 would"


IN_PLACE_TESTS = '''
import os


def pid():
    return os.getpid()


def test_in_place(world):
    assert world(1).run(pid) == [os.getpid()], "under --torchrun the world is this process"
'''


def test_explicit_torchrun_option_uses_the_launched_world(pytester, monkeypatch):
    import socket

    with socket.socket() as probe:  # a free port for the one-rank env:// rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _pytest_env(monkeypatch, {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    pytester.makepyfile(test_launched=IN_PLACE_TESTS)
    result = pytester.runpytest_subprocess("--platform", "cpu", "--torchrun", "--results-dir=")
    result.assert_outcomes(passed=1)


def test_explicit_torchrun_option_without_a_launched_world_is_a_usage_error(pytester, monkeypatch):
    _pytest_env(monkeypatch, {"RANK": "0", "WORLD_SIZE": "2"})
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--torchrun")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert errors == ["ERROR: --torchrun needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment "
                      "(set by the launcher); missing: MASTER_ADDR, MASTER_PORT"], result.stderr.lines
