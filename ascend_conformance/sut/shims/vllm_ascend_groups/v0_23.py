"""vllm-ascend 0.23: FlashComm2's size is an ``additional_config`` key, ``enable_flashcomm2_parallel_size``
(the environment variable is only a deprecated fallback); the rest is asked for as in 0.18."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.shims.vllm_ascend_groups import Asked, common_features, flashcomm2_feature
from ascend_conformance.sut.shims.vllm_ascend_groups.v0_18 import DYNAMIC_EPLB

FEATURES: dict[str, Feature] = {**common_features(), "flashcomm2": flashcomm2_feature()}


def ask(config) -> Asked:
    options: dict = {"eplb_config": {"dynamic_eplb": True}, "multistream_overlap_gate": True}
    if config.flashcomm2_otp is not None:
        options["enable_flashcomm2_parallel_size"] = config.flashcomm2_otp
    if config.layer_sharding:
        options["layer_sharding"] = ["o_proj"]
    return Asked(options, dict(DYNAMIC_EPLB))
