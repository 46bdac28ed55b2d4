"""vLLM 0.23 (and 0.27): ``rebalance_experts`` returns ``phy2log`` only; the EPLB state derives ``log2phy``
(slots in ascending order) and ``logcnt`` with ``vllm.distributed.eplb.eplb_state.compute_logical_maps``."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature, Need

POLICY_MODULE = "vllm.distributed.eplb.policy"
DEFAULT_MODULE = "vllm.distributed.eplb.policy.default"
STATE_MODULE = "vllm.distributed.eplb.eplb_state"
ENTRY = "DefaultEplbPolicy.rebalance_experts"
SIZES = ("weight", "num_replicas", "num_groups", "num_nodes", "num_ranks")
MAPS = Need(STATE_MODULE, "compute_logical_maps", ("physical_to_logical_map", "num_logical_experts"))

FEATURES = {
    "default_policy": Feature(marker=(Need(POLICY_MODULE, "EPLB_POLICIES"),),
                              uses=(Need(DEFAULT_MODULE, ENTRY, SIZES), MAPS)),
    "keep_slots": Feature(marker=(Need(DEFAULT_MODULE, ENTRY, ("old_global_expert_indices",)),),
                          uses=(Need(DEFAULT_MODULE, ENTRY, SIZES), MAPS)),
}


def place(policy_class, weight, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
          old_phy2log=None):
    """``(phy2log, log2phy, logcnt)`` as the release computes them: the policy's phy2log, then the maps."""
    import torch
    from vllm.distributed.eplb.eplb_state import compute_logical_maps

    phy2log = policy_class.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks, old_phy2log)
    phy2log = torch.as_tensor(phy2log).to(torch.int64)
    log2phy, logcnt = compute_logical_maps(phy2log, weight.shape[1])
    return phy2log, log2phy, logcnt
