"""The groups adapters across release lines, without a release: which shim each line takes, how each line
is asked for a configuration, what a configuration needs, the PD deployment, the per-configuration outcomes
of a capture (a crash of one configuration leaves the others judged), the installed release's label in
verdicts, and one verdict per claim of vLLM's coordinator checks."""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from ascend_conformance import collective_checks
from ascend_conformance.errors import ConfigError, SutRefused
from ascend_conformance.sut import captured_layouts, installed, lines, probe, vllm_ascend_groups, vllm_groups
from ascend_conformance.sut.installed import Release
from ascend_conformance.sut.vllm_coordinators import (
    CASES, KINDS, PER_KIND_CASES, PER_KIND_CLAIM, check_coordinators, verdict_keys,
)
from ascend_conformance.topology import ParallelConfig, build_layout

ASCEND = {"0.13.0": Release("vllm_ascend", "0.13.0", "0.13.0"), "0.18.0": Release("vllm_ascend", "0.18.0", "0.18.0"),
          "0.23.0.post1": Release("vllm_ascend", "0.23.0.post1", "0.23.0.post1"),
          "main": Release("vllm_ascend", "main", "0.19.2.dev1637+g182b75ea84", "182b75ea84" + "0" * 30, "0.27.1")}
VLLM = {version: Release("vllm", version, version) for version in ("0.13.0", "0.18.0", "0.23.0", "0.27.1")}


def config(**fields) -> ParallelConfig:
    return ParallelConfig(**{"world_size": 4, "tp": 1, "pp": 1, "dp": 1, **fields})


@pytest.mark.parametrize("name, line", [("0.13.0", "v0_13"), ("0.18.0", "v0_18"), ("0.23.0.post1", "v0_23"),
                                        ("main", "v0_27")])
def test_each_vllm_ascend_line_takes_its_own_shim(name, line):
    assert lines.line_module("vllm_ascend_groups", ASCEND[name]).__name__.rsplit(".", 1)[-1] == line


@pytest.mark.parametrize("version, line", [("0.13.0", "v0_13"), ("0.18.0", "v0_18"), ("0.23.0", "v0_18"),
                                           ("0.27.1", "v0_27")])
def test_each_vllm_line_takes_its_own_shim(version, line):
    assert lines.line_module("vllm_groups", VLLM[version]).__name__.rsplit(".", 1)[-1] == line


def test_an_older_line_than_every_shim_is_not_in_release():
    with pytest.raises(lines.NotInRelease, match=r"^not in vllm_ascend 0\.11\.0: older than .* \(0\.13\)$"):
        lines.line_module("vllm_ascend_groups", Release("vllm_ascend", "0.11.0", "0.11.0"))


FC2_SHARDED = dict(tp=4, flashcomm2_otp=2, layer_sharding=True)


@pytest.mark.parametrize("name, additional, environment", [
    ("0.13.0", {"multistream_overlap_gate": True, "layer_sharding": ["o_proj"]},
     {"VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE": "2"}),
    ("0.18.0", {"eplb_config": {"dynamic_eplb": True}, "multistream_overlap_gate": True, "layer_sharding": ["o_proj"]},
     {"DYNAMIC_EPLB": "true", "VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE": "2"}),
    ("0.23.0.post1", {"eplb_config": {"dynamic_eplb": True}, "multistream_overlap_gate": True,
                      "enable_flashcomm2_parallel_size": 2, "layer_sharding": ["o_proj"]}, {"DYNAMIC_EPLB": "true"}),
])
def test_how_each_line_is_asked_for_flashcomm2_with_layer_sharding(name, additional, environment):
    asked = lines.line_module("vllm_ascend_groups", ASCEND[name]).ask(config(**FC2_SHARDED))
    assert (asked.additional_config, asked.environment) == (additional, environment)


def test_main_is_asked_only_for_dynamic_eplb_and_its_shim_refuses_a_release_that_has_the_removed_features(monkeypatch):
    shim = lines.line_module("vllm_ascend_groups", ASCEND["main"])
    monkeypatch.setattr(probe, "missing", lambda needs: [need.describe() for need in needs])  # none of them here
    asked = shim.ask(config(tp=4))
    assert (asked.additional_config, asked.environment) == ({"eplb_config": {"dynamic_eplb": True}},
                                                            {"DYNAMIC_EPLB": "true"})
    monkeypatch.setattr(probe, "missing", lambda needs: [])  # FlashComm2, layer sharding, FC3 back again
    with pytest.raises(lines.ShimMismatch, match="asks for none of flashcomm2, layer_sharding, fc3_quant_x, which"):
        shim.ask(config(tp=4))


@pytest.mark.parametrize("fields, features", [
    (dict(tp=4), {"groups"}),
    (dict(tp=2, pcp=2), {"groups", "pcp"}),
    (dict(dp=4, otp=2, lmhead_tp=4), {"groups", "finegrained_tp"}),
    (FC2_SHARDED, {"groups", "flashcomm2", "layer_sharding"}),
    (dict(tp=4, kv_producer=True, pd_tp_ratio=2, pd_head_ratio=2), {"groups", "pd", "kv_transfer"}),
])
def test_what_a_configuration_needs(fields, features):
    needed = vllm_ascend_groups.requirements(config(**fields))
    assert {feature for _, _, feature in needed} == features
    assert ("vllm_groups", "vllm", "groups") in needed and ("vllm_ascend_groups", "vllm_ascend", "groups") in needed


@pytest.fixture
def fresh_probes():
    """The adapters cache what the installed release has; a test that pretends another release clears it."""
    vllm_groups.absence.cache_clear()
    yield
    vllm_groups.absence.cache_clear()


def test_a_feature_the_release_lacks_is_not_in_it_and_its_kinds_are_not_judged(monkeypatch, fresh_probes):
    def check(adapter, sut, feature):
        if feature in ("flashcomm2", "flashcomm2_otp", "flashcomm2_odp", "fc3_quant_x"):
            raise lines.NotInRelease(f"not in vllm_ascend main@182b75ea84: {feature} (...)")

    monkeypatch.setattr(lines, "check_feature", check)
    assert vllm_ascend_groups.missing(config(**FC2_SHARDED)) == "not in vllm_ascend main@182b75ea84: flashcomm2 (...)"
    assert vllm_ascend_groups.missing(config(tp=4, layer_sharding=True)) is None
    kinds = vllm_ascend_groups.kinds()
    assert {"flashcomm2_otp", "flashcomm2_odp", "fc3_quant_x"}.isdisjoint(kinds) and {"tp", "mc2", "p_tp"} <= set(kinds)


@pytest.mark.parametrize("fields, deployment, head_ratio", [
    (dict(tp=4, kv_producer=True, pd_tp_ratio=2, pd_head_ratio=2), (4, 2, 4), 2),
    (dict(tp=4, kv_producer=True, pd_tp_ratio=4, pd_head_ratio=2, num_head_replica=2), (4, 1, 2), 2),
    (dict(tp=4, pd_tp_ratio=2, pd_head_ratio=2), (8, 4, 8), 2),  # a decode node: the consumer
    (dict(world_size=8, tp=8, kv_producer=True, pd_tp_ratio=4, pd_head_ratio=4), (8, 2, 8), 4),
])
def test_a_pd_configuration_is_a_deployment_whose_model_gives_its_ratios(fields, deployment, head_ratio):
    wanted = config(**fields)
    prefill, decode, heads = vllm_ascend_groups.pd_deployment(wanted)
    assert (prefill, decode, heads) == deployment
    # What vllm-ascend derives from them (0.13 to main alike): H = P // K, head ratio min(P, K) // min(D, K).
    assert prefill // heads == (wanted.num_head_replica or 1)
    assert min(prefill, heads) // min(decode, heads) == head_ratio == wanted.pd_head_ratio
    model = vllm_ascend_groups.pd_model(wanted)
    assert model["num_key_value_heads"] == heads and model["num_attention_heads"] % wanted.tp == 0
    assert model["num_attention_heads"] % heads == 0 and model["num_experts"] > 1  # a MoE model: vLLM builds ep
    assert vllm_ascend_groups.pd_unreachable(wanted) is None


def test_pd_ratios_no_deployment_gives_are_refused_before_anything_runs():
    unreachable = config(world_size=8, tp=8, kv_producer=True, pd_tp_ratio=4, pd_head_ratio=2)
    assert vllm_ascend_groups.pd_unreachable(unreachable) == (
        "a deployment of prefill TP 8 and decode TP 2 over a model of 8 KV heads has pd_head_ratio 4, not 2")
    with pytest.raises(SutRefused, match="cannot build .* has pd_head_ratio 4, not 2$"):
        with vllm_ascend_groups.live_groups(unreachable):
            pass


def test_the_model_directory_is_shared_by_content(tmp_path, monkeypatch):
    from ascend_conformance.sut import bringup

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    first = bringup.model_directory({"model_type": "qwen3_moe", "num_key_value_heads": 4})
    again = bringup.model_directory({"num_key_value_heads": 4, "model_type": "qwen3_moe"})
    other = bringup.model_directory({"model_type": "qwen3_moe", "num_key_value_heads": 2})
    assert first == again != other
    assert (tmp_path / first / "config.json").read_text() == '{"model_type": "qwen3_moe", "num_key_value_heads": 4}'


# -- a capture: one outcome per configuration ---------------------------------------------------------------

class _Coordinator:
    def __init__(self, ranks):
        self.ranks = ranks


class _FakeAdapter:
    """live_groups of a release that builds tp groups of two, crashes on PP 2 and refuses DP 4."""

    @staticmethod
    @contextlib.contextmanager
    def live_groups(config, report_leftovers=None):
        if config.dp == 4:
            raise SutRefused("fake 1.0 refuses it")
        if config.pp == 2:
            raise RuntimeError("shape '[1, 2, 2]' is invalid for input of size 8\nmore")
        if config.flashcomm2_otp:
            raise lines.NotInRelease("not in fake 1.0: flashcomm2 (...)")
        if report_leftovers is not None:
            report_leftovers.append("flashcomm2_odp")
        yield {"tp": _Coordinator([0, 1])}


def test_a_crashing_configuration_is_its_own_outcome_and_the_others_are_still_captured():
    configs = [config(tp=2), config(pp=2), config(dp=4), config(tp=4, flashcomm2_otp=2), config(tp=2, dp=2)]
    outcomes = [captured_layouts.capture_one(_FakeAdapter, dataclasses.asdict(c), True) for c in configs]
    assert outcomes == [{"view": {"tp": [0, 1]}, "leftovers": ["flashcomm2_odp"]},
                        {"crashed": "RuntimeError: shape '[1, 2, 2]' is invalid for input of size 8"},
                        {"refused": "fake 1.0 refuses it"},
                        {"not_in_release": "not in fake 1.0: flashcomm2 (...)"},
                        {"view": {"tp": [0, 1]}, "leftovers": ["flashcomm2_odp"]}]


class _CrashOn:
    """live_groups of a release that crashes on the ranks of ``crash_on``, builds tp [0, 1] elsewhere."""

    crash_on: tuple[int, ...] = ()

    @classmethod
    @contextlib.contextmanager
    def live_groups(cls, config, report_leftovers=None):
        import torch.distributed as dist

        if dist.get_rank() in cls.crash_on:
            raise RuntimeError(f"shape invalid on rank {dist.get_rank()}")
        yield {"tp": _Coordinator([0, 1])}


def agreed_outcomes(crashing_ranks: list[tuple[int, ...]]) -> list[dict]:
    """In a rank: capture_views' agreement over configurations crashing on the given ranks each."""
    agreement = captured_layouts._Agreement()
    outcomes = []
    for ranks in crashing_ranks:
        _CrashOn.crash_on = tuple(ranks)
        outcomes.append(captured_layouts.capture_one(_CrashOn, dict(world_size=2, tp=2, pp=1, dp=1), False,
                                                     agreement.settle))
    return outcomes


def test_a_crash_on_every_rank_is_the_configurations_outcome_and_one_rank_alone_ends_the_run(world):
    from ascend_conformance.harness.pool import RankFailure

    both = world(2).run(agreed_outcomes, [(), (0, 1), ()])  # fine, crashes on ranks 0 and 1, fine
    assert [[sorted(o) for o in outcomes] for outcomes in both] == [[["leftovers", "view"], ["crashed"],
                                                                     ["leftovers", "view"]]] * 2
    assert both[1][1] == {"crashed": "RuntimeError: shape invalid on rank 1"}
    with pytest.raises(RankFailure, match="RuntimeError: shape invalid on rank 1"):
        world(2).run(agreed_outcomes, [(1,), ()])  # rank 1 alone: its crash ends the run


def test_the_outcome_of_a_configuration_names_every_rank_that_crashed():
    view = {"view": {"tp": [0, 1]}, "leftovers": []}
    crash = {"crashed": "RuntimeError: boom"}
    assert captured_layouts.outcome([view, view]) == ("view", [{"tp": [0, 1]}, {"tp": [0, 1]}])
    assert captured_layouts.outcome([view, crash, view, crash]) == (
        "crashed", "rank 1: RuntimeError: boom; rank 3: RuntimeError: boom")
    assert captured_layouts.outcome([{"refused": "r"}, {"refused": "r"}]) == ("refused", "r")


def test_verdicts_name_the_installed_release(monkeypatch):
    main = ASCEND["main"]
    monkeypatch.setattr(installed, "installed", lambda sut: main if sut == "vllm_ascend" else VLLM["0.27.1"])
    assert vllm_ascend_groups.label() == "vllm_ascend main@182b75ea84"
    assert vllm_groups.label() == "vllm 0.27.1"


def test_an_unknown_sut_has_no_groups_adapter():
    with pytest.raises(ConfigError, match="^no groups adapter for SUT 'vllm-cuda'; known: vllm, vllm_ascend$"):
        captured_layouts.adapter("vllm-cuda")


# -- vLLM's coordinator: one verdict per claim ---------------------------------------------------------------

def _observations_as_the_contract_says(fields: dict, dtypes: list[str]) -> list[dict]:
    """What every rank must observe (exercise_coordinators' shape), from the expectations alone."""
    from ascend_conformance.collective_checks import DTYPES, cases_for

    layout = build_layout(ParallelConfig(**fields))
    per_rank = []
    for rank in range(fields["world_size"]):
        observed = {}
        for kind in KINDS:
            ranks = next(group for group in layout[kind] if rank in group)
            i = ranks.index(rank)
            for case, dtype, salt in cases_for(len(ranks), dtypes, CASES):
                observed[(kind, case.name, dtype)] = case.expect(ranks, i, DTYPES[dtype], salt)
            for name, (_, expect) in PER_KIND_CASES.items():
                observed[(kind, name)] = expect(ranks, i, kind)
        per_rank.append(observed)
    return per_rank


def test_all_reduce_in_place_is_a_verdict_of_its_own_that_hides_no_wrong_sum():
    fields, dtypes = dict(world_size=4, tp=2, pp=1, dp=2), ["float32", "int64"]
    per_rank = _observations_as_the_contract_says(fields, dtypes)
    verdicts = check_coordinators(fields, dtypes, per_rank)
    assert set(verdicts) == set(verdict_keys(dtypes))
    assert all(not v["problems"] and v["checks"] > 0 for v in verdicts.values())
    # vLLM 0.23's finding: all_reduce sums into the input and returns it.
    for observed in per_rank:
        for kind in KINDS:
            got = observed[(kind, "all_reduce", "float32")]
            got["input_after"], got["returns_input"] = got["result"].clone(), True
    verdicts = check_coordinators(fields, dtypes, per_rank)
    failing = {key for key, v in verdicts.items() if v["problems"]}
    assert failing == {("all_reduce", "float32", "in_place"), ("all_reduce", "float32", "returns")}
    # ... and a wrong sum on top is the sum's own verdict, which that expectation cannot waive.
    per_rank[3][("tp", "all_reduce", "float32")]["result"] += 1
    verdicts = check_coordinators(fields, dtypes, per_rank)
    assert {key for key, v in verdicts.items() if v["problems"]} == failing | {("all_reduce", "float32", "sum")}
    assert verdicts[("all_reduce", "float32", "sum")]["problems"][0].startswith("rank 3 tp [2, 3] all_reduce float32.result")


def test_a_raised_case_is_a_crash_of_each_of_its_claims_and_the_per_kind_claims_stand_alone():
    fields, dtypes = dict(world_size=4, tp=2, pp=1, dp=2), ["int64"]
    per_rank = _observations_as_the_contract_says(fields, dtypes)
    per_rank[0][("dp", "broadcast", "int64")] = {"raised": "RuntimeError: boom"}
    verdicts = check_coordinators(fields, dtypes, per_rank)
    assert [key for key, v in verdicts.items() if v["raised"]] == [("broadcast", "int64", "values"),
                                                                   ("broadcast", "int64", "returns")]
    assert all(key[-1] == PER_KIND_CLAIM for key in verdict_keys(dtypes) if key[0] in PER_KIND_CASES)


def test_every_observation_key_of_a_case_is_one_claim():
    cases = {case.name: case for case in collective_checks.CASES}
    assert cases["all_reduce"].claims() == ("sum", "in_place", "returns")
    assert cases["reduce_scatter_dim0"].claims() == ("sum", "returns")
    assert cases["gather"].claims() == ("values",)
    x = torch.zeros(2)
    split = collective_checks.differences_by_claim(
        "l", cases["all_reduce"], {"result": x, "input_after": x + 1, "returns_input": False},
        {"result": x, "input_after": x, "returns_input": False})
    assert [claim for claim, problems in split.items() if problems] == ["in_place"]
