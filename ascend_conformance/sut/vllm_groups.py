"""vLLM's own parallel groups, built for real inside a rank: the *groups* adapter of vLLM.

Written against vLLM 0.23.0 (:data:`RELEASE`). It builds the kinds vLLM owns (:data:`KINDS`: world, tp, pcp,
pp, dp, ep) for the TP / PP / DP / PCP sizes of a :class:`~ascend_conformance.topology.ParallelConfig` and
reads them back; vllm-ascend's adapter (:mod:`ascend_conformance.sut.vllm_ascend_groups`) builds on it.
Everything here is a collective: every rank of a torch.distributed world calls it with the same arguments.

In a rank, :func:`live_groups` does what a vLLM worker started by an external launcher (torchrun, verl)
does, and nothing the suite invented:

1. :func:`launcher_environment` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
   ``MASTER_PORT`` as such a launcher would (0.23's ``ParallelConfig`` with ``external_launcher`` reads
   ``RANK`` to derive the DP rank, and fails without it when DP > 1), and restores the whole environment
   afterwards (``ParallelConfig`` also writes ``VLLM_ENABLE_V1_MULTIPROCESSING``);
2. :func:`vllm_configuration` builds ``VllmConfig(parallel_config=ParallelConfig(...,
   distributed_executor_backend="external_launcher"))`` with no model. Whatever the release refuses there
   raises :class:`~ascend_conformance.errors.SutRefused` naming the release and its own message;
3. ``init_distributed_environment`` adopts the world's default group; ``initialize_model_parallel``
   builds the groups, which :func:`read_groups` reads back through vLLM's getters (``get_tp_group()``,
   ...): ``{kind: this rank's group ranks}``;
4. on exit it destroys what it built and leaves the default group alone.

Worked example, world 8 = DP2 x PP2 x TP2: rank 5 is (d 1, p 0, t 1); it reads back tp [4, 5],
pp [5, 7], dp [1, 5] and ep [0, 1, 4, 5] (the reference's groups holding rank 5).

What vLLM 0.23.0 refuses: external DP (world larger than DP x PP x PCP x TP) together with DP > 1, since
``external_launcher`` takes the DP rank as ``RANK // (TP x PP x PCP)``, out of 0..DP-1 on every replica
but the first.

Platform: vLLM picks its platform by itself. This project's CPU host has vLLM's CUDA wheel and no GPU, so
vLLM runs on its ``UnspecifiedPlatform`` (device communicator ``DeviceCommunicatorBase``: plain
torch.distributed calls) and the device is named ``cpu`` explicitly; on an NPU host vllm-ascend is vLLM's
platform plugin and the device is vLLM's own choice.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from ascend_conformance.errors import SutRefused, one_line
from ascend_conformance.sut import VLLM
from ascend_conformance.topology import ParallelConfig

RELEASE = "0.23.0"
SUT = VLLM
# kind -> getter in vllm.distributed.parallel_state. A getter that asserts (vLLM's "... is not
# initialized") or returns None means the release did not build that kind.
GETTERS: dict[str, str] = {"world": "get_world_group", "tp": "get_tp_group", "pcp": "get_pcp_group",
                           "pp": "get_pp_group", "dp": "get_dp_group", "ep": "get_ep_group"}
KINDS: tuple[str, ...] = tuple(GETTERS)
# What a configuration step of a release raises when it says no (its validation); anything else it
# raises is a crash, never a refusal.
REFUSALS = (ValueError, AssertionError, NotImplementedError)
T = TypeVar("T")


def installed_version(package: str = "vllm") -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def label() -> str:
    """``vllm 0.23.0``: the installed release, as results name it."""
    return f"{SUT} {installed_version()}"


def release_message(exc: BaseException) -> str:
    """The release's own words in one line (pydantic's validation errors: every message, joined)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(str(error.get("msg", error)) for error in errors()).replace("\n", " ")
        except Exception:  # noqa: BLE001 - not pydantic's errors() after all
            pass
    return one_line(exc, with_type=True)


@contextlib.contextmanager
def refusals(release: str, config: ParallelConfig) -> Iterator[None]:
    """Turn what a release's configuration step refuses into one SutRefused line."""
    try:
        yield
    except SutRefused:
        raise
    except REFUSALS as exc:
        raise SutRefused(f"{release} refuses {config.describe()}: {release_message(exc)}") from None


def configure_everywhere(release: str, config: ParallelConfig, configure: Callable[[], T]) -> T:
    """``configure()`` on every rank, refused on every rank when the release refuses it on any.

    A release may refuse on some ranks only (vLLM 0.23.0 derives the DP rank from ``RANK`` and refuses
    it out of range, which happens on the later external-DP replicas alone): were those ranks to give up
    while the others went on to build groups, the world would hang. So the ranks agree first (one
    all_gather_object on the default group) and the refusal names the ranks that refused.
    """
    import torch.distributed as dist

    result, refusal = None, None
    try:
        with refusals(release, config):
            result = configure()
    except SutRefused as exc:
        refusal = str(exc)
    verdicts: list = [None] * dist.get_world_size()
    dist.all_gather_object(verdicts, refusal)
    refusing = [rank for rank, verdict in enumerate(verdicts) if verdict is not None]
    if refusing:
        where = "" if len(refusing) == len(verdicts) else f" (on ranks {refusing}; the others accept it)"
        raise SutRefused(verdicts[refusing[0]] + where)
    return result


# -- the launcher's environment --------------------------------------------------------------------

def _store_address() -> tuple[str | None, int | None]:
    """Host and port of the world's rendezvous store, where a launcher's MASTER_ADDR / MASTER_PORT point."""
    import torch.distributed as dist

    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no default store (another init method)
        return None, None
    while hasattr(store, "underlying_store"):  # PrefixStore around the TCPStore
        store = store.underlying_store
    return getattr(store, "host", None), getattr(store, "port", None)


def launch_variables(local_rank: int | None = None) -> dict[str, str]:
    """What an external launcher sets for this rank of the current torch.distributed world."""
    import torch.distributed as dist

    rank, world_size = dist.get_rank(), dist.get_world_size()
    host, port = _store_address()
    variables = {"RANK": str(rank), "WORLD_SIZE": str(world_size),
                 "LOCAL_RANK": str(local_rank if local_rank is not None else os.environ.get("LOCAL_RANK", rank)),
                 "MASTER_ADDR": os.environ.get("MASTER_ADDR") or host or "127.0.0.1",
                 "MASTER_PORT": os.environ.get("MASTER_PORT") or str(port or 0)}
    if dist.get_backend() == "gloo":
        variables["VLLM_TARGET_DEVICE"] = "cpu"
    return variables


@contextlib.contextmanager
def launcher_environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``overrides`` for the duration, then exactly as it was (also undoing whatever
    the release itself wrote there meanwhile)."""
    saved = dict(os.environ)
    os.environ.update(overrides)
    # vLLM binds its message-queue broadcasters' zmq sockets under VLLM_RPC_BASE_PATH (default: /tmp) and
    # leaves the socket files behind: a directory of the block's own, removed with them.
    ipc_dir = None
    if "VLLM_RPC_BASE_PATH" not in os.environ:
        ipc_dir = tempfile.mkdtemp(prefix="ascend-conformance-vllm-ipc-")
        os.environ["VLLM_RPC_BASE_PATH"] = ipc_dir
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)


# -- configuration ----------------------------------------------------------------------------------

def unsupported_reason(config: ParallelConfig) -> str | None:
    """Why vLLM's group construction cannot be asked for ``config`` without a model, or None."""
    if config.dsa_cp:
        return ("dsa_cp is decided by vllm-ascend from the model (DeepSeek sparse attention), which a "
                "model-free capture cannot load")
    return None


def vllm_configuration(config: ParallelConfig, *, additional_config: dict | None = None,
                       kv_role: str | None = None):
    """A model-free ``VllmConfig`` with ``config``'s parallel sizes (needs :func:`launcher_environment`).

    ``external_launcher`` tells vLLM that every rank of every DP replica is already in one torch.distributed
    world (as torchrun, or this suite's pools, start them): it must not renumber ranks per DP engine.
    """
    from vllm.config import DeviceConfig, VllmConfig
    from vllm.config import ParallelConfig as VllmParallelConfig
    from vllm.platforms import current_platform

    with refusals(label(), config):
        parallel = VllmParallelConfig(tensor_parallel_size=config.tp, pipeline_parallel_size=config.pp,
                                      data_parallel_size=config.dp, prefill_context_parallel_size=config.pcp,
                                      distributed_executor_backend="external_launcher")
        kwargs = {"parallel_config": parallel, "additional_config": additional_config or {}}
        if not current_platform.device_type:  # see the module docstring: no platform of vLLM's own here
            kwargs["device_config"] = DeviceConfig(device="cpu")
        if kv_role is not None:
            from vllm.config import KVTransferConfig

            # Groups read only the role; vLLM's own example connector needs no registration by a platform plugin.
            kwargs["kv_transfer_config"] = KVTransferConfig(kv_connector="ExampleConnector", kv_role=kv_role)
        return VllmConfig(**kwargs)


# -- building and reading the groups ----------------------------------------------------------------

@contextlib.contextmanager
def model_parallel_groups(config: ParallelConfig, vllm_config) -> Iterator[None]:
    """With ``vllm_config`` current: vLLM's world and model-parallel groups for the duration."""
    import torch.distributed as dist
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state

    if not dist.is_initialized() or dist.get_world_size() != config.world_size:
        have = dist.get_world_size() if dist.is_initialized() else "none"
        raise SutRefused(f"{config.describe()} needs a torch.distributed world of {config.world_size} ranks, "
                         f"have {have}")
    backend = dist.get_backend()
    with set_current_vllm_config(vllm_config):
        try:
            parallel_state.init_distributed_environment(
                world_size=config.world_size, rank=dist.get_rank(), distributed_init_method=None,
                local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=backend)
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=config.tp, pipeline_model_parallel_size=config.pp,
                prefill_context_model_parallel_size=config.pcp, backend=backend)
            yield
        finally:
            destroy_model_parallel_groups()


def destroy_model_parallel_groups() -> None:
    """Undo vLLM's groups but keep the default process group (the harness owns it): vLLM's
    ``destroy_distributed_environment`` would destroy that too, so its world coordinator is destroyed and
    forgotten directly (``parallel_state._WORLD``; 0.23 has no public call for that alone)."""
    import sys

    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is None:
        return
    state.destroy_model_parallel()
    world = getattr(state, "_WORLD", None)
    if world is not None:
        world.destroy()
        state._WORLD = None


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
            continue  # vLLM's getters assert the group was built
        if coordinator is not None:
            found[kind] = coordinator
    return found


def vllm_getters() -> dict[str, tuple[str, str]]:
    return {kind: ("vllm.distributed.parallel_state", getter) for kind, getter in GETTERS.items()}


@contextlib.contextmanager
def live_groups(config: ParallelConfig) -> Iterator[dict]:
    """vLLM's groups for ``config`` while the block runs; yields ``{kind: GroupCoordinator}``."""
    reason = unsupported_reason(config)
    if reason:
        raise SutRefused(f"{label()}: cannot build {config.describe()}: {reason}")
    with launcher_environment(launch_variables()):
        vllm_config = configure_everywhere(label(), config, lambda: vllm_configuration(config))
        with model_parallel_groups(config, vllm_config):
            yield coordinators(vllm_getters())


def capture_rank_view(config_fields: Mapping) -> dict[str, list[int]]:
    """In a rank: ``{kind: this rank's group ranks}`` of what vLLM builds for the config of ``config_fields``."""
    with live_groups(ParallelConfig(**config_fields)) as built:
        return {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}


__all__ = ["RELEASE", "SUT", "KINDS", "label", "launcher_environment", "launch_variables", "vllm_configuration",
           "live_groups", "capture_rank_view", "unsupported_reason", "refusals", "configure_everywhere"]
