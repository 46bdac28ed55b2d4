"""A MoE scenario in one rank of a world: groups, inputs, the method's forward, the rank's verdict.

Every function here is collective: every rank of the world calls it, with the same scenarios in the same
order (the groups and the forward context are built with collectives). :func:`run_scenarios` is the rank
function a world runs (``world(n).run(run_scenarios, [scenario.to_dict(), ...])`` in a suite, the CLI's
world in ``ascend-conformance moe``, or a plain ``torchrun`` script after ``init_process_group``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ascend_conformance.errors import one_line
from ascend_conformance.moe.context import gather_forward_context
from ascend_conformance.moe.methods import COMPUTING_METHODS, method_class
from ascend_conformance.moe.mlp import ExpertMLP
from ascend_conformance.moe.oracle import dense_moe
from ascend_conformance.moe.parallel import moe_groups
from ascend_conformance.moe.placement import ExpertPlacement
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.moe.scenario_verdict import compare_result
from ascend_conformance.tolerance import Kind


@dataclasses.dataclass
class RankSetup:
    """Everything one rank of a scenario holds before the forward: groups, placement, its DP rank's inputs,
    the global weights and the forward context (built with the DP all-gather of the token counts)."""

    scenario: Scenario
    device: torch.device
    groups: Any
    placement: ExpertPlacement
    x: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    ctx: Any

    @property
    def rank(self) -> int:
        return self.groups.ep.ranks[self.groups.ep.rank_in_group]

    def method(self, name_or_cls, ops=None):
        cls = method_class(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
        return cls(self.groups, self.placement, ops=ops, device=self.device)

    def mlp(self, ops) -> ExpertMLP:
        return ExpertMLP.for_rank(self.w13.to(self.device), self.w2.to(self.device), self.placement,
                                  self.groups.ep.rank_in_group, ops)

    def inputs_on_device(self):
        return self.x.to(self.device), self.topk_ids.to(self.device), self.topk_weights.to(self.device)

    def oracle(self) -> torch.Tensor:
        """float32 [n, H] for this rank's tokens."""
        return dense_moe(self.x, self.topk_ids, self.topk_weights, self.w13, self.w2)


def setup_on_rank(scenario: Scenario) -> RankSetup:
    """Collective (the DP all-gather of token counts): every rank of the world calls it. Tensors go to the
    device the groups run on (this process's current device)."""
    groups = moe_groups(scenario.config())
    device = groups.ep.device
    x, topk_ids, topk_weights = scenario.inputs(groups.dp.rank_in_group)
    w13, w2 = scenario.weights()
    ctx = gather_forward_context(x.shape[0], groups.dp, scenario.tp, device)
    if ctx.num_tokens_across_dp != scenario.token_counts():
        raise AssertionError(f"forward context gathered {list(ctx.num_tokens_across_dp)} tokens per DP rank, the "
                             f"scenario has {list(scenario.token_counts())}")
    return RankSetup(scenario, device, groups, scenario.expert_placement(), x, topk_ids, topk_weights, w13, w2, ctx)


def run_on_rank(scenario: Scenario, *, keep_tensors: bool = False, method_cls=None, ops=None) -> dict:
    """Run `scenario` in this rank (collective: every rank of the world calls it) and compare with the
    dense oracle. Returns this rank's result: tokens, max errors, ``ok`` and the mismatch report; with
    keep_tensors also x, topk_ids, topk_weights and out (CPU). `method_cls` / `ops` replace the
    scenario's method class / the op provider (the suites' deliberately broken variants use them)."""
    setup = setup_on_rank(scenario)
    method = setup.method(method_cls or scenario.method, ops=ops)
    out = method.forward(*setup.inputs_on_device(), setup.mlp(method.ops), setup.ctx).cpu()
    groups = setup.groups
    result = {"rank": setup.rank, "dp_rank": groups.dp.rank_in_group, "tp_rank": groups.tp.rank_in_group,
              "tokens": setup.x.shape[0], "ops": method.ops.name}
    what = f"{scenario.label()} rank {setup.rank}"
    if scenario.method in COMPUTING_METHODS:
        result.update(compare_result(out, setup.oracle(), Kind.ACCUMULATED, what))
    else:  # Dummy keeps shapes and returns the token buffer unchanged
        result.update(compare_result(out, setup.x, Kind.EXACT, what + " (token buffer)"))
    if keep_tensors:
        result["tensors"] = {"x": setup.x, "topk_ids": setup.topk_ids, "topk_weights": setup.topk_weights, "out": out}
    return result


def run_scenarios(scenarios: list[dict], keep_tensors: bool = False) -> list[dict]:
    """Rank function: every scenario of the batch in order (a world runs many in one call). A scenario that
    raises is re-raised naming its repro command."""
    results = []
    for values in scenarios:
        scenario = Scenario.from_dict(values)
        try:
            results.append(run_on_rank(scenario, keep_tensors=keep_tensors))
        except Exception as exc:
            raise RuntimeError(f"{scenario.label()}: {one_line(exc, with_type=True)} | repro: {scenario.repro()}") from exc
    return results
