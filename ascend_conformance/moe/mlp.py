"""The SwiGLU expert MLP of one EP rank, through grouped matmul (docs/moe.md).

Storage as vllm-ascend loads it: ``w13 [E, 2I, H]`` (gate rows first, then up), ``w2 [E, H, I]``. For the
rows of local expert g::

    h = x · w13[g]ᵀ            [rows, 2I]
    a = silu(h[:, :I]) · h[:, I:]   (computed in float32, rounded once, like npu_swiglu)
    y = a · w2[g]ᵀ             [rows, H]

The rows arrive grouped by local expert, with ``group_list`` (counts, type 1, or cumsum, type 0) saying
how many belong to each; rows past the sum are undefined on the way in and on the way out.
"""
from __future__ import annotations

import torch

from ascend_conformance.errors import ConfigError
from ascend_conformance.moe.placement import ExpertPlacement


class ExpertMLP:
    """The local experts of one rank: weights transposed once for ``npu_grouped_matmul`` ([G, K, N])."""

    def __init__(self, w13_local: torch.Tensor, w2_local: torch.Tensor, ops):
        if w13_local.dim() != 3 or w2_local.dim() != 3 or w13_local.shape[0] != w2_local.shape[0]:
            raise ConfigError(f"w13 must be [L, 2I, H] and w2 [L, H, I] for the same L, got "
                              f"{list(w13_local.shape)} and {list(w2_local.shape)}")
        local, two_i, hidden = w13_local.shape
        if two_i % 2 or list(w2_local.shape) != [local, hidden, two_i // 2]:
            raise ConfigError(f"w13 [L, 2I, H] = {list(w13_local.shape)} needs w2 [L, H, I] = "
                              f"[{local}, {hidden}, {two_i // 2}], got {list(w2_local.shape)}")
        self.num_local = local
        self.hidden = hidden
        self.intermediate = two_i // 2
        self.w13_t = w13_local.transpose(1, 2).contiguous()  # [L, H, 2I]
        self.w2_t = w2_local.transpose(1, 2).contiguous()  # [L, I, H]
        self.ops = ops

    @classmethod
    def for_rank(cls, w13: torch.Tensor, w2: torch.Tensor, placement: ExpertPlacement, rank: int, ops) -> "ExpertMLP":
        """The experts `rank` holds, taken from the global weights in local-id order."""
        index = torch.tensor(placement.local_experts(rank), device=w13.device)
        return cls(w13.index_select(0, index), w2.index_select(0, index), ops)

    def __call__(self, hidden: torch.Tensor, group_list: torch.Tensor, group_list_type: int = 1) -> torch.Tensor:
        group_list = group_list.to(torch.int64)
        if group_list.numel() != self.num_local:
            raise ConfigError(f"group_list must have one entry per local expert ({self.num_local}), "
                              f"got {group_list.numel()}")
        # split_item=2 / group_type=0: one output tensor, groups along the rows (vllm-ascend's call).
        h = self.ops.npu_grouped_matmul(x=[hidden], weight=[self.w13_t], group_list=group_list,
                                        group_list_type=group_list_type, split_item=2, group_type=0)[0]
        gate, up = h.float().split(self.intermediate, dim=1)
        activated = (torch.nn.functional.silu(gate) * up).to(hidden.dtype)
        return self.ops.npu_grouped_matmul(x=[activated], weight=[self.w2_t], group_list=group_list,
                                           group_list_type=group_list_type, split_item=2, group_type=0)[0]
