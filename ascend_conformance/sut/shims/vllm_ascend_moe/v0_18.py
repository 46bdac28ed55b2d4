"""vllm-ascend 0.18 (vLLM 0.18): as 0.13, but vLLM's Qwen3MoeSparseMoeBlock builds the layer with
``reduce_results=False`` and all-reduces the block's output itself over TP
(``experts.maybe_all_reduce_tensor_model_parallel``); an A5 device adaptor exists, and A5 selects MC2 within
the MC2 capacity, else AlltoAll."""
from __future__ import annotations

from ascend_conformance.sut.shims.vllm_ascend_moe import v0_13
from ascend_conformance.sut.shims.vllm_ascend_moe.v0_13 import *  # noqa: F401,F403 - what did not move
from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

LAYER_NEEDS = v0_13.LAYER_NEEDS + (Need(v0_13.FUSED_MOE, "AscendFusedMoE.maybe_all_reduce_tensor_model_parallel"),)
FEATURES = {**v0_13.FEATURES,
            "comm_methods": Feature(marker=v0_13.FEATURES["comm_methods"].marker,
                                    uses=v0_13.COMMON_NEEDS + LAYER_NEEDS)}


def A5_SELECTION(world: int, top_k: int, tokens: int, capacity: int) -> str:  # noqa: N802 - a table entry
    return "mc2" if tokens <= capacity and world > 1 else "alltoall"


def runner_batch(hidden_states, router_slot, counts):
    """From 0.18 the runner pads DP ranks only for graph capture or sequence parallelism (eager: none); each
    rank runs its own tokens and the forward context gets every rank's count."""
    import torch

    # num_tokens_across_dp: host metadata, as vLLM's DP metadata keeps it
    return hidden_states, router_slot, hidden_states.shape[0], torch.tensor(list(counts), dtype=torch.int32)


def layer_kwargs(scenario, route, prefix: str) -> dict:
    return {**v0_13.layer_kwargs(scenario, route, prefix), "reduce_results": False}


def forward(layer, hidden_states, router_logits, tp: int):
    out = layer(hidden_states, router_logits)
    if tp > 1:  # Qwen3MoeSparseMoeBlock.forward on this line
        out = layer.maybe_all_reduce_tensor_model_parallel(out)
    return out
