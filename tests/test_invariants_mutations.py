"""The layout checker fires: every rule on a deliberately broken layout, and on a broken ``build_layout``.

``invariants.check_layout`` compares against ``expected_layout`` (docs/layout.md's formula, derived apart
from topology.py). Were it to compare against ``topology.build_layout`` itself, a defect in
``build_layout`` would be invisible: the second half breaks topology.py's construction in three ways and
shows the checker reporting each one on ``build_layout``'s own output.
"""
from __future__ import annotations

import copy

import pytest

from ascend_conformance import topology
from ascend_conformance.expected_layout import expected_layout
from ascend_conformance.invariants import check_layout
from ascend_conformance.topology import ParallelConfig, build_layout

# W8 DP2 PP2 TP2 with OTP 2 and layer sharding: stages {0, 1, 4, 5} and {2, 3, 6, 7}.
CONFIG = ParallelConfig(world_size=8, tp=2, pp=2, dp=2, otp=2, layer_sharding=True)
# W8 E2 PP2 TP2: replicas {0..3} and {4..7}.
TWO_REPLICAS = ParallelConfig(world_size=8, tp=2, pp=2, dp=1)


def _with(config: ParallelConfig, **changes) -> tuple[dict, ParallelConfig]:
    """build_layout(config) with kinds replaced (a value None deletes the kind)."""
    layout = copy.deepcopy(build_layout(config))
    for kind, groups in changes.items():
        if groups is None:
            del layout[kind]
        else:
            layout[kind] = groups
    return layout, config


MUTATIONS = {
    "malformed": lambda: _with(CONFIG, tp=[[0, 1], "2, 3", [4, 5], [6, 7]]),
    "out_of_range": lambda: _with(CONFIG, tp=[[0, 1], [2, 3], [4, 5], [6, 8]]),
    "repeated_rank": lambda: _with(CONFIG, dp=[[0, 4], [1, 5], [2, 6], [3, 7, 7]]),
    "overlap": lambda: _with(CONFIG, tp=[[0, 1], [1, 2, 3], [4, 5], [6, 7]]),
    "uncovered": lambda: _with(CONFIG, dp=[[0, 4], [1, 5], [2, 6]]),
    "crosses_stages": lambda: _with(CONFIG, tp=[[0, 2], [1, 3], [4, 5], [6, 7]]),
    "crosses_replicas": lambda: _with(TWO_REPLICAS, pp=[[0, 4], [1, 5], [2, 6], [3, 7]]),
    "mc2_not_ep": lambda: _with(CONFIG, mc2=[[1, 0, 4, 5], [2, 3, 6, 7]]),
    "membership": lambda: _with(CONFIG, dp=[[0, 5], [1, 4], [2, 6], [3, 7]]),
    "order": lambda: _with(CONFIG, dp=[[4, 0], [1, 5], [2, 6], [3, 7]]),
    "missing_kind": lambda: _with(CONFIG, otp=None),
    "unexpected_kind": lambda: _with(CONFIG, p_tp=[[0, 1], [2, 3], [4, 5], [6, 7]]),
}


@pytest.mark.parametrize("config", [CONFIG, TWO_REPLICAS], ids=lambda c: c.describe())
def test_the_unbroken_layouts_pass(config):
    assert check_layout(build_layout(config), config) == []


@pytest.mark.parametrize("rule", sorted(MUTATIONS))
def test_each_rule_fires_on_a_layout_broken_for_it(rule):
    layout, config = MUTATIONS[rule]()
    fired = {violation.rule for violation in check_layout(layout, config)}
    assert rule in fired, f"{rule} did not fire; the checker reported {sorted(fired)}"


def test_every_rule_has_a_mutation():
    import ascend_conformance.invariants as invariants

    documented = {line.split("``")[1] for line in invariants.__doc__.splitlines() if line.startswith("``")}
    assert documented == set(MUTATIONS)


# ------------------------------------------------------------------------- a broken build_layout

def _fine_grained_over_stages(config, size):
    """Fine-grained TP groups that run over p instead of d: on DP2 PP2 TP2 these are what vllm-ascend's
    (pp, dp, tp) grid builds (vLLM's pp groups), and they cross PP stages."""
    return topology.group_by(config, lambda x: (x.e, x.d, x.c, x.t, x.p // size), lambda x, r: x.p)


def _reversed_groups(original):
    def group_by(config, key, position):
        return [list(reversed(group)) for group in original(config, key, position)]
    return group_by


def _stage_and_dp_swapped(original):
    """Decodes d where p is and p where d is (equal sizes): every group that varies one of them is wrong."""
    def rank_coordinates(rank, config):
        coords = original(rank, config)
        return coords._replace(d=coords.p, p=coords.d)
    return rank_coordinates


def test_a_wrong_fine_grained_construction_in_build_layout_is_reported(monkeypatch):
    monkeypatch.setattr(topology, "_fine_grained_tp", _fine_grained_over_stages)
    broken = build_layout(CONFIG)
    assert broken["otp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    fired = {(v.kind, v.rule) for v in check_layout(broken, CONFIG)}
    assert {("otp", "membership"), ("otp", "crosses_stages")} <= fired


def test_a_wrong_member_order_in_build_layout_is_reported(monkeypatch):
    monkeypatch.setattr(topology, "group_by", _reversed_groups(topology.group_by))
    violations = check_layout(build_layout(CONFIG), CONFIG)
    assert {v.kind for v in violations if v.rule == "order"} >= {"tp", "pp", "dp", "ep", "otp", "shard_weight"}


def test_a_wrong_rank_decoding_in_build_layout_is_reported(monkeypatch):
    monkeypatch.setattr(topology, "rank_coordinates", _stage_and_dp_swapped(topology.rank_coordinates))
    broken = build_layout(CONFIG)
    assert broken != expected_layout(CONFIG)
    violations = check_layout(broken, CONFIG)
    assert {v.kind for v in violations if v.rule == "membership"} >= {"pp", "dp", "ep", "otp"}
