"""vllm-ascend's group construction per release line (:mod:`ascend_conformance.sut.vllm_ascend_groups`).

What the lines share is declared here: every kind vllm-ascend has had, with its getter and module global,
and the features a configuration can need. A line module (``v0_13.py`` ...) says how that line is asked
for them (:func:`ask`: ``additional_config`` keys and environment variables); which kinds and features a
release has is read from its source by the markers, never assumed from its number:

============  ==========================================================================================
line          how it is asked (what moved)
============  ==========================================================================================
0.13          FlashComm2's size from ``VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE``; no dynamic-EPLB group;
              ``multistream_overlap_gate`` for fc3_quant_x; ``layer_sharding``
0.18          dynamic EPLB through ``eplb_config`` with ``DYNAMIC_EPLB=true`` (its EplbConfig refuses it
              otherwise); FlashComm2 still from the environment
0.23          FlashComm2's size from ``additional_config["enable_flashcomm2_parallel_size"]``
0.27 (main)   no FlashComm2, layer sharding or multistream gate (their groups and keys are gone)
============  ==========================================================================================
"""
from __future__ import annotations

import dataclasses

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

STATE = "vllm_ascend.distributed.parallel_state"
CONFIG = "vllm_ascend.ascend_config"
# kind -> (getter in vllm_ascend.distributed.parallel_state, the module global it reads).
GETTERS: dict[str, tuple[str, str]] = {
    "mc2": ("get_mc2_group", "_MC2"), "dynamic_eplb": ("get_dynamic_eplb_group", "_DYNAMIC_EPLB"),
    "fc3_quant_x": ("get_fc3_quant_x_group", "_FC3_QUANT_X"), "otp": ("get_otp_group", "_OTP"),
    "lmheadtp": ("get_lmhead_tp_group", "_LMTP"), "emtp": ("get_embed_tp_group", "_EMBED_TP"),
    "mlptp": ("get_mlp_tp_group", "_MLP_TP"), "flashcomm2_otp": ("get_flashcomm2_otp_group", "_FLASHCOMM2_OTP"),
    "flashcomm2_odp": ("get_flashcomm2_odp_group", "_FLASHCOMM2_ODP"),
    "shard_weight": ("get_shard_weight_group", "_SHARD_WEIGHT"), "p_tp": ("get_p_tp_group", "_P_TP"),
}
FINE_GRAINED = ("otp", "lmheadtp", "emtp", "mlptp")


@dataclasses.dataclass(frozen=True)
class Asked:
    """How a configuration is put to a release: its ``additional_config`` and environment variables."""

    additional_config: dict
    environment: dict


def _getter(kind: str) -> Need:
    return Need(STATE, GETTERS[kind][0])


def common_features() -> dict[str, Feature]:
    """The features every line declares the same way (a line adds what it drives differently)."""
    features = {kind: Feature(marker=(_getter(kind),)) for kind in GETTERS}
    features.update({
        "groups": Feature(
            marker=(Need(STATE, "init_ascend_model_parallel"),),
            uses=(Need(STATE, "init_ascend_model_parallel", ("parallel_config",)), Need(STATE, "destroy_ascend_model_parallel"),
                  Need(CONFIG, "init_ascend_config", ("vllm_config",)), Need(CONFIG, "clear_ascend_config"))),
        # The four fine-grained TP kinds; their sizes are set on the AscendConfig object after
        # init_ascend_config (vllm_ascend_groups.py says why).
        "finegrained_tp": Feature(marker=tuple(_getter(kind) for kind in FINE_GRAINED),
                                  uses=(Need(CONFIG, "FinegrainedTPConfig"),)),
        "layer_sharding": Feature(marker=(_getter("shard_weight"),)),
        # PD disaggregation: p_tp on a KV producer; the release derives its ratios from the deployment's
        # prefill / decode TP sizes and the model's KV heads.
        "pd": Feature(marker=(_getter("p_tp"),), uses=(Need(CONFIG, "AscendConfig"),)),
        "pcp": Feature(marker=(Need("vllm.distributed.parallel_state", "get_pcp_group"),)),
    })
    return features


def flashcomm2_feature() -> Feature:
    return Feature(marker=(_getter("flashcomm2_otp"), _getter("flashcomm2_odp")),
                   uses=(Need("vllm_ascend.utils", "get_flashcomm2_config_and_validate", ("ascend_config", "vllm_config")),))
