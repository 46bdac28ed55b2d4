"""Which shapes the real MC2 ops take: torch_npu's documented limits of the distribute ops, as one table.

``npu_moe_distribute_dispatch_v2`` / ``npu_moe_distribute_combine_v2`` (what the MC2 method calls) accept
far less than the golden models do: bfloat16 / float16 only, at least one token per rank, and SoC-specific
EP sizes, hidden sizes, batch sizes and experts per rank. The golden models (docs/ops.md) take every shape
the methods produce, so on CPU every scenario still runs; where torch_npu runs the ops, a scenario outside
the documented limits is skipped (the CLI refuses it) with the rule's reason instead of failing in the op.

What the ops see of one MC2 forward (:meth:`MC2Shape.of`; the method pads every DP rank to
``padded_num_tokens`` and splits it over TP, so every EP rank sends the same batch):

    dtype     x's dtype
    batch     BS = ceil(max tokens per DP rank / TP)
    hidden    H
    top_k     K
    ep_size   ep_world_size: the world (EP = the world in the scenarios)
    experts   moe_expert_num as passed: the placement's slots P * L_max (E for the contiguous placement)

Worked example: mc2, world 4 = DP 2 x TP 2, E 16 contiguous, K 2, tokens per DP rank [3, 7], H 1024,
bfloat16 -> BS ceil(7 / 2) = 4, EP 4, 16 experts (4 per rank). A3 takes it; A2 does not (its EP sizes
start at 16, i.e. an EP group across servers):

    >>> s = Scenario(method="mc2", world_size=4, dp=2, tp=2, experts=16, top_k=2, tokens=7, hidden=1024,
    ...              intermediate=256, dtype="bfloat16", seed=0, tokens_per_dp=(3, 7))
    >>> MC2Shape.of(s)
    MC2Shape(dtype='bfloat16', batch=4, hidden=1024, top_k=2, ep_size=4, experts=16)
    >>> mc2_unsupported_reason(s, "A3") is None
    True
    >>> print(mc2_unsupported_reason(s, "A2"))
    the A2 MC2 ops do not take this shape: ep_world_size 4 is not one of 16, 32, 64, 128, 256 (the EP group \
spans servers of 8 NPUs) [torch_npu.npu_moe_distribute_dispatch_v2 / combine_v2: ep_world_size]
    >>> mc2_unsupported_reason(s, None) is None   # the golden models: no limit
    True

The rules follow torch_npu's API reference pages "torch_npu.npu_moe_distribute_dispatch_v2" and
"torch_npu.npu_moe_distribute_combine_v2" (Ascend op-plugin, docs/context/), with the default ``comm_alg``
"" the method passes: on A2 that is the "fullmesh" algorithm (unless HCCL_INTRA_PCIE_ENABLE=1 and
HCCL_INTRA_ROCE_ENABLE=0), whose limits are the tighter ones. Where releases of those pages differ (A2's EP
sizes, A3's hidden size: only 7168 for the v1 ops), the table keeps the v2 page the ops suite was written
against; a release that accepts more is then under-tested, never falsely failed. Not checked here: the
HCCL_BUFFSIZE minimum (an environment setting; the suites' shapes need a few MB of the 200 MB default) and
the TP-domain and shared-expert arguments (the method passes neither).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ascend_conformance.errors import ConfigError
from ascend_conformance.moe.scenario import DTYPES, Scenario

DISPATCH_COMBINE = "torch_npu.npu_moe_distribute_dispatch_v2 / combine_v2"
SOCS = ("A2", "A3")


@dataclasses.dataclass(frozen=True)
class MC2Shape:
    """The arguments of one dispatch / combine call the limits are about (every EP rank sends ``batch``)."""

    dtype: str
    batch: int
    hidden: int
    top_k: int
    ep_size: int
    experts: int

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch", "hidden", "top_k", "ep_size", "experts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"MC2Shape {name} must be a whole number >= 0, got {value!r}")

    @property
    def local_experts(self) -> float:
        return self.experts / self.ep_size if self.ep_size else float("inf")

    @classmethod
    def of(cls, scenario: Scenario) -> "MC2Shape":
        """The shape the MC2 method hands the ops for `scenario` (see the module docstring)."""
        batch = -(-max(scenario.token_counts()) // scenario.tp)
        return cls(scenario.dtype, batch, scenario.hidden, scenario.top_k, scenario.world_size,
                   scenario.expert_placement().num_slots)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One documented limit: on `socs`, `holds(shape)` or the ops refuse the call, saying `explain(shape)`.
    `source` names the documented parameter or shape variable the limit comes from."""

    name: str
    socs: tuple[str, ...]
    holds: Callable[[MC2Shape], bool]
    explain: Callable[[MC2Shape], str]
    source: str


A2_EP_SIZES = (16, 32, 64, 128, 256)

# One table: every limit of the real ops on the shapes the MC2 method produces. Each source names the
# parameter / shape variable of torch_npu's pages "torch_npu.npu_moe_distribute_dispatch_v2" and
# "torch_npu.npu_moe_distribute_combine_v2" (op-plugin docs/context/) that states it.
RULES: tuple[Rule, ...] = (
    Rule("dtype", SOCS, lambda s: s.dtype in ("bfloat16", "float16"),
         lambda s: f"x is {s.dtype} (bfloat16 or float16 only)", "x / expand_x data type"),
    Rule("batch_positive", SOCS, lambda s: s.batch >= 1,
         lambda s: f"BS {s.batch}: every EP rank must send at least one token (0 < BS)", "shape variable BS"),
    Rule("batch_max_a2", ("A2",), lambda s: s.batch <= 256,
         lambda s: f"BS {s.batch} > 256", "shape variable BS"),
    Rule("batch_max_a3", ("A3",), lambda s: s.batch <= 512,
         lambda s: f"BS {s.batch} > 512", "shape variable BS"),
    Rule("top_k", SOCS, lambda s: 1 <= s.top_k <= min(16, s.experts),
         lambda s: f"K {s.top_k} outside 0 < K <= min(16, moe_expert_num {s.experts})", "shape variable K"),
    Rule("ep_size_a2", ("A2",), lambda s: s.ep_size in A2_EP_SIZES,
         lambda s: f"ep_world_size {s.ep_size} is not one of {', '.join(map(str, A2_EP_SIZES))} (the EP group "
                   f"spans servers of 8 NPUs)", "ep_world_size"),
    Rule("ep_size_a3", ("A3",), lambda s: 2 <= s.ep_size <= 768,
         lambda s: f"ep_world_size {s.ep_size} outside [2, 768]", "ep_world_size"),
    Rule("experts_range", SOCS, lambda s: 1 <= s.experts <= 1024,
         lambda s: f"moe_expert_num {s.experts} outside [1, 1024]", "moe_expert_num"),
    Rule("experts_per_rank", SOCS, lambda s: s.ep_size >= 1 and s.experts % s.ep_size == 0,
         lambda s: f"moe_expert_num {s.experts} is not a multiple of ep_world_size {s.ep_size}", "moe_expert_num"),
    Rule("local_experts_a2", ("A2",), lambda s: s.local_experts <= 24,
         lambda s: f"{s.local_experts:g} experts per rank > 24", "moe_expert_num"),
    Rule("hidden_a2", ("A2",), lambda s: 0 < s.hidden <= 7168 and s.hidden % 32 == 0,
         lambda s: f"H {s.hidden} is not a multiple of 32 in (0, 7168]", "shape variable H"),
    Rule("hidden_a3", ("A3",), lambda s: 1024 <= s.hidden <= 8192,
         lambda s: f"H {s.hidden} outside [1024, 8192]", "shape variable H"),
)


def violated_rules(shape: MC2Shape, soc: str) -> list[Rule]:
    """The rules of `soc` that `shape` breaks, in table order."""
    return [rule for rule in RULES if soc in rule.socs and not rule.holds(shape)]


def mc2_unsupported_reason(scenario_or_shape: Scenario | MC2Shape, soc: str | None) -> str | None:
    """None when the MC2 ops of `soc` take the shape, else one line naming every limit it breaks and
    where each is documented. `soc` is "A2" / "A3" as :func:`soc_of_version` names them, None where the
    golden models run the ops (no limit); any other SoC has no documented MC2 support."""
    if soc is None:
        return None
    shape = scenario_or_shape if isinstance(scenario_or_shape, MC2Shape) else None
    if isinstance(scenario_or_shape, Scenario):
        shape = MC2Shape.of(scenario_or_shape)
    if shape is None:
        raise ConfigError(f"mc2_unsupported_reason takes a Scenario or an MC2Shape, got "
                          f"{type(scenario_or_shape).__name__}")
    if soc not in SOCS:
        return (f"{DISPATCH_COMBINE} are documented for Atlas A2 and A3 only, this device is {soc} "
                f"[product support]")
    broken = violated_rules(shape, soc)
    if not broken:
        return None
    sources = sorted({rule.source for rule in broken}, key=[r.source for r in RULES].index)
    return (f"the {soc} MC2 ops do not take this shape: {'; '.join(rule.explain(shape) for rule in broken)} "
            f"[{DISPATCH_COMBINE}: {', '.join(sources)}]")


# -- which SoC's limits apply ---------------------------------------------------------------------

def soc_of_version(soc_version: int) -> str:
    """torch_npu's ``npu.get_soc_version()`` as the device type vllm-ascend names (its ``utils.py``
    reads the same ranges): 220-225 A2, 250-255 A3, 260 A5, 200-205 310P; anything else ``soc <n>``.

    >>> soc_of_version(223), soc_of_version(250), soc_of_version(260), soc_of_version(100)
    ('A2', 'A3', 'A5', 'soc 100')
    """
    for low, high, name in ((220, 225, "A2"), (250, 255, "A3"), (260, 260, "A5"), (200, 205, "310P")):
        if low <= soc_version <= high:
            return name
    return f"soc {soc_version}"


def ops_soc(device) -> str | None:
    """The SoC whose MC2 limits apply to the ops run on `device` in this process: None where the golden
    models run them (``op_provider`` picks them: no NPU, or no real torch_npu), else the current NPU's
    (:func:`soc_of_version`). Call it where the device is yours (a rank holding its lease)."""
    from ascend_conformance.moe.ops import op_provider

    if op_provider(device).name != "torch_npu":
        return None
    import torch_npu

    return soc_of_version(int(torch_npu.npu.get_soc_version()))
