"""vLLM's own parallel groups, built for real inside a rank: the *groups* adapter of vLLM.

It builds the kinds vLLM owns (:data:`KINDS`: world, tp, pcp, pp, dp, ep) for the TP / PP / DP / PCP sizes of
a :class:`~ascend_conformance.topology.ParallelConfig` and reads them back; vllm-ascend's adapter
(:mod:`ascend_conformance.sut.vllm_ascend_groups`) builds on it. Everything here is a collective: every rank
of a torch.distributed world calls it with the same arguments. What moved between vLLM's release lines is in
its shim (``ascend_conformance/sut/shims/vllm_groups/``); which kinds and features the installed release has
is read from its source (:func:`kinds`, :func:`requirements`).

In a rank, :func:`live_groups` does what a vLLM worker started by an external launcher (torchrun, verl)
does, and nothing the suite invented:

1. :func:`~ascend_conformance.sut.bringup.launcher_environment` sets ``RANK``, ``WORLD_SIZE``,
   ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` as such a launcher would (vLLM's ``ParallelConfig``
   with ``external_launcher`` reads ``RANK`` to derive the DP rank, and fails without it when DP > 1), and
   restores the whole environment afterwards (``ParallelConfig`` also writes
   ``VLLM_ENABLE_V1_MULTIPROCESSING``);
2. :func:`vllm_configuration` builds ``VllmConfig(parallel_config=ParallelConfig(...,
   distributed_executor_backend="external_launcher"))``, with no model unless one is given. Whatever the
   release refuses there raises :class:`~ascend_conformance.errors.SutRefused` naming the release and its
   own message;
3. ``init_distributed_environment`` adopts the world's default group; ``initialize_model_parallel``
   builds the groups (:func:`~ascend_conformance.sut.bringup.model_parallel_groups`), which
   :func:`coordinators` reads back through vLLM's getters (``get_tp_group()``, ...);
4. on exit it destroys what it built and leaves the default group alone.

Worked example, world 8 = DP2 x PP2 x TP2: rank 5 is (d 1, p 0, t 1); it reads back tp [4, 5],
pp [5, 7], dp [1, 5] and ep [0, 1, 4, 5] (the reference's groups holding rank 5).

What vLLM refuses (0.13.0 to 0.27.1 alike): external DP (world larger than DP x PP x PCP x TP) together with
DP > 1, since ``external_launcher`` takes the DP rank as ``RANK // (TP x PP x PCP)``, out of 0..DP-1 on every
replica but the first.

Platform: vLLM picks its platform by itself. This project's CPU host has vLLM's CUDA wheel and no GPU, so
vLLM runs on its ``UnspecifiedPlatform`` (device communicator ``DeviceCommunicatorBase``: plain
torch.distributed calls) and the device is named explicitly, the rank's (``cpu`` on gloo, ``npu:k`` on the
emulated NPU); on an NPU host vllm-ascend is vLLM's platform plugin and the device is vLLM's own choice.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator, Mapping

from ascend_conformance.errors import SutRefused
from ascend_conformance.sut import VLLM, bringup, lines
from ascend_conformance.sut.shims.vllm_groups import GETTERS, STATE
from ascend_conformance.topology import ParallelConfig

SUT = VLLM
ADAPTER = "vllm_groups"
# Every kind vLLM has built on some line; :func:`kinds` says which the installed release has.
KINDS: tuple[str, ...] = tuple(GETTERS)


def label() -> str:
    """``vllm 0.23.0``: the installed release, as results name it."""
    return bringup.label(SUT)


@functools.lru_cache(maxsize=None)
def shim():
    """The shim of the installed vLLM's line (a process has one release; reading it costs git calls for a
    linked checkout)."""
    return lines.shim(ADAPTER, SUT)


def kinds() -> tuple[str, ...]:
    """The kinds of :data:`KINDS` the installed release has (a getter for), in that order."""
    return tuple(kind for kind in KINDS if has_feature(ADAPTER, SUT, kind))


@functools.lru_cache(maxsize=None)
def absence(adapter: str, sut: str, feature: str) -> str | None:
    """``not in <release>: <feature> (...)`` when the installed release lacks ``feature``, None when it has
    it; :class:`~ascend_conformance.sut.lines.ShimMismatch` (not cached) when it has it but the shim does not
    fit. Cached: a process has one release, and reading it costs git calls for a linked checkout."""
    try:
        lines.check_feature(adapter, sut, feature)
    except lines.NotInRelease as exc:
        return str(exc)
    return None


def has_feature(adapter: str, sut: str, feature: str) -> bool:
    return absence(adapter, sut, feature) is None


def requirements(config: ParallelConfig) -> list[tuple[str, str, str]]:
    """``(adapter, sut, feature)`` of everything building ``config`` needs of the installed releases."""
    needed = [(ADAPTER, SUT, "groups")]
    if config.pcp > 1:
        needed.append((ADAPTER, SUT, "pcp"))
    return needed


def missing(config: ParallelConfig) -> str | None:
    """``not in <release>: ...`` when the installed release lacks something ``config`` needs, else None."""
    return first_missing(requirements(config))


def first_missing(needed: list[tuple[str, str, str]]) -> str | None:
    """``not in <release>: ...`` for the first requirement the installed releases lack, else None
    (:class:`~ascend_conformance.sut.lines.ShimMismatch` when a shim does not fit)."""
    for adapter, sut, feature in needed:
        reason = absence(adapter, sut, feature)
        if reason:
            return reason
    return None


def host_reason(config: ParallelConfig) -> str | None:
    """Why this host cannot build ``config`` with the installed release (which can elsewhere), or None."""
    return shim().host_reason(config)


# -- configuration ----------------------------------------------------------------------------------

def unsupported_reason(config: ParallelConfig) -> str | None:
    """Why vLLM's group construction cannot be asked for ``config`` without a model, or None."""
    if config.dsa_cp:
        return ("dsa_cp is decided by vllm-ascend from the model (DeepSeek sparse attention), which a "
                "model-free capture cannot load")
    return None


def vllm_configuration(config: ParallelConfig, *, additional_config: dict | None = None,
                       kv_transfer: tuple[str, dict] | None = None, model: Mapping | None = None):
    """A ``VllmConfig`` with ``config``'s parallel sizes (needs :func:`bringup.launcher_environment`).

    ``external_launcher`` tells vLLM that every rank of every DP replica is already in one torch.distributed
    world (as torchrun, or this suite's pools, start them): it must not renumber ranks per DP engine.
    ``kv_transfer``: (KV role, the connector's extra config) of a PD deployment. ``model``: a Hugging Face
    config (``config.json`` contents, no weights) for releases that read the model to build the groups.
    """
    from vllm.config import CacheConfig, DeviceConfig, VllmConfig
    from vllm.config import ParallelConfig as VllmParallelConfig
    from vllm.platforms import current_platform

    line = shim()
    with bringup.refusals(label(), config):
        kwargs = {"parallel_config": VllmParallelConfig(**line.parallel_config_fields(config)),
                  "additional_config": additional_config or {}}
        cache = line.cache_config_fields()
        if cache:
            kwargs["cache_config"] = CacheConfig(**cache)
        if not current_platform.device_type:  # see the module docstring: no platform of vLLM's own here
            kwargs["device_config"] = DeviceConfig(device=bringup.rank_device())
        if kv_transfer is not None:
            from vllm.config import KVTransferConfig

            kwargs["kv_transfer_config"] = KVTransferConfig(**line.kv_transfer_fields(*kv_transfer))
        if model is not None:
            kwargs["model_config"] = bringup.model_config(model)
        return VllmConfig(**kwargs)


# -- building and reading the groups ----------------------------------------------------------------

def coordinators(getters: Mapping[str, tuple[str, str]]) -> dict:
    """``{kind: the live GroupCoordinator this rank is in}`` for every kind the release built."""
    found = {}
    for kind, (module_name, getter_name) in getters.items():
        getter = getattr(importlib.import_module(module_name), getter_name, None)
        if getter is None:
            continue  # this release has no such kind at all
        try:
            coordinator = getter()
        except AssertionError:
            continue  # the getters assert the group was built
        if coordinator is not None:
            found[kind] = coordinator
    return found


def vllm_getters() -> dict[str, tuple[str, str]]:
    return {kind: (STATE, getter) for kind, getter in GETTERS.items()}


@contextlib.contextmanager
def live_groups(config: ParallelConfig) -> Iterator[dict]:
    """vLLM's groups for ``config`` while the block runs; yields ``{kind: GroupCoordinator}``."""
    reason = unsupported_reason(config)
    if reason:
        raise SutRefused(f"{label()}: cannot build {config.describe()}: {reason}")
    absent = missing(config)
    if absent:
        raise lines.NotInRelease(absent)
    with bringup.launcher_environment(bringup.launch_variables()):
        vllm_config = bringup.configure_everywhere(label(), config, lambda: vllm_configuration(config))
        with bringup.model_parallel_groups(config, vllm_config):
            yield coordinators(vllm_getters())


def capture_rank_view(config_fields: Mapping) -> dict[str, list[int]]:
    """In a rank: ``{kind: this rank's group ranks}`` of what vLLM builds for the config of ``config_fields``."""
    with live_groups(ParallelConfig(**config_fields)) as built:
        return {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}


__all__ = ["SUT", "KINDS", "label", "kinds", "requirements", "missing", "first_missing", "absence", "has_feature", "host_reason", "vllm_configuration", "live_groups",
           "capture_rank_view", "unsupported_reason", "coordinators"]
