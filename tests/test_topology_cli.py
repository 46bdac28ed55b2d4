"""`python -m ascend_conformance topology`: the docs/cli.md contract, exercised in a subprocess."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from ascend_conformance.topology import ParallelConfig, build_layout
from tests.events import HANG_GUARD

REPO = pathlib.Path(__file__).resolve().parents[1]


def topology(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ascend_conformance", "topology", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)


@pytest.mark.parametrize("flags, config", [
    (["--world-size", "8", "--tp", "2", "--pp", "2", "--dp", "2"],
     ParallelConfig(world_size=8, tp=2, pp=2, dp=2)),
    (["--world-size", "32", "--tp", "4", "--pp", "2", "--dp", "2", "--pcp", "2", "--otp", "2",
      "--lmhead-tp", "2", "--embed-tp", "1", "--mlp-tp", "2", "--flashcomm2-otp", "2",
      "--layer-sharding", "--dsa-cp", "--pd-tp-ratio", "4", "--pd-head-ratio", "2",
      "--num-head-replica", "2", "--kv-producer"],
     ParallelConfig(world_size=32, tp=4, pp=2, dp=2, pcp=2, otp=2, lmhead_tp=2, embed_tp=1, mlp_tp=2,
                    flashcomm2_otp=2, layer_sharding=True, dsa_cp=True, pd_tp_ratio=4,
                    pd_head_ratio=2, num_head_replica=2, kv_producer=True)),
], ids=["dp2-pp2-tp2", "every-option"])
def test_json_is_one_object_equal_to_build_layout(flags, config):
    result = topology(*flags, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == build_layout(config)
    assert result.stdout.count("\n") == 1  # one object, one line


def test_json_of_the_worked_example():
    result = topology("--world-size", "8", "--tp", "2", "--pp", "2", "--dp", "2", "--json")
    layout = json.loads(result.stdout)
    assert layout["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout["pp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout["ep"] == [[0, 1, 4, 5], [2, 3, 6, 7]]


@pytest.mark.parametrize("flags, message", [
    (["--world-size", "12", "--tp", "2", "--pp", "2", "--dp", "2"],
     "error: world_size 12 is not divisible by dp*pp*pcp*tp = 2*2*1*2 = 8"),
    (["--world-size", "8", "--tp", "2", "--pp", "1", "--dp", "4", "--otp", "3"],
     "error: otp 3 does not divide dp 4: otp groups are chunks of otp consecutive DP indices"),
    (["--world-size", "4", "--tp", "4", "--pp", "1", "--dp", "1", "--flashcomm2-otp", "3"],
     "error: flashcomm2_otp 3 does not divide tp 4"),
    (["--world-size", "4", "--tp", "4", "--pp", "1", "--dp", "1", "--pd-tp-ratio", "3"],
     "error: pd_tp_ratio 3 does not divide tp 4"),
    (["--world-size", "4", "--tp", "0", "--pp", "1", "--dp", "1"],
     "error: tp must be a whole number >= 1, got 0"),
])
def test_bad_config_exits_2_with_one_error_line_and_no_traceback(flags, message):
    result = topology(*flags, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [message]
    assert "Traceback" not in result.stderr


def test_bad_flag_value_is_one_error_line_too():
    result = topology("--world-size", "eight", "--tp", "2", "--pp", "2", "--dp", "2", "--json")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")


def test_human_format_prints_a_table_per_kind():
    result = topology("--world-size", "8", "--tp", "2", "--pp", "2", "--dp", "2", "--otp", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "world 8 = E1 x DP2 x PP2 x PCP1 x TP2, otp 2"
    for kind in build_layout(ParallelConfig(world_size=8, tp=2, pp=2, dp=2, otp=2)):
        assert any(line.startswith(f"{kind}: ") for line in lines), kind
    # The otp table: a header naming count and size, then one row per group in group-rank order.
    start = lines.index("otp: 4 groups of 2 ranks")
    assert [line.split() for line in lines[start + 2:start + 6]] == [
        ["0", "0", "4"], ["1", "1", "5"], ["2", "2", "6"], ["3", "3", "7"]]


def test_check_passes_on_the_reference():
    result = topology("--world-size", "8", "--tp", "2", "--pp", "2", "--dp", "2", "--otp", "2", "--check")
    assert result.returncode == 0, result.stderr
    assert "reference layout: all invariants hold (10 kinds)" in result.stdout


def test_check_of_a_captured_layout_reports_violations_and_exits_1(tmp_path):
    # vllm-ascend's otp groups on DP2 PP2 TP2 (docs/systems_under_test.md), everything else right.
    captured = build_layout(ParallelConfig(world_size=8, tp=2, pp=2, dp=2, otp=2))
    captured["otp"] = [[0, 2], [1, 3], [4, 6], [5, 7]]
    path = tmp_path / "live.json"
    path.write_text(json.dumps(captured))
    result = topology("--world-size", "8", "--tp", "2", "--pp", "2", "--dp", "2", "--otp", "2",
                      "--json", "--check", "--layout", str(path))
    assert result.returncode == 1
    assert json.loads(result.stdout) == build_layout(ParallelConfig(world_size=8, tp=2, pp=2, dp=2, otp=2))
    assert "[crosses_stages] otp group [0, 2] crosses PP stages: rank 0 is in stage 0, rank 2 in stage 1" in (
        result.stderr)
    assert "[group_extra] live otp group [0, 2] is not a reference otp group" in result.stderr


def test_layout_without_check_is_a_usage_error():
    result = topology("--world-size", "2", "--tp", "2", "--pp", "1", "--dp", "1", "--layout", "x.json")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --layout is only used with --check"]


# --- --live: the release's own group construction (docs/systems_under_test.md) ----------------------

def _need_stack():
    from ascend_conformance.sut import stack

    reason = stack.unavailable_reason("vllm_ascend")
    if reason:
        pytest.skip(reason)


def live(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ascend_conformance", "topology", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)


def test_live_check_reports_vllm_ascends_dp2_pp2_tp2_otp2_sharding_layout_as_crossing_pp_stages():
    _need_stack()
    result = live("--live", "vllm-ascend", "--world-size", "8", "--tp", "2", "--pp", "2", "--dp", "2", "--otp", "2",
                  "--layer-sharding", "--check")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("world 8 = E1 x DP2 x PP2 x PCP1 x TP2, otp 2, layer_sharding: as vllm_ascend 0.23")
    for kind in ("otp", "shard_weight"):
        for group, stages in (("[0, 2]", "rank 0 is in stage 0, rank 2 in stage 1"),
                              ("[5, 7]", "rank 5 is in stage 0, rank 7 in stage 1")):
            assert f"  [crosses_stages] {kind} group {group} crosses PP stages: {stages}" in lines
    crossing = {line.split()[1] for line in lines if line.startswith("  [crosses_stages]")}
    assert crossing == {"otp", "shard_weight"}


# One configuration per feature: fine-grained TP with PD (p_tp on a KV producer), and FlashComm2 with sharding.
LIVE_FLAGS = {
    "W4-DP2-TP2-lmhead2-embed2-mlp2-ptp2": (
        ["--world-size", "4", "--tp", "2", "--pp", "1", "--dp", "2", "--lmhead-tp", "2", "--embed-tp", "2",
         "--mlp-tp", "2", "--kv-producer", "--pd-tp-ratio", "2", "--pd-head-ratio", "2"],
        dict(world_size=4, tp=2, pp=1, dp=2, lmhead_tp=2, embed_tp=2, mlp_tp=2, kv_producer=True, pd_tp_ratio=2,
             pd_head_ratio=2)),
    "W4-TP4-fc2o2-sharding": (
        ["--world-size", "4", "--tp", "4", "--pp", "1", "--dp", "1", "--flashcomm2-otp", "2", "--layer-sharding"],
        dict(world_size=4, tp=4, pp=1, dp=1, flashcomm2_otp=2, layer_sharding=True)),
}


def test_live_json_is_what_the_release_builds_for_fine_grained_tp_pd_and_flashcomm2(world):
    from ascend_conformance.layout_verdict import merge_rank_views
    from ascend_conformance.sut.captured_layouts import capture_views

    _need_stack()
    configs = [fields for _, fields in LIVE_FLAGS.values()]
    per_rank = world(4, timeout=HANG_GUARD, pool="vllm_ascend").run(capture_views, "vllm_ascend", configs)
    for index, (name, (flags, fields)) in enumerate(LIVE_FLAGS.items()):
        captured = merge_rank_views([outcomes[index]["view"] for outcomes in per_rank])
        result = live("--live", "vllm-ascend", *flags, "--json")
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        assert result.stdout.count("\n") == 1, name
        assert json.loads(result.stdout) == captured, name
        assert {"lmheadtp", "emtp", "mlptp", "p_tp"} <= set(captured) or {"flashcomm2_otp", "shard_weight"} <= set(
            captured), name


def test_live_config_the_release_refuses_is_one_error_line_naming_it():
    _need_stack()
    result = live("--live", "vllm-ascend", "--world-size", "2", "--tp", "2", "--pp", "1", "--dp", "1",
                  "--flashcomm2-otp", "2")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: vllm_ascend 0.23")
    assert ("refuses world 2 = E1 x DP1 x PP1 x PCP1 x TP2, flashcomm2_otp 2: AssertionError: "
            "flashcomm2_oproj_tensor_parallel_size (2) cannot exceed global tensor parallel size (2)") in result.stderr


def test_live_unknown_or_missing_sut_is_one_error_line(monkeypatch, capsys):
    from ascend_conformance.cli import main
    from ascend_conformance.sut import stack

    unknown = topology("--live", "vllm-cuda", "--world-size", "2", "--tp", "2", "--pp", "1", "--dp", "1")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines() == ["error: ascend-conformance topology: argument --live: invalid choice: "
                                           "'vllm-cuda' (choose from 'vllm', 'vllm-ascend')"]
    monkeypatch.setattr(stack, "unavailable_reason", lambda name: f"{name} not installed (make setup installs it)")
    assert main(["topology", "--live", "vllm-ascend", "--world-size", "2", "--tp", "2", "--pp", "1", "--dp", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: cannot build vllm_ascend's groups: vllm_ascend not installed (make setup installs it)"]
