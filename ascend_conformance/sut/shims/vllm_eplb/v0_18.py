"""vLLM 0.18: ``DefaultEplbPolicy`` is a numpy port; ``rebalance_experts(weight, R, groups, nodes, ranks,
old_global_expert_indices)`` still returns ``(phy2log, log2phy, logcnt)`` itself (log2phy in the order the
replicas were added)."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature, Need

POLICY_MODULE = "vllm.distributed.eplb.policy"
DEFAULT_MODULE = "vllm.distributed.eplb.policy.default"
ENTRY = "DefaultEplbPolicy.rebalance_experts"
SIZES = ("weight", "num_replicas", "num_groups", "num_nodes", "num_ranks")

FEATURES = {
    "default_policy": Feature(marker=(Need(POLICY_MODULE, "EPLB_POLICIES"),),
                              uses=(Need(DEFAULT_MODULE, ENTRY, SIZES),)),
    "keep_slots": Feature(marker=(Need(DEFAULT_MODULE, ENTRY, ("old_global_expert_indices",)),),
                          uses=(Need(DEFAULT_MODULE, ENTRY, SIZES),)),
}


def place(policy_class, weight, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
          old_phy2log=None):
    """``(phy2log, log2phy, logcnt)`` as the release computes them."""
    return policy_class.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks, old_phy2log)
