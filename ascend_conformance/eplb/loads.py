"""Synthetic expert loads for EPLB: token counts per (layer, expert) with a Zipf popularity.

Real MoE routing is skewed: a few experts take most tokens. A Zipf popularity models it: the k-th most
popular expert (k = 1..E) gets a share proportional to ``1 / k**exponent`` (exponent 0: uniform; 1.0 and 1.5
are the usual moderate and strong skews), and each layer has its own random popularity order. Two forms:

* :func:`zipf_loads` — the expected counts, ``1000·E`` tokens split exactly by the shares (deterministic
  apart from each layer's order): for placement tests that need a known skew;
* :func:`sampled_zipf_loads` — ``tokens · top_k`` routing choices drawn from the shares: the noisy counts
  a real batch gives, for benchmarks.

Worked example, 4 experts, exponent 1: shares 1 : 1/2 : 1/3 : 1/4 = 12 : 6 : 4 : 3 of 25, so 4000 tokens
split as 1920, 960, 640, 480, in a random order per layer.
"""
from __future__ import annotations

import torch


def zipf_popularity(num_experts: int, exponent: float) -> torch.Tensor:
    """float64 [E]: ``1 / k**exponent`` for k = 1..E (unnormalised, most popular first).

    >>> zipf_popularity(4, 1.0).tolist()
    [1.0, 0.5, 0.3333333333333333, 0.25]
    """
    return 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** exponent


def zipf_loads(num_layers: int, num_experts: int, exponent: float, seed: int = 0) -> torch.Tensor:
    """float64 [layers, E] token counts: the k-th most popular expert gets ~ 1/k**exponent of 1000·E tokens,
    with a different random popularity order per layer. exponent 0 gives uniform loads of 1000.

    >>> sorted(zipf_loads(1, 4, 1.0)[0].tolist(), reverse=True)
    [1920.0, 960.0, 640.0, 480.0]
    """
    generator = torch.Generator().manual_seed(seed)
    popularity = zipf_popularity(num_experts, exponent)
    tokens = (popularity / popularity.sum() * 1000 * num_experts).round()
    return torch.stack([tokens[torch.randperm(num_experts, generator=generator)] for _ in range(num_layers)])


def sampled_zipf_loads(num_layers: int, num_experts: int, exponent: float, tokens: int, top_k: int,
                       seed: int) -> torch.Tensor:
    """float64 [layers, E] token counts: ``tokens * top_k`` routing choices drawn from a popularity
    ~ 1/rank**exponent (exponent 0: uniform), the popularity order shuffled per layer.

    >>> loads = sampled_zipf_loads(2, 8, 1.5, tokens=64, top_k=2, seed=1)
    >>> loads.shape, loads.sum(dim=1).tolist()
    (torch.Size([2, 8]), [128.0, 128.0])
    """
    generator = torch.Generator().manual_seed(seed)
    popularity = zipf_popularity(num_experts, exponent)
    rows = []
    for _ in range(num_layers):
        probs = popularity[torch.randperm(num_experts, generator=generator)]
        picks = torch.multinomial(probs, tokens * top_k, replacement=True, generator=generator)
        rows.append(torch.bincount(picks, minlength=num_experts).to(torch.float64))
    return torch.stack(rows)
