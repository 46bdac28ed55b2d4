"""The MoE adapter's shims (``ascend_conformance/sut/vllm_ascend_moe.py``): per release line, how the
release's own MoE layer is built and driven (its class and constructor arguments as the model passes
them, where it keeps its expert map, where the forward context keeps the comm method, what the model
runner sets once per process, what the model's MoE block does after the layer)."""
