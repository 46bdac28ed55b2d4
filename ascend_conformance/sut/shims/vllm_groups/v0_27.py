"""vLLM 0.27: the calls of 0.18, but prefill context parallelism runs only on the V2 model runner,
which ``VllmConfig`` refuses without Triton ("Model Runner V2 requires Triton."). An NPU host has Triton
(vllm-ascend main requires triton-ascend); this suite's CPU pairs install no accelerator stack, so there a
PCP configuration is skipped with that reason, not reported as the release's refusal."""
from __future__ import annotations

import importlib.util

from ascend_conformance.sut import installed
from ascend_conformance.sut.shims.vllm_groups.v0_18 import (  # noqa: F401 - these calls did not move
    FEATURES, cache_config_fields, init_parallel_state, kv_transfer_fields, parallel_config_fields,
)


def host_reason(config) -> str | None:
    if config.pcp > 1 and importlib.util.find_spec("triton") is None:
        return (f"this host has no Triton, which {installed.label('vllm')} requires for prefill context "
                f"parallelism (PCP {config.pcp} runs only on its V2 model runner)")
    return None
