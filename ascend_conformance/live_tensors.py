"""Which tensor storages a process holds: the memory checks of the weight-sharding suites count bytes
from the storages themselves, so a copy kept anywhere — in a closure, a cache, a window nobody frees —
is counted, whatever the allocator says.

    with new_objects_only():              # the scan sees objects created in the block
        before = live_storages()          # hold it: the tensors keep their addresses from being reused
        layers = build(...)
        new_storage_sizes(before, torch.float32)   # -> sorted byte counts of the new float32 storages

A scan walks every object gc tracks. With vLLM and its libraries loaded that is ~600 000 objects and 1-2 s
per scan, so the scans run inside :func:`new_objects_only`, which moves every object that exists when it
starts to gc's permanent generation for the block (and back after). What is created inside the block
— layers, weights, windows — is all the checks look for; a tensor object made before the block that was
given a new storage inside it would be missed, which the checks' layers never are.
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def new_objects_only() -> Iterator[None]:
    """Within the block, :func:`live_storages` sees only objects created in it."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def live_storages() -> dict:
    """``data_ptr -> (nbytes, a tensor keeping it alive)`` of every non-empty storage of a reachable tensor."""
    gc.collect()
    out = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            if storage.nbytes() and storage.data_ptr():
                out[storage.data_ptr()] = (storage.nbytes(), obj)
    return out


def new_storage_sizes(before: dict, dtype: torch.dtype, device=None) -> list[int]:
    """Sorted sizes of the storages of ``dtype`` tensors live now that were not in ``before``. One dtype
    counts (the weights'): a collective's metadata exchange leaves uint8 / int64 tensors its communicator
    frees a little later. With ``device``, only storages on that device count (the weights' device: a
    transport's host copies, e.g. the emulated hccl's staging copies that gloo's worker thread may still
    hold for a moment after a broadcast completes, are not device storage)."""
    device = None if device is None else torch.device(device)
    return sorted(nbytes for ptr, (nbytes, t) in live_storages().items()
                  if ptr not in before and t.dtype == dtype and (device is None or t.device == device))


__all__ = ["new_objects_only", "live_storages", "new_storage_sizes"]
