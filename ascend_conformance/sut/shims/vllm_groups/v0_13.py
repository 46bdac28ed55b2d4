"""vLLM 0.13: a ``VllmConfig`` with an ``external_launcher`` ParallelConfig, ``init_distributed_environment``
adopting the world's default group, ``initialize_model_parallel`` with the prefill context parallel size
(the calls of every line since).

What moved after 0.13: its ``CacheConfig`` reserves ``swap_space`` (default 4 GiB) of CPU memory per TP rank
and refuses a configuration whose TP ranks would take more than 70 % of the host's memory ("Too large swap
space"): TP 8 on a host of less than 46 GiB. Groups do not depend on the KV swap space, so the configuration
asks for none (``--swap-space 0``, as a user of such a host would); 0.18 dropped the field."""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need
from ascend_conformance.sut.shims.vllm_groups import STATE, coordinator_features, kind_features

FEATURES = {
    **kind_features(),
    **coordinator_features(),
    # The bring-up itself: what every configuration needs.
    "groups": Feature(
        marker=(Need(STATE, "initialize_model_parallel"),),
        uses=(Need(STATE, "init_distributed_environment",
                   ("world_size", "rank", "distributed_init_method", "local_rank", "backend")),
              Need(STATE, "initialize_model_parallel",
                   ("tensor_model_parallel_size", "pipeline_model_parallel_size", "backend")),
              Need(STATE, "destroy_model_parallel"),
              Need("vllm.config", "VllmConfig"), Need("vllm.config", "set_current_vllm_config"),
              Need("vllm.config.parallel", "ParallelConfig.distributed_executor_backend"),
              Need("vllm.config.cache", "CacheConfig.swap_space"))),
    # Prefill context parallelism: a ParallelConfig field, a size of initialize_model_parallel, a group.
    "pcp": Feature(
        marker=(Need("vllm.config.parallel", "ParallelConfig.prefill_context_parallel_size"), Need(STATE, "get_pcp_group")),
        uses=(Need(STATE, "initialize_model_parallel", ("prefill_context_model_parallel_size",)),)),
    # A KV-transfer role (PD disaggregation), with the deployment's TP sizes in its extra config.
    "kv_transfer": Feature(
        marker=(Need("vllm.config", "KVTransferConfig"),),
        uses=(Need("vllm.config.kv_transfer", "KVTransferConfig.kv_connector_extra_config"),
              Need("vllm.config.kv_transfer", "KVTransferConfig.kv_role"))),
}


def parallel_config_fields(config) -> dict:
    """vLLM's ``ParallelConfig(...)`` arguments for the sizes of ``config`` (a ParallelConfig of ours)."""
    return dict(tensor_parallel_size=config.tp, pipeline_parallel_size=config.pp, data_parallel_size=config.dp,
                prefill_context_parallel_size=config.pcp, distributed_executor_backend="external_launcher")


def cache_config_fields() -> dict:
    """``CacheConfig(...)`` arguments, or none for the default cache config."""
    return {"swap_space": 0}


def kv_transfer_fields(role: str, extra: dict) -> dict:
    """``KVTransferConfig(...)`` arguments: vLLM's own example connector (no registration by a platform
    plugin needed; groups read only the role and the extra config)."""
    return dict(kv_connector="ExampleConnector", kv_role=role, kv_connector_extra_config=extra)


def init_parallel_state(config, *, rank: int, local_rank: int, backend: str) -> None:
    """vLLM's world (adopting the default group) and model-parallel groups for ``config``'s sizes."""
    from vllm.distributed import parallel_state

    parallel_state.init_distributed_environment(world_size=config.world_size, rank=rank, distributed_init_method=None,
                                                local_rank=local_rank, backend=backend)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=config.tp, pipeline_model_parallel_size=config.pp,
                                             prefill_context_model_parallel_size=config.pcp, backend=backend)


def host_reason(config) -> str | None:
    """Why this host cannot build ``config`` with this line, though the release can elsewhere: nothing."""
    return None
