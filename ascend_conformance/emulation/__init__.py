"""The emulated NPU: the NPU code path on a CPU host, with device semantics (``--platform npu-emulated``).

One concern per module, none of them aware of pytest or of the suite's harness:

* :mod:`~ascend_conformance.emulation.build` compiles the C++ extension (``csrc/npu_device.cpp``: the
  ``npu`` PrivateUse1 backend on host memory) once per torch and source, in a per-user cache;
* :mod:`~ascend_conformance.emulation.device` loads it and provides ``torch.npu`` (devices, streams,
  events, memory statistics of the emulated allocator);
* :mod:`~ascend_conformance.emulation.hccl` is the ``hccl`` process-group backend of ``npu`` tensors,
  over gloo on host copies.

:func:`install` does all three in a process (a rank of the ``npu-emulated`` platform). What the
emulation shows and what it cannot is in ``docs/emulation.md``.
"""
from __future__ import annotations

from ascend_conformance.emulation.build import BuildUnavailable, ensure_built, missing_tools
from ascend_conformance.emulation.device import configured_device_count, installed


def install(device_count: int | None = None):
    """The emulated ``npu`` device and its ``hccl`` backend in this process; returns ``torch.npu``."""
    from ascend_conformance.emulation import device, hccl

    module = device.install(device_count)
    hccl.register()
    return module


__all__ = ["BuildUnavailable", "configured_device_count", "ensure_built", "install", "installed", "missing_tools"]
