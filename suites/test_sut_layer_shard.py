"""vllm-ascend's layer sharding against the unsharded forward and docs/shared_weight.md (findings in
docs/systems_under_test.md).

The release's own series (``vllm_ascend/ops/layer_shard_linear.py``, adapter
``ascend_conformance/sut/vllm_ascend_layer_shard.py``) runs vLLM ``ReplicatedLinear`` o_proj layers over the
``shard_weight`` group vllm-ascend builds, on gloo worlds of 2 and 4 ranks, for three passes. Weights are
loaded only where a layer is owned (NaN elsewhere), so only the owner's copy may ever reach a forward.

1. ``test_series[W<n>-count<c>-start<s>-k<k>]`` — a series ``[s, s + c)`` with prefetch step k:
   a. every layer's output of every pass bit-identical (``Kind.EXACT``) to the same layers unsharded;
   b. weight storage per rank, counted from the storages of every live tensor in the rank, equal to
      ``(owned layers)·W + (k + 1)·W`` after set-up and after the passes (docs/shared_weight.md, *Memory*);
   c. the prefetch distance, measured from the layer each ``reach_layer`` started broadcasting, equal to k.
   0.23.0.post1 prefetches ``(i + k) % count + start``: k ahead only when ``start % count == 0``. When its
   distance d = (k + start) mod count exceeds k, a window is refilled before its layer ran and the release's
   own window asserts stop the series (a loud divergence); below k it runs exact with less overlap than
   configured (a silent divergence of the prefetch distance). Both are Divergences here; the cases with
   ``start % count == 0`` must pass.
2. ``test_pipeline_stages[W4-DP2-PP2-<group>]`` — each PP stage registers its own layers (stage p holds
   ``[4p, 4p + 4)``), over the release's ``shard_weight`` group and, as a control, over the stage's own
   group (with TP 1, vLLM's dp group): outputs must equal the unsharded stage's.
"""
from __future__ import annotations

import math

import pytest
import torch
from sut_support import need_stack, sut_world

from ascend_conformance.errors import Divergence
from ascend_conformance.harness import rank_context
from ascend_conformance.live_tensors import live_storages, new_objects_only, new_storage_sizes
from ascend_conformance.sut import VLLM_ASCEND
from ascend_conformance.sut import vllm_ascend_layer_shard as layer_shard
from ascend_conformance.tolerance import Kind, assert_close

pytestmark = [pytest.mark.sut(VLLM_ASCEND), pytest.mark.area("shared_weight")]

HIDDEN = 16
TOKENS = 3
PASSES = 3
RUN_TIMEOUT = 1200  # seconds: one batched world run, the stack's imports in every rank included

# (world size, count, start, k). d = (k + start) mod count is the release's prefetch distance.
SERIES_CASES = [
    (2, 4, 0, 0), (2, 4, 0, 1), (2, 6, 0, 2), (2, 4, 4, 1), (2, 5, 10, 3),  # start mod count = 0: d = k
    (2, 3, 1, 1), (2, 4, 2, 1), (2, 3, 4, 0), (2, 6, 3, 2),                  # d > k: the window asserts fire
    (2, 31, 30, 1), (2, 5, 3, 3), (2, 7, 6, 2),                # d < k: exact, less overlap (61 = 30 + 31: d 0)
    (4, 8, 0, 1), (4, 16, 16, 1), (4, 3, 2, 0), (4, 7, 5, 3), (4, 6, 3, 2),
]
STAGE_GROUPS = ["release-shard_weight", "stage"]
STAGE_LAYERS = 4  # per PP stage, k = 1


def case_id(world_size: int, count: int, start: int, k: int) -> str:
    return f"W{world_size}-count{count}-start{start}-k{k}"


# ==================================================================================================
# in the ranks
# ==================================================================================================

def true_weight(seed: int, layer: int, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 7919 + layer)
    return (torch.randn(HIDDEN, HIDDEN, generator=generator, dtype=torch.float64) / math.sqrt(HIDDEN)).to(dtype)


def pass_input(p: int, start: int, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank_context().world_seed + 31 * p + start)
    return torch.randn(TOKENS, HIDDEN, generator=generator, dtype=torch.float64).to(dtype)


def unsharded_outputs(start: int, count: int, seed: int, dtype) -> list:
    """The same layers with every weight local: the oracle."""
    layers = layer_shard.build_layers(start, count, HIDDEN, dtype)
    layer_shard.load(layers, {i: true_weight(seed, i, dtype) for i in layers})
    out = []
    for p in range(PASSES):
        x, outs = pass_input(p, start, dtype), []
        for i in sorted(layers):
            x = torch.tanh(layers[i](x)[0])
            outs.append(x)
        out.append(outs)
    return out


def run_series(group, start: int, count: int, k: int, seed: int, dtype=torch.float32) -> dict:
    """The release's series over ``group``: outputs, prefetch distances, storage sizes (or the window
    assert that stopped it)."""
    n, me = group.world_size, group.rank_in_group
    name = f"o_proj@{start}-{count}-{k}"
    before = live_storages()  # holding the tensors keeps their addresses from being reused
    layers = layer_shard.build_layers(start, count, HIDDEN, dtype)
    outcome: dict = {"unsharded_bytes": sum(new_storage_sizes(before, dtype)), "owned": sum(
        1 for i in layers if i % n == me)}
    try:
        layer_shard.register(name, group, layers, k)
        layer_shard.load(layers, {i: true_weight(seed, i, dtype) if i % n == me
                                  else torch.full((HIDDEN, HIDDEN), float("nan"), dtype=dtype) for i in layers})
        layer_shard.finish(layers)
        outcome["after_setup"] = new_storage_sizes(before, dtype)
        started_at: dict[int, int] = {}  # layer -> step of the reach_layer that last started its broadcast
        distances, outputs, step = set(), [], 0
        try:
            for p in range(PASSES):
                x, outs = pass_input(p, start, dtype), []
                for i in range(start, start + count):
                    started_at[layer_shard.reach(layers[i])] = step
                    x = torch.tanh(layer_shard.forward(layers[i], x))
                    outs.append(x)
                    if p > 0:  # every window of the first pass was filled during set-up
                        distances.add(step - started_at[i])
                    step += 1
                outputs.append(outs)
        except layer_shard.WindowAssert as exc:
            outcome["window_assert"] = str(exc)
        layer_shard.drain(layers)
        outcome.update(outputs=outputs, distances=sorted(distances), after_passes=new_storage_sizes(before, dtype))
    finally:
        layer_shard.forget_series(name)
    return outcome


def _series_batch(cases: list) -> list:
    with new_objects_only(), layer_shard.shard_world(pp=1) as groups:
        results = []
        for world_size, count, start, k in cases:
            seed = 1000 * count + 10 * start + k
            outcome = run_series(groups["shard_weight"], start, count, k, seed)
            outcome["unsharded"] = unsharded_outputs(start, count, seed, torch.float32)
            outcome["group"] = [int(r) for r in groups["shard_weight"].ranks]
            results.append(outcome)
        return results


def _stages_batch() -> dict:
    out = {}
    with new_objects_only(), layer_shard.shard_world(pp=2) as groups:
        stage = groups["pp"].rank_in_group
        start = stage * STAGE_LAYERS
        for kind, group in (("release-shard_weight", groups["shard_weight"]), ("stage", groups["dp"])):
            outcome = run_series(group, start, STAGE_LAYERS, 1, seed=77)
            outcome.update(unsharded=unsharded_outputs(start, STAGE_LAYERS, 77, torch.float32), stage=stage,
                           group=[int(r) for r in group.ranks])
            out[kind] = outcome
    return out


# ==================================================================================================
# in the parent
# ==================================================================================================

def _series_results(world, shared_runs, world_size: int) -> dict:
    need_stack(VLLM_ASCEND)
    cases = [c for c in SERIES_CASES if c[0] == world_size]

    def run():
        per_rank = sut_world(world, VLLM_ASCEND, world_size, timeout=RUN_TIMEOUT).run(_series_batch, cases)
        return {case: [outcomes[i] for outcomes in per_rank] for i, case in enumerate(cases)}

    return shared_runs.get(f"vllm_ascend-layer-shard-W{world_size}", run)


def judge_outputs(headline: str, per_rank: list) -> None:
    for rank, outcome in enumerate(per_rank):
        for p, (got, want) in enumerate(zip(outcome["outputs"], outcome["unsharded"])):
            for j, (a, b) in enumerate(zip(got, want)):
                try:
                    assert_close(a, b, kind=Kind.EXACT, what=f"rank {rank} pass {p} layer {j} of the series")
                except AssertionError as exc:
                    raise Divergence(f"{headline}: outputs differ from the unsharded layers\n{exc}") from None


@pytest.mark.parametrize("world_size, count, start, k", SERIES_CASES, ids=[case_id(*c) for c in SERIES_CASES])
def test_series(world, shared_runs, report, world_size, count, start, k):
    per_rank = _series_results(world, shared_runs, world_size)[world_size, count, start, k]
    headline = (f"{layer_shard.label()} layer_shard_linear, series [{start}, {start + count}) with prefetch_step "
                f"{k} over shard_weight {per_rank[0]['group']}")
    d = (k + start) % count
    asserted = {outcome.get("window_assert") for outcome in per_rank}
    if asserted != {None}:
        raise Divergence(f"{headline}: the release's window asserts stop the series (it prefetches "
                         f"(i + k) % count + start, {d} layers ahead instead of {k})\n"
                         + "\n".join(f"rank {r}: {o.get('window_assert')}" for r, o in enumerate(per_rank)))
    judge_outputs(headline, per_rank)
    weight_bytes = HIDDEN * HIDDEN * 4
    for rank, outcome in enumerate(per_rank):
        want = (outcome["owned"] + k + 1) * weight_bytes
        assert outcome["unsharded_bytes"] == count * weight_bytes, outcome["unsharded_bytes"]  # the counter itself
        for when in ("after_setup", "after_passes"):
            weights = sum(b for b in outcome[when] if b >= weight_bytes)
            if weights != want:
                raise Divergence(f"{headline}: rank {rank} holds {weights} bytes of weights {when.replace('_', ' ')}, "
                                 f"the formula ({outcome['owned']} owned + {k + 1} windows) x {weight_bytes} = {want}")
        report.figure(f"rank{rank}_weight_bytes", sum(b for b in outcome["after_passes"] if b >= weight_bytes), "B")
        report.figure(f"rank{rank}_disposed_remnants", sum(1 for b in outcome["after_passes"] if b < weight_bytes))
    distances = sorted({d for outcome in per_rank for d in outcome["distances"]})
    report.figure("prefetch_distance", distances[0] if len(distances) == 1 else str(distances))
    if distances != [k]:
        raise Divergence(f"{headline}: prefetch distance {distances} layers instead of {k} (outputs exact): it "
                         f"prefetches (i + k) % count + start = (k + start) mod count = {d} layers ahead, so a "
                         f"broadcast overlaps {d} layers of compute where {k} were configured")


@pytest.mark.parametrize("group_kind", STAGE_GROUPS)
def test_pipeline_stages(world, shared_runs, group_kind):
    need_stack(VLLM_ASCEND)
    per_rank = shared_runs.get("vllm_ascend-layer-shard-W4-PP2", lambda: sut_world(
        world, VLLM_ASCEND, 4, timeout=RUN_TIMEOUT).run(_stages_batch))
    outcomes = [by_kind[group_kind] for by_kind in per_rank]
    groups = sorted({tuple(o["group"]) for o in outcomes})
    headline = (f"{layer_shard.label()} layer_shard_linear, W4 DP2 PP2, each stage's {STAGE_LAYERS} o_proj layers "
                f"over {group_kind} groups {[list(g) for g in groups]} (stages by rank "
                f"{[o['stage'] for o in outcomes]})")
    asserted = [o.get("window_assert") for o in outcomes]
    if any(asserted):
        raise Divergence(f"{headline}: the release's window asserts stop the series\n{asserted}")
    judge_outputs(headline, outcomes)
