"""vllm-ascend's parallel groups, built for real inside a rank: the *groups* adapter of vllm-ascend.

Written against vllm-ascend 0.23.0.post1 on vLLM 0.23.0 (:data:`RELEASE`, :data:`VLLM_RELEASE`). On top of
vLLM's groups (:mod:`ascend_conformance.sut.vllm_groups`) it builds vllm-ascend's own kinds (:data:`KINDS`:
mc2, dynamic_eplb, fc3_quant_x, the fine-grained TP kinds otp / lmheadtp / emtp / mlptp, flashcomm2_otp /
flashcomm2_odp, shard_weight, p_tp) with ``vllm_ascend.distributed.parallel_state.init_ascend_model_parallel``
and reads all of them back through vllm-ascend's getters. A collective, like vLLM's adapter.

How a configuration is put to the release (what 0.23.0.post1 needs; another release may need otherwise):

* ``additional_config`` asks for dynamic EPLB and the FC3 quantised-x stream (the reference always has
  their groups; vllm-ascend builds them only when asked), FlashComm2's o_proj TP size
  (``enable_flashcomm2_parallel_size``) and o_proj layer sharding (``layer_sharding = ["o_proj"]``);
* ``DYNAMIC_EPLB=true`` is set in the environment for the call: 0.23's ``EplbConfig`` refuses dynamic EPLB
  without it;
* the fine-grained TP sizes and the PD ratios are set on the ``AscendConfig`` object *after*
  ``init_ascend_config``: 0.23's validation of them needs a model (``FinegrainedTPConfig`` reads
  ``model_config.is_moe``; the PD ratios are derived from the model's KV heads), which a model-free capture
  does not load. Group construction reads only the numbers, and the release's FlashComm2 check, which
  reads the o_proj TP size too, runs again once they are set. Skipped with the validation: 0.23 also accepts
  o_proj TP only with TP = 1 on a PD decode node with the recompute scheduler on, so a layout with otp and
  TP > 1 is what its construction builds, not one its validation lets a user start;
* a PD configuration runs as a KV producer when ``kv_producer`` is set, else (PD ratios alone) as a KV
  consumer: 0.23 reads ``kv_transfer_config.is_kv_producer`` whenever pd_head_ratio > 1.

What 0.23.0.post1 refuses (:class:`~ascend_conformance.errors.SutRefused`, its own message): FlashComm2
with o >= TP ("cannot exceed global tensor parallel size"), FlashComm2 together with o_proj TP, and
whatever vLLM refuses.

Worked example, world 8 = DP2 x PP2 x TP2 with o_proj TP 2 and layer sharding: 0.23.0.post1 lays the
fine-grained TP groups out on a (pp, dp, tp) grid of the ranks, where vLLM's rank order is (dp, pp, tp),
so rank 0 reads back otp [0, 2] and shard_weight [0, 2]: ranks of two PP stages (the reference has otp
[0, 4], shard_weight [0, 4]).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping

from ascend_conformance.errors import SutRefused
from ascend_conformance.sut import VLLM_ASCEND, bringup, vllm_groups
from ascend_conformance.topology import ParallelConfig

RELEASE = "0.23.0.post1"
VLLM_RELEASE = vllm_groups.RELEASE
SUT = VLLM_ASCEND
STATE_MODULE = "vllm_ascend.distributed.parallel_state"
# kind -> getter in vllm_ascend.distributed.parallel_state, and the module global it reads.
GETTERS: dict[str, tuple[str, str]] = {
    "mc2": ("get_mc2_group", "_MC2"), "dynamic_eplb": ("get_dynamic_eplb_group", "_DYNAMIC_EPLB"),
    "fc3_quant_x": ("get_fc3_quant_x_group", "_FC3_QUANT_X"), "otp": ("get_otp_group", "_OTP"),
    "lmheadtp": ("get_lmhead_tp_group", "_LMTP"), "emtp": ("get_embed_tp_group", "_EMBED_TP"),
    "mlptp": ("get_mlp_tp_group", "_MLP_TP"), "flashcomm2_otp": ("get_flashcomm2_otp_group", "_FLASHCOMM2_OTP"),
    "flashcomm2_odp": ("get_flashcomm2_odp_group", "_FLASHCOMM2_ODP"),
    "shard_weight": ("get_shard_weight_group", "_SHARD_WEIGHT"), "p_tp": ("get_p_tp_group", "_P_TP"),
}
KINDS: tuple[str, ...] = vllm_groups.KINDS + tuple(GETTERS)
ENVIRONMENT = {"DYNAMIC_EPLB": "true"}


def label() -> str:
    """``vllm_ascend 0.23.0.post1``: the installed release, as results name it."""
    return bringup.label(SUT)


def additional_config(config: ParallelConfig) -> dict:
    """vllm-ascend's ``additional_config`` for ``config`` (the sizes 0.23 validates against a model are
    set later, :func:`_set_model_dependent_sizes`)."""
    options: dict = {"eplb_config": {"dynamic_eplb": True}, "multistream_overlap_gate": True}
    if config.flashcomm2_otp is not None:
        options["enable_flashcomm2_parallel_size"] = config.flashcomm2_otp
    if config.layer_sharding:
        options["layer_sharding"] = ["o_proj"]
    return options


def kv_role(config: ParallelConfig) -> str | None:
    if config.kv_producer:
        return "kv_producer"
    if config.pd_tp_ratio is not None or config.pd_head_ratio is not None:
        return "kv_consumer"
    return None


def _set_model_dependent_sizes(ascend_config, config: ParallelConfig) -> None:
    sizes = ascend_config.finegrained_tp_config
    sizes.oproj_tensor_parallel_size = config.otp or 0
    sizes.lmhead_tensor_parallel_size = config.lmhead_tp or 0
    sizes.embedding_tensor_parallel_size = config.embed_tp or 0
    sizes.mlp_tensor_parallel_size = config.mlp_tp or 0
    if config.pd_tp_ratio is not None:
        ascend_config.pd_tp_ratio = config.pd_tp_ratio
    if config.pd_head_ratio is not None:
        ascend_config.pd_head_ratio = config.pd_head_ratio
    if config.num_head_replica is not None:
        ascend_config.num_head_replica = config.num_head_replica


def _forget_cached_decisions() -> None:
    # 0.23 caches these per process (functools.lru_cache); a capture must not see an earlier one's.
    utils = sys.modules.get("vllm_ascend.utils")
    for name in ("enable_dsa_cp_with_layer_shard", "enable_dsa_cp_with_o_proj_tp"):
        cached = getattr(utils, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def leftovers() -> list[str]:
    """Kinds whose module global still holds a coordinator (after a destroy: what the release left)."""
    state = sys.modules.get(STATE_MODULE)
    if state is None:
        return []
    return [kind for kind, (_, name) in GETTERS.items() if getattr(state, name, None) is not None]


def _forget_leftovers() -> None:
    """So the next capture in this process starts clean (the leak itself is reported by the caller)."""
    state = sys.modules.get(STATE_MODULE)
    for kind in leftovers():
        setattr(state, GETTERS[kind][1], None)


def getters() -> dict[str, tuple[str, str]]:
    return {**vllm_groups.vllm_getters(), **{kind: (STATE_MODULE, getter) for kind, (getter, _) in GETTERS.items()}}


@contextlib.contextmanager
def live_groups(config: ParallelConfig, *, report_leftovers: list | None = None) -> Iterator[dict]:
    """vLLM's and vllm-ascend's groups for ``config`` while the block runs; yields ``{kind: GroupCoordinator}``.

    ``report_leftovers``: a list that receives the kinds vllm-ascend's own destroy left behind.
    """
    from ascend_conformance.sut import standin

    reason = vllm_groups.unsupported_reason(config)
    if reason:
        raise SutRefused(f"{label()}: cannot build {config.describe()}: {reason}")
    standin.activate()  # vllm_ascend.utils imports torch_npu; without CANN the stand-in answers
    with bringup.launcher_environment({**bringup.launch_variables(), **ENVIRONMENT}):
        from vllm_ascend.ascend_config import clear_ascend_config

        try:
            vllm_config = bringup.configure_everywhere(label(), config, lambda: _configure(config))
            with bringup.model_parallel_groups(config, vllm_config):
                from vllm_ascend.distributed import parallel_state

                try:
                    parallel_state.init_ascend_model_parallel(vllm_config.parallel_config)
                    yield vllm_groups.coordinators(getters())
                finally:
                    parallel_state.destroy_ascend_model_parallel()
                    if report_leftovers is not None:
                        report_leftovers.extend(leftovers())
                    _forget_leftovers()
        finally:
            clear_ascend_config()
            _forget_cached_decisions()


def _configure(config: ParallelConfig):
    """The VllmConfig, and vllm-ascend's AscendConfig made current, for ``config`` (see the module docstring)."""
    from vllm.config import set_current_vllm_config
    from vllm_ascend.ascend_config import init_ascend_config

    vllm_config = vllm_groups.vllm_configuration(config, additional_config=additional_config(config),
                                                  kv_role=kv_role(config))
    with set_current_vllm_config(vllm_config):
        _forget_cached_decisions()
        ascend_config = init_ascend_config(vllm_config)
        _set_model_dependent_sizes(ascend_config, config)
        if config.flashcomm2_otp is not None:
            # The release's own FlashComm2 check also reads the o_proj TP size set just now: run it again.
            from vllm_ascend.utils import get_flashcomm2_config_and_validate

            get_flashcomm2_config_and_validate(ascend_config, vllm_config)
    return vllm_config


def capture_rank_view(config_fields: Mapping) -> dict[str, list[int]]:
    """In a rank: ``{kind: this rank's group ranks}`` of what vLLM + vllm-ascend build for the config."""
    with live_groups(ParallelConfig(**config_fields)) as built:
        return {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}


__all__ = ["RELEASE", "VLLM_RELEASE", "SUT", "KINDS", "label", "additional_config", "live_groups",
           "capture_rank_view", "leftovers"]
