"""vllm-ascend 0.13 and later: what the layer-sharding adapter drives of the release.

``vllm_ascend/ops/layer_shard_linear.py`` has the same series protocol from 0.13.0 to 0.23.0.post1 (the
lines differ in formatting and one log call), so this one module serves every line up to main, which
removed layer sharding (#11953): there the marker is missing and every test is "not in <release>:
layer_sharding (...)".
"""
from ascend_conformance.sut.lines import Feature
from ascend_conformance.sut.probe import Need

MODULE = "vllm_ascend.ops.layer_shard_linear"

FEATURES = {
    "layer_sharding": Feature(
        marker=(Need(MODULE, "register_layer_to_shard_weight_series"),),
        uses=(
            Need(MODULE, "register_layer_to_shard_weight_series", ("series_name", "group", "layer", "prefetch_step")),
            Need(MODULE, "post_process_after_loading_for_shard_weight_series", ("layer",)),
            Need(MODULE, "reach_layer_for_shard_weight_series", ("layer",)),
            # read back: the window a reach_layer fills, the series of a layer, the registry to forget
            Need(MODULE, "SeriesMetadata.reach_layer", ("layer_idx",)),
            Need(MODULE, "SeriesMetadata.is_source", ("layer_idx",)),
            Need(MODULE, "ShardWindowMetadata"),
            Need(MODULE, "_series_dict"),
            Need(MODULE, "_layer_external_dict"),
            Need("vllm_ascend.distributed.parallel_state", "get_shard_weight_group"),
            Need("vllm.model_executor.layers.linear", "ReplicatedLinear",
                 ("input_size", "output_size", "bias", "params_dtype", "prefix")),
            Need("vllm.model_executor.models.utils", "extract_layer_index", ("layer_name",)),
        ),
    ),
}
