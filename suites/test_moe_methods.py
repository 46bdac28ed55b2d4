"""MoE methods, method level (docs/moe.md): every method's full forward against the dense oracle.

The oracle (``moe/oracle.py``) is independent dense float32 math: every expert applied to every token with
einsums, the K chosen outputs weighted — no sorting, no grouping, no communication. Tolerances come from
the single policy (``compare.Kind.ACCUMULATED``). Inputs are seeded (``moe/scenario.py``); every failing
case names its one-line repro ``python -m ascend_conformance moe ... --dump DIR``.

Matrix: layouts (world, DP, TP) with EP = world: 1 = 1×1; 2 = 2×1, 1×2; 4 = 4×1, 2×2; 8 = 4×2 ·
experts {8, 16, 64} · top-k {1, 2, 8} · tokens per DP rank: all 0, all 1, uneven (with a 0- and a 1-token
rank on DP 4) · placement contiguous / scattered expert_map (non-contiguous, uneven) · fp32 / fp16 / bf16.

* default tier, per (layout, method): every dtype × placement × token case (18 scenarios), with the 9
  (experts, top-k) pairs rotated through them so each pair meets each dtype and each token case — every
  code path on every world in one batched world run per test;
* full tier (``--full``): the cartesian product, 162 scenarios per (layout, method).

Where the real torch_npu runs the ops, MC2 scenarios outside the documented limits of its dispatch /
combine ops (float32, a world with no token at all, the SoC's EP and hidden sizes:
``moe/mc2_applicability.py``) are not run: the test's report lists them with the reason, and a test left
with none skips. The golden models (CPU) take every scenario.

Also here: the forward context, the expert placement and the selection policy (pure), and Dummy's shape
contract.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from moe_shapes import HIDDEN, INTERMEDIATE, LAYOUTS, layout_id

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness import rank_context
from ascend_conformance.moe import (COMPUTING_METHODS, ExpertPlacement, forward_context, mc2_tokens_capacity,
                                    select_method)
from ascend_conformance.moe.mc2_applicability import mc2_unsupported_reason, ops_soc
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.moe.scenario_on_rank import run_scenarios, setup_on_rank
from ascend_conformance.moe.scenario_report import failure_report
from ascend_conformance.moe.scenario_verdict import summarize
from ascend_conformance.tolerance import Kind, assert_close

EXPERTS = (8, 16, 64)
TOP_K = (1, 2, 8)
DTYPES = ("float32", "float16", "bfloat16")
PLACEMENTS = ("contiguous", "scattered")
TOKEN_CASES = ("zero", "one", "uneven")
UNEVEN = {1: (7,), 2: (3, 7), 4: (7, 0, 3, 1)}


def token_counts(case: str, dp: int) -> tuple[int, ...]:
    return {"zero": (0,) * dp, "one": (1,) * dp, "uneven": UNEVEN[dp]}[case]


def scenario(method, layout, experts, top_k, case, placement, dtype, seed) -> Scenario:
    world, dp, tp = layout
    counts = token_counts(case, dp)
    return Scenario(method=method, world_size=world, dp=dp, tp=tp, experts=experts, top_k=top_k, tokens=max(counts),
                    hidden=HIDDEN, intermediate=INTERMEDIATE, dtype=dtype, seed=seed, tokens_per_dp=counts,
                    placement=placement)


def _pairs(e, k, dtype, placement, case) -> set:
    """The factor pairs one scenario covers (the sizes with each other and with every code-path factor)."""
    return {("EK", e, k), ("Ed", e, dtype), ("Kd", k, dtype), ("Et", e, case), ("Kt", k, case), ("Ep", e, placement),
            ("Kp", k, placement)}


def default_tier(method: str, layout) -> list[Scenario]:
    """Every dtype × placement × token case once; (experts, top-k) chosen greedily so that the 18 scenarios
    cover every pair of factor levels (pairwise). Seeds differ per layout, not per method, so every method
    of a layout sees the same inputs."""
    covered, chosen = set(), []
    for dtype, placement, case in itertools.product(DTYPES, PLACEMENTS, TOKEN_CASES):
        e, k = max(itertools.product(EXPERTS, TOP_K), key=lambda ek: len(_pairs(*ek, dtype, placement, case) - covered))
        covered |= _pairs(e, k, dtype, placement, case)
        chosen.append((e, k, case, placement, dtype))
    base = 1000 * LAYOUTS.index(layout)
    return [scenario(method, layout, e, k, case, placement, dtype, seed=base + i)
            for i, (e, k, case, placement, dtype) in enumerate(chosen)]


def full_tier(method: str, layout) -> list[Scenario]:
    combos = itertools.product(EXPERTS, TOP_K, TOKEN_CASES, PLACEMENTS, DTYPES)
    return [scenario(method, layout, e, k, case, placement, dtype, seed=i)
            for i, (e, k, case, placement, dtype) in enumerate(combos)]


def _run_applicable_on_rank(batch: list[dict]) -> list[dict]:
    """run_scenarios over the batch, except the MC2 scenarios this rank's ops refuse (the real torch_npu
    ops outside their documented limits, moe/mc2_applicability.py; the golden models take every one):
    those come back as ``{"refused": reason}``. Every rank decides alike (same scenarios, same SoC)."""
    soc = ops_soc(rank_context().device)
    refused = {}
    for index, values in enumerate(batch):
        reason = mc2_unsupported_reason(Scenario.from_dict(values), soc) if values["method"] == "mc2" else None
        if reason:
            refused[index] = reason
    ran = iter(run_scenarios([values for index, values in enumerate(batch) if index not in refused]))
    return [{"refused": refused[index]} if index in refused else next(ran) for index in range(len(batch))]


def check_against_oracle(world, scenarios: list[Scenario], report=None, timeout: float = 600) -> list[dict]:
    """One world run for the batch; fail listing every scenario outside tolerance with its repro. Scenarios
    the ops of this host refuse are listed in the report (all refused: the test skips with the reasons)."""
    per_rank = world(scenarios[0].world_size, timeout=timeout).run(_run_applicable_on_rank,
                                                                    [s.to_dict() for s in scenarios])
    refused = {i: result["refused"] for i, result in enumerate(per_rank[0]) if "refused" in result}
    if refused:
        lines = [f"{scenarios[i].label()}: {reason}" for i, reason in refused.items()]
        if len(refused) == len(scenarios):
            pytest.skip(f"all {len(scenarios)} scenarios are outside the ops' documented limits, e.g. {lines[0]}")
        if report is not None:
            report.attach("scenarios not run: outside the MC2 ops' documented limits", "\n".join(lines))
    summaries = [summarize(s, [rank[i] for rank in per_rank]) for i, s in enumerate(scenarios) if i not in refused]
    failures = [failure_report(summary) for summary in summaries if not summary["ok"]]
    assert not failures, f"{len(failures)} of {len(summaries)} scenarios differ from the dense oracle:\n\n" + \
        "\n\n".join(failures)
    return summaries


# ------------------------------------------------------------------------------------ the matrix

def test_default_tier_covers_every_code_path_pairwise():
    """The selection itself: each (layout, method) runs every dtype × placement × token case, and every pair
    of factor levels among those and the sizes (experts, top-k) appears."""
    everything = set()
    for dtype, placement, case in itertools.product(DTYPES, PLACEMENTS, TOKEN_CASES):
        for e, k in itertools.product(EXPERTS, TOP_K):
            everything |= _pairs(e, k, dtype, placement, case)
    for method, layout in itertools.product(COMPUTING_METHODS, LAYOUTS):
        chosen = default_tier(method, layout)
        assert {(s.dtype, s.placement, s.tokens_per_dp) for s in chosen} == \
            {(d, p, token_counts(c, layout[1])) for d, p, c in itertools.product(DTYPES, PLACEMENTS, TOKEN_CASES)}
        case_of = {token_counts(c, layout[1]): c for c in TOKEN_CASES}
        pairs = set().union(*(_pairs(s.experts, s.top_k, s.dtype, s.placement, case_of[s.tokens_per_dp])
                              for s in chosen))
        assert pairs == everything, sorted(everything - pairs)


@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
@pytest.mark.parametrize("method", COMPUTING_METHODS)
def test_forward_matches_dense_oracle(world, report, method, layout):
    check_against_oracle(world, default_tier(method, layout), report)


@pytest.mark.full
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
@pytest.mark.parametrize("method", COMPUTING_METHODS)
def test_forward_matches_dense_oracle_full_matrix(world, report, method, layout):
    check_against_oracle(world, full_tier(method, layout), report, timeout=3600)


def test_a_wrong_output_fails_with_the_repro_line():
    """The failure path of check_against_oracle: a summary outside tolerance is reported with its repro."""
    case = scenario("alltoall", (4, 2, 2), 16, 2, "uneven", "scattered", "bfloat16", seed=3)
    good = {"rank": 0, "ok": True, "message": None, "max_abs_err": 0.0, "max_rel_err": 0.0, "tolerance_used": 0.1,
            "ops": "golden"}
    bad = {**good, "rank": 3, "ok": False, "message": "out (accumulated): 1 of 24 elements differ", "max_abs_err": 0.5}
    report = failure_report(summarize(case, [good, bad]))
    assert "ranks [3]" in report and "1 of 24 elements differ" in report
    assert report.splitlines()[-1] == "repro: " + case.repro()
    assert case.repro() == ("python -m ascend_conformance moe --method alltoall --world-size 4 --dp 2 --tp 2 --experts 16"
                            f" --top-k 2 --tokens 7 --hidden {HIDDEN} --intermediate {INTERMEDIATE} --dtype bfloat16 "
                            "--seed 3 --tokens-per-dp 3,7 --placement scattered --dump DIR")


# ------------------------------------------------------------------------------------------ Dummy

def _dummy_steps_on_rank(values: dict) -> dict:
    setup = setup_on_rank(Scenario.from_dict(values))
    method = setup.method("dummy")
    x, ids, weights = setup.inputs_on_device()
    prepared = method.prepare(x, ids, weights.float(), setup.ctx)
    dispatched = method.permute(prepared)
    out = method.forward(x, ids, weights, setup.mlp(method.ops), setup.ctx)
    return {"x": setup.x, "hidden": dispatched.hidden.cpu(), "counts": dispatched.group_list.cpu(), "out": out.cpu(),
            "num_local": setup.placement.num_local(setup.groups.ep.rank_in_group)}


@pytest.mark.parametrize("layout", [(2, 2, 1), (4, 2, 2)], ids=layout_id)
def test_dummy_keeps_shapes_and_the_token_buffer(world, layout):
    case = scenario("dummy", layout, 16, 2, "uneven", "scattered", "float16", seed=5)
    for rank, result in enumerate(world(layout[0]).run(_dummy_steps_on_rank, case.to_dict())):
        x = result["x"]
        # K copies of every row, in token order (brute force: row by row).
        expected = torch.stack([x[i // 2] for i in range(2 * x.shape[0])]) if x.shape[0] else x.new_zeros((0, HIDDEN))
        assert_close(result["hidden"], expected, kind=Kind.EXACT, what=f"rank {rank} dummy permuted rows")
        assert_close(result["counts"], torch.zeros(result["num_local"], dtype=torch.int64), kind=Kind.EXACT,
                     what=f"rank {rank} dummy counts")
        assert_close(result["out"], x, kind=Kind.EXACT, what=f"rank {rank} dummy output (the untouched token buffer)")


# ------------------------------------------------------------------------------- forward context

def test_forward_context_worked_example():
    ctx = forward_context([5, 0, 3], dp_rank=2, tp_size=2)
    assert (ctx.num_tokens, ctx.max_tokens_across_dp, ctx.padded_num_tokens) == (3, 5, 6)
    assert ctx.mc2_mask.tolist() == [True, True, True, False, False, False]
    empty = forward_context([5, 0, 3], dp_rank=1, tp_size=4)
    assert (empty.num_tokens, empty.padded_num_tokens, empty.mc2_mask.tolist()) == (0, 8, [False] * 8)
    assert forward_context([0, 0], dp_rank=0, tp_size=2).padded_num_tokens == 0


@pytest.mark.parametrize("counts, dp_rank, tp, padded", [([1], 0, 1, 1), ([1], 0, 2, 2), ([4, 4], 1, 2, 4),
                                                         ([7, 2], 0, 4, 8), ([9, 0, 0, 1], 3, 2, 10)])
def test_padded_num_tokens_rounds_the_largest_dp_batch_up_to_tp(counts, dp_rank, tp, padded):
    ctx = forward_context(counts, dp_rank, tp)
    assert ctx.padded_num_tokens == padded
    assert ctx.mc2_mask.tolist() == [i < counts[dp_rank] for i in range(padded)]


@pytest.mark.parametrize("counts, dp_rank, tp, message", [
    ([3, -1], 0, 1, "num_tokens_across_dp must list >= 0 tokens per DP rank, got [3, -1]"),
    ([3, 1], 2, 1, "dp_rank 2 is outside 0..1"),
    ([3], 0, 0, "tp_size must be a whole number >= 1, got 0"),
])
def test_forward_context_rejects_bad_values(counts, dp_rank, tp, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        forward_context(counts, dp_rank, tp)


# ------------------------------------------------------------------------------------- placement

def test_placement_worked_example_of_the_module_docstring():
    placement = ExpertPlacement.from_expert_maps([[-1, 1, -1, -1, 0, 2], [0, -1, 1, 2, -1, -1]])
    assert (placement.owner, placement.local) == ((1, 0, 1, 1, 0, 0), (0, 1, 1, 2, 0, 2))
    assert placement.slot_table().tolist() == [3, 1, 4, 5, 0, 2]
    assert (placement.slot_range(0), placement.slot_range(1)) == ((0, 3), (3, 6))
    assert placement.local_experts(0) == [4, 1, 5] and placement.local_experts(1) == [0, 2, 3]
    assert placement.expert_map(1).tolist() == [0, -1, 1, 2, -1, -1]


def test_default_placement_is_contiguous_with_identity_slots():
    placement = ExpertPlacement.contiguous(16, 4)
    assert placement.is_default and placement.slot_table().tolist() == list(range(16))
    assert placement.expert_map(2).tolist() == [-1] * 8 + [0, 1, 2, 3] + [-1] * 4


@pytest.mark.parametrize("experts, ranks", [(8, 8), (16, 4), (64, 8), (9, 2)])
def test_scattered_placements_are_uneven_non_contiguous_and_valid(experts, ranks):
    for seed in range(20):
        placement = ExpertPlacement.scattered(experts, ranks, seed)
        counts = placement.local_counts
        assert sum(counts) == experts and min(counts) >= 1
        maps = torch.stack([placement.expert_map(r) for r in range(ranks)])
        assert ((maps >= 0).sum(dim=0) == 1).all()  # every expert on exactly one rank
        assert ExpertPlacement.from_expert_maps(maps) == placement
    if experts > ranks:  # over 20 seeds some placement must be uneven and some non-contiguous
        samples = [ExpertPlacement.scattered(experts, ranks, seed) for seed in range(20)]
        assert any(len(set(p.local_counts)) > 1 for p in samples)
        assert any(p.local_experts(0) != sorted(p.local_experts(0)) or not p.is_default for p in samples)


@pytest.mark.parametrize("maps, message", [
    ([[0, -1], [0, -1]], "expert 0 must be held by exactly one EP rank, held by [0, 1]"),
    ([[0, 0], [-1, -1]], "local ids on EP rank 0 must be 0..1 once each, got [0, 0]"),
    ([[0, 1], [-1, -1]], "EP rank 1 holds no expert"),
    ([[0, 1], [-1]], "expert_maps must all have E entries, got lengths [2, 1]"),
])
def test_placement_rejects_inconsistent_expert_maps(maps, message):
    with pytest.raises(ConfigError) as error:
        ExpertPlacement.from_expert_maps(maps)
    assert message in str(error.value)


# ------------------------------------------------------------------------------------- selection

@pytest.mark.parametrize("soc, ep, per_device, tokens, cap, expected", [
    ("A2", 1, 64, 10, 512, "allgather"),   # no EP
    ("A3", 1, 64, 10, 512, "allgather"),
    ("A2", 16, 16, 100, 512, "mc2"),
    ("A2", 16, 24, 512, 512, "mc2"),       # every bound inclusive
    ("A2", 16, 25, 100, 512, "allgather"),  # too many experts per device
    ("A2", 8, 16, 100, 512, "allgather"),   # EP < 16
    ("A2", 32, 8, 513, 512, "allgather"),   # over the capacity
    ("A3", 2, 128, 512, 512, "mc2"),
    ("A3", 2, 128, 513, 512, "alltoall"),
    ("A3", 64, 4, 0, 0, "mc2"),
])
def test_selection_policy(soc, ep, per_device, tokens, cap, expected):
    assert select_method(soc, ep, per_device, tokens, cap) == expected


@pytest.mark.parametrize("max_tokens, tp, cap", [
    (256, 1, 256), (512, 1, 512), (1000, 1, 512), (10, 4, 12), (1000, 4, 1000), (4096, 4, 2048),
])
def test_mc2_capacity(max_tokens, tp, cap):
    """docs/moe.md's rule; the installed vllm-ascend's own is judged against it in suites/test_sut_moe.py."""
    assert mc2_tokens_capacity(max_tokens, tp) == cap


@pytest.mark.parametrize("args, message", [
    (("A5", 2, 8, 1, 1), "soc must be one of A2, A3, got 'A5'"),
    (("A3", 0, 8, 1, 1), "ep_size must be a whole number >= 1, got 0"),
    (("A3", 2, 8, -1, 1), "num_tokens must be a whole number >= 0, got -1"),
])
def test_selection_rejects_bad_values(args, message):
    with pytest.raises(ConfigError) as error:
        select_method(*args)
    assert str(error.value) == message
