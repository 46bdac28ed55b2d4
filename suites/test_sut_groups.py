"""The parallel groups vLLM and vllm-ascend really build, against docs/layout.md (docs/systems_under_test.md).

0. how a capture is judged: merging the ranks' views, the verdict and its Divergence (device-free);
1. ``test_live_layout[<sut>-<config>]``: the installed release builds the groups of the configuration in a
   world of its size (its groups adapter: ``ascend_conformance/sut/vllm_groups.py``,
   ``vllm_ascend_groups.py``, with a shim per release line), every rank reads its groups back, and the
   merged layout must (a) pass the invariant checker and (b) equal the reference ``build_layout`` on every
   kind the release has; anything else raises Divergence naming the kind, the release's groups and the
   reference's. One world run per (SUT, world size) captures every configuration of that size; a
   configuration that crashes fails alone. A configuration needing a feature the installed release lacks
   (FlashComm2 on main, say) is "not in <release>: ...".
2. ``test_destroy_leaves_no_group[...]``: after the release's own destroy, no group of vllm-ascend's is
   left behind (read in the same runs).
3. ``test_release_refuses[...]``: what a release refuses surfaces as one SutRefused line naming the
   release and its own message, never as a divergence.
4. ``test_vllm_coordinator[<layout>-<case>[-<dtype>]-<claim>]``: vLLM's own GroupCoordinator, on the tp / pp /
   dp / ep groups of a live capture, through the expectations of docs/collectives.md (exact inputs); one
   verdict per claim (all_reduce's sum, in_place and returns are three tests); one world run per layout.

Known divergences and known crashes of the installed releases are expectations from ``suites/expectations/``,
each waiving only the failure whose message it matches (any other crash, or a refusal, fails).
"""
from __future__ import annotations

import pytest
from sut_support import need_stack, sut_world

from ascend_conformance.errors import Divergence, SutRefused
from ascend_conformance.layout_verdict import CaptureError, judge, merge_rank_views
from ascend_conformance.sut import VLLM, VLLM_ASCEND, vllm_groups
from ascend_conformance.sut.captured_layouts import adapter, capture_views, outcome
from ascend_conformance.sut.vllm_coordinators import (
    CASES, METHODS, PER_KIND_CASES, PER_KIND_CLAIM, check_coordinators, exercise_coordinators,
)
from ascend_conformance.topology import ParallelConfig, build_layout


def cfg(world_size, tp=1, pp=1, dp=1, **options) -> dict:
    return dict(world_size=world_size, tp=tp, pp=pp, dp=dp, **options)


PD_PRODUCER = dict(kv_producer=True, pd_head_ratio=2)

# vLLM builds world, tp, pcp, pp, dp, ep; these exercise every coordinate order it has.
VLLM_CONFIGS = {
    "W4-TP4": cfg(4, tp=4),
    "W4-PP2-TP2": cfg(4, tp=2, pp=2),
    "W4-DP2-TP2": cfg(4, tp=2, dp=2),
    "W4-DP2-PP2": cfg(4, pp=2, dp=2),
    "W4-PCP2-TP2": cfg(4, tp=2, pcp=2),
    "W4-DP2-PCP2": cfg(4, dp=2, pcp=2),
    "W4-PP2-PCP2": cfg(4, pp=2, pcp=2),
    "W4-E2-TP2": cfg(4, tp=2),
    "W4-DP4": cfg(4, dp=4),
    "W4-PP4": cfg(4, pp=4),
    "W8-DP2-PP2-TP2": cfg(8, tp=2, pp=2, dp=2),
    "W8-DP2-PCP2-TP2": cfg(8, tp=2, dp=2, pcp=2),
    "W8-PP2-PCP2-TP2": cfg(8, tp=2, pp=2, pcp=2),
    "W8-DP4-TP2": cfg(8, tp=2, dp=4),
    "W8-E2-PP2-TP2": cfg(8, tp=2, pp=2),
}
# vllm-ascend adds mc2 / dynamic_eplb / fc3_quant_x, fine-grained TP, FlashComm2, layer sharding, PD.
VLLM_ASCEND_CONFIGS = {
    "W4-TP4": cfg(4, tp=4),
    "W4-PP2-TP2": cfg(4, tp=2, pp=2),
    "W4-DP2-TP2": cfg(4, tp=2, dp=2),
    "W4-DP2-PP2": cfg(4, pp=2, dp=2),
    "W4-PCP2-TP2": cfg(4, tp=2, pcp=2),
    "W4-DP2-TP2-otp2": cfg(4, tp=2, dp=2, otp=2),
    "W4-DP2-TP2-lmhead2-embed2-mlp2": cfg(4, tp=2, dp=2, lmhead_tp=2, embed_tp=2, mlp_tp=2),
    "W4-DP4-otp2-lmhead4-embed1": cfg(4, dp=4, otp=2, lmhead_tp=4, embed_tp=1),
    "W4-DP2-PP2-otp2": cfg(4, pp=2, dp=2, otp=2),
    "W4-DP2-PP2-mlp2-sharding": cfg(4, pp=2, dp=2, mlp_tp=2, layer_sharding=True),
    "W4-TP4-fc2o2": cfg(4, tp=4, flashcomm2_otp=2),
    "W4-TP4-fc2o1": cfg(4, tp=4, flashcomm2_otp=1),
    "W4-TP4-fc2o2-sharding": cfg(4, tp=4, flashcomm2_otp=2, layer_sharding=True),
    "W4-TP4-fc2o1-sharding": cfg(4, tp=4, flashcomm2_otp=1, layer_sharding=True),
    "W4-DP2-TP2-sharding": cfg(4, tp=2, dp=2, layer_sharding=True),
    "W4-PP2-TP2-sharding": cfg(4, tp=2, pp=2, layer_sharding=True),
    "W4-TP4-ptp2": cfg(4, tp=4, pd_tp_ratio=2, **PD_PRODUCER),
    "W4-TP4-ptp4-heads2": cfg(4, tp=4, pd_tp_ratio=4, num_head_replica=2, **PD_PRODUCER),
    "W4-TP4-pd2-decode": cfg(4, tp=4, pd_tp_ratio=2, pd_head_ratio=2),
    "W8-DP2-PP2-TP2": cfg(8, tp=2, pp=2, dp=2),
    "W8-DP2-PP2-TP2-otp2-sharding": cfg(8, tp=2, pp=2, dp=2, otp=2, layer_sharding=True),
    "W8-DP4-TP2-otp2-lmhead4-embed2-mlp1": cfg(8, tp=2, dp=4, otp=2, lmhead_tp=4, embed_tp=2, mlp_tp=1),
    "W8-DP2-PCP2-TP2": cfg(8, tp=2, dp=2, pcp=2),
    "W8-PP2-TP4-fc2o2-sharding": cfg(8, tp=4, pp=2, flashcomm2_otp=2, layer_sharding=True),
    "W8-DP2-TP4-fc2o1-sharding": cfg(8, tp=4, dp=2, flashcomm2_otp=1, layer_sharding=True),
    "W8-TP8-fc2o4": cfg(8, tp=8, flashcomm2_otp=4),
    # pd_head_ratio 4: a deployment of prefill TP 8, decode TP 2 without replicated heads (vllm_ascend_groups.pd_deployment)
    "W8-TP8-ptp4": cfg(8, tp=8, pd_tp_ratio=4, kv_producer=True, pd_head_ratio=4),
    "W8-TP8-ptp4-heads2": cfg(8, tp=8, pd_tp_ratio=4, num_head_replica=2, **PD_PRODUCER),
}
CONFIGS = {VLLM: VLLM_CONFIGS, VLLM_ASCEND: VLLM_ASCEND_CONFIGS}
# Configurations vllm-ascend 0.23.0.post1 crashes on (its fine-grained TP grid reshapes the whole world to
# (pp, dp, tp), leaving out PCP and external DP): ordinary test_live_layout cases whose crash is recorded as a
# crash expectation (exception type and message, suites/expectations/), so any other crash still fails. A
# crash ends the world run it is in, so each runs in a world run of its own, apart from its world size's batch.
CRASHING = {VLLM_ASCEND: {"W8-DP2-PCP2-TP2-mlp2": cfg(8, tp=2, dp=2, pcp=2, mlp_tp=2),
                          "W4-E2-TP2-lmhead1": cfg(4, tp=2, lmhead_tp=1)}}

# Configurations a release refuses, with the words of its refusal (one SutRefused line, exit 2 on the CLI).
REFUSED = {
    (VLLM, "W4-E2-DP2"): (cfg(4, dp=2), "data_parallel_rank (2) must be in the range [0, 2)"),
    (VLLM_ASCEND, "W4-DP2-TP2-fc2o2"): (cfg(4, tp=2, dp=2, flashcomm2_otp=2), "cannot exceed global tensor parallel size"),
    (VLLM_ASCEND, "W4-TP4-fc2o2-otp1"): (cfg(4, tp=4, flashcomm2_otp=2, otp=1),
                                         "cannot be enabled simultaneously with oproj_tensor_parallel_size"),
}

# vLLM's GroupCoordinator: layouts whose tp / pp / dp / ep groups are all different and larger than one.
COORDINATOR_LAYOUTS = {"W4-DP2-TP2": cfg(4, tp=2, dp=2), "W4-PP2-TP2": cfg(4, tp=2, pp=2),
                       "W8-DP2-PP2-TP2": cfg(8, tp=2, pp=2, dp=2)}
COORDINATOR_DTYPES = ["float32", "float16", "bfloat16", "int32", "int64"]
RUN_TIMEOUT = 1200  # seconds: one batched world run (imports of the stack in every rank included)


# What this worker already read of the shared runs: every test of a batch reads the same outcome, and
# reading it through the shared file (lock, load) for each of a few hundred tests costs seconds.
_READ: dict = {}


def _shared(shared_runs, key: str, run):
    if key not in _READ:
        _READ[key] = shared_runs.get(key, run)
    return _READ[key]


class SutCrashed(RuntimeError):
    """The release (or the adapter) raised building one configuration: a crash, never a divergence."""


def _config(fields: dict) -> ParallelConfig:
    return ParallelConfig(**fields)


def _need(sut: str, fields: dict, *features: str) -> None:
    """Skip unless the installed releases can build ``fields`` here (and have the vLLM ``features``): as
    ``not in <release>: ...`` (sut_support.need_feature's outcome, through the adapters' per-process cache of
    the probes: reading a linked checkout's release costs git calls), or with the host's reason. A shim that
    does not fit fails the test (ShimMismatch)."""
    need_stack(sut)
    module = adapter(sut)
    absent = module.missing(_config(fields)) or vllm_groups.first_missing(
        [(vllm_groups.ADAPTER, VLLM, feature) for feature in features])
    if absent:
        pytest.skip(absent)
    reason = module.host_reason(_config(fields))
    if reason:
        pytest.skip(reason)


def _buildable(sut: str, fields: dict) -> bool:
    module = adapter(sut)
    return module.missing(_config(fields)) is None and module.host_reason(_config(fields)) is None


def _capture_batch(world, shared_runs, sut: str, world_size: int, configs: dict) -> dict:
    """{name: per-rank outcomes} of every configuration of ``configs`` of this world size the installed
    releases can build here, from one run."""
    need_stack(sut)
    names = [name for name, fields in configs.items()
             if fields["world_size"] == world_size and _buildable(sut, fields)]

    def run():
        per_rank = sut_world(world, sut, world_size, timeout=RUN_TIMEOUT).run(
            capture_views, sut, [configs[name] for name in names])
        return {name: [outcomes[i] for outcomes in per_rank] for i, name in enumerate(names)}

    return _shared(shared_runs, f"{sut}-layouts-{'-'.join(names)}", run)


def _built(world, shared_runs, sut: str, name: str, configs: dict) -> list[dict]:
    """Every rank's outcome of configuration ``name`` that built its groups; a refusal raises SutRefused,
    a crash SutCrashed (naming the ranks)."""
    fields = configs[name]
    _need(sut, fields)
    per_rank = _capture_batch(world, shared_runs, sut, fields["world_size"], configs)[name]
    what, value = outcome(per_rank)
    if what == "refused":
        raise SutRefused(value)
    if what == "not_in_release":  # the probe in this process and the release in the ranks disagree
        raise SutCrashed(f"{adapter(sut).label()} lacks what {name} needs, though its source has it: {value}")
    if what == "crashed":
        raise SutCrashed(f"{adapter(sut).label()} crashed building {_config(fields).describe()}: {value}")
    return per_rank


def _fields(sut: str, name: str) -> dict:
    return CRASHING.get(sut, {}).get(name) or CONFIGS[sut][name]


def _captured(world, shared_runs, sut: str, name: str) -> list[dict]:
    """Configuration ``name`` of ``sut`` as every rank built it; a known-crashing one runs in a world of its
    own (``CRASHING``), so its crash is its test's outcome alone."""
    configs = {name: CRASHING[sut][name]} if name in CRASHING.get(sut, {}) else CONFIGS[sut]
    return _built(world, shared_runs, sut, name, configs)


def _release(sut: str) -> str:
    """The label a verdict names: ``vllm 0.23.0``, ``vllm_ascend 0.18.0 (on vllm 0.18.0)``."""
    if sut == VLLM:
        return adapter(VLLM).label()
    return f"{adapter(sut).label()} (on {adapter(VLLM).label()})"


def _params(kind: str):
    """``layout``: every configuration, the crashing ones too; ``leftovers``: vllm-ascend's that build."""
    return [pytest.param(sut, name, marks=pytest.mark.sut(sut), id=f"{sut}-{name}")
            for sut, configs in CONFIGS.items()
            for name in [*configs, *(CRASHING.get(sut, {}) if kind == "layout" else ())]
            if kind != "leftovers" or sut == VLLM_ASCEND]


# -- 0. how a capture is judged (device-free) ---------------------------------------------------------

def _views_of(layout: dict) -> list[dict]:
    """What each rank of a layout reports: its own group per kind."""
    world_size = len(layout["world"][0])
    return [{kind: next(group for group in groups if rank in group)
             for kind, groups in layout.items() if any(rank in group for group in groups)}
            for rank in range(world_size)]


def test_merged_views_of_the_reference_are_the_reference_and_conform():
    config = ParallelConfig(world_size=8, tp=2, pp=2, dp=2, otp=2, flashcomm2_otp=2, layer_sharding=True)
    reference = build_layout(config)
    merged = merge_rank_views(_views_of(reference))
    assert merged == reference
    judgement = judge(merged, config)
    assert judgement.conformant, judgement.report("reference")
    judgement.raise_divergence("reference")  # nothing to raise


def test_a_differing_kind_is_a_divergence_naming_the_kind_both_versions_and_the_violation():
    config = ParallelConfig(world_size=4, tp=1, pp=2, dp=2, otp=2)
    live = build_layout(config)
    live["otp"] = [[0, 1], [2, 3]]  # stages are {0, 2} and {1, 3}
    with pytest.raises(Divergence) as caught:
        judge(merge_rank_views(_views_of(live)), config, adapter(VLLM_ASCEND).KINDS).raise_divergence("sut 1.0")
    lines = str(caught.value).splitlines()
    assert lines[0] == f"sut 1.0 builds a layout other than the reference for {config.describe()}"
    assert lines[1] == "  otp: sut 1.0 [[0, 1], [2, 3]], reference [[0, 2], [1, 3]]"
    assert "  [crosses_stages] otp group [0, 1] crosses PP stages: rank 0 is in stage 0, rank 1 in stage 1" in lines
    assert "  [group_extra] live otp group [0, 1] is not a reference otp group" in lines


def test_only_the_kinds_a_sut_builds_are_judged():
    config = ParallelConfig(world_size=4, tp=2, pp=1, dp=2)
    vllm_only = {kind: groups for kind, groups in build_layout(config).items() if kind in adapter(VLLM).KINDS}
    views = _views_of(vllm_only)
    for rank, view in enumerate(views):
        view["dcp"] = [rank]  # vLLM's decode-context-parallel groups: not specified by docs/layout.md
    judgement = judge(merge_rank_views(views), config, adapter(VLLM).KINDS)
    assert judgement.conformant and judgement.kinds == adapter(VLLM).KINDS
    assert judgement.layout["dcp"] == [[0], [1], [2], [3]]
    missing = judge(merge_rank_views(views), config, adapter(VLLM_ASCEND).KINDS)
    assert {d.kind for d in missing.differences if d.change == "kind_missing"} == {"mc2", "dynamic_eplb", "fc3_quant_x"}
    # A kind the release does not have (fc3_quant_x on vllm-ascend main) is not judged.
    without = tuple(kind for kind in adapter(VLLM_ASCEND).KINDS if kind != "fc3_quant_x")
    assert "fc3_quant_x" not in judge(merge_rank_views(views), config, without).kinds


@pytest.mark.parametrize("views, message", [
    ([{"tp": [1, 2]}, {"tp": [1, 2]}, {"tp": [1, 2]}], r"^rank 0 reports tp group \[1, 2\], which does not contain it$"),
    ([{"tp": [0, 1]}, {"tp": [1, 0]}], r"^tp: ranks disagree on the order of group \[0, 1\]: rank 1 reports \[1, 0\]$"),
    ([{"tp": [0, 1]}, {"tp": [1, 2]}, {"tp": [1, 2]}], r"^tp: rank 1 is in group \[0, 1\] and in group \[1, 2\]"),
])
def test_inconsistent_rank_views_are_refused_naming_the_ranks(views, message):
    with pytest.raises(CaptureError, match=message):
        merge_rank_views(views)


# -- 1. the layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sut, name", _params("layout"))
def test_live_layout(world, shared_runs, sut, name):
    config = ParallelConfig(**_fields(sut, name))
    layout = merge_rank_views([outcome["view"] for outcome in _captured(world, shared_runs, sut, name)])
    kinds = adapter(sut).kinds()
    judgement = judge(layout, config, kinds)
    judgement.raise_divergence(_release(sut))
    assert set(judgement.kinds) >= set(kinds) & set(config.group_kinds()), judgement.kinds


# -- 2. what destroy leaves ------------------------------------------------------------------------------

@pytest.mark.parametrize("sut, name", _params("leftovers"))
def test_destroy_leaves_no_group(world, shared_runs, sut, name):
    outcomes = _captured(world, shared_runs, sut, name)
    left = sorted({kind for outcome in outcomes for kind in outcome["leftovers"]})
    if left:
        raise Divergence(f"{adapter(sut).label()}: destroy_ascend_model_parallel leaves {', '.join(left)} set after "
                         f"{ParallelConfig(**CONFIGS[sut][name]).describe()}; the next initialisation in this "
                         f"process reads a destroyed group")


# -- 3. refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sut, name", [pytest.param(sut, name, marks=pytest.mark.sut(sut), id=f"{sut}-{name}")
                                       for sut, name in REFUSED])
def test_release_refuses(world, shared_runs, sut, name):
    """A refusal of a feature the release lacks (FlashComm2's on main) is not in it; a release that builds a
    configuration it refused before fails here, so the configuration moves to the ones judged."""
    fields, words = REFUSED[(sut, name)]
    refused = {n: f for (s, n), (f, _) in REFUSED.items() if s == sut}
    try:
        per_rank = _built(world, shared_runs, sut, name, refused)
    except SutRefused as exc:
        refusal = str(exc)
    else:
        pytest.fail(f"{adapter(sut).label()} now builds {name}: move it to the configurations checked "
                    f"({len(per_rank)} ranks built it)")
    assert refusal.startswith(f"{adapter(sut).label()} refuses {ParallelConfig(**fields).describe()}: ")
    assert words in refusal and "\n" not in refusal


# -- 4. vLLM's GroupCoordinator ---------------------------------------------------------------------------

def _coordinator_params():
    """``<layout>-<case>-<dtype>-<claim>`` (``<layout>-<case>-<claim>`` for the dtype-free cases): one verdict each."""
    params = []
    for layout in COORDINATOR_LAYOUTS:
        keys = [(case.name, dtype, claim) for case in CASES for dtype in COORDINATOR_DTYPES if dtype in case.dtypes
                for claim in case.claims()]
        keys += [(name, None, PER_KIND_CLAIM) for name in PER_KIND_CASES]
        params += [pytest.param(layout, case, dtype, claim, id="-".join(x for x in (layout, case, dtype, claim) if x))
                   for case, dtype, claim in keys]
    return params


@pytest.mark.sut(VLLM)
@pytest.mark.parametrize("layout, case, dtype, claim", _coordinator_params())
def test_vllm_coordinator(world, shared_runs, layout, case, dtype, claim):
    fields = COORDINATOR_LAYOUTS[layout]
    _need(VLLM, fields, *(f"GroupCoordinator.{method}" for method in METHODS[case]))

    def run():
        per_rank = sut_world(world, VLLM, fields["world_size"], timeout=RUN_TIMEOUT).run(
            exercise_coordinators, fields, COORDINATOR_DTYPES)
        return check_coordinators(fields, COORDINATOR_DTYPES, per_rank)

    key = (case, dtype, claim) if dtype else (case, claim)
    what = f"GroupCoordinator {case}{' ' + dtype if dtype else ''} ({claim}) on {layout}"
    verdict = _shared(shared_runs, f"vllm-coordinators-{layout}", run)[key]
    if verdict["raised"]:  # the release's own error: a crash, which no expectation hides
        raise SutCrashed(f"{adapter(VLLM).label()} {what} raised:\n" + "\n".join(verdict["raised"][:20]))
    if verdict["problems"]:
        raise Divergence(f"{adapter(VLLM).label()} {what} differs from docs/collectives.md "
                         f"({len(verdict['problems'])} mismatches in {verdict['checks']} checks)\n"
                         + "\n".join(verdict["problems"][:20]))
    if verdict["unavailable"]:  # a check that cannot be made is skipped, even when the others passed
        pytest.skip(f"{adapter(VLLM).label()} {what}: {verdict['checks']} checks right, not available on "
                    f"{'; '.join(verdict['unavailable'])}")
    assert verdict["checks"] > 0
