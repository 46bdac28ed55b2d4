"""vllm-ascend main pairing vLLM 0.27 (182b75ea84, 2026-08): FlashComm2, layer sharding and the multistream
gate are gone (their groups, getters and ``additional_config`` keys), so nothing asks for them; their
features' markers find no getter and their configurations are "not in" the release. Dynamic EPLB is asked
for as in 0.18."""
from __future__ import annotations

from ascend_conformance.sut import installed, probe
from ascend_conformance.sut.lines import Feature, ShimMismatch
from ascend_conformance.sut.shims.vllm_ascend_groups import Asked, common_features, flashcomm2_feature
from ascend_conformance.sut.shims.vllm_ascend_groups.v0_18 import DYNAMIC_EPLB

FEATURES: dict[str, Feature] = {**common_features(), "flashcomm2": flashcomm2_feature()}
# What this line is never asked for: should one of them come back, this shim does not fit the release.
NOT_ASKED = ("flashcomm2", "layer_sharding", "fc3_quant_x")


def ask(config) -> Asked:
    back = [feature for feature in NOT_ASKED if not probe.missing(FEATURES[feature].marker)]
    if back:
        raise ShimMismatch(f"the vllm_ascend_groups shim v0_27 asks for none of {', '.join(back)}, which "
                           f"{installed.label('vllm_ascend')} has (bring the line up: docs/bringing_up_a_release.md)")
    return Asked({"eplb_config": {"dynamic_eplb": True}}, dict(DYNAMIC_EPLB))
