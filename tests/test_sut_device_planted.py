"""A CPU tensor planted in a SUT adapter is caught on the emulated npu, as on an NPU host.

The adapters build what the release computes on, on the rank's device (issue 17; docs/emulation.md). This
plants the bug class the emulated device exists to catch in a *copy* of one adapter
(``ascend_conformance/sut/vllm_ascend_layer_shard.py``, loaded as a module of its own in the ranks; the
installed file is never touched): its ``build_layers`` builds the release's linear layers under
``torch.device("cpu")`` instead of the rank's device. The release's own layer-sharding series then
broadcasts those weights over its HCCL group, which refuses a host tensor on every rank, naming the device.
The unplanted copy runs the same series on ``npu:<rank>``; on the cpu platform (gloo) the planted copy passes
unnoticed.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from ascend_conformance.sut import VLLM_ASCEND, lines, stack
from ascend_conformance.sut import vllm_ascend_layer_shard as layer_shard

# What the adapter says where it builds the layers, and the plant: the same block on the host.
ON_THE_RANKS_DEVICE = "with bringup.rank_device():  # as vLLM's model loader builds a model"
PLANTED = 'with torch.device("cpu"):  # planted by tests/test_sut_device_planted.py'
HIDDEN = 16


def planted_copy(directory: str, plant: bool) -> str:
    """A copy of the layer-shard adapter's file under ``directory``, with the CPU device planted or not."""
    with open(layer_shard.__file__, encoding="utf-8") as handle:
        source = handle.read()
    assert source.count(ON_THE_RANKS_DEVICE) == 1, (
        f"{layer_shard.__file__} no longer builds its layers under {ON_THE_RANKS_DEVICE!r}: move the plant")
    path = os.path.join(directory, f"layer_shard_{'planted' if plant else 'copy'}.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(source.replace(ON_THE_RANKS_DEVICE, PLANTED) if plant else source)
    return path


def series_with_adapter_copy(path: str) -> dict:
    """In every rank: the adapter copy at ``path`` drives the release's series of two layers over its
    ``shard_weight`` group (register, load, the post-load broadcasts, one reach and forward). Returns the
    weights' devices and the first output, or the error the ranks got."""
    from ascend_conformance.harness import rank_context

    spec = importlib.util.spec_from_file_location(f"planted_{os.path.basename(path)[:-3]}", path)
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)
    with adapter.shard_world(pp=1) as groups:
        group, name = groups["shard_weight"], f"planted-check-{os.path.basename(path)}"
        try:
            layers = adapter.build_layers(0, 2, HIDDEN, torch.float32)
            devices = sorted({str(layer.weight.device) for layer in layers.values()})
            adapter.register(name, group, layers, 0)
            adapter.load(layers, {i: torch.full((HIDDEN, HIDDEN), float(i + 1)) for i in layers})
            adapter.finish(layers)
            adapter.reach(layers[0])
            x = torch.ones(1, HIDDEN, device=rank_context().device)
            out = adapter.forward(layers[0], x)
            adapter.drain(layers)
            return {"devices": devices, "out": out}
        except RuntimeError as exc:
            return {"error": str(exc).splitlines()[0]}
        finally:
            adapter.forget_series(name)


def _need_layer_sharding() -> None:
    reason = stack.unavailable_reason(VLLM_ASCEND)
    if reason:
        pytest.skip(reason)
    try:
        lines.check_feature(layer_shard.ADAPTER, VLLM_ASCEND, layer_shard.FEATURE)
    except lines.NotInRelease as exc:
        pytest.skip(str(exc))


def test_a_cpu_device_planted_in_an_adapter_copy_is_caught(emulated_world, world, tmp_path):
    _need_layer_sharding()
    control, planted = planted_copy(str(tmp_path), False), planted_copy(str(tmp_path), True)
    emulated = emulated_world(2, pool="vllm_ascend-planted-device")
    for rank, outcome in enumerate(emulated.run(series_with_adapter_copy, control)):
        assert "error" not in outcome, outcome
        assert outcome["devices"] == [f"npu:{rank}"], outcome
        assert torch.equal(outcome["out"], torch.full((1, HIDDEN), float(HIDDEN))), outcome["out"]
    for outcome in emulated.run(series_with_adapter_copy, planted):
        assert outcome.get("error", "").startswith("hccl (emulated) broadcast: tensors must be on an npu device, "
                                                   "got one on cpu"), outcome
    # the same plant on gloo: nothing notices
    for outcome in world(2, pool="vllm_ascend-planted-device").run(series_with_adapter_copy, planted):
        assert outcome["devices"] == ["cpu"] and "error" not in outcome, outcome
