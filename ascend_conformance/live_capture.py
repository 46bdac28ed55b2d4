"""Capture the parallel groups a live vLLM / vllm-ascend builds, as a layout the reference can judge.

The reference (:func:`ascend_conformance.topology.build_layout`) says what every group kind *should* be;
this module asks the real thing. Inside a ``torch.distributed`` world (a ``world(n)`` of the suite, or a
torchrun launch) every rank:

1. enters a ``VllmConfig`` built from a :class:`~ascend_conformance.topology.ParallelConfig`
   (:func:`vllm_configuration`), with vllm-ascend's options in ``additional_config``;
2. calls vLLM's ``init_distributed_environment`` (which adopts the already-initialised default group
   instead of creating one) and ``initialize_model_parallel``, then vllm-ascend's
   ``init_ascend_config`` and ``init_ascend_model_parallel``;
3. reads back, through the public getters (``get_tp_group()``, ``get_mc2_group()``, ...), the ``ranks``
   of the one group per kind it belongs to (:func:`capture_rank_view`);
4. destroys what it built, leaving the default group alone.

The test process merges the per-rank views into ``{kind: [[ranks], ...]}`` with
:func:`merge_rank_views`, which also proves the views consistent (every member of a group reports the
same group, in the same order), and judges it with :func:`judge` (the invariant checker and the
comparison with the reference).

Worked example, world 8 DP2 PP2 TP2 with OTP 2: rank 0 reports ``otp -> [0, 2]``, rank 2 reports
``otp -> [0, 2]``, rank 1 ``[1, 3]``, ... The merged otp kind is ``[[0, 2], [1, 3], [4, 6], [5, 7]]``,
which the checker flags (each group crosses PP stages; the reference has ``[[0, 4], [1, 5], ...]``):
docs/systems_under_test.md's known vllm-ascend divergence.

Where vllm or vllm_ascend does not import (no accelerator, not installed), nothing here runs:
:func:`live_capture_unavailable_reason` gives the reason for the skip. The option names passed to
vllm-ascend follow its ``parallel_state.init_ascend_model_parallel`` / ``ascend_config`` at the time of
writing (FlashComm2's size both as the environment variable older releases read and the
``additional_config`` key newer ones read); a release that reads them differently shows up as a
missing kind in the judgement, named, never as a silent pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence

from ascend_conformance.errors import one_line
from ascend_conformance.invariants import Difference, Violation, check_layout, compare_layouts
from ascend_conformance.topology import GROUP_KINDS, ParallelConfig, build_layout

# kind -> (module, getter) of the live system. vLLM's own kinds, then vllm-ascend's. A getter that
# raises (vLLM asserts "... is not initialized") or returns None means the live system did not build
# that kind.
VLLM_GETTERS: dict[str, tuple[str, str]] = {
    "world": ("vllm.distributed.parallel_state", "get_world_group"),
    "tp": ("vllm.distributed.parallel_state", "get_tp_group"),
    "pcp": ("vllm.distributed.parallel_state", "get_pcp_group"),
    "pp": ("vllm.distributed.parallel_state", "get_pp_group"),
    "dp": ("vllm.distributed.parallel_state", "get_dp_group"),
    "ep": ("vllm.distributed.parallel_state", "get_ep_group"),
}
ASCEND_GETTERS: dict[str, tuple[str, str]] = {
    kind: ("vllm_ascend.distributed.parallel_state", getter) for kind, getter in {
        "mc2": "get_mc2_group", "dynamic_eplb": "get_dynamic_eplb_group",
        "fc3_quant_x": "get_fc3_quant_x_group", "otp": "get_otp_group", "lmheadtp": "get_lmhead_tp_group",
        "emtp": "get_embed_tp_group", "mlptp": "get_mlp_tp_group",
        "flashcomm2_otp": "get_flashcomm2_otp_group", "flashcomm2_odp": "get_flashcomm2_odp_group",
        "shard_weight": "get_shard_weight_group", "p_tp": "get_p_tp_group",
    }.items()
}

FLASHCOMM2_SIZE_ENV = "VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE"


class CaptureError(RuntimeError):
    """The live system could not be initialised, or its ranks disagree about a group."""


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module.split(".")[0]:
            return f"{module.split('.')[0]} not installed (pip install -e .[vllm] on an NPU host with vllm-ascend)"
        return f"{module} not importable: {one_line(exc, with_type=True)}"
    except Exception as exc:  # noqa: BLE001 - OSError from a broken CANN, RuntimeError from a platform plugin
        return f"{module} not importable: {one_line(exc, with_type=True)}"
    return None


def live_capture_unavailable_reason(ascend: bool = True) -> str | None:
    """None when a live capture can run here; else one line saying why not (the skip reason).

    ``ascend=False`` asks only for vLLM's own kinds (world, tp, pcp, pp, dp, ep), e.g. on a CUDA host.
    """
    for module in ("vllm.distributed.parallel_state", "vllm.config") + (
            ("vllm_ascend.distributed.parallel_state", "vllm_ascend.ascend_config") if ascend else ()):
        reason = _import_error(module)
        if reason:
            return reason
    return None


# -- configuration ------------------------------------------------------------------------------

def ascend_additional_config(config: ParallelConfig) -> dict:
    """vllm-ascend's ``additional_config`` asking for every optional kind ``config`` implies.

    dynamic EPLB and the FC3 quantised-x stream are always requested: the reference always has their
    groups (``dynamic_eplb``, ``fc3_quant_x``), and vllm-ascend builds them only when asked.
    """
    options: dict = {
        "finegrained_tp_config": {
            "oproj_tensor_parallel_size": config.otp or 0,
            "lmhead_tensor_parallel_size": config.lmhead_tp or 0,
            "embedding_tensor_parallel_size": config.embed_tp or 0,
            "mlp_tensor_parallel_size": config.mlp_tp or 0,
        },
        "eplb_config": {"dynamic_eplb": True},
        "multistream_overlap_gate": True,
    }
    if config.flashcomm2_otp is not None:
        options["enable_flashcomm2_parallel_size"] = config.flashcomm2_otp
    if config.layer_sharding:
        options["layer_sharding"] = ["o_proj"]
    if config.pd_tp_ratio is not None:
        options["pd_tp_ratio"] = config.pd_tp_ratio
    if config.pd_head_ratio is not None:
        options["pd_head_ratio"] = config.pd_head_ratio
    if config.num_head_replica is not None:
        options["num_head_replica"] = config.num_head_replica
    return options


def unsupported_reason(config: ParallelConfig) -> str | None:
    """Why ``config`` cannot be requested from a live system without a model, or None."""
    if config.dsa_cp:
        return ("dsa_cp is decided by vllm-ascend from the model (DeepSeek sparse attention), which a "
                "model-free capture cannot load")
    return None


def vllm_configuration(config: ParallelConfig):
    """A ``VllmConfig`` (no model) whose parallel settings are ``config``'s.

    ``external_launcher`` tells vLLM that every rank of every DP replica is already in one
    torch.distributed world (as torchrun or this suite's pools start them), so it must not re-number
    ranks per DP engine.
    """
    from vllm.config import ParallelConfig as VllmParallelConfig
    from vllm.config import VllmConfig

    parallel = VllmParallelConfig(tensor_parallel_size=config.tp, pipeline_parallel_size=config.pp,
                                  data_parallel_size=config.dp, distributed_executor_backend="external_launcher")
    if config.pcp > 1:
        if not hasattr(parallel, "prefill_context_parallel_size"):
            raise CaptureError(f"this vllm has no prefill context parallelism, config asks for pcp {config.pcp}")
        parallel.prefill_context_parallel_size = config.pcp
    kwargs = {"parallel_config": parallel, "additional_config": ascend_additional_config(config)}
    if config.kv_producer:
        from vllm.config import KVTransferConfig

        kwargs["kv_transfer_config"] = KVTransferConfig(kv_connector="MooncakeConnectorV1", kv_role="kv_producer")
    return VllmConfig(**kwargs)


@contextlib.contextmanager
def _environment(overrides: Mapping[str, str]):
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the rank side ------------------------------------------------------------------------------

def _read_groups(getters: Mapping[str, tuple[str, str]]) -> dict[str, list[int]]:
    view: dict[str, list[int]] = {}
    for kind, (module_name, getter_name) in getters.items():
        getter = getattr(importlib.import_module(module_name), getter_name, None)
        if getter is None:
            continue  # this release has no such group at all
        try:
            coordinator = getter()
        except AssertionError:
            continue  # vLLM's getters assert the group was built
        if coordinator is not None:
            view[kind] = [int(rank) for rank in coordinator.ranks]
    return view


def _destroy_live_state() -> None:
    """Undo what a capture built, leaving the default process group alive (the harness needs it).

    vLLM's ``destroy_distributed_environment`` would destroy the default group, so the world
    coordinator is destroyed and forgotten here directly (``parallel_state._WORLD``: vLLM has no public
    call for that alone).
    """
    import sys

    ascend = sys.modules.get("vllm_ascend.distributed.parallel_state")
    if ascend is not None and hasattr(ascend, "destroy_ascend_model_parallel"):
        ascend.destroy_ascend_model_parallel()
    vllm_state = sys.modules.get("vllm.distributed.parallel_state")
    if vllm_state is not None:
        vllm_state.destroy_model_parallel()
        world = getattr(vllm_state, "_WORLD", None)
        if world is not None:
            world.destroy()
            vllm_state._WORLD = None


def capture_rank_view(config_fields: Mapping, ascend: bool = True, local_rank: int | None = None) -> dict[str, list[int]]:
    """In a rank of a live world: initialise vLLM's (and vllm-ascend's) parallel state for the
    :class:`ParallelConfig` of ``config_fields`` and return ``{kind: this rank's group ranks}``.

    A collective: every rank of the world calls it with the same arguments.
    """
    import torch.distributed as dist

    config = ParallelConfig(**config_fields)
    reason = unsupported_reason(config)
    if reason:
        raise CaptureError(reason)
    if not dist.is_initialized() or dist.get_world_size() != config.world_size:
        raise CaptureError(f"capture needs a torch.distributed world of {config.world_size} ranks, have "
                           f"{dist.get_world_size() if dist.is_initialized() else 'none'}")
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state

    rank = dist.get_rank()
    backend = dist.get_backend()
    env = {FLASHCOMM2_SIZE_ENV: str(config.flashcomm2_otp)} if config.flashcomm2_otp is not None else {}
    vllm_config = vllm_configuration(config)
    getters = dict(VLLM_GETTERS)
    try:
        with _environment(env), set_current_vllm_config(vllm_config):
            parallel_state.init_distributed_environment(
                world_size=config.world_size, rank=rank, distributed_init_method=None,
                local_rank=rank if local_rank is None else local_rank, backend=backend)
            parallel_state.initialize_model_parallel(
                **_accepted(parallel_state.initialize_model_parallel, {
                    "tensor_model_parallel_size": config.tp, "pipeline_model_parallel_size": config.pp,
                    "prefill_context_model_parallel_size": config.pcp, "backend": backend}))
            if ascend:
                from vllm_ascend.ascend_config import init_ascend_config
                from vllm_ascend.distributed.parallel_state import init_ascend_model_parallel

                init_ascend_config(vllm_config)
                init_ascend_model_parallel(vllm_config.parallel_config)
                getters.update(ASCEND_GETTERS)
            return _read_groups(getters)
    finally:
        _destroy_live_state()


def _accepted(function, arguments: dict) -> dict:
    """The arguments ``function`` accepts; a size other than 1 it does not accept is an error (the
    live system cannot express the configuration)."""
    import inspect

    parameters = inspect.signature(function).parameters
    accepted = {name: value for name, value in arguments.items() if name in parameters}
    dropped = {name: value for name, value in arguments.items()
               if name not in parameters and name != "backend" and value != 1}
    if dropped:
        raise CaptureError(f"{function.__module__}.{function.__name__} takes no {', '.join(dropped)} "
                           f"(asked for {dropped})")
    return accepted


# -- the test side ------------------------------------------------------------------------------

def merge_rank_views(views: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, list[list[int]]]:
    """Per-rank views (``views[r]`` = rank r's ``{kind: its group's ranks}``) -> a layout.

    Groups of a kind are listed by ascending lowest rank, as :func:`build_layout` does. The views must
    agree: a rank's group contains the rank itself, and every member that reports the kind reports the
    same group in the same order; otherwise :class:`CaptureError` names the ranks.

    Example, world 4 with tp views ``[0, 1], [0, 1], [2, 3], [2, 3]`` -> ``{"tp": [[0, 1], [2, 3]]}``.
    """
    layout: dict[str, list[list[int]]] = {}
    kinds: list[str] = []
    for view in views:
        kinds += [kind for kind in view if kind not in kinds]
    for kind in kinds:
        by_members: dict[frozenset, list[int]] = {}
        group_of: dict[int, list[int]] = {}
        for rank, view in enumerate(views):
            if kind not in view:
                continue
            group = [int(member) for member in view[kind]]
            if rank not in group:
                raise CaptureError(f"rank {rank} reports {kind} group {group}, which does not contain it")
            first = by_members.setdefault(frozenset(group), group)
            if first != group:
                raise CaptureError(f"{kind}: ranks disagree on the order of group {first}: rank {rank} reports {group}")
            for member in group:
                other = group_of.setdefault(member, first)
                if other is not first:
                    raise CaptureError(f"{kind}: rank {member} is in group {other} and in group {group} "
                                       f"(reported by rank {rank})")
        layout[kind] = sorted(by_members.values(), key=min)
    return layout


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A live layout against the reference: invariant violations and per-group differences."""

    layout: dict
    violations: list[Violation]
    differences: list[Difference]

    @property
    def conformant(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [str(v) for v in self.violations] or ["no invariant violated"]
        return "\n".join(lines)


def judge(layout: Mapping[str, Sequence[Sequence[int]]], config: ParallelConfig) -> Judgement:
    """Check a captured layout with the invariant checker and compare it with the reference.

    Kinds the live system builds that docs/layout.md does not name (e.g. vLLM's ``dcp``) are left out
    of the comparison: nothing says what they should be.
    """
    reference = build_layout(config)
    known = {kind: groups for kind, groups in layout.items() if kind in GROUP_KINDS}
    return Judgement(dict(layout), check_layout(known, config), compare_layouts(reference, known))


def live_versions() -> dict[str, str]:
    """Versions of the live stack a capture ran against (for reports)."""
    from importlib import metadata

    out = {}
    for name in ("vllm", "vllm_ascend", "torch", "torch_npu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


__all__ = ["CaptureError", "Judgement", "capture_rank_view", "merge_rank_views", "judge",
           "live_capture_unavailable_reason", "unsupported_reason", "vllm_configuration",
           "ascend_additional_config", "live_versions"]
