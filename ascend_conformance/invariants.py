"""Invariant checker for rank layouts: the reference's, or one captured from a live system.

A layout is a mapping ``kind -> list of rank lists`` with the kind names of docs/layout.md (what
:func:`ascend_conformance.topology.build_layout` returns, or what a capture of vLLM / vllm-ascend's
parallel state reads back). :func:`check_layout` returns one :class:`Violation` per defect, each with a
sentence that names the ranks, e.g.::

    otp group [0, 2] crosses PP stages: rank 0 is in stage 0, rank 2 in stage 1

Rules (the ``rule`` field)
--------------------------
Structure, checked on every known kind present in the layout:

``malformed``        the kind's value is not a list of non-empty rank lists of integers
``out_of_range``     a group holds a rank outside 0..world_size-1
``repeated_rank``    a group lists the same rank twice
``overlap``          two groups of one kind share a rank (groups of a kind must be disjoint)
``uncovered``        ranks in no group of the kind (not for p_tp and the fine-grained TP kinds, which
                     only partition the ranks they cover)
``crosses_stages``   a group of tp, pcp, ep (and its aliases mc2, dynamic_eplb, fc3_quant_x),
                     otp / lmheadtp / emtp / mlptp, flashcomm2_otp / odp or shard_weight spans two PP
                     stages
``crosses_replicas`` a group other than ``world`` spans two external-DP replicas (independent model
                     instances never communicate)
``mc2_not_ep``       an mc2 group is not an ep group of the same layout with the same order

Against the expected layout of the configuration (:func:`ascend_conformance.expected_layout.expected_layout`,
derived from docs/layout.md apart from :func:`~ascend_conformance.topology.build_layout`, so that these rules
can fire on the reference's own output):

``membership``       a group's member set is not a group of the reference
``order``            a group has the members of a reference group in a different order
``missing_kind``     the configuration implies a kind that the layout lacks
``unexpected_kind``  the layout has a known kind the configuration does not imply (its groups are still
                     checked for structure)

Kinds not named in docs/layout.md (a live system may create more, e.g. vLLM's dcp) are ignored here:
nothing says what they should be. :func:`compare_layouts` lists them as differences.

Worked example (world 8, DP2 PP2 TP2 with OTP 2): the reference otp groups are
[[0, 4], [1, 5], [2, 6], [3, 7]]. vllm-ascend's [[0, 2], [1, 3], [4, 6], [5, 7]] is still a partition,
but each group crosses PP stages (rank 0 is in stage 0, rank 2 in stage 1) and none is a reference
group, so every group yields a ``crosses_stages`` and a ``membership`` violation.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence

from ascend_conformance.expected_layout import (
    KINDS, PARTIAL_COVER, STAGE_LOCAL, expected_layout, replica_of, stage_of,
)
from ascend_conformance.topology import ParallelConfig

Group = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken invariant: ``group`` is the offending group (None when the defect is the kind's)."""

    kind: str
    group: Group | None
    rule: str
    explanation: str

    def __str__(self) -> str:
        return self.explanation


@dataclasses.dataclass(frozen=True)
class Difference:
    """One difference between a reference and a live layout of the same configuration.

    ``change`` is one of ``kind_missing`` (kind only in the reference), ``kind_extra`` (only in the
    live layout), ``group_missing`` / ``group_extra`` (a member set only on one side; the group is in
    ``reference_group`` / ``live_group``) and ``order`` (same members, different order: both set).
    """

    kind: str
    change: str
    reference_group: Group | None
    live_group: Group | None
    explanation: str

    def __str__(self) -> str:
        return self.explanation


def _show(group: Sequence[int]) -> str:
    return "[" + ", ".join(str(rank) for rank in group) + "]"


def _is_rank(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_groups(kind: str, value) -> tuple[list[Group] | None, list[Violation]]:
    """Groups of a kind as tuples, or None and a ``malformed`` violation when they are not rank lists."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return None, [Violation(kind, None, "malformed",
                                f"{kind} is not a list of rank lists: got {type(value).__name__}")]
    groups: list[Group] = []
    problems: list[Violation] = []
    for index, group in enumerate(value):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            problems.append(Violation(kind, None, "malformed",
                                      f"{kind} entry {index} is not a rank list: {group!r}"))
        elif not group:
            problems.append(Violation(kind, (), "malformed", f"{kind} group {index} is empty"))
        elif not all(_is_rank(rank) for rank in group):
            problems.append(Violation(kind, None, "malformed",
                                      f"{kind} group {index} holds a non-integer rank: {list(group)!r}"))
        else:
            groups.append(tuple(group))
    return groups, problems


def _first_rank_per_value(group: Sequence[int], value_of) -> list[tuple[int, int]]:
    """(rank, value) for the first rank of each distinct value, in group order."""
    seen: dict[int, int] = {}
    for rank in group:
        seen.setdefault(value_of(rank), rank)
    return [(rank, value) for value, rank in seen.items()]


def _where(places: list[tuple[int, int]], unit: str) -> str:
    """``rank 0 is in stage 0, rank 2 in stage 1`` for places [(0, 0), (2, 1)]."""
    (first_rank, first_value), *rest = places
    return ", ".join([f"rank {first_rank} is in {unit} {first_value}"]
                     + [f"rank {rank} in {unit} {value}" for rank, value in rest])


def _structure_violations(kind: str, groups: list[Group], config: ParallelConfig) -> list[Violation]:
    world = config.world_size
    found: list[Violation] = []
    owner: dict[int, int] = {}  # rank -> index of the first group holding it
    for index, group in enumerate(groups):
        outside = [rank for rank in group if not 0 <= rank < world]
        if outside:
            found.append(Violation(
                kind, group, "out_of_range",
                f"{kind} group {_show(group)} holds rank{'s' if len(outside) > 1 else ''} "
                f"{', '.join(map(str, outside))} outside world 0..{world - 1}"))
        repeated = sorted(rank for rank, count in Counter(group).items() if count > 1)
        if repeated:
            found.append(Violation(
                kind, group, "repeated_rank",
                f"{kind} group {_show(group)} lists rank {', '.join(map(str, repeated))} more than once"))
        for rank in dict.fromkeys(group):
            if rank in owner:
                found.append(Violation(
                    kind, group, "overlap",
                    f"{kind} groups {_show(groups[owner[rank]])} and {_show(group)} both hold "
                    f"rank {rank}"))
            else:
                owner[rank] = index

        in_world = [rank for rank in group if 0 <= rank < world]
        if kind in STAGE_LOCAL:
            stages = _first_rank_per_value(in_world, lambda r: stage_of(r, config))
            if len(stages) > 1:
                found.append(Violation(
                    kind, group, "crosses_stages",
                    f"{kind} group {_show(group)} crosses PP stages: {_where(stages, 'stage')}"))
        if kind != "world":
            replicas = _first_rank_per_value(in_world, lambda r: replica_of(r, config))
            if len(replicas) > 1:
                found.append(Violation(
                    kind, group, "crosses_replicas",
                    f"{kind} group {_show(group)} crosses external-DP replicas: "
                    f"{_where(replicas, 'replica')}"))

    if kind not in PARTIAL_COVER:
        uncovered = [rank for rank in range(world) if rank not in owner]
        if uncovered:
            found.append(Violation(
                kind, None, "uncovered",
                f"{kind} groups leave rank{'s' if len(uncovered) > 1 else ''} "
                f"{', '.join(map(str, uncovered))} of world 0..{world - 1} in no group"))
    return found


def _reference_violations(kind: str, groups: list[Group], full_reference: dict[str, list[list[int]]],
                          world: int) -> list[Violation]:
    reference = full_reference[kind]
    by_members = {frozenset(group): tuple(group) for group in reference}
    # A wrong group is often a right group of another kind (vllm-ascend's otp groups are vLLM's pp
    # groups); naming that kind points straight at the grid mix-up.
    other_kind_of = {}
    for other, other_groups in full_reference.items():
        if other != kind:
            for other_group in other_groups:
                other_kind_of.setdefault(frozenset(other_group), other)
    holder = {rank: tuple(group) for group in reference for rank in group}
    found: list[Violation] = []
    for group in groups:
        # A group already reported as out of range or with a repeated rank has no reference twin;
        # saying so again would report one defect twice.
        if len(set(group)) != len(group) or not all(0 <= rank < world for rank in group):
            continue
        twin = by_members.get(frozenset(group))
        if twin is None:
            holders = list(dict.fromkeys(holder[rank] for rank in group if rank in holder))
            where = ", ".join(_show(h) for h in holders) or "none"
            # Singletons are groups of many kinds (pcp with PCP1, ...): no hint there.
            same_as = other_kind_of.get(frozenset(group)) if len(group) > 1 else None
            found.append(Violation(
                kind, group, "membership",
                f"{kind} group {_show(group)} is not a reference {kind} group; the reference "
                f"{kind} groups holding its ranks are {where}"
                + (f" (its members form a reference {same_as} group)" if same_as else "")))
        elif twin != group:
            position = next(i for i, (mine, theirs) in enumerate(zip(group, twin)) if mine != theirs)
            found.append(Violation(
                kind, group, "order",
                f"{kind} group {_show(group)} orders the members of reference group {_show(twin)} "
                f"differently: group rank {position} is rank {group[position]}, the reference has "
                f"rank {twin[position]}"))
    return found


def _mc2_violations(mc2: list[Group], ep: list[Group]) -> list[Violation]:
    ep_by_members = {frozenset(group): group for group in ep}
    ep_holder = {rank: group for group in ep for rank in group}
    found: list[Violation] = []
    for group in mc2:
        twin = ep_by_members.get(frozenset(group))
        if twin == group:
            continue
        if twin is None:
            holders = list(dict.fromkeys(ep_holder[rank] for rank in group if rank in ep_holder))
            explanation = (f"mc2 group {_show(group)} is not an ep group (mc2 must equal ep); the ep "
                           f"groups holding its ranks are {', '.join(_show(h) for h in holders) or 'none'}")
        else:
            explanation = (f"mc2 group {_show(group)} has the members of ep group {_show(twin)} in a "
                           f"different order (mc2 must equal ep)")
        found.append(Violation("mc2", group, "mc2_not_ep", explanation))
    return found


def check_layout(layout: Mapping[str, Sequence[Sequence[int]]],
                 config: ParallelConfig) -> list[Violation]:
    """Every violation of docs/layout.md's invariants in ``layout``, for the configuration ``config``.

    An empty list means the layout is a correct one for ``config``. Violations come kind by kind in
    :data:`~ascend_conformance.expected_layout.KINDS` order; within a kind, structure rules (in group
    order) come before the comparison with the expected groups.
    """
    reference = expected_layout(config)
    found: list[Violation] = []
    parsed: dict[str, list[Group]] = {}
    for kind in KINDS:
        if kind not in layout:
            if kind in reference:
                found.append(Violation(
                    kind, None, "missing_kind",
                    f"layout has no {kind} groups; {config.describe()} implies "
                    f"{len(reference[kind])} of them"))
            continue
        groups, malformed = _as_groups(kind, layout[kind])
        found += malformed
        if groups is None:
            continue
        parsed[kind] = groups
        if kind not in reference:
            found.append(Violation(
                kind, None, "unexpected_kind",
                f"layout has {kind} groups but {config.describe()} implies none"))
        found += _structure_violations(kind, groups, config)
        if kind in reference:
            found += _reference_violations(kind, groups, reference, config.world_size)
        if kind == "mc2" and "ep" in parsed:
            found += _mc2_violations(groups, parsed["ep"])
    return found


def compare_layouts(reference: Mapping[str, Sequence[Sequence[int]]],
                    live: Mapping[str, Sequence[Sequence[int]]]) -> list[Difference]:
    """Per kind, the groups that differ between ``reference`` and ``live``, as sets and in order.

    Kinds come in :data:`~ascend_conformance.expected_layout.KINDS` order, then unknown kinds by name;
    within a kind, groups keep the order of the side they come from.
    """
    known = [kind for kind in KINDS if kind in reference or kind in live]
    others = sorted((set(reference) | set(live)) - set(KINDS))
    differences: list[Difference] = []
    for kind in known + others:
        if kind not in live:
            differences.append(Difference(kind, "kind_missing", None, None,
                                          f"live layout has no {kind} groups"))
            continue
        if kind not in reference:
            differences.append(Difference(kind, "kind_extra", None, None,
                                          f"live layout has {kind} groups the reference does not"))
            continue
        ours = [tuple(int(rank) for rank in group) for group in reference[kind]]
        theirs = [tuple(int(rank) for rank in group) for group in live[kind]]
        theirs_by_members = {frozenset(group): group for group in theirs}
        ours_by_members = {frozenset(group): group for group in ours}
        for group in ours:
            twin = theirs_by_members.get(frozenset(group))
            if twin is None:
                differences.append(Difference(
                    kind, "group_missing", group, None,
                    f"{kind} group {_show(group)} of the reference is not a live {kind} group"))
            elif twin != group:
                differences.append(Difference(
                    kind, "order", group, twin,
                    f"{kind} group {_show(group)} is {_show(twin)} on the live system"))
        for group in theirs:
            if frozenset(group) not in ours_by_members:
                differences.append(Difference(
                    kind, "group_extra", None, group,
                    f"live {kind} group {_show(group)} is not a reference {kind} group"))
    return differences
