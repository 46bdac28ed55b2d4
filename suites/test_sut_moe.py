"""vllm-ascend's own MoE communication methods against the dense oracle (docs/moe.md, docs/systems_under_test.md).

``test_comm_method[<device>-<method>-<layout>-<case group>]``: vllm-ascend's ``MoECommMethod`` (AllGather,
AlltoAll, MC2 with their token dispatchers and prepare / finalize) runs the full forward of its MoE layer
(adapter: ``ascend_conformance/sut/vllm_ascend_moe.py``) in a world of the layout, on a device type the
torch_npu stand-in emulates (or the host's, with the real torch_npu), for a group of scenarios: fp32 / fp16 /
bf16, uneven tokens per DP rank with 0-token ranks (DP padding, MC2's mask), TP split, K = 1 .. 4. A case
group is the contiguous map in one dtype, or one of the other expert maps.
Every rank's output must match the dense oracle under the ACCUMULATED tolerance; otherwise the test raises
Divergence naming the release, method, device type, expert map and scenario, with the mismatch table and
the repro line. One world run per test.

Expert maps, as the release takes them: ``contiguous`` (no EPLB), ``permuted`` (a non-contiguous map
installed without log2phy), ``eplb`` (static EPLB file: map + log2phy), ``eplb-redundant`` (static EPLB
file with one redundant replica per rank).

``test_allgather_with_redundant_experts_indexes_past_the_expert_map``: what 0.23.0.post1 does with
AllGather and redundant experts (it crashes before computing anything, so it is a characterisation, not a
divergence). ``test_broken_copy_is_caught``: a copy of vllm-ascend with a broken combine or expert-map
step, run first on the ranks' path, is caught as Divergence naming the method.

Known divergences of the installed release are strict xfails from ``suites/expectations/``.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil

import pytest
from sut_support import need_stack, sut_world

from ascend_conformance import platform as platforms
from ascend_conformance.errors import Divergence
from ascend_conformance.harness.pool import RankFailure
from ascend_conformance.moe.mc2_applicability import mc2_unsupported_reason
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.sut import VLLM_ASCEND, stack
from ascend_conformance.sut.vllm_ascend_moe import RELEASE, SutCase, check, run_cases

pytestmark = [pytest.mark.sut(VLLM_ASCEND), pytest.mark.area("moe")]

LAYOUTS = {"W2-DP2": (2, 2, 1), "W2-TP2": (2, 1, 2), "W4-DP2-TP2": (4, 2, 2)}  # world, DP, TP
METHODS = ("allgather", "alltoall", "mc2")
DTYPES = ("float32", "float16", "bfloat16")
EXPERT_MAPS = ("contiguous", "permuted", "eplb", "eplb-redundant")
# A case group is one test: the contiguous map per dtype, every other map with a dtype mix.
CASE_GROUPS = tuple(f"contiguous-{dtype}" for dtype in DTYPES) + EXPERT_MAPS[1:]
# Device types differ in the adaptor, not the layout: A5 in the routing op, the unpermute index and MC2's
# expert_scales; A2 only in MC2's dispatch / combine arguments (no TP domain). The default tier runs the
# 4-rank layout on A3 only and A2 for MC2 only; --full runs everything everywhere.
DEFAULT_DEVICES = {"A3": (METHODS, tuple(LAYOUTS)), "A5": (METHODS, ("W2-DP2", "W2-TP2")),
                   "A2": (("mc2",), ("W2-DP2", "W2-TP2"))}
FULL_DEVICES = {device: (METHODS, tuple(LAYOUTS)) for device in ("A3", "A5", "A2")}
# AllGather with redundant experts does not compute at all in 0.23.0.post1 (see the characterisation test);
# torch_npu's MC2 dispatch / combine take bf16 / fp16 only (the golden ops would accept float32).
NOT_COMPUTED = {("allgather", "eplb-redundant"), ("mc2", "contiguous-float32")}
SHAPES = ((8, 2), (16, 1), (16, 4))  # (E, K); H 8, I 4
SHAPE = dict(hidden=8, intermediate=4)


def _token_cases(dp: int) -> list[tuple[int, ...]]:
    """Tokens per DP rank: uneven with a 0-token rank (DP padding, 7 tokens over TP 2), every rank empty,
    one token each (fewer tokens than TP ranks)."""
    uneven = {1: (7,), 2: (7, 0), 4: (7, 0, 3, 1)}[dp]
    return [uneven, (0,) * dp, (1,) * dp]


def scenarios(method: str, layout: str, group: str, full: bool) -> tuple[str, list[Scenario]]:
    """(expert map, the scenarios of one test). Default: each token case once with the shapes rotating;
    full: every token case x shape (x dtype for the map groups)."""
    world, dp, tp = LAYOUTS[layout]
    seed = sum(map(ord, layout + group)) % 97
    uneven, empty, one_each = _token_cases(dp)
    if group.startswith("contiguous-"):
        expert_map, dtypes = "contiguous", (group.split("-", 1)[1],)
        # torch_npu's MC2 dispatch refuses a world without a token (docs/ops.md); the golden ops take it
        tokens = [uneven, empty, one_each] if method != "mc2" else [uneven, one_each]
    else:
        expert_map, dtypes = group, DTYPES if method != "mc2" else DTYPES[1:]
        tokens = [uneven, one_each]  # an empty world says nothing about a map
    if full:
        combos = list(itertools.product(dtypes, tokens, SHAPES))
    elif expert_map == "contiguous":
        combos = [(dtypes[0], counts, SHAPES[i]) for i, counts in enumerate(tokens)]
    else:
        combos = [(dtypes[0], uneven, SHAPES[0]), ("bfloat16", one_each, SHAPES[2])]
    return expert_map, [
        Scenario(method=method, world_size=world, dp=dp, tp=tp, experts=experts, top_k=top_k, tokens=max(counts),
                 tokens_per_dp=counts, dtype=dtype, seed=seed + index, **SHAPE)
        for index, (dtype, counts, (experts, top_k)) in enumerate(combos)]


def _params(full: bool):
    for device, (methods, layouts) in (FULL_DEVICES if full else DEFAULT_DEVICES).items():
        for method, layout, group in itertools.product(methods, layouts, CASE_GROUPS):
            if (method, group) not in NOT_COMPUTED:
                yield pytest.param(device, method, layout, group, id=f"{device}-{method}-{layout}-{group}")


def pytest_generate_tests(metafunc):
    full = metafunc.config.getoption("--full")
    if metafunc.function.__name__ == "test_comm_method":
        metafunc.parametrize(("device_type", "method", "layout", "group"), list(_params(full)))
    if metafunc.function.__name__ == "test_broken_copy_is_caught":  # each breakage costs a fresh pool
        metafunc.parametrize("breakage", list(BREAKAGES) if full else DEFAULT_BREAKAGES)


@pytest.fixture
def vllm_ascend_installed():
    need_stack(VLLM_ASCEND)


def run_and_check(world, report, device_type: str, cases: list[SutCase], variant: str = "", **kwargs) -> list[dict]:
    """Run the cases in one world; every case's summary, or Divergence naming every failing case (the
    first one with its full report)."""
    n = cases[0].scenario.world_size
    results = sut_world(world, VLLM_ASCEND, n, timeout=600, variant=variant or device_type).run(
        run_cases, [case.to_dict() for case in cases], device_type, **kwargs)
    report.sut(ops=results[0][0]["ops"], device_type=device_type)
    summaries, failures = [], []
    for index, case in enumerate(cases):
        try:
            summaries.append(check(case, device_type, [rank[index] for rank in results]))
        except Divergence as exc:
            failures.append(str(exc))
    if failures:
        others = "".join(f"\nalso: {failure.splitlines()[0]}" for failure in failures[1:])
        raise Divergence(f"{failures[0]}\n({len(failures)} of {len(cases)} scenarios diverge){others}")
    return summaries


def test_comm_method(world, report, request, vllm_ascend_installed, device_type, method, layout, group):
    expert_map, group_scenarios = scenarios(method, layout, group, request.config.getoption("--full"))
    if method == "mc2" and platforms.get().name == "npu":  # the real MC2 ops take only their documented shapes
        refused = {s: mc2_unsupported_reason(s, device_type) for s in group_scenarios}
        group_scenarios = [s for s in group_scenarios if not refused[s]]
        if not group_scenarios:
            pytest.skip(f"every scenario is outside the MC2 ops' documented limits, e.g. {next(iter(refused.values()))}")
        notes = [f"{s.label()}: {reason}" for s, reason in refused.items() if reason]
        if notes:
            report.attach("scenarios not run: outside the MC2 ops' documented limits", "\n".join(notes))
    summaries = run_and_check(world, report, device_type, [SutCase(s, expert_map) for s in group_scenarios])
    report.figure("max abs err", max(float(s["max_abs_err"]) for s in summaries), "")


def test_allgather_with_redundant_experts_indexes_past_the_expert_map(world, vllm_ascend_installed):
    """0.23.0.post1's AllGather dispatcher zeroes weights with ``expert_map[topk_ids] != -1`` after log2phy
    turned the ids into physical ones: with R redundant experts the physical ids reach E + R - 1 and index
    past the logical expert_map [E] (token_dispatcher.py TokenDispatcherWithAllGather.token_dispatch). On
    an NPU that is an out-of-bounds gather; here it is an IndexError before anything is computed."""
    if stack.inspect()[VLLM_ASCEND].version != RELEASE:
        pytest.skip(f"characterises vllm_ascend {RELEASE}; installed: {stack.inspect()[VLLM_ASCEND].version}")
    scenario = scenarios("allgather", "W2-DP2", "eplb-redundant", False)[1][0]
    with pytest.raises(RankFailure, match=r"IndexError: index \d+ is out of bounds for dimension 0 with size 8"):
        sut_world(world, VLLM_ASCEND, 2, timeout=600, variant="A3").run(
            run_cases, [SutCase(scenario, "eplb-redundant").to_dict()], "A3")


# -- a deliberately broken copy is caught ------------------------------------------------------------

def _break(copy_root: str, relative: str, old: str, new: str) -> None:
    path = os.path.join(copy_root, "vllm_ascend", relative)
    with open(path) as f:
        text = f.read()
    if text.count(old) != 1:
        pytest.fail(f"cannot break the copy: {relative} has {text.count(old)} occurrences of {old!r}")
    with open(path, "w") as f:
        f.write(text.replace(old, new))


BREAKAGES = {
    # AllGather's combine sums the K expert outputs of a token unweighted
    "allgather-combine-unweighted": (
        "allgather", "ops/fused_moe/token_dispatcher.py",
        "            probs=combine_metadata.topk_weights,\n        )\n        if len(combine_metadata.restore_shape) == 3:",
        "            probs=torch.ones_like(combine_metadata.topk_weights),\n        )\n"
        "        if len(combine_metadata.restore_shape) == 3:"),
    # MC2's combine weighs every expert output equally
    "mc2-combine-unweighted": (
        "mc2", "ops/fused_moe/token_dispatcher.py",
        '"expert_scales": topk_weights.to(torch.float32),\n            "expert_shard_type": 0,',
        '"expert_scales": torch.ones_like(topk_weights, dtype=torch.float32),\n            "expert_shard_type": 0,'),
    # the expert-map step: log2phy is never applied, so EPLB routes logical ids as physical ones
    "alltoall-expert-map-ignored": (
        "alltoall", "ops/fused_moe/moe_comm_method.py",
        "        if fused_experts_input.routing.log2phy is not None:\n"
        "            routed_topk_ids = fused_experts_input.routing.log2phy[routed_topk_ids]",
        "        if False:\n            routed_topk_ids = fused_experts_input.routing.log2phy[routed_topk_ids]"),
}


DEFAULT_BREAKAGES = ["allgather-combine-unweighted", "alltoall-expert-map-ignored"]


def test_broken_copy_is_caught(world, report, tmp_path, vllm_ascend_installed, breakage):
    """A copy of the installed vllm_ascend (never the installed package) with one step broken, first on
    the ranks' path in pools of its own: the suite's check must raise Divergence naming the method."""
    method, relative, old, new = BREAKAGES[breakage]
    source = stack.inspect()[VLLM_ASCEND].location  # found, never imported here: no torch_npu in pytest
    copy_root = str(tmp_path / "vllm_ascend_copy")
    shutil.copytree(os.path.join(source, "vllm_ascend"), os.path.join(copy_root, "vllm_ascend"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    _break(copy_root, relative, old, new)
    expert_map, broken = scenarios(method, "W2-DP2", "eplb" if "expert-map" in breakage else "contiguous-bfloat16", False)
    cases = [SutCase(scenario, expert_map) for scenario in broken]
    with pytest.raises(Divergence) as caught:
        run_and_check(world, report, "A3", cases, variant=f"A3-broken-{breakage}", vllm_ascend_path=copy_root)
    headline = str(caught.value).splitlines()[0]
    assert re.search(rf"vllm_ascend {re.escape(RELEASE)} {cases[0].comm_class()}", headline), headline
