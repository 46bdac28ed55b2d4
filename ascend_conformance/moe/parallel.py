"""The TP, DP and EP groups a MoE method talks to, as GroupCoordinator-like objects.

A method only needs ``world_size``, ``rank_in_group``, ``ranks``, ``device_group`` and the collectives
``all_gather(t, dim)``, ``reduce_scatter(t, dim)`` and ``all_reduce(t)`` (out of place; a group of one
returns its input), the subset of vLLM's GroupCoordinator that SEMANTICS.md §2 specifies; the methods
always pass ``dim`` (vLLM's default is -1).

:func:`moe_groups` builds them for a :class:`~ascend_conformance.topology.ParallelConfig` from the
reference layout (``topology.build_layout``): one ``torch.distributed`` group per group of each kind, every
rank creating every group in the same order. This is a thin stand-in for ``ascend_conformance.groups``;
swapping it means making :func:`moe_groups` return that module's coordinators, nothing else changes.
Groups are cached per configuration for the current test and forgotten when the harness destroys them.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness.context import register_cleanup
from ascend_conformance.topology import ParallelConfig, build_layout



def all_gather_tensor(output: torch.Tensor, input_: torch.Tensor, group) -> None:
    """torch 2.13 renamed the tensor form of all-gather (the old name warns); older torch (as shipped with
    torch_npu) has only the old one. Looked up per call, so wrappers of torch.distributed see it."""
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(output, input_, group=group)


def reduce_scatter_tensor(output: torch.Tensor, input_: torch.Tensor, group) -> None:
    """The tensor form of reduce-scatter under its new or old name (see :func:`all_gather_tensor`)."""
    (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(output, input_, group=group)


class Group:
    """One group this rank belongs to, with the GroupCoordinator collectives the MoE methods use."""

    def __init__(self, ranks: list[int], device_group):
        self.ranks = list(ranks)
        self.device_group = device_group
        self.world_size = len(self.ranks)
        self.rank_in_group = self.ranks.index(dist.get_rank())

    def all_gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Concatenation along `dim` in group-rank order (every rank passes the same shape)."""
        if self.world_size == 1:
            return tensor
        moved = tensor.movedim(dim, 0).contiguous()
        out = moved.new_empty((self.world_size * moved.shape[0], *moved.shape[1:]))
        all_gather_tensor(out, moved, group=self.device_group)
        return out.movedim(0, dim)

    def reduce_scatter(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Sum over the group; group rank r keeps chunk r of `dim` (divisible by the group size)."""
        if self.world_size == 1:
            return tensor
        moved = tensor.movedim(dim, 0).contiguous()
        if moved.shape[0] % self.world_size:
            raise ConfigError(f"reduce_scatter: dim {dim} of size {moved.shape[0]} is not divisible by the group "
                              f"size {self.world_size}")
        out = moved.new_empty((moved.shape[0] // self.world_size, *moved.shape[1:]))
        reduce_scatter_tensor(out, moved, group=self.device_group)
        return out.movedim(0, dim)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the group, out of place."""
        if self.world_size == 1:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, group=self.device_group)
        return out

    def __repr__(self) -> str:
        return f"Group(ranks={self.ranks}, rank_in_group={self.rank_in_group})"


@dataclasses.dataclass(frozen=True)
class MoEGroups:
    tp: Group
    dp: Group
    ep: Group
    mc2: Group  # same members and order as ep (vllm-ascend gives MC2 its own communicator)
    config: ParallelConfig


_cache: dict = {}


def _forget_groups() -> None:
    _cache.clear()  # the harness destroys every group a test created; never hand out a destroyed one


register_cleanup(_forget_groups)


def moe_groups(config: ParallelConfig) -> MoEGroups:
    """This rank's TP, DP and EP groups of `config` (collective on first use: every rank must call it)."""
    if config.pp != 1 or config.pcp != 1:
        raise ConfigError(f"the MoE methods run on one PP stage without PCP, got pp={config.pp} pcp={config.pcp}")
    if not dist.is_initialized() or dist.get_world_size() != config.world_size:
        raise ConfigError(f"moe_groups needs a torch.distributed world of {config.world_size} ranks, have "
                          f"{dist.get_world_size() if dist.is_initialized() else 'none'}")
    key = (config, id(dist.distributed_c10d._get_default_group()))
    if key not in _cache:
        layout = build_layout(config)
        me = dist.get_rank()
        mine = {}
        for kind in ("tp", "dp", "ep", "mc2"):
            for ranks in layout[kind]:
                # Every rank creates every group, in layout order, as torch.distributed requires.
                # torch.distributed orders a group by ascending global rank, which is the layout's order
                # on one PP stage without PCP; a group equal to the world reuses the default group.
                if ranks != sorted(ranks):
                    raise ConfigError(f"{kind} group {ranks} is not in ascending rank order")
                whole = ranks == list(range(config.world_size))
                handle = dist.group.WORLD if whole else dist.new_group(ranks)
                if me in ranks:
                    mine[kind] = Group(ranks, handle)
        _cache[key] = MoEGroups(mine["tp"], mine["dp"], mine["ep"], mine["mc2"], config)
    return _cache[key]
