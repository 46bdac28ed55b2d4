"""Live parallel groups: a GroupCoordinator per group of a rank layout (docs/collectives.md).

:mod:`ascend_conformance.topology` says *which* ranks form each group; this module makes those groups
real inside a ``torch.distributed`` world and gives each one the collectives of vLLM's
``GroupCoordinator`` contract. It knows nothing about pytest: the suites, the benchmarks and the MoE /
EPLB reference code all use it the same way::

    layout = build_layout(ParallelConfig(world_size=8, tp=2, pp=2, dp=2))
    initialize_groups(layout)             # every rank, same layout: a collective
    tp = get_tp_group()                   # this rank's TP group
    y = tp.all_reduce(x)                  # sum over the TP group, out of place
    destroy_groups()                      # when done (a test harness also calls it after every test)

Two communicators per group
---------------------------
Each :class:`GroupCoordinator` holds a *device group* on the platform's backend (hccl / nccl; gloo on the
cpu platform) for tensor traffic, and a *CPU group* on gloo for host-side control: Python objects, tensor
metadata and barriers. Keeping control traffic off the device communicator matters on accelerators:
pickled objects and barriers on hccl / nccl would need device buffers, a host<->device copy and a stream
synchronisation for a few bytes, and a barrier on the device stream only orders device work, not the
host code around it.

Rank numbering
--------------
``ranks`` is the group's member list in group-rank order (as the layout gives it) and ``rank_in_group``
this process's index in it. Every peer argument of a collective (``src``, ``dst``, ``peer``) is a
*group-local* rank, as in vLLM; the properties ``first_rank``, ``last_rank``, ``next_rank`` and
``prev_rank`` are *global* ranks, as in vLLM. Worked example, world 8 DP2 PP2 TP2, PP group [1, 3] seen
from global rank 3::

    ranks = [1, 3]    rank_in_group = 1    world_size = 2
    first_rank = 1    last_rank = 3        is_last_rank = True
    next_rank = 1     prev_rank = 1        (global ranks; the ring wraps around)
    send(t)           sends to group rank (1 + 1) % 2 = 0, i.e. global rank 1

``torch.distributed.new_group`` numbers a group's members by ascending global rank whatever order it is
given, so a layout whose group lists ranks in another order would make the collectives' order (torch's)
differ from ``rank_in_group`` (the layout's). Every group of docs/layout.md is ascending, and
:func:`initialize_groups` refuses any other order rather than silently reordering results.

Groups of one
-------------
A group with a single member (e.g. ``pcp`` when PCP = 1, ``flashcomm2_odp`` when TP = o) returns the
input object itself from every collective without communicating, as vLLM does; torch groups are still
created for it so every rank creates the same sequence of groups.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from ascend_conformance import platform as platforms
from ascend_conformance.errors import ConfigError

# torch 2.13 renamed the tensor forms of all-gather / reduce-scatter (the old names warn); the torch that
# ships with torch_npu on NPU hosts may predate the new names.
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class GroupLookupError(LookupError):
    """A group was asked for that this rank does not have (not initialised, unknown kind, not a member)."""


@dataclasses.dataclass(frozen=True)
class P2P:
    """One point-to-point operation for :meth:`GroupCoordinator.batch_isend_irecv`.

    ``peer`` is a group-local rank. Build with ``P2P.send(tensor, peer)`` / ``P2P.recv(buffer, peer)``.
    """

    op: str  # "send" or "recv"
    tensor: torch.Tensor
    peer: int

    @classmethod
    def send(cls, tensor: torch.Tensor, peer: int) -> "P2P":
        return cls("send", tensor, peer)

    @classmethod
    def recv(cls, tensor: torch.Tensor, peer: int) -> "P2P":
        return cls("recv", tensor, peer)


@dataclasses.dataclass(frozen=True)
class _TensorMetadata:
    """What a receiver must know to allocate a tensor before receiving it."""

    dtype: torch.dtype
    shape: tuple
    on_device: bool  # True: travels over the device group; False: a host tensor, over the CPU group


def _current_device() -> torch.device:
    plat = platforms.get()
    if plat.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(plat.device_type, getattr(torch, plat.device_type).current_device())


def _destroy_if_alive(group) -> None:
    # The caller (or a test harness cleaning up after a test) may have destroyed the group already;
    # destroying it twice raises.
    if group is None or group is dist.GroupMember.NON_GROUP_MEMBER or not dist.is_initialized():
        return
    if group in dist.distributed_c10d._world.pg_map:
        dist.destroy_process_group(group)


class GroupCoordinator:
    """One parallel group as this rank sees it: members, a device group, a CPU group, collectives.

    Build through :func:`initialize_groups` (or :meth:`create` for a single kind). All collectives are
    called by every member of the group; a member that skips one deadlocks the others.

    Args:
        name: the group kind (``"tp"``, ``"ep"``, ...), for messages.
        ranks: members in group-rank order (ascending global ranks).
        device_group: ``torch.distributed`` group on the platform backend, for tensors.
        cpu_group: gloo group over the same ranks, for objects, metadata and barriers.
    """

    def __init__(self, name: str, ranks: Sequence[int], device_group, cpu_group):
        self.name = name
        self.ranks = [int(r) for r in ranks]
        self.device_group = device_group
        self.cpu_group = cpu_group
        self.rank = dist.get_rank()
        if self.rank not in self.ranks:
            raise GroupLookupError(f"rank {self.rank} is not a member of {name} group {self.ranks}")
        self.rank_in_group = self.ranks.index(self.rank)
        self.world_size = len(self.ranks)
        self.device = _current_device()

    @classmethod
    def create(cls, name: str, group_ranks: Sequence[Sequence[int]],
               backend: str | None = None) -> "GroupCoordinator | None":
        """Create the torch groups of every group in ``group_ranks`` (a collective: every rank of the
        world calls it with the same lists) and return this rank's coordinator, or None when it is in
        none of them.

        torch.distributed requires every rank to call ``new_group`` for every group, members or not,
        in the same order: group creation allocates a world-wide group id and rendezvouses through the
        store under it, so a rank that skips one call shifts every later group onto another's key.
        """
        backend = backend or platforms.get().backend
        me = dist.get_rank()
        mine = None
        for ranks in group_ranks:
            ranks = [int(r) for r in ranks]
            device_group = dist.new_group(ranks, backend=backend)
            cpu_group = dist.new_group(ranks, backend="gloo")
            if me in ranks:
                mine = cls(name, ranks, device_group, cpu_group)
        return mine

    # -- positions (global ranks, as vLLM) -------------------------------------------------------

    @property
    def first_rank(self) -> int:
        return self.ranks[0]

    @property
    def last_rank(self) -> int:
        return self.ranks[-1]

    @property
    def is_first_rank(self) -> bool:
        return self.rank == self.first_rank

    @property
    def is_last_rank(self) -> bool:
        return self.rank == self.last_rank

    @property
    def next_rank(self) -> int:
        """Global rank of the next member, wrapping around (the ring successor)."""
        return self.ranks[(self.rank_in_group + 1) % self.world_size]

    @property
    def prev_rank(self) -> int:
        """Global rank of the previous member, wrapping around (the ring predecessor)."""
        return self.ranks[(self.rank_in_group - 1) % self.world_size]

    def __repr__(self) -> str:
        return (f"GroupCoordinator({self.name}, ranks={self.ranks}, rank_in_group={self.rank_in_group}, "
                f"device={self.device})")

    # -- helpers ---------------------------------------------------------------------------------

    def _global(self, group_rank: int, what: str) -> int:
        if not isinstance(group_rank, int) or isinstance(group_rank, bool) or not 0 <= group_rank < self.world_size:
            raise ConfigError(f"{what} {group_rank!r} is not a group rank of {self.name} group {self.ranks} "
                              f"(0..{self.world_size - 1})")
        return self.ranks[group_rank]

    def _peer(self, group_rank: int, what: str) -> int:
        peer = self._global(group_rank, what)
        if peer == self.rank:
            raise ConfigError(f"{what} {group_rank} is this rank's own group rank in {self.name} group "
                              f"{self.ranks}: a rank cannot send to or receive from itself")
        return peer

    def _dim(self, tensor: torch.Tensor, dim: int, op: str) -> int:
        if tensor.dim() == 0:
            raise ConfigError(f"{op} on {self.name}: needs a tensor with at least one dimension, got a scalar")
        if not -tensor.dim() <= dim < tensor.dim():
            raise ConfigError(f"{op} on {self.name}: dim {dim} is out of range for shape {tuple(tensor.shape)}")
        return dim % tensor.dim()

    def _sizes(self, sizes: Sequence[int], op: str) -> list[int]:
        sizes = [int(s) for s in sizes]
        if len(sizes) != self.world_size or any(s < 0 for s in sizes):
            raise ConfigError(f"{op} on {self.name}: sizes {sizes} must be {self.world_size} non-negative "
                              f"numbers, one per group rank")
        return sizes

    def _gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every member's (same-shape, contiguous) ``tensor`` stacked as [world_size, *shape].

        The tensor all-gather wants its output as one flat [world_size * rows, ...] tensor (gloo checks
        the shape), which is the stack above viewed differently.
        """
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        flat = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_tensor(flat, tensor, group=self.device_group)
        return flat.view(self.world_size, *tensor.shape)

    # -- collectives -----------------------------------------------------------------------------

    def all_reduce(self, input_: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce ``input_`` over the group into a new tensor; ``input_`` is left unchanged.

        Out of place because callers (vLLM's TP linear layers) keep using their partial result.
        """
        if self.world_size == 1:
            return input_
        output = input_.clone()
        dist.all_reduce(output, op=op, group=self.device_group)
        return output

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate every member's ``input_`` along ``dim`` in group-rank order.

        Example, TP group [2, 3], ``dim=0``: rank 2 holds [[1, 2]], rank 3 [[3, 4]]; both get
        [[1, 2], [3, 4]]. Every member passes the same shape.
        """
        if self.world_size == 1:
            return input_
        dim = self._dim(input_, dim, "all_gather")
        if dim == 0:
            # Member-major concatenation along dim 0 is exactly the flat gather output: no reshaping
            # (this path is the hot one; every avoided op is host time per collective).
            flat = input_.new_empty((self.world_size * input_.shape[0], *input_.shape[1:]))
            _all_gather_tensor(flat, input_.contiguous(), group=self.device_group)
            return flat
        gathered = self._gather_rows(input_.contiguous())
        shape = list(input_.shape)
        shape[dim] *= self.world_size
        # [world_size, *shape] -> fold the member axis into `dim`, member-major.
        return gathered.movedim(0, dim).reshape(shape)

    def reduce_scatter(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Sum over the group, then group rank r keeps chunk r of ``dim`` (its size divided by the
        group size; not divisible is a :class:`ConfigError` naming both).

        Example, group of 2, ``dim=0``, both ranks pass [1, 2, 3, 4]: rank 0 gets [2, 4], rank 1 [6, 8].
        """
        if self.world_size == 1:
            return input_
        dim = self._dim(input_, dim, "reduce_scatter")
        if input_.shape[dim] % self.world_size:
            raise ConfigError(
                f"reduce_scatter on {self.name} group of size {self.world_size}: dim {dim} has size "
                f"{input_.shape[dim]}, which is not divisible by {self.world_size}")
        moved = input_.movedim(dim, 0).contiguous() if dim else input_.contiguous()
        output = moved.new_empty((moved.shape[0] // self.world_size, *moved.shape[1:]))
        _reduce_scatter_tensor(output, moved, group=self.device_group)
        return output.movedim(0, dim).contiguous() if dim else output

    def all_gatherv(self, input_: torch.Tensor, sizes: Sequence[int], dim: int = 0) -> torch.Tensor:
        """:meth:`all_gather` where group rank r contributes ``sizes[r]`` entries along ``dim``.

        Example, group of 3, sizes [2, 0, 1]: the result has 3 rows, rank 0's two then rank 2's one.

        torch.distributed has no portable variable-size all-gather (the list form with unequal sizes
        is backend-specific), so every rank pads its part to ``max(sizes)`` rows, one fixed-size
        all-gather runs, and the padding is cut away: one collective on every backend.
        """
        sizes = self._sizes(sizes, "all_gatherv")
        dim = self._dim(input_, dim, "all_gatherv")
        if input_.shape[dim] != sizes[self.rank_in_group]:
            raise ConfigError(
                f"all_gatherv on {self.name}: group rank {self.rank_in_group} passes {input_.shape[dim]} "
                f"entries along dim {dim} but sizes[{self.rank_in_group}] = {sizes[self.rank_in_group]} "
                f"(sizes {sizes})")
        if self.world_size == 1:
            return input_
        moved = input_.movedim(dim, 0)
        widest = max(sizes)
        padded = moved.new_zeros((widest, *moved.shape[1:]))
        padded[: moved.shape[0]] = moved
        gathered = self._gather_rows(padded)
        parts = [gathered[r, : sizes[r]] for r in range(self.world_size)]
        return torch.cat(parts).movedim(0, dim).contiguous()

    def reduce_scatterv(self, input_: torch.Tensor, sizes: Sequence[int], dim: int = 0) -> torch.Tensor:
        """Sum over the group, then group rank r keeps the ``sizes[r]`` entries of ``dim`` starting at
        ``sum(sizes[:r])``; ``sum(sizes)`` must equal the size of ``dim`` (else :class:`ConfigError`).

        Example, group of 2, sizes [3, 1], both pass [1, 2, 3, 4]: rank 0 gets [2, 4, 6], rank 1 [8].
        Padded to ``max(sizes)`` per chunk for the same reason as :meth:`all_gatherv` (zero padding
        adds nothing to the sums and is cut away).
        """
        sizes = self._sizes(sizes, "reduce_scatterv")
        dim = self._dim(input_, dim, "reduce_scatterv")
        if sum(sizes) != input_.shape[dim]:
            raise ConfigError(
                f"reduce_scatterv on {self.name}: sizes {sizes} sum to {sum(sizes)} but dim {dim} has "
                f"{input_.shape[dim]} entries")
        if self.world_size == 1:
            return input_
        moved = input_.movedim(dim, 0)
        widest = max(sizes)
        padded = moved.new_zeros((self.world_size, widest, *moved.shape[1:]))
        for r, chunk in enumerate(moved.split(sizes)):
            padded[r, : sizes[r]] = chunk
        output = moved.new_empty((widest, *moved.shape[1:]))
        _reduce_scatter_tensor(output, padded.flatten(0, 1), group=self.device_group)
        return output[: sizes[self.rank_in_group]].movedim(0, dim).contiguous()

    def gather(self, input_: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        """Concatenation of every member's ``input_`` along ``dim`` on group rank ``dst``; None on the
        other members (they only send)."""
        if self.world_size == 1:
            return input_
        dst_global = self._global(dst, "gather dst")
        dim = self._dim(input_, dim, "gather")
        if self.rank == dst_global:
            parts = [torch.empty_like(input_) for _ in range(self.world_size)]
            dist.gather(input_.contiguous(), parts, dst=dst_global, group=self.device_group)
            return torch.cat(parts, dim=dim)
        dist.gather(input_.contiguous(), None, dst=dst_global, group=self.device_group)
        return None

    def broadcast(self, input_: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``input_`` on every member with group rank ``src``'s (in place; returns it)."""
        if self.world_size == 1:
            return input_
        dist.broadcast(input_, src=self._global(src, "broadcast src"), group=self.device_group)
        return input_

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Group rank ``src``'s picklable ``obj`` on every member (over the CPU group: pickles are
        host bytes)."""
        if self.world_size == 1:
            return obj
        holder = [obj if self.rank_in_group == src else None]
        dist.broadcast_object_list(holder, src=self._global(src, "broadcast_object src"), group=self.cpu_group)
        return holder[0]

    def send(self, tensor: torch.Tensor, dst: int | None = None) -> None:
        """Send ``tensor`` to group rank ``dst`` (default: the next member, ring order)."""
        dst = (self.rank_in_group + 1) % self.world_size if dst is None else dst
        dist.send(tensor.contiguous(), dst=self._peer(dst, "send dst"), group=self.device_group)

    def recv(self, size: Sequence[int], dtype: torch.dtype, src: int | None = None) -> torch.Tensor:
        """Receive a tensor of ``size`` and ``dtype`` from group rank ``src`` (default: the previous
        member, ring order)."""
        src = (self.rank_in_group - 1) % self.world_size if src is None else src
        buffer = torch.empty(tuple(size), dtype=dtype, device=self.device)
        dist.recv(buffer, src=self._peer(src, "recv src"), group=self.device_group)
        return buffer

    def send_tensor_dict(self, tensor_dict: Mapping[str, Any], dst: int | None = None) -> None:
        """Send a dict of tensors and plain values to group rank ``dst`` (default: next member).

        The receiver must allocate each tensor before receiving it, so the keys, dtypes and shapes
        (and every non-tensor value) go first as one pickled object over the CPU group; then each
        tensor is sent in key order: device tensors over the device group, host tensors over the
        CPU group. Empty tensors are described but not sent.
        """
        dst = (self.rank_in_group + 1) % self.world_size if dst is None else dst
        dst_global = self._peer(dst, "send_tensor_dict dst")
        metadata, tensors = [], []
        for key, value in tensor_dict.items():
            if isinstance(value, torch.Tensor):
                on_device = value.device.type != "cpu" or self.device.type == "cpu"
                metadata.append((key, _TensorMetadata(value.dtype, tuple(value.shape), on_device)))
                if value.numel():
                    tensors.append((value.contiguous(), on_device))
            else:
                metadata.append((key, value))
        dist.send_object_list([metadata], dst=dst_global, group=self.cpu_group)
        for tensor, on_device in tensors:
            dist.send(tensor, dst=dst_global, group=self.device_group if on_device else self.cpu_group)

    def recv_tensor_dict(self, src: int | None = None) -> dict[str, Any]:
        """Receive what :meth:`send_tensor_dict` sent from group rank ``src`` (default: previous)."""
        src = (self.rank_in_group - 1) % self.world_size if src is None else src
        src_global = self._peer(src, "recv_tensor_dict src")
        holder = [None]
        dist.recv_object_list(holder, src=src_global, group=self.cpu_group)
        result: dict[str, Any] = {}
        for key, value in holder[0]:
            if isinstance(value, _TensorMetadata):
                device = self.device if value.on_device else torch.device("cpu")
                tensor = torch.empty(value.shape, dtype=value.dtype, device=device)
                if tensor.numel():
                    dist.recv(tensor, src=src_global, group=self.device_group if value.on_device else self.cpu_group)
                result[key] = tensor
            else:
                result[key] = value
        return result

    def all_to_all_single(self, input_: torch.Tensor, input_split_sizes: Sequence[int] | None = None,
                          output_split_sizes: Sequence[int] | None = None) -> torch.Tensor:
        """Exchange rows (dim 0): group rank r sends its ``input_split_sizes[j]`` rows to group rank j
        and receives ``output_split_sizes[j]`` rows from each j, concatenated in group-rank order.

        Without split sizes the rows divide evenly. Both or neither must be given: a receiver cannot
        know how many rows arrive unless told (MoE dispatch exchanges the counts first).

        Example, group of 2: rank 0 sends splits [1, 2] of [a, b, c], rank 1 splits [0, 1] of [d];
        rank 0 receives [a] (output splits [1, 0]), rank 1 receives [b, c, d] (output splits [2, 1]).
        """
        if (input_split_sizes is None) != (output_split_sizes is None):
            raise ConfigError(f"all_to_all_single on {self.name}: give both input_split_sizes and "
                              f"output_split_sizes or neither (got {input_split_sizes} and {output_split_sizes})")
        rows = input_.shape[0] if input_.dim() else 0
        if input_split_sizes is None:
            if rows % self.world_size:
                raise ConfigError(f"all_to_all_single on {self.name} group of size {self.world_size}: "
                                  f"{rows} rows are not divisible by {self.world_size}; pass split sizes")
            if self.world_size == 1:
                return input_
            output = torch.empty_like(input_)
            dist.all_to_all_single(output, input_.contiguous(), group=self.device_group)
            return output
        send = self._sizes(input_split_sizes, "all_to_all_single input_split_sizes")
        receive = self._sizes(output_split_sizes, "all_to_all_single output_split_sizes")
        if sum(send) != rows:
            raise ConfigError(f"all_to_all_single on {self.name}: input_split_sizes {send} sum to {sum(send)} "
                              f"but the input has {rows} rows")
        if self.world_size == 1:
            if receive != send:
                raise ConfigError(f"all_to_all_single on {self.name} group of one: output_split_sizes "
                                  f"{receive} must equal input_split_sizes {send}")
            return input_
        output = input_.new_empty((sum(receive), *input_.shape[1:]))
        dist.all_to_all_single(output, input_.contiguous(), output_split_sizes=receive,
                               input_split_sizes=send, group=self.device_group)
        return output

    def batch_isend_irecv(self, ops: Sequence[P2P]) -> list:
        """Start every send / receive of ``ops`` (group-local peers) together; returns the works to
        ``wait()`` on. Posting them as one batch lets a pair of ranks exchange in both directions
        without ordering their sends and receives (EPLB weight redistribution does exactly that)."""
        p2p_ops = []
        for op in ops:
            if op.op not in ("send", "recv"):
                raise ConfigError(f"batch_isend_irecv on {self.name}: op must be 'send' or 'recv', got {op.op!r}")
            function = dist.isend if op.op == "send" else dist.irecv
            p2p_ops.append(dist.P2POp(function, op.tensor, self._peer(op.peer, f"batch_isend_irecv {op.op} peer"),
                                      group=self.device_group))
        return dist.batch_isend_irecv(p2p_ops) if p2p_ops else []

    def barrier(self) -> None:
        """Block until every member reaches it (on the CPU group: it orders host code, not device
        streams; synchronise the device first when device work must be finished too)."""
        if self.world_size == 1:
            return
        dist.barrier(group=self.cpu_group)

    def destroy(self) -> None:
        """Destroy both torch groups (idempotent)."""
        _destroy_if_alive(self.device_group)
        _destroy_if_alive(self.cpu_group)
        self.device_group = self.cpu_group = None


# -- the groups of a layout ---------------------------------------------------------------------

_coordinators: dict[str, GroupCoordinator | None] | None = None


def _validated(layout: Mapping[str, Sequence[Sequence[int]]], world_size: int) -> dict[str, list[list[int]]]:
    """The layout as plain lists, or ConfigError on what torch.distributed cannot build."""
    clean: dict[str, list[list[int]]] = {}
    for kind, groups in layout.items():
        seen: dict[int, list[int]] = {}
        clean[kind] = []
        for group in groups:
            ranks = [int(r) for r in group]
            if not ranks:
                raise ConfigError(f"{kind} has an empty group")
            outside = [r for r in ranks if not 0 <= r < world_size]
            if outside:
                raise ConfigError(f"{kind} group {ranks} holds ranks {outside} outside the world 0..{world_size - 1}")
            if ranks != sorted(set(ranks)):
                raise ConfigError(
                    f"{kind} group {ranks} is not in ascending rank order without repeats: torch.distributed "
                    f"numbers group ranks by ascending global rank, so collectives would not follow this order")
            for r in ranks:
                if r in seen:
                    raise ConfigError(f"rank {r} is in two {kind} groups, {seen[r]} and {ranks}: a rank has "
                                      f"at most one group per kind")
                seen[r] = ranks
            clean[kind].append(ranks)
    return clean


def _check_same_layout_everywhere(layout: dict[str, list[list[int]]]) -> None:
    """Fail loudly (instead of deadlocking in new_group) when ranks were given different layouts."""
    digest = hashlib.sha256(json.dumps(list(layout.items())).encode()).hexdigest()[:16]
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ConfigError(f"initialize_groups got a different layout on ranks {differing} than on rank 0: every "
                          f"rank must pass the same layout")


def initialize_groups(layout: Mapping[str, Sequence[Sequence[int]]], backend: str | None = None) -> None:
    """Create a GroupCoordinator for every group of ``layout`` (``{kind: [[ranks], ...]}``, e.g.
    ``topology.build_layout(config)``) and remember this rank's one per kind.

    A collective over the whole world: every rank calls it with the same layout, and every rank creates
    every group of every kind in layout order (device group, then CPU group, per group), members or not,
    as torch.distributed requires. A rank outside every group of a kind (possible only for kinds that
    cover part of the world) has no coordinator for it; :func:`get_group` says so.
    """
    global _coordinators
    if _coordinators is not None:
        raise RuntimeError(f"groups are already initialised ({', '.join(_coordinators)}); call destroy_groups() first")
    if not dist.is_initialized():
        raise RuntimeError("initialize_groups needs an initialised torch.distributed world")
    clean = _validated(layout, dist.get_world_size())
    _check_same_layout_everywhere(clean)
    built: dict[str, GroupCoordinator | None] = {}
    try:
        for kind, groups in clean.items():
            built[kind] = GroupCoordinator.create(kind, groups, backend)
    except BaseException:
        for coordinator in built.values():
            if coordinator is not None:
                coordinator.destroy()
        raise
    _coordinators = built


def groups_initialized() -> bool:
    return _coordinators is not None


def group_kinds() -> tuple[str, ...]:
    """The kinds of the initialised layout, in layout order (empty when none is initialised)."""
    return tuple(_coordinators or ())


def get_group(kind: str) -> GroupCoordinator:
    """This rank's group of ``kind``; :class:`GroupLookupError` when there is none."""
    if _coordinators is None:
        raise GroupLookupError(f"no groups are initialised: call initialize_groups(layout) first (asked for {kind})")
    if kind not in _coordinators:
        raise GroupLookupError(f"the initialised layout has no {kind} groups (kinds: {', '.join(_coordinators)})")
    coordinator = _coordinators[kind]
    if coordinator is None:
        raise GroupLookupError(f"rank {dist.get_rank()} is in no {kind} group of the layout")
    return coordinator


def get_world_group() -> GroupCoordinator:
    return get_group("world")


def get_tp_group() -> GroupCoordinator:
    return get_group("tp")


def get_pcp_group() -> GroupCoordinator:
    return get_group("pcp")


def get_pp_group() -> GroupCoordinator:
    return get_group("pp")


def get_dp_group() -> GroupCoordinator:
    return get_group("dp")


def get_ep_group() -> GroupCoordinator:
    return get_group("ep")


def get_mc2_group() -> GroupCoordinator:
    return get_group("mc2")


def get_dynamic_eplb_group() -> GroupCoordinator:
    return get_group("dynamic_eplb")


def get_fc3_quant_x_group() -> GroupCoordinator:
    return get_group("fc3_quant_x")


def get_otp_group() -> GroupCoordinator:
    return get_group("otp")


def get_lmhead_tp_group() -> GroupCoordinator:
    return get_group("lmheadtp")


def get_embed_tp_group() -> GroupCoordinator:
    return get_group("emtp")


def get_mlp_tp_group() -> GroupCoordinator:
    return get_group("mlptp")


def get_flashcomm2_otp_group() -> GroupCoordinator:
    return get_group("flashcomm2_otp")


def get_flashcomm2_odp_group() -> GroupCoordinator:
    return get_group("flashcomm2_odp")


def get_shard_weight_group() -> GroupCoordinator:
    return get_group("shard_weight")


def get_p_tp_group() -> GroupCoordinator:
    return get_group("p_tp")


def destroy_groups() -> None:
    """Destroy every group :func:`initialize_groups` built (idempotent). A script calls it when done; the
    pytest harness calls it after every test (``harness/reference_state.py``), so no group outlives the
    test that made it."""
    global _coordinators
    coordinators, _coordinators = _coordinators, None
    for coordinator in (coordinators or {}).values():
        if coordinator is not None:
            coordinator.destroy()
