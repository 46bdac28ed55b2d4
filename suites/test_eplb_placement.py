"""EPLB placement and redistribution planning (docs/eplb.md), device-free.

Reads top to bottom as the specification:
  1. hand-worked placements (derived on paper from the algorithm, and DeepSeek's published example);
  2. invariants of every placement over many shapes, hierarchical and global, R == E and R > E;
  3. the checker itself catches each kind of broken placement;
  4. balancedness: formula against a brute-force loop, rebalanced vs round-robin on uniform and Zipf loads;
  5. per-rank expert maps;
  6. the redistribution plan: what moves, from where, paired send/recv order, byte accounting;
  7. every bad input is a one-line ConfigError naming the values.
"""
from __future__ import annotations

import collections
import itertools

import pytest
import torch

from ascend_conformance.tolerance import Kind, assert_close
from ascend_conformance.eplb import (
    ExpertMove,
    balancedness,
    check_placement,
    expert_map_for_rank,
    plan_redistribution,
    rebalance_experts,
    round_robin_placement,
    summarize_balancedness,
)
from ascend_conformance.eplb.loads import zipf_loads
from ascend_conformance.eplb.placement import why_not_unique
from ascend_conformance.errors import ConfigError


def i64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def random_loads(num_layers: int, num_experts: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 500, (num_layers, num_experts), generator=generator).to(torch.float64)


def gpu_loads_brute_force(weight, phy2log, num_gpus) -> list[list[float]]:
    """Load of each GPU, counting replicas straight from phy2log (not from logcnt)."""
    loads = []
    for layer, row in enumerate(phy2log.tolist()):
        replicas = collections.Counter(row)
        slots_per_gpu = len(row) // num_gpus
        loads.append([sum(float(weight[layer, e]) / replicas[e] for e in row[g * slots_per_gpu:(g + 1) * slots_per_gpu])
                      for g in range(num_gpus)])
    return loads


def assert_exact(actual, expected, what):
    assert_close(actual, expected, kind=Kind.EXACT, what=what)


# ==================================================================================================
# 1. Hand-worked placements
# ==================================================================================================

def test_global_four_experts_two_gpus_pairs_heaviest_with_lightest():
    # Loads 40 30 20 10, one slot per expert, 2 GPUs of 2 slots. Global (1 group, 1 node).
    # Replication adds nothing (R == E). Packing by descending load into the lightest GPU with room:
    #   expert 0 (40) -> GPU 0 [40, 0]; expert 1 (30) -> GPU 1 [40, 30]; expert 2 (20) -> GPU 1 [40, 50];
    #   expert 3 (10) -> GPU 0 (GPU 1 is full) [50, 50].
    # GPU 0 = slots 0, 1 = experts 0, 3 in arrival order; GPU 1 = experts 1, 2.
    phy2log, log2phy, logcnt = rebalance_experts(torch.tensor([[40., 30., 20., 10.]]), 4, 1, 1, 2)
    assert_exact(phy2log, i64([[0, 3, 1, 2]]), "phy2log")
    assert_exact(log2phy, i64([[[0], [2], [3], [1]]]), "log2phy")
    assert_exact(logcnt, i64([[1, 1, 1, 1]]), "logcnt")


def test_groups_not_divisible_by_nodes_falls_back_to_global():
    # 1 group cannot be split over 2 nodes (1 % 2 != 0): the global path, same result as above.
    phy2log, _, _ = rebalance_experts(torch.tensor([[40., 30., 20., 10.]]), 4, 1, 2, 2)
    assert_exact(phy2log, i64([[0, 3, 1, 2]]), "phy2log")


def test_hierarchical_keeps_each_group_on_its_node_even_at_a_cost():
    # Same loads, 2 groups {0,1} (70) and {2,3} (30), 2 nodes of 1 GPU. One group per node: the packing
    # keeps the identity, so node 0 gets experts 0, 1 (load 70) and node 1 experts 2, 3 (load 30).
    # Within each node the single GPU takes its slots heaviest first: 0, 1 and 2, 3.
    phy2log, _, logcnt = rebalance_experts(torch.tensor([[40., 30., 20., 10.]]), 4, 2, 2, 2)
    assert_exact(phy2log, i64([[0, 1, 2, 3]]), "phy2log")
    # GPU loads 70 and 30: mean 50 / max 70.
    assert_exact(balancedness(torch.tensor([[40., 30., 20., 10.]]), phy2log, logcnt, 2),
                 torch.tensor([50 / 70], dtype=torch.float64), "balancedness")


def test_one_item_per_pack_keeps_the_identity():
    # Loads 10 20 30 40, 2 groups on 2 nodes, 4 GPUs of 1 slot. With one group per node and one slot per
    # GPU every assignment balances equally, so nothing is reordered: group 0 stays on node 0 (a
    # heaviest-first packing would have put group {2,3} there) and slot i keeps expert i.
    phy2log, _, _ = rebalance_experts(torch.tensor([[10., 20., 30., 40.]]), 4, 2, 2, 4)
    assert_exact(phy2log, i64([[0, 1, 2, 3]]), "phy2log")


def test_global_replicas_go_to_the_expert_with_the_highest_load_per_replica():
    # Loads 60 20 10 10, 6 slots on 2 GPUs. Replication: slots 0..3 = experts 0..3; slot 4: max of
    # 60/1, 20, 10, 10 -> expert 0 (now 2 replicas, 30 each); slot 5: max of 30, 20, 10, 10 -> expert 0
    # again (3 replicas, 20 each). Slot loads: 20 20 10 10 20 20.
    # Packing 3 per GPU, descending with ties by slot: s0 -> G0 [20,0]; s1 -> G1 [20,20]; s4 -> G0 [40,20];
    # s5 -> G1 [40,40]; s2 -> G0 [50,40] (tie goes to lower GPU; G0 now full); s3 -> G1 [50,50].
    # GPU 0 = [s0, s4, s2] = experts 0, 0, 2; GPU 1 = [s1, s5, s3] = experts 1, 0, 3.
    # Replica numbers of expert 0: original s0 -> slot 0, first copy s4 -> slot 1, second copy s5 -> slot 4.
    phy2log, log2phy, logcnt = rebalance_experts(torch.tensor([[60., 20., 10., 10.]]), 6, 1, 1, 2)
    assert_exact(phy2log, i64([[0, 0, 2, 1, 0, 3]]), "phy2log")
    assert_exact(log2phy, i64([[[0, 1, 4], [3, -1, -1], [2, -1, -1], [5, -1, -1]]]), "log2phy")
    assert_exact(logcnt, i64([[3, 1, 1, 1]]), "logcnt")


def test_hierarchical_two_nodes_four_gpus_with_replicas():
    # 8 experts in 4 groups of 2, 12 slots, 2 nodes x 2 GPUs x 3 slots. Loads 5 3 | 8 8 | 1 1 | 6 2.
    # Step 1, group loads g0=8 g1=16 g2=2 g3=8 packed 2 per node, heaviest first:
    #   g1 -> N0 [16,0]; g0 -> N1 [16,8]; g3 -> N1 [16,16] (N1 full); g2 -> N0 [18,16].
    #   Node 0 holds g1, g2 = experts 2 3 4 5 (loads 8 8 1 1); node 1 holds g0, g3 = experts 0 1 6 7 (5 3 6 2).
    # Step 2, 6 slots per node:
    #   N0: extra copies of expert 2 (8 vs 8: lower index), then expert 3 -> slot loads 4 4 1 1 4 4.
    #   N1: extra copies of expert 6 (6), then expert 0 (5 > 3 = 6/2) -> slot loads 2.5 3 3 2 3 2.5.
    # Step 3, 3 slots per GPU:
    #   N0 order s0 s1 s4 s5 s2 s3: G0 gets s0 s4 s2 = experts 2 2 4; G1 gets s1 s5 s3 = experts 3 3 5.
    #   N1 order s1 s2 s4 s0 s5 s3 (loads 3 3 3 2.5 2.5 2): s1->G0 [3,0], s2->G1 [3,3], s4->G0 [6,3],
    #   s0->G1 [6,5.5], s5->G1 [6,8] (G1 full), s3->G0 [8,8]. G2 = experts 1 6 7; G3 = experts 6 0 0.
    weight = torch.tensor([[5., 3., 8., 8., 1., 1., 6., 2.]])
    phy2log, log2phy, logcnt = rebalance_experts(weight, 12, 4, 2, 4)
    assert_exact(phy2log, i64([[2, 2, 4, 3, 3, 5, 1, 6, 7, 6, 0, 0]]), "phy2log")
    assert_exact(logcnt, i64([[2, 1, 2, 2, 1, 1, 2, 1]]), "logcnt")
    # Replica k of expert 6: the original (node slot s2) ended in slot 9, the copy (s4) in slot 7, so
    # log2phy is in replica order, not slot order.
    assert_exact(log2phy, i64([[[10, 11], [6, -1], [0, 1], [3, 4], [2, -1], [5, -1], [9, 7], [8, -1]]]),
                 "log2phy")
    # GPU loads 9 9 8 8: mean 8.5 / max 9.
    assert_exact(balancedness(weight, phy2log, logcnt, 4), torch.tensor([8.5 / 9], dtype=torch.float64),
                 "balancedness")


def test_deepseek_published_example():
    # The example of DeepSeek's EPLB README (2 layers, 12 experts in 4 groups, 16 replicas, 2 nodes,
    # 8 GPUs) and the phy2log printed there: an external cross-check of the tie-free path.
    weight = torch.tensor([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                           [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
    phy2log, log2phy, logcnt = rebalance_experts(weight, 16, 4, 2, 8)
    assert_exact(phy2log, i64([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                               [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]), "phy2log")
    assert check_placement(phy2log, log2phy, logcnt, 8) == []


def test_round_robin_puts_slot_p_on_expert_p_mod_E():
    phy2log, log2phy, logcnt = round_robin_placement(2, 4, 6, 2)
    assert_exact(phy2log, i64([[0, 1, 2, 3, 0, 1]] * 2), "phy2log")
    assert_exact(logcnt, i64([[2, 2, 1, 1]] * 2), "logcnt")
    assert_exact(log2phy, i64([[[0, 4], [1, 5], [2, -1], [3, -1]]] * 2), "log2phy")


# ==================================================================================================
# 2. Invariants on many shapes
# ==================================================================================================

# (layers, experts, replicas, groups, nodes, gpus)
SHAPES = [
    pytest.param(1, 4, 4, 1, 1, 2, id="global-R=E-tiny"),
    pytest.param(3, 8, 12, 4, 2, 4, id="hier-R>E"),
    pytest.param(4, 16, 16, 4, 2, 4, id="hier-R=E"),
    pytest.param(2, 12, 16, 4, 2, 8, id="hier-deepseek-example-shape"),
    pytest.param(3, 12, 18, 3, 2, 6, id="global-3groups-2nodes"),
    pytest.param(5, 32, 48, 8, 4, 8, id="hier-4nodes"),
    pytest.param(2, 6, 8, 2, 1, 2, id="hier-one-node"),
    pytest.param(2, 10, 15, 5, 5, 5, id="hier-one-gpu-per-node"),
    pytest.param(3, 20, 40, 4, 2, 4, id="hier-R=2E"),
    pytest.param(2, 7, 7, 7, 1, 7, id="one-slot-per-gpu"),
    pytest.param(2, 9, 12, 1, 1, 3, id="global-R>E"),
    pytest.param(4, 64, 80, 8, 2, 8, id="hier-64-experts"),
]
LOADS = ["random", "zipf1.5", "uniform", "all-zero"]


def loads_of(kind: str, num_layers: int, num_experts: int, seed: int) -> torch.Tensor:
    if kind == "random":
        return random_loads(num_layers, num_experts, seed)
    if kind == "zipf1.5":
        return zipf_loads(num_layers, num_experts, 1.5, seed)
    if kind == "uniform":
        return torch.full((num_layers, num_experts), 7.0)
    return torch.zeros(num_layers, num_experts)


@pytest.mark.parametrize("load_kind", LOADS)
@pytest.mark.parametrize("num_layers, num_experts, num_replicas, num_groups, num_nodes, num_gpus", SHAPES)
def test_every_placement_satisfies_the_invariants(num_layers, num_experts, num_replicas, num_groups, num_nodes,
                                                  num_gpus, load_kind):
    weight = loads_of(load_kind, num_layers, num_experts, seed=num_experts)
    phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
    assert phy2log.shape == (num_layers, num_replicas) and phy2log.dtype == torch.int64
    assert logcnt.shape == (num_layers, num_experts) and logcnt.dtype == torch.int64
    assert log2phy.shape == (num_layers, num_experts, int(logcnt.max())) and log2phy.dtype == torch.int64
    # Every logical expert has >= 1 replica, every GPU the same slot count, log2phy/phy2log/logcnt agree.
    assert check_placement(phy2log, log2phy, logcnt, num_gpus) == []


@pytest.mark.parametrize("num_layers, num_experts, num_replicas, num_groups, num_nodes, num_gpus",
                         [s for s in SHAPES if s.values[3] % s.values[4] == 0])
def test_hierarchical_places_every_group_on_one_node(num_layers, num_experts, num_replicas, num_groups, num_nodes,
                                                     num_gpus):
    weight = random_loads(num_layers, num_experts, seed=1)
    phy2log, _, _ = rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
    group_size, slots_per_node = num_experts // num_groups, num_replicas // num_nodes
    for layer, row in enumerate(phy2log.tolist()):
        nodes_of_group = collections.defaultdict(set)
        for slot, expert in enumerate(row):
            nodes_of_group[expert // group_size].add(slot // slots_per_node)
        assert all(len(nodes) == 1 for nodes in nodes_of_group.values()), (layer, dict(nodes_of_group))
        groups_per_node = collections.Counter(next(iter(nodes)) for nodes in nodes_of_group.values())
        assert set(groups_per_node.values()) == {num_groups // num_nodes}, (layer, groups_per_node)


@pytest.mark.parametrize("num_layers, num_experts, num_replicas", [(3, 9, 12), (2, 16, 40), (4, 5, 30)])
def test_global_replica_counts_are_greedy_on_load_per_replica(num_layers, num_experts, num_replicas):
    # Expert a got its last replica when a's load per replica, load_a / (cnt_a - 1), was the largest;
    # nobody's ratio grows later, so it is still >= every final load_b / cnt_b.
    weight = random_loads(num_layers, num_experts, seed=2) + 1
    _, _, logcnt = rebalance_experts(weight, num_replicas, 1, 1, 1)
    for layer in range(num_layers):
        final_ratio = [float(weight[layer, b]) / int(logcnt[layer, b]) for b in range(num_experts)]
        for a in range(num_experts):
            if logcnt[layer, a] > 1:
                before_last = float(weight[layer, a]) / (int(logcnt[layer, a]) - 1)
                assert before_last >= max(final_ratio), (layer, a, before_last, max(final_ratio))


def test_global_path_is_the_hierarchy_with_one_group_and_one_node():
    weight = random_loads(3, 12, seed=3)
    for actual, expected in zip(rebalance_experts(weight, 18, 3, 2, 6), rebalance_experts(weight, 18, 1, 1, 6)):
        assert_exact(actual, expected, "global placement")


def test_placement_computes_in_float32_as_deepseek_does():
    # 6 slots on 2 GPUs, 3 each. In float32 the first load rounds to 20000000 (spacing 2 above 2^24), so
    # when load 3 comes GPU 0 (20000000) and GPU 1 (10000001 + 9999999) tie and the lower GPU takes it:
    # GPU 0 = experts 0, 3, 5, GPU 1 = 1, 2, 4. In float64 GPU 1 would be lighter and take it.
    weight = torch.tensor([[20000001, 10000001, 9999999, 3, 2, 1]])
    assert_exact(rebalance_experts(weight, 6, 1, 1, 2)[0], i64([[0, 3, 5, 1, 2, 4]]), "float32 placement")
    assert why_not_unique(weight, 6, 1, 1, 2) == \
        "a near-tie: the same algorithm in float64 arithmetic places layers [0] differently"


def test_why_not_unique_names_sort_ties_of_different_experts_only():
    # 60 is split into 3 replicas of 20, which tie with expert 1's 20: different experts, order matters.
    assert why_not_unique(torch.tensor([[60., 20., 10., 9.]]), 6, 1, 1, 2) == \
        "equal loads of different groups or experts in a sort, in layers [0]"
    # 80 -> 3 replicas of 26.67: they tie with one another only, and are interchangeable in phy2log.
    assert why_not_unique(torch.tensor([[80., 21., 11., 9.]]), 6, 1, 1, 2) is None
    # Equal group loads sort too (hierarchical: 4 groups of 2 on 2 nodes; groups 1 and 2 both carry 30).
    assert why_not_unique(torch.tensor([[50., 1., 20., 10., 25., 5., 3., 2.]]), 8, 4, 2, 2) == \
        "equal loads of different groups or experts in a sort, in layers [0]"
    assert why_not_unique(zipf_loads(2, 16, 0.0), 16, 1, 1, 4) is not None  # uniform: ties everywhere


def test_integer_and_float_loads_give_the_same_placement():
    weight = random_loads(2, 16, seed=4)
    for actual, expected in zip(rebalance_experts(weight.to(torch.int64), 20, 4, 2, 4),
                                rebalance_experts(weight.to(torch.float32), 20, 4, 2, 4)):
        assert_exact(actual, expected, "placement")


@pytest.mark.parametrize("num_layers, num_experts, num_replicas, num_gpus", [(1, 4, 4, 2), (3, 8, 12, 4), (2, 5, 15, 3)])
def test_round_robin_satisfies_the_invariants(num_layers, num_experts, num_replicas, num_gpus):
    assert check_placement(*round_robin_placement(num_layers, num_experts, num_replicas, num_gpus), num_gpus) == []


# ==================================================================================================
# 3. The checker catches each kind of broken placement
# ==================================================================================================

def valid_example():
    # The hand-worked global example: phy2log [0 0 2 | 1 0 3], expert 0 in slots 0, 1, 4.
    return rebalance_experts(torch.tensor([[60., 20., 10., 10.]]), 6, 1, 1, 2)


def test_checker_reports_an_expert_without_replica():
    phy2log, log2phy, logcnt = valid_example()
    phy2log[0, 2] = 0  # expert 2 overwritten
    assert "layer 0: logical expert 2 has no replica" in check_placement(phy2log, log2phy, logcnt, 2)


def test_checker_reports_replica_count_against_logcnt():
    phy2log, log2phy, logcnt = valid_example()
    logcnt[0, 0] = 2
    assert check_placement(phy2log, log2phy, logcnt, 2) == [
        "layer 0: logical expert 0 has 3 replicas in phy2log but logcnt says 2"]


def test_checker_reports_log2phy_disagreeing_with_phy2log():
    phy2log, log2phy, logcnt = valid_example()
    log2phy[0, 1, 0] = 2  # expert 1 claims slot 2, which holds expert 2
    assert check_placement(phy2log, log2phy, logcnt, 2) == [
        "layer 0: log2phy[1] = [2, -1, -1] but phy2log puts expert 1 in slots [3]"]


def test_checker_reports_padding_before_the_slots():
    phy2log, log2phy, logcnt = valid_example()
    log2phy[0, 2] = i64([-1, 2, -1])
    assert check_placement(phy2log, log2phy, logcnt, 2) == [
        "layer 0: log2phy[2] = [-1, 2, -1] must list its 1 slots first and pad with -1 after them"]


def test_checker_reports_unequal_slots_per_gpu_and_bad_expert_ids():
    phy2log, log2phy, logcnt = valid_example()
    assert check_placement(phy2log, log2phy, logcnt, 4) == [
        "6 slots cannot give each of 4 GPUs the same number of slots"]
    phy2log[0, 5] = 9
    violations = check_placement(phy2log, log2phy, logcnt, 2)
    assert "layer 0: slot 5 holds expert 9, outside [0, 4)" in violations
    assert "layer 0: logical expert 3 has no replica" in violations


def test_checker_reports_shape_mismatch():
    phy2log, log2phy, logcnt = valid_example()
    assert check_placement(phy2log, log2phy[:, :3], logcnt, 2) == [
        "shapes disagree: phy2log (1, 6), log2phy (1, 3, 3), logcnt (1, 4) (want [L, R], [L, E, maxcnt], [L, E])"]


# ==================================================================================================
# 4. Balancedness
# ==================================================================================================

@pytest.mark.parametrize("num_layers, num_experts, num_replicas, num_groups, num_nodes, num_gpus", SHAPES[:6])
def test_balancedness_matches_a_brute_force_loop(num_layers, num_experts, num_replicas, num_groups, num_nodes,
                                                 num_gpus):
    weight = zipf_loads(num_layers, num_experts, 1.0, seed=5)
    for phy2log, _, logcnt in (rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus),
                               round_robin_placement(num_layers, num_experts, num_replicas, num_gpus)):
        expected = torch.tensor([sum(loads) / len(loads) / max(loads)
                                 for loads in gpu_loads_brute_force(weight, phy2log, num_gpus)], dtype=torch.float64)
        # Same formula, different summation order over GPUs: float64 rounding may differ in the last bits.
        assert_close(balancedness(weight, phy2log, logcnt, num_gpus), expected, kind=Kind.ACCUMULATED,
                     what="balancedness")


def test_balancedness_of_a_layer_without_load_is_one():
    phy2log, _, logcnt = round_robin_placement(2, 4, 4, 2)
    weight = torch.tensor([[0., 0., 0., 0.], [1., 0., 0., 0.]])
    assert_exact(balancedness(weight, phy2log, logcnt, 2), torch.tensor([1.0, 0.5], dtype=torch.float64),
                 "balancedness")


def test_summary_gives_mean_and_worst_layer():
    summary = summarize_balancedness(torch.tensor([0.75, 0.5, 1.0], dtype=torch.float64))
    assert (summary.mean, summary.worst, summary.worst_layer, summary.num_layers) == (0.75, 0.5, 1, 3)
    assert str(summary) == "balancedness mean 0.7500, worst 0.5000 (layer 1) over 3 layers"


# Report setup: 8 layers, 64 experts, 80 slots (16 redundant) on 8 GPUs of 10 slots; hierarchical with
# 8 groups on 2 nodes, and global.
REPORT_SETUPS = [pytest.param(8, 2, id="hierarchical-8groups-2nodes"), pytest.param(1, 1, id="global")]


@pytest.mark.parametrize("num_groups, num_nodes", REPORT_SETUPS)
def test_uniform_loads_balance_perfectly_and_round_robin_does_not(num_groups, num_nodes, record_property):
    # Uniform 1000 per expert. Rebalanced: the 16 extra slots copy experts (per node: the 8 lowest ids),
    # giving 48 slots of 1000 and 32 of 500; heaviest-first packing puts 6 + 4 on every GPU = 8000 each.
    # Round-robin: slot p holds p % 64, experts 0..15 have 2 replicas of 500; GPU loads
    # 5000 7000 10000 10000 10000 10000 7000 5000 -> mean 8000 / max 10000 = 0.8.
    weight = zipf_loads(8, 64, 0.0)
    phy2log, _, logcnt = rebalance_experts(weight, 80, num_groups, num_nodes, 8)
    rr_phy2log, _, rr_logcnt = round_robin_placement(8, 64, 80, 8)
    rebalanced, round_robin = balancedness(weight, phy2log, logcnt, 8), balancedness(weight, rr_phy2log, rr_logcnt, 8)
    print(f"uniform: rebalanced {summarize_balancedness(rebalanced)} | round-robin {summarize_balancedness(round_robin)}")
    record_property("balancedness_uniform", f"{float(rebalanced.mean()):.4f} vs round-robin {float(round_robin.mean()):.4f}")
    assert_exact(rebalanced, torch.ones(8, dtype=torch.float64), "rebalanced balancedness")
    assert_exact(round_robin, torch.full((8,), 0.8, dtype=torch.float64), "round-robin balancedness")


@pytest.mark.parametrize("exponent", [1.0, 1.5])
@pytest.mark.parametrize("num_groups, num_nodes", REPORT_SETUPS)
def test_rebalanced_beats_round_robin_on_zipf_loads(num_groups, num_nodes, exponent, record_property):
    weight = zipf_loads(8, 64, exponent)
    phy2log, _, logcnt = rebalance_experts(weight, 80, num_groups, num_nodes, 8)
    rr_phy2log, _, rr_logcnt = round_robin_placement(8, 64, 80, 8)
    rebalanced = summarize_balancedness(balancedness(weight, phy2log, logcnt, 8))
    round_robin = summarize_balancedness(balancedness(weight, rr_phy2log, rr_logcnt, 8))
    print(f"zipf {exponent}: rebalanced {rebalanced} | round-robin {round_robin}")
    record_property(f"balancedness_zipf{exponent}", f"mean {rebalanced.mean:.4f} worst {rebalanced.worst:.4f} vs "
                                                    f"round-robin mean {round_robin.mean:.4f} worst {round_robin.worst:.4f}")
    assert rebalanced.mean > round_robin.mean, (rebalanced, round_robin)
    assert rebalanced.worst > round_robin.worst, (rebalanced, round_robin)


# ==================================================================================================
# 5. Per-rank expert maps
# ==================================================================================================

def test_expert_map_points_at_the_lowest_local_slot():
    # phy2log [0 0 2 | 1 0 3] from the hand-worked example: rank 0 holds expert 0 twice (slots 0, 1).
    phy2log = i64([[0, 0, 2, 1, 0, 3]])
    rank0, rank1 = expert_map_for_rank(phy2log, 0, 2), expert_map_for_rank(phy2log, 1, 2)
    assert_exact(rank0.slot_to_logical, i64([[0, 0, 2]]), "rank 0 slots")
    assert_exact(rank0.expert_map, torch.tensor([[0, -1, 2, -1]], dtype=torch.int32), "rank 0 expert_map")
    assert_exact(rank1.slot_to_logical, i64([[1, 0, 3]]), "rank 1 slots")
    assert_exact(rank1.expert_map, torch.tensor([[1, 0, -1, 2]], dtype=torch.int32), "rank 1 expert_map")


def test_expert_map_against_brute_force_on_rebalanced_placements():
    weight = zipf_loads(4, 32, 1.5, seed=6)
    phy2log, _, _ = rebalance_experts(weight, 48, 8, 2, 8)
    for rank in range(8):
        view = expert_map_for_rank(phy2log, rank, 8)
        for layer in range(4):
            local = phy2log[layer, rank * 6:(rank + 1) * 6].tolist()
            expected = [local.index(e) if e in local else -1 for e in range(32)]
            assert_exact(view.expert_map[layer], torch.tensor(expected, dtype=torch.int32), f"rank {rank} layer {layer}")
            assert view.slot_to_logical[layer].tolist() == local


# ==================================================================================================
# 6. Redistribution plan
# ==================================================================================================

def simulate(plan, phy2log_old, layer: int) -> list[list[int]]:
    """Execute one layer of the plan on expert ids instead of weights, following the plan's contract:
    sends read old slots and travel over per-pair FIFO channels (as NCCL/HCCL match P2P per pair in
    posting order), local copies read old slots, then receive-buffer rows are written."""
    ranks, per_rank = plan.num_ranks, plan.slots_per_rank
    old = [phy2log_old[layer, r * per_rank:(r + 1) * per_rank].tolist() for r in range(ranks)]
    result = [list(slots) for slots in old]
    channels = collections.defaultdict(collections.deque)
    steps = [plan.layers[layer].for_rank(r) for r in range(ranks)]
    for step in steps:
        for move in step.sends:
            channels[(step.rank, move.dst_rank)].append(old[step.rank][move.src_slot])
    for step in steps:
        received = [channels[(move.src_rank, step.rank)].popleft() for move in step.recvs]
        assert received == [move.logical_expert for move in step.recvs], f"rank {step.rank} received {received}"
        for move in step.local_copies:
            for slot in move.dst_slots:
                result[step.rank][slot] = old[step.rank][move.src_slot]
        for row, move in enumerate(step.recvs):
            for slot in move.dst_slots:
                result[step.rank][slot] = received[row]
    assert all(not channel for channel in channels.values()), "unreceived sends left in flight"
    return result


def test_plan_swapping_experts_across_ranks():
    # old [0 1 | 2 3] -> new [0 2 | 1 3]: expert 2 goes rank 1 slot 0 -> rank 0 slot 1, expert 1 the other
    # way. Canonical order is by destination rank: first the transfer to rank 0.
    plan = plan_redistribution(i64([[0, 1, 2, 3]]), i64([[0, 2, 1, 3]]), 2)
    to_rank0, to_rank1 = ExpertMove(2, 1, 0, 0, (1,)), ExpertMove(1, 0, 1, 1, (0,))
    assert plan.layers[0].transfers == (to_rank0, to_rank1)
    assert plan.layers[0].local_copies == ()
    assert plan.layers[0].for_rank(0).sends == (to_rank1,) and plan.layers[0].for_rank(0).recvs == (to_rank0,)
    assert plan.layers[0].for_rank(1).sends == (to_rank0,) and plan.layers[0].for_rank(1).recvs == (to_rank1,)


def test_plan_moves_inside_a_rank_are_local_copies_not_sends():
    # old [0 1 | 2 3] -> new [1 0 | 2 3]: rank 0 swaps its slots; nothing goes over the network.
    plan = plan_redistribution(i64([[0, 1, 2, 3]]), i64([[1, 0, 2, 3]]), 2)
    assert plan.layers[0].transfers == ()
    assert plan.layers[0].local_copies == (ExpertMove(1, 0, 1, 0, (0,)), ExpertMove(0, 0, 0, 0, (1,)))
    assert simulate(plan, i64([[0, 1, 2, 3]]), 0) == [[1, 0], [2, 3]]
    assert_exact(plan.byte_accounting(100).sent, i64([[0, 0]]), "bytes sent")


def test_plan_receives_an_expert_once_even_for_two_new_slots():
    # old [0 1 | 2 3] -> new [3 3 | 2 1]: rank 0 needs expert 3 in both slots and receives it once,
    # writing it twice; rank 1 receives expert 1 into slot 1 (whose old expert 3 it also sends away).
    old, new = i64([[0, 1, 2, 3]]), i64([[3, 3, 2, 1]])
    plan = plan_redistribution(old, new, 2)
    assert plan.layers[0].transfers == (ExpertMove(3, 1, 1, 0, (0, 1)), ExpertMove(1, 0, 1, 1, (1,)))
    assert simulate(plan, old, 0) == [[3, 3], [2, 1]]
    assert_exact(plan.byte_accounting(100).received, i64([[100, 100]]), "bytes received")


def test_plan_spreads_sends_over_the_holders_of_a_replicated_expert():
    # Expert 0 sits on ranks 0 and 1; ranks 2 and 3 both need it. First transfer (to rank 2) from rank 0,
    # the lowest holder with no send yet; second (to rank 3) from rank 1, which has sent nothing yet.
    old, new = i64([[0, 1, 0, 2, 3, 4, 5, 6]]), i64([[0, 1, 0, 2, 0, 4, 0, 6]])
    plan = plan_redistribution(old, new, 4)
    assert plan.layers[0].transfers == (ExpertMove(0, 0, 0, 2, (0,)), ExpertMove(0, 1, 0, 3, (0,)))
    assert_exact(plan.byte_accounting(10).sent, i64([[10, 10, 0, 0]]), "bytes sent")


def test_identical_placements_give_an_empty_plan():
    phy2log, _, _ = rebalance_experts(zipf_loads(3, 16, 1.0), 24, 4, 2, 4)
    plan = plan_redistribution(phy2log, phy2log.clone(), 4)
    assert plan.is_empty
    accounting = plan.byte_accounting(1 << 20)
    assert_exact(accounting.sent, torch.zeros(3, 4, dtype=torch.int64), "bytes sent")
    assert_exact(accounting.recv_buffer, torch.zeros(4, dtype=torch.int64), "receive buffer")


def plan_cases():
    # Round-robin -> rebalanced (the first rebalance of a deployment) and rebalanced -> rebalanced on
    # shifted loads (a later one), hierarchical and global, with and without redundant slots.
    for layers, experts, replicas, groups, nodes, gpus in [(3, 16, 16, 4, 2, 4), (3, 16, 24, 4, 2, 4),
                                                           (2, 12, 18, 3, 2, 6), (4, 32, 48, 8, 2, 8)]:
        first = rebalance_experts(zipf_loads(layers, experts, 1.5, seed=7), replicas, groups, nodes, gpus)[0]
        second = rebalance_experts(zipf_loads(layers, experts, 1.0, seed=8), replicas, groups, nodes, gpus)[0]
        baseline = round_robin_placement(layers, experts, replicas, gpus)[0]
        shape = f"L{layers}-E{experts}-R{replicas}-G{gpus}"
        yield pytest.param(baseline, first, gpus, id=f"{shape}-round-robin-to-rebalanced")
        yield pytest.param(first, second, gpus, id=f"{shape}-rebalanced-to-rebalanced")


@pytest.mark.parametrize("old, new, num_ranks", list(plan_cases()))
def test_plan_properties(old, new, num_ranks):
    plan = plan_redistribution(old, new, num_ranks)
    per_rank = old.shape[1] // num_ranks
    expert_bytes = 3 * 1024
    accounting = plan.byte_accounting(expert_bytes)
    for layer, layer_plan in enumerate(plan.layers):
        old_local = [old[layer, r * per_rank:(r + 1) * per_rank].tolist() for r in range(num_ranks)]
        new_local = [new[layer, r * per_rank:(r + 1) * per_rank].tolist() for r in range(num_ranks)]

        # Executing the plan turns every rank's old experts into its new ones.
        assert simulate(plan, old, layer) == new_local

        # Only slots whose expert changes are written, each exactly once.
        written = collections.Counter((m.dst_rank, s) for m in layer_plan.transfers + layer_plan.local_copies
                                      for s in m.dst_slots)
        changed = {(r, s) for r in range(num_ranks) for s in range(per_rank) if old_local[r][s] != new_local[r][s]}
        assert set(written) == changed and set(written.values()) <= {1}

        # Network transfers: exactly one per (rank, expert) the rank did not hold anywhere before.
        missing = {(r, e) for r in range(num_ranks) for e in set(new_local[r]) - set(old_local[r])}
        assert sorted((m.dst_rank, m.logical_expert) for m in layer_plan.transfers) == sorted(missing)
        # Local copies: experts already on the rank; never sent.
        assert all(m.is_local and m.logical_expert in old_local[m.dst_rank] for m in layer_plan.local_copies)
        assert not any(m.is_local for m in layer_plan.transfers)

        # Every source slot held that expert in the old placement.
        for move in layer_plan.transfers + layer_plan.local_copies:
            assert old_local[move.src_rank][move.src_slot] == move.logical_expert, move

        # Send and receive lists pair up between every two ranks.
        steps = [layer_plan.for_rank(r) for r in range(num_ranks)]
        for a, b in itertools.permutations(range(num_ranks), 2):
            assert [m for m in steps[a].sends if m.dst_rank == b] == [m for m in steps[b].recvs if m.src_rank == a]

        # Byte accounting against a brute-force count.
        for rank in range(num_ranks):
            received = len(set(new_local[rank]) - set(old_local[rank])) * expert_bytes
            sent = sum(expert_bytes for m in layer_plan.transfers if m.src_rank == rank)
            assert int(accounting.received[layer, rank]) == received, (layer, rank)
            assert int(accounting.sent[layer, rank]) == sent, (layer, rank)
    assert int(accounting.sent.sum()) == int(accounting.received.sum())
    assert_exact(accounting.recv_buffer, accounting.received.max(0).values, "receive buffer")


# ==================================================================================================
# 7. Bad inputs: one-line ConfigError naming the values
# ==================================================================================================

W4 = torch.tensor([[4., 3., 2., 1.]])
RR = i64([[0, 1, 2, 3]])

BAD_INPUTS = [
    (lambda: rebalance_experts(W4, 5, 1, 1, 2), "num_replicas 5 is not divisible by num_gpus 2"),
    (lambda: rebalance_experts(W4, 4, 1, 3, 2), "num_gpus 2 is not divisible by num_nodes 3"),
    (lambda: rebalance_experts(torch.ones(1, 6), 6, 4, 2, 2),
     "number of logical experts 6 is not divisible by num_groups 4"),
    (lambda: rebalance_experts(torch.ones(1, 8), 4, 1, 1, 2), "num_replicas 4 < number of logical experts 8"),
    (lambda: rebalance_experts(torch.tensor([[1., -2., 3., 4.]]), 4, 1, 1, 2),
     "loads must be >= 0, got -2 at layer 0 expert 1"),
    (lambda: rebalance_experts(torch.tensor([[1., float("nan"), 3., 4.]]), 4, 1, 1, 2),
     "loads must be finite, got nan at layer 0 expert 1"),
    (lambda: rebalance_experts(torch.ones(4), 4, 1, 1, 2), "weight must be 2-D [layers, experts], got 1-D shape (4,)"),
    (lambda: rebalance_experts(torch.ones(1, 4, dtype=torch.bool), 4, 1, 1, 2),
     "weight must hold real loads (integer or floating dtype), got torch.bool"),
    (lambda: rebalance_experts([[1, 2]], 2, 1, 1, 1), "weight must be a torch.Tensor of loads [layers, experts], got list"),
    (lambda: rebalance_experts(torch.ones(0, 4), 4, 1, 1, 2),
     "weight must have at least one layer and one expert, got shape (0, 4)"),
    (lambda: rebalance_experts(torch.tensor([[3e38, 3e38, 1., 1.]], dtype=torch.float64), 4, 1, 1, 2),
     "loads of layer 0 sum to 6e+38, beyond float32's 3.40282e+38"),
    (lambda: rebalance_experts(W4, 4, 1, 1, 0), "num_gpus must be >= 1, got 0"),
    (lambda: rebalance_experts(W4, 4.0, 1, 1, 2), "num_replicas must be an int, got float 4.0"),
    (lambda: round_robin_placement(1, 4, 6, 4), "num_replicas 6 is not divisible by num_gpus 4"),
    (lambda: round_robin_placement(1, 4, 2, 2), "num_replicas 2 < number of logical experts 4"),
    (lambda: balancedness(W4, RR, torch.ones(1, 3, dtype=torch.int64), 2),
     "logcnt must have the shape of weight (1, 4), got (1, 3)"),
    (lambda: balancedness(W4, RR, torch.ones(1, 4, dtype=torch.int64), 3), "4 physical slots are not divisible by num_gpus 3"),
    (lambda: balancedness(W4, i64([[0, 1, 2, 7]]), torch.ones(1, 4, dtype=torch.int64), 2),
     "phy2log names expert 7 but weight has 4 experts"),
    (lambda: expert_map_for_rank(RR, 2, 2), "rank must be an int in [0, 2), got 2"),
    (lambda: expert_map_for_rank(RR.double(), 0, 2), "phy2log must have an integer dtype, got torch.float64"),
    (lambda: expert_map_for_rank(RR, 0, 2, num_logical_experts=3), "phy2log names expert 3 but num_logical_experts is 3"),
    (lambda: check_placement(RR, RR, RR, 2), "check_placement: log2phy must be a 3-D tensor, got 2-D"),
    (lambda: plan_redistribution(RR, i64([[0, 1, 2, 3, 0, 1]]), 2),
     "phy2log_old (1, 4) and phy2log_new (1, 6) differ in shape"),
    (lambda: plan_redistribution(RR, RR, 3), "4 physical slots are not divisible by num_ranks 3"),
    (lambda: plan_redistribution(RR, i64([[0, 1, 2, 4]]), 2),
     "layer 0: logical expert 4 is in the new placement but has no replica in the old one"),
    (lambda: plan_redistribution(RR, i64([[0, 1, 2, -1]]), 2), "phy2log_new holds a negative expert id -1"),
    (lambda: plan_redistribution(RR, RR, 2).byte_accounting(-1), "expert_bytes must be an int >= 0, got -1"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_a_one_line_config_error(call, message):
    with pytest.raises(ConfigError) as raised:
        call()
    assert "\n" not in str(raised.value)
    assert message in str(raised.value)


# ==================================================================================================
# Full tier: DeepSeek-V3 shapes and a sweep
# ==================================================================================================

@pytest.mark.full
@pytest.mark.parametrize("exponent", [0.0, 1.0, 1.5])
@pytest.mark.parametrize("num_groups, num_nodes", [pytest.param(8, 4, id="hierarchical"), pytest.param(1, 1, id="global")])
def test_deepseek_v3_shape(num_groups, num_nodes, exponent, record_property):
    # 58 MoE layers, 256 experts in 8 groups, 288 slots (32 redundant) on 4 nodes x 8 GPUs.
    weight = zipf_loads(58, 256, exponent, seed=9)
    phy2log, log2phy, logcnt = rebalance_experts(weight, 288, num_groups, num_nodes, 32)
    assert check_placement(phy2log, log2phy, logcnt, 32) == []
    rr_phy2log, _, rr_logcnt = round_robin_placement(58, 256, 288, 32)
    rebalanced = summarize_balancedness(balancedness(weight, phy2log, logcnt, 32))
    round_robin = summarize_balancedness(balancedness(weight, rr_phy2log, rr_logcnt, 32))
    print(f"DeepSeek-V3 shape zipf {exponent}: rebalanced {rebalanced} | round-robin {round_robin}")
    record_property(f"balancedness_v3_zipf{exponent}", f"{rebalanced.mean:.4f} vs round-robin {round_robin.mean:.4f}")
    assert rebalanced.mean > round_robin.mean and rebalanced.worst > round_robin.worst

    plan = plan_redistribution(rr_phy2log, phy2log, 32)
    for layer in (0, 57):
        assert simulate(plan, rr_phy2log, layer) == [phy2log[layer, r * 9:(r + 1) * 9].tolist() for r in range(32)]


@pytest.mark.full
def test_sweep_of_shapes():
    seed = 0
    for num_nodes, gpus_per_node, slots_per_gpu, groups_per_node, group_size in itertools.product(
            [1, 2, 4], [1, 2, 4], [1, 2, 3], [1, 2], [1, 3]):
        num_gpus = num_nodes * gpus_per_node
        num_replicas = num_gpus * slots_per_gpu
        num_groups = num_nodes * groups_per_node
        num_experts = num_groups * group_size
        if num_replicas < num_experts:
            continue
        for weight in (random_loads(3, num_experts, seed), zipf_loads(3, num_experts, 1.2, seed)):
            seed += 1
            for groups, nodes in ((num_groups, num_nodes), (1, 1)):
                phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, groups, nodes, num_gpus)
                shape = (num_experts, num_replicas, groups, nodes, num_gpus)
                assert check_placement(phy2log, log2phy, logcnt, num_gpus) == [], shape
                old = round_robin_placement(3, num_experts, num_replicas, num_gpus)[0]
                plan = plan_redistribution(old, phy2log, num_gpus)
                for layer in range(3):
                    per_rank = num_replicas // num_gpus
                    expected = [phy2log[layer, r * per_rank:(r + 1) * per_rank].tolist() for r in range(num_gpus)]
                    assert simulate(plan, old, layer) == expected, shape
