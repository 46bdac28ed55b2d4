"""vLLM 0.18: ``DefaultEplbPolicy`` is a numpy port; ``rebalance_experts(weight, R, groups, nodes, ranks,
old_global_expert_indices)`` still returns ``(phy2log, log2phy, logcnt)`` itself (log2phy in the order the
replicas were added)."""
from __future__ import annotations

# What the policy is and how it is asked for are as on 0.13 (the features, the probes); only the call differs.
from ascend_conformance.sut.shims.vllm_eplb.v0_13 import (DEFAULT_MODULE, ENTRY, FEATURES, POLICY_MODULE,  # noqa: F401
                                                          SIZES)


def place(policy_class, weight, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
          old_phy2log=None):
    """``(phy2log, log2phy, logcnt)`` as the release computes them."""
    return policy_class.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks, old_phy2log)
