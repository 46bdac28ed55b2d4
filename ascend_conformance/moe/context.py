"""The forward context of one MoE forward, explicit (vllm-ascend keeps it in a global; here it is a value).

docs/moe.md::

    num_tokens_across_dp   tokens of every DP rank, DP-rank order
    max_tokens_across_dp   max of it
    padded_num_tokens      ceil(max_tokens_across_dp / TP) · TP
    mc2_mask               bool [padded_num_tokens], True on the first num_tokens entries

Example: DP ranks hold [5, 0, 3] tokens, TP 2, on DP rank 2: max 5, padded 6,
mc2_mask = [T, T, T, F, F, F].

:func:`forward_context` builds it from the counts (pure); :func:`gather_forward_context` first all-gathers
this rank's count over the DP group (collective: every DP rank must call it, also with 0 tokens).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ascend_conformance.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    num_tokens: int
    num_tokens_across_dp: tuple[int, ...]
    max_tokens_across_dp: int
    padded_num_tokens: int
    mc2_mask: torch.Tensor
    dp_rank: int
    tp_size: int


def forward_context(num_tokens_across_dp: Sequence[int], dp_rank: int, tp_size: int, device=None) -> ForwardContext:
    """The context of DP rank `dp_rank` given every DP rank's token count."""
    counts = tuple(int(n) for n in num_tokens_across_dp)
    if not counts or any(n < 0 for n in counts):
        raise ConfigError(f"num_tokens_across_dp must list >= 0 tokens per DP rank, got {list(counts)}")
    if not 0 <= dp_rank < len(counts):
        raise ConfigError(f"dp_rank {dp_rank} is outside 0..{len(counts) - 1} (num_tokens_across_dp {list(counts)})")
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ConfigError(f"tp_size must be a whole number >= 1, got {tp_size!r}")
    num_tokens = counts[dp_rank]
    max_tokens = max(counts)
    padded = -(-max_tokens // tp_size) * tp_size
    mask = torch.arange(padded, device=device) < num_tokens
    return ForwardContext(num_tokens, counts, max_tokens, padded, mask, dp_rank, tp_size)


def gather_forward_context(num_tokens: int, dp_group, tp_size: int, device=None) -> ForwardContext:
    """All-gather `num_tokens` over the DP group (a GroupCoordinator-like object) and build the context, its
    count and mask on `device` (default: the group's device, where its collectives run)."""
    if device is None:
        device = getattr(dp_group, "device", None)
    if dp_group.world_size == 1:
        return forward_context([num_tokens], 0, tp_size, device)
    everyone = dp_group.all_gather(torch.tensor([num_tokens], dtype=torch.int64, device=device), dim=0)
    return forward_context(everyone.tolist(), dp_group.rank_in_group, tp_size, device)
