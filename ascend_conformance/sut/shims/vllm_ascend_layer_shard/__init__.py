"""Shims of the layer-sharding adapter (:mod:`ascend_conformance.sut.vllm_ascend_layer_shard`), one module per
release line where something it drives moved."""
