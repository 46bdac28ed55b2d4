"""The ``hccl`` process-group backend of the emulated device: collectives of ``npu`` tensors over gloo.

``register()`` makes ``dist.init_process_group("hccl")`` and ``dist.new_group(..., backend="hccl")``
create an :class:`HcclGroup`: a ``torch.distributed.ProcessGroup`` subclass (the way torch's own
threaded test group plugs in; c10d's ``Backend`` has no Python constructor) holding a gloo group on the
same store. Every collective copies its ``npu`` tensors to the host, runs gloo there and copies the
result back into them, so a world of emulated devices computes what an HCCL world computes::

    dist.init_process_group("hccl", store=store, rank=rank, world_size=2)
    t = torch.full((2,), rank + 1.0, device=f"npu:{rank}")
    dist.all_reduce(t)                       # t == [3., 3.] on npu:0 and npu:1

As with HCCL, the group takes ``npu`` tensors only: a CPU tensor is refused in one line naming the op
(object collectives and ``barrier`` use ``npu`` tensors, as torch does for a group of one device type).
Where HCCL does more than gloo, the difference is made up on the host: an all-gather into chunks of
unequal first dimensions (HCCL gathers them, gloo refuses) pads to the longest chunk and cuts back; a
reduce-scatter is an all-reduce of the whole input of which each rank keeps its chunk; an all-to-all of
tensor lists is one ``all_to_all_single`` of their flattened concatenation.

Collectives complete before they return (the work handle is already done); sends and receives are
posted to gloo and finish in ``wait()`` (a receive copies into its ``npu`` tensor there), so a
``batch_isend_irecv`` in any order completes as it does on HCCL. What is not emulated: HCCL's timing,
its ports (the ``HCCL_*`` port variables are set and read by nobody), its buffer sizes and its limits.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future
from torch.futures import Future

BACKEND = "hccl"


def _done(result=None) -> dist.Work:
    future = Future()
    future.set_result(result)
    return _create_work_from_future(future)


def _split_sizes(sizes) -> list[int]:
    """Split sizes as HCCL's binding takes them: any sequence of integers (vllm-ascend hands numpy arrays),
    None or empty for equal splits."""
    return [] if sizes is None else [int(size) for size in sizes]


class _PostedWork(dist.Work):
    """A gloo send / receive in flight; ``wait`` finishes it (and copies a received tensor back)."""

    def __init__(self, work, finish=None):
        super().__init__()
        self._work, self._finish, self._finished = work, finish, False

    def wait(self, timeout=None) -> bool:
        if not self._finished:
            self._work.wait() if timeout is None else self._work.wait(timeout)
            if self._finish is not None:
                self._finish()
            self._finished = True
        return True

    def is_completed(self) -> bool:
        return self._finished

    def is_success(self) -> bool:
        return self._finished

    def get_future(self):
        self.wait()
        return _done().get_future()


class HcclGroup(dist.ProcessGroup):
    """A process group of emulated ``npu`` devices, its transport a gloo group on host copies."""

    def __init__(self, store, rank: int, size: int, timeout):
        super().__init__(rank, size)
        self._rank, self._size = rank, size
        self._gloo = dist.ProcessGroupGloo(dist.PrefixStore("emulated-hccl/", store), rank, size, timeout)

    # --- identity -----------------------------------------------------------------------------------
    def getBackendName(self) -> str:
        return BACKEND

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    # c10d keeps a group's name and description on its backends, and this group has none of c10d's.
    def _set_group_name(self, name: str) -> None:
        self._name = name

    @property
    def group_name(self) -> str:
        return getattr(self, "_name", "")

    def _set_group_desc(self, desc: str) -> None:
        self._desc = desc

    @property
    def group_desc(self) -> str:
        return getattr(self, "_desc", "")

    @property
    def _device_types(self):
        return [torch.device("npu")]  # object collectives and barrier then use npu tensors, as on HCCL

    def shutdown(self) -> None:
        self._gloo = None

    def abort(self) -> None:
        self._gloo = None

    # --- helpers ------------------------------------------------------------------------------------
    def _transport(self, op: str):
        if self._gloo is None:
            raise RuntimeError(f"hccl (emulated) {op}: the process group was shut down")
        return self._gloo

    @staticmethod
    def _check(op: str, tensor: torch.Tensor) -> None:
        if tensor.device.type != "npu":
            raise RuntimeError(f"hccl (emulated) {op}: tensors must be on an npu device, got one on {tensor.device} "
                               f"(shape {tuple(tensor.shape)}, {tensor.dtype})")

    @staticmethod
    def _host(op: str, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of an npu tensor (what gloo sends)."""
        HcclGroup._check(op, tensor)
        return tensor.detach().to("cpu").contiguous()

    @staticmethod
    def _host_empty(op: str, tensor: torch.Tensor) -> torch.Tensor:
        """A host buffer for what gloo receives into an npu tensor."""
        HcclGroup._check(op, tensor)
        return torch.empty(tensor.shape, dtype=tensor.dtype)

    # --- collectives --------------------------------------------------------------------------------
    def allreduce(self, tensors, opts=None):
        opts = opts if opts is not None else dist.AllreduceOptions()
        hosts = [self._host("all_reduce", t) for t in tensors]
        self._transport("all_reduce").allreduce(hosts, opts).wait()
        for tensor, host in zip(tensors, hosts):
            tensor.copy_(host)
        return _done(tensors)

    def allreduce_coalesced(self, tensors, opts=None):
        for tensor in tensors:
            self.allreduce([tensor], _allreduce_options(opts))
        return _done(tensors)

    def broadcast(self, tensors, opts=None):
        opts = opts if opts is not None else dist.BroadcastOptions()
        hosts = [self._host("broadcast", t) for t in tensors]
        self._transport("broadcast").broadcast(hosts, opts).wait()
        for tensor, host in zip(tensors, hosts):
            tensor.copy_(host)
        return _done(tensors)

    def reduce(self, tensors, opts=None):
        opts = opts if opts is not None else dist.ReduceOptions()
        hosts = [self._host("reduce", t) for t in tensors]
        self._transport("reduce").reduce(hosts, opts).wait()
        if self._rank == opts.rootRank:
            for tensor, host in zip(tensors, hosts):
                tensor.copy_(host)
        return _done(tensors)

    def allgather(self, output_lists, inputs, opts=None):
        for outputs, tensor in zip(output_lists, inputs):
            self._allgather_one(outputs, tensor)
        return _done(output_lists)

    def _allgather_one(self, outputs, tensor) -> None:
        if len(outputs) != self._size:
            raise RuntimeError(f"hccl (emulated) all_gather: {len(outputs)} output tensors for a group of "
                               f"{self._size}")
        host = self._host("all_gather", tensor)
        for out in outputs:
            self._host_empty("all_gather", out)
        if {tuple(out.shape) for out in outputs} == {tuple(tensor.shape)}:
            gathered = [torch.empty_like(host) for _ in outputs]
            self._transport("all_gather").allgather([gathered], [host]).wait()
            for out, part in zip(outputs, gathered):
                out.copy_(part)
            return
        # HCCL gathers chunks of unequal first dimension (tensor_split chunks); gloo does not: pad, cut back.
        if len({tuple(out.shape[1:]) for out in outputs} | {tuple(tensor.shape[1:])}) != 1:
            raise RuntimeError(f"hccl (emulated) all_gather: chunks may differ only in their first dimension, "
                               f"got {sorted({tuple(out.shape) for out in outputs})} and input "
                               f"{tuple(tensor.shape)}")
        longest = max(out.shape[0] for out in outputs)
        padded = torch.zeros((longest, *host.shape[1:]), dtype=host.dtype)
        padded[:host.shape[0]] = host
        gathered = [torch.empty_like(padded) for _ in outputs]
        self._transport("all_gather").allgather([gathered], [padded]).wait()
        for out, part in zip(outputs, gathered):
            out.copy_(part[:out.shape[0]])

    def allgather_coalesced(self, output_lists, inputs, opts=None):
        return self.allgather(output_lists, inputs, opts)

    def all_gather_single(self, output, tensor, opts=None):
        if output.shape[0] != tensor.shape[0] * self._size or output.shape[1:] != tensor.shape[1:]:
            raise RuntimeError(f"hccl (emulated) all_gather_into_tensor: output {tuple(output.shape)} is not "
                               f"{self._size} x input {tuple(tensor.shape)}")
        self._allgather_one(list(output.chunk(self._size)), tensor)
        return _done([output])

    _allgather_base = all_gather_single

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        for output, tensor in zip(outputs, inputs):
            self.all_gather_single(output, tensor, opts)
        return _done(outputs)

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def reduce_scatter(self, outputs, input_lists, opts=None):
        for output, inputs in zip(outputs, input_lists):
            if len(inputs) != self._size:
                raise RuntimeError(f"hccl (emulated) reduce_scatter: {len(inputs)} input tensors for a group of "
                                   f"{self._size}")
            if any(t.shape != output.shape for t in inputs):
                raise RuntimeError(f"hccl (emulated) reduce_scatter: every input must have the output's shape "
                                   f"{tuple(output.shape)}, got {[tuple(t.shape) for t in inputs]}")
            self._reduce_scatter_flat(output, torch.stack([self._host("reduce_scatter", t) for t in inputs]),
                                      opts)
        return _done(outputs)

    def reduce_scatter_single(self, output, tensor, opts=None):
        if tensor.shape[0] != output.shape[0] * self._size or tensor.shape[1:] != output.shape[1:]:
            raise RuntimeError(f"hccl (emulated) reduce_scatter_tensor: input {tuple(tensor.shape)} is not "
                               f"{self._size} x output {tuple(output.shape)}")
        self._reduce_scatter_flat(output, self._host("reduce_scatter", tensor), opts)
        return _done([output])

    _reduce_scatter_base = reduce_scatter_single

    def _reduce_scatter_flat(self, output, host, opts) -> None:
        self._host_empty("reduce_scatter", output)
        reduce_opts = dist.AllreduceOptions()
        if opts is not None:
            reduce_opts.reduceOp = opts.reduceOp
        self._transport("reduce_scatter").allreduce([host], reduce_opts).wait()
        output.copy_(host.reshape(self._size, *output.shape)[self._rank])

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        for output, tensor in zip(outputs, inputs):
            self.reduce_scatter_single(output, tensor, opts)
        return _done(outputs)

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    def all_to_all_single(self, output, tensor, output_split_sizes, input_split_sizes, opts=None):
        host = self._host("all_to_all_single", tensor)
        received = self._host_empty("all_to_all_single", output)
        self._transport("all_to_all_single").alltoall_base(
            received, host, _split_sizes(output_split_sizes), _split_sizes(input_split_sizes),
            opts if opts is not None else dist.AllToAllOptions()).wait()
        output.copy_(received)
        return _done([output])

    alltoall_base = all_to_all_single

    def alltoall(self, outputs, inputs, opts=None):
        if len(outputs) != self._size or len(inputs) != self._size:
            raise RuntimeError(f"hccl (emulated) all_to_all: {len(inputs)} inputs and {len(outputs)} outputs for "
                               f"a group of {self._size}")
        if len({t.dtype for t in (*outputs, *inputs)}) != 1:
            raise RuntimeError(f"hccl (emulated) all_to_all: tensors of one dtype, got "
                               f"{sorted({str(t.dtype) for t in (*outputs, *inputs)})}")
        flat_in = torch.cat([self._host("all_to_all", t).reshape(-1) for t in inputs])
        for out in outputs:
            self._host_empty("all_to_all", out)
        flat_out = torch.empty(sum(out.numel() for out in outputs), dtype=flat_in.dtype)
        self._transport("all_to_all").alltoall_base(
            flat_out, flat_in, [out.numel() for out in outputs], [t.numel() for t in inputs],
            dist.AllToAllOptions()).wait()
        for out, part in zip(outputs, flat_out.split([out.numel() for out in outputs])):
            out.copy_(part.reshape(out.shape))
        return _done(outputs)

    def gather(self, output_lists, inputs, opts=None):
        opts = opts if opts is not None else dist.GatherOptions()
        hosts = [self._host("gather", t) for t in inputs]
        receive = [[self._host_empty("gather", out) for out in outputs] for outputs in output_lists]
        self._transport("gather").gather(receive, hosts, opts).wait()
        for outputs, parts in zip(output_lists, receive):
            for out, part in zip(outputs, parts):
                out.copy_(part)
        return _done(output_lists)

    def scatter(self, outputs, input_lists, opts=None):
        opts = opts if opts is not None else dist.ScatterOptions()
        receive = [self._host_empty("scatter", out) for out in outputs]
        sends = [[self._host("scatter", t) for t in inputs] for inputs in input_lists]
        self._transport("scatter").scatter(receive, sends, opts).wait()
        for out, part in zip(outputs, receive):
            out.copy_(part)
        return _done(outputs)

    def barrier(self, opts=None):
        self._transport("barrier").barrier(dist.BarrierOptions()).wait()
        return _done()

    # --- point to point -----------------------------------------------------------------------------
    def send(self, tensors, dst: int, tag: int = 0):
        hosts = [self._host("send", t) for t in tensors]
        return _PostedWork(self._transport("send").send(hosts, dst, tag))  # `hosts` lives in the work

    def recv(self, tensors, src: int, tag: int = 0):
        hosts = [self._host_empty("recv", t) for t in tensors]

        def finish():
            for tensor, host in zip(tensors, hosts):
                tensor.copy_(host)

        return _PostedWork(self._transport("recv").recv(hosts, src, tag), finish)

    def recv_anysource(self, tensors, tag: int = 0):
        hosts = [self._host_empty("recv", t) for t in tensors]

        def finish():
            for tensor, host in zip(tensors, hosts):
                tensor.copy_(host)

        return _PostedWork(self._transport("recv").recv_anysource(hosts, tag), finish)

    def __repr__(self) -> str:
        return f"HcclGroup(emulated, rank {self._rank} of {self._size})"


def _allreduce_options(opts) -> dist.AllreduceOptions:
    single = dist.AllreduceOptions()
    if opts is not None:
        single.reduceOp = opts.reduceOp
    return single


def _create(store, rank: int, size: int, timeout) -> HcclGroup:
    return HcclGroup(store, rank, size, timeout)


def register() -> None:
    """Make ``hccl`` the backend of ``npu`` tensors in this process (idempotent)."""
    if BACKEND.upper() in dist.Backend._plugins:
        return
    dist.Backend.register_backend(BACKEND, _create, devices=["npu"])
