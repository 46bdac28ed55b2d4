"""The layouts and model sizes both MoE method suites run (``test_moe_methods``, ``test_moe_paths``).

Layouts are (world, DP, TP) with EP = the world and one PP stage: every world from 1 to 8 ranks, pure DP and
DP x TP. The sizes are tiny on CPU (8 gloo ranks share 2 cores); on an NPU the real MC2 ops need the hidden
size in [1024, 8192] (A3) or a multiple of 32 (A2).
"""
from __future__ import annotations

from ascend_conformance import platform as platforms

LAYOUTS = [(1, 1, 1), (2, 2, 1), (2, 1, 2), (4, 4, 1), (4, 2, 2), (8, 4, 2)]  # (world, DP, TP)
HIDDEN, INTERMEDIATE = (1024, 256) if platforms.get().name == "npu" else (8, 4)


def layout_id(layout) -> str:
    """The pytest id of a layout, e.g. ``w4-dp2tp2`` for (4, 2, 2)."""
    world, dp, tp = layout
    return f"w{world}-dp{dp}tp{tp}"
