"""vllm-ascend 0.13: FlashComm2's size comes from the environment (``VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE``,
read by ``vllm_ascend.envs`` whenever asked); there is no dynamic-EPLB group to ask for; the FC3 quantised-x
group comes with ``multistream_overlap_gate``; o_proj layer sharding with ``layer_sharding``."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need
from ascend_conformance.sut.shims.vllm_ascend_groups import Asked, common_features, flashcomm2_feature

FLASHCOMM2_VARIABLE = "VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE"

FEATURES: dict[str, Feature] = {
    **common_features(),
    "flashcomm2": Feature(marker=flashcomm2_feature().marker,
                          uses=flashcomm2_feature().uses + (Need("vllm_ascend.envs", "env_variables"),)),
}


def ask(config) -> Asked:
    options: dict = {"multistream_overlap_gate": True}
    environment: dict = {}
    if config.flashcomm2_otp is not None:
        environment[FLASHCOMM2_VARIABLE] = str(config.flashcomm2_otp)
    if config.layer_sharding:
        options["layer_sharding"] = ["o_proj"]
    return Asked(options, environment)
