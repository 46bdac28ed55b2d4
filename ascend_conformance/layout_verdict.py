"""A layout captured from a system under test, merged and judged against the reference (docs/layout.md).

The capture runs in the ranks (:mod:`ascend_conformance.sut.captured_layouts`: each rank reports
``{kind: the ranks of its group}`` per configuration). Here, in the test process:
:func:`merge_rank_views` turns the per-rank views into ``{kind: [[ranks], ...]}`` (proving them consistent:
every member of a group reports the same group in the same order), and :func:`judge` holds it against the
invariant checker (:mod:`ascend_conformance.invariants`) and the reference ``build_layout``.
:meth:`Judgement.raise_divergence` raises :class:`~ascend_conformance.errors.Divergence` naming every kind
that differs, the release's groups and the reference's.

Worked example, world 4 = DP2 x PP2 (TP1) with o_proj TP 2 on vllm-ascend 0.23.0.post1: ranks 0 and 1
report ``otp -> [0, 1]``, ranks 2 and 3 ``[2, 3]``; merged, ``otp [[0, 1], [2, 3]]``. The stages are
{0, 2} and {1, 3}, so the checker finds both groups crossing stages, and the reference has
``otp [[0, 2], [1, 3]]``::

    vllm_ascend 0.23.0.post1 builds a layout other than the reference for world 4 = E1 x DP2 x PP2 x PCP1 x TP1, otp 2
      otp: vllm_ascend 0.23.0.post1 [[0, 1], [2, 3]], reference [[0, 2], [1, 3]]
      [crosses_stages] otp group [0, 1] crosses PP stages: rank 0 is in stage 0, rank 1 in stage 1
      ...
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ascend_conformance.errors import Divergence
from ascend_conformance.invariants import Difference, Violation, check_layout, compare_layouts
from ascend_conformance.topology import ParallelConfig, build_layout


class CaptureError(RuntimeError):
    """The ranks of a live world disagree about a group: the capture itself is broken, not a verdict."""


def merge_rank_views(views: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, list[list[int]]]:
    """Per-rank views (``views[r]`` = rank r's ``{kind: its group's ranks}``) -> a layout.

    Groups of a kind are listed by ascending lowest rank, as :func:`build_layout` does. The views must
    agree: a rank's group contains the rank itself, and every member that reports the kind reports the
    same group in the same order; otherwise :class:`CaptureError` names the ranks.

    Example, world 4 with tp views ``[0, 1], [0, 1], [2, 3], [2, 3]`` -> ``{"tp": [[0, 1], [2, 3]]}``.
    """
    layout: dict[str, list[list[int]]] = {}
    kinds: list[str] = []
    for view in views:
        kinds += [kind for kind in view if kind not in kinds]
    for kind in kinds:
        by_members: dict[frozenset, list[int]] = {}
        group_of: dict[int, list[int]] = {}
        for rank, view in enumerate(views):
            if kind not in view:
                continue
            group = [int(member) for member in view[kind]]
            if rank not in group:
                raise CaptureError(f"rank {rank} reports {kind} group {group}, which does not contain it")
            first = by_members.setdefault(frozenset(group), group)
            if first != group:
                raise CaptureError(f"{kind}: ranks disagree on the order of group {first}: rank {rank} reports {group}")
            for member in group:
                other = group_of.setdefault(member, first)
                if other is not first:
                    raise CaptureError(f"{kind}: rank {member} is in group {other} and in group {group} "
                                       f"(reported by rank {rank})")
        layout[kind] = sorted(by_members.values(), key=min)
    return layout


def _show(groups) -> str:
    return "[" + ", ".join("[" + ", ".join(map(str, group)) + "]" for group in groups) + "]"


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A live layout against docs/layout.md: invariant violations and differences from the reference,
    on the kinds ``kinds`` the system under test is judged on."""

    config: ParallelConfig
    layout: dict
    reference: dict
    kinds: tuple[str, ...]
    violations: list[Violation]
    differences: list[Difference]

    @property
    def conformant(self) -> bool:
        return not self.violations and not self.differences

    def report(self, release: str) -> str:
        """The headline and one line per differing kind (both versions), violation and difference."""
        if self.conformant:
            return f"{release} builds the reference layout for {self.config.describe()}"
        lines = [f"{release} builds a layout other than the reference for {self.config.describe()}"]
        for kind in dict.fromkeys(d.kind for d in self.differences):
            live = _show(self.layout[kind]) if kind in self.layout else "no groups"
            reference = _show(self.reference[kind]) if kind in self.reference else "no groups"
            lines.append(f"  {kind}: {release} {live}, reference {reference}")
        lines += [f"  [{v.rule}] {v.explanation}" for v in self.violations]
        lines += [f"  [{d.change}] {d.explanation}" for d in self.differences]
        return "\n".join(lines)

    def raise_divergence(self, release: str) -> None:
        """Divergence naming every kind, group and both versions, unless the layout conforms."""
        if not self.conformant:
            raise Divergence(self.report(release))


def judge(layout: Mapping[str, Sequence[Sequence[int]]], config: ParallelConfig,
          kinds: Sequence[str] | None = None) -> Judgement:
    """Check a captured layout with the invariant checker and compare it with the reference, on ``kinds``
    (default: every kind the configuration implies). Kinds outside them (vLLM's ``dcp``, say, or
    vllm-ascend's on a vLLM-only capture) are left out: nothing judged says what they should be.
    """
    reference = build_layout(config)
    judged = tuple(kind for kind in (kinds if kinds is not None else reference)
                   if kind in reference or kind in layout)
    live = {kind: [list(group) for group in layout[kind]] for kind in judged if kind in layout}
    expected = {kind: reference[kind] for kind in judged if kind in reference}
    # The checker also asks for every kind the configuration implies; only the judged ones count here.
    violations = [violation for violation in check_layout(live, config) if violation.kind in judged]
    return Judgement(config, {kind: [list(g) for g in groups] for kind, groups in layout.items()}, expected,
                     judged, violations, compare_layouts(expected, live))


__all__ = ["CaptureError", "Judgement", "merge_rank_views", "judge"]
