"""vllm-ascend's dynamic-EPLB policies and its expert-weight transfer as a system under test.

Two things are driven, each as the release's own EPLB process and worker drive them; what moved between
release lines (0.13, 0.18, 0.23 and main) is in the shims, ``ascend_conformance/sut/shims/vllm_ascend_eplb/``.

**Policies** (``vllm_ascend/eplb/core/policy/``), obtained from the release's ``PolicyFactory`` for the
``eplb_policy_type`` t of :data:`POLICY_TYPES`: 0 random, 1 default, 2 swift_balancer, 3 flashlb (the class
each maps to on the installed line: :func:`policy_class_names`; 0.13 calls 1 and 2 ``DynamicEplb`` and
``DynamicEplbV2``), and 0 also for an unknown type. Up to 0.18 the factory and every policy take a
``DynamicConfig``: the shim passes a default-constructed one, as ``EplbWorker.__init__`` does. The worker
(``EplbWorker.do_update``) calls

    changed, priority, table = policy.rebalance_experts(current_expert_table, expert_workload)

* ``current_expert_table [L, G, S]``: the logical expert in local slot s of EP rank g (the worker's
  ``global2local`` of the expert maps); the initial one is the release's own ``generate_global_placement``
  for E experts on G ranks with the redundant slots of dynamic EPLB (:func:`initial_table`);
* ``expert_workload [L, G, S]``: tokens per physical slot (``moe_load``, all-gathered over the EP ranks);
  FlashLB takes ``[T, L, G, S]`` from 0.18 on, T observation windows (the updator permutes the gathered load
  so), ``[L, G, S]`` on 0.13;
* ``table``: the new ``[L, G, S]`` (a list or an array); the worker applies it whatever ``changed`` says,
  after its own ``check_expert_placement``, which keeps the old placement of a layer that places an
  expert twice on one rank, drops an expert, or moves an expert that stays on a rank to another slot.

:func:`slot_workload` turns logical loads ``[L, E]`` (the reference's) into per-slot token counts, splitting
an expert's count over its replicas as evenly as integers allow (the policies only ever sum them back per
expert, so the split is immaterial and the sums are exact).

How this adapter sets the policies up, where the release needs the host: 0.23's ``SwiftBalanceEplb`` reads
``torch.npu.device_count()`` as the NPUs per host (only used for node-local redundancy, which the worker
never asks for); the torch_npu stand-in has no device, so on it the adapter sets :data:`NPUS_PER_HOST` of
the emulated device type. FlashLB's numba functions compile with a cache; it is pointed at a per-user
temporary directory (``NUMBA_CACHE_DIR``), never into the release's source tree. The factory warms FlashLB
up on a 58-layer dummy problem at every call; the adapter asks the factory once per process and type and
builds a fresh policy of the class it returned for every case (FlashLB keeps per-layer history between
calls, as it does between EPLB rounds; on a first round it re-places every layer whatever its thresholds).

**Weight transfer** (``eplb/core/eplb_device_transfer_loader.py`` with ``eplb/adaptor/vllm_adaptor.py`` and
the worker's ``compose_expert_update_info_greedy`` / ``pack_update_info``): :func:`redistribute` runs, in
every rank of a world built by vLLM's and vllm-ascend's own parallel state
(:mod:`ascend_conformance.sut.vllm_ascend_groups`; DP x PP with TP 1, so the EP group is the world or, with
PP 2, one PP stage), the release's path from an old to a new table: the worker composes each layer's
sends and receives and packs this rank's share, the D2D loader posts them as one ``batch_isend_irecv`` into
its buffers, waits, and writes the new expert map and the received weights through ``VllmEplbAdaptor``.
The model is a stand-in shaped as vLLM shapes a PP stage (``model.model.layers`` of every hidden layer,
vLLM's ``PPMissingLayer`` outside the stage's ``get_pp_indices``), its MoE layers holding what the adaptor
reads (the expert weights in the layout the line's adaptor moves, ``global_expert_map``,
``local_num_experts``, ``ep_rank``); the adaptor, loader and worker are the release's. The ranks agree
after each step before anything blocks (:func:`unmatched_p2p`): a step that raises on some ranks, or
point-to-point operations that would not pair up, end the run on every rank with what each rank did.

Nothing here knows pytest; the suites judge the results against :mod:`ascend_conformance.eplb`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from collections.abc import Iterator

import numpy as np
import torch

from ascend_conformance.errors import ConfigError, one_line
from ascend_conformance.sut import VLLM_ASCEND, bringup, lines

SUT = VLLM_ASCEND
ADAPTER = "vllm_ascend_eplb"  # its shims: ascend_conformance/sut/shims/vllm_ascend_eplb/
POLICY_TYPES = {"random": 0, "default": 1, "swift_balancer": 2, "flashlb": 3}  # eplb_config.eplb_policy_type
UNKNOWN_POLICY_TYPE = 7  # a type the factory does not know: it falls back to RandomLoadBalance
NPUS_PER_HOST = {"A2": 8, "A3": 16, "A5": 8}  # visible NPUs of one host (A3: 8 chips of 2 dies)
NUMBA_CACHE = os.path.join(tempfile.gettempdir(), f"ascend-conformance-numba-{os.getuid()}")
# 0.13's FlashLB fills the slots its search left empty with random experts (numba's generator, in
# jsq_placement); a host's EPLB process starts from whatever state it has. Seeded before every round (the
# line's shim) so that a verdict is reproducible; the policies of later lines draw nothing.
POLICY_RNG_SEED = 0

_policy_classes: dict[int, type] = {}


def label() -> str:
    """``vllm_ascend 0.23.0.post1``: the installed release, as results name it."""
    return bringup.label(SUT)


def shim():
    """The shim of the installed release's line (``ascend_conformance/sut/shims/vllm_ascend_eplb/``)."""
    return lines.shim(ADAPTER, SUT)


def use_source(path: str) -> None:
    """In a fresh rank: import the vllm_ascend package under ``path`` instead of the installed one
    (:func:`ascend_conformance.sut.bringup.use_source`)."""
    bringup.use_source(path)


def policy_class_names() -> dict[str, str]:
    """``{suite name of an eplb_policy_type: the class the installed line's factory maps it to}`` (read
    from the shim: no import of the release)."""
    return {name: cls for name, (_, cls) in shim().POLICY_CLASSES.items()}


def describe_policy(policy: str) -> str:
    """``DefaultEplb (eplb_policy_type 1)``, as the installed line names it."""
    return f"{policy_class_names()[policy]} (eplb_policy_type {POLICY_TYPES[policy]})"


@contextlib.contextmanager
def _release_imports() -> Iterator[None]:
    """What importing the policies needs: the torch_npu stand-in where CANN is absent (swift_balancer
    imports torch_npu), vLLM's platform, and numba's cache outside the release's source tree."""
    from ascend_conformance.sut import standin

    import torch.distributed as dist

    os.environ.setdefault("NUMBA_CACHE_DIR", NUMBA_CACHE)  # read once, when numba is first imported
    standin.activate()
    # In a world, the launcher's variables with the rank's target device; outside one (a policy asked in the
    # calling process) nothing runs on a device: the policies compute placements on the host.
    overrides = bringup.launch_variables() if dist.is_initialized() else {"VLLM_TARGET_DEVICE": "cpu"}
    with bringup.launcher_environment(overrides):
        yield


def policy_class(policy: str) -> type:
    """The class the release's factory gives for ``policy`` (a name of :data:`POLICY_TYPES`, or
    ``"unknown"`` for a type it does not know), asked once per process."""
    if policy not in POLICY_TYPES and policy != "unknown":
        raise ConfigError(f"{label()} has no EPLB policy {policy!r}; its factory knows "
                          f"{sorted(POLICY_TYPES)} (and falls back on an unknown type)")
    policy_type = POLICY_TYPES.get(policy, UNKNOWN_POLICY_TYPE)
    if policy_type not in _policy_classes:
        with _release_imports():
            _policy_classes[policy_type] = type(shim().generate_policy(policy_type))
    return _policy_classes[policy_type]


def new_policy(policy: str):
    """A fresh instance of the factory's class for ``policy``, set up as on a host (module docstring)."""
    cls = policy_class(policy)
    with _release_imports():
        instance = shim().construct(cls)
        if hasattr(instance, "num_die_per_host") and not instance.num_die_per_host:
            from ascend_conformance.sut import standin

            instance.num_die_per_host = NPUS_PER_HOST[standin.emulated_device_type() or standin.DEFAULT_DEVICE_TYPE]
    return instance


def initial_table(num_layers: int, num_experts: int, num_ranks: int, num_redundant: int) -> torch.Tensor:
    """The release's initial placement with dynamic EPLB, ``[L, G, S]`` int64, the same in every layer."""
    with _release_imports():
        placement = shim().generate_global_placement(num_experts, num_ranks, num_redundant)
    return torch.as_tensor(placement).to(torch.int64).unsqueeze(0).expand(num_layers, -1, -1).clone()


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
    "worker_reverts": [layers the worker's own check_expert_placement would give back their old placement],
    "policy_class": the name of the factory's class}``.
    """
    instance = new_policy(policy)
    load = shim().flashlb_workload(workload) if policy == "flashlb" else workload
    with _release_imports():
        shim().seed_policy_rng(POLICY_RNG_SEED)
        changed, priority, new = instance.rebalance_experts(table.clone(), load.clone())
        new_table = torch.as_tensor(np.asarray(new)).to(torch.int64)
        reverts = worker_reverts(table, new_table) if new_table.shape == table.shape else []
    return {"table": new_table, "changed": bool(changed),
            "priority": [int(p) for p in np.asarray(priority).reshape(-1)],
            "worker_reverts": reverts, "policy_class": type(instance).__name__}


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
    ``"initial"`` (the table the policy was given) and ``"workload"`` to each result. A case the release
    raises on gives ``{"raised": "<type>: <message> (in <function>, <file> line <n>)"}``, so the other cases
    of the batch still get judged."""
    results = []
    for case in cases:
        weight = case["weight"]
        try:
            table = case.get("table")
            if table is None:
                table = initial_table(weight.shape[0], weight.shape[1], case["num_ranks"], case["num_redundant"])
            workload = slot_workload(table, weight)
            result = rebalance(case["policy"], table, workload)
        except Exception as exc:  # noqa: BLE001 - the release's failure of this case, reported with the case
            results.append({"raised": raised_where(exc)})
            continue
        results.append({**result, "initial": table, "workload": workload})
    return results


def raised_where(exc: BaseException) -> str:
    """``IndexError: ... (in lpt_deployment, policy_flashlb.py line 212)``: the exception in one line and
    the innermost frame of vllm_ascend it rose in (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    # the innermost frame of the release's own code, where there is one (not torch's, where it re-raised)
    mine = [f for f in frames if f"{os.sep}vllm_ascend{os.sep}" in f.filename] or frames
    where = f" (in {mine[-1].name}, {os.path.basename(mine[-1].filename)} line {mine[-1].lineno})" if mine else ""
    return one_line(exc, with_type=True) + where


# -- the weight transfer ----------------------------------------------------------------------------

# The per-expert tensors the transfer moves, by role: [shape in (H, I)], dtype (None: the case's dtype).
# A line's shim says which roles its adaptor moves and under which attribute (WEIGHT_ROLES).
ROLE_SHAPES = {"w13": (lambda h, i: (2 * i, h), None), "w2": (lambda h, i: (h, i), None),
               "w13_scale": (lambda h, i: (2 * i,), torch.float32), "w2_scale": (lambda h, i: (h,), torch.float32),
               "w2_scale_fp32": (lambda h, i: (h,), torch.float32)}


def weight_roles() -> list[str]:
    """The roles of the per-expert tensors the installed line's adaptor moves (``w13``, ``w2``, ...)."""
    return [role for role, _ in shim().WEIGHT_ROLES]


def _moe_layer_class():
    class MoELayer(torch.nn.Module):
        """What ``VllmEplbAdaptor`` and the D2D loader read of an ``AscendFusedMoE`` layer."""

        def __init__(self, weights: dict, global_expert_map: torch.Tensor, ep_rank: int):
            super().__init__()
            slots = weights["w13"].shape[0]
            shim().attach_weights(self, weights, slots)
            device = weights["w13"].device  # the layer's: where the release keeps its map and load counts
            self.global_expert_map = global_expert_map.to(device)
            self.local_num_experts = slots
            self.ep_rank = ep_rank
            self.moe_load = torch.zeros(slots, dtype=torch.int64, device=device)

        def get_log2phy_map(self):
            return None  # no log2phy-based routing on this path: the expert map alone

        def clear_moe_load(self):
            self.moe_load.zero_()

    return MoELayer


def _stage_model(num_hidden_layers: int, stage: range, moe_layers: list):
    """A model as vLLM shapes a PP stage: ``model.model.layers`` of every hidden layer, ``PPMissingLayer``
    outside ``stage``, each real one ``.mlp.experts`` = the MoE layer; what its config says and whether it
    is quantised (the line's shim); and the ``model_config`` ``model_register`` reads (0.13)."""
    from vllm.model_executor.models.utils import PPMissingLayer

    config = type("Config", (), {"first_k_dense_replace": 0, "num_hidden_layers": num_hidden_layers,
                                  "model_type": "qwen3_moe"})()
    layers = []
    for index in range(num_hidden_layers):
        if index in stage:
            layer, mlp = torch.nn.Module(), torch.nn.Module()
            mlp.experts = moe_layers[index - stage.start]
            layer.mlp = mlp
            layers.append(layer)
        else:
            layers.append(PPMissingLayer())
    inner = torch.nn.Module()
    inner.layers = torch.nn.ModuleList(layers)
    model = torch.nn.Module()
    model.model = inner
    model.config = config
    model.quant_config = object() if shim().quantized() else None
    return model, type("ModelConfig", (), {"hf_text_config": config})()


@contextlib.contextmanager
def eplb_world(pp: int = 1) -> Iterator[dict]:
    """In every rank of a torch.distributed world of W ranks: vLLM's and vllm-ascend's groups for DP = W / pp,
    PP = ``pp``, TP = 1 with dynamic EPLB (EP = one PP stage); yields ``{kind: GroupCoordinator}``."""
    import torch.distributed as dist

    from ascend_conformance.sut import vllm_ascend_groups
    from ascend_conformance.topology import ParallelConfig

    world_size = dist.get_world_size()
    with _release_imports():
        pass  # numba's cache directory and the stand-in, before vllm-ascend imports them
    with vllm_ascend_groups.live_groups(ParallelConfig(world_size=world_size, tp=1, pp=pp, dp=world_size // pp)) as groups:
        yield groups


def describe_p2p(op) -> tuple:
    """``(kind, peer, group ranks, shape, dtype)`` of a ``torch.distributed.P2POp`` (peer: a global rank)."""
    import torch.distributed as dist

    return ("send" if "send" in op.op.__name__ else "recv", int(op.peer),
            tuple(int(r) for r in dist.get_process_group_ranks(op.group)), tuple(op.tensor.shape),
            str(op.tensor.dtype))


def unmatched_p2p(ops_by_rank: dict) -> list[str]:
    """What keeps the point-to-point operations of every rank (``{global rank: [describe_p2p, ...]}``, in
    posting order) from pairing up: a peer outside the operation's group or the rank itself, or the n-th
    send from a to b on a group not meeting the n-th receive of b from a on it with the same shape and dtype.

    >>> unmatched_p2p({0: [("send", 1, (0, 1), (2,), "f32")], 1: [("recv", 0, (0, 1), (2,), "f32")]})
    []
    >>> unmatched_p2p({0: [("send", 1, (0, 2), (2,), "f32")], 2: []})
    ['rank 0 sends to rank 1, outside its group [0, 2]', 'rank 0 sends to rank 1 on group [0, 2] (2,) f32, which no receive meets']
    """
    problems, sends, recvs = [], {}, {}
    for rank, ops in sorted(ops_by_rank.items()):
        for kind, peer, group, shape, dtype in ops:
            verb = "sends to" if kind == "send" else "receives from"
            if peer not in group:
                problems.append(f"rank {rank} {verb} rank {peer}, outside its group {list(group)}")
            elif peer == rank:
                problems.append(f"rank {rank} {verb} itself")
            pair = (rank, peer, group) if kind == "send" else (peer, rank, group)
            (sends if kind == "send" else recvs).setdefault(pair, []).append((shape, dtype))
    for pair in sorted(set(sends) | set(recvs)):
        src, dst, group = pair
        out, into = sends.get(pair, []), recvs.get(pair, [])
        for n in range(max(len(out), len(into))):
            if n >= len(into):
                problems.append(f"rank {src} sends to rank {dst} on group {list(group)} {out[n][0]} {out[n][1]}, "
                                f"which no receive meets")
            elif n >= len(out):
                problems.append(f"rank {dst} receives from rank {src} on group {list(group)} {into[n][0]} "
                                f"{into[n][1]}, which no send meets")
            elif out[n] != into[n]:
                problems.append(f"rank {src} -> {dst} on group {list(group)}: send {out[n]} meets receive {into[n]}")
    return problems


def _agree(step: str, failure: str | None, ops: list | None = None) -> dict | None:
    """Every rank of the world says how ``step`` went (its failure, or the point-to-point operations it
    is about to post); returns None when all may go on, else what stopped them, the same on every rank."""
    import torch.distributed as dist

    views: list = [None] * dist.get_world_size()
    dist.all_gather_object(views, (dist.get_rank(), failure, ops))
    failed = {rank: why for rank, why, _ in views if why is not None}
    if failed:
        return {"step": step, "raised": failed}
    if ops is not None:
        unmatched = unmatched_p2p({rank: rank_ops for rank, _, rank_ops in views})
        if unmatched:
            return {"step": step, "unmatched": unmatched}
    return None


def redistribute(old_table: torch.Tensor, new_table: torch.Tensor, layer_weights: list, groups: dict,
                 stage: int = 0, num_stages: int = 1) -> dict:
    """Inside :func:`eplb_world`: the release moves this rank's expert weights from ``old_table`` to
    ``new_table`` (both ``[L, G, S]``, G the EP group's size), layer after layer, in place in
    ``layer_weights[l] = {role: [S, ...]}`` (the roles of :func:`weight_roles`). This rank's layers are
    PP stage ``stage`` of ``num_stages`` stages of L MoE layers each.

    Returns ``{"sends": [[(dst, expert), ...] per layer], "recvs": [[(src, expert), ...] per layer],
    "expert_maps": [this rank's map [E] after each layer]}``, or, when a step raised on some rank or the
    ranks' point-to-point operations would not pair up, ``{"stopped": {"step", "layer", "raised": {rank:
    one line} | "unmatched": [...]}}`` on every rank, nothing posted.
    """
    ep = groups["ep"]
    num_layers, num_ranks, slots = old_table.shape
    if new_table.shape != old_table.shape or len(layer_weights) != num_layers or num_ranks != ep.world_size:
        raise ConfigError(f"redistribute: tables {tuple(old_table.shape)} / {tuple(new_table.shape)}, "
                          f"{len(layer_weights)} layers of weights and an EP group of {ep.world_size} disagree")
    num_experts = int(torch.cat([old_table.flatten(), new_table.flatten()]).max()) + 1
    old_maps, new_maps = expert_maps(old_table, num_experts), expert_maps(new_table, num_experts)
    line = shim()
    with _release_imports():
        from vllm.distributed.utils import get_pp_indices
        from vllm_ascend.eplb.adaptor.vllm_adaptor import VllmEplbAdaptor

        registered = getattr(VllmEplbAdaptor, "_registered_moe_layers", None)
        failure, packed = None, None
        try:
            me = ep.rank_in_group
            hidden = num_layers * num_stages
            first, last = get_pp_indices(hidden, stage, num_stages)
            if last - first != num_layers:
                raise ConfigError(f"vLLM gives PP stage {stage} of {num_stages} layers [{first}, {last}) of "
                                  f"{hidden}, not {num_layers}")
            moe_layer = _moe_layer_class()
            layers = [moe_layer(weights, old_maps[layer].clone(), me) for layer, weights in enumerate(layer_weights)]
            model, model_config = _stage_model(hidden, range(first, last), layers)
            adaptor = line.make_adaptor(model, model_config, layers)
            adaptor.get_global_expert_map()  # the updator's warm-up reads the maps this way
            loader = line.make_loader(adaptor)
            worker = line.make_worker(POLICY_TYPES["default"], tp_size=1)  # its planner; the policy is unused
            packed = worker.pack_update_info(worker.compose_expert_update_info_greedy(
                new_maps.to(torch.int64), old_maps.to(torch.int64)))
        except Exception as exc:  # noqa: BLE001 - the release's, told to every rank below
            failure = raised_where(exc)
        try:
            stopped = _agree("set-up (adaptor, loader, worker planning)", failure)
            if stopped:
                return {"stopped": {**stopped, "layer": None}}
            sends, recvs, maps = [], [], []
            for send_info, recv_info, new_map, log2phy, layer_id in packed:
                failure, ops = None, None
                try:
                    # the worker's packed maps are host tensors, as EplbWorker (a CPU process of its own) hands
                    # them to the updator; the loader copies them into the layer's device maps itself
                    loader.set_log2phy_map(torch.as_tensor(log2phy))
                    loader.generate_expert_d2d_transfer_task(send_info, recv_info, torch.as_tensor(new_map),
                                                             line.loader_layer_id(adaptor, layer_id))
                    ops = [describe_p2p(op) for op in loader.comm_op_list or []]
                except Exception as exc:  # noqa: BLE001
                    failure = raised_where(exc)
                stopped = _agree("D2D task (generate_expert_d2d_transfer_task)", failure, ops)
                if stopped:
                    return {"stopped": {**stopped, "layer": int(layer_id)}}
                requests: list = []
                loader.asyn_expert_weight_transfer(requests)
                loader.update_expert_map_and_weight(requests)
                sends.append([(int(dst), int(expert)) for dst, expert in send_info])
                recvs.append([(int(src), int(expert)) for src, expert in recv_info])
                maps.append(adaptor.expert_map_per_layer_cpu[line.loader_layer_id(adaptor, layer_id)].clone())
        finally:
            if registered is not None:
                VllmEplbAdaptor._registered_moe_layers = registered
    return {"sends": sends, "recvs": recvs, "expert_maps": maps}


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


__all__ = ["SUT", "ADAPTER", "POLICY_TYPES", "ROLE_SHAPES", "label", "shim", "policy_class_names",
           "describe_policy", "use_source", "policy_class", "new_policy", "initial_table", "slot_workload", "rebalance",
           "worker_reverts", "run_cases", "raised_where", "weight_roles", "expert_maps", "eplb_world",
           "describe_p2p", "unmatched_p2p", "redistribute"]
