"""vllm-ascend's layer sharding against the unsharded forward and docs/shared_weight.md (findings in
docs/systems_under_test.md).

The release's own series (``vllm_ascend/ops/layer_shard_linear.py``, adapter
``ascend_conformance/sut/vllm_ascend_layer_shard.py``) runs vLLM ``ReplicatedLinear`` o_proj layers over the
``shard_weight`` group vllm-ascend builds, on gloo worlds of 2 and 4 ranks, for three passes. Weights are
loaded only where a layer is owned (NaN elsewhere), so only the owner's copy may ever reach a forward.
A release without layer sharding (vllm-ascend main) has every test "not in <release>: layer_sharding (...)".

Each test judges one claim, so that an expectation waives exactly one finding; the tests of a world size
share one world run. A configuration that raises is recorded in the ranks (type, message, where) and fails
its own tests only.

1. A series ``[s, s + c)`` with prefetch step k (``[W<n>-count<c>-start<s>-k<k>]``):
   a. ``test_series_outputs``: every layer's output of every pass bit-identical (``Kind.EXACT``) to the same
      layers unsharded; a series the release's window asserts stop has not produced them;
   b. ``test_series_memory``: weight storage per rank, counted from the storages of every live tensor in
      the rank, equal to ``(owned layers)·W + (k + 1)·W`` after set-up and after the passes it ran
      (docs/shared_weight.md, *Memory*);
   c. ``test_series_prefetch_distance``: the layer each ``reach_layer(i)`` starts broadcasting is k layers
      ahead inside the series (read from the window it fills), and from the second pass on each forward's
      broadcast was started k steps before it.
   0.13.0 .. 0.23.0.post1 prefetch ``(i + k) % count + start``: k ahead only when ``start % count == 0``.
   Where that distance d = (k + start) mod count exceeds k, a window is refilled before its layer ran and
   the release's own window asserts stop the series (outputs and distance diverge); below k it runs exact
   with less overlap than configured (the distance diverges). The cases with ``start % count == 0`` pass.
2. ``test_pipeline_stages[W4-DP2-PP2-<group>]`` — each PP stage registers its own layers (stage p holds
   ``[4p, 4p + 4)``), over the release's ``shard_weight`` group and, as a control, over the stage's own
   group (with TP 1, vLLM's dp group): outputs must equal the unsharded stage's.
3. ``test_planted_breakage_is_caught[<breakage>]`` — a copy of the installed release's file with the owner
   of a layer and the source of its broadcast made to disagree on any group but one over ranks 0..n-1
   (``vllm_ascend_layer_shard.BREAKAGES``), run in the same world beside the release on the stage groups:
   ``test_pipeline_stages[stage]``'s check must turn red on it (and pass on the release itself). The
   series of section 1 run over the whole world, whose group ranks are the global ones: they cannot see it.
"""
from __future__ import annotations

import math

import pytest
import torch
from sut_support import need_feature, sut_world

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

# (world size, count, start, k). d = (k + start) mod count is the distance (i + k) % count + start gives.
SERIES_CASES = [
    (2, 4, 0, 0), (2, 4, 0, 1), (2, 6, 0, 2), (2, 4, 4, 1), (2, 5, 10, 3),  # start mod count = 0: d = k
    (2, 3, 1, 1), (2, 4, 2, 1), (2, 3, 4, 0), (2, 6, 3, 2),                  # d > k: the window asserts fire
    (2, 31, 30, 1), (2, 5, 3, 3), (2, 7, 6, 2),                # d < k: exact, less overlap (61 = 30 + 31: d 0)
    (4, 8, 0, 1), (4, 16, 16, 1), (4, 3, 2, 0), (4, 7, 5, 3), (4, 6, 3, 2),
]
# Collection order alternates the world sizes: xdist hands the first tests out round-robin, so the two
# workers start the W2 and the W4 world runs side by side instead of one waiting on the other's.
PARAM_ORDER = [case for pair in zip([c for c in SERIES_CASES if c[0] == 2], [c for c in SERIES_CASES if c[0] == 4])
               for case in pair]
PARAM_ORDER += [c for c in SERIES_CASES if c not in PARAM_ORDER]
STAGE_GROUPS = ["release-shard_weight", "stage"]
STAGE_LAYERS = 4  # per PP stage, k = 1
BREAKAGES = list(layer_shard.BREAKAGES)  # each costs one more series per stage in the same world run


class Crashed(RuntimeError):
    """A configuration raised in the ranks (the release's error or the suite's own): never a divergence."""


def case_id(world_size: int, count: int, start: int, k: int) -> str:
    return f"W{world_size}-count{count}-start{start}-k{k}"


# ==================================================================================================
# in the ranks
# ==================================================================================================

def true_weight(seed: int, layer: int, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 7919 + layer)
    return (torch.randn(HIDDEN, HIDDEN, generator=generator, dtype=torch.float64) / math.sqrt(HIDDEN)).to(dtype)


def pass_input(p: int, start: int, dtype) -> torch.Tensor:
    """A pass's input, drawn on the host (seeded alike on every platform) and handed to the layers on the
    rank's device."""
    generator = torch.Generator().manual_seed(rank_context().world_seed + 31 * p + start)
    return torch.randn(TOKENS, HIDDEN, generator=generator, dtype=torch.float64).to(rank_context().device, dtype)


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


def run_series(group, start: int, count: int, k: int, seed: int, dtype=torch.float32, module=None) -> dict:
    """The release's series over ``group``: outputs, prefetch offsets and distances, storage sizes (or the
    window assert that stopped it, or the error that crashed it: a configuration never takes the others
    of its world run down with it)."""
    n, me = group.world_size, group.rank_in_group
    name = f"o_proj@{start}-{count}-{k}"
    before = live_storages()  # holding the tensors keeps their addresses from being reused
    outcome: dict = {"owned": sum(1 for i in range(start, start + count) if i % n == me)}
    try:
        with layer_shard.crash_recorded(outcome):
            _run_series(outcome, group, name, before, start, count, k, seed, dtype, module)
    finally:
        layer_shard.forget_series(name, module=module)
    return outcome


def _run_series(outcome: dict, group, name: str, before: dict, start: int, count: int, k: int, seed: int, dtype,
                module) -> None:
    n, me = group.world_size, group.rank_in_group
    layers = layer_shard.build_layers(start, count, HIDDEN, dtype)
    # weight storage on the rank's device only: the host copies of a broadcast are not device storage
    device = rank_context().device
    outcome["unsharded_bytes"] = sum(new_storage_sizes(before, dtype, device=device))
    layer_shard.register(name, group, layers, k, module=module)
    layer_shard.load(layers, {i: true_weight(seed, i, dtype) if i % n == me
                              else torch.full((HIDDEN, HIDDEN), float("nan"), dtype=dtype) for i in layers})
    layer_shard.finish(layers, module=module)
    outcome["after_setup"] = new_storage_sizes(before, dtype, device=device)
    started_at: dict[int, int] = {}  # layer -> step of the reach_layer that last started its broadcast
    offsets, distances, outputs, step = set(), set(), [], 0
    try:
        for p in range(PASSES):
            x, outs = pass_input(p, start, dtype), []
            outputs.append(outs)
            for i in range(start, start + count):
                started = layer_shard.reach(layers[i], module=module)
                offsets.add((started - i) % count)  # how far ahead inside the series (wrapping)
                started_at[started] = step
                x = torch.tanh(layer_shard.forward(layers[i], x, module=module))
                outs.append(x)
                if p > 0:  # every window of the first pass was filled during set-up
                    distances.add(step - started_at[i])
                step += 1
    except layer_shard.WindowAssert as exc:
        outcome["window_assert"] = f"pass {len(outputs) - 1}, {exc}"
    finally:
        outcome.update(outputs=outputs, offsets=sorted(offsets), distances=sorted(distances))
    layer_shard.drain(layers, module=module)
    outcome["after_passes"] = new_storage_sizes(before, dtype, device=device)


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


def _stages_batch(planted: dict) -> dict:
    """Each PP stage's series over the release's shard_weight group and over the stage's own group; then,
    over the stage's group, each planted copy of the release's file (``{breakage: path}``)."""
    out = {}
    with new_objects_only(), layer_shard.shard_world(pp=2) as groups:
        stage = groups["pp"].rank_in_group
        start = stage * STAGE_LAYERS
        runs = [("release-shard_weight", groups["shard_weight"], None), ("stage", groups["dp"], None)]
        runs += [(f"planted:{name}", groups["dp"], layer_shard.copy_module(path)) for name, path in planted.items()]
        for kind, group, module in runs:
            outcome = run_series(group, start, STAGE_LAYERS, 1, seed=77, module=module)
            outcome.update(unsharded=unsharded_outputs(start, STAGE_LAYERS, 77, torch.float32), stage=stage,
                           group=[int(r) for r in group.ranks])
            out[kind] = outcome
    return out


# ==================================================================================================
# in the parent
# ==================================================================================================

def _need_layer_sharding() -> None:
    need_feature(layer_shard.ADAPTER, VLLM_ASCEND, layer_shard.FEATURE)


def _series_results(world, shared_runs, world_size: int) -> dict:
    _need_layer_sharding()
    cases = [c for c in SERIES_CASES if c[0] == world_size]

    def run():
        per_rank = sut_world(world, VLLM_ASCEND, world_size, timeout=RUN_TIMEOUT).run(_series_batch, cases)
        return {case: [outcomes[i] for outcomes in per_rank] for i, case in enumerate(cases)}

    return shared_runs.get(f"vllm_ascend-layer-shard-W{world_size}", run)


def _stage_results(world, shared_runs, tmp_path_factory) -> list:
    _need_layer_sharding()

    def run():
        directory = str(tmp_path_factory.mktemp("planted-layer-shard"))
        planted = {name: layer_shard.plant_copy(name, directory) for name in BREAKAGES}
        return sut_world(world, VLLM_ASCEND, 4, timeout=RUN_TIMEOUT).run(_stages_batch, planted)

    return shared_runs.get("vllm_ascend-layer-shard-W4-PP2", run)


def check_ran(headline: str, per_rank: list) -> None:
    crashed = [(rank, o["crash"]) for rank, o in enumerate(per_rank) if "crash" in o]
    if crashed:
        raise Crashed(f"{headline}: raised on rank(s) {[r for r, _ in crashed]}: {crashed[0][1]}")


def judge_outputs(headline: str, per_rank: list) -> None:
    check_ran(headline, per_rank)
    asserted = [(rank, o["window_assert"]) for rank, o in enumerate(per_rank) if o.get("window_assert")]
    if asserted:
        raise Divergence(f"{headline}: outputs: the release's window asserts stop the series before it computed "
                         f"them\n" + "\n".join(f"rank {r}: {message}" for r, message in asserted))
    for rank, outcome in enumerate(per_rank):
        for p, (got, want) in enumerate(zip(outcome["outputs"], outcome["unsharded"])):
            for j, (a, b) in enumerate(zip(got, want)):
                try:
                    assert_close(a, b, kind=Kind.EXACT, what=f"rank {rank} pass {p} layer {j} of the series")
                except AssertionError as exc:
                    raise Divergence(f"{headline}: outputs differ from the unsharded layers\n{exc}") from None


def _series_case(world, shared_runs, world_size, count, start, k) -> tuple[str, list]:
    per_rank = _series_results(world, shared_runs, world_size)[world_size, count, start, k]
    group = next((o["group"] for o in per_rank if "group" in o), "?")
    headline = (f"{layer_shard.label()} layer_shard_linear, series [{start}, {start + count}) with prefetch_step "
                f"{k} over shard_weight {group}")
    return headline, per_rank


SERIES_PARAMS = pytest.mark.parametrize("world_size, count, start, k", PARAM_ORDER,
                                        ids=[case_id(*c) for c in PARAM_ORDER])


@SERIES_PARAMS
def test_series_outputs(world, shared_runs, world_size, count, start, k):
    headline, per_rank = _series_case(world, shared_runs, world_size, count, start, k)
    judge_outputs(headline, per_rank)


@SERIES_PARAMS
def test_series_memory(world, shared_runs, report, world_size, count, start, k):
    headline, per_rank = _series_case(world, shared_runs, world_size, count, start, k)
    check_ran(headline, per_rank)
    weight_bytes = HIDDEN * HIDDEN * 4
    for rank, outcome in enumerate(per_rank):
        want = (outcome["owned"] + k + 1) * weight_bytes
        assert outcome["unsharded_bytes"] == count * weight_bytes, outcome["unsharded_bytes"]  # the counter itself
        ran = " (the passes it ran before its window assert)" if outcome.get("window_assert") else ""
        for when in ("after_setup", "after_passes"):
            weights = sum(b for b in outcome[when] if b >= weight_bytes)
            if weights != want:
                raise Divergence(f"{headline}: memory: rank {rank} holds {weights} bytes of weights "
                                 f"{when.replace('_', ' ')}{ran if when == 'after_passes' else ''}, the formula "
                                 f"({outcome['owned']} owned + {k + 1} windows) x {weight_bytes} = {want}")
        report.figure(f"rank{rank}_weight_bytes", sum(b for b in outcome["after_passes"] if b >= weight_bytes), "B")
        report.figure(f"rank{rank}_disposed_remnants", sum(1 for b in outcome["after_passes"] if b < weight_bytes))


@SERIES_PARAMS
def test_series_prefetch_distance(world, shared_runs, report, world_size, count, start, k):
    headline, per_rank = _series_case(world, shared_runs, world_size, count, start, k)
    check_ran(headline, per_rank)
    offsets = sorted({d for outcome in per_rank for d in outcome["offsets"]})
    distances = sorted({d for outcome in per_rank for d in outcome["distances"]})
    report.figure("prefetch_distance", offsets[0] if len(offsets) == 1 else str(offsets))
    if not offsets:
        raise Divergence(f"{headline}: prefetch distance: no reach_layer completed\n"
                         + "\n".join(f"rank {r}: {o.get('window_assert')}" for r, o in enumerate(per_rank)))
    if offsets == [k] and distances in ([k], []):
        return
    # Which rule the measurement fits, from what was measured (the release's own reach_layer), not assumed.
    d = (k + start) % count
    rule = (f" (what (i + k) % count + start gives: (k + start) mod count = {d})" if offsets == [d] else "")
    ahead = offsets[0] if len(offsets) == 1 else offsets
    if max(offsets) > k:
        effect = f"more than the {k + 1} windows hold, so a window is refilled before its layer runs"
    else:
        effect = f"so a broadcast overlaps {ahead} layers of compute where {k} were configured"
    consumed = (f"; from the second pass on, each forward's broadcast started {distances} steps before it"
                if distances else "")
    raise Divergence(f"{headline}: prefetch distance: reach_layer(i) starts broadcasting the layer {ahead} ahead "
                     f"of i inside the series (wrapping) instead of {k} ahead{rule}, {effect}{consumed}")


def judge_stage(per_rank_by_kind: list, kind: str, group_kind: str, what: str = "") -> None:
    """The check of ``test_pipeline_stages[<group_kind>]`` on the outcomes of the run ``kind``."""
    outcomes = [by_kind[kind] for by_kind in per_rank_by_kind]
    groups = sorted({tuple(o["group"]) for o in outcomes if "group" in o})
    headline = (f"{layer_shard.label()}{what} layer_shard_linear, W4 DP2 PP2, each stage's {STAGE_LAYERS} o_proj "
                f"layers over {group_kind} groups {[list(g) for g in groups]} (stages by rank "
                f"{[o.get('stage') for o in outcomes]})")
    judge_outputs(headline, outcomes)


@pytest.mark.parametrize("group_kind", STAGE_GROUPS)
def test_pipeline_stages(world, shared_runs, tmp_path_factory, group_kind):
    judge_stage(_stage_results(world, shared_runs, tmp_path_factory), group_kind, group_kind)


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_planted_breakage_is_caught(world, shared_runs, tmp_path_factory, report, breakage):
    """The owner of a layer and the source of its broadcast made to disagree across PP stages, in a copy of
    the installed release's file (never the installed package): ``test_pipeline_stages[stage]``'s check turns
    red on the copy, in the world run where it passes on the release."""
    per_rank = _stage_results(world, shared_runs, tmp_path_factory)
    try:
        judge_stage(per_rank, "stage", "stage")
    except (Divergence, Crashed) as exc:
        pytest.fail(f"the release itself fails test_pipeline_stages[stage], so a breakage planted in it shows "
                    f"nothing: {str(exc).splitlines()[0]}")
    with pytest.raises((Divergence, Crashed)) as caught:
        judge_stage(per_rank, f"planted:{breakage}", "stage", what=f" (copy with {breakage} planted)")
    verdict = "divergence" if caught.type is Divergence else "crash"
    first = str(caught.value).splitlines()[0]
    report.figure("caught_by", f"test_pipeline_stages[stage] ({verdict})")
    report.attach("caught", f"{layer_shard.BREAKAGES[breakage][0]}\n\ntest_pipeline_stages[stage] turns red: {first}")
    assert layer_shard.label() in first and "planted" in first, first
