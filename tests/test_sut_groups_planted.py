"""A reintroduced group-construction bug turns test_live_layout's verdict red (issue 16, planted breakage).

Inside the ranks of one world of 4 (on pools of their own, so the patched functions never meet another
test), a copy of the installed release's own group construction with one line broken replaces the
original for one capture, then the original is put back:

* ``mc2-ignoring-pp``: vllm-ascend's ``init_ascend_model_parallel`` cuts its EP-like groups (mc2,
  dynamic_eplb, fc3_quant_x) from the rank grid without moving PP out first, so each group is a block of
  DP x PCP x TP consecutive ranks (what vllm-ascend 0.13.0 shipped);
* ``tp-across-pp-stages``: vLLM's ``initialize_model_parallel`` takes the TP groups with the PP and TP
  axes of its rank grid swapped, so every TP group holds one rank of each PP stage.

Each configuration is captured once as released (it must conform: the breakage, not the configuration,
makes the difference) and once planted; the planted capture must raise the Divergence of
``test_live_layout`` (``layout_verdict.judge(...).raise_divergence``) naming the kind and its groups crossing
PP stages. In the suite, ``test_live_layout[vllm_ascend-W4-DP2-PP2]`` and ``[vllm_ascend-W4-PP2-TP2]`` /
``[vllm-W4-PP2-TP2]`` are the parametrisations that judge these configurations.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import textwrap

import pytest

from ascend_conformance.errors import Divergence
from ascend_conformance.layout_verdict import judge, merge_rank_views
from ascend_conformance.sut import VLLM_ASCEND, stack
from ascend_conformance.sut.captured_layouts import adapter, capture_one, outcome
from ascend_conformance.topology import ParallelConfig

# name -> (module, function, the released text, the broken text, configuration, kinds it must name)
BREAKAGES = {
    "mc2-ignoring-pp": (
        "vllm_ascend.distributed.parallel_state", "init_ascend_model_parallel",
        "        all_ranks.transpose(1, 2)\n        .reshape(\n", "        all_ranks\n        .reshape(\n",
        dict(world_size=4, tp=1, pp=2, dp=2), ("mc2", "dynamic_eplb", "fc3_quant_x")),
    "tp-across-pp-stages": (
        "vllm.distributed.parallel_state", "initialize_model_parallel",
        "group_ranks = all_ranks.view(-1, tensor_model_parallel_size).unbind(0)",
        "group_ranks = all_ranks.transpose(2, 4).reshape(-1, tensor_model_parallel_size).unbind(0)",
        dict(world_size=4, tp=2, pp=2, dp=1), ("tp",)),
}


@contextlib.contextmanager
def planted(name: str | None):
    """In a rank: the release's function of breakage ``name`` replaced by a broken copy of its own source
    (compiled into the release's module, so it reads and sets the module's globals), then restored."""
    if name is None:
        yield
        return
    from ascend_conformance.sut import standin

    standin.activate()  # vllm_ascend.utils imports torch_npu
    module_name, function, old, new, _, _ = BREAKAGES[name]
    module = importlib.import_module(module_name)
    original = getattr(module, function)
    source = textwrap.dedent(inspect.getsource(original))
    if source.count(old) != 1:
        raise RuntimeError(f"cannot plant {name}: {module_name}.{function} has {source.count(old)} occurrences of {old!r}")
    exec(compile(source.replace(old, new), f"<planted {name}: {inspect.getsourcefile(original)}>", "exec"),  # noqa: S102
         module.__dict__)
    try:
        yield
    finally:
        setattr(module, function, original)


def capture_released_and_planted(names: list[str]) -> list[dict]:
    """In every rank: for each breakage, this rank's outcome of its configuration as released, then planted."""
    groups = adapter(VLLM_ASCEND)
    outcomes = []
    for name in names:
        fields = BREAKAGES[name][4]
        for breakage in (None, name):
            with planted(breakage):
                outcomes.append(capture_one(groups, fields, True))
    return outcomes


def test_a_group_construction_ignoring_pp_is_caught_naming_the_kind(world):
    reason = stack.unavailable_reason(VLLM_ASCEND)
    if reason:
        pytest.skip(reason)
    names = list(BREAKAGES)
    per_rank = world(4, timeout=1200, pool="vllm_ascend-planted").run(capture_released_and_planted, names)
    release = adapter(VLLM_ASCEND).label()
    kinds = adapter(VLLM_ASCEND).kinds()
    for index, name in enumerate(names):
        fields, named = BREAKAGES[name][4], BREAKAGES[name][5]
        config = ParallelConfig(**fields)
        verdicts = []
        for offset in (0, 1):
            what, value = outcome([outcomes[2 * index + offset] for outcomes in per_rank])
            assert what == "view", f"{name}: {what}: {value}"
            verdicts.append(judge(merge_rank_views(value), config, kinds))
        released, broken = verdicts
        assert released.conformant, released.report(release)  # the configuration itself conforms
        with pytest.raises(Divergence) as caught:
            broken.raise_divergence(release)
        lines = str(caught.value).splitlines()
        assert lines[0] == f"{release} builds a layout other than the reference for {config.describe()}", name
        for kind in named:
            if kind in kinds:
                assert any(line.startswith(f"  {kind}: {release} ") for line in lines), (name, kind, lines)
                assert any(line.startswith(f"  [crosses_stages] {kind} group ") for line in lines), (name, kind, lines)
        assert {d.kind for d in broken.differences} == {kind for kind in named if kind in kinds}, name
