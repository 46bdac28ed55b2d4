"""CPU implementations of the vllm-ascend custom ops (``torch.ops._C_ascend.*``) its unquantized MoE path
calls, registered with ``torch.library`` on the golden models while the torch_npu stand-in is active.

vllm-ascend ships some ops in its own C++ extension (``vllm_ascend_C``, built from ``csrc/`` with CANN)
rather than in torch_npu; an sdist unpacked as source has none of them. Only the ops the unquantized MoE
path reaches are registered here, each with the schema vllm-ascend declares and the semantics of the real
kernel; any other ``_C_ascend`` op stays missing and fails loudly where it is called.

* ``npu_moe_init_routing_custom``: what the A2/A3 device adaptor (``vllm_ascend/device/device_op.py``,
  ``BaseDeviceAdaptor.npu_moe_init_routing``) calls where the A5 adaptor calls
  ``torch_npu.npu_moe_init_routing_v2``. Contract: schema in vllm-ascend's ``csrc/torch_binding.cpp``
  (the same keywords as ``npu_moe_init_routing_v2``, ``int[2] active_expert_range=[]`` meaning all of
  ``expert_num``), output shapes in ``csrc/moe/moe_init_routing_custom/moe_init_routing_custom_torch_adpt.h``
  and the numpy reference in ``tests/e2e/.../test_moe_init_routing_custom.py``: dropless mode sorts the
  entries of ``[lo, hi)`` stably by expert, ``expanded_row_idx`` (row_idx_type 0) maps each entry to its
  row or -1, counts / cumsum per active expert -- :func:`ascend_conformance.golden.npu_moe_init_routing_v2`.

Registering is idempotent per process and never happens where the real extension is loaded (the
namespace then already has the op: the real kernel is used).
"""
from __future__ import annotations

import torch

NAMESPACE = "_C_ascend"

# name -> schema (as vllm-ascend's csrc/torch_binding.cpp declares it)
SCHEMAS = {
    "npu_moe_init_routing_custom": (
        "npu_moe_init_routing_custom(Tensor x, Tensor expert_idx, *, Tensor? scale=None, Tensor? offset=None, "
        "int active_num=-1, int expert_capacity=-1, int expert_num=-1, int drop_pad_mode=0, "
        "int expert_tokens_num_type=0, bool expert_tokens_num_flag=False, int quant_mode=0, "
        "int[2] active_expert_range=[], int row_idx_type=0) -> (Tensor, Tensor, Tensor, Tensor)"),
}

_library: list = []  # keeps the Library alive (dropping it unregisters the ops)


def _init_routing_custom(x, expert_idx, *, scale=None, offset=None, active_num=-1, expert_capacity=-1, expert_num=-1,
                         drop_pad_mode=0, expert_tokens_num_type=0, expert_tokens_num_flag=False, quant_mode=0,
                         active_expert_range=(), row_idx_type=0):
    from ascend_conformance import golden

    return tuple(golden.npu_moe_init_routing_v2(
        x, expert_idx, scale=scale, offset=offset, active_num=active_num, expert_capacity=expert_capacity,
        expert_num=expert_num, drop_pad_mode=drop_pad_mode, expert_tokens_num_type=expert_tokens_num_type,
        expert_tokens_num_flag=expert_tokens_num_flag, quant_mode=quant_mode,
        active_expert_range=list(active_expert_range), row_idx_type=row_idx_type))


IMPLEMENTATIONS = {"npu_moe_init_routing_custom": _init_routing_custom}


def registered() -> list[str]:
    """The ``_C_ascend`` ops this process resolves (real or stand-in)."""
    namespace = getattr(torch.ops, NAMESPACE)
    return [name for name in SCHEMAS if hasattr(namespace, name)]


def register() -> list[str]:
    """Register the CPU implementations of the ops not already present; return the names registered."""
    if _library:
        return []
    missing = [name for name in SCHEMAS if name not in registered()]
    if not missing:
        return []
    from ascend_conformance.emulation import installed as emulated_device_installed

    library = torch.library.Library(NAMESPACE, "FRAGMENT")
    for name in missing:
        library.define(SCHEMAS[name])
        # CPU: the stand-in runs where there is no NPU, so every tensor is a host tensor; on the emulated
        # device (PrivateUse1, named npu) the golden model takes its npu tensors as well.
        library.impl(name, IMPLEMENTATIONS[name], "CPU")
        if emulated_device_installed():
            library.impl(name, IMPLEMENTATIONS[name], "PrivateUse1")
    _library.append(library)
    return missing
