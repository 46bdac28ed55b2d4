"""`python -m ascend_conformance moe`: the CLI contract of docs/cli.md.

One JSON summary on stdout with the max error against the dense oracle; ``--dump DIR`` writes
``DIR/rank{r}.pt`` with ``x``, ``topk_ids``, ``topk_weights``, global ``w13`` / ``w2`` and ``out`` — and
reloading them reproduces ``out`` through the oracle; bad arguments exit 2 with one ``error:`` line.
Two real runs (fresh worlds, ~10 s each here) are shared by the tests of this module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ascend_conformance import cli
from ascend_conformance.commands import moe as moe_command
from ascend_conformance.tolerance import Kind, assert_close, tolerance
from ascend_conformance.moe.oracle import dense_moe
from ascend_conformance.moe.scenario import Scenario
from tests.events import HANG_GUARD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMP_KEYS = {"x", "topk_ids", "topk_weights", "w13", "w2", "out"}

# (name, arguments without --dump): one run with seeded uneven counts, one with the extra flags.
RUNS = {
    "mc2-seeded-counts": ["--method", "mc2", "--world-size", "2", "--experts", "8", "--top-k", "2", "--tokens", "6",
                          "--hidden", "8", "--intermediate", "4", "--dtype", "bfloat16", "--seed", "7"],
    "alltoall-dp2tp2-expert-map": ["--method", "alltoall", "--world-size", "4", "--dp", "2", "--tp", "2",
                                   "--experts", "8", "--top-k", "2", "--tokens", "5", "--hidden", "8",
                                   "--intermediate", "4", "--dtype", "float16", "--seed", "3",
                                   "--tokens-per-dp", "5,0", "--placement", "scattered"],
}


def _cli(args: list[str], timeout: float = HANG_GUARD) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ascend_conformance", "moe", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=sorted(RUNS))
def cli_run(request, tmp_path_factory):
    """(arguments, completed process, dump directory) of one real CLI run."""
    dump = tmp_path_factory.mktemp("moe-dump") / "case"
    args = RUNS[request.param]
    return args, _cli([*args, "--dump", str(dump)]), dump


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _scenario(args: list[str]) -> Scenario:
    """The scenario the arguments describe, parsed the way the CLI parses them."""
    return moe_command.scenario_from_args(cli.build_parser().parse_args(["moe", *args]))


def test_prints_one_json_summary(cli_run):
    args, proc, dump = cli_run
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    scenario = _scenario(args)
    assert summary["method"] == _option(args, "--method") and summary["world_size"] == scenario.world_size
    assert (summary["dp"], summary["tp"]) == (scenario.dp, scenario.tp)
    counts = summary["tokens_per_dp"]
    assert len(counts) == scenario.dp and max(counts) == int(_option(args, "--tokens")) and min(counts) >= 0
    assert len(set(counts)) > 1, f"both runs are chosen to hold uneven counts, got {counts}"
    assert summary["ok"] is True and summary["failing_ranks"] == []
    rtol, atol = tolerance(getattr(torch, _option(args, "--dtype")), Kind.ACCUMULATED)
    assert (summary["rtol"], summary["atol"]) == (rtol, atol)
    assert 0.0 <= summary["max_abs_err"] <= atol + rtol * 10  # outputs here are O(1)
    assert summary["ops"] == "golden" and summary["platform"] == "cpu" and summary["sut"] == "reference"
    keys = list(summary)
    assert keys[keys.index("ok") + 1:keys.index("ok") + 3] == ["sut", "ops"], keys
    assert summary["dump"] == str(dump)
    assert summary["repro"] == scenario.repro()


def test_dump_writes_the_contract_files(cli_run):
    args, proc, dump = cli_run
    assert proc.returncode == 0, proc.stderr
    world, tp = int(_option(args, "--world-size")), int(args[args.index("--tp") + 1]) if "--tp" in args else 1
    experts, top_k = int(_option(args, "--experts")), int(_option(args, "--top-k"))
    hidden, inter = int(_option(args, "--hidden")), int(_option(args, "--intermediate"))
    dtype = getattr(torch, _option(args, "--dtype"))
    counts = json.loads(proc.stdout)["tokens_per_dp"]
    assert sorted(os.listdir(dump)) == sorted([f"rank{r}.pt" for r in range(world)] + ["summary.json"])
    assert [name for name in os.listdir(dump.parent) if name != dump.name] == [], "staging directories left behind"
    loaded = [torch.load(dump / f"rank{r}.pt") for r in range(world)]
    for rank, data in enumerate(loaded):
        n = counts[rank // tp]  # rank = d·TP + t
        assert set(data) == DUMP_KEYS, f"rank {rank}: keys {sorted(data)}"
        shapes = {key: (list(value.shape), value.dtype) for key, value in data.items()}
        assert shapes == {"x": ([n, hidden], dtype), "topk_ids": ([n, top_k], torch.int32),
                          "topk_weights": ([n, top_k], torch.float32), "w13": ([experts, 2 * inter, hidden], dtype),
                          "w2": ([experts, hidden, inter], dtype), "out": ([n, hidden], dtype)}, f"rank {rank}"
        assert torch.equal(data["w13"], loaded[0]["w13"]) and torch.equal(data["w2"], loaded[0]["w2"])
        assert torch.equal(data["x"], loaded[rank - rank % tp]["x"]), "TP ranks of a DP group hold the same tokens"


def test_reloaded_dump_reproduces_out_through_the_oracle(cli_run):
    args, proc, dump = cli_run
    assert proc.returncode == 0, proc.stderr
    for rank in range(int(_option(args, "--world-size"))):
        data = torch.load(dump / f"rank{rank}.pt")
        expected = dense_moe(data["x"], data["topk_ids"], data["topk_weights"], data["w13"], data["w2"])
        assert_close(data["out"], expected.to(data["out"].dtype), kind=Kind.ACCUMULATED,
                     what=f"rank {rank} out against the oracle of the dumped inputs")


def test_bad_arguments_exit_2_with_one_error_line():
    proc = _cli(["--method", "alltoall", "--world-size", "4", "--dp", "3", "--experts", "8", "--top-k", "2",
                 "--tokens", "4", "--hidden", "8", "--intermediate", "4", "--dtype", "float32", "--seed", "0"], 120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: dp*tp must equal world_size (EP = the world): dp 3 * tp 1 != 4"]


BASE = {"--method": "mc2", "--world-size": "2", "--experts": "8", "--top-k": "2", "--tokens": "4", "--hidden": "8",
        "--intermediate": "4", "--dtype": "float32", "--seed": "0"}


@pytest.mark.parametrize("change, message", [
    ({"--method": "dummy"}, "argument --method: invalid choice: 'dummy'"),
    ({"--dtype": "float64"}, "argument --dtype: invalid choice: 'float64'"),
    ({"--tokens": "many"}, "argument --tokens: invalid int value: 'many'"),
    ({"--experts": None}, "the following arguments are required: --experts"),
    ({"--tp": "2", "--dp": "2"}, "dp*tp must equal world_size (EP = the world): dp 2 * tp 2 != 2"),
    ({"--top-k": "9"}, "top_k 9 > experts 8: a token picks K distinct experts"),
    ({"--experts": "7"}, "experts 7 must be a multiple of the EP size 2 (world size) without an expert_map"),
    ({"--tokens": "-1"}, "tokens must be a whole number >= 0, got -1"),
    ({"--hidden": "0"}, "hidden must be a whole number >= 1, got 0"),
    ({"--tokens-per-dp": "4,x"}, "--tokens-per-dp must be comma-separated whole numbers, got '4,x'"),
    ({"--tokens-per-dp": "4"}, "tokens_per_dp must list 2 counts >= 0 (one per DP rank), got [4]"),
    ({"--tokens-per-dp": "3,1"}, "tokens 4 must be the largest of tokens_per_dp [3, 1]"),
    ({"--dump": "/nonexistent-dir/case"}, "--dump /nonexistent-dir/case: parent directory /nonexistent-dir does not exist"),
])
def test_bad_arguments_name_the_values(capsys, change, message):
    values = {**BASE, **change}
    argv = ["moe"] + [item for key, value in values.items() if value is not None for item in (key, value)]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_model_sizes_dtype_and_seed_have_defaults_and_the_repro_line_names_them():
    required = ["--method", "mc2", "--world-size", "2", "--experts", "8", "--top-k", "2", "--tokens", "4"]
    scenario = _scenario(required)
    assert (scenario.hidden, scenario.intermediate, scenario.dtype, scenario.seed) == (1024, 256, "bfloat16", 0)
    assert scenario.repro().endswith("--hidden 1024 --intermediate 256 --dtype bfloat16 --seed 0 --dump DIR")
    assert _scenario(scenario.cli_args()) == scenario


def _exit_code(argv: list[str]) -> int:
    """cli.main's exit code: returned for ConfigError, raised as SystemExit by argparse errors."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_dump_into_a_file_path_is_refused(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    argv = ["moe"] + [item for pair in BASE.items() for item in pair] + ["--dump", str(target)]
    assert _exit_code(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --dump {target} exists and is not a directory"]


def _fake_results(scenario: Scenario) -> list[dict]:
    results = []
    for rank in range(scenario.world_size):
        x, ids, weights = scenario.inputs(rank // scenario.tp)
        results.append({"tensors": {"x": x, "topk_ids": ids, "topk_weights": weights, "out": x.clone()}})
    return results


def test_dump_replaces_an_old_one_whole_or_not_at_all(tmp_path, monkeypatch):
    scenario = _scenario([item for pair in BASE.items() for item in pair])
    target = tmp_path / "case"
    target.mkdir()
    (target / "rank0.pt").write_text("old")
    (target / "stale.txt").write_text("old")
    moe_command.write_dump(str(target), scenario, _fake_results(scenario), {"ok": True})
    assert sorted(os.listdir(target)) == ["rank0.pt", "rank1.pt", "summary.json"]
    assert os.listdir(tmp_path) == ["case"]

    calls = []
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        moe_command.write_dump(str(fresh), scenario, _fake_results(scenario), {"ok": True})
    assert not fresh.exists(), "a failed dump left a partial directory"
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        moe_command.write_dump(str(target), scenario, _fake_results(scenario), {"ok": False})
    assert sorted(os.listdir(target)) == ["rank0.pt", "rank1.pt", "summary.json"], "the old dump was damaged"
    assert json.loads((target / "summary.json").read_text()) == {"ok": True}
    assert sorted(os.listdir(tmp_path)) == ["case"], "staging directories left behind"


# -- --sut: the system under test ------------------------------------------------------------------

SUT_BASE = {**BASE, "--method": "alltoall", "--tokens-per-dp": "4,1"}


def _argv(values: dict) -> list[str]:
    return ["moe"] + [item for key, value in values.items() if value is not None for item in (key, value)]


@pytest.mark.parametrize("change, message", [
    ({"--sut": "vllm"}, "--sut must be one of reference, vllm-ascend, got 'vllm'"),
    ({"--sut": "sglang"}, "--sut must be one of reference, vllm-ascend, got 'sglang'"),
    ({"--device-type": "A5"}, "--device-type applies to --sut vllm-ascend only, got --device-type A5 with --sut reference"),
    ({"--expert-map": "eplb"}, "--expert-map applies to --sut vllm-ascend only"),
    ({"--max-num-seqs": "1"}, "--max-num-seqs applies to --sut vllm-ascend only"),
])
def test_sut_arguments_for_the_reference_are_refused_in_one_line(capsys, change, message):
    assert _exit_code(_argv({**SUT_BASE, **change})) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_force_method_for_the_reference_is_refused_in_one_line(capsys):
    assert _exit_code(_argv(SUT_BASE) + ["--force-method"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--force-method applies to --sut vllm-ascend only" in err[0], err


def test_a_sut_that_is_not_installed_is_one_error_line(capsys, monkeypatch):
    from ascend_conformance.sut import stack

    monkeypatch.setattr(stack, "unavailable_reason", lambda name: "vllm_ascend not installed (make setup installs it)")
    assert _exit_code(_argv({**SUT_BASE, "--sut": "vllm-ascend"})) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --sut vllm-ascend: vllm_ascend not installed (make setup installs it)"]


@pytest.fixture
def vllm_ascend_installed():
    from ascend_conformance.sut import VLLM_ASCEND, stack

    from ascend_conformance.sut import bringup

    reason = stack.unavailable_reason(VLLM_ASCEND)
    if reason:
        pytest.skip(reason)
    return bringup.label(VLLM_ASCEND)  # the installed release, as every message names it


@pytest.mark.parametrize("change, message", [
    ({"--placement": "scattered"}, "holds (E + R) / P experts on every EP rank; the scenario placement scattered is uneven"),
    ({"--method": "native_allgather"}, "has no MoE comm method for 'native_allgather'"),
    ({"--expert-map": "round-robin"}, "refuses: expert_map must be one of contiguous, permuted, eplb, eplb-redundant"),
    ({"--device-type": "A9"}, "--device-type must be one of A2, A3, A5, got 'A9'"),
    ({"--expert-map": "permuted"}, "the permuted map is a contract check only (forced)"),
    ({"--max-num-seqs": "0"}, "max_num_seqs must be a whole number >= 1, got 0"),
])
def test_a_configuration_vllm_ascend_refuses_is_one_line_naming_the_release(capsys, vllm_ascend_installed, change,
                                                                             message):
    assert _exit_code(_argv({**SUT_BASE, "--sut": "vllm-ascend", **change})) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if "--device-type" not in change:
        assert err[0].startswith(f"error: {vllm_ascend_installed}"), err


def test_vllm_ascend_run_prints_sut_and_ops_next_to_ok(vllm_ascend_installed, tmp_path):
    """A3 with a runner sized for one request: the MC2 capacity is 1 token, so the release's own selection
    sends the 4-token batch to AlltoAll (on every line)."""
    args = [item for pair in {**SUT_BASE, "--sut": "vllm-ascend", "--device-type": "A3",
                              "--max-num-seqs": "1"}.items() for item in pair]
    proc = _cli([*args, "--dump", str(tmp_path / "case")], timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    keys = list(summary)
    assert keys[keys.index("ok") + 1:keys.index("ok") + 3] == ["sut", "ops"], keys
    assert (summary["ok"], summary["sut"], summary["ops"]) == (True, vllm_ascend_installed, "golden")
    assert (summary["device_type"], summary["comm_class"], summary["expert_map"]) == ("A3", "AlltoAllCommImpl",
                                                                                        "contiguous")
    assert (summary["selected"], summary["reached"], summary["forced"], summary["mc2_tokens_capacity"]) == (
        "alltoall", True, False, 1)
    assert summary["repro"].endswith("--dump DIR --sut vllm-ascend --device-type A3 --max-num-seqs 1")
    data = torch.load(tmp_path / "case" / "rank1.pt")
    expected = dense_moe(data["x"], data["topk_ids"], data["topk_weights"], data["w13"], data["w2"])
    assert_close(data["out"], expected.to(data["out"].dtype), kind=Kind.ACCUMULATED, what="vllm-ascend rank 1 out")
