"""vllm-ascend 0.18: policies still take a ``DynamicConfig``; the transfer path still walks the model, now
reading the unquantised ``w13_weight`` / ``w2_weight`` too, and posts over the ``dynamic_eplb`` group.

* ``PolicyFactory.generate_policy(policy_type, config)``: 0 ``RandomLoadBalance``, 1 ``DefaultEplb``, 2
  ``SwiftBalanceEplb``, 3 ``FlashLB``; ``EplbWorker.__init__`` passes a default-constructed ``DynamicConfig``
  (``policy_abstract.py``), as this shim does. FlashLB takes ``[T, L, G, S]`` (the updator permutes the
  gathered load so); its thresholds come from ``DynamicConfig.ep_worldsize`` (64 by default).
* ``generate_global_placement(n_expert, ep_size, n_redundant)``.
* Transfer: ``VllmEplbAdaptor(model)`` walks ``model.model.layers[i].mlp.experts`` of every hidden layer
  (``model_register(model)`` adds the model's EPLB methods); an unquantised model's experts are
  ``w13_weight`` / ``w2_weight``. ``EplbWorker`` and the adaptor take ``torch.distributed.get_rank()`` as
  the EP rank; the D2D loader posts on ``get_dynamic_eplb_group().device_group`` with the EP rank as the
  peer.
"""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature, Need
from ascend_conformance.sut.shims.vllm_ascend_eplb import v0_13

POLICY, FACTORY, UTILS, WORKER, LOADER, ADAPTOR = v0_13.POLICY, v0_13.FACTORY, v0_13.UTILS, v0_13.WORKER, v0_13.LOADER, v0_13.ADAPTOR
MODEL_REGISTER = v0_13.MODEL_REGISTER
STATE = "vllm_ascend.distributed.parallel_state"

POLICY_CLASSES = {"random": ("policy_random", "RandomLoadBalance"), "default": ("policy_default_eplb", "DefaultEplb"),
                  "swift_balancer": ("policy_swift_balancer", "SwiftBalanceEplb"), "flashlb": ("policy_flashlb", "FlashLB")}
FACTORY_CALL = v0_13.FACTORY_CALL
WEIGHT_ROLES = (("w13", "w13_weight"), ("w2", "w2_weight"))
WEIGHT_LAYOUT = "unquantised w13_weight / w2_weight"

FEATURES = {
    **{f"policy_{name}": Feature(marker=(Need(f"{POLICY}.{module}", cls),),
                                 uses=(FACTORY_CALL, Need(f"{POLICY}.{module}", cls, ("config",))))
       for name, (module, cls) in POLICY_CLASSES.items()},
    "factory": v0_13.FEATURES["factory"],
    "initial_placement": v0_13.FEATURES["initial_placement"],
    "weight_transfer": Feature(
        marker=(Need(LOADER, "D2DExpertWeightLoader"), Need(ADAPTOR, "VllmEplbAdaptor")),
        uses=(Need(ADAPTOR, "VllmEplbAdaptor", ("model",)), Need(MODEL_REGISTER, "model_register", ("model",)),
              Need(STATE, "get_dynamic_eplb_group"),
              Need(WORKER, "EplbWorker", ("shared_dict", "policy_type", "enable_d2d")),
              Need(WORKER, "EplbWorker.compose_expert_update_info_greedy"), Need(WORKER, "EplbWorker.pack_update_info"),
              Need(LOADER, "D2DExpertWeightLoader.generate_expert_d2d_transfer_task"),
              Need(LOADER, "D2DExpertWeightLoader.asyn_expert_weight_transfer"),
              Need(LOADER, "D2DExpertWeightLoader.update_expert_map_and_weight"))),
}

dynamic_config = v0_13.dynamic_config
generate_policy = v0_13.generate_policy
construct = v0_13.construct
generate_global_placement = v0_13.generate_global_placement
make_worker = v0_13.make_worker
loader_layer_id = v0_13.loader_layer_id


def seed_policy_rng(seed: int) -> None:
    """Nothing to seed: no policy of this line draws random numbers (0.13's FlashLB did)."""


def flashlb_workload(workload):
    """``[T, L, G, S]`` with one observation window, as the updator permutes the gathered load."""
    return workload.unsqueeze(0)


def quantized() -> bool:
    return False


def attach_weights(layer, weights: dict, num_slots: int) -> None:
    """Unquantised experts: ``w13_weight`` / ``w2_weight`` ``[S, ...]`` parameters (``weights``' storage)."""
    import torch

    for role, name in WEIGHT_ROLES:
        setattr(layer, name, torch.nn.Parameter(weights[role], requires_grad=False))


def make_adaptor(model, model_config, stage_layers: list):
    from vllm_ascend.eplb.adaptor.vllm_adaptor import VllmEplbAdaptor
    from vllm_ascend.eplb.utils import model_register

    model_register(model)
    return VllmEplbAdaptor(model=model)


def make_loader(adaptor):
    loader = v0_13.make_loader(adaptor)
    loader.num_layers = adaptor.num_dense_layers + adaptor.num_moe_layers  # EplbUpdator.set_adaptor
    return loader
