"""The dense oracle of docs/moe.md, independent of every method.

    out[n] = Σ_k topk_weights[n, k] · MLP_{topk_ids[n, k]}(x[n])

computed in float32 from the same (possibly 16-bit) inputs: every expert's SwiGLU MLP applied to every
token with dense einsums (no sorting, no grouping, no communication), then the K chosen outputs of each
token gathered and weighted. Cost E·N·3·H·I multiply-adds: meant for the small shapes of the suites.
"""
from __future__ import annotations

import torch

from ascend_conformance.errors import ConfigError


def dense_moe(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, w13: torch.Tensor,
              w2: torch.Tensor) -> torch.Tensor:
    """float32 [N, H]: the MoE output of every token over all experts (global w13 [E, 2I, H], w2 [E, H, I])."""
    tokens, hidden = x.shape
    experts, two_i, _ = w13.shape
    if list(w2.shape) != [experts, hidden, two_i // 2] or w13.shape[2] != hidden:
        raise ConfigError(f"oracle: w13 [E, 2I, H] {list(w13.shape)} and w2 [E, H, I] {list(w2.shape)} do not fit "
                          f"x [N, H] {list(x.shape)}")
    if list(topk_ids.shape) != list(topk_weights.shape) or topk_ids.shape[0] != tokens:
        raise ConfigError(f"oracle: topk_ids {list(topk_ids.shape)} and topk_weights {list(topk_weights.shape)} "
                          f"must both be [{tokens}, K]")
    intermediate = two_i // 2
    h = torch.einsum("nh,eih->eni", x.float(), w13.float())  # [E, N, 2I]
    activated = torch.nn.functional.silu(h[..., :intermediate]) * h[..., intermediate:]
    every_expert = torch.einsum("eni,ehi->enh", activated, w2.float())  # [E, N, H]
    chosen = every_expert[topk_ids.long(), torch.arange(tokens).unsqueeze(1)]  # [N, K, H]
    return (chosen * topk_weights.float().unsqueeze(-1)).sum(dim=1)
