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
from collections.abc import Iterator, Mapping

from ascend_conformance.errors import SutRefused
from ascend_conformance.sut import VLLM, bringup
from ascend_conformance.topology import ParallelConfig

RELEASE = "0.23.0"
SUT = VLLM
# kind -> getter in vllm.distributed.parallel_state. A getter that asserts (vLLM's "... is not
# initialized") or returns None means the release did not build that kind.
GETTERS: dict[str, str] = {"world": "get_world_group", "tp": "get_tp_group", "pcp": "get_pcp_group",
                           "pp": "get_pp_group", "dp": "get_dp_group", "ep": "get_ep_group"}
KINDS: tuple[str, ...] = tuple(GETTERS)


def label() -> str:
    """``vllm 0.23.0``: the installed release, as results name it."""
    return bringup.label(SUT)


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

    with bringup.refusals(label(), config):
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
    with bringup.launcher_environment(bringup.launch_variables()):
        vllm_config = bringup.configure_everywhere(label(), config, lambda: vllm_configuration(config))
        with bringup.model_parallel_groups(config, vllm_config):
            yield coordinators(vllm_getters())


def capture_rank_view(config_fields: Mapping) -> dict[str, list[int]]:
    """In a rank: ``{kind: this rank's group ranks}`` of what vLLM builds for the config of ``config_fields``."""
    with live_groups(ParallelConfig(**config_fields)) as built:
        return {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}


__all__ = ["RELEASE", "SUT", "KINDS", "label", "vllm_configuration", "live_groups", "capture_rank_view",
           "unsupported_reason"]
