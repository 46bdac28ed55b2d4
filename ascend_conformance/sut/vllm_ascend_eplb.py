"""vllm-ascend's dynamic-EPLB policies and its expert-weight transfer as a system under test.

Written against vllm-ascend 0.23.0.post1 on vLLM 0.23.0 (:data:`RELEASE`). Two things are driven, each as
the release's own EPLB process and worker drive them.

**Policies** (``vllm_ascend/eplb/core/policy/``), obtained from ``PolicyFactory.generate_policy(t)`` for the
``eplb_policy_type`` t of :data:`POLICY_TYPES`: 0 ``RandomLoadBalance`` (also the fallback for an unknown
type), 1 ``DefaultEplb``, 2 ``SwiftBalanceEplb``, 3 ``FlashLB``. The worker (``EplbWorker.do_update``) calls

    changed, priority, table = policy.rebalance_experts(current_expert_table, expert_workload)

* ``current_expert_table [L, G, S]``: the logical expert in local slot s of EP rank g (the worker's
  ``global2local`` of the expert maps); the initial one is the release's own
  ``generate_global_placement(E, G, redundant, 0)``: rank g holds a contiguous block of experts, and the
  redundant slots (one per rank, from the last rank backwards) replicate the expert after the block;
* ``expert_workload [L, G, S]``: tokens per physical slot (``moe_load``, all-gathered over the EP ranks);
  FlashLB takes ``[T, L, G, S]``, T observation windows (the updator permutes the gathered load so);
* ``table``: the new ``[L, G, S]`` (a list or an array); the worker applies it whatever ``changed`` says,
  after its own ``check_expert_placement``, which keeps the old placement of a layer that places an
  expert twice on one rank, drops an expert, or moves an expert that stays on a rank to another slot.

:func:`slot_workload` turns logical loads ``[L, E]`` (the reference's) into per-slot token counts, splitting
an expert's count over its replicas as evenly as integers allow (the policies only ever sum them back per
expert, so the split is immaterial and the sums are exact).

How this adapter sets the policies up, where the release needs the host: ``SwiftBalanceEplb`` reads
``torch.npu.device_count()`` as the NPUs per host (only used for node-local redundancy, which the worker
never asks for); the torch_npu stand-in has no device, so on it the adapter sets
:data:`NPUS_PER_HOST` of the emulated device type. FlashLB's numba functions compile with a cache; it is
pointed at a per-user temporary directory (``NUMBA_CACHE_DIR``), never into the release's source tree.
The factory warms FlashLB up on a 58-layer dummy problem at every call; the adapter asks the factory once
per process and type and builds a fresh policy of the class it returned for every case (FlashLB keeps
per-layer history between calls, as it does between EPLB rounds).

**Weight transfer** (``eplb/core/eplb_device_transfer_loader.py`` with ``eplb/adaptor/vllm_adaptor.py`` and
the worker's ``compose_expert_update_info_greedy`` / ``pack_update_info``): :func:`redistribute` runs, in
every rank of a world whose EP group and ``dynamic_eplb`` group are all its ranks (built by vLLM's and
vllm-ascend's own parallel state, :mod:`ascend_conformance.sut.vllm_ascend_groups`), the release's path
from an old to a new table: the worker composes each layer's sends and receives and packs this rank's
share, the D2D loader posts them as one ``batch_isend_irecv`` over the ``dynamic_eplb`` group into its
buffers, waits, and writes the new expert map and the received weights through ``VllmEplbAdaptor``. The
MoE layers are stand-ins holding what the adaptor reads (``w13_weight`` / ``w2_weight`` rows per local
slot, ``global_expert_map``, ``local_num_experts``, ``ep_rank``); the adaptor, loader and worker are the
release's.

Nothing here knows pytest; the suites judge the results against :mod:`ascend_conformance.eplb`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import VLLM_ASCEND, bringup

RELEASE = "0.23.0.post1"  # the release this adapter was written against
SUT = VLLM_ASCEND
POLICY_TYPES = {"random": 0, "default": 1, "swift_balancer": 2, "flashlb": 3}
POLICY_CLASSES = {"random": "RandomLoadBalance", "default": "DefaultEplb", "swift_balancer": "SwiftBalanceEplb",
                  "flashlb": "FlashLB"}
UNKNOWN_POLICY_TYPE = 7  # a type the factory does not know: it falls back to RandomLoadBalance
NPUS_PER_HOST = {"A2": 8, "A3": 16, "A5": 8}  # visible NPUs of one host (A3: 8 chips of 2 dies)
NUMBA_CACHE = os.path.join(tempfile.gettempdir(), f"ascend-conformance-numba-{os.getuid()}")

_policy_classes: dict[int, type] = {}


def label() -> str:
    """``vllm_ascend 0.23.0.post1``: the installed release, as results name it."""
    return bringup.label(SUT)


@contextlib.contextmanager
def _release_imports() -> Iterator[None]:
    """What importing the policies needs: the torch_npu stand-in where CANN is absent (swift_balancer
    imports torch_npu), vLLM's platform, and numba's cache outside the release's source tree."""
    from ascend_conformance.sut import standin

    import torch.distributed as dist

    os.environ.setdefault("NUMBA_CACHE_DIR", NUMBA_CACHE)  # read once, when numba is first imported
    standin.activate()
    overrides = bringup.launch_variables() if dist.is_initialized() else {"VLLM_TARGET_DEVICE": "cpu"}
    with bringup.launcher_environment(overrides):
        yield


def policy_class(policy: str) -> type:
    """The class the release's factory gives for ``policy`` (a name of :data:`POLICY_TYPES`, or
    ``"unknown"`` for a type it does not know), asked once per process."""
    if policy not in POLICY_TYPES and policy != "unknown":
        raise ConfigError(f"vllm-ascend {RELEASE} has no EPLB policy {policy!r}; its factory knows "
                          f"{sorted(POLICY_TYPES)} (and falls back on an unknown type)")
    policy_type = POLICY_TYPES.get(policy, UNKNOWN_POLICY_TYPE)
    if policy_type not in _policy_classes:
        with _release_imports():
            from vllm_ascend.eplb.core.policy.policy_factory import PolicyFactory

            _policy_classes[policy_type] = type(PolicyFactory.generate_policy(policy_type))
    return _policy_classes[policy_type]


def new_policy(policy: str):
    """A fresh instance of the factory's class for ``policy``, set up as on a host (module docstring)."""
    cls = policy_class(policy)
    with _release_imports():
        instance = cls()
        if hasattr(instance, "num_die_per_host") and not instance.num_die_per_host:
            from ascend_conformance.sut import standin

            instance.num_die_per_host = NPUS_PER_HOST[standin.emulated_device_type() or standin.DEFAULT_DEVICE_TYPE]
    return instance


def initial_table(num_layers: int, num_experts: int, num_ranks: int, num_redundant: int) -> torch.Tensor:
    """The release's initial placement with dynamic EPLB, ``[L, G, S]`` int64, the same in every layer."""
    with _release_imports():
        from vllm_ascend.eplb.core.eplb_utils import generate_global_placement

        placement = generate_global_placement(num_experts, num_ranks, num_redundant, 0)
    return placement.to(torch.int64).unsqueeze(0).expand(num_layers, -1, -1).clone()


def slot_workload(table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Tokens per physical slot ``[L, G, S]`` (int64) for logical loads ``weight [L, E]`` on ``table``: an
    expert's count split over its replicas, the first ``count mod replicas`` replicas one token more.

    >>> slot_workload(torch.tensor([[[0, 1], [2, 0]]]), torch.tensor([[5., 3., 2.]])).tolist()
    [[[3, 3], [2, 2]]]
    """
    if weight.dim() != 2 or table.dim() != 3 or weight.shape[0] != table.shape[0]:
        raise ConfigError(f"slot_workload needs table [L, G, S] and weight [L, E] with the same L, got "
                          f"{tuple(table.shape)} and {tuple(weight.shape)}")
    counts = weight.round().to(torch.int64)
    out = torch.empty_like(table)
    for layer in range(table.shape[0]):
        flat = table[layer].flatten().tolist()
        replicas = torch.bincount(table[layer].flatten(), minlength=weight.shape[1]).tolist()
        seen: dict[int, int] = {}
        row = []
        for expert in flat:
            k = seen.get(expert, 0)
            seen[expert] = k + 1
            share, extra = divmod(int(counts[layer, expert]), replicas[expert])
            row.append(share + (1 if k < extra else 0))
        out[layer] = torch.tensor(row, dtype=torch.int64).view(table.shape[1:])
    return out


def rebalance(policy: str, table: torch.Tensor, workload: torch.Tensor) -> dict:
    """One EPLB round of ``policy`` on ``table`` with per-slot ``workload`` (both ``[L, G, S]``), as the
    worker calls it. Returns ``{"table": new [L, G, S] int64, "changed": bool, "priority": list,
    "worker_reverts": [layers the worker's own check_expert_placement would give back their old placement]}``.
    """
    instance = new_policy(policy)
    load = workload.unsqueeze(0) if policy == "flashlb" else workload  # FlashLB: [T, L, G, S], T = 1
    with _release_imports():
        changed, priority, new = instance.rebalance_experts(table.clone(), load.clone())
        new_table = torch.as_tensor(np.asarray(new)).to(torch.int64)
        reverts = worker_reverts(table, new_table) if new_table.shape == table.shape else []
    return {"table": new_table, "changed": bool(changed),
            "priority": [int(p) for p in np.asarray(priority).reshape(-1)],
            "worker_reverts": reverts}


def worker_reverts(old: torch.Tensor, new: torch.Tensor) -> list[int]:
    """Layers whose new placement the release's ``EplbWorker.check_expert_placement`` replaces by the old
    one (it logs an error and goes on: the layer is silently not rebalanced)."""
    with _release_imports():
        from vllm_ascend.eplb.core.eplb_worker import EplbWorker

        checked = new.clone()
        EplbWorker.check_expert_placement(None, old.clone(), checked)  # uses no state of the worker
    return [layer for layer in range(new.shape[0])
            if not torch.equal(checked[layer], new[layer]) and torch.equal(checked[layer], old[layer])]


def run_cases(cases: list[dict]) -> list[dict]:
    """In a rank: every case ``{"policy", "weight" [L, E], "num_ranks", "num_redundant"}`` (optional
    ``"table"``: the current placement, default :func:`initial_table`) through :func:`rebalance`. Adds
    ``"initial"`` (the table the policy was given) and ``"workload"`` to each result."""
    results = []
    for case in cases:
        weight = case["weight"]
        table = case.get("table")
        if table is None:
            table = initial_table(weight.shape[0], weight.shape[1], case["num_ranks"], case["num_redundant"])
        workload = slot_workload(table, weight)
        result = rebalance(case["policy"], table, workload)
        results.append({**result, "initial": table, "workload": workload})
    return results


# -- the weight transfer ----------------------------------------------------------------------------

class _MoELayer:
    """What ``VllmEplbAdaptor`` and the D2D loader read of an ``AscendFusedMoE`` layer."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, global_expert_map: torch.Tensor, ep_rank: int):
        self.w13_weight = w13
        self.w2_weight = w2
        self.global_expert_map = global_expert_map
        self.local_num_experts = w13.shape[0]
        self.ep_rank = ep_rank
        self.moe_load = torch.zeros(w13.shape[0], dtype=torch.int64)

    def get_log2phy_map(self):
        return None  # no log2phy-based routing on this path: the expert map alone


class _Model:
    def __init__(self):
        self.config = type("Config", (), {"first_k_dense_replace": 0})()
        self.quant_config = None


def expert_maps(table: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[L, G, E]`` int32: for every layer and rank, logical expert -> local slot or -1 (the release's
    ``global_expert_map`` layout; a table never holds an expert twice on one rank here).

    >>> expert_maps(torch.tensor([[[1, 0], [2, 1]]]), 3).tolist()
    [[[1, 0, -1], [-1, 1, 0]]]
    """
    maps = torch.full((*table.shape[:2], num_experts), -1, dtype=torch.int32)
    for layer in range(table.shape[0]):
        for rank in range(table.shape[1]):
            for slot, expert in enumerate(table[layer, rank].tolist()):
                maps[layer, rank, expert] = slot
    return maps


@contextlib.contextmanager
def eplb_world() -> Iterator[dict]:
    """In every rank of a torch.distributed world of G ranks: vLLM's and vllm-ascend's groups for DP = G,
    TP = PP = 1 with dynamic EPLB (EP = the world); yields ``{kind: GroupCoordinator}``."""
    import torch.distributed as dist

    from ascend_conformance.sut import vllm_ascend_groups
    from ascend_conformance.topology import ParallelConfig

    world_size = dist.get_world_size()
    with _release_imports():
        pass  # numba's cache directory and the stand-in, before vllm-ascend imports them
    with vllm_ascend_groups.live_groups(ParallelConfig(world_size=world_size, tp=1, pp=1, dp=world_size)) as groups:
        yield groups


def redistribute(old_table: torch.Tensor, new_table: torch.Tensor, layer_weights: list) -> dict:
    """Inside :func:`eplb_world`: the release moves this rank's expert weights from ``old_table`` to
    ``new_table`` (both ``[L, G, S]``), layer after layer, in place in ``layer_weights[l] = [w13, w2]``
    (``[S, ...]`` rows per local slot). Returns what it did: ``{"sends": [[(dst, expert), ...] per layer],
    "recvs": [[(src, expert), ...] per layer], "expert_maps": [this rank's map [E] after each layer]}``.
    """
    import torch.distributed as dist

    num_layers, num_ranks, slots = old_table.shape
    if new_table.shape != old_table.shape or len(layer_weights) != num_layers:
        raise ConfigError(f"redistribute: tables {tuple(old_table.shape)} / {tuple(new_table.shape)} and "
                          f"{len(layer_weights)} layers of weights disagree")
    num_experts = int(torch.cat([old_table.flatten(), new_table.flatten()]).max()) + 1
    old_maps, new_maps = expert_maps(old_table, num_experts), expert_maps(new_table, num_experts)
    with _release_imports():
        from vllm_ascend.eplb.adaptor.vllm_adaptor import VllmEplbAdaptor
        from vllm_ascend.eplb.core.eplb_device_transfer_loader import D2DExpertWeightLoader
        from vllm_ascend.eplb.core.eplb_worker import EplbWorker

        me = dist.get_rank()
        layers = [_MoELayer(w13, w2, old_maps[layer].clone(), me) for layer, (w13, w2) in enumerate(layer_weights)]
        registered = VllmEplbAdaptor._registered_moe_layers
        VllmEplbAdaptor._registered_moe_layers = layers  # what AscendFusedMoE.__init__ registers
        try:
            adaptor = VllmEplbAdaptor(model=_Model())
            adaptor.get_global_expert_map()  # the updator's warm-up reads the maps this way
            loader = D2DExpertWeightLoader()
            loader.set_adator(adaptor)
            loader.num_layers = num_layers
            worker = EplbWorker({}, POLICY_TYPES["default"], enable_d2d=True)  # its planner; the policy is unused
            packed = worker.pack_update_info(worker.compose_expert_update_info_greedy(
                new_maps.to(torch.int64), old_maps.to(torch.int64)))
            sends, recvs, maps = [], [], []
            for send_info, recv_info, new_map, log2phy, layer_id in packed:
                loader.set_log2phy_map(torch.as_tensor(log2phy))
                loader.generate_expert_d2d_transfer_task(send_info, recv_info, torch.as_tensor(new_map), layer_id)
                requests: list = []
                loader.asyn_expert_weight_transfer(requests)
                loader.update_expert_map_and_weight(requests)
                sends.append([(int(dst), int(expert)) for dst, expert in send_info])
                recvs.append([(int(src), int(expert)) for src, expert in recv_info])
                maps.append(adaptor.expert_map_per_layer_cpu[layer_id].clone())
        finally:
            VllmEplbAdaptor._registered_moe_layers = registered
    return {"sends": sends, "recvs": recvs, "expert_maps": maps}


__all__ = ["RELEASE", "SUT", "POLICY_TYPES", "POLICY_CLASSES", "label", "policy_class", "new_policy",
           "initial_table", "slot_workload", "rebalance", "worker_reverts", "run_cases", "expert_maps",
           "eplb_world", "redistribute"]
