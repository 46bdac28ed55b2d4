"""vllm-ascend's parallel groups, built for real inside a rank: the *groups* adapter of vllm-ascend.

On top of vLLM's groups (:mod:`ascend_conformance.sut.vllm_groups`) it builds vllm-ascend's own kinds
(:data:`KINDS`: mc2, dynamic_eplb, fc3_quant_x, the fine-grained TP kinds otp / lmheadtp / emtp / mlptp,
flashcomm2_otp / flashcomm2_odp, shard_weight, p_tp, as far as the installed release has them: :func:`kinds`)
with ``vllm_ascend.distributed.parallel_state.init_ascend_model_parallel`` and reads them back through
vllm-ascend's getters. A collective, like vLLM's adapter. How each release line is asked for a configuration
is its shim's (``ascend_conformance/sut/shims/vllm_ascend_groups/``, a table there); a configuration whose
feature a release lacks is "not in" it (:func:`requirements`, :func:`missing`).

How a configuration is put to the release, on every line:

* ``additional_config`` and environment variables as the line takes them (its shim's ``ask``): dynamic EPLB
  and the FC3 quantised-x stream where the line has their groups (the reference always has them;
  vllm-ascend builds them only when asked), FlashComm2's o_proj TP size, o_proj layer sharding;
* the fine-grained TP sizes are set on the ``AscendConfig`` object *after* ``init_ascend_config``: their
  validation needs a model (0.23's ``FinegrainedTPConfig`` reads ``model_config.is_moe``) and a deployment
  (o_proj TP only with TP = 1 on a PD decode node with the recompute scheduler on), and group construction
  reads only the numbers. The release's FlashComm2 check, which reads the o_proj TP size too, runs again
  once they are set. So a layout with otp and TP > 1 is what the construction builds, not one the
  validation lets a user start;
* a PD configuration is a deployment (:func:`pd_deployment`): a KV producer (``kv_producer``) or consumer
  whose connector's extra config names the prefill and decode TP sizes, and a model config: the release
  derives pd_tp_ratio, pd_head_ratio and num_head_replica itself from those sizes and the model's KV heads
  (0.13 and 0.18 read the model for any KV-transfer configuration and crash without one). The model is the
  smallest that release accepts (:func:`pd_model`: one Qwen3-MoE layer per PP stage with two experts, no weights); the
  ratios it derives must be the configuration's, or the capture stops with the three numbers.

What the releases refuse (:class:`~ascend_conformance.errors.SutRefused`, their own message): FlashComm2 with
o >= TP ("cannot exceed global tensor parallel size"), FlashComm2 together with o_proj TP, and whatever vLLM
refuses.

Worked example, world 8 = DP2 x PP2 x TP2 with o_proj TP 2 and layer sharding: 0.18.0 and 0.23.0.post1 lay
the fine-grained TP groups out on a (pp, dp, tp) grid of the ranks, where vLLM's rank order is (dp, pp, tp),
so rank 0 reads back otp [0, 2] and shard_weight [0, 2]: ranks of two PP stages (the reference has otp
[0, 4], shard_weight [0, 4]).
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Iterator, Mapping

from ascend_conformance.errors import SutRefused
from ascend_conformance.sut import VLLM_ASCEND, bringup, lines, vllm_groups
from ascend_conformance.sut.shims.vllm_ascend_groups import GETTERS, STATE
from ascend_conformance.topology import ParallelConfig

SUT = VLLM_ASCEND
ADAPTER = "vllm_ascend_groups"
STATE_MODULE = STATE
# Every kind vLLM and vllm-ascend have built on some line; :func:`kinds` says which the installed ones have.
KINDS: tuple[str, ...] = vllm_groups.KINDS + tuple(GETTERS)
# vllm_ascend.utils caches these per process (functools.lru_cache); a capture must not see an earlier one's.
CACHED_DECISIONS = ("enable_dsa_cp", "enable_dsa_cp_with_layer_shard", "enable_dsa_cp_with_o_proj_tp")


def label() -> str:
    """``vllm_ascend 0.23.0.post1``: the installed release, as results name it."""
    return bringup.label(SUT)


@functools.lru_cache(maxsize=None)
def shim():
    """The shim of the installed vllm-ascend's line (cached: a process has one release)."""
    return lines.shim(ADAPTER, SUT)


def kinds() -> tuple[str, ...]:
    """The kinds of :data:`KINDS` the installed vLLM and vllm-ascend have (a getter for), in that order."""
    ours = tuple(kind for kind in GETTERS if vllm_groups.has_feature(ADAPTER, SUT, kind))
    return vllm_groups.kinds() + ours


def requirements(config: ParallelConfig) -> list[tuple[str, str, str]]:
    """``(adapter, sut, feature)`` of everything building ``config`` needs of the installed releases."""
    needed = [(ADAPTER, SUT, "groups"), *vllm_groups.requirements(config)]
    if config.pcp > 1:
        needed.append((ADAPTER, SUT, "pcp"))
    if any(size is not None for size in (config.otp, config.lmhead_tp, config.embed_tp, config.mlp_tp)):
        needed.append((ADAPTER, SUT, "finegrained_tp"))
    if config.flashcomm2_otp is not None:
        needed.append((ADAPTER, SUT, "flashcomm2"))
    if config.layer_sharding:
        needed.append((ADAPTER, SUT, "layer_sharding"))
    if kv_role(config) is not None:
        needed += [(ADAPTER, SUT, "pd"), (vllm_groups.ADAPTER, vllm_groups.SUT, "kv_transfer")]
    return needed


def missing(config: ParallelConfig) -> str | None:
    """``not in <release>: ...`` when the installed releases lack something ``config`` needs, else None."""
    return vllm_groups.first_missing(requirements(config))


def host_reason(config: ParallelConfig) -> str | None:
    """Why this host cannot build ``config`` with the installed releases (which can elsewhere), or None."""
    return vllm_groups.host_reason(config)


def additional_config(config: ParallelConfig) -> dict:
    """vllm-ascend's ``additional_config`` for ``config`` on the installed line (its shim's ``ask``)."""
    return shim().ask(config).additional_config


# -- PD disaggregation: a deployment, and the model it serves ---------------------------------------------

def kv_role(config: ParallelConfig) -> str | None:
    if config.kv_producer:
        return "kv_producer"
    if config.pd_tp_ratio is not None or config.pd_head_ratio is not None:
        return "kv_consumer"
    return None


def pd_deployment(config: ParallelConfig) -> tuple[int, int, int]:
    """``(prefill TP, decode TP, KV heads of the model)`` of a PD deployment this instance (TP = ``config.tp``)
    belongs to, chosen so that vllm-ascend derives ``config``'s pd_tp_ratio R, pd_head_ratio and
    num_head_replica H: a producer is the prefill side (P = TP, D = TP / R), a consumer the decode side
    (D = TP, P = TP x R); the model has K = P / H KV heads (K = P when H is 1, so no head is replicated).

    With K heads the release takes H = P // K (P >= K), then the head ratio min(P, K) // min(D, K); so
    pd_head_ratio follows from the three, and a configuration naming another one has no deployment.

    >>> pd_deployment(ParallelConfig(world_size=8, tp=8, pp=1, dp=1, kv_producer=True, pd_tp_ratio=4,
    ...                              pd_head_ratio=2, num_head_replica=2))
    (8, 2, 4)
    """
    ratio, replicas = config.pd_tp_ratio or 1, config.num_head_replica or 1
    prefill, decode = (config.tp, config.tp // ratio) if config.kv_producer else (config.tp * ratio, config.tp)
    return prefill, decode, prefill // replicas


def pd_unreachable(config: ParallelConfig) -> str | None:
    """Why no deployment gives ``config``'s PD ratios (see :func:`pd_deployment`), or None."""
    if kv_role(config) is None:
        return None
    prefill, decode, heads = pd_deployment(config)
    head_ratio = min(prefill, heads) // min(decode, heads)
    if config.pd_head_ratio is not None and config.pd_head_ratio != head_ratio:
        return (f"a deployment of prefill TP {prefill} and decode TP {decode} over a model of {heads} KV heads "
                f"has pd_head_ratio {head_ratio}, not {config.pd_head_ratio}")
    return None


def pd_model(config: ParallelConfig) -> dict:
    """The smallest model config a release accepts for the PD deployment of ``config``: one Qwen3-MoE layer
    per PP stage with two experts, K KV heads (:func:`pd_deployment`), attention heads a multiple of TP and
    of K. A MoE model, because vLLM (0.18 on) builds no EP group for a dense one, and the reference has it."""
    heads = pd_deployment(config)[2]
    attention = math.lcm(config.tp, heads)
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": config.pp,
            "num_attention_heads": attention, "num_key_value_heads": heads, "head_dim": 4,
            "hidden_size": 4 * attention, "intermediate_size": 8 * attention, "moe_intermediate_size": 4,
            "num_experts": 2, "num_experts_per_tok": 1, "norm_topk_prob": True, "vocab_size": 32,
            "max_position_embeddings": 64, "torch_dtype": "bfloat16"}


def _kv_transfer(config: ParallelConfig) -> tuple[str, dict] | None:
    role = kv_role(config)
    if role is None:
        return None
    prefill, decode, _ = pd_deployment(config)
    return role, {"prefill": {"tp_size": prefill}, "decode": {"tp_size": decode}}


def _check_derived_ratios(ascend_config, config: ParallelConfig) -> None:
    """The PD ratios the release derived must be the configuration's: else the layout would be judged
    against a reference of other ratios."""
    wanted = {"pd_tp_ratio": config.pd_tp_ratio or 1, "num_head_replica": config.num_head_replica or 1}
    if config.pd_head_ratio is not None:
        wanted["pd_head_ratio"] = config.pd_head_ratio
    derived = {name: getattr(ascend_config, name, None) for name in wanted}
    if derived != wanted:
        prefill, decode, heads = pd_deployment(config)
        raise RuntimeError(f"{label()} derives {derived} from prefill TP {prefill}, decode TP {decode} and "
                           f"{heads} KV heads, where {config.describe()} has {wanted}")


# -- building and reading the groups -------------------------------------------------------------------------

def unsupported_reason(config: ParallelConfig) -> str | None:
    """Why the groups of ``config`` cannot be asked of vllm-ascend here, or None."""
    return vllm_groups.unsupported_reason(config) or pd_unreachable(config)


def _set_finegrained_sizes(ascend_config, config: ParallelConfig) -> None:
    sizes = ascend_config.finegrained_tp_config
    sizes.oproj_tensor_parallel_size = config.otp or 0
    sizes.lmhead_tensor_parallel_size = config.lmhead_tp or 0
    sizes.embedding_tensor_parallel_size = config.embed_tp or 0
    sizes.mlp_tensor_parallel_size = config.mlp_tp or 0


def _forget_cached_decisions() -> None:
    utils = sys.modules.get("vllm_ascend.utils")
    for name in CACHED_DECISIONS:
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
    reason = unsupported_reason(config)
    if reason:
        raise SutRefused(f"{label()}: cannot build {config.describe()}: {reason}")
    absent = missing(config)
    if absent:
        raise lines.NotInRelease(absent)
    asked = shim().ask(config)
    from ascend_conformance.sut import standin

    standin.activate()  # vllm_ascend.utils imports torch_npu; without CANN the stand-in answers
    with bringup.launcher_environment({**bringup.launch_variables(), **asked.environment}):
        from vllm_ascend.ascend_config import clear_ascend_config

        try:
            vllm_config = bringup.configure_everywhere(label(), config, lambda: _configure(config, asked))
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


def _configure(config: ParallelConfig, asked):
    """The VllmConfig, and vllm-ascend's AscendConfig made current, for ``config`` (see the module docstring)."""
    from vllm.config import set_current_vllm_config
    from vllm_ascend.ascend_config import init_ascend_config

    pd = kv_role(config) is not None
    vllm_config = vllm_groups.vllm_configuration(config, additional_config=asked.additional_config,
                                                  kv_transfer=_kv_transfer(config),
                                                  model=pd_model(config) if pd else None)
    with set_current_vllm_config(vllm_config):
        _forget_cached_decisions()
        ascend_config = init_ascend_config(vllm_config)
        if pd:
            _check_derived_ratios(ascend_config, config)
        _set_finegrained_sizes(ascend_config, config)
        if config.flashcomm2_otp is not None:
            # The release's own FlashComm2 check also reads the o_proj TP size set just now: run it again.
            from vllm_ascend.utils import get_flashcomm2_config_and_validate

            get_flashcomm2_config_and_validate(ascend_config, vllm_config)
    return vllm_config


def capture_rank_view(config_fields: Mapping) -> dict[str, list[int]]:
    """In a rank: ``{kind: this rank's group ranks}`` of what vLLM + vllm-ascend build for the config."""
    with live_groups(ParallelConfig(**config_fields)) as built:
        return {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}


__all__ = ["SUT", "KINDS", "label", "kinds", "requirements", "missing", "host_reason", "additional_config", "kv_role",
           "pd_deployment", "pd_model", "live_groups", "capture_rank_view", "leftovers"]
