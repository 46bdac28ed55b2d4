"""Rank layouts of every parallel group (docs/layout.md), device-free.

Read top to bottom this is the specification of :mod:`ascend_conformance.topology` and
:mod:`ascend_conformance.invariants`:

1. the rank formula ``rank = ((((e*DP + d)*PP + p)*PCP + c)*TP + t)``;
2. golden layouts worked out by hand from docs/layout.md for every group kind;
3. a sweep of configurations (world 1..64, external DP, PP with DP, PCP, every optional kind) on which
   the reference satisfies every invariant and every kind has the expected shape;
4. every kind of invalid configuration, each a one-line ConfigError naming the numbers;
5. a layout read on the wrong grid (PP outside DP), which the checker must name wherever it crosses stages;
6. mutations of a good layout, each reported as exactly the defect introduced;
7. layout comparison (for live captures).
"""
from __future__ import annotations

import copy
import itertools

import pytest

from ascend_conformance.errors import ConfigError
from ascend_conformance.invariants import check_layout, compare_layouts
from ascend_conformance.topology import (
    GROUP_KINDS, ParallelConfig, RankCoordinates, build_layout, rank_coordinates, rank_of,
)


def config(world_size, tp=1, pp=1, dp=1, **options) -> ParallelConfig:
    return ParallelConfig(world_size=world_size, tp=tp, pp=pp, dp=dp, **options)


def config_id(c: ParallelConfig) -> str:
    text = f"W{c.world_size}-E{c.external_dp}-DP{c.dp}-PP{c.pp}-PCP{c.pcp}-TP{c.tp}"
    for field in ("otp", "lmhead_tp", "embed_tp", "mlp_tp", "flashcomm2_otp", "pd_tp_ratio",
                  "pd_head_ratio", "num_head_replica"):
        if getattr(c, field) is not None:
            text += f"-{field}{getattr(c, field)}"
    for flag in ("layer_sharding", "dsa_cp", "kv_producer"):
        if getattr(c, flag):
            text += f"-{flag}"
    return text


def reported(violations) -> set[tuple]:
    """(kind, rule, group) of each violation: what a mutation test asserts exactly."""
    return {(v.kind, v.rule, v.group) for v in violations}


# The worked example of docs/layout.md and of topology.py's docstring.
DP2_PP2_TP2 = config(8, tp=2, pp=2, dp=2)


# --- 1. rank formula ------------------------------------------------------------------------------

@pytest.mark.parametrize("c, rank, coords", [
    # DP2 PP2 TP2: rank = (d*2 + p)*2 + t
    (DP2_PP2_TP2, 0, (0, 0, 0, 0, 0)),
    (DP2_PP2_TP2, 3, (0, 0, 1, 0, 1)),
    (DP2_PP2_TP2, 6, (0, 1, 1, 0, 0)),
    # E2 DP2 PP2 PCP2 TP2 (world 32): rank = e*16 + d*8 + p*4 + c*2 + t
    (config(32, tp=2, pp=2, dp=2, pcp=2), 29, (1, 1, 1, 0, 1)),
    (config(32, tp=2, pp=2, dp=2, pcp=2), 14, (0, 1, 1, 1, 0)),
    # TP3 DP2, E2 (world 12): rank = e*6 + d*3 + t
    (config(12, tp=3, dp=2), 10, (1, 1, 0, 0, 1)),
])
def test_rank_coordinates_follow_the_vllm_formula(c, rank, coords):
    assert rank_coordinates(rank, c) == RankCoordinates(*coords)
    assert rank_of(RankCoordinates(*coords), c) == rank


@pytest.mark.parametrize("c", [DP2_PP2_TP2, config(48, tp=2, pp=2, dp=3, pcp=2)], ids=config_id)
def test_rank_of_inverts_rank_coordinates_on_every_rank(c):
    assert [rank_of(rank_coordinates(r, c), c) for r in range(c.world_size)] == list(range(c.world_size))


def test_rank_helpers_reject_ranks_and_coordinates_outside_the_world():
    with pytest.raises(ConfigError, match=r"^rank 8 is outside world 0\.\.7$"):
        rank_coordinates(8, DP2_PP2_TP2)
    with pytest.raises(ConfigError, match=r"^coordinate p=2 is outside 0\.\.1$"):
        rank_of(RankCoordinates(0, 0, 2, 0, 0), DP2_PP2_TP2)


# --- 2. golden layouts, worked by hand from docs/layout.md ---------------------------------------

def test_worked_example_dp2_pp2_tp2():
    layout = build_layout(DP2_PP2_TP2)
    assert layout["world"] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert layout["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout["pp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout["ep"] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert layout["pcp"] == [[0], [1], [2], [3], [4], [5], [6], [7]]
    for alias in ("mc2", "dynamic_eplb", "fc3_quant_x"):
        assert layout[alias] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert list(layout) == ["world", "tp", "pcp", "pp", "dp", "ep", "mc2", "dynamic_eplb",
                            "fc3_quant_x"]


def test_pcp_dp2_pp2_pcp2_tp2():
    # rank = d*8 + p*4 + c*2 + t; ep_rank = (d*2 + c)*2 + t.
    layout = build_layout(config(16, tp=2, pp=2, dp=2, pcp=2))
    assert layout["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout["pcp"] == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert layout["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13], [10, 14], [11, 15]]
    assert layout["dp"] == [[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15]]
    assert layout["ep"] == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]


def test_pcp_sits_between_dp_and_tp():
    # DP2 PCP2 TP1 (world 4): rank = d*2 + c; pcp groups vary c, dp groups vary d, EP spans both.
    layout = build_layout(config(4, dp=2, pcp=2))
    assert layout["pcp"] == [[0, 1], [2, 3]]
    assert layout["dp"] == [[0, 2], [1, 3]]
    assert layout["ep"] == [[0, 1, 2, 3]]


def test_external_dp_e2_dp2_pp2_tp2():
    # world 16 -> E = 2; rank = e*8 + d*4 + p*2 + t; one EP group per (e, p).
    layout = build_layout(config(16, tp=2, pp=2, dp=2))
    assert layout["world"] == [list(range(16))]
    assert layout["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13], [10, 14], [11, 15]]
    assert layout["pp"] == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert layout["ep"] == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_external_dp_only():
    # DP = PP = TP = 1 on 4 ranks: four independent replicas, every model group a singleton.
    layout = build_layout(config(4))
    assert layout["world"] == [[0, 1, 2, 3]]
    for kind in ("tp", "pcp", "pp", "dp", "ep", "mc2"):
        assert layout[kind] == [[0], [1], [2], [3]]


def test_otp_on_dp2_pp2_tp2_stays_inside_each_stage():
    # g = 2 consecutive DP indices with (p, t) fixed: rank (d=0, p, t) with rank (d=1, p, t).
    assert build_layout(config(8, tp=2, pp=2, dp=2, otp=2))["otp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_fine_grained_tp_on_dp4():
    # DP4 PP2 TP1 (world 8): rank = d*2 + p. g = 2 -> DP chunks {0,1}, {2,3} for each p.
    layout = build_layout(config(8, pp=2, dp=4, otp=2, lmhead_tp=4, embed_tp=1))
    assert layout["otp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout["lmheadtp"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert layout["emtp"] == [[0], [1], [2], [3], [4], [5], [6], [7]]
    # DP4 TP2 (world 8): rank = d*2 + t. g = 2 for each t.
    assert build_layout(config(8, tp=2, dp=4, mlp_tp=2))["mlptp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    # PCP keeps fine-grained groups apart: DP2 PCP2 (world 4), rank = d*2 + c.
    assert build_layout(config(4, dp=2, pcp=2, otp=2))["otp"] == [[0, 2], [1, 3]]


def test_flashcomm2_otp_and_odp():
    # TP4, o = 2, n = 2: OTP i = [T[i], T[i+2]], ODP j = [T[2j], T[2j+1]].
    layout = build_layout(config(4, tp=4, flashcomm2_otp=2))
    assert layout["flashcomm2_otp"] == [[0, 2], [1, 3]]
    assert layout["flashcomm2_odp"] == [[0, 1], [2, 3]]
    # TP8, o = 2, n = 4.
    layout = build_layout(config(8, tp=8, flashcomm2_otp=2))
    assert layout["flashcomm2_otp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout["flashcomm2_odp"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # TP8, o = 4, n = 2.
    layout = build_layout(config(8, tp=8, flashcomm2_otp=4))
    assert layout["flashcomm2_otp"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert layout["flashcomm2_odp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # DP2 TP4, o = 2: the same pattern inside each TP group.
    layout = build_layout(config(8, tp=4, dp=2, flashcomm2_otp=2))
    assert layout["flashcomm2_otp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout["flashcomm2_odp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_flashcomm2_with_o1_has_no_otp_group_and_odp_is_tp():
    layout = build_layout(config(8, tp=4, dp=2, flashcomm2_otp=1))
    assert "flashcomm2_otp" not in layout
    assert layout["flashcomm2_odp"] == [[0, 1, 2, 3], [4, 5, 6, 7]] == layout["tp"]


def test_shard_weight_module_tp_is_tp_by_default():
    # DP2 PP2 TP2: stage 0 = {0, 1, 4, 5}, stage 1 = {2, 3, 6, 7}; same t inside a stage.
    layout = build_layout(config(8, tp=2, pp=2, dp=2, layer_sharding=True))
    assert layout["shard_weight"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("options", [{"dsa_cp": True}, {"flashcomm2_otp": 1}], ids=["dsa_cp", "fc2_o1"])
def test_shard_weight_without_module_tp_spans_the_whole_stage(options):
    layout = build_layout(config(8, tp=2, pp=2, dp=2, layer_sharding=True, **options))
    assert layout["shard_weight"] == [[0, 1, 4, 5], [2, 3, 6, 7]]


@pytest.mark.parametrize("dsa_cp", [False, True])
def test_shard_weight_follows_flashcomm2_otp_when_o_above_1(dsa_cp):
    # DP2 TP4 o = 2, n = 2: OTP group rank j = t // 2, so t in {0,1} -> j 0 and t in {2,3} -> j 1;
    # FlashComm2 with o > 1 takes precedence over DSA-CP.
    layout = build_layout(config(8, tp=4, dp=2, flashcomm2_otp=2, layer_sharding=True, dsa_cp=dsa_cp))
    assert layout["shard_weight"] == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_p_tp_without_head_replicas_is_consecutive_chunks_of_pd_tp_ratio():
    pd = {"pd_tp_ratio": 2, "pd_head_ratio": 2, "kv_producer": True}
    assert build_layout(config(4, tp=4, **pd))["p_tp"] == [[0, 1], [2, 3]]
    assert build_layout(config(8, tp=4, dp=2, num_head_replica=1, **pd))["p_tp"] == [
        [0, 1], [2, 3], [4, 5], [6, 7]]


def test_p_tp_with_head_replicas():
    # TP8, pd_tp_ratio 4, R 2: nh = 4; [[0,1],[2,3],[4,5],[6,7]] -> transpose [[0,2,4,6],[1,3,5,7]]
    # -> chunks of nh / (TP / pd_tp_ratio) = 4 / 2 = 2.
    pd = {"pd_tp_ratio": 4, "pd_head_ratio": 2, "num_head_replica": 2, "kv_producer": True}
    assert build_layout(config(8, tp=8, **pd))["p_tp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    # DP2 TP4, same ratios: nh = 2, chunks of 2 / 1 = 2, per DP rank.
    assert build_layout(config(8, tp=4, dp=2, **pd))["p_tp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    # TP8, pd_tp_ratio 8, R 4: nh = 2 -> rows [0,4], [1,5], [2,6], [3,7]; chunks of 2 / 1 = 2.
    pd = {"pd_tp_ratio": 8, "pd_head_ratio": 2, "num_head_replica": 4, "kv_producer": True}
    assert build_layout(config(8, tp=8, **pd))["p_tp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("options", [
    {"pd_tp_ratio": 2, "pd_head_ratio": 2},                       # not the KV producer
    {"pd_tp_ratio": 2, "pd_head_ratio": 1, "kv_producer": True},  # no head redistribution
], ids=["consumer", "head_ratio_1"])
def test_p_tp_only_exists_on_a_kv_producer_with_pd_head_ratio_above_1(options):
    assert "p_tp" not in build_layout(config(4, tp=4, **options))


# --- 3. sweep: invariants and shapes on every reference layout -------------------------------------

FC2 = "flashcomm2_otp"
PD = {"pd_head_ratio": 2, "kv_producer": True}
SWEEP = [
    config(1),
    config(2, tp=2), config(2, dp=2), config(2, pp=2), config(2, pcp=2), config(2),
    config(2, dp=2, otp=2, lmhead_tp=1), config(2, tp=2, **{FC2: 1}, layer_sharding=True),
    config(2, tp=2, **{FC2: 2}, layer_sharding=True),
    config(4, tp=4), config(4, dp=4), config(4, pp=4), config(4, tp=2, dp=2), config(4, tp=2, pp=2),
    config(4, dp=2, pp=2, otp=2, layer_sharding=True), config(4, tp=2, pcp=2), config(4, dp=2, pcp=2),
    config(4, tp=2), config(4, dp=4, otp=2, lmhead_tp=4, embed_tp=1, mlp_tp=2),
    config(4, tp=4, **{FC2: 2}, layer_sharding=True), config(4, tp=4, pd_tp_ratio=2, **PD),
    config(4, tp=4, pd_tp_ratio=2, num_head_replica=2, **PD),
    config(6, tp=3, dp=2), config(6, tp=2, pp=3), config(6, dp=3, otp=3, embed_tp=3), config(6),
    DP2_PP2_TP2, config(8, tp=2, pp=2, dp=2, otp=2),
    config(8, tp=2, pp=2, dp=2, otp=2, lmhead_tp=2, embed_tp=2, mlp_tp=2, **{FC2: 2},
           layer_sharding=True, pd_tp_ratio=2, **PD),
    config(8, tp=8, pd_tp_ratio=4, num_head_replica=2, **PD),
    config(8, tp=2, pp=2, dp=2, layer_sharding=True, dsa_cp=True),
    config(12, tp=2, pp=2, dp=3), config(12, tp=2, dp=2, pcp=3), config(12, tp=3, dp=2, otp=2),
    config(16, tp=2, pp=2, dp=2, pcp=2), config(16, tp=2, pp=2, dp=2, otp=2, layer_sharding=True),
    config(16, tp=8, dp=2, **{FC2: 4}, layer_sharding=True, dsa_cp=True),
    config(16, tp=16, pd_tp_ratio=8, num_head_replica=4, **PD),
    config(24, tp=4, pp=2, dp=3), config(24, tp=4, dp=3, otp=3, mlp_tp=1, pd_tp_ratio=4, **PD),
    config(32, tp=4, pp=2, dp=4, otp=2, lmhead_tp=4, layer_sharding=True),
    config(32, tp=2, pp=2, dp=2, pcp=2, embed_tp=2),
    config(32, tp=8, dp=4, **{FC2: 2}, pd_tp_ratio=4, num_head_replica=2, **PD),
    config(48, tp=4, pp=4, dp=3), config(48, tp=4, pp=2, dp=2, mlp_tp=2),
    config(64, tp=8, dp=8, otp=8, embed_tp=4, lmhead_tp=2, **{FC2: 4}, layer_sharding=True),
    config(64, tp=4, pp=4, dp=4, otp=2, layer_sharding=True),
    config(64, tp=2, pp=2, dp=2, pcp=2, layer_sharding=True, dsa_cp=True),
    config(64, tp=8, pp=2, dp=2, pcp=2, **{FC2: 8}, pd_tp_ratio=8, num_head_replica=2, **PD),
    config(64),
]


def expected_kinds(c: ParallelConfig) -> set[str]:
    """The existence table of topology.py's docstring, restated."""
    kinds = {"world", "tp", "pcp", "pp", "dp", "ep", "mc2", "dynamic_eplb", "fc3_quant_x"}
    kinds |= {kind for kind, size in (("otp", c.otp), ("lmheadtp", c.lmhead_tp), ("emtp", c.embed_tp),
                                      ("mlptp", c.mlp_tp)) if size is not None}
    if c.flashcomm2_otp is not None:
        kinds |= {"flashcomm2_odp"} | ({"flashcomm2_otp"} if c.flashcomm2_otp > 1 else set())
    if c.layer_sharding:
        kinds.add("shard_weight")
    if c.kv_producer and (c.pd_head_ratio or 0) > 1:
        kinds.add("p_tp")
    return kinds


def expected_group_size(kind: str, c: ParallelConfig) -> int:
    """Group sizes that follow from docs/layout.md's table (every group of a kind has the same size)."""
    n = None if c.flashcomm2_otp is None else c.tp // c.flashcomm2_otp
    if kind == "shard_weight":
        # Every (d, c) of one stage, times the TP indices t sharing one module-TP index:
        # n of them under FlashComm2 o > 1 (t // n), all TP without module TP, else one (t itself).
        if c.flashcomm2_otp is not None and c.flashcomm2_otp > 1:
            return c.dp * c.pcp * n
        return c.dp * c.pcp * (c.tp if (c.flashcomm2_otp == 1 or c.dsa_cp) else 1)
    if kind == "p_tp":
        return c.pd_tp_ratio // (c.num_head_replica or 1)
    return {
        "world": c.world_size, "tp": c.tp, "pcp": c.pcp, "pp": c.pp, "dp": c.dp,
        "ep": c.dp * c.pcp * c.tp, "mc2": c.dp * c.pcp * c.tp, "dynamic_eplb": c.dp * c.pcp * c.tp,
        "fc3_quant_x": c.dp * c.pcp * c.tp, "otp": c.otp, "lmheadtp": c.lmhead_tp,
        "emtp": c.embed_tp, "mlptp": c.mlp_tp, "flashcomm2_otp": c.flashcomm2_otp,
        "flashcomm2_odp": n,
    }[kind]


def test_sweep_has_the_promised_coverage():
    assert len(SWEEP) >= 40
    assert {c.world_size for c in SWEEP} >= {1, 2, 4, 8, 16, 32, 64}
    assert any(c.external_dp > 1 for c in SWEEP)
    assert any(c.pp > 1 and c.dp > 1 for c in SWEEP)
    assert any(c.pcp > 1 for c in SWEEP)
    covered = set().union(*(expected_kinds(c) for c in SWEEP))
    assert covered == set(GROUP_KINDS)
    assert any(c.num_head_replica and c.num_head_replica > 1 for c in SWEEP if "p_tp" in expected_kinds(c))


@pytest.mark.parametrize("c", SWEEP, ids=config_id)
def test_reference_layout_satisfies_every_invariant(c):
    layout = build_layout(c)
    assert set(layout) == expected_kinds(c)
    for kind, groups in layout.items():
        size = expected_group_size(kind, c)
        assert {len(group) for group in groups} == {size}, kind
        assert len(groups) == c.world_size // size, kind  # every kind here covers the whole world
        assert [min(group) for group in groups] == sorted(min(group) for group in groups), kind
    assert check_layout(layout, c) == []


def _every_valid_config(max_world: int):
    divisors = {w: [s for s in range(1, w + 1) if w % s == 0] for w in range(1, max_world + 1)}
    for world in range(1, max_world + 1):
        for tp, pp, dp, pcp in itertools.product(divisors[world], repeat=4):
            if world % (tp * pp * dp * pcp):
                continue
            # The largest fine-grained / FlashComm2 / p_tp groups the sizes allow.
            yield config(world, tp=tp, pp=pp, dp=dp, pcp=pcp, otp=dp, layer_sharding=True,
                         flashcomm2_otp=tp if tp > 1 else None, pd_tp_ratio=tp, **PD)


@pytest.mark.full
def test_every_valid_config_up_to_world_64_satisfies_every_invariant():
    configs = list(_every_valid_config(64))
    assert len(configs) > 3000
    for c in configs:
        assert check_layout(build_layout(c), c) == [], config_id(c)


@pytest.mark.full
def test_divergent_grid_differs_exactly_when_pp_and_dp_exceed_1():
    for c in _every_valid_config(32):
        diverges = c.pp > 1 and c.dp > 1
        assert (wrong_grid_layout(c) != build_layout(c)) == diverges, config_id(c)
        crossing = {v.kind for v in check_layout(wrong_grid_layout(c), c) if v.rule == "crosses_stages"}
        assert crossing == ({"otp", "shard_weight", "mc2"} if diverges else set()), config_id(c)


# --- 4. invalid configurations --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(world_size=12, tp=2, pp=2, dp=2),
     "world_size 12 is not divisible by dp*pp*pcp*tp = 2*2*1*2 = 8"),
    (dict(world_size=8, tp=2, pp=1, dp=2, pcp=3),
     "world_size 8 is not divisible by dp*pp*pcp*tp = 2*1*3*2 = 12"),
    (dict(world_size=0, tp=1, pp=1, dp=1), "world_size must be a whole number >= 1, got 0"),
    (dict(world_size=8, tp=0, pp=1, dp=1), "tp must be a whole number >= 1, got 0"),
    (dict(world_size=8, tp=1, pp=-2, dp=1), "pp must be a whole number >= 1, got -2"),
    (dict(world_size=8, tp=1, pp=1, dp=0), "dp must be a whole number >= 1, got 0"),
    (dict(world_size=8, tp=1, pp=1, dp=1, pcp=0), "pcp must be a whole number >= 1, got 0"),
    (dict(world_size=8, tp="2", pp=1, dp=1), "tp must be a whole number >= 1, got '2'"),
    (dict(world_size=8, tp=True, pp=1, dp=1), "tp must be a whole number >= 1, got True"),
    (dict(world_size=8, tp=2, pp=1, dp=4, otp=0), "otp must be a whole number >= 1, got 0"),
    (dict(world_size=8, tp=2, pp=1, dp=4, otp=3),
     "otp 3 does not divide dp 4: otp groups are chunks of otp consecutive DP indices"),
    (dict(world_size=8, tp=2, pp=1, dp=4, lmhead_tp=8),
     "lmhead_tp 8 does not divide dp 4: lmheadtp groups are chunks of lmhead_tp consecutive DP indices"),
    (dict(world_size=6, tp=1, pp=1, dp=6, embed_tp=4),
     "embed_tp 4 does not divide dp 6: emtp groups are chunks of embed_tp consecutive DP indices"),
    (dict(world_size=4, tp=2, pp=1, dp=2, mlp_tp=4),
     "mlp_tp 4 does not divide dp 2: mlptp groups are chunks of mlp_tp consecutive DP indices"),
    (dict(world_size=4, tp=4, pp=1, dp=1, flashcomm2_otp=3), "flashcomm2_otp 3 does not divide tp 4"),
    (dict(world_size=4, tp=4, pp=1, dp=1, flashcomm2_otp=8), "flashcomm2_otp 8 does not divide tp 4"),
    (dict(world_size=4, tp=4, pp=1, dp=1, pd_tp_ratio=3), "pd_tp_ratio 3 does not divide tp 4"),
    (dict(world_size=4, tp=4, pp=1, dp=1, pd_tp_ratio=0), "pd_tp_ratio must be a whole number >= 1, got 0"),
    (dict(world_size=4, tp=4, pp=1, dp=1, pd_head_ratio=0), "pd_head_ratio must be a whole number >= 1, got 0"),
    (dict(world_size=4, tp=4, pp=1, dp=1, pd_tp_ratio=2, num_head_replica=0),
     "num_head_replica must be a whole number >= 1, got 0"),
    (dict(world_size=4, tp=4, pp=1, dp=1, pd_head_ratio=2, kv_producer=True),
     "pd_head_ratio 2 > 1 on a KV producer needs pd_tp_ratio (the prefill all-to-all group size)"),
    (dict(world_size=8, tp=8, pp=1, dp=1, pd_tp_ratio=2, pd_head_ratio=2, num_head_replica=4,
          kv_producer=True),
     "num_head_replica 4 does not divide pd_tp_ratio 2: each p_tp group would hold 2/4 ranks"),
    (dict(world_size=2, tp=2, pp=1, dp=1, layer_sharding="yes"),
     "layer_sharding must be True or False, got 'yes'"),
])
def test_invalid_configuration_is_one_line_naming_the_numbers(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        ParallelConfig(**kwargs)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


# --- 5. a layout read on the wrong grid ----------------------------------------------------------

def wrong_grid_layout(c: ParallelConfig) -> dict:
    """build_layout(c), except that the fine-grained TP kinds and shard_weight are built on a (pp, dp, tp)
    grid (PP outside DP, where the rank formula has DP outside PP) and mc2 as consecutive blocks of
    DP*PCP*TP ranks: the mistakes a release can make, each coinciding with the reference when PP = 1 or
    DP = 1. (What the real releases build is judged in suites/test_sut_groups.py.)"""
    layout = build_layout(c)
    cells = list(itertools.product(range(c.external_dp), range(c.pp), range(c.dp), range(c.pcp), range(c.tp)))

    def wrong(e, p, d, k, t):
        return (((e * c.pp + p) * c.dp + d) * c.pcp + k) * c.tp + t

    for kind, size in (("otp", c.otp), ("lmheadtp", c.lmhead_tp), ("emtp", c.embed_tp), ("mlptp", c.mlp_tp)):
        if size is not None:
            groups: dict = {}
            for e, p, d, k, t in cells:  # d ascends within each (e, p, k, t): members in d order
                groups.setdefault((e, p, k, t, d // size), []).append(wrong(e, p, d, k, t))
            layout[kind] = sorted(groups.values(), key=min)
    if c.layer_sharding:
        n = c.tp // c.flashcomm2_otp if c.flashcomm2_otp else None
        module_tp = ((lambda t: t // n) if c.flashcomm2_otp and c.flashcomm2_otp > 1
                     else (lambda t: 0) if c.flashcomm2_otp == 1 or c.dsa_cp else (lambda t: t))
        groups = {}
        for e, p, d, k, t in cells:
            groups.setdefault((e, p, module_tp(t)), []).append(wrong(e, p, d, k, t))
        layout["shard_weight"] = sorted((sorted(group) for group in groups.values()), key=min)
    block = c.dp * c.pcp * c.tp
    layout["mc2"] = [list(range(start, start + block)) for start in range(0, c.world_size, block)]
    return layout


def test_wrong_grid_layout_of_the_worked_example():
    layout = wrong_grid_layout(config(8, tp=2, pp=2, dp=2, otp=2, layer_sharding=True))
    assert layout["otp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]           # vLLM's pp groups
    assert layout["shard_weight"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout["mc2"] == [[0, 1, 2, 3], [4, 5, 6, 7]]                # blocks of DP*PCP*TP = 4


def test_checker_names_the_wrong_grid_on_dp2_pp2_tp2_otp2():
    c = config(8, tp=2, pp=2, dp=2, otp=2)
    violations = check_layout(wrong_grid_layout(c), c)
    explanations = [v.explanation for v in violations]
    assert "otp group [0, 2] crosses PP stages: rank 0 is in stage 0, rank 2 in stage 1" in explanations
    assert ("otp group [0, 2] is not a reference otp group; the reference otp groups holding its ranks "
            "are [0, 4], [2, 6] (its members form a reference pp group)") in explanations
    assert ("mc2 group [0, 1, 2, 3] is not an ep group (mc2 must equal ep); the ep groups holding its "
            "ranks are [0, 1, 4, 5], [2, 3, 6, 7]") in explanations
    otp_groups = [(0, 2), (1, 3), (4, 6), (5, 7)]
    mc2_groups = [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert reported(violations) == (
        {("otp", rule, g) for g in otp_groups for rule in ("crosses_stages", "membership")}
        | {("mc2", rule, g) for g in mc2_groups for rule in ("crosses_stages", "membership", "mc2_not_ep")})


DIVERGENT = [
    config(8, tp=2, pp=2, dp=2, otp=2, layer_sharding=True),
    config(16, tp=2, pp=2, dp=2, pcp=2, lmhead_tp=2, mlp_tp=1),
    config(32, tp=2, pp=2, dp=4, otp=2, embed_tp=4, layer_sharding=True),
    config(48, tp=4, pp=2, dp=3, mlp_tp=3, **{FC2: 2}, layer_sharding=True),
    config(64, tp=2, pp=4, dp=2, otp=2, layer_sharding=True, dsa_cp=True),
]


@pytest.mark.parametrize("c", DIVERGENT, ids=config_id)
def test_checker_flags_the_divergence_whenever_pp_and_dp_exceed_1(c):
    layout = wrong_grid_layout(c)
    kinds_crossing = {v.kind for v in check_layout(layout, c) if v.rule == "crosses_stages"}
    fine_grained = {"otp", "lmheadtp", "emtp", "mlptp"} & set(layout)
    # g = 1 groups are singletons and cannot cross anything.
    spanning = {kind for kind in fine_grained if len(layout[kind][0]) > 1}
    assert kinds_crossing == spanning | {"mc2"} | ({"shard_weight"} if c.layer_sharding else set())
    assert any(v.rule == "mc2_not_ep" for v in check_layout(layout, c))


@pytest.mark.parametrize("c", [
    config(8, tp=2, dp=4, otp=2, layer_sharding=True),
    config(16, tp=4, dp=2, pcp=2, lmhead_tp=2),
    config(8, tp=2, pp=4, otp=1, layer_sharding=True),
], ids=config_id)
def test_divergent_grid_is_harmless_when_pp_or_dp_is_1(c):
    assert wrong_grid_layout(c) == build_layout(c)
    assert check_layout(wrong_grid_layout(c), c) == []


# --- 6. mutations: each defect reported as exactly that ------------------------------------------

def mutated(c: ParallelConfig, kind: str, groups) -> dict:
    layout = copy.deepcopy(build_layout(c))
    layout[kind] = groups
    return layout


def test_swap_two_ranks_between_groups_of_one_stage():
    c = config(8, tp=4, dp=2)  # tp [[0, 1, 2, 3], [4, 5, 6, 7]]
    violations = check_layout(mutated(c, "tp", [[0, 1, 2, 4], [3, 5, 6, 7]]), c)
    assert reported(violations) == {("tp", "membership", (0, 1, 2, 4)), ("tp", "membership", (3, 5, 6, 7))}


def test_swap_two_ranks_across_stages():
    violations = check_layout(mutated(DP2_PP2_TP2, "tp", [[0, 2], [1, 3], [4, 5], [6, 7]]), DP2_PP2_TP2)
    assert reported(violations) == {
        ("tp", "crosses_stages", (0, 2)), ("tp", "crosses_stages", (1, 3)),
        ("tp", "membership", (0, 2)), ("tp", "membership", (1, 3))}
    assert "tp group [1, 3] crosses PP stages: rank 1 is in stage 0, rank 3 in stage 1" in map(str, violations)


def test_move_half_an_ep_group_into_the_next_stage():
    # ep [[0, 1, 4, 5], [2, 3, 6, 7]]: the d = 1 halves trade stages; mc2 stays the reference.
    c = DP2_PP2_TP2
    layout = mutated(c, "ep", [[0, 1, 6, 7], [2, 3, 4, 5]])
    assert reported(check_layout(layout, c)) == {
        ("ep", "crosses_stages", (0, 1, 6, 7)), ("ep", "crosses_stages", (2, 3, 4, 5)),
        ("ep", "membership", (0, 1, 6, 7)), ("ep", "membership", (2, 3, 4, 5)),
        ("mc2", "mc2_not_ep", (0, 1, 4, 5)), ("mc2", "mc2_not_ep", (2, 3, 6, 7))}


def test_drop_a_rank():
    violations = check_layout(mutated(DP2_PP2_TP2, "dp", [[0, 4], [1, 5], [2, 6], [3]]), DP2_PP2_TP2)
    assert reported(violations) == {("dp", "uncovered", None), ("dp", "membership", (3,))}
    assert "dp groups leave rank 7 of world 0..7 in no group" in map(str, violations)


def test_dropping_a_whole_fine_grained_group_is_allowed():
    # Fine-grained kinds only partition the ranks they cover.
    c = config(8, tp=2, pp=2, dp=2, otp=2)
    assert check_layout(mutated(c, "otp", [[0, 4], [1, 5], [2, 6]]), c) == []


def test_reorder_a_group():
    violations = check_layout(mutated(DP2_PP2_TP2, "tp", [[0, 1], [3, 2], [4, 5], [6, 7]]), DP2_PP2_TP2)
    assert reported(violations) == {("tp", "order", (3, 2))}
    assert str(violations[0]) == ("tp group [3, 2] orders the members of reference group [2, 3] "
                                  "differently: group rank 0 is rank 3, the reference has rank 2")


def test_reorder_ep_breaks_mc2_equals_ep_too():
    violations = check_layout(mutated(DP2_PP2_TP2, "ep", [[0, 4, 1, 5], [2, 3, 6, 7]]), DP2_PP2_TP2)
    assert reported(violations) == {("ep", "order", (0, 4, 1, 5)), ("mc2", "mc2_not_ep", (0, 1, 4, 5))}


def test_rank_in_two_groups():
    c = config(8, tp=4, dp=2)  # tp [[0, 1, 2, 3], [4, 5, 6, 7]]; rank 4 replaced by rank 3
    violations = check_layout(mutated(c, "tp", [[0, 1, 2, 3], [3, 5, 6, 7]]), c)
    assert reported(violations) == {
        ("tp", "overlap", (3, 5, 6, 7)), ("tp", "uncovered", None), ("tp", "membership", (3, 5, 6, 7))}
    assert "tp groups [0, 1, 2, 3] and [3, 5, 6, 7] both hold rank 3" in map(str, violations)
    assert "tp groups leave rank 4 of world 0..7 in no group" in map(str, violations)


def test_rank_outside_the_world_and_repeated_rank():
    layout = mutated(DP2_PP2_TP2, "tp", [[0, 1], [2, 8], [4, 5], [6, 6, 7]])
    assert reported(check_layout(layout, DP2_PP2_TP2)) == {
        ("tp", "out_of_range", (2, 8)), ("tp", "repeated_rank", (6, 6, 7)), ("tp", "uncovered", None)}


def test_group_across_external_dp_replicas():
    c = config(16, tp=2, pp=2, dp=2)  # E = 2: ranks 0..7 and 8..15
    layout = mutated(c, "tp", [[8, 1], [2, 3], [4, 5], [6, 7], [0, 9], [10, 11], [12, 13], [14, 15]])
    violations = check_layout(layout, c)
    assert reported(violations) == {
        ("tp", "crosses_replicas", (8, 1)), ("tp", "crosses_replicas", (0, 9)),
        ("tp", "membership", (8, 1)), ("tp", "membership", (0, 9))}
    assert "tp group [0, 9] crosses external-DP replicas: rank 0 is in replica 0, rank 9 in replica 1" in (
        map(str, violations))


def test_missing_unexpected_unknown_and_malformed_kinds():
    c = DP2_PP2_TP2
    layout = build_layout(c)
    del layout["pcp"]
    layout["otp"] = [[0, 4], [1, 5], [2, 6], [3, 7]]   # a correct shape, but c sets no otp size
    layout["dcp"] = [[0, 1]]                            # not a docs/layout.md kind: ignored by the checker
    layout["pp"] = [[0, "2"], [1, 3], [4, 6], [5, 7]]
    assert reported(check_layout(layout, c)) == {
        ("pcp", "missing_kind", None), ("otp", "unexpected_kind", None),
        ("pp", "malformed", None), ("pp", "uncovered", None)}


# --- 7. comparing a live layout with the reference ------------------------------------------------

def test_compare_identical_layouts_finds_nothing():
    assert compare_layouts(build_layout(DP2_PP2_TP2), build_layout(DP2_PP2_TP2)) == []


def test_compare_reports_groups_by_set_and_by_order():
    c = config(8, tp=2, pp=2, dp=2, otp=2)
    live = wrong_grid_layout(c)
    live["tp"] = [[1, 0], [2, 3], [4, 5], [6, 7]]
    del live["fc3_quant_x"]
    live["dcp"] = [[0], [1]]
    found = {(d.kind, d.change, d.reference_group, d.live_group) for d in compare_layouts(build_layout(c), live)}
    assert found == {
        ("tp", "order", (0, 1), (1, 0)),
        ("mc2", "group_missing", (0, 1, 4, 5), None), ("mc2", "group_missing", (2, 3, 6, 7), None),
        ("mc2", "group_extra", None, (0, 1, 2, 3)), ("mc2", "group_extra", None, (4, 5, 6, 7)),
        ("fc3_quant_x", "kind_missing", None, None),
        ("otp", "group_missing", (0, 4), None), ("otp", "group_missing", (1, 5), None),
        ("otp", "group_missing", (2, 6), None), ("otp", "group_missing", (3, 7), None),
        ("otp", "group_extra", None, (0, 2)), ("otp", "group_extra", None, (1, 3)),
        ("otp", "group_extra", None, (4, 6)), ("otp", "group_extra", None, (5, 7)),
        ("dcp", "kind_extra", None, None)}
