"""What the suites of systems under test share: the world a SUT runs in.

A SUT run imports vLLM / vllm-ascend (and, without CANN, the torch_npu stand-in) into its ranks, and
those imports patch torch and stay for the life of the process; so a SUT's tests run on warm pools of
their own, never on the pools the reference suites use.
"""
from __future__ import annotations

import pytest

from ascend_conformance.sut import lines, stack


def sut_world(world, sut: str, n: int, timeout: float | None = None, variant: str = ""):
    """``world(n)`` on the warm pools kept for ``sut`` (``"vllm"`` or ``"vllm_ascend"``); a ``variant``
    (e.g. the device type a stand-in emulates, fixed for the life of a rank) gets pools of its own."""
    return world(n, timeout=timeout, pool=f"{sut}-{variant}" if variant else sut)


def need_stack(sut: str) -> None:
    """Skip the calling test, with the stack's own reason, when ``sut`` is not importable here."""
    reason = stack.unavailable_reason(sut)
    if reason:
        pytest.skip(reason)


def need_feature(adapter: str, sut: str, feature: str) -> None:
    """Skip the calling test when ``sut`` is missing, or as ``not in <release>: ...`` when the installed
    release lacks ``feature`` (what ``adapter``'s shim for its line declares; ascend_conformance/sut/lines.py).
    A shim that does not fit the release raises ShimMismatch: the test fails, a bug of the suite's own."""
    need_stack(sut)
    try:
        lines.check_feature(adapter, sut, feature)
    except lines.NotInRelease as exc:
        pytest.skip(str(exc))
