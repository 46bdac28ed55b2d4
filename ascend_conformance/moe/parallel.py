"""The TP, DP, EP and MC2 groups a MoE method talks to: ``ascend_conformance.groups`` coordinators.

A method only needs ``world_size``, ``rank_in_group``, ``ranks``, ``device_group`` and the collectives
``all_gather(t, dim)``, ``reduce_scatter(t, dim)`` and ``all_reduce(t)`` (out of place; a group of one
returns its input) of the GroupCoordinator contract (docs/collectives.md); the methods always pass ``dim``
(vLLM's default is -1).

:func:`moe_groups` initialises the groups of a :class:`~ascend_conformance.topology.ParallelConfig`'s
reference layout (``topology.build_layout``) through ``groups.initialize_groups`` — a collective: every
rank calls it — or reuses them when the initialised layout already has these TP / DP / EP / MC2 groups.
Groups that ``moe_groups`` initialised for another configuration are replaced (a batch of scenarios may
switch layouts); groups someone else initialised for another layout are left alone (ConfigError).
``groups.destroy_groups()`` ends them; :func:`forget_initialised_groups` drops this module's note of
which groups it initialised (the pytest harness calls both after every test).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from ascend_conformance import groups as live
from ascend_conformance.errors import ConfigError
from ascend_conformance.topology import ParallelConfig, build_layout

KINDS = ("tp", "dp", "ep", "mc2")


@dataclasses.dataclass(frozen=True)
class MoEGroups:
    tp: live.GroupCoordinator
    dp: live.GroupCoordinator
    ep: live.GroupCoordinator
    mc2: live.GroupCoordinator  # same members and order as ep (vllm-ascend gives MC2 its own communicator)
    config: ParallelConfig


_initialised_by_us: dict = {}  # {"world": the world coordinator of groups moe_groups initialised}


def forget_initialised_groups() -> None:
    """Forget which groups :func:`moe_groups` initialised (after they were destroyed)."""
    _initialised_by_us.clear()


def _initialised_matches(layout: dict) -> bool:
    """Whether the initialised groups of this rank are the TP / DP / EP / MC2 groups of `layout`."""
    me = dist.get_rank()
    for kind in KINDS:
        try:
            coordinator = live.get_group(kind)
        except live.GroupLookupError:
            return False
        if coordinator.ranks != next(group for group in layout[kind] if me in group):
            return False
    return True


def _everyone(flag: bool) -> bool:
    """True when `flag` holds on every rank (decisions about creating groups must be unanimous): a host
    tensor over the world's CPU group where there is one, else an object gather over the default group
    (whose backend may take device tensors only, as HCCL does)."""
    if live.groups_initialized() and "world" in live.group_kinds():
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=live.get_world_group().cpu_group)
        return bool(value.item())
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def moe_groups(config: ParallelConfig) -> MoEGroups:
    """This rank's TP, DP, EP and MC2 coordinators of `config` (collective: every rank must call it)."""
    if config.pp != 1 or config.pcp != 1:
        raise ConfigError(f"the MoE methods run on one PP stage without PCP, got pp={config.pp} pcp={config.pcp}")
    if not dist.is_initialized() or dist.get_world_size() != config.world_size:
        raise ConfigError(f"moe_groups needs a torch.distributed world of {config.world_size} ranks, have "
                          f"{dist.get_world_size() if dist.is_initialized() else 'none'}")
    layout = build_layout(config)
    if live.groups_initialized() and not _everyone(_initialised_matches(layout)):
        ours = _initialised_by_us.get("world") is live.get_world_group()
        if not _everyone(ours):
            raise ConfigError(f"groups of another layout are initialised ({', '.join(live.group_kinds())}); call "
                              f"groups.destroy_groups() before moe_groups({config.describe()})")
        live.destroy_groups()
    if not live.groups_initialized():
        live.initialize_groups(layout)
        _initialised_by_us["world"] = live.get_world_group()
    return MoEGroups(*(live.get_group(kind) for kind in KINDS), config)
