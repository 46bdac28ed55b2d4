"""EPLB: expert placement (DeepSeek's hierarchical / global balancing, round-robin baseline, balancedness,
per-rank expert maps, invariant checker) and pure planning of the weight redistribution between two
placements. Nothing here touches torch.distributed."""
from ascend_conformance.eplb.placement import (
    BalancednessSummary,
    RankExperts,
    balancedness,
    check_placement,
    expert_map_for_rank,
    rebalance_experts,
    round_robin_placement,
    summarize_balancedness,
)
from ascend_conformance.eplb.plan import (
    ByteAccounting,
    ExpertMove,
    LayerPlan,
    RankStep,
    RedistributionPlan,
    plan_redistribution,
)

__all__ = [
    "rebalance_experts",
    "round_robin_placement",
    "balancedness",
    "BalancednessSummary",
    "summarize_balancedness",
    "RankExperts",
    "expert_map_for_rank",
    "check_placement",
    "ExpertMove",
    "RankStep",
    "LayerPlan",
    "ByteAccounting",
    "RedistributionPlan",
    "plan_redistribution",
]
