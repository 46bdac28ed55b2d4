"""The storage counter behind the weight-sharding memory checks (ascend_conformance/live_tensors.py)."""
from __future__ import annotations

import gc

import torch

from ascend_conformance.live_tensors import live_storages, new_objects_only, new_storage_sizes


def test_a_storage_kept_anywhere_is_counted_once_and_a_freed_one_is_not():
    with new_objects_only():
        before = live_storages()
        kept = {"closure": (lambda t: lambda: t)(torch.zeros(4, 4))}  # held only through a closure
        view = torch.ones(8)[2:4]  # a view: its whole 8-float storage counts
        assert new_storage_sizes(before, torch.float32) == [32, 64]
        assert new_storage_sizes(before, torch.int64) == []
        assert new_storage_sizes(before, torch.float32, device="cpu") == [32, 64]
        assert new_storage_sizes(before, torch.float32, device="meta") == []  # only the given device counts
        del kept, view
        assert new_storage_sizes(before, torch.float32) == []


def test_the_scan_sees_only_objects_made_in_the_block_and_gc_is_restored_after():
    made_before = torch.zeros(16)
    with new_objects_only():
        before = live_storages()
        assert made_before.untyped_storage().data_ptr() not in before
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert made_before.untyped_storage().data_ptr() in live_storages()
