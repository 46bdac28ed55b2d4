"""The MoE adapter's parts that need no release: shim selection per line, what each shim states, the
per-case crash isolation of a world run, the labels, and the planted breakages (on a synthetic package)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ascend_conformance.errors import ConfigError, Divergence
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.sut import installed, lines
from ascend_conformance.sut import vllm_ascend_moe as moe

ADAPTER = moe.ADAPTER
API = ("layer_kwargs", "build_layer", "experts", "expert_map", "log2phy", "install_expert_map", "forward",
       "extra_context", "runner_batch", "forget_layer", "runner_state", "mc2_tokens_capacity", "eplb_additional_config")
LINES = {  # release -> the shim module its line uses
    installed.Release("vllm_ascend", "0.13.0", "0.13.0"): "v0_13",
    installed.Release("vllm_ascend", "0.18.0", "0.18.0"): "v0_18",
    installed.Release("vllm_ascend", "0.23.0.post1", "0.23.0.post1"): "v0_23",
    installed.Release("vllm_ascend", "main", "0.19.2.dev1637+g182b75ea84", "182b75ea84" + "0" * 30, "0.27.1"): "v0_27",
}


@pytest.fixture
def label(monkeypatch):
    """A made-up installed release: every message must name it."""
    monkeypatch.setattr(moe.bringup, "label", lambda sut: "vllm_ascend 9.9.9")
    moe.release_label.cache_clear()
    yield "vllm_ascend 9.9.9"
    moe.release_label.cache_clear()


@pytest.mark.parametrize("release, module", list(LINES.items()), ids=[r.label for r in LINES])
def test_each_line_gets_its_shim_with_the_whole_api(release, module):
    shim = lines.line_module(ADAPTER, release)
    assert shim.__name__.rsplit(".", 1)[-1] == module
    assert [name for name in API if not callable(getattr(shim, name, None))] == []
    assert {"comm_methods", "device_A2", "device_A3", "device_A5", "mc2_capacity"} <= set(shim.FEATURES)


def test_a_line_older_than_every_shim_is_not_in_release():
    with pytest.raises(lines.NotInRelease, match=r"^not in vllm_ascend 0.11.0: older than the oldest line .* \(0.13\)"):
        lines.line_module(ADAPTER, installed.Release("vllm_ascend", "0.11.0", "0.11.0"))


def test_the_layer_is_built_as_each_line_s_model_block_builds_it():
    scenario = Scenario("mc2", 2, 8, 2, 4, 8, 4, "bfloat16", 0)
    reduce = {}
    for release, module in LINES.items():
        kwargs = lines.line_module(ADAPTER, release).layer_kwargs(scenario, moe.scenario_routing, "p")
        assert (kwargs["num_experts"], kwargs["top_k"], kwargs["custom_routing_function"]) == (8, 2, moe.scenario_routing)
        reduce[module] = kwargs.get("reduce_results", "absent")
    # vLLM 0.13's Qwen3MoeSparseMoeBlock reduces in the layer, 0.18's after it, 0.23's / 0.27's FusedMoE take none
    assert reduce == {"v0_13": True, "v0_18": False, "v0_23": "absent", "v0_27": "absent"}


def test_main_names_the_redundant_experts_of_a_placement_file():
    configs = {module: lines.line_module(ADAPTER, release).eplb_additional_config("/p.json", 2)
               for release, module in LINES.items()}
    assert configs["v0_27"] == {"eplb_config": {"expert_map_path": "/p.json", "num_redundant_experts": 2}}
    assert configs["v0_13"] == configs["v0_18"] == configs["v0_23"] == {"eplb_config": {"expert_map_path": "/p.json"}}


@pytest.mark.parametrize("world, top_k, tokens, capacity, by_line", [
    (2, 2, 1, 2, {"v0_18": "mc2", "v0_23": "mc2"}),            # within the MC2 capacity
    (2, 2, 7, 2, {"v0_18": "alltoall", "v0_23": "allgather"}),  # over it, EP <= top-k: 0.23 grew an AllGather branch
    (2, 1, 7, 1, {"v0_18": "alltoall", "v0_23": "alltoall"}),
])
def test_the_a5_rule_each_line_states(world, top_k, tokens, capacity, by_line):
    for release, module in LINES.items():
        rule = lines.line_module(ADAPTER, release).A5_SELECTION
        if module == "v0_13":
            assert rule is None  # 0.13's select_moe_comm_method raises for A5
        else:
            assert rule(world, top_k, tokens, capacity) == by_line.get(module, by_line["v0_23"])


# -- cases, labels, verdicts ------------------------------------------------------------------------

def _scenario(**change) -> Scenario:
    values = dict(method="alltoall", world_size=2, experts=8, top_k=2, tokens=4, hidden=8, intermediate=4,
                  dtype="float32", seed=0, tokens_per_dp=(4, 1))
    return Scenario(**{**values, **change})


def test_a_refused_case_names_the_installed_release(label):
    with pytest.raises(ConfigError, match=r"^vllm_ascend 9.9.9 has no MoE comm method for 'native_allgather'"):
        moe.SutCase(_scenario(method="native_allgather"))
    with pytest.raises(ConfigError, match=r"contract check only \(forced\)"):
        moe.SutCase(_scenario(), "permuted")
    assert moe.SutCase(_scenario(), "permuted", forced=True).forced


def test_a_case_round_trips_and_its_repro_names_the_deployment():
    case = moe.SutCase(_scenario(), "eplb", max_num_seqs=1, forced=True)
    assert moe.SutCase.from_dict(case.to_dict()) == case
    assert case.repro("A5").endswith("--sut vllm-ascend --device-type A5 --max-num-seqs 1 --expert-map eplb "
                                     "--force-method")


def _rank(ok=True, **extra) -> dict:
    return {"rank": 0, "ok": ok, "max_abs_err": 0.0 if ok else 1.5, "max_rel_err": 0.0, "tolerance_used": 0.0,
            "message": None if ok else "mismatch", "ops": "golden", "comm_class": "AlltoAllCommImpl",
            "selected": "alltoall", "reached": True, "mc2_tokens_capacity": 1, **extra}


def test_the_verdict_of_a_case(label):
    case = moe.SutCase(_scenario(), max_num_seqs=1)
    summary = moe.check(case, "A3", [_rank(), _rank(rank=1)])
    assert (summary["sut"], summary["reached"], summary["selected"]) == ("vllm_ascend 9.9.9", True, "alltoall")
    with pytest.raises(Divergence, match=r"^vllm_ascend 9.9.9 AlltoAllCommImpl \(A3, selected, max_num_seqs 1, "):
        moe.check(case, "A3", [_rank(), _rank(ok=False, rank=1)])
    with pytest.raises(moe.NotReached, match="does not reach alltoall"):
        moe.check(case, "A3", [_rank(reached=False, ok=False, message="x selects mc2 ...: the configuration does "
                                                                       "not reach alltoall"), _rank(rank=1)])
    with pytest.raises(moe.CaseCrashed, match="IndexError: index 9"):
        moe.check(case, "A3", [_rank(), {"crash": "vllm_ascend 9.9.9 ... IndexError: index 9 | repro: x"}])


def test_a_case_that_crashes_leaves_the_others_of_its_world_judged(monkeypatch, label):
    """run_cases: a crash of one case is that case's result; the set-up of a group failing is every one
    of its cases' result; the other groups still run."""
    cases = [moe.SutCase(_scenario(seed=seed)) for seed in (1, 2, 3)] + [moe.SutCase(_scenario(tp=2, dp=1, tokens_per_dp=(4,)))]

    @contextlib.contextmanager
    def world(scenario, additional, max_num_seqs, shim):
        if scenario.tp == 2:
            raise RuntimeError("the release refuses TP 2")
        yield moe._World(None, 0, scenario.tp, scenario.dp, max_num_seqs)

    def run_case(case, world_, shim, ops, device_type, keep_tensors=False):
        if case.scenario.seed == 2:
            raise IndexError("index 8 is out of bounds for dimension 0 with size 8")
        return {"seed": case.scenario.seed}

    monkeypatch.setattr(moe, "line_shim", lambda: object())
    monkeypatch.setattr(moe, "prepare_process", lambda device_type: "golden")
    monkeypatch.setattr(moe, "_vllm_ascend_world", world)
    monkeypatch.setattr(moe, "run_case", run_case)
    settled = []

    class Steps:  # a world of one rank: every step settles with this rank's own ending
        def settle(self, step, crash):
            settled.append((step, bool(crash)))
            return crash

    monkeypatch.setattr(moe, "_Steps", Steps)
    results = moe.run_cases([case.to_dict() for case in cases], "A3")
    assert results[0] == {"seed": 1} and results[2] == {"seed": 3}
    assert results[1]["crash"].startswith("vllm_ascend 9.9.9 alltoall w2 dp2tp1")
    assert "IndexError: index 8 is out of bounds" in results[1]["crash"] and "| repro: python -m" in results[1]["crash"]
    assert results[3]["crash"].startswith("vllm_ascend 9.9.9 set-up for alltoall w2 dp1tp2")
    assert "RuntimeError: the release refuses TP 2" in results[3]["crash"]
    assert settled == [("world0", False), ("case0", False), ("case1", True), ("case2", False), ("world1", True)]


def test_routing_round_trips_through_the_router_logits_slot():
    ids, weights = torch.tensor([[3, 1], [0, 7]], dtype=torch.int32), torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    got_weights, got_ids = moe.scenario_routing(None, moe.encode_routing(ids, weights).to(torch.bfloat16), 2, True)
    assert torch.equal(got_ids, ids) and torch.equal(got_weights, weights)


# -- planted breakages ------------------------------------------------------------------------------

DISPATCHER_SOURCES = {
    # 0.13's shape: keyword / positional topk_ids, a combine returning an object with routed_out
    "ops/moe/dispatch_old.py": '''
        class Result:
            def __init__(self, routed_out):
                self.routed_out = routed_out

        class TokenDispatcherWithAllGather:
            def token_dispatch(self, hidden_states, topk_weights, topk_ids, expert_map=None):
                return topk_ids

            def token_combine(self, hidden_states, context_metadata, bias=None):
                return Result(hidden_states)
    ''',
    # 0.18+'s shape: one input object, a combine returning the tensor
    "ops/fused/elsewhere.py": '''
        import dataclasses

        @dataclasses.dataclass(frozen=True)
        class Input:
            hidden_states: object
            topk_ids: object

        class TokenDispatcherWithMC2:
            def token_dispatch(self, token_dispatch_input):
                return token_dispatch_input.topk_ids

            def token_combine(self, hidden_states, combine_metadata, bias=None):
                return hidden_states
    ''',
}


@pytest.fixture
def fake_copy(tmp_path):
    for relative, source in DISPATCHER_SOURCES.items():
        path = tmp_path / "vllm_ascend" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return tmp_path


def _load(path):
    """A module of the synthetic copy, by file (the installed vllm_ascend is never imported in pytest)."""
    spec = importlib.util.spec_from_file_location(f"planted_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_breakage_is_planted_where_the_line_defines_the_dispatcher(fake_copy):
    rows = torch.arange(6).reshape(3, 2)
    planted = moe.plant_breakage(str(fake_copy), "allgather", "dispatch")
    assert planted.startswith(os.path.join("vllm_ascend", "ops", "moe", "dispatch_old.py") + ": ")
    moe.plant_breakage(str(fake_copy), "allgather", "combine")
    old = _load(fake_copy / "vllm_ascend" / "ops" / "moe" / "dispatch_old.py").TokenDispatcherWithAllGather()
    assert torch.equal(old.token_dispatch(None, None, rows), rows.roll(1, 0))
    assert torch.equal(old.token_dispatch(hidden_states=None, topk_weights=None, topk_ids=rows), rows.roll(1, 0))
    assert torch.equal(old.token_combine(rows, {}).routed_out, rows.roll(1, 0))
    moe.plant_breakage(str(fake_copy), "mc2", "dispatch")
    moe.plant_breakage(str(fake_copy), "mc2", "combine")
    new = _load(fake_copy / "vllm_ascend" / "ops" / "fused" / "elsewhere.py")
    mc2 = new.TokenDispatcherWithMC2()
    assert torch.equal(mc2.token_dispatch(new.Input(None, rows)), rows.roll(1, 0))
    assert torch.equal(mc2.token_combine(rows, None), rows.roll(1, 0))


def test_a_breakage_without_its_dispatcher_is_refused(fake_copy):
    with pytest.raises(ConfigError, match=r"0 definitions of TokenDispatcherWithAll2AllV.token_dispatch"):
        moe.plant_breakage(str(fake_copy), "alltoall", "dispatch")


# -- the stand-in ------------------------------------------------------------------------------------

def test_a_kernel_registered_for_the_npu_serves_host_tensors_under_the_standin():
    """In a process of its own (the stand-in patches torch.library there, never in pytest)."""
    code = textwrap.dedent('''
        import torch
        from ascend_conformance.sut import standin
        standin._npu_kernels_serve_host_tensors()
        lib = torch.library.Library("conformance_standin_test", "FRAGMENT")
        lib.define("twice(Tensor x) -> Tensor")
        lib.impl("twice", lambda x: x * 2, "PrivateUse1")
        lib.define("kept(Tensor x) -> Tensor")
        lib.impl("kept", lambda x: x * 3, "CPU")
        lib.impl("kept", lambda x: x * 30, "PrivateUse1")
        print(torch.ops.conformance_standin_test.twice(torch.ones(1)).item(),
              torch.ops.conformance_standin_test.kept(torch.ones(1)).item())
    ''')
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2.0", "3.0"]


def test_only_0_13_s_runner_pads_every_dp_rank_to_the_largest_batch():
    hidden, slot = torch.ones(0, 8), torch.ones(0, 5)
    for release, module in LINES.items():
        got = lines.line_module(ADAPTER, release).runner_batch(hidden, slot, (7, 0))
        shapes = (tuple(got[0].shape), tuple(got[1].shape), got[2], got[3].tolist())
        if module == "v0_13":  # _sync_metadata_across_dp pads in eager mode too; padding rows are zeros
            assert shapes == ((7, 8), (7, 5), 7, [7, 7]) and not got[1].any()
        else:
            assert shapes == ((0, 8), (0, 5), 0, [7, 0])
