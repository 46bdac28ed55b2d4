"""vLLM's EPLB placement policies as a system under test: the *EPLB* adapter of vLLM.

Every line from vLLM 0.13 to 0.27 registers one policy, ``"default"``
(``vllm.distributed.eplb.policy.EPLB_POLICIES``): ``DefaultEplbPolicy``, a port of DeepSeek's EPLB that the
EPLB state calls as ``policy.rebalance_experts(weight [L, E], num_replicas, num_groups, num_nodes,
num_ranks[, old_global_expert_indices [L, R]])``. What moved between lines is in the shims
(``ascend_conformance/sut/shims/vllm_eplb/``): 0.13 is DeepSeek's torch code, returns ``(phy2log,
log2phy, logcnt)`` and takes no old placement; 0.18 is a numpy port that still returns the triple; from 0.23
the policy returns ``phy2log`` only and ``vllm.distributed.eplb.eplb_state.compute_logical_maps`` derives
``log2phy`` (slots in ascending order) and ``logcnt``. With ``old_global_expert_indices`` (0.18 on) the
policy post-processes the placement (``preserve_intragpu_slots``): inside each rank, experts that stay keep
their old slot.

What it computes in: 0.13 in torch float32, as DeepSeek. From 0.18 the loads become float32
(``weight.float()``), but numpy divides float32 loads by int64 replica counts in float64 and accumulates
the pack loads in a float64 array, so near-ties (two candidates within float32 rounding) can go the other
way than in DeepSeek's float32 code (docs/eplb.md, *Ties*). Equal keys are sorted by numpy's default
(quick)sort, whose order among them is unspecified.

:func:`run_cases` runs in a rank (it imports vLLM, which a SUT's warm pool keeps to itself); the suites
judge its results in the parent against :mod:`ascend_conformance.eplb`. Nothing here knows pytest.

Example of a case and its result (E = 4, R = 4 on 2 ranks)::

    {"policy": "default", "weight": tensor([[40., 30., 20., 10.]]), "num_replicas": 4, "num_groups": 1,
     "num_nodes": 1, "num_ranks": 2}
    -> {"phy2log": tensor([[0, 3, 1, 2]]), "log2phy": tensor([[[0], [2], [3], [1]]]),
        "logcnt": tensor([[1, 1, 1, 1]])}
"""
from __future__ import annotations

import torch

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import VLLM, bringup, lines

SUT = VLLM
ADAPTER = "vllm_eplb"  # its shims: ascend_conformance/sut/shims/vllm_eplb/
CASE_KEYS = ("policy", "weight", "num_replicas", "num_groups", "num_nodes", "num_ranks")


def label() -> str:
    """``vllm 0.23.0``: the installed release, as results name it."""
    return bringup.label(SUT)


def _environment():
    # vLLM decides its platform from VLLM_TARGET_DEVICE at import; the launcher variables are what a
    # worker would have (restored afterwards), the target device the rank's. Outside a world (a policy asked
    # in the calling process) nothing runs on a device: vLLM's EPLB computes placements on the host.

    import torch.distributed as dist

    overrides = bringup.launch_variables() if dist.is_initialized() else {"VLLM_TARGET_DEVICE": "cpu"}
    return bringup.launcher_environment(overrides)


def policies() -> dict:
    """``{name: policy class}`` as the installed release registers them (``EPLB_POLICIES``)."""
    with _environment():
        from vllm.distributed.eplb.policy import EPLB_POLICIES

        return dict(EPLB_POLICIES)


def shim():
    """The shim of the installed release's line (``ascend_conformance/sut/shims/vllm_eplb/``)."""
    return lines.shim(ADAPTER, SUT)


def place(policy: str, weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
          num_ranks: int, old_phy2log: torch.Tensor | None = None) -> dict:
    """The placement ``policy`` computes, with the release's own ``log2phy`` / ``logcnt``.

    Returns ``{"phy2log": [L, R], "log2phy": [L, E, maxcnt], "logcnt": [L, E]}`` (int64 CPU tensors).
    """
    registered = policies()
    if policy not in registered:
        raise ConfigError(f"{label()} has no EPLB policy {policy!r}; it registers {sorted(registered)}")
    with _environment():
        phy2log, log2phy, logcnt = shim().place(registered[policy], weight, num_replicas, num_groups, num_nodes,
                                                num_ranks, old_phy2log)
    return {name: torch.as_tensor(value).to(torch.int64)
            for name, value in (("phy2log", phy2log), ("log2phy", log2phy), ("logcnt", logcnt))}


def run_cases(cases: list[dict]) -> list[dict]:
    """In a rank: :func:`place` for every case (keys :data:`CASE_KEYS`, optional ``old_phy2log``). Whatever
    the release raises propagates: a crash, never a verdict."""
    results = []
    for case in cases:
        missing = [key for key in CASE_KEYS if key not in case]
        if missing:
            raise ConfigError(f"EPLB case lacks {missing}: {sorted(case)}")
        results.append(place(*(case[key] for key in CASE_KEYS), old_phy2log=case.get("old_phy2log")))
    return results


__all__ = ["SUT", "ADAPTER", "CASE_KEYS", "label", "shim", "policies", "place", "run_cases"]
