"""The op provider: torch_npu's MoE ops where they run, the golden models everywhere else.

``op_provider(device)`` returns one object with the torch_npu names the methods call
(``npu_moe_init_routing_v2``, ``npu_moe_token_permute``, ``npu_moe_token_unpermute``,
``npu_grouped_matmul``, ``npu_moe_distribute_dispatch_v2``, ``npu_moe_distribute_combine_v2``), and
``name`` ("torch_npu" or "golden"). torch_npu is used when it imports and the tensors live on an NPU; the
golden models (``ascend_conformance.golden``) otherwise, so on CPU the op path still runs — on an
independent implementation of each op.

One difference is bridged here: torch_npu's distribute ops take ``group_ep`` as the HCCL communicator
*name*, the golden models the ``ProcessGroup``. Callers always pass the ProcessGroup.
"""
from __future__ import annotations

import torch

from ascend_conformance import golden

OP_NAMES = ("npu_moe_init_routing_v2", "npu_moe_token_permute", "npu_moe_token_unpermute", "npu_grouped_matmul",
            "npu_moe_distribute_dispatch_v2", "npu_moe_distribute_combine_v2")


class GoldenOps:
    """The pure-torch models of docs/ops.md."""

    name = "golden"
    npu_moe_init_routing_v2 = staticmethod(golden.npu_moe_init_routing_v2)
    npu_moe_token_permute = staticmethod(golden.npu_moe_token_permute)
    npu_moe_token_unpermute = staticmethod(golden.npu_moe_token_unpermute)
    npu_grouped_matmul = staticmethod(golden.npu_grouped_matmul)
    npu_moe_distribute_dispatch_v2 = staticmethod(golden.npu_moe_distribute_dispatch_v2)
    npu_moe_distribute_combine_v2 = staticmethod(golden.npu_moe_distribute_combine_v2)


class TorchNpuOps:
    """torch_npu's ops; the distribute ops get the HCCL communicator name of the group they are given."""

    name = "torch_npu"

    def __init__(self):
        import torch_npu

        self._npu = torch_npu
        for op in OP_NAMES[:4]:
            setattr(self, op, getattr(torch_npu, op))

    @staticmethod
    def _hccl_name(group) -> str:
        import torch.distributed as dist

        return group._get_backend(torch.device("npu")).get_hccl_comm_name(dist.get_rank(group))

    def npu_moe_distribute_dispatch_v2(self, x, expert_ids, group_ep, *args, **kwargs):
        return self._npu.npu_moe_distribute_dispatch_v2(x, expert_ids, self._hccl_name(group_ep), *args, **kwargs)

    def npu_moe_distribute_combine_v2(self, expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                                      expert_scales, group_ep, *args, **kwargs):
        return self._npu.npu_moe_distribute_combine_v2(expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                                                       expert_scales, self._hccl_name(group_ep), *args, **kwargs)


def op_provider(device) -> GoldenOps | TorchNpuOps:
    """torch_npu's ops for tensors on an NPU when torch_npu imports, else the golden models."""
    from ascend_conformance.platform import torch_npu_import_error

    if torch.device(device).type == "npu" and torch_npu_import_error() is None:
        return TorchNpuOps()
    return GoldenOps()
