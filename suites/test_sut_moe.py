"""vllm-ascend's own MoE layer and comm methods against the dense oracle (docs/moe.md, docs/systems_under_test.md).

The adapter (``ascend_conformance/sut/vllm_ascend_moe.py``) builds the installed release's own MoE layer and
runs its own forward glue (``forward_impl``, its quant method's ``apply``, prepare / finalize, the token
dispatchers) in a world of the layout, on a device type the torch_npu stand-in emulates (or the host's, with
the real torch_npu), handing the layer a routing function that returns the scenario's routing. Every rank's
output must match the dense oracle under the ACCUMULATED tolerance. Each test is one world run (the
divergence test and the contract check of the same id share it).

Two kinds of verdict, reported apart:

``test_comm_method[<device>-<method>-<layout>-<case group>]`` -- the release in a configuration that
reaches the method: device type <device> (its build), EP = the world of <layout> (``enable_expert_parallel``),
the scheduler's ``max_num_seqs`` from which the release derives its MC2 token capacity (64 for MC2; 1, so
that a batch above TP tokens leaves MC2, for AlltoAll / AllGather), and the expert map of the case group as
``additional_config`` gives it (``contiguous``: none; ``eplb``: ``eplb_config.expert_map_path``;
``eplb-redundant``: a placement file with one replica per rank). The release's own comm-method selection
picks the method for every scenario of the test (a rank whose release picks another fails the test: the
configuration does not reach it). A difference from the oracle is a Divergence of the release, naming the
release, method, device type, deployment and scenario.

``test_method_contract[<device>-<method>-<layout>-<case group>]`` -- contract checks: the method forced
into the forward context on inputs no configuration of the release produces (record property ``check =
contract``; never a Divergence, never in an expectations file): the ``permuted`` map (a non-contiguous map
installed with the layer's ``update_expert_map`` and no log2phy: the release builds log2phy whenever a map is
not the contiguous default, and enables dynamic EPLB only with one), a method the device type's selection
never picks at EP 2 / 4 (A2's MC2 needs EP >= 16, A2 has no AlltoAll, A3 no AllGather with EP), and batches the
selection sends elsewhere (AlltoAll with no more tokens than the MC2 capacity). Each records ``contract =
holds`` or what fails; the check asserts the method's documented contract (``CONTRACTS``): the permuted map
is a precondition (the methods address experts by position), every other input must compute right.

``test_mc2_tokens_capacity[M-TP]``: the release's own ``set_mc2_tokens_capacity`` against the reference rule
(``moe/selection.py mc2_tokens_capacity``, docs/moe.md). ``test_broken_copy_is_caught``: a copy of the
installed vllm_ascend with one method's dispatch or combine broken (found in whatever file of the line
holds it), run first on the ranks' path, is caught as Divergence naming the method.

Known divergences of the installed release are strict xfails from ``suites/expectations/``.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil

import pytest
from moe_shapes import MC2_LIMITED_PLATFORMS, SUT_HIDDEN, SUT_INTERMEDIATE
from sut_support import need_feature, need_stack, sut_world

from ascend_conformance import platform as platforms
from ascend_conformance.errors import Divergence
from ascend_conformance.moe.mc2_applicability import mc2_unsupported_reason
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.moe.selection import mc2_tokens_capacity, select_method
from ascend_conformance.sut import VLLM_ASCEND, lines, stack
from ascend_conformance.sut.vllm_ascend_moe import (ADAPTER, MAX_NUM_SEQS, SMALL_MAX_NUM_SEQS, SutCase, check,
                                                    plant_breakage, release_label, run_capacities, run_cases)

pytestmark = [pytest.mark.sut(VLLM_ASCEND), pytest.mark.area("moe")]

LAYOUTS = {"W2-DP2": (2, 2, 1), "W2-TP2": (2, 1, 2), "W4-DP2-TP2": (4, 2, 2)}  # world, DP, TP
METHODS = ("allgather", "alltoall", "mc2")
DTYPES = ("float32", "float16", "bfloat16")
EXPERT_MAPS = ("contiguous", "permuted", "eplb", "eplb-redundant")
# A case group is one test: the contiguous map per dtype, every other map with a dtype mix.
CASE_GROUPS = tuple(f"contiguous-{dtype}" for dtype in DTYPES) + EXPERT_MAPS[1:]
# Device types differ in the adaptor, not the layout: A5 in the routing op, the unpermute index and MC2's
# expert_scales; A2 in MC2's dispatch / combine arguments (no TP domain). AllGather's code is the same on
# A2 and A3, and A2 is where the release selects it (EP < 16), so AllGather runs on A2 and A5. The default
# tier runs the 4-rank layout on A3 only; --full runs everything everywhere.
DEFAULT_DEVICES = {"A3": (("alltoall", "mc2"), tuple(LAYOUTS)), "A5": (METHODS, ("W2-DP2", "W2-TP2")),
                   "A2": (("allgather", "mc2"), ("W2-DP2", "W2-TP2"))}
FULL_DEVICES = {device: (METHODS, tuple(LAYOUTS)) for device in ("A3", "A5", "A2")}
# torch_npu's MC2 dispatch / combine take bf16 / fp16 only (the golden ops would accept float32).
NOT_COMPUTED = {("mc2", "contiguous-float32")}
SHAPES = ((8, 2), (16, 1), (16, 4))  # (E, K)
# H and I: 8 and 4 on cpu; where the MC2 ops' documented limits apply (an NPU, the emulated NPU), sizes inside them
SHAPE = dict(hidden=SUT_HIDDEN, intermediate=SUT_INTERMEDIATE)
# The contract each forced input is held to (docs/systems_under_test.md): "precondition" -- the method is
# documented to need something the input lacks, so some scenario must differ from the oracle; "holds" --
# the method must compute right although the release never selects it for the input.
CONTRACTS = {"permuted": "precondition", "unselected": "holds"}


def _token_cases(dp: int) -> list[tuple[int, ...]]:
    """Tokens per DP rank: uneven with a 0-token rank (DP padding, 7 tokens over TP 2), every rank empty,
    one token each (fewer tokens than TP ranks)."""
    uneven = {1: (7,), 2: (7, 0), 4: (7, 0, 3, 1)}[dp]
    return [uneven, (0,) * dp, (1,) * dp]


def scenarios(method: str, layout: str, group: str, full: bool) -> tuple[str, list[Scenario]]:
    """(expert map, the scenarios of one test id). Default: each token case once with the shapes rotating;
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


def deployment(method: str) -> int:
    """The scheduler's max_num_seqs under which the release selects ``method`` when the batch allows it."""
    return MAX_NUM_SEQS if method == "mc2" else SMALL_MAX_NUM_SEQS


def _line_shim():
    try:
        return lines.shim(ADAPTER, VLLM_ASCEND)
    except Exception:  # noqa: BLE001 - no release here (every test then skips on need_stack) or an unknown line
        return None


def selected_method(device: str, scenario: Scenario, shim) -> str | None:
    """What the release's comm-method selection picks for the scenario under the method's deployment, as the
    suite states it for its ids (docs/moe.md's policy for A2 / A3, the line's A5 rule from the shim). Every
    rank checks it against the release's own ``select_moe_comm_method`` (NotReached otherwise).

    The A5 rule reads vLLM's ``parallel_config.world_size_across_dp``: under the external launcher the
    suite's worlds are (torchrun, verl), vLLM's ``world_size`` already counts DP and the property multiplies
    by DP again, so the release sees world x DP."""
    cap = mc2_tokens_capacity(deployment(scenario.method), scenario.tp)
    tokens = max(scenario.token_counts())
    if device == "A5":
        rule = getattr(shim, "A5_SELECTION", None)
        return rule(scenario.world_size * scenario.dp, scenario.top_k, tokens, cap) if rule else None
    return select_method(device, scenario.world_size, scenario.experts // scenario.world_size, tokens, cap)


def split(device: str, method: str, layout: str, group: str, full: bool, shim) -> tuple[str, list, list]:
    """(expert map, the scenarios the release's selection reaches, the contract ones forced instead).

    Forced: every scenario of the permuted map (its precondition), and, with the contiguous map, the ones
    the selection sends elsewhere (the method must still compute right). A static placement is judged only
    where the release selects the method: forced, it would only repeat what the reached tests find."""
    expert_map, group_scenarios = scenarios(method, layout, group, full)
    if expert_map == "permuted":
        return expert_map, [], group_scenarios
    reached = [s for s in group_scenarios if selected_method(device, s, shim) == method]
    forced = [s for s in group_scenarios if s not in reached] if expert_map == "contiguous" else []
    return expert_map, reached, forced


def _params(full: bool, kind: str):
    shim = _line_shim()
    for device, (methods, layouts) in (FULL_DEVICES if full else DEFAULT_DEVICES).items():
        for method, layout, group in itertools.product(methods, layouts, CASE_GROUPS):
            if (method, group) in NOT_COMPUTED:
                continue
            _, reached, forced = split(device, method, layout, group, full, shim)
            if reached if kind == "reached" else forced:
                yield pytest.param(device, method, layout, group, id=f"{device}-{method}-{layout}-{group}")


def pytest_generate_tests(metafunc):
    full = metafunc.config.getoption("--full")
    names = ("device_type", "method", "layout", "group")
    if metafunc.function.__name__ == "test_comm_method":
        metafunc.parametrize(names, list(_params(full, "reached")))
    if metafunc.function.__name__ == "test_method_contract":
        metafunc.parametrize(names, list(_params(full, "forced")))
    if metafunc.function.__name__ == "test_broken_copy_is_caught":  # each breakage costs a fresh pool
        metafunc.parametrize("breakage", list(BREAKAGES) if full else DEFAULT_BREAKAGES)


def _need_device(device_type: str) -> None:
    need_feature(ADAPTER, VLLM_ASCEND, "comm_methods")
    need_feature(ADAPTER, VLLM_ASCEND, f"device_{device_type}")


def run_world(world, device_type: str, cases: list[SutCase], variant: str = "", **kwargs) -> list[list[dict]]:
    """Every rank's results for the cases, from one world run."""
    n = cases[0].scenario.world_size
    return sut_world(world, VLLM_ASCEND, n, timeout=600, variant=variant or device_type).run(
        run_cases, [case.to_dict() for case in cases], device_type, **kwargs)


def verdicts(device_type: str, cases: list[SutCase], results: list[list[dict]]) -> tuple[list[dict], list[str]]:
    """(summaries of the cases that match the oracle, the first line of every other case's failure:
    Divergence, NotReached or CaseCrashed, each naming the case)."""
    summaries, failures = [], []
    for index, case in enumerate(cases):
        try:
            summaries.append(check(case, device_type, [rank[index] for rank in results]))
        except Divergence as exc:
            failures.append(str(exc))
    return summaries, failures


def raise_failures(failures: list[str], total: int) -> None:
    if failures:
        others = "".join(f"\nalso: {failure.splitlines()[0]}" for failure in failures[1:])
        raise Divergence(f"{failures[0]}\n({len(failures)} of {total} scenarios diverge){others}")


def run_and_check(world, report, device_type: str, cases: list[SutCase], variant: str = "", **kwargs) -> list[dict]:
    """Run the cases in one world; every case's summary, or Divergence naming every failing case (the
    first one with its full report)."""
    results = run_world(world, device_type, cases, variant, **kwargs)
    report.sut(ops=results[0][0].get("ops"), device_type=device_type)
    summaries, failures = verdicts(device_type, cases, results)
    raise_failures(failures, len(cases))
    return summaries


def _applicable(report, device_type: str, method: str, group_scenarios: list[Scenario]) -> tuple[list, list]:
    """(the scenarios the MC2 ops of ``device_type`` take, why each other one is refused): on an NPU the real
    ops' documented limits, and the same limits on the emulated NPU (its stand-in emulates that SoC); every
    scenario on cpu."""
    if method != "mc2" or platforms.get().name not in MC2_LIMITED_PLATFORMS:
        return group_scenarios, []
    refused = {s: mc2_unsupported_reason(s, device_type) for s in group_scenarios}
    notes = [f"{s.label()}: {reason}" for s, reason in refused.items() if reason]
    if notes:
        report.attach("scenarios not run: outside the MC2 ops' documented limits", "\n".join(notes))
    return [s for s in group_scenarios if not refused[s]], [reason for reason in refused.values() if reason]


def _skip_outside_limits(device_type: str, refusals: list[str]) -> None:
    """No scenario of the test is one the MC2 ops take: skip, naming the first scenario's reason."""
    pytest.skip(f"every scenario is outside the MC2 ops' documented limits on {device_type}"
                + (f": {refusals[0]}" if refusals else ""))


def _shared_run(world, shared_runs, report, device_type, method, layout, group, full):
    """One world run for both kinds of verdict of an id: (reached cases, forced cases, results of each, why
    the MC2 ops refuse the scenarios left out)."""
    shim = lines.shim(ADAPTER, VLLM_ASCEND)
    expert_map, reached, forced = split(device_type, method, layout, group, full, shim)
    reached, refused_reached = _applicable(report, device_type, method, reached)
    forced, refused_forced = _applicable(report, device_type, method, forced)
    refusals = refused_reached + refused_forced
    cases = ([SutCase(s, expert_map, deployment(method)) for s in reached]
             + [SutCase(s, expert_map, deployment(method), forced=True) for s in forced])
    if not cases:
        _skip_outside_limits(device_type, refusals)
    key = f"moe-{device_type}-{method}-{layout}-{group}-{'full' if full else 'default'}"
    results = shared_runs.get(key, lambda: run_world(world, device_type, cases))
    report.sut(ops=results[0][0].get("ops"), device_type=device_type)
    per_case = [[rank[index] for rank in results] for index in range(len(cases))]
    return (cases[:len(reached)], per_case[:len(reached)], cases[len(reached):], per_case[len(reached):],
            refusals)


def test_comm_method(world, shared_runs, report, request, device_type, method, layout, group):
    """The release in the configuration the id names (module docstring): its selection picks ``method`` on
    ``device_type`` with EP = the layout's world and the method's deployment; the layer's output must match
    the dense oracle."""
    _need_device(device_type)
    full = request.config.getoption("--full")
    cases, results, _, _, refusals = _shared_run(world, shared_runs, report, device_type, method, layout, group,
                                                 full)
    if not cases:
        _skip_outside_limits(device_type, refusals)
    summaries, failures = verdicts(device_type, cases, [list(r) for r in zip(*results)])
    raise_failures(failures, len(cases))
    report.figure("max abs err", max(float(s["max_abs_err"]) for s in summaries), "")


def test_method_contract(world, shared_runs, report, request, record_property, device_type, method, layout,
                              group):
    """Contract check (module docstring): ``method`` forced into the forward context on inputs no
    configuration of the release produces; recorded apart (``check = contract``), never a Divergence."""
    _need_device(device_type)
    record_property("check", "contract")
    full = request.config.getoption("--full")
    _, _, cases, results, refusals = _shared_run(world, shared_runs, report, device_type, method, layout, group,
                                                 full)
    if not cases:
        _skip_outside_limits(device_type, refusals)
    _, failures = verdicts(device_type, cases, [list(r) for r in zip(*results)])
    contract = CONTRACTS["permuted" if group == "permuted" else "unselected"]
    outcome = "holds" if not failures else f"violated: {failures[0].splitlines()[0]}"
    record_property("contract", outcome)
    if contract == "precondition":
        assert failures, (f"contract check: {release_label()} {cases[0].comm_class()} ({device_type}) computes right "
                          f"with a non-contiguous expert map and no log2phy in all {len(cases)} scenarios: the "
                          f"documented precondition (experts addressed by position) no longer holds")
        report.attach("precondition observed", "\n".join(f.splitlines()[0] for f in failures))
    else:
        assert not failures, (f"contract check (not a divergence: no configuration of the release selects this "
                              f"method for these inputs): {failures[0]}\n({len(failures)} of {len(cases)})")


# -- the MC2 token capacity ---------------------------------------------------------------------------

CAPACITY_BUDGETS = (1, 64, 256, 512, 1000, 4096)
CAPACITY_TP = (1, 2, 4)


@pytest.mark.parametrize("budget, tp", list(itertools.product(CAPACITY_BUDGETS, CAPACITY_TP)),
                         ids=[f"M{m}-TP{t}" for m, t in itertools.product(CAPACITY_BUDGETS, CAPACITY_TP)])
def test_mc2_tokens_capacity(world, shared_runs, budget, tp):
    """The release's MC2 token capacity for a runner sized for ``budget`` decode requests (the scheduler's
    max_num_seqs; no graph capture, no prefill MC2) at TP ``tp``, against docs/moe.md's rule
    ``min(ceil(M / TP), 512) * TP``: the capacity decides whether a batch goes to MC2."""
    need_feature(ADAPTER, VLLM_ASCEND, "mc2_capacity")
    capacities = shared_runs.get("moe-mc2-capacity", lambda: sut_world(world, VLLM_ASCEND, 2, timeout=600,
                                                                       variant="A3").run(
        run_capacities, list(CAPACITY_BUDGETS), list(CAPACITY_TP), "A3")[0])
    got, rule = capacities[f"{budget},{tp}"], mc2_tokens_capacity(budget, tp)
    if got != rule:
        raise Divergence(f"{release_label()} set_mc2_tokens_capacity gives {got} tokens for max_num_seqs {budget} at "
                         f"TP {tp} (eager, decode query length 1); docs/moe.md's rule min(ceil(M / TP), 512) * TP "
                         f"gives {rule}")


# -- a deliberately broken copy is caught ------------------------------------------------------------
#
# Each breakage is planted where the installed line keeps the method's token dispatcher, found by probing its
# source (vllm_ascend_moe.plant_breakage), never by one release's text.

BREAKAGES = {f"{method}-{stage}": (method, stage) for method in METHODS for stage in ("dispatch", "combine")}
DEFAULT_BREAKAGES = ["allgather-combine", "alltoall-dispatch"]


def test_broken_copy_is_caught(world, report, tmp_path, breakage):
    """A copy of the installed vllm_ascend (never the installed package) with one method's dispatch or combine
    broken, first on the ranks' path in pools of its own: the suite's check must raise Divergence naming the
    method."""
    need_stack(VLLM_ASCEND)
    need_feature(ADAPTER, VLLM_ASCEND, "comm_methods")
    method, stage = BREAKAGES[breakage]
    source = stack.inspect()[VLLM_ASCEND].location  # found, never imported here: no torch_npu in pytest
    copy_root = str(tmp_path / "vllm_ascend_copy")
    shutil.copytree(os.path.join(source, "vllm_ascend"), os.path.join(copy_root, "vllm_ascend"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    planted = plant_breakage(copy_root, method, stage)
    report.attach("planted", planted)
    device = "A3" if method != "allgather" else "A2"
    group = "contiguous-bfloat16"
    _, reached, _ = split(device, method, "W2-DP2", group, False, lines.shim(ADAPTER, VLLM_ASCEND))
    cases = [SutCase(s, "contiguous", deployment(method)) for s in reached]
    with pytest.raises(Divergence) as caught:
        run_and_check(world, report, device, cases, variant=f"{device}-broken-{breakage}", vllm_ascend_path=copy_root)
    headline = str(caught.value).splitlines()[0]
    assert re.search(rf"{re.escape(release_label())} {cases[0].comm_class()}", headline), headline
