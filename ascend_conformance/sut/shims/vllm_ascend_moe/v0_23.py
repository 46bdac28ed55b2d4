"""vllm-ascend 0.23 (vLLM 0.23): ``AscendFusedMoE`` of ``fused_moe_0_23_0.py`` (what the release uses with
vLLM 0.23), built without ``reduce_results`` (vLLM 0.23's FusedMoE has none: its runner reduces in the
layer's forward); the comm method lives in ``_EXTRA_CTX``; A5 also selects AllGather when the EP world is
no larger than top-k."""
from __future__ import annotations

from ascend_conformance.sut.shims.vllm_ascend_moe import v0_13, v0_18
from ascend_conformance.sut.shims.vllm_ascend_moe.v0_13 import *  # noqa: F401,F403 - what did not move
from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

# With vLLM 0.23 the release's fused_moe.py imports AscendFusedMoE from fused_moe_0_23_0.py (under a
# vllm_version_is branch the probe does not follow): the class is probed where it is defined.
LEGACY = "vllm_ascend.ops.fused_moe.fused_moe_0_23_0"
LAYER_NEEDS = tuple(Need(LEGACY, need.name, need.params) if (need.name or "").startswith("AscendFusedMoE.") else need
                    for need in v0_13.LAYER_NEEDS if need.name != "FusedMoE") + (
    Need(v0_13.VLLM_FUSED_MOE, "FusedMoE", ("num_experts", "top_k", "hidden_size", "intermediate_size",
                                            "params_dtype", "renormalize", "custom_routing_function", "prefix")),
    Need(v0_13.CONTEXT, "_EXTRA_CTX"),
)
FEATURES = {**v0_13.FEATURES,
            "comm_methods": Feature(marker=v0_13.FEATURES["comm_methods"].marker,
                                    uses=v0_13.COMMON_NEEDS + LAYER_NEEDS)}


def A5_SELECTION(world: int, top_k: int, tokens: int, capacity: int) -> str:  # noqa: N802 - a table entry
    if tokens <= capacity and world > 1:
        return "mc2"
    return "allgather" if world <= top_k else "alltoall"


runner_batch = v0_18.runner_batch


def layer_kwargs(scenario, route, prefix: str) -> dict:
    kwargs = v0_13.layer_kwargs(scenario, route, prefix)
    kwargs.pop("reduce_results")
    return kwargs


def forward(layer, hidden_states, router_logits, tp: int):
    return layer(hidden_states, router_logits)


def extra_context():
    from vllm_ascend.ascend_forward_context import _EXTRA_CTX

    return _EXTRA_CTX

