"""vllm-ascend 0.18: the dynamic-EPLB group exists, asked for through ``eplb_config`` with
``DYNAMIC_EPLB=true`` in the environment (its ``EplbConfig`` refuses dynamic EPLB without it); FlashComm2's
size still comes from the environment, as in 0.13."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need
from ascend_conformance.sut.shims.vllm_ascend_groups import Asked, common_features, flashcomm2_feature
from ascend_conformance.sut.shims.vllm_ascend_groups.v0_13 import FLASHCOMM2_VARIABLE

DYNAMIC_EPLB = {"DYNAMIC_EPLB": "true"}

FEATURES: dict[str, Feature] = {
    **common_features(),
    "flashcomm2": Feature(marker=flashcomm2_feature().marker,
                          uses=flashcomm2_feature().uses + (Need("vllm_ascend.envs", "env_variables"),)),
}


def ask(config) -> Asked:
    options: dict = {"eplb_config": {"dynamic_eplb": True}, "multistream_overlap_gate": True}
    environment = dict(DYNAMIC_EPLB)
    if config.flashcomm2_otp is not None:
        environment[FLASHCOMM2_VARIABLE] = str(config.flashcomm2_otp)
    if config.layer_sharding:
        options["layer_sharding"] = ["o_proj"]
    return Asked(options, environment)
