"""vLLM 0.18 onwards: the calls of 0.13, and ``CacheConfig`` has no swap space to ask about any more."""
from __future__ import annotations

import dataclasses

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need
from ascend_conformance.sut.shims.vllm_groups import v0_13
from ascend_conformance.sut.shims.vllm_groups.v0_13 import (  # noqa: F401 - these calls did not move
    host_reason, init_parallel_state, kv_transfer_fields, parallel_config_fields,
)

FEATURES: dict[str, Feature] = {
    **v0_13.FEATURES,
    "groups": dataclasses.replace(v0_13.FEATURES["groups"], uses=tuple(
        need for need in v0_13.FEATURES["groups"].uses if need != Need("vllm.config.cache", "CacheConfig.swap_space"))),
}


def cache_config_fields() -> dict:
    return {}
