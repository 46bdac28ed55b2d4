"""vLLM 0.13: ``DefaultEplbPolicy`` is DeepSeek's torch code; ``rebalance_experts(weight, R, groups, nodes,
ranks)`` returns ``(phy2log, log2phy, logcnt)`` itself (log2phy lists an expert's slots in the order its
replicas were added) and takes no old placement: keeping the slots of experts that stay is not in 0.13."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature, Need

POLICY_MODULE = "vllm.distributed.eplb.policy"
DEFAULT_MODULE = "vllm.distributed.eplb.policy.default"
ENTRY = "DefaultEplbPolicy.rebalance_experts"
SIZES = ("weight", "num_replicas", "num_groups", "num_nodes", "num_ranks")

FEATURES = {
    # the registry and its one policy; the placement's maps come from the policy itself on this line
    "default_policy": Feature(marker=(Need(POLICY_MODULE, "EPLB_POLICIES"),),
                              uses=(Need(DEFAULT_MODULE, ENTRY, SIZES),)),
    # the old placement as an input (preserve_intragpu_slots)
    "keep_slots": Feature(marker=(Need(DEFAULT_MODULE, ENTRY, ("old_global_expert_indices",)),),
                          uses=(Need(DEFAULT_MODULE, ENTRY, SIZES),)),
}


def place(policy_class, weight, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
          old_phy2log=None):
    """``(phy2log, log2phy, logcnt)`` as the release computes them."""
    if old_phy2log is not None:
        raise TypeError("vLLM 0.13's DefaultEplbPolicy takes no old placement")
    return policy_class.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks)
