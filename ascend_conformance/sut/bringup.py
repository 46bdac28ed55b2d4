"""Bringing vLLM and vllm-ascend up inside a rank, as a worker started by an external launcher does: the
one module every adapter (groups, MoE, EPLB, layer sharding) uses for it.

1. :func:`launcher_environment` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
   ``MASTER_PORT`` as torchrun / verl would (:func:`launch_variables`: the world's own rendezvous store, never
   a made-up port), points vLLM's message-queue sockets at a directory of the block's own (removed
   afterwards: vLLM leaves its socket files behind), and restores the whole environment afterwards (vLLM
   writes into it too);
2. a release's configuration step runs under :func:`refusals` / :func:`configure_everywhere`: what it
   refuses becomes one :class:`~ascend_conformance.errors.SutRefused` line in its own words, on every rank
   at once (a refusal on some ranks only would otherwise hang the others);
3. :func:`model_parallel_groups` adopts the world's default group as vLLM's world and builds vLLM's
   model-parallel groups (the calls of the installed vLLM line: its ``vllm_groups`` shim,
   ``ascend_conformance/sut/shims/vllm_groups/``); :func:`destroy_parallel_state` undoes vllm-ascend's and
   vLLM's state and keeps the default group, which the harness owns;
4. :func:`model_config`: where a release reads the model to configure itself, the smallest model config
   it accepts (a ``config.json`` of a few numbers, no weights) in a directory of its own.

Nothing here judges anything; :func:`label` names the installed release as every result does.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from ascend_conformance.errors import ConfigError, SutRefused, one_line
from ascend_conformance.sut import installed, lines
from ascend_conformance.topology import ParallelConfig

# What a configuration step of a release raises when it says no (its validation); anything else it
# raises is a crash, never a refusal.
REFUSALS = (ValueError, AssertionError, NotImplementedError)
T = TypeVar("T")


def label(sut: str) -> str:
    """``vllm_ascend 0.18.0``, ``vllm_ascend main@182b75ea84``: the installed release, as results name it."""
    return installed.label(sut)


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
    variables["VLLM_TARGET_DEVICE"] = target_device()
    return variables


def rank_device():
    """The torch device this rank is bound to (``rank_context().device``): ``npu:k`` on an NPU host and on the
    emulated NPU, ``cpu`` on gloo. Everything an adapter builds for the release to compute on goes there."""
    import torch

    from ascend_conformance.harness import rank_context

    return torch.device(rank_context().device)


def target_device() -> str:
    """``VLLM_TARGET_DEVICE`` for this rank: the type of its device (``cpu``, ``npu``), as a host of that
    platform is set up (vLLM's CPU build says ``cpu``; on an NPU host vLLM must not take itself for CPU)."""
    return rank_device().type


# What vllm-ascend's NPUPlatform (vllm_ascend/platform.py) says of the device: vLLM's platform on an NPU host.
NPU_PLATFORM_IDENTITY = {"device_name": "npu", "device_type": "npu", "dispatch_key": "PrivateUse1",
                         "device_control_env_var": "ASCEND_RT_VISIBLE_DEVICES"}


def present_rank_device_to_vllm() -> None:
    """Where the rank's device is an NPU but vLLM has no platform of its own for it (the emulated NPU: vLLM
    finds no platform plugin here and runs on its ``UnspecifiedPlatform``), vLLM's platform says of the
    device what vllm-ascend's NPUPlatform says on an NPU host: out of tree, device ``npu``, dispatch key
    PrivateUse1. So vLLM's GroupCoordinators live on ``npu:<local rank>`` and the custom ops vLLM registers
    (``moe_forward``, ...) have kernels for the device, as on a host; on the CPU platform (gloo) nothing
    changes. Process-wide and idempotent: SUT ranks belong to pools of their own (suites/sut_support.py).
    Call it before vLLM's model-executor modules are imported (they register their ops at import)."""
    device = rank_device()
    if device.type == "cpu":
        return
    from vllm.platforms import current_platform
    from vllm.platforms.interface import PlatformEnum

    if current_platform.device_type and current_platform.device_type != device.type:
        raise SutRefused(f"vLLM's platform has device type {current_platform.device_type!r}, the rank's device is "
                         f"{device}: vLLM would place its tensors elsewhere")
    if current_platform.device_type:
        return  # a platform of its own for the device (vllm-ascend's plugin on an NPU host), or presented already
    current_platform._enum = PlatformEnum.OOT
    for name, value in NPU_PLATFORM_IDENTITY.items():
        setattr(current_platform, name, value)


def use_source(path: str) -> None:
    """In a fresh rank: import the vllm_ascend package under ``path`` (a patched copy of the installed one,
    or a platform engineer's checkout) instead of the installed one; ConfigError when ``path`` holds none, or
    when this process already imported another."""
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "vllm_ascend")):
        raise ConfigError(f"{path} holds no vllm_ascend package (expected {path}/vllm_ascend/)")
    loaded = sys.modules.get("vllm_ascend")
    if loaded is not None and not os.path.abspath(loaded.__file__).startswith(path + os.sep):
        raise ConfigError(f"this process already imported vllm_ascend from {os.path.dirname(loaded.__file__)}; "
                          f"run the one under {path} in a fresh process")
    if path not in sys.path:
        sys.path.insert(0, path)


@contextlib.contextmanager
def launcher_environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``overrides`` for the duration, then exactly as it was (also undoing whatever
    the release itself wrote there meanwhile); vLLM's platform presents the rank's device
    (:func:`present_rank_device_to_vllm`)."""
    present_rank_device_to_vllm()
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


@contextlib.contextmanager
def model_parallel_groups(config: ParallelConfig, vllm_config) -> Iterator[None]:
    """With ``vllm_config`` current: vLLM's world and model-parallel groups for ``config``'s sizes for the
    duration (collective; the world's default group is adopted, never replaced), then
    :func:`destroy_parallel_state`."""
    import torch.distributed as dist
    from vllm.config import set_current_vllm_config

    if not dist.is_initialized() or dist.get_world_size() != config.world_size:
        have = dist.get_world_size() if dist.is_initialized() else "none"
        raise SutRefused(f"{config.describe()} needs a torch.distributed world of {config.world_size} ranks, "
                         f"have {have}")
    backend = dist.get_backend()
    with set_current_vllm_config(vllm_config):
        try:
            _vllm_shim().init_parallel_state(
                config, rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                backend=backend)
            yield
        finally:
            destroy_parallel_state()


@functools.lru_cache(maxsize=None)
def _vllm_shim():
    """vLLM's groups shim for the installed line (cached: a process has one release, and reading a linked
    checkout's costs git calls)."""
    return lines.shim("vllm_groups", "vllm")


def model_directory(hf_config: Mapping) -> str:
    """A directory holding ``config.json`` = ``hf_config`` (a Hugging Face model config, no weights),
    shared by every process of this user that asks for the same config (named by its digest)."""
    text = json.dumps(dict(hf_config), sort_keys=True)
    path = os.path.join(tempfile.gettempdir(), f"ascend-conformance-models-{os.getuid()}",
                        hashlib.sha256(text.encode()).hexdigest()[:16])
    target = os.path.join(path, "config.json")
    if not os.path.exists(target):
        os.makedirs(path, exist_ok=True)
        partial = f"{target}.{os.getpid()}"
        with open(partial, "w") as f:
            f.write(text)
        os.replace(partial, target)  # atomic: ranks writing the same file at once never see half of it
    return path


def model_config(hf_config: Mapping):
    """vLLM's ``ModelConfig`` of ``hf_config`` (:func:`model_directory`): no tokenizer, no weights."""
    from vllm.config import ModelConfig

    return ModelConfig(model=model_directory(hf_config), skip_tokenizer_init=True,
                       dtype=hf_config.get("torch_dtype", "auto"))


def destroy_parallel_state() -> None:
    """Undo vllm-ascend's and vLLM's parallel state, but keep the default process group (the harness owns
    it), so the next world of a warm rank starts clean.

    * vllm-ascend keeps the comm methods a MoE layer set up in a process-wide registry
      (``_MoECommMethods``), each holding its ``FusedMoEConfig`` and through it the DP / EP / MC2
      coordinators; its own destroy leaves them there, so every world of a warm rank would keep the gloo
      groups (and their threads) of the one before. A worker process ends with its model; a warm rank
      empties the registry instead.
    * vllm-ascend's own groups: ``destroy_ascend_model_parallel`` (what it leaves behind is the groups
      adapter's to report, not to hide: it is called by the adapter first where that matters).
    * vLLM's: ``destroy_model_parallel``; its ``destroy_distributed_environment`` would destroy the default
      group too, so the world coordinator is destroyed and forgotten directly (``parallel_state._WORLD``;
      no public call does that alone).
    """
    comm_methods = sys.modules.get("vllm_ascend.ops.fused_moe.moe_comm_method")
    registry = getattr(comm_methods, "_MoECommMethods", None)
    if isinstance(registry, dict):
        registry.clear()
    ascend = sys.modules.get("vllm_ascend.distributed.parallel_state")
    if ascend is not None and hasattr(ascend, "destroy_ascend_model_parallel"):
        ascend.destroy_ascend_model_parallel()
    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is None:
        return
    state.destroy_model_parallel()
    world = getattr(state, "_WORLD", None)
    if world is not None:
        world.destroy()
        state._WORLD = None


__all__ = ["label", "use_source", "launch_variables", "rank_device", "target_device", "present_rank_device_to_vllm", "launcher_environment", "refusals", "release_message", "configure_everywhere",
           "model_parallel_groups", "destroy_parallel_state", "model_directory", "model_config", "REFUSALS"]
