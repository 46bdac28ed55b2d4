"""vllm-ascend's layer sharding (``vllm_ascend/ops/layer_shard_linear.py``) as a system under test.

Written against vllm-ascend 0.23.0.post1 on vLLM 0.23.0 (:data:`RELEASE`). What it drives, in every rank
of a torch.distributed world (docs/shared_weight.md describes the protocol and the reference):

1. the ``shard_weight`` group vllm-ascend builds for itself: vLLM's and vllm-ascend's parallel state with
   ``layer_sharding`` on (:func:`shard_world`, through :mod:`ascend_conformance.sut.vllm_ascend_groups`),
   read back with ``get_shard_weight_group()``;
2. a stack of vLLM ``ReplicatedLinear`` layers with the prefixes a model gives them
   (``model.layers.<i>.self_attn.o_proj``; the release takes the layer index from the prefix), built under
   the current ``VllmConfig``;
3. the release's series protocol, as ``Flashcomm2OShardManager`` / the SFA attention drive it:
   ``register_layer_to_shard_weight_series(name, group, layer, prefetch_step=k)`` for every layer, then
   the weights through each parameter's ``weight_loader`` (the release made it a no-op where the rank does
   not own the layer), once
   ``post_process_after_loading_for_shard_weight_series(any layer)`` (broadcasts every weight from its
   owner, keeps the owned ones, disposes the others, builds the k + 1 windows), then per pass and layer
   ``reach_layer_for_shard_weight_series(layer)`` (starts the asynchronous broadcast of the layer k ahead)
   and the layer's forward (its wrapper waits for its own broadcast first).

What is read back (:func:`reach`): the layer whose broadcast a ``reach_layer`` started, from the window it
filled (the release keeps it in ``ShardWindowMetadata.data_layer_idx``), so the suites can measure the
prefetch distance. 0.23.0.post1 computes the layer to prefetch as ``(i + k) % count + start``
(``SeriesMetadata.reach_layer``); its window bookkeeping asserts (``assert window.data_layer_idx ...``)
when a window is refilled before its layer ran: :class:`WindowAssert` carries those, every other error
of the release propagates as it is.

0.23.0.post1 has no call that forgets a series: :func:`forget_series` removes this adapter's series from the
module's ``_series_dict`` / ``_layer_external_dict`` (what a new model load would start from). Nothing here
knows pytest.
"""
from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import VLLM_ASCEND, bringup

RELEASE = "0.23.0.post1"  # the release this adapter was written against
SUT = VLLM_ASCEND
MODULE = "vllm_ascend.ops.layer_shard_linear"


class WindowAssert(RuntimeError):
    """An ``assert`` of the release's window ring fired (``reach_layer`` / ``wait_weight``): the schedule
    refilled a window before its layer ran, or a layer found no window holding it."""


def label() -> str:
    """``vllm_ascend 0.23.0.post1``: the installed release, as results name it."""
    return bringup.label(SUT)


@contextlib.contextmanager
def shard_world(pp: int = 1) -> Iterator[dict]:
    """In every rank of a world of W ranks: vLLM's and vllm-ascend's groups for TP 1, PP ``pp``,
    DP = W / pp with layer sharding on; yields ``{kind: GroupCoordinator}`` (``shard_weight`` is the
    release's group for the series; with TP 1 the ``dp`` group is exactly this rank's PP stage)."""
    import torch.distributed as dist

    from ascend_conformance.sut import vllm_ascend_groups
    from ascend_conformance.topology import ParallelConfig

    world_size = dist.get_world_size()
    if world_size % pp:
        raise ConfigError(f"shard_world: world of {world_size} ranks cannot hold PP {pp}")
    config = ParallelConfig(world_size=world_size, tp=1, pp=pp, dp=world_size // pp, layer_sharding=True)
    with vllm_ascend_groups.live_groups(config) as groups:
        yield groups


def build_layers(start: int, count: int, hidden: int, dtype: torch.dtype) -> dict:
    """``{i: ReplicatedLinear}`` for layers ``[start, start + count)``, built under the current VllmConfig
    with the prefixes a model gives its o_proj layers."""
    from vllm.model_executor.layers.linear import ReplicatedLinear

    return {i: ReplicatedLinear(hidden, hidden, bias=False, params_dtype=dtype,
                                prefix=f"model.layers.{i}.self_attn.o_proj")
            for i in range(start, start + count)}


def register(series_name: str, group, layers: dict, prefetch_step: int) -> None:
    """Every layer into the release's series (before the weights are loaded, as a model does: a rank that
    does not own a layer gets its weight disposed and its weight loader replaced by a no-op)."""
    from vllm_ascend.ops import layer_shard_linear as release

    for i in sorted(layers):
        release.register_layer_to_shard_weight_series(series_name, group, layers[i], prefetch_step=prefetch_step)


def load(layers: dict, weights: dict) -> None:
    """Each layer's weight through its parameter's ``weight_loader``, as the model loader calls it."""
    with torch.no_grad():
        for i, layer in layers.items():
            layer.weight.weight_loader(layer.weight, weights[i])


def finish(layers: dict) -> None:
    """The release's post-load set-up of the series (collective over its group): broadcasts, disposal of
    what this rank does not own, the k + 1 windows."""
    from vllm_ascend.ops import layer_shard_linear as release

    release.post_process_after_loading_for_shard_weight_series(layers[min(layers)])


def _series(layer):
    from vllm_ascend.ops import layer_shard_linear as release

    return release._layer_external_dict[id(layer)].series


@contextlib.contextmanager
def _window_asserts(what: str) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        if not frame.filename.endswith("layer_shard_linear.py"):
            raise
        raise WindowAssert(f"{what}: {frame.name} line {frame.lineno}: {frame.line}") from None


def reach(layer) -> int:
    """``reach_layer_for_shard_weight_series(layer)``; returns the layer index whose broadcast it started."""
    from vllm_ascend.ops import layer_shard_linear as release

    series = _series(layer)
    window = series.window_offset  # the window this call fills
    with _window_asserts(f"reach_layer({release._layer_external_dict[id(layer)].layer_idx})"):
        release.reach_layer_for_shard_weight_series(layer)
    return int(series.shard_windows[window].data_layer_idx)


def forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's forward as the model calls it (the release's wrapper waits for its weight first)."""
    from vllm_ascend.ops import layer_shard_linear as release

    with _window_asserts(f"forward of layer {release._layer_external_dict[id(layer)].layer_idx}"):
        return layer(x)[0]


def drain(layers: dict) -> None:
    """Wait for every broadcast still in flight (the ring's last prefetch)."""
    for window in _series(layers[min(layers)]).shard_windows:
        if window.work is not None:
            window.work.wait()
            window.work = None


def forget_series(series_name: str) -> None:
    from vllm_ascend.ops import layer_shard_linear as release

    series = release._series_dict.pop(series_name, None)
    if series is None:
        return
    for key in [key for key, ext in release._layer_external_dict.items() if ext.series is series]:
        del release._layer_external_dict[key]


__all__ = ["RELEASE", "SUT", "WindowAssert", "label", "shard_world", "build_layers", "register", "load", "finish",
           "reach", "forward", "drain", "forget_series"]
