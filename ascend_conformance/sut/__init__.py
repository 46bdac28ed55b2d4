"""Systems under test: the real vLLM / vllm-ascend code the suite judges against its oracles.

The reference implementation (``topology``, ``groups``, ``moe``, ``shared_weight``, ``eplb``) is the
yardstick. A *system under test* (SUT) is a release of somebody else's code: vLLM's group construction
and EPLB, vllm-ascend's groups, MoE communication methods, layer sharding and EPLB policies. Each
adapter module here drives one SUT in one area and hands the suites what the oracles judge; the
adapters are thin and name the release they were written against.

    release.py           the pinned, matched vLLM / vllm-ascend pair the project installs, and why
    stack.py             what is installed here (host install or the project's), versions, installing the pair
    standin.py           the torch_npu stand-in (golden ops) for hosts without CANN; standin_site/ holds it

Every result of a SUT run is labelled with :class:`SystemUnderTest` (name, version, ops): ``ops`` is
``torch_npu`` when the real torch_npu ran the leaf ops and ``golden`` when the stand-in did.
"""
from __future__ import annotations

import dataclasses

REFERENCE = "reference"
VLLM = "vllm"
VLLM_ASCEND = "vllm_ascend"
NAMES = (REFERENCE, VLLM, VLLM_ASCEND)
# The command-line spelling (``--live vllm-ascend``, ``--sut vllm-ascend``) -> the name.
CLI_NAMES = {"reference": REFERENCE, "vllm": VLLM, "vllm-ascend": VLLM_ASCEND}


@dataclasses.dataclass(frozen=True)
class SystemUnderTest:
    """What a result was measured on: ``vllm_ascend 0.23.0.post1`` with ``golden`` ops, say."""

    name: str
    version: str
    ops: str  # "golden" | "torch_npu"

    @property
    def label(self) -> str:
        """``reference``, ``vllm 0.23.0``, ``vllm_ascend 0.23.0.post1``."""
        return self.name if self.name == REFERENCE else f"{self.name} {self.version}"
