"""What the EPLB adapters and suite decide without running a release: which shim each release line takes,
that every shim offers the same features and functions, the label of results, the one-line capture of a
release's exception, the pairing check of point-to-point operations, and the verdicts the suite draws from a
run that stopped, a case that raised, or a reference bound that is NaN (issue 16: a NaN bound fails)."""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

from ascend_conformance.errors import Divergence
from ascend_conformance.sut import installed, lines
from ascend_conformance.sut import vllm_ascend_eplb, vllm_eplb

SUITES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "suites")
if SUITES not in sys.path:
    sys.path.insert(0, SUITES)

import test_sut_eplb as suite  # noqa: E402 - the suite's judges live in suites/


def release(sut: str, version: str, **kwargs) -> installed.Release:
    return installed.Release(sut=sut, name=kwargs.pop("name", version), version=version, **kwargs)


MAIN = release("vllm_ascend", "0.19.2.dev1637+g182b75ea84", name="main", commit="182b75ea84" + "0" * 30,
               pairs_with="0.27.1")


@pytest.mark.parametrize("adapter, sut, version, shim", [
    ("vllm_ascend_eplb", "vllm_ascend", "0.13.0", "v0_13"), ("vllm_ascend_eplb", "vllm_ascend", "0.18.0", "v0_18"),
    ("vllm_ascend_eplb", "vllm_ascend", "0.23.0.post1", "v0_23"), ("vllm_eplb", "vllm", "0.13.0", "v0_13"),
    ("vllm_eplb", "vllm", "0.18.0", "v0_18"), ("vllm_eplb", "vllm", "0.23.0", "v0_23"),
    ("vllm_eplb", "vllm", "0.27.1", "v0_23")])
def test_each_release_line_takes_its_shim(adapter, sut, version, shim):
    assert lines.line_module(adapter, release(sut, version)).__name__.rsplit(".", 1)[-1] == shim


def test_main_takes_the_newest_shim_below_the_vllm_it_pairs_with():
    assert lines.line_module("vllm_ascend_eplb", MAIN).__name__.endswith(".v0_23")


@pytest.mark.parametrize("adapter, sut", [("vllm_ascend_eplb", "vllm_ascend"), ("vllm_eplb", "vllm")])
def test_a_line_older_than_every_shim_is_not_in_release(adapter, sut):
    with pytest.raises(lines.NotInRelease, match=rf"not in {sut} 0.11.0: older than the oldest line"):
        lines.line_module(adapter, release(sut, "0.11.0"))


SHIM_FUNCTIONS = {
    "vllm_eplb": ("place",),
    "vllm_ascend_eplb": ("generate_policy", "construct", "seed_policy_rng", "flashlb_workload", "generate_global_placement",
                         "quantized", "attach_weights", "make_adaptor", "make_worker", "make_loader",
                         "loader_layer_id"),
}


@pytest.mark.parametrize("adapter", sorted(SHIM_FUNCTIONS))
def test_every_shim_of_an_adapter_offers_the_same_features_and_functions(adapter):
    modules = [importlib.import_module(f"{lines.SHIM_PACKAGE}.{adapter}.{name}") for _, name in lines.shim_lines(adapter)]
    assert len(modules) == 3, [m.__name__ for m in modules]
    features = {m.__name__: sorted(m.FEATURES) for m in modules}
    assert len({tuple(f) for f in features.values()}) == 1, features
    for module in modules:
        missing = [name for name in SHIM_FUNCTIONS[adapter] if not callable(getattr(module, name, None))]
        assert not missing, f"{module.__name__} lacks {missing}"
    if adapter == "vllm_ascend_eplb":
        # one feature per policy type of the suite, and the class each line's factory maps it to
        for module in modules:
            assert sorted(module.POLICY_CLASSES) == sorted(vllm_ascend_eplb.POLICY_TYPES), module.__name__
            assert {f"policy_{name}" for name in module.POLICY_CLASSES} <= set(module.FEATURES)
            assert {role for role, _ in module.WEIGHT_ROLES} <= set(vllm_ascend_eplb.ROLE_SHAPES)


def test_0_13_names_types_1_and_2_otherwise():
    v13 = lines.line_module("vllm_ascend_eplb", release("vllm_ascend", "0.13.0"))
    v23 = lines.line_module("vllm_ascend_eplb", release("vllm_ascend", "0.23.0.post1"))
    assert (v13.POLICY_CLASSES["default"][1], v13.POLICY_CLASSES["swift_balancer"][1]) == ("DynamicEplb",
                                                                                            "DynamicEplbV2")
    assert (v23.POLICY_CLASSES["default"][1], v23.POLICY_CLASSES["swift_balancer"][1]) == ("DefaultEplb",
                                                                                            "SwiftBalanceEplb")


def test_results_are_labelled_with_the_installed_release():
    for module, sut in ((vllm_eplb, "vllm"), (vllm_ascend_eplb, "vllm_ascend")):
        here = installed.installed(sut)
        if here is None:
            pytest.skip(f"{sut} not installed")
        assert module.label() == here.label


def test_a_release_exception_is_one_line_naming_its_innermost_frame():
    def lpt_deployment():
        raise IndexError("index -1 is out of bounds\nmore")

    try:
        lpt_deployment()
    except IndexError as exc:
        text = vllm_ascend_eplb.raised_where(exc)
    assert text.startswith("IndexError: index -1 is out of bounds (in lpt_deployment, test_sut_eplb_units.py line ")
    assert "\n" not in text


def test_point_to_point_operations_that_pair_up_are_accepted():
    ops = {0: [("send", 2, (0, 2), (4,), "bf16"), ("recv", 2, (0, 2), (4,), "bf16")],
           2: [("recv", 0, (0, 2), (4,), "bf16"), ("send", 0, (0, 2), (4,), "bf16")]}
    assert vllm_ascend_eplb.unmatched_p2p(ops) == []


def test_point_to_point_operations_that_would_hang_are_named():
    # group ranks taken for global ranks on the stage [1, 3]: a peer outside the group, one the rank itself
    ops = {1: [("send", 1, (1, 3), (4,), "bf16")], 3: [("send", 0, (1, 3), (4,), "bf16"),
                                                      ("recv", 1, (1, 3), (2,), "bf16")]}
    problems = vllm_ascend_eplb.unmatched_p2p(ops)
    assert "rank 1 sends to itself" in problems
    assert "rank 3 sends to rank 0, outside its group [1, 3]" in problems
    assert any("rank 3 receives from rank 1 on group [1, 3] (2,) bf16, which no send meets" == p for p in problems)


def test_a_nan_reference_bound_fails_naming_the_layer():
    with pytest.raises(AssertionError, match=r"NaN in layers \[1\]: those layers cannot be judged"):
        suite.require_bound(torch.tensor([0.9, float("nan"), 0.8], dtype=torch.float64), "the bound", "headline")
    suite.require_bound(torch.tensor([0.9, 0.8], dtype=torch.float64), "the bound", "headline")


def test_a_policy_whose_bound_is_nan_is_not_passed(monkeypatch):
    # the greedy dead-ends on layer 0: DefaultEplb cannot be judged there, whatever it placed
    table = torch.tensor([[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 0, 1, 2, 3]]] * 4)
    result = {"initial": table, "table": table.clone(), "worker_reverts": []}
    monkeypatch.setattr(suite, "one_replica_per_rank_balancedness",
                        lambda weight, replicas, ranks: torch.tensor([float("nan"), 1.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(AssertionError, match=r"NaN in layers \[0\]"):
        suite.judge_ascend_policy("default", "zipf1.5", "E16-G4-red4", result)


def test_a_policy_that_raises_is_a_divergence_naming_the_exception():
    with pytest.raises(Divergence, match=r"FlashLB \(eplb_policy_type 3\), zipf3.0 loads, E16-G2-red2: the policy "
                                         r"raises") as caught:
        suite.judge_ascend_policy("flashlb", "zipf3.0", "E16-G2-red2", {"raised": "IndexError: x (in f, a.py line 1)"})
    assert "IndexError: x (in f, a.py line 1)" in str(caught.value)


def _stopped_run(stopped: dict) -> list:
    old = torch.tensor([[[0, 1], [2, 3]]])
    return [{"old": old, "new": old, "group": group, "ep_rank": group.index(rank), "stage": stage,
             "layout": "unquantised", "stopped": stopped}
            for rank, (group, stage) in enumerate([([0, 2], 0), ([1, 3], 1), ([0, 2], 0), ([1, 3], 1)])]


def test_a_transfer_step_that_raised_on_some_ranks_is_a_divergence_naming_them():
    per_rank = _stopped_run({"step": "D2D task (generate_expert_d2d_transfer_task)", "layer": 0,
                             "raised": {0: "ValueError: Global rank 1 is not part of group", 3: "ValueError: y"}})
    with pytest.raises(Divergence, match=r"D2D task \(generate_expert_d2d_transfer_task\) of layer 0 raises on "
                                         r"ranks \[0, 3\] of EP groups \[\[0, 2\], \[1, 3\]\]") as caught:
        suite.judge_transfer(per_rank, ("shuffled", 4, 2, 0, "bfloat16", 2))
    assert "rank 0: ValueError: Global rank 1 is not part of group" in str(caught.value)


def test_a_transfer_whose_operations_would_not_pair_up_is_a_divergence():
    per_rank = _stopped_run({"step": "D2D task (generate_expert_d2d_transfer_task)", "layer": 1,
                             "unmatched": ["rank 1 sends to itself"]})
    with pytest.raises(Divergence, match=r"would post point-to-point operations that do not pair up"):
        suite.judge_transfer(per_rank, ("shuffled", 4, 2, 0, "bfloat16", 2))


def test_transfer_ids_of_the_world_ep_cases_are_unchanged():
    assert suite.transfer_id("shuffled", 16, 2, 2, "bfloat16", 1) == "shuffled-E16-W2-red2-bfloat16"
    assert suite.transfer_id("shuffled", 16, 2, 2, "bfloat16", 2) == "shuffled-E16-W4-PP2-EP2-red2-bfloat16"
