"""vllm-ascend's own MoE layer and communication methods as a system under test, on every release line.

The release's own MoE layer runs, built and driven through the release's own entry points; only what
moved between lines (the layer's class and constructor arguments, where it keeps its expert map, where
the forward context keeps the comm method, what the model runner and the model's MoE block do around the
layer) comes from the adapter's shim for the installed line (``ascend_conformance/sut/shims/vllm_ascend_moe/``).
In every rank of a ``torch.distributed`` world (``world = DP·TP``, EP = the world, one PP stage):

1. the deployment: vLLM's parallel state and vllm-ascend's (``init_ascend_config``,
   ``init_ascend_model_parallel``: the mc2 group) under a ``VllmConfig`` with ``enable_expert_parallel``,
   a one-layer Qwen3-MoE model config, the scheduler's ``max_num_seqs`` (the runner's request budget, from
   which the release derives its MC2 token capacity) and ``additional_config`` (a static EPLB placement
   file as ``eplb_config.expert_map_path``); what NPUModelRunner sets once per process
   (``set_mc2_tokens_capacity``, ``set_mc2_mask``, the weight-prefetch method where the line has one);
2. per case, the release's MoE layer as vLLM's Qwen3MoeSparseMoeBlock builds it (``AscendFusedMoE`` up to
   0.23, the release's ``FusedMoEFactory`` on main): its own ``init_eplb_config`` (expert map, ``log2phy``),
   ``setup_moe_comm_method`` (``AllGatherCommImpl``, ``AlltoAllCommImpl``, ``MC2CommImpl`` with their token
   dispatchers and prepare / finalize), its quant method; the scenario's weights loaded into the layer's
   local expert slots (as the checkpoint loader places them by the layer's expert map), then the quant
   method's own ``process_weights_after_loading``;
3. the forward as the model runs it: ``set_ascend_forward_context`` (the release's comm-method selection
   for the batch), the layer's forward (vLLM's, then the release's ``forward_impl``: ``prepare``, its quant
   method's ``apply`` with the weight cast and the fused-experts arguments, ``finalize`` with its reduce
   flag) and the model block's TP reduce;
4. every rank's output against the dense oracle (:func:`ascend_conformance.moe.oracle.dense_moe`).

**Routing.** The layer gets a custom routing function (the release's ``custom_routing_function`` hook of
``select_experts`` / its router) that returns the scenario's routing. vllm-ascend routes after ``prepare``,
so the routing travels through ``prepare`` in the router-logits slot, encoded as ``[topk_ids,
topk_weights, 1]`` per token (float32, exact for ids): prepare pads, gathers and splits it exactly like the
logits, and the routing function decodes it. Padding rows (zeros) decode as the routing softmax top-k
gives an all-zero logit row (experts 0..K-1, weight 1/K); their outputs are cut away by finalize.

**The method under test** reaches the layer through the release's own selection: a case states the
deployment (``max_num_seqs``) under which the release selects its method for its batch, and a rank whose
release selects another method fails the case ("does not reach"). A *forced* case (a contract check of
the method, outside every configuration of the release) installs the method in the forward context
instead, as the old adapter did for every case.

**Expert maps** (``EXPERT_MAPS``), each reaching the release the way it takes one (every EP rank holds
``(E + R) / P`` local experts; the scenario's own placement must be ``contiguous``, the oracle does not
depend on placement):

* ``contiguous`` -- no EPLB: ``init_eplb_config`` gives vLLM's contiguous map (rank r holds ``[r·L, (r+1)·L)``);
* ``permuted`` -- a seeded non-contiguous map installed with the layer's own ``update_expert_map`` and no
  log2phy: no configuration of a release produces it (a contract check only);
* ``eplb`` -- the same kind of placement as a static EPLB file: the release builds the map and ``log2phy``;
* ``eplb-redundant`` -- a static EPLB file with R = P redundant replicas ((E + P) / P experts per rank,
  seeded experts twice, never twice on one rank).

**Device types** (``DEVICE_TYPES``): vllm-ascend picks its device adaptor and dispatch arguments from its
build info and the SoC version. With the torch_npu stand-in the ranks emulate one device type per process
(A2 / A3: ``npu_moe_init_routing_custom``; A5: ``npu_moe_init_routing_v2`` and MC2's ``expert_scales``).
With the real torch_npu the host's device type is used and ``ops`` is ``torch_npu``.

Nothing here knows pytest; the suites and the CLI call :func:`run_cases` in a world and
:func:`summarize` / :func:`check` in the parent. Every label names the installed release
(:func:`ascend_conformance.sut.bringup.label`).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import types
import zlib

import torch

from ascend_conformance.errors import ConfigError, Divergence, one_line
from ascend_conformance.moe.scenario import Scenario
from ascend_conformance.sut import VLLM_ASCEND, bringup, lines

ADAPTER = "vllm_ascend_moe"  # the shim package: ascend_conformance/sut/shims/vllm_ascend_moe/
# reference method name -> vllm-ascend's MoECommType member and class
METHODS = {"allgather": ("ALLGATHER", "AllGatherCommImpl"), "alltoall": ("ALLTOALL", "AlltoAllCommImpl"),
           "mc2": ("MC2", "MC2CommImpl")}
DEVICE_TYPES = ("A2", "A3", "A5")
EXPERT_MAPS = ("contiguous", "permuted", "eplb", "eplb-redundant")
ROUTING_COLUMNS = 2  # per entry: id, weight; plus one "real token" flag column per token
MAX_NUM_BATCHED_TOKENS = 256  # scheduler budget of the emulated runner: sizes the reserved mc2 mask
# The runner's request budget (max_num_seqs; decode query length 1, no graph capture): the release's MC2
# token capacity is derived from it. 64 holds every batch of the suites (MC2 within capacity); 1 makes
# the capacity TP tokens, so a batch above it goes to AlltoAll (A3, A5) or AllGather (A5, EP <= top-k).
MAX_NUM_SEQS = 64
SMALL_MAX_NUM_SEQS = 1
LAYER_PREFIX = "model.layers.0.mlp.experts"


@functools.lru_cache(maxsize=1)
def line_shim():
    """The adapter's shim for the installed release line (ascend_conformance/sut/lines.py)."""
    return lines.shim(ADAPTER, VLLM_ASCEND)


@functools.lru_cache(maxsize=1)
def release_label() -> str:
    """``vllm_ascend 0.18.0``, ``vllm_ascend main@182b75ea84``: the installed release (read once per process)."""
    return bringup.label(VLLM_ASCEND)


class NotReached(AssertionError):
    """The release's own selection does not pick the case's method in the case's deployment: the test's
    configuration does not reach what it claims to judge (a bug of the test, never a divergence)."""


class CaseCrashed(RuntimeError):
    """The release (or the adapter) raised while running one case; the other cases of its world still judge."""


@dataclasses.dataclass(frozen=True)
class SutCase:
    """One scenario for vllm-ascend: the reference scenario, how its experts reach the release, the
    deployment under which the release selects its method (``max_num_seqs``), and whether the method is
    instead forced into the forward context (``forced``: a contract check outside the release's configurations)."""

    scenario: Scenario
    expert_map: str = "contiguous"
    max_num_seqs: int = MAX_NUM_SEQS
    forced: bool = False

    def __post_init__(self):
        if self.scenario.method not in METHODS:
            raise ConfigError(f"{release_label()} has no MoE comm method for {self.scenario.method!r}; "
                              f"the SUT runs {', '.join(METHODS)}")
        if self.expert_map not in EXPERT_MAPS:
            raise ConfigError(f"expert_map must be one of {', '.join(EXPERT_MAPS)}, got {self.expert_map!r}")
        if self.scenario.placement != "contiguous":
            raise ConfigError(f"{release_label()} holds (E + R) / P experts on every EP rank; the scenario "
                              f"placement {self.scenario.placement} is uneven: use placement contiguous with an "
                              f"expert map of {', '.join(EXPERT_MAPS)}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be a whole number >= 1, got {self.max_num_seqs}")
        if self.expert_map == "permuted" and not self.forced:
            raise ConfigError("no configuration of vllm-ascend installs a non-contiguous expert map without "
                              "log2phy: the permuted map is a contract check only (forced)")

    @property
    def redundant(self) -> int:
        """R: redundant expert replicas (one per EP rank with ``eplb-redundant``)."""
        return self.scenario.world_size if self.expert_map == "eplb-redundant" else 0

    @property
    def uses_placement_file(self) -> bool:
        return self.expert_map.startswith("eplb")

    def comm_class(self) -> str:
        """vllm-ascend's class of the method, e.g. ``AllGatherCommImpl``."""
        return METHODS[self.scenario.method][1]

    def to_dict(self) -> dict:
        return {"scenario": self.scenario.to_dict(), "expert_map": self.expert_map,
                "max_num_seqs": self.max_num_seqs, "forced": self.forced}

    @classmethod
    def from_dict(cls, values: dict) -> "SutCase":
        return cls(Scenario.from_dict(values["scenario"]), values["expert_map"],
                   values.get("max_num_seqs", MAX_NUM_SEQS), values.get("forced", False))

    def label(self) -> str:
        how = " forced" if self.forced else ""
        return f"{self.scenario.label()} map={self.expert_map} max_num_seqs={self.max_num_seqs}{how}"

    def repro(self, device_type: str) -> str:
        extra = f" --sut vllm-ascend --device-type {device_type} --max-num-seqs {self.max_num_seqs}"
        if self.expert_map != "contiguous":
            extra += f" --expert-map {self.expert_map}"
        if self.forced:
            extra += " --force-method"
        return self.scenario.repro() + extra

    def placement_rows(self) -> list[list[int]]:
        """Every rank's logical experts in local-id order for the non-default maps: E + R slots, every
        expert once and R seeded experts twice (never twice on one rank), shuffled, (E + R) / P per rank.

        >>> case = SutCase(Scenario("allgather", 2, 4, 1, 1, 8, 4, "float32", 3), "eplb-redundant")
        >>> rows = case.placement_rows(); [len(r) for r in rows], sorted(set(sum(rows, [])))
        ([3, 3], [0, 1, 2, 3])
        """
        experts, ranks, redundant = self.scenario.experts, self.scenario.world_size, self.redundant
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.scenario.seed}:{self.expert_map}".encode()))
        per_rank = (experts + redundant) // ranks
        for _ in range(1000):
            slots = torch.randperm(experts, generator=gen).tolist()
            slots += torch.randperm(experts, generator=gen)[:redundant].tolist()
            rows = [slots[r * per_rank:(r + 1) * per_rank] for r in range(ranks)]
            if all(len(set(row)) == len(row) for row in rows):
                return rows
        raise ConfigError(f"no placement of {experts} experts + {redundant} replicas over {ranks} ranks")


# -- the process: stand-in, emulated build, environment ---------------------------------------------

def _emulate_build(device_type: str) -> None:
    """vllm-ascend reads its device type from ``vllm_ascend._build_info`` (written by its setup.py from
    SOC_VERSION); with the stand-in, the build emulates ``device_type`` for the life of the process."""
    current = sys.modules.get("vllm_ascend._build_info")
    if current is not None:
        if getattr(current, "__device_type__", None) != device_type:
            raise ConfigError(f"this process already emulates vllm-ascend built for "
                              f"{getattr(current, '__device_type__', None)}; run {device_type} in a fresh process")
        return
    if "vllm_ascend" in sys.modules:
        raise ConfigError("vllm_ascend was imported before its device type was chosen; emulate it first")
    module = types.ModuleType("vllm_ascend._build_info")
    module.__doc__ = "The emulated build of the conformance suite (no CANN build): its device type."
    module.__device_type__ = device_type
    module.__emulated__ = True
    sys.modules["vllm_ascend._build_info"] = module


def prepare_process(device_type: str) -> str:
    """Make this process able to run vllm-ascend for ``device_type``; return the ops (``golden`` /
    ``torch_npu``). Without the real torch_npu the stand-in is activated and the build emulated."""
    from ascend_conformance.sut import standin

    if device_type not in DEVICE_TYPES:
        raise ConfigError(f"device type must be one of {', '.join(DEVICE_TYPES)}, got {device_type!r}")
    os.environ.setdefault("VLLM_TARGET_DEVICE", bringup.target_device())
    ops = standin.activate(device_type)
    if ops == "golden":
        _emulate_build(device_type)
    bringup.present_rank_device_to_vllm()  # before the layer's modules register vLLM's custom ops
    return ops


def _model_dir(experts: int, top_k: int, hidden: int, intermediate: int) -> str:
    """A one-layer MoE model config (no weights) for vLLM's ModelConfig; cached per shape."""
    path = os.path.join(tempfile.gettempdir(), f"ascend-conformance-moe-model-{os.getuid()}",
                        f"E{experts}K{top_k}H{hidden}I{intermediate}")
    config = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": hidden,
              "intermediate_size": 4 * hidden, "moe_intermediate_size": intermediate, "num_experts": experts,
              "num_experts_per_tok": top_k, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 4, "vocab_size": 32, "max_position_embeddings": 64,
              "norm_topk_prob": True, "torch_dtype": "bfloat16"}
    target = os.path.join(path, "config.json")
    if not os.path.exists(target):
        os.makedirs(path, exist_ok=True)
        partial = f"{target}.{os.getpid()}"
        with open(partial, "w") as f:
            json.dump(config, f)
        os.replace(partial, target)
    return path


# -- the world: vLLM + vllm-ascend state for one layout and deployment ------------------------------

@dataclasses.dataclass
class _World:
    vllm_config: object
    rank: int
    tp: int
    dp: int
    max_num_seqs: int


def _vllm_config(scenario: Scenario, additional_config: dict, max_num_seqs: int):
    from vllm.config import DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig, VllmConfig

    model = ModelConfig(model=_model_dir(scenario.experts, scenario.top_k, scenario.hidden, scenario.intermediate),
                        skip_tokenizer_init=True, dtype=scenario.dtype)
    parallel = ParallelConfig(tensor_parallel_size=scenario.tp, pipeline_parallel_size=1,
                              data_parallel_size=scenario.dp, enable_expert_parallel=True,
                              distributed_executor_backend="external_launcher")
    scheduler = SchedulerConfig(max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, max_num_seqs=max_num_seqs,
                                max_model_len=64, is_encoder_decoder=False)
    # The device explicitly, the rank's: vLLM cannot infer one where it runs as a library without a platform plugin.
    return VllmConfig(model_config=model, parallel_config=parallel, scheduler_config=scheduler,
                      device_config=DeviceConfig(device=bringup.rank_device()), additional_config=additional_config)


@contextlib.contextmanager
def _vllm_ascend_world(scenario: Scenario, additional_config: dict, max_num_seqs: int, shim):
    """vLLM's and vllm-ascend's parallel state for the scenario's layout and the deployment, on the world's
    default group, with the current vLLM config set. Collective. Destroys what it built afterwards
    (leaving the default group)."""
    import torch.distributed as dist
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state

    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != scenario.world_size:
        raise ConfigError(f"scenario needs {scenario.world_size} ranks, the world has {world_size}")
    with bringup.launcher_environment(bringup.launch_variables()):
        vllm_config = _vllm_config(scenario, additional_config, max_num_seqs)
        try:
            with set_current_vllm_config(vllm_config):
                parallel_state.init_distributed_environment(world_size=world_size, rank=rank,
                                                            distributed_init_method=None, local_rank=rank,
                                                            backend=dist.get_backend())
                parallel_state.initialize_model_parallel(tensor_model_parallel_size=scenario.tp,
                                                         pipeline_model_parallel_size=1, backend=dist.get_backend())
                from vllm_ascend.ascend_config import clear_ascend_config, init_ascend_config
                from vllm_ascend.distributed.parallel_state import init_ascend_model_parallel

                clear_ascend_config()
                init_ascend_config(vllm_config)
                init_ascend_model_parallel(vllm_config.parallel_config)
                shim.runner_state(vllm_config, max_num_seqs)
                yield _World(vllm_config, rank, scenario.tp, scenario.dp, max_num_seqs)
        finally:
            bringup.destroy_parallel_state()


# -- the layer: the release's own, with the scenario's weights --------------------------------------

def encode_routing(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, 2K + 1]``: ids, weights, and 1 marking a real token (padding rows are all zero).

    >>> encode_routing(torch.tensor([[3, 1]], dtype=torch.int32), torch.tensor([[0.75, 0.25]])).tolist()
    [[3.0, 1.0, 0.75, 0.25, 1.0]]
    """
    real = torch.ones((topk_ids.shape[0], 1), device=topk_ids.device)
    return torch.cat([topk_ids.float(), topk_weights.float(), real], dim=1)


def decode_routing(encoded: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 topk_ids, float32 topk_weights) from :func:`encode_routing` rows after prepare; a padding row
    gets what select_experts gives an all-zero logit row: experts 0..K-1 with weight 1/K.

    >>> ids, weights = decode_routing(torch.tensor([[3.0, 1.0, 0.75, 0.25, 1.0], [0.0] * 5]), 2)
    >>> ids.tolist(), weights.tolist()
    ([[3, 1], [0, 1]], [[0.75, 0.25], [0.5, 0.5]])
    """
    encoded = encoded.float()
    real = encoded[:, 2 * top_k:2 * top_k + 1] > 0.5
    ids = torch.where(real, encoded[:, :top_k], torch.arange(top_k, dtype=torch.float32, device=encoded.device))
    ids = ids.round().to(torch.int32)
    weights = torch.where(real, encoded[:, top_k:2 * top_k], torch.full((1, top_k), 1.0 / top_k, device=encoded.device))
    return ids, weights


def scenario_routing(hidden_states, gating_output, topk, renormalize, **_):
    """The layer's custom routing function (vLLM's signature): the scenario's routing, decoded from the
    router-logits slot; ``(topk_weights, topk_ids)``."""
    ids, weights = decode_routing(gating_output, topk)
    return weights, ids


@dataclasses.dataclass
class _Layer:
    module: object  # what the model block calls
    holder: object  # the module holding the weights, the quant method and the expert map
    expert_map: torch.Tensor | None
    log2phy: torch.Tensor | None
    local_experts: list  # logical expert of each local slot (-1: an empty slot)


def _permuted_map(case: SutCase, ep_rank: int) -> torch.Tensor:
    """The permuted map on the rank's device, where the release keeps the maps it builds itself."""
    expert_map = torch.full((case.scenario.experts,), -1, dtype=torch.int32)
    mine = case.placement_rows()[ep_rank]
    expert_map[torch.tensor(mine)] = torch.arange(len(mine), dtype=torch.int32)
    return expert_map.to(bringup.rank_device())


def _build_layer(case: SutCase, world: _World, shim) -> _Layer:
    """The release's layer for the case (collective), with the scenario's weights in its local slots."""
    scenario = case.scenario
    with bringup.rank_device():  # as vLLM's model loader builds a model: parameters on the rank's device
        module = shim.build_layer(shim.layer_kwargs(scenario, scenario_routing, LAYER_PREFIX))
    holder = shim.experts(module)
    if case.expert_map == "permuted":
        shim.install_expert_map(module, _permuted_map(case, world.rank))
    expert_map, log2phy = shim.expert_map(module), shim.log2phy(module)
    num_local = holder.w13_weight.shape[0]
    local_experts = [-1] * num_local
    for expert, local in enumerate(expert_map.tolist() if expert_map is not None else range(num_local)):
        if local >= 0:
            if local >= num_local:
                raise ConfigError(f"{release_label()}: expert {expert} has local index {local} on EP rank "
                                  f"{world.rank} but the layer holds {num_local} local experts")
            local_experts[local] = expert
    w13, w2 = scenario.weights()  # [E, 2I, H], [E, H, I]: the checkpoint's layout, as the layer creates them
    if tuple(holder.w13_weight.shape[1:]) != tuple(w13.shape[1:]) or tuple(holder.w2_weight.shape[1:]) != tuple(w2.shape[1:]):
        raise ConfigError(f"{release_label()} creates expert weights w13 {list(holder.w13_weight.shape)}, w2 "
                          f"{list(holder.w2_weight.shape)}; the scenario's are {list(w13.shape)}, {list(w2.shape)}")
    with torch.no_grad():
        holder.w13_weight.data.zero_()
        holder.w2_weight.data.zero_()
        for local, expert in enumerate(local_experts):
            if expert >= 0:  # what the checkpoint loader does: expert e's rows (host) into its local slot (device)
                holder.w13_weight.data[local].copy_(w13[expert])
                holder.w2_weight.data[local].copy_(w2[expert])
    holder.quant_method.process_weights_after_loading(holder)
    return _Layer(module, holder, expert_map, log2phy.cpu() if log2phy is not None else None, local_experts)


# -- one case ------------------------------------------------------------------------------------

def _forward(case: SutCase, world: _World, layer: _Layer, shim, x, topk_ids, topk_weights):
    """The model's forward of the MoE block on the batch the line's runner hands it; returns (out, the
    release's own selection, the comm class that ran). A forced case installs its method in the forward
    context after the release selected."""
    from vllm_ascend.ascend_forward_context import MoECommType, set_ascend_forward_context
    from vllm_ascend.ops.fused_moe.moe_comm_method import get_moe_comm_method

    kind = getattr(MoECommType, METHODS[case.scenario.method][0])
    device = bringup.rank_device()  # the batch as the runner hands it: on the rank's device
    hidden, router_slot, num_tokens, across = shim.runner_batch(
        x.to(device), encode_routing(topk_ids.to(device), topk_weights.to(device)), case.scenario.token_counts())
    with set_ascend_forward_context(None, world.vllm_config, num_tokens=num_tokens, num_tokens_across_dp=across):
        context = shim.extra_context()
        selected = context.moe_comm_type
        selected_name = selected.name.lower() if selected is not None else None
        if case.forced:
            context.moe_comm_type = kind
            context.moe_comm_method = get_moe_comm_method(kind)
        elif selected != kind:
            return None, selected_name, None
        method = context.moe_comm_method
        out = shim.forward(layer.module, hidden, router_slot, world.tp)
    return out[:x.shape[0]], selected_name, type(method).__name__  # the runner's padding rows are dropped


def run_case(case: SutCase, world: _World, shim, ops: str, device_type: str, keep_tensors: bool = False) -> dict:
    """One scenario in this rank (collective); this rank's result against the dense oracle."""
    import torch.distributed as dist
    from ascend_conformance.moe.oracle import dense_moe
    from ascend_conformance.moe.scenario_verdict import compare_result
    from ascend_conformance.tolerance import Kind
    from vllm.distributed.parallel_state import get_dp_group, get_tp_group

    scenario = case.scenario
    layer = _build_layer(case, world, shim)
    try:
        dp_rank, tp_rank = get_dp_group().rank_in_group, get_tp_group().rank_in_group
        x, topk_ids, topk_weights = scenario.inputs(dp_rank)
        out, selected, comm_class = _forward(case, world, layer, shim, x, topk_ids, topk_weights)
    finally:
        shim.forget_layer(layer.module, layer.holder, world.vllm_config, LAYER_PREFIX)
    result = {"rank": dist.get_rank(), "dp_rank": dp_rank, "tp_rank": tp_rank, "tokens": x.shape[0], "ops": ops,
              "device_type": device_type, "comm_class": comm_class, "selected": selected, "forced": case.forced,
              "max_num_seqs": world.max_num_seqs, "mc2_tokens_capacity": _capacity(),
              "expert_map": layer.expert_map.tolist() if layer.expert_map is not None else None,
              "log2phy": layer.log2phy.tolist() if layer.log2phy is not None else None}
    if out is None:
        result.update(ok=False, reached=False, max_abs_err=math.inf, max_rel_err=math.inf, tolerance_used=math.inf,
                      message=f"{release_label()} selects {selected} for {case.label()} on {device_type} "
                              f"(MC2 token capacity {result['mc2_tokens_capacity']}, {max(scenario.token_counts())} "
                              f"tokens on the fullest DP rank): the configuration does not reach {scenario.method}")
        return result
    result["reached"] = True
    expected = dense_moe(x, topk_ids, topk_weights, *scenario.weights())
    what = f"{release_label()} {case.label()} {device_type} rank {dist.get_rank()}"
    if out.shape != expected.shape:
        result.update(ok=False, max_abs_err=math.inf, max_rel_err=math.inf, tolerance_used=math.inf,
                      message=f"{what}: output shape {list(out.shape)}, expected {list(expected.shape)}")
    else:
        result.update(compare_result(out.cpu(), expected, Kind.ACCUMULATED, what))
    if keep_tensors:
        result["tensors"] = {"x": x, "topk_ids": topk_ids, "topk_weights": topk_weights, "out": out.cpu()}
    return result


def _capacity():
    from vllm_ascend import ascend_forward_context

    return ascend_forward_context.get_mc2_tokens_capacity()


def _placement_file(case: SutCase) -> str | None:
    """The static EPLB placement file of a case's ``eplb`` map: a JSON file as ``eplb_config.expert_map_path``
    takes it, named by its content, written atomically by whichever rank of the host comes first (every rank
    writes the same bytes)."""
    if not case.uses_placement_file:
        return None
    rows = case.placement_rows()
    document = {"moe_layer_count": 1, "layer_list": [
        {"layer_id": 0, "device_count": len(rows),
         "device_list": [{"device_id": r, "device_expert": row} for r, row in enumerate(rows)]}]}
    path = os.path.join(tempfile.gettempdir(), f"ascend-conformance-eplb-{os.getuid()}",
                        f"{zlib.crc32(json.dumps(document).encode()):08x}.json")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}"
        with open(partial, "w") as f:
            json.dump(document, f)
        os.replace(partial, path)
    return path


def _group_key(case: SutCase) -> tuple:
    s = case.scenario
    placement = json.dumps(case.placement_rows()) if case.uses_placement_file else None
    return (s.world_size, s.dp, s.tp, s.experts, s.top_k, placement, case.redundant, case.max_num_seqs)


def _crash(case: SutCase, device_type: str, exc: BaseException, stage: str = "") -> dict:
    return {"crash": f"{release_label()} {stage}{case.label()} on {device_type}: {one_line(exc, with_type=True)} "
                     f"| repro: {case.repro(device_type)}"}


class WorldOutOfStep(RuntimeError):
    """A case crashed in this rank while another rank did not finish it: that rank waits in a collective this
    one left, so no later case of the world can run (the world run fails with the crash)."""


# How long a rank whose case crashed waits for the others to finish the case. A case's forward takes seconds
# even on a loaded 2-core host; a peer that has not arrived by then is blocked in a collective this rank left,
# and every second waited is spent only when a case already crashed (120 s cost make test three minutes).
SETTLE_TIMEOUT_S = 30.0


class _Steps:
    """After every case (and every world set-up) each rank says how it ended, through the world's rendezvous
    store, and waits for the others. A crash that every rank shares, or that left no collective half-done,
    lets the world go on to the next case; a crash while another rank still waits in a collective of the
    case cannot (the ranks would pair different collectives): the crashed rank raises WorldOutOfStep, and
    the world run fails with its crash, as before per-case crashes were kept."""

    def __init__(self):
        import uuid

        import torch.distributed as dist

        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.store = dist.distributed_c10d._get_default_store()
        nonce = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(nonce, src=0)  # every rank is at the start of the same run: in step
        self.prefix = f"ascend-conformance-moe-steps/{nonce[0]}"

    def settle(self, step: str, crash: str | None) -> str | None:
        """Say how this rank ended ``step`` (None: fine) and wait for the others; the first crash of any rank
        (None when every rank is fine). WorldOutOfStep when this rank crashed and another never arrives."""
        import datetime

        keys = [f"{self.prefix}/{step}/{rank}" for rank in range(self.size)]
        self.store.set(keys[self.rank], crash or "")
        try:
            self.store.wait(keys, datetime.timedelta(seconds=SETTLE_TIMEOUT_S if crash else 3600.0))
        except Exception as exc:  # noqa: BLE001 - the store's timeout: a rank never came back from the step
            raise WorldOutOfStep(f"{crash} (and another rank did not finish the step within "
                                 f"{SETTLE_TIMEOUT_S:g}s: it waits in a collective this rank left)") from exc
        ended = [self.store.get(key).decode() for key in keys]
        return next((line for line in ended if line), None)


def run_cases(cases: list[dict], device_type: str = "A3", vllm_ascend_path: str | None = None,
              keep_tensors: bool = False) -> list[dict]:
    """Rank function: every case in order, in this rank of the world (collective: every rank gets the same
    list). Cases sharing a layout, model shape, placement and deployment share one vLLM / vllm-ascend
    set-up. A case whose set-up or forward raises gets ``{"crash": "<one line> | repro: ..."}`` and the
    others still run, unless the crash left another rank inside a collective (:class:`_Steps`).
    ``vllm_ascend_path``: run the vllm_ascend package under that directory instead of the installed one
    (needs a fresh process; the installed release names the shim and the labels)."""
    shim = line_shim()  # resolved (with the label) before a copy of the package goes on the path
    release_label()
    if vllm_ascend_path is not None:
        bringup.use_source(vllm_ascend_path)
    ops = prepare_process(device_type)
    parsed = [SutCase.from_dict(values) for values in cases]
    results: list = [None] * len(parsed)
    groups: dict = {}
    for index, case in enumerate(parsed):
        groups.setdefault(_group_key(case), []).append(index)
    steps = _Steps()
    for number, indices in enumerate(groups.values()):
        first = parsed[indices[0]]
        placement = _placement_file(first)
        additional = shim.eplb_additional_config(placement, first.redundant) if placement else {}
        with contextlib.ExitStack() as held:
            try:
                world, set_up = held.enter_context(_vllm_ascend_world(first.scenario, additional,
                                                                      first.max_num_seqs, shim)), None
            except Exception as exc:  # noqa: BLE001 - the set-up of the group: every case of it gets the crash
                world, set_up = None, _crash(first, device_type, exc, "set-up for ")["crash"]
            failed = steps.settle(f"world{number}", set_up)
            if failed:
                for index in indices:
                    results[index] = {"crash": failed.replace(first.label(), parsed[index].label(), 1)}
                continue
            for index in indices:
                try:
                    results[index] = run_case(parsed[index], world, shim, ops, device_type, keep_tensors)
                except Exception as exc:  # noqa: BLE001 - one case's crash, reported as its result
                    results[index] = _crash(parsed[index], device_type, exc)
                steps.settle(f"case{index}", results[index].get("crash"))
    return results


def run_capacities(max_num_seqs: list[int], tp_sizes: list[int], device_type: str = "A3") -> dict:
    """Rank function (world of 2): the release's own MC2 token capacity (``set_mc2_tokens_capacity``, what
    NPUModelRunner calls with its request budget; decode query length 1, no graph capture) for every
    request budget M and TP size: ``{"M,TP": capacity}``."""
    shim = line_shim()
    prepare_process(device_type)
    scenario = Scenario("mc2", 2, 4, 1, 1, 8, 4, "bfloat16", 0)
    out = {}
    with _vllm_ascend_world(scenario, {}, MAX_NUM_SEQS, shim) as world:
        for tp in tp_sizes:
            config = types.SimpleNamespace(
                compilation_config=types.SimpleNamespace(cudagraph_capture_sizes=[], max_cudagraph_capture_size=None),
                parallel_config=types.SimpleNamespace(tensor_parallel_size=tp),
                scheduler_config=world.vllm_config.scheduler_config)
            for budget in max_num_seqs:
                out[f"{budget},{tp}"] = shim.mc2_tokens_capacity(config, budget)
    return out


# -- planted breakages (suites/test_sut_moe.py test_broken_copy_is_caught) -------------------------------
#
# A breakage is planted where the installed line keeps the method's token dispatcher, found by probing the
# source of a copy (ast: the module whose class defines the stage's method, whichever file that is on the
# line), never by one release's text: a wrapper appended to that module replaces the class's own
# ``token_dispatch`` (every token is routed by its neighbour's expert ids) or ``token_combine`` (every token
# gets its neighbour's combined output). Only a copy is edited.

DISPATCHERS = {"allgather": "TokenDispatcherWithAllGather", "alltoall": "TokenDispatcherWithAll2AllV",
               "mc2": "TokenDispatcherWithMC2"}
STAGES = {"dispatch": "token_dispatch", "combine": "token_combine"}
PLANTED = """

# ---- planted by ascend-conformance's test_broken_copy_is_caught: {what} ----
def _conformance_planted(original, stage):
    import copy
    import functools
    import inspect

    signature = inspect.signature(original)

    def neighbour(tensor):
        return tensor.roll(1, dims=0) if tensor.dim() and tensor.shape[0] > 1 else tensor

    @functools.wraps(original)
    def broken(*args, **kwargs):
        if stage == "combine":
            out = original(*args, **kwargs)
            if hasattr(out, "routed_out"):
                out = copy.copy(out)
                object.__setattr__(out, "routed_out", neighbour(out.routed_out))
                return out
            return neighbour(out)
        bound = signature.bind(*args, **kwargs)
        if "topk_ids" in bound.arguments:
            bound.arguments["topk_ids"] = neighbour(bound.arguments["topk_ids"])
        else:
            for name, value in bound.arguments.items():
                if hasattr(value, "topk_ids"):
                    value = copy.copy(value)
                    object.__setattr__(value, "topk_ids", neighbour(value.topk_ids))
                    bound.arguments[name] = value
                    break
            else:
                raise RuntimeError("planted breakage: the dispatch takes no topk_ids")
        return original(*bound.args, **bound.kwargs)

    return broken


{cls}.{fn} = _conformance_planted({cls}.{fn}, "{stage}")
"""


def _defining_module(package_root: str, class_name: str, method_name: str) -> str:
    """The one file under ``package_root`` whose class ``class_name`` defines ``method_name`` (ast only)."""
    found = []
    for parent, _, files in os.walk(package_root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(parent, name)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            if f"class {class_name}" not in source:
                continue
            for node in ast.parse(source).body:
                if isinstance(node, ast.ClassDef) and node.name == class_name and any(
                        isinstance(item, ast.FunctionDef) and item.name == method_name for item in node.body):
                    found.append(path)
    if len(found) != 1:
        raise ConfigError(f"cannot plant the breakage: {len(found)} definitions of {class_name}.{method_name} "
                          f"under {package_root}")
    return found[0]


def plant_breakage(copy_root: str, method: str, stage: str) -> str:
    """Break ``stage`` (dispatch / combine) of ``method`` in the vllm_ascend copy under ``copy_root``;
    returns what was planted, where."""
    if method not in DISPATCHERS or stage not in STAGES:
        raise ConfigError(f"no breakage {method}-{stage}: methods {', '.join(DISPATCHERS)}, stages {', '.join(STAGES)}")
    cls, fn = DISPATCHERS[method], STAGES[stage]
    path = _defining_module(os.path.join(copy_root, "vllm_ascend"), cls, fn)
    what = (f"{cls}.{fn} routes every token by its neighbour's expert ids" if stage == "dispatch"
            else f"{cls}.{fn} gives every token its neighbour's combined output")
    with open(path, "a", encoding="utf-8") as f:
        f.write(PLANTED.format(what=what, cls=cls, fn=fn, stage=stage))
    return f"{os.path.relpath(path, copy_root)}: {what}"


# -- the parent: summary and verdict -------------------------------------------------------------

def summarize(case: SutCase, device_type: str, rank_results: list[dict], label: str | None = None) -> dict:
    """The JSON-able summary of one case from every rank's result (rank order); CaseCrashed when a rank
    crashed in it."""
    from ascend_conformance.moe.scenario_verdict import summarize as summarize_scenario

    crashes = [r["crash"] for r in rank_results if "crash" in r]
    if crashes:
        raise CaseCrashed(crashes[0])
    summary = summarize_scenario(case.scenario, rank_results)
    first = rank_results[0] if rank_results else {}
    summary.update(sut=label or release_label(), ops=first.get("ops"), device_type=device_type,
                   expert_map=case.expert_map, comm_class=first.get("comm_class") or case.comm_class(),
                   selected=first.get("selected"), forced=case.forced, max_num_seqs=case.max_num_seqs,
                   mc2_tokens_capacity=first.get("mc2_tokens_capacity"),
                   reached=all(r.get("reached", True) for r in rank_results), repro=case.repro(device_type))
    return summary


def check(case: SutCase, device_type: str, rank_results: list[dict], label: str | None = None) -> dict:
    """The summary, or :class:`~ascend_conformance.errors.Divergence` when vllm-ascend's output differs
    from the dense oracle: a headline naming the release, method, device type, deployment and scenario,
    then the failure report (ranks, tolerance, largest error, first mismatch table) and the repro line.
    NotReached when the release selects another method; CaseCrashed when a rank crashed."""
    from ascend_conformance.moe.scenario_report import failure_report

    summary = summarize(case, device_type, rank_results, label)
    if not summary["reached"]:
        raise NotReached(next(r["message"] for r in rank_results if not r.get("reached", True)))
    if not summary["ok"]:
        how = "forced into the forward context" if case.forced else f"selected, max_num_seqs {case.max_num_seqs}"
        raise Divergence(f"{summary['sut']} {summary['comm_class']} ({device_type}, {how}, expert map "
                         f"{case.expert_map}) differs from the dense oracle: {case.scenario.label()}, max abs err "
                         f"{summary['max_abs_err']}\n{failure_report(summary)}")
    return summary
