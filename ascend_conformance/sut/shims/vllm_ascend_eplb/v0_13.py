"""vllm-ascend 0.13: policies are built with a ``DynamicConfig`` and the transfer path walks the model.

* ``PolicyFactory.generate_policy(policy_type, config)``: types 0 ``RandomLoadBalance``, 1 ``DynamicEplb``,
  2 ``DynamicEplbV2``, 3 ``FlashLB`` (renamed ``DefaultEplb`` / ``SwiftBalanceEplb`` in 0.18), each
  constructed with the config. The release's own EPLB process gets its policy from ``EplbWorker.__init__``
  as ``PolicyFactory.generate_policy(policy_type, DynamicConfig())``: a default-constructed
  ``DynamicConfig`` (``vllm_ascend/eplb/core/policy/policy_abstract.py``), which is what this shim passes.
* FlashLB takes the per-slot load as ``[L, G, S]``: 0.13's updator gathers it without the observation-window
  axis of later lines.
* ``generate_global_placement(n_expert, ep_size, n_redundant)``.
* Transfer: ``VllmEplbAdaptor(model)`` walks ``model.model.layers[i].mlp.experts`` for every hidden layer
  and reads the w8a8_dynamic weight lists (``w13_weight_list``, ``w2_weight_list`` and their scale lists,
  the offsets from ``named_parameters``) whatever the quantisation: the only expert layout its EPLB moves
  (``supports_eplb`` is set by ``w8a8_dynamic`` alone), so that is the layout the suite gives it. The model's
  EPLB methods come from the release's own ``vllm_ascend.eplb.utils.model_register``. ``EplbWorker`` and
  the adaptor take ``torch.distributed.get_rank()`` as the EP rank and the D2D loader posts on the default
  group with EP ranks as peers: there is no ``dynamic_eplb`` group in 0.13.
"""
from __future__ import annotations

from ascend_conformance.sut.lines import Feature, Need

POLICY = "vllm_ascend.eplb.core.policy"
FACTORY = f"{POLICY}.policy_factory"
UTILS = "vllm_ascend.eplb.core.eplb_utils"
WORKER = "vllm_ascend.eplb.core.eplb_worker"
LOADER = "vllm_ascend.eplb.core.eplb_device_transfer_loader"
ADAPTOR = "vllm_ascend.eplb.adaptor.vllm_adaptor"
MODEL_REGISTER = "vllm_ascend.eplb.utils"

# suite's name of an eplb_policy_type -> (module, class) the factory maps it to on this line
POLICY_CLASSES = {"random": ("policy_random", "RandomLoadBalance"), "default": ("policy_dynamic_ep", "DynamicEplb"),
                  "swift_balancer": ("policy_dynamic_ep_v2", "DynamicEplbV2"), "flashlb": ("policy_flashlb", "FlashLB")}
FACTORY_CALL = Need(FACTORY, "PolicyFactory.generate_policy", ("policy_type", "config"))
# (role, attribute) of the per-expert tensors the adaptor moves. The offsets are read through
# named_parameters and indexed as elements of expert 0's offset row (param[0].data[local expert]), zero in
# w8a8_dynamic: held, not judged; that indexing needs 2I and H above the local experts, as in any real model.
WEIGHT_ROLES = (("w13", "w13_weight_list"), ("w2", "w2_weight_list"), ("w13_scale", "w13_weight_scale_fp32_list"),
                ("w2_scale", "w2_weight_scale_list"), ("w2_scale_fp32", "w2_weight_scale_fp32_list"))
WEIGHT_LAYOUT = "w8a8_dynamic lists"

FEATURES = {
    **{f"policy_{name}": Feature(marker=(Need(f"{POLICY}.{module}", cls),),
                                 uses=(FACTORY_CALL, Need(f"{POLICY}.{module}", cls, ("config",))))
       for name, (module, cls) in POLICY_CLASSES.items()},
    "factory": Feature(marker=(Need(FACTORY, "PolicyFactory.generate_policy"),),
                       uses=(FACTORY_CALL, Need(f"{POLICY}.policy_abstract", "DynamicConfig"))),
    "initial_placement": Feature(marker=(Need(UTILS, "generate_global_placement"),),
                                 uses=(Need(UTILS, "generate_global_placement", ("n_expert", "ep_size", "n_redundant")),)),
    "weight_transfer": Feature(
        marker=(Need(LOADER, "D2DExpertWeightLoader"), Need(ADAPTOR, "VllmEplbAdaptor")),
        uses=(Need(ADAPTOR, "VllmEplbAdaptor", ("model",)), Need(MODEL_REGISTER, "model_register", ("model", "model_config")),
              Need(WORKER, "EplbWorker", ("shared_dict", "policy_type", "enable_d2d")),
              Need(WORKER, "EplbWorker.compose_expert_update_info_greedy"), Need(WORKER, "EplbWorker.pack_update_info"),
              Need(LOADER, "D2DExpertWeightLoader.generate_expert_d2d_transfer_task"),
              Need(LOADER, "D2DExpertWeightLoader.asyn_expert_weight_transfer"),
              Need(LOADER, "D2DExpertWeightLoader.update_expert_map_and_weight"))),
}


def dynamic_config():
    """What ``EplbWorker.__init__`` gives the factory on this line."""
    from vllm_ascend.eplb.core.policy.policy_abstract import DynamicConfig

    return DynamicConfig()


def generate_policy(policy_type: int):
    from vllm_ascend.eplb.core.policy.policy_factory import PolicyFactory

    return PolicyFactory.generate_policy(policy_type, dynamic_config())


def construct(policy_class):
    """A fresh policy of ``policy_class``, constructed as the factory constructs it."""
    return policy_class(dynamic_config())


_seed_numba = None


def seed_policy_rng(seed: int) -> None:
    """Seed the generator FlashLB's ``jsq_placement`` fills empty slots from: numba's own (a jitted function
    draws from it, not from numpy's global one), seeded from inside a jitted function."""
    global _seed_numba
    if _seed_numba is None:
        import numba
        import numpy as np

        @numba.njit
        def seed_numba(value):
            np.random.seed(value)

        _seed_numba = seed_numba
    _seed_numba(seed)


def flashlb_workload(workload):
    """The per-slot load ``[L, G, S]`` as this line's updator hands it to FlashLB: unchanged."""
    return workload


def generate_global_placement(num_experts: int, num_ranks: int, num_redundant: int):
    from vllm_ascend.eplb.core.eplb_utils import generate_global_placement as generate

    return generate(num_experts, num_ranks, num_redundant)


def quantized() -> bool:
    """Whether the model the transfer path sees carries a quantisation config (the w8a8_dynamic lists)."""
    return True


def attach_weights(layer, weights: dict, num_slots: int) -> None:
    """Give a stand-in MoE layer this line's weight layout: per-expert lists that share storage with
    ``weights[role]`` ``[S, ...]`` (so what the release writes into them is read back from there)."""
    import torch

    for role, name in WEIGHT_ROLES:
        setattr(layer, name, list(weights[role].unbind(0)))
    # as w8a8_dynamic's process_weights_after_loading leaves them: [S, 2I] and [S, H]
    w13, w2 = weights["w13"], weights["w2"]
    layer.w13_weight_offset = torch.nn.Parameter(torch.zeros(num_slots, w13.shape[1], device=w13.device),
                                                 requires_grad=False)
    layer.w2_weight_offset = torch.nn.Parameter(torch.zeros(num_slots, w2.shape[1], device=w2.device),
                                                requires_grad=False)


def make_adaptor(model, model_config, stage_layers: list):
    """``VllmEplbAdaptor`` as the model runner makes it: ``model_register`` first (the release's own)."""
    from vllm_ascend.eplb.adaptor.vllm_adaptor import VllmEplbAdaptor
    from vllm_ascend.eplb.utils import model_register

    model_register(model, model_config)
    return VllmEplbAdaptor(model=model)


def make_worker(policy_type: int, tp_size: int):
    from vllm_ascend.eplb.core.eplb_worker import EplbWorker

    return EplbWorker({}, policy_type, enable_d2d=True)


def make_loader(adaptor):
    """The D2D loader as the model runner makes it and the updator's ``set_adaptor`` connects it."""
    from vllm_ascend.eplb.core.eplb_device_transfer_loader import D2DExpertWeightLoader

    loader = D2DExpertWeightLoader()
    loader.set_adator(adaptor)
    return loader


def loader_layer_id(adaptor, layer_id: int) -> int:
    """The layer id the updator's ``forward_before`` gives the loader for the worker's layer ``layer_id``."""
    return layer_id + adaptor.num_dense_layers
