"""vllm-ascend main (pairing vLLM 0.27.1): the MoE layer is vLLM's ``FusedMoEFactory`` as the release patches
it (``vllm_ascend/patch/platform/patch_fused_moe.py``: it reads the release's EPLB config and builds the
router), which builds the ``MoERunner`` / ``RoutedExperts`` the release registers (``AscendMoERunner``,
``AscendRoutedExperts``, via ``register_ascend_customop``). The routed experts hold the weights, the
quant method and the expert map (``ascend_expert_map``); the runner reduces over TP in its forward.
Redundant experts of a static placement file are allocated only when the release's EPLB config names
their number (``eplb_config.num_redundant_experts``); no weight-prefetch method is set by the runner."""
from __future__ import annotations

from ascend_conformance.sut.shims.vllm_ascend_moe import v0_13, v0_23
from ascend_conformance.sut.shims.vllm_ascend_moe.v0_23 import *  # noqa: F401,F403 - what did not move
from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

ROUTED = "vllm_ascend.ops.fused_moe.routed_experts"
FACTORY_PATCH = "vllm_ascend.patch.platform.patch_fused_moe"

LAYER_NEEDS = (
    Need(FACTORY_PATCH, "_ascend_FusedMoE", ("num_experts", "top_k", "renormalize", "custom_routing_function")),
    Need("vllm.model_executor.layers.fused_moe.layer", "FusedMoEFactory",
         ("hidden_size", "intermediate_size", "params_dtype", "prefix")),
    Need("vllm_ascend.utils", "register_ascend_customop", ("vllm_config",)),
    Need(ROUTED, "AscendRoutedExperts.forward_impl"),
    Need(ROUTED, "AscendRoutedExperts.update_expert_map", ("new_expert_map",)),
    Need(ROUTED, "AscendUnquantizedFusedMoEMethod.process_weights_after_loading", ("layer",)),
    Need(v0_13.CONTEXT, "_EXTRA_CTX"),
)
FEATURES = {**v0_13.FEATURES,
            "comm_methods": Feature(marker=v0_13.FEATURES["comm_methods"].marker,
                                    uses=v0_13.COMMON_NEEDS + LAYER_NEEDS)}


def eplb_additional_config(path: str, redundant: int) -> dict:
    return {"eplb_config": {"expert_map_path": path, "num_redundant_experts": redundant}}


def _factory():
    """vLLM's MoE factory as the release patches it. The worker's ``adapt_patch`` imports every platform patch
    of ``vllm_ascend/patch/platform``; only this one shapes the MoE layer (others patch the KV cache and
    structured output, and import libraries a MoE layer does not use), so only this module is loaded."""
    import importlib.util
    import os
    import sys

    import vllm_ascend
    from vllm.model_executor.layers.fused_moe import layer as fused_moe_layer

    if FACTORY_PATCH not in sys.modules:
        path = os.path.join(os.path.dirname(vllm_ascend.__file__), "patch", "platform", "patch_fused_moe.py")
        spec = importlib.util.spec_from_file_location(FACTORY_PATCH, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[FACTORY_PATCH] = module
        spec.loader.exec_module(module)
    return fused_moe_layer.FusedMoEFactory


def layer_kwargs(scenario, route, prefix: str) -> dict:
    # vLLM 0.27's Qwen3MoeSparseMoeBlock: no reduce_results (the factory's default, True), vLLM's EPLB off
    return v0_23.layer_kwargs(scenario, route, prefix)


def build_layer(kwargs: dict):
    from vllm.config import get_current_vllm_config
    from vllm_ascend.ops.fused_moe.routed_experts import AscendRoutedExperts
    from vllm_ascend.utils import register_ascend_customop

    register_ascend_customop(get_current_vllm_config())  # what the worker does at start (idempotent)
    factory = _factory()
    AscendRoutedExperts.moe_counter = -1  # a fresh model: its only MoE layer is layer 0 of an EPLB placement file
    with v0_13.out_of_tree_platform():
        return factory(**kwargs)


def experts(layer):
    return layer.routed_experts


def expert_map(layer):
    return layer.routed_experts.ascend_expert_map


def log2phy(layer):
    return layer.routed_experts.log2phy


def install_expert_map(layer, new_map) -> None:
    layer.routed_experts.update_expert_map(new_map)


def runner_state(vllm_config, max_num_reqs: int) -> None:
    from ascend_conformance.sut import bringup
    from vllm_ascend import ascend_forward_context as context

    context._mc2_tokens_capacity = None
    context._reserved_mc2_mask = None
    context.set_mc2_tokens_capacity(vllm_config, max_num_reqs, 1)
    context.set_mc2_mask(vllm_config, bringup.rank_device())  # the runner passes its device
