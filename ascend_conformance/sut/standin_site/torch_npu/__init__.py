"""The conformance suite's CPU stand-in for ``torch_npu`` (never the real thing).

Put first on ``sys.path`` by :func:`ascend_conformance.sut.standin.activate`, only inside runs of a
system under test on hosts where the real torch_npu cannot be imported. vllm-ascend's Python code then
imports this module: its ``npu_*`` ops are the golden models of ``ascend_conformance.golden`` (same
names and keywords), ``torch.npu`` is a device-less shim (no device: ``is_available()`` is False) whose
streams and events order nothing because CPU work is already ordered. An op without a golden model
raises AttributeError naming it, so a code path the stand-in cannot run fails loudly instead of
computing something else.
"""
from __future__ import annotations

import torch

from ascend_conformance.sut.standin import golden_op, npu_module

__standin__ = True  # platform detection refuses this module as a device runtime
__version__ = "0+conformance.standin"

npu = npu_module()
torch.npu = npu  # vllm-ascend annotates with torch.npu.Stream at import time


def __getattr__(name: str):
    return golden_op(name)
