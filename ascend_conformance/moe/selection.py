"""Which method vllm-ascend runs a forward with: a pure function of the deployment and the batch.

docs/moe.md::

    no EP (EP size 1)  -> allgather
    A2                 -> mc2 when experts per device <= 24, EP >= 16 and tokens <= cap, else allgather
    A3                 -> mc2 when tokens <= cap, else alltoall
    cap = min(ceil(M / TP), 512) · TP      (M: the largest batch the runner is sized for)

Worked examples: A3, cap 512, 600 tokens -> alltoall; A2, EP 16, 16 experts per device, 100 tokens,
cap 512 -> mc2; A2, EP 8 -> allgather whatever the tokens.

What an installed vllm-ascend computes is never restated here: ``suites/test_sut_moe.py
test_mc2_tokens_capacity`` runs the release's own ``set_mc2_tokens_capacity`` against
:func:`mc2_tokens_capacity` (0.13 / 0.18 cap M at 512 before dividing by TP and differ when M > 512 and
TP > 1; 0.23 and main follow the rule).
"""
from __future__ import annotations

from ascend_conformance.errors import ConfigError, require_whole

SOCS = ("A2", "A3")
MC2_TOKENS_PER_RANK_LIMIT = 512
A2_MAX_EXPERTS_PER_DEVICE = 24
A2_MIN_EP_SIZE = 16


def mc2_tokens_capacity(max_num_tokens: int, tp_size: int) -> int:
    """cap = min(ceil(M / TP), 512) · TP."""
    require_whole("max_num_tokens", max_num_tokens, 0)
    require_whole("tp_size", tp_size, 1)
    return min(-(-max_num_tokens // tp_size), MC2_TOKENS_PER_RANK_LIMIT) * tp_size


def select_method(soc: str, ep_size: int, experts_per_device: int, num_tokens: int, cap: int) -> str:
    """"allgather", "mc2" or "alltoall" (the CLI / METHODS names) for one forward."""
    if soc not in SOCS:
        raise ConfigError(f"soc must be one of {', '.join(SOCS)}, got {soc!r}")
    require_whole("ep_size", ep_size, 1)
    require_whole("experts_per_device", experts_per_device, 1)
    require_whole("num_tokens", num_tokens, 0)
    require_whole("cap", cap, 0)
    if ep_size == 1:
        return "allgather"
    fits = num_tokens <= cap
    if soc == "A2":
        small_experts = experts_per_device <= A2_MAX_EXPERTS_PER_DEVICE and ep_size >= A2_MIN_EP_SIZE
        return "mc2" if small_experts and fits else "allgather"
    return "mc2" if fits else "alltoall"
