"""vllm-ascend 0.23 (and main): policies take no config; MoE layers register themselves with the adaptor.

* ``PolicyFactory.generate_policy(policy_type)``: 0 ``RandomLoadBalance`` (also for an unknown type), 1
  ``DefaultEplb``, 2 ``SwiftBalanceEplb``, 3 ``FlashLB``, each constructed without arguments.
  ``SwiftBalanceEplb`` reads ``torch.npu.device_count()`` as the NPUs per host (the adapter sets the
  emulated device type's where the stand-in has no device). FlashLB takes ``[T, L, G, S]``.
* ``generate_global_placement(n_expert, ep_size, n_redundant, num_shared_experts)``: ``init_eplb_config``
  passes 0 shared experts unless ``mix_placement``; main lays the slots out as vLLM's checkpoint loader does
  (all logical experts, then the redundant copies of experts 0, 1, ...).
* Transfer: ``AscendFusedMoE.__init__`` registers each real MoE layer of this PP stage with
  ``VllmEplbAdaptor.register_layer`` (``_registered_moe_layers``; ``PPMissingLayer`` never does); the adaptor
  reads them and ``layer.ep_rank``; ``EplbWorker`` takes ``get_ep_group().rank_in_group`` and the model
  runner's TP size; the D2D loader posts over ``get_dynamic_eplb_group()`` with the group's global ranks
  (vllm-ascend #10486, "Combine the features of PP and EPLB").
"""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature, Need
from ascend_conformance.sut.shims.vllm_ascend_eplb import v0_13, v0_18

POLICY, FACTORY, UTILS, WORKER, LOADER, ADAPTOR = v0_13.POLICY, v0_13.FACTORY, v0_13.UTILS, v0_13.WORKER, v0_13.LOADER, v0_13.ADAPTOR
STATE = v0_18.STATE

POLICY_CLASSES = v0_18.POLICY_CLASSES
FACTORY_CALL = Need(FACTORY, "PolicyFactory.generate_policy", ("policy_type",))
WEIGHT_ROLES = v0_18.WEIGHT_ROLES
WEIGHT_LAYOUT = v0_18.WEIGHT_LAYOUT

FEATURES = {
    **{f"policy_{name}": Feature(marker=(Need(f"{POLICY}.{module}", cls),), uses=(FACTORY_CALL,))
       for name, (module, cls) in POLICY_CLASSES.items()},
    "factory": Feature(marker=(Need(FACTORY, "PolicyFactory.generate_policy"),), uses=(FACTORY_CALL,)),
    "initial_placement": Feature(marker=(Need(UTILS, "generate_global_placement"),),
                                 uses=(Need(UTILS, "generate_global_placement",
                                            ("n_expert", "ep_size", "n_redundant", "num_shared_experts")),)),
    "weight_transfer": Feature(
        marker=(Need(LOADER, "D2DExpertWeightLoader"), Need(ADAPTOR, "VllmEplbAdaptor")),
        uses=(Need(ADAPTOR, "VllmEplbAdaptor._registered_moe_layers"), Need(STATE, "get_dynamic_eplb_group"),
              Need(WORKER, "EplbWorker", ("shared_dict", "policy_type", "enable_d2d", "tp_size")),
              Need(WORKER, "EplbWorker.compose_expert_update_info_greedy"), Need(WORKER, "EplbWorker.pack_update_info"),
              Need(LOADER, "D2DExpertWeightLoader.generate_expert_d2d_transfer_task"),
              Need(LOADER, "D2DExpertWeightLoader.asyn_expert_weight_transfer"),
              Need(LOADER, "D2DExpertWeightLoader.update_expert_map_and_weight"))),
}

flashlb_workload = v0_18.flashlb_workload
seed_policy_rng = v0_18.seed_policy_rng
quantized = v0_18.quantized
attach_weights = v0_18.attach_weights
make_loader = v0_18.make_loader


def generate_policy(policy_type: int):
    from vllm_ascend.eplb.core.policy.policy_factory import PolicyFactory

    return PolicyFactory.generate_policy(policy_type)


def construct(policy_class):
    return policy_class()


def generate_global_placement(num_experts: int, num_ranks: int, num_redundant: int):
    from vllm_ascend.eplb.core.eplb_utils import generate_global_placement as generate

    return generate(num_experts, num_ranks, num_redundant, 0)  # init_eplb_config: no mix_placement


def make_adaptor(model, model_config, stage_layers: list):
    """The adaptor over the layers this stage registered (what ``AscendFusedMoE.__init__`` does); the
    process-wide registry is given back by the caller."""
    from vllm_ascend.eplb.adaptor.vllm_adaptor import VllmEplbAdaptor

    VllmEplbAdaptor._registered_moe_layers = []
    for layer in stage_layers:
        VllmEplbAdaptor.register_layer(layer)
    return VllmEplbAdaptor(model=model)


def make_worker(policy_type: int, tp_size: int):
    from vllm_ascend.eplb.core.eplb_worker import EplbWorker

    return EplbWorker({}, policy_type, enable_d2d=True, tp_size=tp_size)


def loader_layer_id(adaptor, layer_id: int) -> int:
    return layer_id  # the registry's own index: no dense-layer offset since #10486
