"""vLLM's group construction per release line (:mod:`ascend_conformance.sut.vllm_groups`,
:func:`ascend_conformance.sut.bringup.model_parallel_groups`).

What every line shares is declared here; a line module holds what moved: ``v0_13`` (0.13: its swap space,
which refuses TP 8 on a small host), ``v0_18`` (0.18 to 0.26), ``v0_27`` (0.27: PCP needs Triton). vLLM
0.13.0, 0.18.0, 0.23.0 and 0.27.1 build their groups with the same calls.
"""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

STATE = "vllm.distributed.parallel_state"
# kind -> getter in vllm.distributed.parallel_state (a getter that asserts means: not built).
GETTERS: dict[str, str] = {"world": "get_world_group", "tp": "get_tp_group", "pcp": "get_pcp_group",
                           "pp": "get_pp_group", "dp": "get_dp_group", "ep": "get_ep_group"}
# GroupCoordinator methods the coordinator cases call, each a feature "GroupCoordinator.<method>".
COORDINATOR_METHODS = ("all_reduce", "all_gather", "reduce_scatter", "all_gatherv", "reduce_scatterv", "gather",
                       "broadcast", "send", "recv", "broadcast_object", "send_tensor_dict", "recv_tensor_dict",
                       "barrier")


def kind_features() -> dict[str, Feature]:
    """One feature per kind: the release has the kind when it has its getter."""
    return {kind: Feature(marker=(Need(STATE, getter),)) for kind, getter in GETTERS.items()}


def coordinator_features() -> dict[str, Feature]:
    return {f"GroupCoordinator.{method}": Feature(marker=(Need(STATE, f"GroupCoordinator.{method}"),))
            for method in COORDINATOR_METHODS}
