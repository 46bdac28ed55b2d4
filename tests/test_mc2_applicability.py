"""The MC2 applicability table (ascend_conformance/moe/mc2_applicability.py): every rule on both sides of its
boundary, on the SoCs it applies to and not on the others; the shape a scenario hands the ops; the reason
line; the SoC names of torch_npu's soc versions.
"""
from __future__ import annotations

import dataclasses

import pytest

from ascend_conformance.errors import ConfigError
from ascend_conformance.moe.mc2_applicability import (RULES, MC2Shape, mc2_unsupported_reason, ops_soc,
                                                      soc_of_version, violated_rules)
from ascend_conformance.moe.scenario import Scenario

# Taken by both SoCs: 16 ranks of 8 bf16 tokens, H 1024, 64 experts (4 per rank), K 4.
BASE = MC2Shape(dtype="bfloat16", batch=8, hidden=1024, top_k=4, ep_size=16, experts=64)

# rule -> [(soc, the changes of a shape just inside the limit, just outside it)]
BOUNDARIES = {
    "dtype": [("A2", {"dtype": "float16"}, {"dtype": "float32"}),
              ("A3", {"dtype": "bfloat16"}, {"dtype": "float32"})],
    "batch_positive": [("A2", {"batch": 1}, {"batch": 0}), ("A3", {"batch": 1}, {"batch": 0})],
    "batch_max_a2": [("A2", {"batch": 256}, {"batch": 257})],
    "batch_max_a3": [("A3", {"batch": 512}, {"batch": 513})],
    "top_k": [("A2", {"top_k": 16}, {"top_k": 17}), ("A3", {"top_k": 1}, {"top_k": 0}),
              ("A3", {"ep_size": 2, "experts": 4, "top_k": 4}, {"ep_size": 2, "experts": 4, "top_k": 5})],
    "ep_size_a2": [("A2", {"ep_size": 16}, {"ep_size": 8, "experts": 32}),
                   ("A2", {"ep_size": 256, "experts": 256}, {"ep_size": 512, "experts": 512}),
                   ("A2", {"ep_size": 32}, {"ep_size": 48, "experts": 96})],
    "ep_size_a3": [("A3", {"ep_size": 2}, {"ep_size": 1}),
                   ("A3", {"ep_size": 768, "experts": 768}, {"ep_size": 769, "experts": 769})],
    "experts_range": [("A3", {"ep_size": 16, "experts": 1024}, {"ep_size": 5, "experts": 1025}),
                      ("A2", {"ep_size": 16, "experts": 16, "top_k": 1}, {"ep_size": 16, "experts": 0, "top_k": 1})],
    "experts_per_rank": [("A2", {"experts": 48}, {"experts": 50}), ("A3", {"experts": 48}, {"experts": 40})],
    "local_experts_a2": [("A2", {"experts": 384}, {"experts": 400})],
    "hidden_a2": [("A2", {"hidden": 7168}, {"hidden": 7200}), ("A2", {"hidden": 32}, {"hidden": 1000}),
                  ("A2", {"hidden": 32}, {"hidden": 0})],
    "hidden_a3": [("A3", {"hidden": 1024}, {"hidden": 1023}), ("A3", {"hidden": 8192}, {"hidden": 8193})],
}
CASES = [pytest.param(rule, soc, inside, outside, id=f"{rule}-{soc}-{index}")
         for rule, sides in BOUNDARIES.items() for index, (soc, inside, outside) in enumerate(sides)]


def _names(shape: MC2Shape, soc: str) -> list[str]:
    return [rule.name for rule in violated_rules(shape, soc)]


def test_every_rule_of_the_table_has_boundary_cases_and_a_source():
    assert sorted(BOUNDARIES) == sorted(rule.name for rule in RULES)
    for rule in RULES:
        assert set(rule.socs) <= {"A2", "A3"} and rule.socs, rule.name
        assert rule.source.strip(), f"rule {rule.name} names no documented source"
        for soc in rule.socs:
            assert any(case_soc == soc for case_soc, _, _ in BOUNDARIES[rule.name]), (rule.name, soc)


def test_the_base_shape_is_taken_by_both_socs():
    assert mc2_unsupported_reason(BASE, "A2") is None
    assert mc2_unsupported_reason(BASE, "A3") is None


@pytest.mark.parametrize("rule, soc, inside, outside", CASES)
def test_each_rule_on_both_sides_of_its_boundary(rule, soc, inside, outside):
    assert rule not in _names(dataclasses.replace(BASE, **inside), soc)
    refused = dataclasses.replace(BASE, **outside)
    assert rule in _names(refused, soc)
    explanation = next(r for r in RULES if r.name == rule).explain(refused)
    assert explanation in mc2_unsupported_reason(refused, soc)


@pytest.mark.parametrize("rule, soc, inside, outside", [c for c in CASES if c.values[0].endswith(("_a2", "_a3"))])
def test_a_soc_specific_rule_does_not_apply_to_the_other_soc(rule, soc, inside, outside):
    other = "A3" if soc == "A2" else "A2"
    assert rule not in _names(dataclasses.replace(BASE, **outside), other)


def test_the_reason_names_every_broken_limit_and_where_it_is_documented():
    shape = dataclasses.replace(BASE, dtype="float32", batch=0, hidden=8, ep_size=4)
    reason = mc2_unsupported_reason(shape, "A3")
    assert reason == ("the A3 MC2 ops do not take this shape: x is float32 (bfloat16 or float16 only); BS 0: every EP "
                      "rank must send at least one token (0 < BS); H 8 outside [1024, 8192] "
                      "[torch_npu.npu_moe_distribute_dispatch_v2 / combine_v2: x / expand_x data type, shape variable "
                      "BS, shape variable H]")
    assert "\n" not in reason


def test_golden_models_take_every_shape_and_other_socs_have_no_documented_support():
    refused_everywhere = dataclasses.replace(BASE, dtype="float32", batch=0)
    assert mc2_unsupported_reason(refused_everywhere, None) is None
    assert "documented for Atlas A2 and A3 only, this device is A5" in mc2_unsupported_reason(BASE, "A5")


def _scenario(**changes) -> Scenario:
    values = dict(method="mc2", world_size=4, dp=2, tp=2, experts=16, top_k=2, tokens=7, hidden=1024,
                  intermediate=256, dtype="bfloat16", seed=3, tokens_per_dp=(3, 7))
    return Scenario(**{**values, **changes})


def test_the_shape_of_a_scenario_is_what_the_mc2_method_hands_the_ops():
    # BS: the largest DP batch padded to a multiple of TP, split over TP.
    assert MC2Shape.of(_scenario()) == MC2Shape("bfloat16", 4, 1024, 2, 4, 16)
    assert MC2Shape.of(_scenario(tokens=8, tokens_per_dp=(8, 0))).batch == 4
    assert MC2Shape.of(_scenario(world_size=4, dp=4, tp=1, tokens_per_dp=(7, 0, 3, 1))).batch == 7
    # every DP rank empty: nothing to send anywhere
    assert MC2Shape.of(_scenario(tokens=0, tokens_per_dp=(0, 0))).batch == 0
    # a scattered placement reaches the ops as slots: P * L_max
    scattered = _scenario(experts=9, placement="scattered")
    assert MC2Shape.of(scattered).experts == 4 * scattered.expert_placement().max_local
    assert mc2_unsupported_reason(_scenario(dtype="float32"), "A3").startswith("the A3 MC2 ops do not take this shape: "
                                                                             "x is float32")


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="MC2Shape batch must be a whole number >= 0, got -1"):
        dataclasses.replace(BASE, batch=-1)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        dataclasses.replace(BASE, dtype="int8")
    with pytest.raises(ConfigError, match="takes a Scenario or an MC2Shape, got dict"):
        mc2_unsupported_reason({"dtype": "bfloat16"}, "A3")


def test_soc_versions_are_named_as_vllm_ascend_names_them():
    assert [soc_of_version(v) for v in (219, 220, 225, 226, 249, 250, 255, 256, 260, 200, 205)] == \
        ["soc 219", "A2", "A2", "soc 226", "soc 249", "A3", "A3", "soc 256", "A5", "310P", "310P"]


def test_ops_on_the_cpu_are_the_golden_models_without_limits():
    assert ops_soc("cpu") is None


class _RanksOf:
    """A WorldRunner stand-in for the CLI: its ranks report `soc` as the SoC of their ops and run nothing else."""

    def __init__(self, soc):
        self.soc, self.ran = soc, []

    def __call__(self, options):
        return self

    def skip_reason(self, n):
        return None

    def run(self, n, fn, args, kwargs, test_id):
        self.ran.append(test_id)
        if fn is ops_soc:
            return [self.soc] * n
        raise AssertionError(f"the CLI ran {fn.__name__} on ranks whose ops refuse the scenario")

    def shutdown(self):
        self.ran.append("shutdown")


def test_the_cli_refuses_an_mc2_scenario_the_ops_of_the_host_do_not_take(monkeypatch, capsys):
    from ascend_conformance import cli
    from ascend_conformance.harness import world

    runner = _RanksOf("A3")
    monkeypatch.setattr(world, "WorldRunner", runner)
    code = cli.main(["moe", "--method", "mc2", "--world-size", "2", "--experts", "8", "--top-k", "2", "--tokens", "3",
                     "--dtype", "float32"])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert error == ("error: --method mc2 cannot run this scenario here: the A3 MC2 ops do not take this shape: x is "
                     "float32 (bfloat16 or float16 only) [torch_npu.npu_moe_distribute_dispatch_v2 / combine_v2: x / "
                     "expand_x data type]")
    assert runner.ran == ["cli::moe::soc", "shutdown"]
