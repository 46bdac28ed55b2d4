"""Rank layout of every parallel group of vLLM and vllm-ascend: pure arithmetic, no torch.

This module is the reference of docs/layout.md. It knows nothing about processes or devices: it maps a
:class:`ParallelConfig` to the rank lists of every group kind, and :mod:`ascend_conformance.groups` turns
those lists into live process groups.

Rank convention (vLLM, used for every group)
--------------------------------------------
A rank is a mixed-radix number over five coordinates, external DP outermost, TP innermost::

    rank = ((((e * DP + d) * PP + p) * PCP + c) * TP + t)

    e  external-DP replica   0 <= e < E = world_size / (DP * PP * PCP * TP)
    d  data-parallel index   0 <= d < DP
    p  pipeline stage        0 <= p < PP
    c  prefill context-parallel index  0 <= c < PCP
    t  tensor-parallel index 0 <= t < TP

:func:`rank_coordinates` and :func:`rank_of` convert between the two forms. A group kind is defined by
which coordinates vary inside one group (the others are fixed) and by the order of the members.

Worked example: world 8, DP2 PP2 TP2 (PCP1, E1)
-----------------------------------------------
With PCP = 1 the formula reduces to ``rank = (d * 2 + p) * 2 + t``::

    rank  0  1  2  3  4  5  6  7
    d     0  0  0  0  1  1  1  1
    p     0  0  1  1  0  0  1  1
    t     0  1  0  1  0  1  0  1

Varying one coordinate with the others fixed gives the vLLM groups::

    tp  (vary t)  [[0, 1], [2, 3], [4, 5], [6, 7]]
    pp  (vary p)  [[0, 2], [1, 3], [4, 6], [5, 7]]
    dp  (vary d)  [[0, 4], [1, 5], [2, 6], [3, 7]]

The PP stages are therefore stage 0 = {0, 1, 4, 5} and stage 1 = {2, 3, 6, 7}: every DP replica holds
its own copy of both stages. Expert parallelism spans (d, c, t) inside one stage, with group rank
``ep_rank = (d * PCP + c) * TP + t``::

    ep / mc2 / dynamic_eplb / fc3_quant_x   [[0, 1, 4, 5], [2, 3, 6, 7]]

A fine-grained TP group of size g (o_proj ``otp``, ``lmheadtp``, ``emtp``, ``mlptp``) spans g
consecutive DP indices with (e, p, c, t) fixed, so with OTP 2 it stays inside one stage::

    otp (g=2)   [[0, 4], [1, 5], [2, 6], [3, 7]]

(vllm-ascend builds it on a (pp, dp, tp) grid instead and gets [[0, 2], [1, 3], [4, 6], [5, 7]],
which are vLLM's PP groups: docs/systems_under_test.md, and the invariant checker flags them.)

FlashComm2 with o = 2 on TP4 (world 4, n = TP / o = 2): inside a TP group T = [0, 1, 2, 3], OTP group
i takes every n-th member starting at i, ODP group j takes the j-th run of n consecutive members::

    flashcomm2_otp  [[0, 2], [1, 3]]        # group i = [T[i + j*n] for j < o]
    flashcomm2_odp  [[0, 1], [2, 3]]        # group j = [T[i + j*n] for i < n]

Optional kinds: when they exist
-------------------------------
``world, tp, pcp, pp, dp, ep, mc2, dynamic_eplb, fc3_quant_x`` always exist (pcp groups are singletons
when PCP = 1, as vLLM creates them). The others exist only when the configuration asks for them:

=================  ==========================================================================
kind               exists when
=================  ==========================================================================
otp                ``otp`` is set (o_proj fine-grained TP size)
lmheadtp           ``lmhead_tp`` is set
emtp               ``embed_tp`` is set
mlptp              ``mlp_tp`` is set
flashcomm2_otp     ``flashcomm2_otp`` is set and > 1 (o == 1 has no OTP group)
flashcomm2_odp     ``flashcomm2_otp`` is set (o == 1: ODP == TP)
shard_weight       ``layer_sharding``
p_tp               ``kv_producer`` and ``pd_head_ratio`` > 1
=================  ==========================================================================

Within a kind, groups are listed in ascending order of their lowest rank, so every rank builds them in
the same order (torch.distributed requires it) and two layouts can be compared position by position.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

from ascend_conformance.errors import ConfigError

# Every group kind of docs/layout.md, in the order groups are built and reported.
GROUP_KINDS: tuple[str, ...] = (
    "world", "tp", "pcp", "pp", "dp", "ep", "mc2", "dynamic_eplb", "fc3_quant_x",
    "otp", "lmheadtp", "emtp", "mlptp", "flashcomm2_otp", "flashcomm2_odp", "shard_weight", "p_tp",
)

# Kinds with exactly the members and order of `ep` (vllm-ascend gives MC2, dynamic EPLB and the FC3
# quantised all-gather their own communicators over the EP ranks).
EP_ALIAS_KINDS: tuple[str, ...] = ("mc2", "dynamic_eplb", "fc3_quant_x")

# Fine-grained TP kinds -> the ParallelConfig field holding their size g.
FINE_GRAINED_TP_SIZE_FIELDS: dict[str, str] = {
    "otp": "otp", "lmheadtp": "lmhead_tp", "emtp": "embed_tp", "mlptp": "mlp_tp",
}

# Kinds whose groups partition all the ranks they cover but need not cover the world.
PARTIAL_COVER_KINDS: frozenset[str] = frozenset(FINE_GRAINED_TP_SIZE_FIELDS) | {"p_tp"}

# Kinds whose every group must lie inside one PP stage (docs/layout.md invariants; the EP aliases
# share ep's members, so they share its constraint).
STAGE_LOCAL_KINDS: frozenset[str] = frozenset(
    ("tp", "pcp", "ep", *EP_ALIAS_KINDS, *FINE_GRAINED_TP_SIZE_FIELDS,
     "flashcomm2_otp", "flashcomm2_odp", "shard_weight"))


class RankCoordinates(NamedTuple):
    """Position of a rank on the (external DP, DP, PP, PCP, TP) grid."""

    e: int
    d: int
    p: int
    c: int
    t: int


def _require_size(name: str, value) -> None:
    # bool is an int subclass; `--tp True` is a bug, not a size.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """A parallel configuration of vLLM + vllm-ascend, validated on construction.

    Sizes: ``world_size`` ranks split as E x DP x PP x PCP x TP (E, the external-DP replica count, is
    derived). Optional vllm-ascend features:

    - ``otp``, ``lmhead_tp``, ``embed_tp``, ``mlp_tp``: fine-grained TP size g for o_proj, the LM head,
      the embedding and the MLP; each must divide DP.
    - ``flashcomm2_otp``: FlashComm2 o_proj TP size o; must divide TP.
    - ``layer_sharding``: build the ``shard_weight`` groups; ``dsa_cp`` makes them span a whole PP stage
      (unless FlashComm2 with o > 1 is on, which takes precedence as it does for o_proj in vllm-ascend).
    - ``pd_tp_ratio``, ``pd_head_ratio``, ``num_head_replica``, ``kv_producer``: PD disaggregation; the
      prefill all-to-all groups ``p_tp`` exist on a KV producer with pd_head_ratio > 1.

    Every inconsistency raises :class:`ConfigError` with one line naming the numbers::

        >>> ParallelConfig(world_size=12, tp=2, pp=2, dp=2)
        Traceback (most recent call last):
        ...
        ascend_conformance.errors.ConfigError: world_size 12 is not divisible by dp*pp*pcp*tp = 2*2*1*2 = 8
    """

    world_size: int
    tp: int
    pp: int
    dp: int
    pcp: int = 1
    otp: int | None = None
    lmhead_tp: int | None = None
    embed_tp: int | None = None
    mlp_tp: int | None = None
    flashcomm2_otp: int | None = None
    layer_sharding: bool = False
    dsa_cp: bool = False
    pd_tp_ratio: int | None = None
    pd_head_ratio: int | None = None
    num_head_replica: int | None = None
    kv_producer: bool = False

    def __post_init__(self) -> None:
        for name in ("world_size", "tp", "pp", "dp", "pcp"):
            _require_size(name, getattr(self, name))
        for name in ("otp", "lmhead_tp", "embed_tp", "mlp_tp", "flashcomm2_otp",
                     "pd_tp_ratio", "pd_head_ratio", "num_head_replica"):
            if getattr(self, name) is not None:
                _require_size(name, getattr(self, name))
        for name in ("layer_sharding", "dsa_cp", "kv_producer"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")

        model_ranks = self.dp * self.pp * self.pcp * self.tp
        if self.world_size % model_ranks:
            raise ConfigError(
                f"world_size {self.world_size} is not divisible by dp*pp*pcp*tp = "
                f"{self.dp}*{self.pp}*{self.pcp}*{self.tp} = {model_ranks}")

        for kind, field in FINE_GRAINED_TP_SIZE_FIELDS.items():
            size = getattr(self, field)
            if size is not None and self.dp % size:
                raise ConfigError(
                    f"{field} {size} does not divide dp {self.dp}: {kind} groups are chunks of "
                    f"{field} consecutive DP indices")

        if self.flashcomm2_otp is not None and self.tp % self.flashcomm2_otp:
            raise ConfigError(
                f"flashcomm2_otp {self.flashcomm2_otp} does not divide tp {self.tp}")

        if self.pd_tp_ratio is not None and self.tp % self.pd_tp_ratio:
            raise ConfigError(f"pd_tp_ratio {self.pd_tp_ratio} does not divide tp {self.tp}")

        if self.has_p_tp:
            if self.pd_tp_ratio is None:
                raise ConfigError(
                    f"pd_head_ratio {self.pd_head_ratio} > 1 on a KV producer needs pd_tp_ratio "
                    f"(the prefill all-to-all group size)")
            replicas = self.head_replicas
            # Each length-nh row (nh = tp / R) is cut into chunks of nh / (tp / pd_tp_ratio)
            # = pd_tp_ratio / R ranks, a whole number only when R divides pd_tp_ratio.
            if replicas > 1 and self.pd_tp_ratio % replicas:
                raise ConfigError(
                    f"num_head_replica {replicas} does not divide pd_tp_ratio {self.pd_tp_ratio}: "
                    f"each p_tp group would hold {self.pd_tp_ratio}/{replicas} ranks")

    # -- derived sizes ---------------------------------------------------------------------------

    @property
    def external_dp(self) -> int:
        """E: independent model replicas outside vLLM's DP (e.g. one per verl rollout worker)."""
        return self.world_size // (self.dp * self.pp * self.pcp * self.tp)

    @property
    def ep_size(self) -> int:
        return self.dp * self.pcp * self.tp

    @property
    def flashcomm2_odp_size(self) -> int | None:
        """n = TP / o: the number of FlashComm2 OTP groups per TP group (the ODP group size)."""
        return None if self.flashcomm2_otp is None else self.tp // self.flashcomm2_otp

    @property
    def has_p_tp(self) -> bool:
        return self.kv_producer and self.pd_head_ratio is not None and self.pd_head_ratio > 1

    @property
    def head_replicas(self) -> int:
        """R = num_head_replica, where unset means 1 (no replication)."""
        return 1 if self.num_head_replica is None else self.num_head_replica

    def group_kinds(self) -> tuple[str, ...]:
        """The kinds this configuration implies, in :data:`GROUP_KINDS` order."""
        present = {"world", "tp", "pcp", "pp", "dp", "ep", *EP_ALIAS_KINDS}
        present |= {kind for kind, field in FINE_GRAINED_TP_SIZE_FIELDS.items()
                    if getattr(self, field) is not None}
        if self.flashcomm2_otp is not None:
            present.add("flashcomm2_odp")
            if self.flashcomm2_otp > 1:
                present.add("flashcomm2_otp")
        if self.layer_sharding:
            present.add("shard_weight")
        if self.has_p_tp:
            present.add("p_tp")
        return tuple(kind for kind in GROUP_KINDS if kind in present)

    def describe(self) -> str:
        """One line, e.g. ``world 8 = E1 x DP2 x PP2 x PCP1 x TP2, otp 2``."""
        text = (f"world {self.world_size} = E{self.external_dp} x DP{self.dp} x PP{self.pp} "
                f"x PCP{self.pcp} x TP{self.tp}")
        extras = [f"{field} {getattr(self, field)}" for field in
                  ("otp", "lmhead_tp", "embed_tp", "mlp_tp", "flashcomm2_otp", "pd_tp_ratio",
                   "pd_head_ratio", "num_head_replica") if getattr(self, field) is not None]
        extras += [flag for flag in ("layer_sharding", "dsa_cp", "kv_producer") if getattr(self, flag)]
        return text + (", " + ", ".join(extras) if extras else "")


# -- rank <-> coordinates -------------------------------------------------------------------------

def rank_coordinates(rank: int, config: ParallelConfig) -> RankCoordinates:
    """(e, d, p, c, t) of ``rank``; e.g. rank 6 of DP2 PP2 TP2 is (e=0, d=1, p=1, c=0, t=0)."""
    if not 0 <= rank < config.world_size:
        raise ConfigError(f"rank {rank} is outside world 0..{config.world_size - 1}")
    rest, t = divmod(rank, config.tp)
    rest, c = divmod(rest, config.pcp)
    rest, p = divmod(rest, config.pp)
    e, d = divmod(rest, config.dp)
    return RankCoordinates(e, d, p, c, t)


def rank_of(coords: RankCoordinates, config: ParallelConfig) -> int:
    """Inverse of :func:`rank_coordinates`: ``((((e*DP + d)*PP + p)*PCP + c)*TP + t)``."""
    e, d, p, c, t = coords
    for name, value, size in (("e", e, config.external_dp), ("d", d, config.dp), ("p", p, config.pp),
                              ("c", c, config.pcp), ("t", t, config.tp)):
        if not 0 <= value < size:
            raise ConfigError(f"coordinate {name}={value} is outside 0..{size - 1}")
    return (((e * config.dp + d) * config.pp + p) * config.pcp + c) * config.tp + t


def pp_stage(rank: int, config: ParallelConfig) -> int:
    """The pipeline stage p of ``rank``."""
    return rank_coordinates(rank, config).p


def external_dp_replica(rank: int, config: ParallelConfig) -> int:
    """The external-DP replica e of ``rank``."""
    return rank_coordinates(rank, config).e


# -- building groups ------------------------------------------------------------------------------

# A kind is "ranks with equal key form a group, ordered by position". Both are functions of the
# coordinates, which keeps each rule of docs/layout.md on one line below.
_KeyFn = Callable[[RankCoordinates], tuple]
_PositionFn = Callable[[RankCoordinates, int], int]


def group_by(config: ParallelConfig, key: _KeyFn, position: _PositionFn) -> list[list[int]]:
    """Group all ranks by ``key(coords)``, order each group by ``position(coords, rank)``, and list
    the groups by ascending lowest rank."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for rank in range(config.world_size):
        coords = rank_coordinates(rank, config)
        groups.setdefault(key(coords), []).append((position(coords, rank), rank))
    ordered = [[rank for _, rank in sorted(members)] for members in groups.values()]
    return sorted(ordered, key=min)


def _fine_grained_tp(config: ParallelConfig, size: int) -> list[list[int]]:
    # Consecutive chunks of `size` DP indices with (e, p, c, t) fixed; order d.
    return group_by(config, lambda x: (x.e, x.p, x.c, x.t, x.d // size), lambda x, r: x.d)


def _shard_weight(config: ParallelConfig) -> list[list[int]]:
    # Ranks of one PP stage that hold the same module-TP index, ascending rank.
    n = config.flashcomm2_odp_size
    if config.flashcomm2_otp is not None and config.flashcomm2_otp > 1:
        module_tp_index = lambda x: x.t // n  # noqa: E731 - FlashComm2 OTP group rank j
    elif config.flashcomm2_otp == 1 or config.dsa_cp:
        module_tp_index = lambda x: 0  # noqa: E731 - no module TP: the whole stage is one group
    else:
        module_tp_index = lambda x: x.t  # noqa: E731 - the vLLM TP rank
    return group_by(config, lambda x: (x.e, x.p, module_tp_index(x)), lambda x, r: r)


def _prefill_all_to_all(config: ParallelConfig) -> list[list[int]]:
    # vllm-ascend phrases p_tp over rows of DP*PCP*TP consecutive ranks viewed as [DP*PCP, nh, R].
    # Each TP-aligned run of TP consecutive ranks is exactly one TP group (TP is the innermost
    # coordinate), so the same rule reads: inside each TP group T (key e, d, p, c) ...
    ratio = config.pd_tp_ratio
    replicas = config.head_replicas
    tp_group = lambda x: (x.e, x.d, x.p, x.c)  # noqa: E731
    if replicas <= 1:
        # ... consecutive chunks of pd_tp_ratio members.
        return group_by(config, lambda x: (*tp_group(x), x.t // ratio), lambda x, r: x.t % ratio)
    # ... view T as [nh, R] (t = h*R + r), transpose to [R, nh], cut each row into chunks of
    # nh / (TP / pd_tp_ratio) = pd_tp_ratio / R members.
    chunk = ratio // replicas
    return group_by(
        config,
        lambda x: (*tp_group(x), x.t % replicas, (x.t // replicas) // chunk),
        lambda x, r: (x.t // replicas) % chunk)


def build_layout(config: ParallelConfig) -> dict[str, list[list[int]]]:
    """Every group kind ``config`` implies, as ordered rank lists (docs/layout.md).

    >>> layout = build_layout(ParallelConfig(world_size=8, tp=2, pp=2, dp=2))
    >>> layout["pp"], layout["ep"]
    ([[0, 2], [1, 3], [4, 6], [5, 7]], [[0, 1, 4, 5], [2, 3, 6, 7]])
    """
    tp, pcp = config.tp, config.pcp
    layout: dict[str, list[list[int]]] = {"world": [list(range(config.world_size))]}
    layout["tp"] = group_by(config, lambda x: (x.e, x.d, x.p, x.c), lambda x, r: x.t)
    layout["pcp"] = group_by(config, lambda x: (x.e, x.d, x.p, x.t), lambda x, r: x.c)
    layout["pp"] = group_by(config, lambda x: (x.e, x.d, x.c, x.t), lambda x, r: x.p)
    layout["dp"] = group_by(config, lambda x: (x.e, x.p, x.c, x.t), lambda x, r: x.d)
    layout["ep"] = group_by(config, lambda x: (x.e, x.p), lambda x, r: (x.d * pcp + x.c) * tp + x.t)
    for alias in EP_ALIAS_KINDS:
        layout[alias] = [list(group) for group in layout["ep"]]
    for kind, field in FINE_GRAINED_TP_SIZE_FIELDS.items():
        if getattr(config, field) is not None:
            layout[kind] = _fine_grained_tp(config, getattr(config, field))
    if config.flashcomm2_otp is not None:
        n = config.flashcomm2_odp_size
        if config.flashcomm2_otp > 1:
            # group i = [T[i + j*n] for j < o]: t = i + j*n, order j.
            layout["flashcomm2_otp"] = group_by(
                config, lambda x: (x.e, x.d, x.p, x.c, x.t % n), lambda x, r: x.t // n)
        # group j = [T[i + j*n] for i < n], order i; with o == 1 this is the TP group itself.
        layout["flashcomm2_odp"] = group_by(
            config, lambda x: (x.e, x.d, x.p, x.c, x.t // n), lambda x, r: x.t % n)
    if config.layer_sharding:
        layout["shard_weight"] = _shard_weight(config)
    if config.has_p_tp:
        layout["p_tp"] = _prefill_all_to_all(config)
    # Insertion order above follows GROUP_KINDS; assert it so the printed order never drifts.
    assert tuple(layout) == config.group_kinds(), (tuple(layout), config.group_kinds())
    return layout
