"""The groups docs/layout.md says a configuration has: the invariant checker's oracle.

:func:`ascend_conformance.topology.build_layout` is the reference layout the suite builds groups from;
:mod:`ascend_conformance.invariants` judges layouts, that one included. If the checker compared against
``build_layout`` it could never find a defect in it, so the expected groups are derived here a second
time, deliberately apart from topology.py: not by decoding every rank into coordinates and bucketing by a
key (topology's way), but by *constructing* each group from the rank formula

    rank = ((((e·DP + d)·PP + p)·PCP + c)·TP + t)

with the group's own coordinates varied in member order and the others held fixed, as the table of
docs/layout.md words it. Which kinds exist is also read from that table here, not from
``ParallelConfig.group_kinds``.

Worked example, W8 DP2 PP2 TP2 (E = 1, PCP = 1, so ``rank = (2d + p)·2 + t``)::

    tp  (vary t)          [R(d, p, 0), R(d, p, 1)] for each (d, p)   [[0, 1], [2, 3], [4, 5], [6, 7]]
    ep  (vary d, c, t)    [R(d, p, t) for d for t] for each p        [[0, 1, 4, 5], [2, 3, 6, 7]]

    >>> layout = expected_layout(ParallelConfig(world_size=8, tp=2, pp=2, dp=2, otp=2))
    >>> layout["pp"], layout["otp"]
    ([[0, 2], [1, 3], [4, 6], [5, 7]], [[0, 4], [1, 5], [2, 6], [3, 7]])
    >>> [stage_of(rank, ParallelConfig(world_size=8, tp=2, pp=2, dp=2)) for rank in range(8)]
    [0, 0, 1, 1, 0, 0, 1, 1]
"""
from __future__ import annotations

import itertools

from ascend_conformance.topology import ParallelConfig

# Every kind of docs/layout.md, in its order (the checker reports kind by kind in this order).
KINDS: tuple[str, ...] = ("world", "tp", "pcp", "pp", "dp", "ep", "mc2", "dynamic_eplb", "fc3_quant_x", "otp",
                          "lmheadtp", "emtp", "mlptp", "flashcomm2_otp", "flashcomm2_odp", "shard_weight", "p_tp")
# Fine-grained TP kinds and the configuration field holding their size g.
FINE_GRAINED_SIZE: dict[str, str] = {"otp": "otp", "lmheadtp": "lmhead_tp", "emtp": "embed_tp", "mlptp": "mlp_tp"}
# docs/layout.md, Invariants: kinds that only partition the ranks they cover, and kinds whose every group
# must lie inside one PP stage.
PARTIAL_COVER: frozenset[str] = frozenset({"otp", "lmheadtp", "emtp", "mlptp", "p_tp"})
STAGE_LOCAL: frozenset[str] = frozenset({"tp", "pcp", "ep", "mc2", "dynamic_eplb", "fc3_quant_x", "otp", "lmheadtp",
                                         "emtp", "mlptp", "flashcomm2_otp", "flashcomm2_odp", "shard_weight"})


class _Grid:
    """The five sizes of a configuration and the rank formula."""

    def __init__(self, config: ParallelConfig):
        self.dp, self.pp, self.pcp, self.tp = config.dp, config.pp, config.pcp, config.tp
        self.e = config.world_size // (self.dp * self.pp * self.pcp * self.tp)

    def rank(self, e: int, d: int, p: int, c: int, t: int) -> int:
        return (((e * self.dp + d) * self.pp + p) * self.pcp + c) * self.tp + t

    def tp_groups(self):
        """Every TP group T in t order, with its (e, d, p, c)."""
        for e, d, p, c in itertools.product(range(self.e), range(self.dp), range(self.pp), range(self.pcp)):
            yield (e, d, p, c), [self.rank(e, d, p, c, t) for t in range(self.tp)]


def stage_of(rank: int, config: ParallelConfig) -> int:
    """The pipeline stage p of ``rank``: ``(rank // (PCP·TP)) mod PP``."""
    return rank // (config.pcp * config.tp) % config.pp


def replica_of(rank: int, config: ParallelConfig) -> int:
    """The external-DP replica e of ``rank``: ``rank // (DP·PP·PCP·TP)``."""
    return rank // (config.dp * config.pp * config.pcp * config.tp)


def expected_kinds(config: ParallelConfig) -> tuple[str, ...]:
    """The kinds ``config`` implies (the "exists when" column of docs/layout.md), in :data:`KINDS` order."""
    present = {"world", "tp", "pcp", "pp", "dp", "ep", "mc2", "dynamic_eplb", "fc3_quant_x"}
    present |= {kind for kind, field in FINE_GRAINED_SIZE.items() if getattr(config, field) is not None}
    if config.flashcomm2_otp is not None:
        present.add("flashcomm2_odp")
        if config.flashcomm2_otp > 1:
            present.add("flashcomm2_otp")
    if config.layer_sharding:
        present.add("shard_weight")
    if config.kv_producer and config.pd_head_ratio is not None and config.pd_head_ratio > 1:
        present.add("p_tp")
    return tuple(kind for kind in KINDS if kind in present)


def _vary(grid: _Grid, fixed: str, varied: str) -> list[list[int]]:
    """One group per setting of the `fixed` coordinates, its members the `varied` coordinates in nested
    loop order (the first one outermost). Coordinates are named by letter: e, d, p, c, t."""
    sizes = {"e": grid.e, "d": grid.dp, "p": grid.pp, "c": grid.pcp, "t": grid.tp}
    groups = []
    for held in itertools.product(*(range(sizes[name]) for name in fixed)):
        members = []
        for moving in itertools.product(*(range(sizes[name]) for name in varied)):
            coords = dict(zip(fixed, held)) | dict(zip(varied, moving))
            members.append(grid.rank(coords["e"], coords["d"], coords["p"], coords["c"], coords["t"]))
        groups.append(members)
    return groups


def _fine_grained(grid: _Grid, size: int) -> list[list[int]]:
    """Runs of `size` consecutive d with (e, p, c, t) fixed, in d order."""
    groups = []
    for e, p, c, t in itertools.product(range(grid.e), range(grid.pp), range(grid.pcp), range(grid.tp)):
        for start in range(0, grid.dp, size):
            groups.append([grid.rank(e, d, p, c, t) for d in range(start, start + size)])
    return groups


def _flashcomm2(grid: _Grid, o: int) -> tuple[list[list[int]], list[list[int]]]:
    """(OTP groups, ODP groups): with n = TP / o, OTP group i = [T[i + j·n] for j < o] and ODP group
    j = [T[i + j·n] for i < n] inside every TP group T."""
    n = grid.tp // o
    otp, odp = [], []
    for _, members in grid.tp_groups():
        otp += [[members[i + j * n] for j in range(o)] for i in range(n)]
        odp += [[members[i + j * n] for i in range(n)] for j in range(o)]
    return otp, odp


def _shard_weight(grid: _Grid, config: ParallelConfig) -> list[list[int]]:
    """Ranks of one (e, p) stage with the same module-TP index, ascending."""
    o = config.flashcomm2_otp
    if o is not None and o > 1:
        index_of_t = lambda t: t // (grid.tp // o)  # noqa: E731 - the FlashComm2 OTP group rank
    elif o == 1 or config.dsa_cp:
        index_of_t = lambda t: 0  # noqa: E731 - the module is not split: the whole stage
    else:
        index_of_t = lambda t: t  # noqa: E731 - the TP rank
    groups = []
    for e, p in itertools.product(range(grid.e), range(grid.pp)):
        by_index: dict[int, list[int]] = {}
        for d, c, t in itertools.product(range(grid.dp), range(grid.pcp), range(grid.tp)):
            by_index.setdefault(index_of_t(t), []).append(grid.rank(e, d, p, c, t))
        groups += [sorted(members) for members in by_index.values()]
    return groups


def _prefill_all_to_all(grid: _Grid, config: ParallelConfig) -> list[list[int]]:
    """Chunks of every TP group T: consecutive chunks of pd_tp_ratio members (R <= 1), or T viewed as
    nh = TP / R rows of R, transposed to R rows of nh, every row cut into chunks of pd_tp_ratio / R."""
    ratio, replicas = config.pd_tp_ratio, config.num_head_replica or 1
    groups = []
    for _, members in grid.tp_groups():
        if replicas <= 1:
            groups += [members[start:start + ratio] for start in range(0, grid.tp, ratio)]
            continue
        rows = [members[h * replicas:(h + 1) * replicas] for h in range(grid.tp // replicas)]
        chunk = ratio // replicas
        for transposed in zip(*rows):
            groups += [list(transposed[start:start + chunk]) for start in range(0, len(transposed), chunk)]
    return groups


def expected_layout(config: ParallelConfig) -> dict[str, list[list[int]]]:
    """Every kind ``config`` implies, as ordered rank lists, groups listed by ascending lowest rank."""
    grid = _Grid(config)
    layout: dict[str, list[list[int]]] = {
        "world": [list(range(config.world_size))],
        "tp": _vary(grid, "edpc", "t"),
        "pcp": _vary(grid, "edpt", "c"),
        "pp": _vary(grid, "edct", "p"),
        "dp": _vary(grid, "epct", "d"),
        "ep": _vary(grid, "ep", "dct"),  # d outermost, t innermost: ep_rank = (d·PCP + c)·TP + t
    }
    for alias in ("mc2", "dynamic_eplb", "fc3_quant_x"):
        layout[alias] = [list(group) for group in layout["ep"]]
    for kind, field in FINE_GRAINED_SIZE.items():
        if getattr(config, field) is not None:
            layout[kind] = _fine_grained(grid, getattr(config, field))
    if config.flashcomm2_otp is not None:
        layout["flashcomm2_otp"], layout["flashcomm2_odp"] = _flashcomm2(grid, config.flashcomm2_otp)
    if config.layer_sharding:
        layout["shard_weight"] = _shard_weight(grid, config)
    if "p_tp" in expected_kinds(config):
        layout["p_tp"] = _prefill_all_to_all(grid, config)
    kinds = expected_kinds(config)
    return {kind: sorted(layout[kind], key=min) for kind in kinds}
