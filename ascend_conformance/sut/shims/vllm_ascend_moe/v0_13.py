"""vllm-ascend 0.13 (vLLM 0.13): the MoE layer is ``AscendFusedMoE`` (vLLM's ``FusedMoE`` replaced by the
release), built as vLLM's ``Qwen3MoeSparseMoeBlock`` builds it (``reduce_results=True``: the layer's
forward all-reduces); the forward context keeps ``moe_comm_type`` / ``moe_comm_method`` on vLLM's
forward context; no A5 device adaptor (``select_moe_comm_method`` raises for A5).

Later lines override what moved (``v0_18``, ``v0_23``, ``v0_27``); everything else is shared from here.
"""
from __future__ import annotations

import contextlib

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

FUSED_MOE = "vllm_ascend.ops.fused_moe.fused_moe"
COMM = "vllm_ascend.ops.fused_moe.moe_comm_method"
CONTEXT = "vllm_ascend.ascend_forward_context"
VLLM_FUSED_MOE = "vllm.model_executor.layers.fused_moe.layer"

# What the adapter drives on every line (the layer's construction is line-specific: LAYER_NEEDS).
COMMON_NEEDS = (
    Need(COMM, "setup_moe_comm_method", ("moe_config",)),
    Need(COMM, "get_moe_comm_method"),
    Need(CONTEXT, "MoECommType"),
    Need(CONTEXT, "set_ascend_forward_context", ("attn_metadata", "vllm_config", "num_tokens", "num_tokens_across_dp")),
    Need(CONTEXT, "set_mc2_tokens_capacity", ("vllm_config", "max_num_reqs", "uniform_decode_query_len")),
    Need(CONTEXT, "set_mc2_mask", ("vllm_config", "device")),
    Need("vllm_ascend.ascend_config", "init_ascend_config"),
    Need("vllm_ascend.distributed.parallel_state", "init_ascend_model_parallel"),
)
LAYER_NEEDS = (
    Need(FUSED_MOE, "AscendFusedMoE.forward_impl"),
    Need(FUSED_MOE, "AscendFusedMoE.update_expert_map", ("new_expert_map",)),
    Need(FUSED_MOE, "AscendUnquantizedFusedMoEMethod.process_weights_after_loading", ("layer",)),
    Need(VLLM_FUSED_MOE, "FusedMoE", ("num_experts", "top_k", "hidden_size", "intermediate_size", "params_dtype",
                                      "reduce_results", "renormalize", "custom_routing_function", "prefix")),
    Need("vllm_ascend.utils", "set_weight_prefetch_method", ("weight_prefetch_config",)),
)


def device_feature(device_type: str, marker: Need) -> Feature:
    return Feature(marker=(marker,))


FEATURES = {
    "comm_methods": Feature(marker=(Need(COMM, "setup_moe_comm_method"),), uses=COMMON_NEEDS + LAYER_NEEDS),
    # A device type the release's MoE path knows: A2 / A3 share the base device path; A5 has a device adaptor
    # of its own (vllm_ascend/device/device_op.py A5DeviceAdaptor; 0.13 has none, and its
    # select_moe_comm_method raises "Unsupported soc_version" for A5).
    "device_A2": Feature(marker=(Need("vllm_ascend.utils", "AscendDeviceType.A2"),)),
    "device_A3": Feature(marker=(Need("vllm_ascend.utils", "AscendDeviceType.A3"),)),
    "device_A5": Feature(marker=(Need("vllm_ascend.device.device_op", "A5DeviceAdaptor"),)),
    "mc2_capacity": Feature(marker=(Need(CONTEXT, "set_mc2_tokens_capacity"),),
                            uses=(Need(CONTEXT, "get_mc2_tokens_capacity"),
                                  Need("vllm_ascend.ascend_config", "init_ascend_config"))),
}

# What the release's selection picks on an A5 EP world, as the suite states it for its test ids (the
# ranks check every case against the release's own select_moe_comm_method), from vLLM's
# world_size_across_dp, top-k, the batch's tokens and the MC2 capacity: None, no A5 on this line.
A5_SELECTION = None


@contextlib.contextmanager
def out_of_tree_platform():
    """vLLM's platform as on an Ascend host while a layer is built: out of tree (vllm-ascend's NPUPlatform).
    Here no platform plugin is loaded (vLLM's UnspecifiedPlatform); FusedMoE's construction asks the
    platform only which unquantized backend to pick (out of tree: none of vLLM's kernels)."""
    from vllm.platforms import current_platform
    from vllm.platforms.interface import PlatformEnum

    had = "_enum" in vars(current_platform)
    saved = vars(current_platform).get("_enum")
    current_platform._enum = PlatformEnum.OOT
    try:
        yield
    finally:
        if had:
            current_platform._enum = saved
        else:
            del current_platform._enum


def layer_kwargs(scenario, route, prefix: str) -> dict:
    """What vLLM's Qwen3MoeSparseMoeBlock passes the layer on this line (no EPLB of vLLM's own: vllm-ascend
    takes its expert placement from additional_config), with the test's routing function."""
    return dict(num_experts=scenario.experts, top_k=scenario.top_k, hidden_size=scenario.hidden,
                intermediate_size=scenario.intermediate, params_dtype=scenario.torch_dtype, reduce_results=True,
                renormalize=True, custom_routing_function=route, prefix=prefix)


def build_layer(kwargs: dict):
    """The release's MoE layer for a one-layer model, from :func:`layer_kwargs` (collective: sets up the
    layer's comm methods)."""
    from vllm_ascend.ops.fused_moe.fused_moe import AscendFusedMoE

    AscendFusedMoE.moe_counter = -1  # a fresh model: its only MoE layer is layer 0 of an EPLB placement file
    with out_of_tree_platform():
        return AscendFusedMoE(**kwargs)


def experts(layer):
    """The module holding the expert weights, the quant method and the expert map."""
    return layer


def expert_map(layer):
    return layer._expert_map


def log2phy(layer):
    return layer.log2phy


def install_expert_map(layer, new_map) -> None:
    """The release's own way to install a map on a built layer (what EPLB's weight update calls)."""
    layer.update_expert_map(new_map)


def forward(layer, hidden_states, router_logits, tp: int):
    """The model's MoE block around the layer: the layer's forward (vLLM's, then the release's forward_impl);
    on this line the layer reduces itself (reduce_results=True)."""
    return layer(hidden_states, router_logits)


def runner_batch(hidden_states, router_slot, counts):
    """What NPUModelRunner hands the model on a DP rank whose batch holds ``hidden_states`` (``counts``: every
    DP rank's tokens): (hidden states, router-logits slot, num_tokens, num_tokens_across_dp). On 0.13 the
    runner pads every DP rank's batch to the largest (``_sync_metadata_across_dp``, in eager mode too): zero
    rows, whose outputs the runner discards, and every rank told the padded count."""
    import torch

    largest = max(counts)
    pad = largest - hidden_states.shape[0]
    if pad > 0:
        hidden_states = torch.cat([hidden_states, hidden_states.new_zeros((pad, hidden_states.shape[1]))])
        router_slot = torch.cat([router_slot, router_slot.new_zeros((pad, router_slot.shape[1]))])
    # num_tokens_across_dp is host metadata (vLLM's DP metadata keeps it on the CPU), never a device tensor
    return hidden_states, router_slot, largest, torch.tensor([largest] * len(counts), dtype=torch.int32)


def extra_context():
    """Where the release keeps ``moe_comm_type`` / ``moe_comm_method`` during a forward."""
    from vllm.forward_context import get_forward_context

    return get_forward_context()


def forget_layer(layer, holder, vllm_config, prefix: str) -> None:
    """Drop the layer (and ``holder``, its :func:`experts`) from what its construction registered
    process-wide (the next case builds a fresh one-layer model under the same name)."""
    import sys

    compilation = vllm_config.compilation_config
    compilation.static_forward_context.pop(prefix, None)
    moe_layers = getattr(compilation, "static_all_moe_layers", None)
    if isinstance(moe_layers, list) and prefix in moe_layers:
        moe_layers.remove(prefix)
    adaptor = sys.modules.get("vllm_ascend.eplb.adaptor.vllm_adaptor")
    registered = getattr(getattr(adaptor, "VllmEplbAdaptor", None), "_registered_moe_layers", None)
    if isinstance(registered, list):
        registered[:] = [other for other in registered if other is not layer and other is not holder]


def runner_state(vllm_config, max_num_reqs: int) -> None:
    """What NPUModelRunner sets once per process on this line, for this world's deployment (a warm rank
    may have run another deployment before: its cached values are reset first)."""
    from ascend_conformance.sut import bringup
    from vllm_ascend import ascend_forward_context as context
    from vllm_ascend.ascend_config import get_ascend_config

    context._mc2_tokens_capacity = None
    context._reserved_mc2_mask = None
    context.set_mc2_tokens_capacity(vllm_config, max_num_reqs, 1)  # decode query length 1: no speculation
    context.set_mc2_mask(vllm_config, bringup.rank_device())  # the runner passes its device
    import vllm_ascend.utils as utils

    if hasattr(utils, "set_weight_prefetch_method"):
        utils.set_weight_prefetch_method(get_ascend_config().weight_prefetch_config)


def mc2_tokens_capacity(vllm_config, max_num_reqs: int) -> int:
    """The release's MC2 token capacity for a runner sized for ``max_num_reqs`` decode requests."""
    from vllm_ascend import ascend_forward_context as context

    context._mc2_tokens_capacity = None
    context.set_mc2_tokens_capacity(vllm_config, max_num_reqs, 1)
    return context.get_mc2_tokens_capacity()


def eplb_additional_config(path: str, redundant: int) -> dict:
    """``additional_config`` naming a static EPLB placement file (the release counts redundant experts from it)."""
    return {"eplb_config": {"expert_map_path": path}}
