"""Expert placement for EPLB: which logical expert every physical expert slot holds (docs/eplb.md).

Vocabulary
----------
logical expert
    One of the model's ``E`` routed experts (``0 <= e < E``); the router picks logical experts.
physical slot
    One of ``R >= E`` expert weight slots spread over the EP ranks ("GPUs"); a logical expert may be
    replicated into several slots, and a replica then carries ``load / replica_count`` of its tokens.
GPU ``g`` of ``G``
    Owns the contiguous physical slots ``[g*R/G, (g+1)*R/G)``. Nodes are contiguous blocks of GPUs.

A placement is the triple DeepSeek's EPLB returns, one row per MoE layer:

``phy2log [L, R]``
    logical expert held by each physical slot.
``log2phy [L, E, maxcnt]``
    for each logical expert, the physical slot of its replica number ``k`` (``k = 0`` is the original,
    higher ``k`` the order replicas were added in), padded with ``-1``. Not sorted by slot.
``logcnt [L, E]``
    replicas per logical expert; ``logcnt[l].sum() == R``.

Worked example (hand-derived in the suite): loads ``[[40, 30, 20, 10]]`` on 4 slots and 2 GPUs give
``phy2log [[0, 3, 1, 2]]``, GPU loads 50 and 50, where the round-robin placement ``[[0, 1, 2, 3]]``
gives 70 and 30 (balancedness 50/70 = 0.714).

All results are int64 CPU tensors. The placement computes with the loads in float32, as DeepSeek's code
does (sums, loads per replica and pack loads all round to float32), so it equals DeepSeek's placement on
every input whose decisions are not ties; float64 would decide differently wherever two candidates are
within float32 rounding of each other. :func:`why_not_unique` tells which inputs have such ties.
Balancedness is measured in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ascend_conformance.errors import ConfigError

__all__ = [
    "rebalance_experts",
    "why_not_unique",
    "rebalance_one_replica_per_rank",
    "round_robin_placement",
    "balancedness",
    "BalancednessSummary",
    "summarize_balancedness",
    "RankExperts",
    "expert_map_for_rank",
    "check_placement",
]


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------

def _require_positive_int(name: str, value) -> int:
    # bool is an int subclass but `num_gpus=True` is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
    return value


def _validate_layout(num_logical: int, num_replicas: int, num_gpus: int) -> None:
    if num_replicas % num_gpus != 0:
        raise ConfigError(f"num_replicas {num_replicas} is not divisible by num_gpus {num_gpus}")
    if num_replicas < num_logical:
        raise ConfigError(f"num_replicas {num_replicas} < number of logical experts {num_logical}: "
                          f"every logical expert needs at least one physical slot")


def _validate_loads(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"weight must be a torch.Tensor of loads [layers, experts], got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ConfigError(f"weight must be 2-D [layers, experts], got {weight.dim()}-D shape {tuple(weight.shape)}")
    if weight.dtype == torch.bool or weight.is_complex():
        raise ConfigError(f"weight must hold real loads (integer or floating dtype), got {weight.dtype}")
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ConfigError(f"weight must have at least one layer and one expert, got shape {tuple(weight.shape)}")
    loads = weight.detach().to("cpu", torch.float64)
    if not torch.isfinite(loads).all():
        layer, expert = (int(i) for i in (~torch.isfinite(loads)).nonzero()[0])
        raise ConfigError(f"loads must be finite, got {loads[layer, expert].item()} at layer {layer} expert {expert}")
    if (loads < 0).any():
        layer, expert = (int(i) for i in (loads < 0).nonzero()[0])
        raise ConfigError(f"loads must be >= 0, got {loads[layer, expert].item():g} at layer {layer} expert {expert}")
    return loads


def _validate_phy2log(phy2log, name: str = "phy2log") -> torch.Tensor:
    if not isinstance(phy2log, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor [layers, slots], got {type(phy2log).__name__}")
    if phy2log.dim() != 2:
        raise ConfigError(f"{name} must be 2-D [layers, slots], got {phy2log.dim()}-D shape {tuple(phy2log.shape)}")
    if phy2log.dtype.is_floating_point or phy2log.is_complex() or phy2log.dtype == torch.bool:
        raise ConfigError(f"{name} must have an integer dtype, got {phy2log.dtype}")
    if phy2log.numel() and int(phy2log.min()) < 0:
        raise ConfigError(f"{name} holds a negative expert id {int(phy2log.min())}")
    return phy2log.detach().to("cpu", torch.int64)


# --------------------------------------------------------------------------------------------------
# the three steps of DeepSeek's EPLB
# --------------------------------------------------------------------------------------------------

def _balanced_packing(item_loads: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign the ``n`` items of each row to ``num_packs`` packs of exactly ``n / num_packs`` items.

    Greedy, heaviest first: items are visited by descending load (ties: lower item index first) and each
    goes into the lightest pack that still has room (ties: lower pack index, as Python's ``min`` and numpy's
    ``argmin`` pick). Pack loads accumulate in the dtype of ``item_loads`` (float32: DeepSeek's sums). Its
    position in the pack is the order of arrival.
    With one item per pack every assignment is equally balanced and the identity is kept, so nothing
    moves without a reason.

    Returns (pack_of_item [rows, n], position_in_pack [rows, n]).

    >>> _balanced_packing(torch.tensor([[40., 30., 20., 10.]]), 2)
    (tensor([[0, 1, 1, 0]]), tensor([[0, 0, 1, 1]]))
    """
    rows, num_items = item_loads.shape
    items_per_pack = num_items // num_packs
    if items_per_pack == 1:
        identity = torch.arange(num_items, dtype=torch.int64).expand(rows, num_items).clone()
        return identity, torch.zeros_like(identity)
    pack_of_item = torch.empty((rows, num_items), dtype=torch.int64)
    position_in_pack = torch.empty((rows, num_items), dtype=torch.int64)
    visit_order = torch.sort(item_loads, dim=-1, descending=True, stable=True).indices
    loads = item_loads.numpy()
    for row, order in enumerate(visit_order.tolist()):
        # numpy scalars of the loads' dtype: `+=` rounds every partial sum as DeepSeek's float32 tensors do.
        pack_loads = np.zeros(num_packs, dtype=loads.dtype)
        pack_sizes = [0] * num_packs
        for item in order:
            # min() returns the first minimum, i.e. the lowest pack index among equally light packs.
            pack = min((p for p in range(num_packs) if pack_sizes[p] < items_per_pack),
                       key=pack_loads.__getitem__)
            pack_of_item[row, item] = pack
            position_in_pack[row, item] = pack_sizes[pack]
            pack_loads[pack] += loads[row, item]
            pack_sizes[pack] += 1
    return pack_of_item, position_in_pack


def _rows_sorting_equal_loads(item_loads: torch.Tensor, item_identity: torch.Tensor, num_packs: int) -> set[int]:
    """Rows whose packing sorts two items of equal load but different identity (different groups, or slots
    of different experts): their visiting order, and so possibly the packing, is the sort's choice.
    Slots of one expert carry equal loads by construction and are interchangeable: they never count.

    >>> sorted(_rows_sorting_equal_loads(torch.tensor([[5., 5., 3., 1.], [5., 5., 3., 1.]]),
    ...                                  torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]]), 2))
    [1]
    """
    if item_loads.shape[1] // num_packs == 1:  # no sort: the identity packing
        return set()
    rows = set()
    for row, (loads, identities) in enumerate(zip(item_loads.tolist(), item_identity.tolist())):
        identities_of_load: dict[float, set[int]] = {}
        for load, identity in zip(loads, identities):
            identities_of_load.setdefault(load, set()).add(identity)
        if any(len(ids) > 1 for ids in identities_of_load.values()):
            rows.add(row)
    return rows


def _replicate(expert_loads: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spread ``n`` experts over ``num_slots >= n`` slots: slot i < n holds expert i, and each further slot
    gets a replica of the expert with the largest load per replica (ties: lowest expert index).

    Returns (expert_of_slot [rows, num_slots], replica_number [rows, num_slots], replica_count [rows, n]).

    >>> _replicate(torch.tensor([[60., 20., 10., 10.]]), 6)[0]
    tensor([[0, 1, 2, 3, 0, 0]])
    """
    rows, num_experts = expert_loads.shape
    expert_of_slot = torch.arange(num_slots, dtype=torch.int64).expand(rows, num_slots).clone()
    replica_number = torch.zeros((rows, num_slots), dtype=torch.int64)
    replica_count = torch.ones((rows, num_experts), dtype=torch.int64)
    every_row = torch.arange(rows)
    for slot in range(num_experts, num_slots):
        # argmax documents that it returns the first maximal index: the lowest expert wins ties.
        hottest = torch.argmax(expert_loads / replica_count, dim=-1)
        expert_of_slot[:, slot] = hottest
        replica_number[:, slot] = replica_count[every_row, hottest]
        replica_count[every_row, hottest] += 1
    return expert_of_slot, replica_number, replica_count


def _inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(perm)
    inverse.scatter_(-1, perm, torch.arange(perm.shape[-1], dtype=perm.dtype).expand_as(perm))
    return inverse


def _rebalance_hierarchical(loads: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                            num_gpus: int, sort_ties: set | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phy2log, replica_number_of_slot, logcnt) with whole expert groups kept on one node; every sum and
    quotient in the dtype of ``loads``. ``sort_ties``, when given, receives the layers whose packings sort
    equal loads of different groups or experts."""
    num_layers, num_logical = loads.shape
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_logical // num_nodes
    slots_per_node = num_replicas // num_nodes
    slots_per_gpu = num_replicas // num_gpus

    # Step 1: whole groups to nodes, balancing the group loads.
    group_loads = loads.view(num_layers, num_groups, group_size).sum(-1)
    node_of_group, position_of_group = _balanced_packing(group_loads, num_nodes)
    if sort_ties is not None:
        sort_ties.update(_rows_sorting_equal_loads(group_loads, torch.arange(num_groups).expand_as(group_loads),
                                                   num_nodes))
    # Renumber logical experts "node-major": node n's experts become n*E/N .. (n+1)*E/N - 1, groups in
    # their packing order, experts of a group in their original order.
    first_renumbered = (node_of_group * groups_per_node + position_of_group) * group_size
    log_to_renumbered = (first_renumbered.unsqueeze(-1) + torch.arange(group_size)).flatten(-2)
    renumbered_to_log = _inverse_permutation(log_to_renumbered)

    # Step 2: replicate within each node; every (layer, node) pair is an independent row.
    node_expert_loads = loads.gather(-1, renumbered_to_log).view(num_layers * num_nodes, experts_per_node)
    node_expert_of_slot, replica_number, node_replica_count = _replicate(node_expert_loads, slots_per_node)

    # Step 3: the node's slots to its GPUs by the load each replica carries.
    slot_loads = (node_expert_loads / node_replica_count).gather(-1, node_expert_of_slot)
    gpu_in_node, position_in_gpu = _balanced_packing(slot_loads, num_gpus // num_nodes)
    if sort_ties is not None:  # rows are (layer, node) pairs
        sort_ties.update(row // num_nodes for row in
                         _rows_sorting_equal_loads(slot_loads, node_expert_of_slot, num_gpus // num_nodes))
    final_position = gpu_in_node * slots_per_gpu + position_in_gpu  # within the node
    slot_at_position = _inverse_permutation(final_position)

    node_expert_at_position = node_expert_of_slot.gather(-1, slot_at_position)
    node_offsets = (torch.arange(num_nodes) * experts_per_node).repeat(num_layers).unsqueeze(-1)
    renumbered_at_position = (node_expert_at_position + node_offsets).view(num_layers, num_replicas)
    phy2log = renumbered_to_log.gather(-1, renumbered_at_position)
    replica_number_of_slot = replica_number.gather(-1, slot_at_position).view(num_layers, num_replicas)
    logcnt = node_replica_count.view(num_layers, num_logical).gather(-1, log_to_renumbered)
    return phy2log, replica_number_of_slot, logcnt


def _log2phy_from(phy2log: torch.Tensor, replica_number_of_slot: torch.Tensor,
                  logcnt: torch.Tensor) -> torch.Tensor:
    num_layers, num_replicas = phy2log.shape
    num_logical = logcnt.shape[1]
    max_count = int(logcnt.max())
    log2phy = torch.full((num_layers, num_logical * max_count), -1, dtype=torch.int64)
    log2phy.scatter_(-1, phy2log * max_count + replica_number_of_slot,
                     torch.arange(num_replicas, dtype=torch.int64).expand(num_layers, num_replicas))
    return log2phy.view(num_layers, num_logical, max_count)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------

def _checked_arguments(weight, num_replicas, num_groups, num_nodes, num_gpus) -> tuple:
    """(float32 loads, R, groups, nodes, G) after every check :func:`rebalance_experts` promises."""
    loads = _validate_loads(weight)
    num_replicas = _require_positive_int("num_replicas", num_replicas)
    num_groups = _require_positive_int("num_groups", num_groups)
    num_nodes = _require_positive_int("num_nodes", num_nodes)
    num_gpus = _require_positive_int("num_gpus", num_gpus)
    num_logical = loads.shape[1]
    _validate_layout(num_logical, num_replicas, num_gpus)
    if num_gpus % num_nodes != 0:
        raise ConfigError(f"num_gpus {num_gpus} is not divisible by num_nodes {num_nodes}")
    # Checked on the global path too: groups of unequal size mean the caller's model config is wrong.
    if num_logical % num_groups != 0:
        raise ConfigError(f"number of logical experts {num_logical} is not divisible by num_groups {num_groups}")
    # DeepSeek's code computes in float32; a layer whose total load overflows it has no float32 placement.
    totals = loads.sum(-1)
    if (totals > _FLOAT32_MAX).any():
        layer = int((totals > _FLOAT32_MAX).nonzero()[0])
        raise ConfigError(f"loads of layer {layer} sum to {totals[layer].item():g}, beyond float32's "
                          f"{_FLOAT32_MAX:g}: the placement computes in float32 as DeepSeek's EPLB does")
    return loads.to(torch.float32), num_replicas, num_groups, num_nodes, num_gpus


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _place(loads: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
           sort_ties: set | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if num_groups % num_nodes == 0:
        phy2log, replica_number, logcnt = _rebalance_hierarchical(loads, num_replicas, num_groups, num_nodes,
                                                                   num_gpus, sort_ties)
    else:
        phy2log, replica_number, logcnt = _rebalance_hierarchical(loads, num_replicas, 1, 1, num_gpus, sort_ties)
    return phy2log, _log2phy_from(phy2log, replica_number, logcnt), logcnt


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepSeek EPLB placement of ``E`` logical experts into ``num_replicas`` physical slots.

    ``weight [L, E]`` is the load (tokens routed) of each logical expert per MoE layer, any real dtype,
    all values finite and >= 0. Hierarchical when ``num_groups % num_nodes == 0``:

    1. pack the ``num_groups`` expert groups (``E / num_groups`` consecutive experts each) to nodes,
       ``num_groups / num_nodes`` groups per node, heaviest group first into the lightest node with room;
    2. inside each node, fill its ``R / num_nodes`` slots: one per expert, then each extra slot replicates
       the expert with the highest load per replica;
    3. pack each node's slots to its GPUs, ``R / num_gpus`` per GPU, by load per replica, heaviest first
       into the lightest GPU with room.

    Otherwise the same with one group and one node (global balancing). The loads are converted to float32
    and every group sum, load per replica and pack load is a float32, as in DeepSeek's code. Ties always go
    to the lower index (expert, group, node, GPU), so the result is a deterministic function of the loads.

    Returns ``(phy2log [L, R], log2phy [L, E, maxcnt], logcnt [L, E])``, int64 on CPU; see the module
    docstring. Raises :class:`ConfigError` on bad shapes, dtypes, loads or sizes.

    Example (global, one replica each)::

        >>> phy2log, log2phy, logcnt = rebalance_experts(torch.tensor([[40., 30., 20., 10.]]), 4, 1, 1, 2)
        >>> phy2log          # GPU 0 = slots 0,1 holds experts 0 and 3 (load 50); GPU 1 experts 1, 2 (50)
        tensor([[0, 3, 1, 2]])
        >>> log2phy[0, :, 0] # expert 3 sits in slot 1
        tensor([0, 2, 3, 1])
    """
    return _place(*_checked_arguments(weight, num_replicas, num_groups, num_nodes, num_gpus))


def why_not_unique(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                   num_gpus: int) -> str | None:
    """``None`` when DeepSeek's placement of these loads is determined by the loads alone, else why not.

    Two faithful implementations of the algorithm may place differently where a decision is a tie:

    * **equal loads in a sort**: two groups, or two slots of different experts, with the same load in a
      packing; their order is the sort's choice (DeepSeek's ``torch.sort`` without ``stable``, vLLM's numpy
      quicksort), and the packing may follow it;
    * **a near-tie**: two candidates within float32 rounding of each other, found by placing again in
      float64 arithmetic (as vLLM's numpy port divides and sums): where that places differently, the
      decision was decided by rounding.

    Ties in an argmax or a lightest-pack choice are not listed: every implementation resolves them to the
    lowest index (``torch.max``, ``numpy.argmax`` / ``argmin`` and Python's ``min`` are documented to), as
    long as it sees the tie, which the float64 placement checks. Neither are the slots of one expert, which
    always tie and are interchangeable in ``phy2log``; they do decide which slot ``log2phy`` names as
    replica k, so ``log2phy`` is comparable between implementations only as a set of slots per expert.

    Where this returns a reason, only validity and balancedness can be compared between implementations.

    >>> why_not_unique(torch.tensor([[40., 30., 20., 10.]]), 4, 1, 1, 2) is None
    True
    >>> why_not_unique(torch.tensor([[30., 30., 20., 10.]]), 4, 1, 1, 2)
    'equal loads of different groups or experts in a sort, in layers [0]'
    """
    loads, num_replicas, num_groups, num_nodes, num_gpus = _checked_arguments(
        weight, num_replicas, num_groups, num_nodes, num_gpus)
    sizes = (num_replicas, num_groups, num_nodes, num_gpus)
    sort_ties: set[int] = set()
    placed = _place(loads, *sizes, sort_ties=sort_ties)[0]
    if sort_ties:
        return f"equal loads of different groups or experts in a sort, in layers {sorted(sort_ties)}"
    in_float64 = _place(_validate_loads(weight), *sizes)[0]
    if not torch.equal(placed, in_float64):
        layers = (placed != in_float64).any(-1).nonzero().flatten().tolist()
        return f"a near-tie: the same algorithm in float64 arithmetic places layers {layers} differently"
    return None


def rebalance_one_replica_per_rank(weight: torch.Tensor, num_replicas: int, num_gpus: int) -> list:
    """The global greedy of :func:`rebalance_experts` under the rule of vllm-ascend's expert maps: no
    logical expert twice on one GPU. Per layer ``phy2log [R]`` (int64), or ``None`` where the greedy runs
    into a dead end (a replica whose every GPU with room already holds its expert).

    Replication as DeepSeek's, except that an expert never gets more replicas than there are GPUs; packing
    as DeepSeek's (heaviest per-replica load first, into the lightest GPU with room; ties to the lower
    index), except that GPUs already holding the expert are passed over. A slot's position in its GPU is
    its order of arrival. Computed in float64: this is a bound for policies that must keep the rule, not
    a model of any release. Requires ``num_replicas <= E * num_gpus`` (otherwise no such placement exists).

    Example: loads [60, 20, 10, 10] on 6 slots of 2 GPUs: DeepSeek gives expert 0 three replicas of 20
    (two of them on one GPU); here it gets two of 30 and expert 1 the extra slot (two of 10):

        >>> rebalance_one_replica_per_rank(torch.tensor([[60., 20., 10., 10.]]), 6, 2)
        [tensor([0, 1, 2, 0, 1, 3])]
    """
    loads = _validate_loads(weight)
    num_replicas = _require_positive_int("num_replicas", num_replicas)
    num_gpus = _require_positive_int("num_gpus", num_gpus)
    num_layers, num_logical = loads.shape
    _validate_layout(num_logical, num_replicas, num_gpus)
    if num_replicas > num_logical * num_gpus:
        raise ConfigError(f"num_replicas {num_replicas} > {num_logical} experts x {num_gpus} GPUs: some GPU would "
                          f"hold an expert twice")
    slots_per_gpu = num_replicas // num_gpus
    out = []
    for row in loads.tolist():
        counts = [1] * num_logical
        for _ in range(num_replicas - num_logical):
            open_experts = [e for e in range(num_logical) if counts[e] < num_gpus]
            hottest = max(open_experts, key=lambda e: row[e] / counts[e])  # first maximum: lowest expert
            counts[hottest] += 1
        replicas = sorted(((row[e] / counts[e], e) for e in range(num_logical) for _ in range(counts[e])),
                          key=lambda item: -item[0])  # stable: lower expert first among equal loads
        gpus: list[list[int]] = [[] for _ in range(num_gpus)]
        gpu_loads = [0.0] * num_gpus
        for load, expert in replicas:
            eligible = [g for g in range(num_gpus) if len(gpus[g]) < slots_per_gpu and expert not in gpus[g]]
            if not eligible:
                out.append(None)
                break
            gpu = min(eligible, key=gpu_loads.__getitem__)
            gpus[gpu].append(expert)
            gpu_loads[gpu] += load
        else:
            out.append(torch.tensor([e for slots in gpus for e in slots], dtype=torch.int64))
    return out


def round_robin_placement(num_layers: int, num_logical_experts: int, num_replicas: int,
                          num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The naive baseline (the shape of vLLM's initial EPLB map): slot ``p`` holds logical expert ``p % E`` in every
    layer, whatever the loads. With ``R == E`` GPU g holds experts ``[g*E/G, (g+1)*E/G)``; redundant slots
    replicate experts 0, 1, ... Same output triple as :func:`rebalance_experts` (replica ``k`` of expert
    ``e`` is slot ``e + k*E``).

    >>> round_robin_placement(1, 4, 6, 2)[0]
    tensor([[0, 1, 2, 3, 0, 1]])
    """
    num_layers = _require_positive_int("num_layers", num_layers)
    num_logical = _require_positive_int("num_logical_experts", num_logical_experts)
    num_replicas = _require_positive_int("num_replicas", num_replicas)
    num_gpus = _require_positive_int("num_gpus", num_gpus)
    _validate_layout(num_logical, num_replicas, num_gpus)
    slots = torch.arange(num_replicas, dtype=torch.int64)
    phy2log = (slots % num_logical).expand(num_layers, num_replicas).clone()
    replica_number = (slots // num_logical).expand(num_layers, num_replicas).clone()
    logcnt = torch.bincount(slots % num_logical, minlength=num_logical).expand(num_layers, num_logical).clone()
    return phy2log, _log2phy_from(phy2log, replica_number, logcnt), logcnt


def _gpu_loads(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """[L, G] load per GPU, a replica carrying load / count of its logical expert."""
    loads = _validate_loads(weight)
    phy2log = _validate_phy2log(phy2log)
    num_gpus = _require_positive_int("num_gpus", num_gpus)
    if not isinstance(logcnt, torch.Tensor) or tuple(logcnt.shape) != tuple(loads.shape):
        shape = tuple(logcnt.shape) if isinstance(logcnt, torch.Tensor) else type(logcnt).__name__
        raise ConfigError(f"logcnt must have the shape of weight {tuple(loads.shape)}, got {shape}")
    if phy2log.shape[0] != loads.shape[0]:
        raise ConfigError(f"phy2log has {phy2log.shape[0]} layers but weight has {loads.shape[0]}")
    if int(phy2log.max()) >= loads.shape[1]:
        raise ConfigError(f"phy2log names expert {int(phy2log.max())} but weight has {loads.shape[1]} experts")
    if phy2log.shape[1] % num_gpus != 0:
        raise ConfigError(f"{phy2log.shape[1]} physical slots are not divisible by num_gpus {num_gpus}")
    counts = logcnt.detach().to("cpu", torch.float64)
    if (counts < 1).any():
        raise ConfigError(f"logcnt must be >= 1 for every logical expert, got {int(counts.min())}")
    slot_loads = (loads / counts).gather(-1, phy2log)
    return slot_loads.view(loads.shape[0], num_gpus, -1).sum(-1)


def balancedness(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """Per-layer balancedness ``mean GPU load / max GPU load`` (float64 [L]); 1.0 is perfect.

    A replica of logical expert ``e`` carries ``weight[l, e] / logcnt[l, e]``. A layer without any load
    counts as perfectly balanced (1.0).

    >>> balancedness(torch.tensor([[40., 30., 20., 10.]]), torch.tensor([[0, 1, 2, 3]]),
    ...              torch.ones(1, 4, dtype=torch.int64), 2)   # GPU loads 70 and 30: mean 50 / max 70
    tensor([0.7143], dtype=torch.float64)
    """
    gpu_loads = _gpu_loads(weight, phy2log, logcnt, num_gpus)
    peak = gpu_loads.max(-1).values
    ratio = gpu_loads.mean(-1) / torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, ratio, torch.ones_like(ratio))


@dataclass(frozen=True)
class BalancednessSummary:
    """Balancedness over layers: ``mean`` of the per-layer figures and the ``worst`` (lowest) one."""
    mean: float
    worst: float
    worst_layer: int
    num_layers: int

    def __str__(self) -> str:
        return (f"balancedness mean {self.mean:.4f}, worst {self.worst:.4f} (layer {self.worst_layer}) "
                f"over {self.num_layers} layers")


def summarize_balancedness(per_layer: torch.Tensor) -> BalancednessSummary:
    """Mean and worst of :func:`balancedness`'s per-layer figures.

    >>> str(summarize_balancedness(torch.tensor([1.0, 0.5], dtype=torch.float64)))
    'balancedness mean 0.7500, worst 0.5000 (layer 1) over 2 layers'
    """
    if not isinstance(per_layer, torch.Tensor) or per_layer.dim() != 1 or per_layer.numel() == 0:
        got = tuple(per_layer.shape) if isinstance(per_layer, torch.Tensor) else type(per_layer).__name__
        raise ConfigError(f"summarize_balancedness needs a non-empty 1-D tensor of per-layer balancedness, got {got}")
    worst_layer = int(torch.argmin(per_layer))
    return BalancednessSummary(mean=float(per_layer.double().mean()), worst=float(per_layer[worst_layer]),
                               worst_layer=worst_layer, num_layers=per_layer.numel())


class RankExperts(NamedTuple):
    """What one EP rank holds: ``slot_to_logical [L, R/G]`` (int64) and ``expert_map [L, E]`` (int32,
    logical expert -> local slot or -1, vLLM's ``expert_map`` dtype)."""
    slot_to_logical: torch.Tensor
    expert_map: torch.Tensor


def expert_map_for_rank(phy2log: torch.Tensor, rank: int, num_gpus: int,
                        num_logical_experts: int | None = None) -> RankExperts:
    """The local view of ``rank``: its slots ``[rank*R/G, (rank+1)*R/G)`` and the vllm-ascend ``expert_map``.

    When a rank holds several replicas of one logical expert, ``expert_map`` names the **lowest** local
    slot: an expert_map has room for one slot per expert, so all of this rank's tokens for that expert go
    to that slot and the other local replica idles (log2phy-based routing can still use it).
    ``num_logical_experts`` defaults to ``phy2log.max() + 1`` (every expert has a replica somewhere).

    >>> view = expert_map_for_rank(torch.tensor([[0, 0, 2, 1, 0, 3]]), rank=0, num_gpus=2)
    >>> view.slot_to_logical, view.expert_map
    (tensor([[0, 0, 2]]), tensor([[ 0, -1,  2, -1]], dtype=torch.int32))
    """
    phy2log = _validate_phy2log(phy2log)
    num_gpus = _require_positive_int("num_gpus", num_gpus)
    num_layers, num_replicas = phy2log.shape
    if num_replicas % num_gpus != 0:
        raise ConfigError(f"{num_replicas} physical slots are not divisible by num_gpus {num_gpus}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_gpus:
        raise ConfigError(f"rank must be an int in [0, {num_gpus}), got {rank!r}")
    if num_logical_experts is None:
        num_logical_experts = int(phy2log.max()) + 1
    num_logical_experts = _require_positive_int("num_logical_experts", num_logical_experts)
    if int(phy2log.max()) >= num_logical_experts:
        raise ConfigError(f"phy2log names expert {int(phy2log.max())} but num_logical_experts is {num_logical_experts}")
    slots_per_rank = num_replicas // num_gpus
    slot_to_logical = phy2log[:, rank * slots_per_rank:(rank + 1) * slots_per_rank].clone()
    expert_map = torch.full((num_layers, num_logical_experts), -1, dtype=torch.int32)
    # Write the highest slot first so the lowest one is written last and wins.
    for local_slot in reversed(range(slots_per_rank)):
        expert_map[torch.arange(num_layers), slot_to_logical[:, local_slot]] = local_slot
    return RankExperts(slot_to_logical, expert_map)


def check_placement(phy2log: torch.Tensor, log2phy: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> list[str]:
    """Every way a placement breaks the invariants of docs/eplb.md, as readable lines ([] = valid).

    Checks: shapes agree ([L, R], [L, E, maxcnt], [L, E]); every GPU holds the same number of slots
    (``G`` divides ``R``); every slot names an expert in ``[0, E)``; every logical expert has at least one
    replica; replica counts in phy2log equal logcnt; log2phy lists exactly the slots phy2log gives each
    expert, each once, in its first logcnt entries and -1 after them. Works on live placements too (it
    never raises on bad values, only on arguments that are not tensors of the right rank).

    >>> check_placement(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[[0, 1], [2, 3]]]),
    ...                 torch.tensor([[2, 1]]), num_gpus=2)
    ['layer 0: logical expert 1 has 2 replicas in phy2log but logcnt says 1']
    """
    for name, tensor, dims in (("phy2log", phy2log, 2), ("log2phy", log2phy, 3), ("logcnt", logcnt, 2)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != dims:
            got = f"{tensor.dim()}-D" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ConfigError(f"check_placement: {name} must be a {dims}-D tensor, got {got}")
    num_gpus = _require_positive_int("num_gpus", num_gpus)
    violations: list[str] = []
    num_layers, num_replicas = phy2log.shape
    if tuple(log2phy.shape[:2]) != tuple(logcnt.shape) or logcnt.shape[0] != num_layers:
        return [f"shapes disagree: phy2log {tuple(phy2log.shape)}, log2phy {tuple(log2phy.shape)}, "
                f"logcnt {tuple(logcnt.shape)} (want [L, R], [L, E, maxcnt], [L, E])"]
    num_logical = logcnt.shape[1]
    if num_replicas % num_gpus != 0:
        violations.append(f"{num_replicas} slots cannot give each of {num_gpus} GPUs the same number of slots")
    p2l, l2p, cnt = (t.detach().to("cpu", torch.int64).tolist() for t in (phy2log, log2phy, logcnt))
    for layer in range(num_layers):
        slots_of: dict[int, list[int]] = {e: [] for e in range(num_logical)}
        for slot, expert in enumerate(p2l[layer]):
            if 0 <= expert < num_logical:
                slots_of[expert].append(slot)
            else:
                violations.append(f"layer {layer}: slot {slot} holds expert {expert}, outside [0, {num_logical})")
        for expert in range(num_logical):
            held = slots_of[expert]
            if not held:
                violations.append(f"layer {layer}: logical expert {expert} has no replica")
            elif len(held) != cnt[layer][expert]:
                violations.append(f"layer {layer}: logical expert {expert} has {len(held)} replicas in phy2log "
                                  f"but logcnt says {cnt[layer][expert]}")
            listed = l2p[layer][expert]
            if sorted(slot for slot in listed if slot != -1) != held:
                violations.append(f"layer {layer}: log2phy[{expert}] = {listed} but phy2log puts expert {expert} "
                                  f"in slots {held}")
            elif len(held) == cnt[layer][expert] and any(slot == -1 for slot in listed[:len(held)]):
                # Only judged when logcnt is right, so one wrong count is reported once, not twice.
                violations.append(f"layer {layer}: log2phy[{expert}] = {listed} must list its {len(held)} slots "
                                  f"first and pad with -1 after them")
    return violations
