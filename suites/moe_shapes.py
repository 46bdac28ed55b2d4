"""The layouts and model sizes both MoE method suites run (``test_moe_methods``, ``test_moe_paths``).

Layouts are (world, DP, TP) with EP = the world and one PP stage: every world from 1 to 8 ranks, pure DP and
DP x TP. The sizes are tiny on CPU (8 gloo ranks share 2 cores); on an NPU the real MC2 ops need the hidden
size in [1024, 8192] (A3) or a multiple of 32 (A2), and so do the systems under test on the emulated NPU.
"""
from __future__ import annotations

from ascend_conformance import platform as platforms

LAYOUTS = [(1, 1, 1), (2, 2, 1), (2, 1, 2), (4, 4, 1), (4, 2, 2), (8, 4, 2)]  # (world, DP, TP)
# Sizes every SoC's MC2 ops take: H 1024 is in A3's [1024, 8192] and a multiple of 32 for A2.
MC2_SIZES, CPU_SIZES = (1024, 256), (8, 4)
HIDDEN, INTERMEDIATE = MC2_SIZES if platforms.get().name == "npu" else CPU_SIZES
# The systems under test apply the MC2 ops' documented limits on an NPU and on the emulated one, whose
# torch_npu stand-in emulates the SoC of the test's device type (suites/test_sut_moe.py).
MC2_LIMITED_PLATFORMS = ("npu", "npu-emulated")
SUT_HIDDEN, SUT_INTERMEDIATE = MC2_SIZES if platforms.get().name in MC2_LIMITED_PLATFORMS else CPU_SIZES


def layout_id(layout) -> str:
    """The pytest id of a layout, e.g. ``w4-dp2tp2`` for (4, 2, 2)."""
    world, dp, tp = layout
    return f"w{world}-dp{dp}tp{tp}"
