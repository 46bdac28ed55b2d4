"""Acceptance profiles: which tests a kind of host must run and pass, and what else the verifier
expects of it.

A profile has two halves.

* **Selection** — the rules a mustpass list is generated from (``acceptance list``): the areas, the
  tiers (``default``, ``full``, ``bench``; a benchmark is selected by its tier alone) and the systems
  under test whose tests it contains, and on
  NPU hosts the device type (a test parametrised by ``device_type`` runs on an NPU host only for the
  host's own type; the stand-in emulates every type, so cpu-reference keeps them all).
* **The host** — what ``acceptance verify`` expects to read in a bundle: the platform, backend and ops
  (``golden`` or ``torch_npu``) of the run, the SoC family and the least device count, and the skips
  it accepts, each a pattern of the skip reason with why it is acceptable. Any other skip of a mustpass
  test rejects the bundle.

For example cpu-reference selects the default tier of the five conformance areas for the reference,
vLLM and vllm-ascend, expects platform cpu / gloo / golden ops with 8 device slots, and accepts a skip
whose reason starts ``torch_npu not importable:`` (the golden-vs-real-op comparisons need an NPU host)::

    >>> profile = get("cpu-reference")
    >>> profile.allowed_skip("torch_npu not importable: No module named 'torch_npu'") is not None
    True
    >>> profile.allowed_skip("full tier: run with --full (accelerator hosts)") is None
    True
    >>> get("npu-a9")
    Traceback (most recent call last):
    ...
    ascend_conformance.errors.ConfigError: unknown profile 'npu-a9': choose one of cpu-reference, npu-a2, npu-a3
"""
from __future__ import annotations

import dataclasses
import re

from ascend_conformance.errors import ConfigError

TIERS = ("default", "full", "bench")
CONFORMANCE_AREAS = ("groups", "collectives", "moe", "shared_weight", "eplb")
ALL_SUTS = ("reference", "vllm", "vllm_ascend")


@dataclasses.dataclass(frozen=True)
class AllowedSkip:
    """A skip of a mustpass test the profile accepts: ``pattern`` (a regular expression searched from the
    start of the skip reason) and ``why`` it does not count against the run."""

    pattern: str
    why: str

    def matches(self, reason: str) -> bool:
        return re.match(self.pattern, reason or "") is not None


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    # selection
    areas: tuple[str, ...]
    tiers: tuple[str, ...]
    suts: tuple[str, ...]
    device_type: str | None  # NPU hosts: the device type tests parametrised by device_type must name
    # the host
    platform: str
    backend: str
    ops: str
    soc_prefixes: tuple[str, ...]  # the SoC names (torch_npu's device name) of the family; () = any
    min_devices: int
    allowed_skips: tuple[AllowedSkip, ...]
    # the run
    workers: int  # pytest-xdist workers of the conformance session by default
    pytest_args: tuple[str, ...] = ()

    def allowed_skip(self, reason: str) -> AllowedSkip | None:
        return next((rule for rule in self.allowed_skips if rule.matches(reason)), None)

    def rules(self) -> str:
        """The selection rules in one line (the header of a mustpass list)."""
        line = (f"areas {', '.join(self.areas)}; tiers {', '.join(self.tiers)}; systems under test "
                f"{', '.join(self.suts)}")
        if self.device_type:
            line += f"; device_type parameter {self.device_type} only"
        return line

    def host(self) -> str:
        """What the host must be, in one line."""
        soc = f", SoC {' or '.join(p + '*' for p in self.soc_prefixes)}" if self.soc_prefixes else ""
        return (f"platform {self.platform}, backend {self.backend}, ops {self.ops}{soc}, "
                f">= {self.min_devices} devices")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_TORCH_NPU_MISSING = "the golden-vs-real torch_npu comparisons need an NPU host"
# Skips of a host without the real torch_npu: allowed by cpu-reference, and inherent to an npu profile run on
# the emulated npu (acceptance/verify.py: its verdict is EMULATED anyway).
TORCH_NPU_MISSING_SKIPS = (
    AllowedSkip(r"torch_npu not importable: ", _TORCH_NPU_MISSING),
    AllowedSkip(r"torch_npu not installed", _TORCH_NPU_MISSING),
    AllowedSkip(r"torch_npu imported but no NPU device is visible", _TORCH_NPU_MISSING),
)
# An npu profile run on the emulated npu (acceptance/verify.py) also accepts the emulated hccl's own gap: it is gloo
# on host copies and refuses an integer AVG as gloo does (KNOWN_BACKEND_GAPS of suites/test_collectives.py).
EMULATED_RUN_SKIPS = TORCH_NPU_MISSING_SKIPS + (
    AllowedSkip(r"hccl \(emulated, over gloo\) does not support all_reduce AVG on int(32|64) ",
                "a gap of the emulated hccl, which is gloo on host copies (docs/emulation.md); what real HCCL does "
                "is judged on an NPU host"),
)
# suites/test_sut_groups.py skips a GroupCoordinator verdict it cannot check, naming where and why, after checking
# it wherever it can ("vllm V GroupCoordinator <case> [<dtype>] (<claim>) on <layout>: N checks right, not
# available on <kind>: <why>; ..."). On CPU, vLLM's platform has no device communicator, so the v-collectives are
# not offered at all; on every platform broadcast_object from a rank other than 0 is refused where a message-queue
# broadcaster is in use (vLLM's own contract). Only after at least one check: a case that checked nothing anywhere
# has not been judged, and is no allowed skip (but the v-collectives, below).
_COORDINATOR_ON_CPU = AllowedSkip(
    r"vllm \S+ GroupCoordinator \S+(?: \S+)? \(\w+\) on \S+: [1-9]\d* checks right, not available on ",
    "an operation vLLM's GroupCoordinator does not offer on the CPU platform (no device communicator) or on a "
    "group with a message-queue broadcaster; checked wherever it is offered")
_BROADCAST_FROM_LAST = AllowedSkip(
    r"vllm \S+ GroupCoordinator broadcast_object_from_last \(values\) on \S+: [1-9]\d* checks right, not available "
    r"on \w+: broadcast_object from a group rank other than 0 on a group with a message-queue broadcaster",
    "vLLM's GroupCoordinator.broadcast_object takes src 0 only where a message-queue broadcaster is in use; "
    "checked on the other groups")
# GroupCoordinator.all_gatherv / reduce_scatterv go straight to the platform's device communicator, and neither
# vLLM's DeviceCommunicatorBase (CPU, the emulated npu) nor vllm-ascend's NPUCommunicator (an NPU host; it adds
# all_to_all only) implements them, nor has a group of one a communicator: every group raises
# NotImplementedError, on every host. Allowed only when every group says exactly that.
_V_COLLECTIVES_NOT_IMPLEMENTED = AllowedSkip(
    r"vllm \S+ GroupCoordinator (all_gatherv|reduce_scatterv) \S+ \(\w+\) on \S+: \d+ checks right, not available on "
    r"\w+: \w+: NotImplementedError(?!.*; \w+: (?!\w+: NotImplementedError))",
    "vLLM's GroupCoordinator.all_gatherv / reduce_scatterv need the platform's device communicator to implement "
    "them, which neither vLLM's base communicator nor vllm-ascend's NPUCommunicator does")
# An A2 host's MC2 ops take EP groups of 16 to 256 ranks only (an EP group across servers of 8 NPUs,
# moe/mc2_applicability.py): an 8-NPU A2 host skips the MC2 contract checks, whose EP is 2 or 4, for that rule
# alone (a scenario outside any other limit is no allowed skip).
_A2_MC2_NEEDS_EP16 = AllowedSkip(
    r"every scenario is outside the MC2 ops' documented limits on A2: the A2 MC2 ops do not take this shape: "
    r"ep_world_size \d+ is not one of 16, 32, 64, 128, 256 \(the EP group spans servers of 8 NPUs\) \[",
    "A2's MC2 ops need an EP group of 16 or more ranks, across servers: one 8-NPU host cannot run them")

CPU_REFERENCE = Profile(
    name="cpu-reference",
    summary="golden ops on gloo: any host, and CI (the reference and both systems under test, default tier)",
    areas=CONFORMANCE_AREAS, tiers=("default",), suts=ALL_SUTS, device_type=None,
    platform="cpu", backend="gloo", ops="golden", soc_prefixes=(), min_devices=8,
    allowed_skips=(
        *TORCH_NPU_MISSING_SKIPS,
        AllowedSkip(r"gloo does not support all_reduce AVG on int(32|64) ",
                    "a known gap of gloo (KNOWN_BACKEND_GAPS of suites/test_collectives.py)"),
        _COORDINATOR_ON_CPU,
        _V_COLLECTIVES_NOT_IMPLEMENTED,
    ),
    workers=2, pytest_args=("--platform", "cpu", "--devices", "8"),
)


def _npu(device_type: str, soc_prefixes: tuple[str, ...], summary: str, *host_skips: AllowedSkip) -> Profile:
    return Profile(
        name=f"npu-{device_type.lower()}",
        summary=summary,
        areas=CONFORMANCE_AREAS, tiers=("default", "full", "bench"), suts=ALL_SUTS, device_type=device_type,
        platform="npu", backend="hccl", ops="torch_npu", soc_prefixes=soc_prefixes, min_devices=8,
        allowed_skips=(_BROADCAST_FROM_LAST, _V_COLLECTIVES_NOT_IMPLEMENTED, *host_skips),
        workers=8, pytest_args=("--platform", "npu"),
    )


# SoC names as torch_npu reports them (vllm-ascend's setup.py maps the same names to A2 / A3).
NPU_A2 = _npu("A2", ("Ascend910B",), "Atlas A2 (Ascend910B*): real torch_npu ops on HCCL, full tier and benchmarks",
              _A2_MC2_NEEDS_EP16)
NPU_A3 = _npu("A3", ("Ascend910_93",), "Atlas A3 (Ascend910_93*): real torch_npu ops on HCCL, full tier and benchmarks")

PROFILES = {profile.name: profile for profile in (CPU_REFERENCE, NPU_A2, NPU_A3)}


def get(name: str) -> Profile:
    """The profile ``name``, or a one-line ConfigError naming the known ones."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
