"""MoE methods, path level: the native path against the op paths on the same inputs, and the traps.

* NativeAllGather (pure torch) vs AllGather (``npu_moe_init_routing_v2`` / ``npu_moe_token_unpermute``;
  golden models on CPU, torch_npu on NPU): the rows handed to the experts and the per-expert counts
  exactly, the combined and final outputs within the ACCUMULATED tolerance — on every layout.
* AllToAll and MC2 vs NativeAllGather: outputs within tolerance everywhere; with TP 1 and no empty DP rank
  (no padding anywhere) also the routing exactly: AllToAll's and MC2's received rows and counts are
  identical, and equal to the native rows of real (non-padding) tokens.
* Traps, each shown to catch a deliberately broken variant:
  - weights of other ranks' experts must be zeroed (a variant that forgets the mask is caught);
  - the abs(-1) → row 1 trick meeting a non-finite row: an inf / NaN in row 1 of the expert output must
    stay in the token that owns that row (vllm-ascend's abs trick spreads it: caught);
  - rows documented as undefined (past the valid rows of init_routing, grouped matmul and dispatch) are
    filled with NaN as real ops may leave garbage there: no method may read them;
  - a DP rank with 0 tokens still joins every collective: every member of every group issues the same
    sequence of collectives, bounded by world(n, timeout=...).

Where the real torch_npu runs the ops, MC2 is left out of a case its dispatch / combine ops do not take
(``moe/mc2_applicability.py``: float32, a world without tokens, the SoC's EP and hidden sizes), with the
reason in the test's report or as the skip reason; the golden models take every case.
"""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
from moe_shapes import HIDDEN, INTERMEDIATE, LAYOUTS, layout_id

from ascend_conformance.collective_recorder import CollectiveRecorder
from ascend_conformance.harness import rank_context
from ascend_conformance.moe import AllGather, NativeAllGather
from ascend_conformance.moe.mc2_applicability import mc2_unsupported_reason, ops_soc
from ascend_conformance.moe.ops import GoldenOps
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.moe.scenario_on_rank import run_on_rank, setup_on_rank
from ascend_conformance.moe.scenario_verdict import summarize
from ascend_conformance.tolerance import Kind, assert_close

UNEVEN = {1: (6,), 2: (6, 3), 4: (6, 2, 5, 1)}
WITH_EMPTY_RANK = {1: (0,), 2: (0, 5), 4: (4, 0, 0, 2)}


def make(method, layout, counts, *, experts=16, top_k=2, dtype="float32", placement="contiguous", seed=0):
    world, dp, tp = layout
    return Scenario(method=method, world_size=world, dp=dp, tp=tp, experts=experts, top_k=top_k, tokens=max(counts),
                    hidden=HIDDEN, intermediate=INTERMEDIATE, dtype=dtype, seed=seed, tokens_per_dp=tuple(counts),
                    placement=placement)


def path_cases(layout, method="allgather") -> list[Scenario]:
    dp = layout[1]
    return [make(method, layout, UNEVEN[dp], dtype="float32", seed=1),
            make(method, layout, UNEVEN[dp], dtype="bfloat16", placement="scattered", experts=8, top_k=8, seed=2),
            make(method, layout, WITH_EMPTY_RANK[dp], dtype="float16", placement="scattered", seed=3),
            make(method, layout, (1,) * dp, dtype="float16", experts=64, top_k=1, seed=4)]


class _Checks:
    """Collects failed comparisons in a rank instead of stopping at the first."""

    def __init__(self, scenario: Scenario, rank: int):
        self.prefix, self.repro, self.failures = f"rank {rank} {scenario.label()}", scenario.repro(), []

    def close(self, actual, expected, kind: Kind, what: str) -> None:
        try:
            assert_close(actual, expected, kind=kind, what=f"{self.prefix}: {what}")
        except AssertionError as exc:
            self.failures.append(f"{exc}\nrepro: {self.repro}")


def _run_steps(setup, method, ops=None):
    """prepare → permute → MLP → unpermute → finalize of one method, keeping what each step produced."""
    x, ids, weights = setup.inputs_on_device()
    prepared = method.prepare(x, ids, weights.float(), setup.ctx)
    dispatched = method.permute(prepared)
    expert_out = setup.mlp(method.ops)(dispatched.hidden, dispatched.group_list, dispatched.group_list_type)
    valid = int(dispatched.group_list.sum())
    rows = dispatched.hidden[:valid].clone()
    combined = method.unpermute(expert_out, dispatched, prepared)
    return {"rows": rows, "counts": dispatched.group_list, "combined": combined, "prepared": prepared,
            "source_token": dispatched.source_token, "out": method.finalize(combined, prepared, setup.ctx)}


# --------------------------------------------------------------------- native vs op AllGather

def _native_vs_op_allgather_on_rank(batch: list[dict]) -> list[str]:
    failures = []
    for values in batch:
        scenario = Scenario.from_dict(values)
        setup = setup_on_rank(scenario)
        native = _run_steps(setup, setup.method("native_allgather"))
        op = _run_steps(setup, setup.method("allgather"))
        check = _Checks(scenario, setup.rank)
        check.close(op["counts"], native["counts"], Kind.EXACT, "tokens per local expert (allgather vs native)")
        check.close(op["rows"], native["rows"], Kind.EXACT, "rows handed to the experts (allgather vs native)")
        check.close(op["combined"], native["combined"], Kind.ACCUMULATED, "combined partial sums (allgather vs native)")
        check.close(op["out"], native["out"], Kind.ACCUMULATED, "output (allgather vs native)")
        failures += check.failures
    return failures


@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_native_and_op_allgather_agree(world, layout):
    failures = [f for rank in world(layout[0], timeout=300).run(
        _native_vs_op_allgather_on_rank, [s.to_dict() for s in path_cases(layout)]) for f in rank]
    assert not failures, "\n\n".join(failures)


# ------------------------------------------------------------- AllToAll / MC2 vs native

def _real_native_rows(setup, native) -> tuple[torch.Tensor, torch.Tensor]:
    """Native rows and counts restricted to real tokens: the DP all-gather pads every DP rank to the largest
    batch, and padding tokens are routed (weight 0) like any other."""
    counts = torch.tensor(setup.ctx.num_tokens_across_dp)
    width = setup.ctx.max_tokens_across_dp
    token = native["source_token"].cpu()
    real = (token % max(width, 1)) < counts[token // max(width, 1)] if setup.groups.dp.world_size > 1 else \
        torch.ones_like(token, dtype=torch.bool)
    expert_of_row = torch.repeat_interleave(torch.arange(native["counts"].numel()), native["counts"].cpu())
    return native["rows"][real], torch.bincount(expert_of_row[real], minlength=native["counts"].numel())


def _dispatch_methods_vs_native_on_rank(batch: list[dict]) -> dict:
    """Failed comparisons, and the scenarios whose MC2 leg this rank's ops refuse (the real torch_npu ops
    outside their documented limits, moe/mc2_applicability.py) with the reason: those compare AllToAll only."""
    failures, mc2_refused = [], []
    for values in batch:
        scenario = Scenario.from_dict(values)
        setup = setup_on_rank(scenario)
        refusal = mc2_unsupported_reason(scenario, ops_soc(setup.device))
        native = _run_steps(setup, setup.method("native_allgather"))
        alltoall = _run_steps(setup, setup.method("alltoall"))
        mc2 = None if refusal else _run_steps(setup, setup.method("mc2"))
        check = _Checks(scenario, setup.rank)
        check.close(alltoall["out"], native["out"], Kind.ACCUMULATED, "output (alltoall vs native_allgather)")
        if mc2 is not None:
            check.close(mc2["out"], native["out"], Kind.ACCUMULATED, "output (mc2 vs native_allgather)")
        else:
            mc2_refused.append(f"{scenario.label()}: {refusal}")
        if scenario.tp == 1 and min(scenario.token_counts()) >= 1:  # no padding on any path
            if mc2 is not None:
                check.close(mc2["counts"], alltoall["counts"], Kind.EXACT,
                            "received rows per local expert (mc2 vs alltoall)")
                check.close(mc2["rows"], alltoall["rows"], Kind.EXACT,
                            "received rows, (expert, source, order) (mc2 vs alltoall)")
            rows, counts = _real_native_rows(setup, native)
            check.close(alltoall["counts"], counts, Kind.EXACT, "rows per local expert (alltoall vs native, real tokens)")
            check.close(alltoall["rows"], rows, Kind.EXACT, "rows per local expert (alltoall vs native, real tokens)")
        failures += check.failures
    return {"failures": failures, "mc2_refused": mc2_refused}


@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_alltoall_and_mc2_agree_with_native(world, report, layout):
    cases = path_cases(layout) + [make("alltoall", layout, UNEVEN[layout[1]], dtype="bfloat16", experts=64, top_k=8,
                                       placement="scattered", seed=5)]
    per_rank = world(layout[0], timeout=300).run(_dispatch_methods_vs_native_on_rank, [c.to_dict() for c in cases])
    if per_rank[0]["mc2_refused"]:
        report.attach("mc2 not compared: outside the MC2 ops' documented limits", "\n".join(per_rank[0]["mc2_refused"]))
    failures = [f for rank in per_rank for f in rank["failures"]]
    assert not failures, "\n\n".join(failures)


# ----------------------------------------------------------------------- trap: the expert mask

class _AbsTrick:
    """vllm-ascend's way to make init_routing_v2's -1 a valid unpermute index: abs(-1) = 1, a real row,
    trusting the zeroed weight of the entry."""

    def unpermute_rows(self, expert_out, row_idx, valid):
        return expert_out, row_idx.abs().to(torch.int32)


class AbsTrick(_AbsTrick, AllGather):
    """vllm-ascend's AllGather combine: correct as long as the weights are masked and rows are finite."""


class ForgetsTheMask(_AbsTrick, AllGather):
    """Broken on purpose: the abs trick without zeroing the weights of other ranks' experts, so each such
    entry adds w · (the expert output in row 1, another token's)."""

    def local_weights(self, topk_ids, topk_weights):
        return topk_weights


VARIANTS = {"allgather": AllGather, "abs_trick": AbsTrick, "forgets_the_mask": ForgetsTheMask}


def _variant_on_rank(values: dict, variant: str) -> dict:
    return run_on_rank(Scenario.from_dict(values), method_cls=VARIANTS[variant])


@pytest.mark.parametrize("layout, placement", [((2, 2, 1), "contiguous"), ((4, 2, 2), "scattered")],
                         ids=["w2-dp2tp1-contiguous", "w4-dp2tp2-scattered"])
def test_weights_of_other_ranks_experts_must_be_zeroed(world, layout, placement):
    case = make("allgather", layout, UNEVEN[layout[1]], placement=placement, seed=11)
    ranks = world(layout[0], timeout=120)
    for variant in ("allgather", "abs_trick"):
        summary = summarize(case, ranks.run(_variant_on_rank, case.to_dict(), variant))
        assert summary["ok"], f"{variant}: {summary['first_failure']}\nrepro: {case.repro()}"
    broken = summarize(case, ranks.run(_variant_on_rank, case.to_dict(), "forgets_the_mask"))
    assert not broken["ok"], "the oracle check did not catch an AllGather that keeps other ranks' expert weights"
    assert "elements differ" in broken["first_failure"]


# ------------------------------------------------------------- trap: abs(-1) → row 1, non-finite

class _PoisonRowOne:
    """Row 1 of the expert output is non-finite (an overflowing expert), set just before unpermute."""

    poison = float("inf")

    def unpermute(self, expert_out, dispatched, prepared):
        if expert_out.shape[0] > 1:
            expert_out[1] = self.poison
        return super().unpermute(expert_out, dispatched, prepared)


class InfRowOneAllGather(_PoisonRowOne, AllGather):
    pass


class NanRowOneAllGather(_PoisonRowOne, AllGather):
    poison = float("nan")


class InfRowOneNative(_PoisonRowOne, NativeAllGather):
    pass


class InfRowOneAbsTrick(_PoisonRowOne, _AbsTrick, AllGather):
    pass


class NanRowOneAbsTrick(_PoisonRowOne, _AbsTrick, AllGather):
    poison = float("nan")


POISONED = {cls.__name__: cls for cls in (InfRowOneAllGather, NanRowOneAllGather, InfRowOneNative, InfRowOneAbsTrick,
                                          NanRowOneAbsTrick)}


def _poisoned_row_on_rank(values: dict, variant: str) -> dict:
    setup = setup_on_rank(Scenario.from_dict(values))
    method = setup.method(POISONED[variant])
    out = method.forward(*setup.inputs_on_device(), setup.mlp(method.ops), setup.ctx).cpu()
    return {"out": out, "expected": setup.oracle(), "dp_rank": setup.groups.dp.rank_in_group,
            "tp_rank": setup.groups.tp.rank_in_group}


def _poisoned_tokens_contained(results: list[dict], world_size: int, dtype: torch.dtype) -> str | None:
    """None when the poison stayed contained: each rank's row 1 belongs to one token, so at most
    world_size tokens may be non-finite, at least one is (the trap was armed), and every other token
    matches the oracle. Else what went wrong."""
    firsts = [r for r in results if r["tp_rank"] == 0]  # TP ranks of a DP group return the same tokens
    out = torch.cat([r["out"] for r in firsts])
    expected = torch.cat([r["expected"] for r in firsts])
    bad = ~torch.isfinite(out).all(dim=1)
    if not bad.any():
        return "no output token is non-finite: the poisoned row was never used (trap not armed)"
    if int(bad.sum()) > world_size:
        return f"{int(bad.sum())} of {out.shape[0]} tokens are non-finite; at most {world_size} own a poisoned row"
    try:
        assert_close(out[~bad], expected[~bad].to(dtype), kind=Kind.ACCUMULATED, what="tokens without a poisoned row")
    except AssertionError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("correct, abs_trick", [("InfRowOneAllGather", "InfRowOneAbsTrick"),
                                                ("NanRowOneAllGather", "NanRowOneAbsTrick")], ids=["inf", "nan"])
@pytest.mark.parametrize("layout", [(2, 2, 1), (4, 2, 2)], ids=layout_id)
def test_dropped_entries_never_read_a_non_finite_row(world, layout, correct, abs_trick):
    case = make("allgather", layout, (8,) * layout[1], experts=8, top_k=2, seed=21)
    ranks = world(layout[0], timeout=120)
    for variant in (correct, "InfRowOneNative"):
        verdict = _poisoned_tokens_contained(ranks.run(_poisoned_row_on_rank, case.to_dict(), variant), layout[0],
                                             torch.float32)
        assert verdict is None, f"{variant}: {verdict}\nrepro: {case.repro()}"
    verdict = _poisoned_tokens_contained(ranks.run(_poisoned_row_on_rank, case.to_dict(), abs_trick), layout[0],
                                         torch.float32)
    assert verdict is not None, "the abs(-1) -> row 1 trick spread no non-finite value: the trap did not catch it"


# ------------------------------------------------------------------- trap: undefined rows

class GarbageOps(GoldenOps):
    """The golden models, with every row documented as undefined overwritten by NaN (real ops leave
    whatever was in memory there)."""

    name = "golden+garbage"

    @staticmethod
    def npu_moe_init_routing_v2(x, expert_idx, **kwargs):
        expanded_x, row_idx, tokens, scale = GoldenOps.npu_moe_init_routing_v2(x, expert_idx, **kwargs)
        valid = int((row_idx >= 0).sum()) if kwargs.get("row_idx_type", 0) == 0 else None
        if valid is not None and expanded_x.is_floating_point():
            expanded_x[valid:] = float("nan")
        return expanded_x, row_idx, tokens, scale

    @staticmethod
    def npu_grouped_matmul(*args, group_list, group_list_type=0, **kwargs):
        out = GoldenOps.npu_grouped_matmul(*args, group_list=group_list, group_list_type=group_list_type, **kwargs)
        sizes = torch.as_tensor(group_list)
        used = int(sizes.sum()) if group_list_type == 1 else (int(sizes[-1]) if sizes.numel() else 0)
        out[0][used:] = float("nan")
        return out

    @staticmethod
    def npu_moe_distribute_dispatch_v2(*args, **kwargs):
        results = GoldenOps.npu_moe_distribute_dispatch_v2(*args, **kwargs)
        received = int(results[4][-1]) if results[4].numel() else 0  # ep_recv_counts: cumsum of received rows
        results[0][received:] = float("nan")
        return results


def _garbage_on_rank(batch: list[dict]) -> list[dict]:
    return [run_on_rank(Scenario.from_dict(values), ops=GarbageOps()) for values in batch]


@pytest.mark.parametrize("layout", [(2, 2, 1), (4, 2, 2), (8, 4, 2)], ids=layout_id)
def test_rows_documented_as_undefined_are_never_read(world, layout):
    cases = [c for method in ("native_allgather", "allgather", "alltoall", "mc2")
             for c in path_cases(layout, method)]
    per_rank = world(layout[0], timeout=300).run(_garbage_on_rank, [c.to_dict() for c in cases])
    summaries = [summarize(c, [rank[i] for rank in per_rank]) for i, c in enumerate(cases)]
    assert all(s["ops"] == "golden+garbage" for s in summaries)
    failures = [f"{s['first_failure']}\nrepro: {s['repro']}" for s in summaries if not s["ok"]]
    assert not failures, "\n\n".join(failures)


def _abs_trick_with_garbage_on_rank(values: dict) -> dict:
    return run_on_rank(Scenario.from_dict(values), method_cls=AbsTrick, ops=GarbageOps())


def test_garbage_rows_catch_a_method_that_reads_them(world):
    """The undefined-rows check has teeth: two tokens with one expert each over two ranks leave every rank
    that sees an entry of the other rank with at most one valid row, so abs(-1) = 1 reads an undefined row;
    with NaN there the weight-0 product is NaN."""
    case = make("allgather", (2, 2, 1), (1, 1), experts=4, top_k=1, seed=0)
    summary = summarize(case, world(2, timeout=60).run(_abs_trick_with_garbage_on_rank, case.to_dict()))
    assert not summary["ok"] and "nan" in summary["first_failure"].lower(), summary


# ------------------------------------------------------------------ trap: a DP rank with 0 tokens

def _zero_tokens_on_rank(values: dict) -> dict:
    scenario = Scenario.from_dict(values)
    refusal = mc2_unsupported_reason(scenario, ops_soc(rank_context().device)) if scenario.method == "mc2" else None
    if refusal:  # the real MC2 ops take no rank without tokens (BS > 0): every rank skips alike
        pytest.skip(refusal)
    with CollectiveRecorder() as recorder:
        result = run_on_rank(scenario, keep_tensors=True)
    log = [(call.name, call.ranks) for call in recorder.calls]  # (collective, group ranks)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, log)
    return {**result, "logs": everyone}


def _mismatched_sequences(logs: list[list]) -> list[str]:
    """Every group's members must issue the same collectives on it, in the same order."""
    groups = {ranks for log in logs for _, ranks in log}
    problems = []
    for ranks in sorted(groups):
        sequences = {r: [name for name, g in logs[r] if g == ranks] for r in ranks}
        if len({tuple(s) for s in sequences.values()}) > 1:
            problems.append(f"group {list(ranks)}: " + "; ".join(f"rank {r}: {s}" for r, s in sequences.items()))
    return problems


@pytest.mark.parametrize("method", ["native_allgather", "allgather", "alltoall", "mc2"])
@pytest.mark.parametrize("layout, counts", [((2, 2, 1), (0, 5)), ((4, 2, 2), (3, 0)), ((4, 4, 1), (4, 0, 0, 2)),
                                            ((4, 2, 2), (0, 0))], ids=["w2-dp2-[0,5]", "w4-dp2tp2-[3,0]",
                                                                       "w4-dp4-[4,0,0,2]", "w4-dp2tp2-[0,0]"])
def test_a_dp_rank_with_zero_tokens_joins_every_collective(world, method, layout, counts):
    case = make(method, layout, counts, dtype="bfloat16", placement="scattered", seed=31)
    results = world(layout[0], timeout=60).run(_zero_tokens_on_rank, case.to_dict())
    problems = _mismatched_sequences(results[0]["logs"])
    assert not problems, "collective sequences differ between members of a group:\n" + "\n".join(problems)
    dp_group = tuple(r for r in range(layout[0]) if r % layout[2] == 0)  # DP group of rank 0: same t
    assert any(g == dp_group for _, g in results[0]["logs"][0]), "the DP token-count exchange was not recorded"
    summary = summarize(case, results)
    assert summary["ok"], f"{summary['first_failure']}\nrepro: {case.repro()}"
    for result in results:
        n = counts[result["dp_rank"]]
        assert list(result["tensors"]["out"].shape) == [n, HIDDEN], f"rank {result['rank']}: out shape"


def test_the_sequence_check_catches_a_rank_that_skips_a_collective():
    logs = [[("all_gather_into_tensor", (0, 1)), ("all_to_all_single", (0, 1))],
            [("all_gather_into_tensor", (0, 1))]]
    assert _mismatched_sequences(logs) == [
        "group [0, 1]: rank 0: ['all_gather_into_tensor', 'all_to_all_single']; rank 1: ['all_gather_into_tensor']"]
    assert _mismatched_sequences([logs[0], logs[0]]) == []

