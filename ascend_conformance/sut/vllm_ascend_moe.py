"""vllm-ascend's own MoE communication methods as a system under test.

Written against vllm-ascend 0.23.0.post1 (with vLLM 0.23.0). What it drives, in every rank of a
``torch.distributed`` world (``world = DP·TP``, EP = the world, one PP stage):

1. vLLM's parallel state (``init_distributed_environment`` adopting the world's default group,
   ``initialize_model_parallel``) and vllm-ascend's (``init_ascend_config``,
   ``init_ascend_model_parallel``: the mc2 group), under a ``VllmConfig`` with ``enable_expert_parallel``
   and a one-layer MoE model config written to a temporary directory (vllm-ascend asks the model config
   whether the model is a MoE);
2. the layer's set-up as ``AscendFusedMoE.__init__`` does it: a ``FusedMoEConfig`` with the TP / DP / EP /
   mc2 coordinators, the expert map and ``log2phy`` from vllm-ascend's own ``init_eplb_config``, and
   ``setup_moe_comm_method``, which builds the ``MoECommMethod`` objects (``AllGatherCommImpl``,
   ``AlltoAllCommImpl``, ``MC2CommImpl`` with their token dispatchers and prepare / finalize);
3. per scenario, the forward of ``AscendFusedMoE.forward_impl`` with the routing given instead of
   computed: ``set_ascend_forward_context`` (num_tokens_across_dp, max_tokens_across_dp,
   padded_num_tokens, mc2_mask from the reserved mask, selection), the method under test installed as the
   context's ``moe_comm_method``, then ``prepare`` → ``fused_experts`` (log2phy, dispatch, the unquantized
   MLP: ``npu_grouped_matmul`` / ``npu_swiglu``, combine) → ``finalize`` → vllm-ascend's
   ``maybe_all_reduce_tensor_model_parallel`` step;
4. the output of every rank against the dense oracle (:func:`ascend_conformance.moe.oracle.dense_moe`).

**Routing.** vllm-ascend routes after ``prepare`` (``select_experts`` on the prepared router logits). Here
the scenario's routing is the input, so it travels through ``prepare`` in the router-logits slot, encoded
as ``[topk_ids, topk_weights, 1]`` per token (float32, exact for ids): prepare pads, gathers and splits it
exactly like the logits. Padding rows (zeros) decode as the routing ``select_experts`` gives an all-zero
logit row (experts 0..K-1, weight 1/K); their outputs are cut away by finalize. As in vllm-ascend's
``apply``, the weights are cast to the activations' dtype before dispatch.

**Expert maps** (``EXPERT_MAPS``), each reaching vllm-ascend the way the release takes one. vllm-ascend
0.23 gives every EP rank ``(E + R) / P`` local experts (``AscendFusedMoE``: ``global_num_experts //
ep_size``; a static EPLB file must be rectangular), so only even placements can be expressed; the
scenario's own placement must be ``contiguous`` (the oracle does not depend on placement):

* ``contiguous`` -- no EPLB: ``init_eplb_config`` → vLLM's ``determine_expert_map`` (rank r holds
  ``[r·L, (r+1)·L)``), no log2phy;
* ``permuted`` -- a seeded non-contiguous placement, L = E / P per rank, installed as the layer's expert
  map with no log2phy (as ``AscendFusedMoE.update_expert_map`` installs a map);
* ``eplb`` -- the same kind of placement given as a static EPLB file (``eplb_config.expert_map_path``):
  ``init_eplb_config`` builds the expert map and ``log2phy`` (logical → physical id);
* ``eplb-redundant`` -- a static EPLB file with R = P redundant replicas ((E + P) / P experts per rank,
  seeded experts twice, never twice on one rank): expert map plus ``log2phy`` choosing a replica per rank.

Weights are stored as vllm-ascend stores them after ``process_weights_after_loading``: each rank's local
experts in local-id order (the logical expert of ``expert_map`` entry i at row i), ``w13 [L, H, 2I]``,
``w2 [L, I, H]``.

**Device types** (``DEVICE_TYPES``): vllm-ascend picks its device adaptor and dispatch arguments from its
build info and the SoC version. With the torch_npu stand-in the ranks emulate one device type per
process: A2 / A3 use ``torch.ops._C_ascend.npu_moe_init_routing_custom`` and unpermute with
``abs(expanded_row_idx)``; A5 uses ``torch_npu.npu_moe_init_routing_v2`` and passes the index as is, and its
MC2 dispatch passes ``expert_scales``. Every result names the emulated device type. With the real
torch_npu the host's device type is used and ``ops`` is ``torch_npu``.

Nothing here knows pytest; the suites and the CLI call :func:`run_cases` in a world and
:func:`summarize` / :func:`check` in the parent.
"""
from __future__ import annotations

import contextlib
import dataclasses
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
from ascend_conformance.sut import VLLM_ASCEND, bringup

RELEASE = "0.23.0.post1"  # the release this adapter was written against
# reference method name -> vllm-ascend 0.23's MoECommType member and class
METHODS = {"allgather": ("ALLGATHER", "AllGatherCommImpl"), "alltoall": ("ALLTOALL", "AlltoAllCommImpl"),
           "mc2": ("MC2", "MC2CommImpl")}
DEVICE_TYPES = ("A2", "A3", "A5")
EXPERT_MAPS = ("contiguous", "permuted", "eplb", "eplb-redundant")
ROUTING_COLUMNS = 2  # per entry: id, weight; plus one "real token" flag column per token
MAX_NUM_BATCHED_TOKENS = 256  # scheduler budget of the emulated runner: sizes the reserved mc2 mask
MAX_NUM_SEQS = 64  # with decode query length 1: the MC2 token capacity vllm-ascend derives


@dataclasses.dataclass(frozen=True)
class SutCase:
    """One scenario for vllm-ascend: the reference scenario plus how its experts reach the release."""

    scenario: Scenario
    expert_map: str = "contiguous"

    def __post_init__(self):
        if self.scenario.method not in METHODS:
            raise ConfigError(f"vllm_ascend {RELEASE} has no MoE comm method for {self.scenario.method!r}; "
                              f"the SUT runs {', '.join(METHODS)}")
        if self.expert_map not in EXPERT_MAPS:
            raise ConfigError(f"expert_map must be one of {', '.join(EXPERT_MAPS)}, got {self.expert_map!r}")
        if self.scenario.placement != "contiguous":
            raise ConfigError(f"vllm_ascend {RELEASE} holds (E + R) / P experts on every EP rank; the scenario "
                              f"placement {self.scenario.placement} is uneven: use placement contiguous with an "
                              f"expert map of {', '.join(EXPERT_MAPS)}")

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
        return {"scenario": self.scenario.to_dict(), "expert_map": self.expert_map}

    @classmethod
    def from_dict(cls, values: dict) -> "SutCase":
        return cls(Scenario.from_dict(values["scenario"]), values["expert_map"])

    def label(self) -> str:
        return f"{self.scenario.label()} map={self.expert_map}"

    def repro(self, device_type: str) -> str:
        extra = f" --sut vllm-ascend --device-type {device_type}"
        if self.expert_map != "contiguous":
            extra += f" --expert-map {self.expert_map}"
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
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    ops = standin.activate(device_type)
    if ops == "golden":
        _emulate_build(device_type)
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


# -- the world: vLLM + vllm-ascend state for one layout ---------------------------------------------

@dataclasses.dataclass
class _World:
    vllm_config: object
    rank: int
    tp: int
    dp: int


def _vllm_config(scenario: Scenario, additional_config: dict):
    from vllm.config import DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig, VllmConfig

    model = ModelConfig(model=_model_dir(scenario.experts, scenario.top_k, scenario.hidden, scenario.intermediate),
                        skip_tokenizer_init=True, dtype=scenario.dtype)
    parallel = ParallelConfig(tensor_parallel_size=scenario.tp, pipeline_parallel_size=1,
                              data_parallel_size=scenario.dp, enable_expert_parallel=True,
                              distributed_executor_backend="external_launcher")
    scheduler = SchedulerConfig(max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, max_num_seqs=MAX_NUM_SEQS,
                                max_model_len=64, is_encoder_decoder=False)
    # The device explicitly: vLLM cannot infer one where it runs as a library without a platform plugin.
    return VllmConfig(model_config=model, parallel_config=parallel, scheduler_config=scheduler,
                      device_config=DeviceConfig(device="cpu"), additional_config=additional_config)


@contextlib.contextmanager
def _vllm_ascend_world(scenario: Scenario, additional_config: dict):
    """vLLM's and vllm-ascend's parallel state for the scenario's layout, on the world's default group.
    Collective. Destroys what it built afterwards (leaving the default group)."""
    import torch.distributed as dist
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state

    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != scenario.world_size:
        raise ConfigError(f"scenario needs {scenario.world_size} ranks, the world has {world_size}")
    with bringup.launcher_environment(bringup.launch_variables()):
        vllm_config = _vllm_config(scenario, additional_config)
        try:
            with set_current_vllm_config(vllm_config):
                parallel_state.init_distributed_environment(world_size=world_size, rank=rank,
                                                            distributed_init_method=None, local_rank=rank,
                                                            backend=dist.get_backend())
                parallel_state.initialize_model_parallel(tensor_model_parallel_size=scenario.tp,
                                                         pipeline_model_parallel_size=1, backend=dist.get_backend())
                from vllm_ascend import ascend_forward_context
                from vllm_ascend.ascend_config import clear_ascend_config, init_ascend_config
                from vllm_ascend.distributed.parallel_state import init_ascend_model_parallel

                clear_ascend_config()
                init_ascend_config(vllm_config)
                init_ascend_model_parallel(vllm_config.parallel_config)
                # What NPUModelRunner sets once per process, computed for this layout (the process may have
                # run another layout before: its cached capacity would be that layout's).
                ascend_forward_context._mc2_tokens_capacity = None
                ascend_forward_context.set_mc2_tokens_capacity(vllm_config, MAX_NUM_SEQS, 1)
                ascend_forward_context.set_mc2_mask(vllm_config, torch.device("cpu"))
                yield _World(vllm_config, rank, scenario.tp, scenario.dp)
        finally:
            bringup.destroy_parallel_state()


# -- the layer: moe_config, expert map, weights, comm methods ---------------------------------------

@dataclasses.dataclass
class _Layer:
    moe_config: object
    expert_map: torch.Tensor | None
    log2phy: torch.Tensor | None
    redundant: int
    w13: torch.Tensor  # vllm-ascend's storage after process_weights_after_loading: [L, H, 2I]
    w2: torch.Tensor  # [L, I, H]
    local_experts: list  # logical expert of each local row (-1: a padding row)


def _moe_config(scenario: Scenario, world: _World, num_experts: int, num_local: int):
    from vllm.distributed.parallel_state import get_dp_group, get_ep_group, get_tp_group
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (
        FusedMoEConfig, FusedMoEParallelConfig, RoutingMethodType,
    )
    from vllm_ascend.distributed.parallel_state import get_mc2_group

    parallel = FusedMoEParallelConfig.make(tp_size_=scenario.tp, pcp_size_=1, dp_size_=scenario.dp, sp_size_=1,
                                           vllm_parallel_config=world.vllm_config.parallel_config)
    config = FusedMoEConfig(num_experts=num_experts, experts_per_token=scenario.top_k, hidden_dim=scenario.hidden,
                            intermediate_size_per_partition=scenario.intermediate, num_local_experts=num_local,
                            num_logical_experts=scenario.experts, activation=MoEActivation.SILU, device="cpu",
                            routing_method=RoutingMethodType.Renormalize, moe_parallel_config=parallel,
                            in_dtype=scenario.torch_dtype, max_num_tokens=MAX_NUM_BATCHED_TOKENS)
    # as AscendFusedMoE.__init__ sets them
    config.tp_group = get_tp_group()
    config.dp_group = get_dp_group()
    config.ep_group = get_ep_group()
    config.mc2_group = get_mc2_group()
    return config


def _build_layer(case: SutCase, world: _World) -> _Layer:
    from vllm_ascend.ascend_config import get_ascend_config
    from vllm_ascend.eplb.core.eplb_utils import init_eplb_config

    scenario = case.scenario
    ep_rank, ep_size = world.rank, scenario.world_size
    if scenario.experts % ep_size:
        raise ConfigError(f"vllm_ascend {RELEASE} gives every EP rank experts // ep_size local experts: "
                          f"{scenario.experts} experts over {ep_size} ranks cannot all be held")
    if case.expert_map == "permuted":
        config = _moe_config(scenario, world, scenario.experts, scenario.experts // ep_size)
        expert_map = torch.full((scenario.experts,), -1, dtype=torch.int32)
        mine = case.placement_rows()[ep_rank]
        expert_map[torch.tensor(mine)] = torch.arange(len(mine), dtype=torch.int32)
        log2phy, redundant, num_local = None, 0, len(mine)
    else:
        config = _moe_config(scenario, world, scenario.experts, (scenario.experts + case.redundant) // ep_size)
        # vllm-ascend's own: init_eplb_config(eplb_config, layer_id, moe_config, ...) as AscendFusedMoE calls it
        _, expert_map, log2phy, redundant = init_eplb_config(get_ascend_config().eplb_config, 0, config,
                                                              tp_size=scenario.tp)
        if log2phy is not None:
            log2phy = log2phy.cpu()
        num_local = (scenario.experts + redundant) // ep_size
        config.num_experts = scenario.experts + redundant
        config.num_local_experts = num_local
        config.global_redundant_expert_num = redundant
    local_experts = [-1] * num_local
    for expert, local in enumerate(expert_map.tolist()):
        if local >= 0:
            if local >= num_local:
                raise ConfigError(f"vllm_ascend {RELEASE}: expert {expert} has local index {local} on EP rank {ep_rank} "
                                  f"but the layer holds {num_local} local experts")
            local_experts[local] = expert
    w13, w2 = scenario.weights()
    rows13 = torch.zeros((num_local, *w13.shape[1:]), dtype=w13.dtype)
    rows2 = torch.zeros((num_local, *w2.shape[1:]), dtype=w2.dtype)
    for local, expert in enumerate(local_experts):
        if expert >= 0:
            rows13[local], rows2[local] = w13[expert], w2[expert]
    # AscendUnquantizedFusedMoEMethod.process_weights_after_loading: transpose(1, 2).contiguous()
    return _Layer(config, expert_map, log2phy, redundant, rows13.transpose(1, 2).contiguous(),
                  rows2.transpose(1, 2).contiguous(), local_experts)


# -- one forward ---------------------------------------------------------------------------------

def encode_routing(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, 2K + 1]``: ids, weights, and 1 marking a real token (padding rows are all zero).

    >>> encode_routing(torch.tensor([[3, 1]], dtype=torch.int32), torch.tensor([[0.75, 0.25]])).tolist()
    [[3.0, 1.0, 0.75, 0.25, 1.0]]
    """
    real = torch.ones((topk_ids.shape[0], 1))
    return torch.cat([topk_ids.float(), topk_weights.float(), real], dim=1)


def decode_routing(encoded: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 topk_ids, float32 topk_weights) from :func:`encode_routing` rows after prepare; a padding row
    gets what select_experts gives an all-zero logit row: experts 0..K-1 with weight 1/K.

    >>> ids, weights = decode_routing(torch.tensor([[3.0, 1.0, 0.75, 0.25, 1.0], [0.0] * 5]), 2)
    >>> ids.tolist(), weights.tolist()
    ([[3, 1], [0, 1]], [[0.75, 0.25], [0.5, 0.5]])
    """
    real = encoded[:, 2 * top_k:2 * top_k + 1] > 0.5
    ids = torch.where(real, encoded[:, :top_k], torch.arange(top_k, dtype=torch.float32)).round().to(torch.int32)
    weights = torch.where(real, encoded[:, top_k:2 * top_k], torch.full((1, top_k), 1.0 / top_k))
    return ids, weights


def _forward(case: SutCase, world: _World, layer: _Layer, method, x: torch.Tensor, topk_ids, topk_weights):
    """AscendFusedMoE.forward_impl with the given routing; returns (out, vllm-ascend's own selection)."""
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm_ascend.ascend_forward_context import _EXTRA_CTX, MoECommType, set_ascend_forward_context
    from vllm_ascend.ops.fused_moe.moe_comm_method import AllGatherCommImpl
    from vllm_ascend.ops.fused_moe.moe_runtime_args import build_fused_experts_input
    from vllm_ascend.ops.register_custom_ops import _maybe_all_reduce_tensor_model_parallel_impl
    from vllm_ascend.quantization.quant_type import QuantType

    scenario = case.scenario
    counts = torch.tensor(scenario.token_counts(), dtype=torch.int32)
    kind = getattr(MoECommType, METHODS[scenario.method][0])
    with set_ascend_forward_context(None, world.vllm_config, num_tokens=x.shape[0], num_tokens_across_dp=counts):
        selected = _EXTRA_CTX.moe_comm_type
        _EXTRA_CTX.moe_comm_type = kind
        _EXTRA_CTX.moe_comm_method = method
        prepared = method.prepare(hidden_states=x, router_logits=encode_routing(topk_ids, topk_weights),
                                  enable_shared_expert_dp=False, replace_allreduce=_EXTRA_CTX.flash_comm_v1_enabled,
                                  quant_type=QuantType.NONE)
        ids, weights = decode_routing(prepared.router_logits, scenario.top_k)
        hidden = prepared.hidden_states
        weights = weights.to(hidden.dtype)  # as AscendUnquantizedFusedMoEMethod.apply does
        experts_input = build_fused_experts_input(
            hidden_states=hidden, topk_weights=weights, topk_ids=ids, w1=layer.w13, w2=layer.w2,
            quant_type=QuantType.NONE, dynamic_eplb=False, expert_map=layer.expert_map,
            global_redundant_expert_num=layer.redundant, mc2_mask=prepared.mc2_mask,
            apply_router_weight_on_input=False, log2phy=layer.log2phy, pertoken_scale=None,
            activation=MoEActivation.SILU, swiglu_limit=0.0)
        routed = method.fused_experts(fused_experts_input=experts_input).routed_out
        out = method.finalize(hidden_states=routed, reduce_results=isinstance(method, AllGatherCommImpl),
                              padded_hidden_states_shape=prepared.padded_hidden_states_shape)
        out = _maybe_all_reduce_tensor_model_parallel_impl(out)  # the layer's reduce step (AllGather: TP)
    return out, (selected.name.lower() if selected is not None else None)


def _comm_methods(layer: _Layer) -> dict:
    from vllm_ascend.ascend_forward_context import MoECommType
    from vllm_ascend.ops.fused_moe.moe_comm_method import get_moe_comm_method, setup_moe_comm_method

    setup_moe_comm_method(layer.moe_config)  # as AscendFusedMoE.__init__: every method of the layer
    return {name: get_moe_comm_method(getattr(MoECommType, kind)) for name, (kind, _) in METHODS.items()}


def run_case(case: SutCase, world: _World, ops: str, device_type: str, keep_tensors: bool = False) -> dict:
    """One scenario in this rank (collective); this rank's result against the dense oracle."""
    import torch.distributed as dist
    from ascend_conformance.moe.oracle import dense_moe
    from ascend_conformance.moe.scenario_verdict import compare_result
    from ascend_conformance.tolerance import Kind
    from vllm.distributed.parallel_state import get_dp_group, get_tp_group

    scenario = case.scenario
    layer = _build_layer(case, world)
    method = _comm_methods(layer)[scenario.method]
    dp_rank, tp_rank = get_dp_group().rank_in_group, get_tp_group().rank_in_group
    x, topk_ids, topk_weights = scenario.inputs(dp_rank)
    out, selected = _forward(case, world, layer, method, x, topk_ids, topk_weights)
    expected = dense_moe(x, topk_ids, topk_weights, *scenario.weights())
    what = f"vllm_ascend {case.label()} {device_type} rank {dist.get_rank()}"
    result = {"rank": dist.get_rank(), "dp_rank": dp_rank, "tp_rank": tp_rank, "tokens": x.shape[0], "ops": ops,
              "device_type": device_type, "comm_class": type(method).__name__, "selected": selected,
              "expert_map": layer.expert_map.tolist() if layer.expert_map is not None else None,
              "log2phy": layer.log2phy.tolist() if layer.log2phy is not None else None}
    if out.shape != expected.shape:
        result.update(ok=False, max_abs_err=math.inf, max_rel_err=math.inf, tolerance_used=math.inf,
                      message=f"{what}: output shape {list(out.shape)}, expected {list(expected.shape)}")
    else:
        result.update(compare_result(out.cpu(), expected, Kind.ACCUMULATED, what))
    if keep_tensors:
        result["tensors"] = {"x": x, "topk_ids": topk_ids, "topk_weights": topk_weights, "out": out.cpu()}
    return result


def _placement_file(cases: list[SutCase]) -> str | None:
    """The static EPLB placement file of the cases' ``eplb`` maps (one layout and seed): a JSON file as
    ``eplb_config.expert_map_path`` takes it, named by its content, written atomically by whichever rank
    of the host comes first (every rank writes the same bytes)."""
    eplb = [case for case in cases if case.uses_placement_file]
    if not eplb:
        return None
    rows = eplb[0].placement_rows()
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
    return (s.world_size, s.dp, s.tp, s.experts, s.top_k, placement)


def _use_source(path: str) -> None:
    """Put the vllm_ascend package under ``path`` first on this process's path (a platform engineer's
    checkout, or a patched copy); it must be the one that gets imported."""
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "vllm_ascend")):
        raise ConfigError(f"{path} holds no vllm_ascend package (expected {path}/vllm_ascend/)")
    loaded = sys.modules.get("vllm_ascend")
    if loaded is not None and not os.path.abspath(loaded.__file__).startswith(path + os.sep):
        raise ConfigError(f"this process already imported vllm_ascend from {os.path.dirname(loaded.__file__)}; "
                          f"run the one under {path} in a fresh process")
    if path not in sys.path:
        sys.path.insert(0, path)


def run_cases(cases: list[dict], device_type: str = "A3", vllm_ascend_path: str | None = None,
              keep_tensors: bool = False) -> list[dict]:
    """Rank function: every case in order, in this rank of the world (collective: every rank gets the same
    list). Cases sharing a layout and model shape share one vLLM / vllm-ascend set-up. A case whose
    set-up or forward raises is re-raised naming its repro command. ``vllm_ascend_path``: run the
    vllm_ascend package under that directory instead of the installed one (needs a fresh process)."""
    if vllm_ascend_path is not None:
        _use_source(vllm_ascend_path)
    ops = prepare_process(device_type)
    parsed = [SutCase.from_dict(values) for values in cases]
    results: list = [None] * len(parsed)
    groups: dict = {}
    for index, case in enumerate(parsed):
        groups.setdefault(_group_key(case), []).append(index)
    for indices in groups.values():
        first = parsed[indices[0]]
        placement = _placement_file([first])
        additional = {"eplb_config": {"expert_map_path": placement}} if placement else {}
        try:
            with _vllm_ascend_world(first.scenario, additional) as world:
                for index in indices:
                    case = parsed[index]
                    try:
                        results[index] = run_case(case, world, ops, device_type, keep_tensors)
                    except Exception as exc:
                        raise RuntimeError(f"vllm_ascend {RELEASE} {case.label()} on {device_type}: "
                                           f"{one_line(exc, with_type=True)} | repro: {case.repro(device_type)}") from exc
        except RuntimeError:
            raise
        except Exception as exc:
            raise RuntimeError(f"vllm_ascend {RELEASE} set-up for {first.label()} on {device_type}: "
                               f"{one_line(exc, with_type=True)} | repro: {first.repro(device_type)}") from exc
    return results


# -- the parent: summary and verdict -------------------------------------------------------------

def summarize(case: SutCase, device_type: str, rank_results: list[dict], version: str = RELEASE) -> dict:
    """The JSON-able summary of one case from every rank's result (rank order)."""
    from ascend_conformance.moe.scenario_verdict import summarize as summarize_scenario

    summary = summarize_scenario(case.scenario, rank_results)
    first = rank_results[0] if rank_results else {}
    summary.update(sut=f"{VLLM_ASCEND} {version}", ops=first.get("ops"), device_type=device_type,
                   expert_map=case.expert_map, comm_class=first.get("comm_class"), selected=first.get("selected"),
                   repro=case.repro(device_type))
    return summary


def check(case: SutCase, device_type: str, rank_results: list[dict], version: str = RELEASE) -> dict:
    """The summary, or :class:`~ascend_conformance.errors.Divergence` when vllm-ascend's output differs
    from the dense oracle: a headline naming the release, method, device type and scenario, then the
    failure report (ranks, tolerance, largest error, first mismatch table) and the repro line."""
    from ascend_conformance.moe.scenario_report import failure_report

    summary = summarize(case, device_type, rank_results, version)
    if not summary["ok"]:
        raise Divergence(f"vllm_ascend {version} {summary['comm_class']} ({device_type}, expert map "
                         f"{case.expert_map}) differs from the dense oracle: {case.scenario.label()}, max abs err "
                         f"{summary['max_abs_err']}\n{failure_report(summary)}")
    return summary
