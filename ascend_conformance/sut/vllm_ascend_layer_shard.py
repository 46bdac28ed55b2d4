"""vllm-ascend's layer sharding (``vllm_ascend/ops/layer_shard_linear.py``) as a system under test.

The release lines 0.13.0 .. 0.23.0.post1 share one series protocol (shim
``shims/vllm_ascend_layer_shard/v0_13.py`` declares what is driven); vllm-ascend main removed layer sharding,
so the feature ``layer_sharding`` is "not in" it. What this drives, in every rank of a torch.distributed
world (docs/shared_weight.md describes the protocol and the reference):

1. the ``shard_weight`` group vllm-ascend builds for itself: vLLM's and vllm-ascend's parallel state with
   ``layer_sharding`` on (:func:`shard_world`, through :mod:`ascend_conformance.sut.vllm_ascend_groups`),
   read back with ``get_shard_weight_group()``;
2. a stack of vLLM ``ReplicatedLinear`` layers with the prefixes a model gives them
   (``model.layers.<i>.self_attn.o_proj``; the release takes the layer index from the prefix), built under
   the current ``VllmConfig``;
3. the release's series protocol, as ``Flashcomm2OShardManager`` / the SFA attention drive it:
   ``register_layer_to_shard_weight_series(name, group, layer, prefetch_step=k)`` for every layer, then
   the weights through each parameter's ``weight_loader`` (the release made it a no-op where the rank does
   not own the layer), once ``post_process_after_loading_for_shard_weight_series(any layer)`` (broadcasts
   every weight from its owner, keeps the owned ones, disposes the others, builds the k + 1 windows), then
   per pass and layer ``reach_layer_for_shard_weight_series(layer)`` (starts the asynchronous broadcast of
   a later layer) and the layer's forward (its wrapper waits for its own broadcast first).

What is read back (:func:`reach`): the layer whose broadcast a ``reach_layer`` started, from the window it
filled (``ShardWindowMetadata.data_layer_idx``), so the suites measure the prefetch distance from the
release's own rule, never from a copy of it. The release's window bookkeeping asserts (``assert
window.data_layer_idx ...``) when a window is refilled before its layer ran: :class:`WindowAssert` carries
those; every other error propagates as it is (a suite records it per configuration, :func:`crash_line`).

Every function takes ``module``: the release's module (default), or a copy of its file loaded as a module
of its own (:func:`copy_module`), into which a self-test plants a breakage (:func:`planted_source`).
The releases have no call that forgets a series: :func:`forget_series` removes this adapter's series from
the module's ``_series_dict`` / ``_layer_external_dict`` (what a new model load would start from). Nothing
here knows pytest.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterator

import torch

from ascend_conformance.errors import ConfigError, one_line
from ascend_conformance.sut import VLLM_ASCEND, bringup

SUT = VLLM_ASCEND
ADAPTER = "vllm_ascend_layer_shard"
FEATURE = "layer_sharding"  # the shims' feature: the series protocol of layer_shard_linear
MODULE = "vllm_ascend.ops.layer_shard_linear"


class WindowAssert(RuntimeError):
    """An ``assert`` of the release's window ring fired (``reach_layer`` / ``wait_weight``): the schedule
    refilled a window before its layer ran, or a layer found no window holding it."""


def label() -> str:
    """``vllm_ascend 0.18.0``: the installed release, as results name it."""
    return bringup.label(SUT)


def release_module():
    from vllm_ascend.ops import layer_shard_linear

    return layer_shard_linear


def copy_module(path: str):
    """The file ``path`` (a copy of the release's ``layer_shard_linear.py``) loaded as a module of its own,
    beside the release's: its own registry, the release's imports. Loaded once per path and process."""
    name = "ascend_conformance_planted_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _m(module):
    return release_module() if module is None else module


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
    with the prefixes a model gives its o_proj layers, on the rank's device."""
    from vllm.model_executor.layers.linear import ReplicatedLinear

    with bringup.rank_device():  # as vLLM's model loader builds a model: parameters on the rank's device
        return {i: ReplicatedLinear(hidden, hidden, bias=False, params_dtype=dtype,
                                    prefix=f"model.layers.{i}.self_attn.o_proj")
                for i in range(start, start + count)}


def register(series_name: str, group, layers: dict, prefetch_step: int, module=None) -> None:
    """Every layer into the release's series (before the weights are loaded, as a model does: a rank that
    does not own a layer gets its weight disposed and its weight loader replaced by a no-op)."""
    release = _m(module)
    for i in sorted(layers):
        release.register_layer_to_shard_weight_series(series_name, group, layers[i], prefetch_step=prefetch_step)


def load(layers: dict, weights: dict) -> None:
    """Each layer's weight through its parameter's ``weight_loader``, as the model loader calls it."""
    with torch.no_grad():
        for i, layer in layers.items():
            layer.weight.weight_loader(layer.weight, weights[i])


def finish(layers: dict, module=None) -> None:
    """The release's post-load set-up of the series (collective over its group): broadcasts, disposal of
    what this rank does not own, the k + 1 windows."""
    _m(module).post_process_after_loading_for_shard_weight_series(layers[min(layers)])


def _external(layer, module):
    return _m(module)._layer_external_dict[id(layer)]


@contextlib.contextmanager
def _window_asserts(what: str) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        if not frame.filename.endswith("layer_shard_linear.py"):
            raise
        raise WindowAssert(f"{what}: {frame.name} line {frame.lineno}: {frame.line}") from None


def reach(layer, module=None) -> int:
    """``reach_layer_for_shard_weight_series(layer)``; returns the layer index whose broadcast it started."""
    release, ext = _m(module), _external(layer, module)
    window = ext.series.window_offset  # the window this call fills
    with _window_asserts(f"reach_layer({ext.layer_idx})"):
        release.reach_layer_for_shard_weight_series(layer)
    return int(ext.series.shard_windows[window].data_layer_idx)


def forward(layer, x: torch.Tensor, module=None) -> torch.Tensor:
    """The layer's forward as the model calls it (the release's wrapper waits for its weight first)."""
    with _window_asserts(f"forward of layer {_external(layer, module).layer_idx}"):
        return layer(x)[0]


def drain(layers: dict, module=None) -> None:
    """Wait for every broadcast still in flight (the ring's last prefetch)."""
    for window in _external(layers[min(layers)], module).series.shard_windows:
        if window.work is not None:
            window.work.wait()
            window.work = None


def forget_series(series_name: str, module=None) -> None:
    release = _m(module)
    series = release._series_dict.pop(series_name, None)
    if series is None:
        return
    for key in [key for key, ext in release._layer_external_dict.items() if ext.series is series]:
        del release._layer_external_dict[key]


def crash_line(exc: BaseException) -> str:
    """One line for an error a configuration raised: its type and message, and where it was raised (the
    innermost frame, its path from the package root), so a report tells the release's crash from the
    suite's own: ``ValueError: ... (vllm_ascend/ops/layer_shard_linear.py:140 reach_layer)``."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        frame = frames[-1]
        parts = frame.filename.replace(os.sep, "/").split("/")
        for root in ("vllm_ascend", "vllm", "torch", "ascend_conformance", "suites"):
            if root in parts:
                parts = parts[len(parts) - 1 - parts[::-1].index(root):]
                break
        else:
            parts = parts[-1:]
        where = f" ({'/'.join(parts)}:{frame.lineno} {frame.name})"
    return one_line(exc, with_type=True) + where


@contextlib.contextmanager
def crash_recorded(outcome: dict) -> Iterator[None]:
    """Record an error the block raises as ``outcome["crash"]`` (:func:`crash_line`) instead of raising it:
    one configuration of a world run that crashes fails its own tests, not those of the others."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any error of a configuration, reported as one line
        outcome["crash"] = crash_line(exc)


# --------------------------------------------------------------------------------------------------
# planted breakages: a copy of the release's file with one step broken, found in its syntax tree
# --------------------------------------------------------------------------------------------------

class PlantError(ConfigError):
    """The release's file does not have the step a breakage changes (the line moved it): bring it up."""


def _is_path(node, dotted: str) -> bool:
    """``node`` is the attribute chain ``dotted`` (``self.group.ranks``)."""
    names = dotted.split(".")
    while isinstance(node, ast.Attribute) and names:
        if node.attr != names.pop():
            return False
        node = node.value
    return isinstance(node, ast.Name) and names == [node.id]


def _series_method(tree: ast.Module, method: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "SeriesMetadata":
            for inner in node.body:
                if isinstance(inner, ast.FunctionDef) and inner.name == method:
                    return inner
    raise PlantError(f"{MODULE}: no SeriesMetadata.{method}")


def _broadcast_sources(function: ast.FunctionDef) -> list:
    """The ``src=self.group.ranks[EXPR]`` arguments of the ``dist.broadcast`` calls in ``function``."""
    return [keyword.value for node in ast.walk(function)
            if isinstance(node, ast.Call) and _is_path(node.func, "dist.broadcast")
            for keyword in node.keywords
            if keyword.arg == "src" and isinstance(keyword.value, ast.Subscript)
            and _is_path(keyword.value.value, "self.group.ranks")]


def _source_as_group_rank(text: str, tree: ast.Module) -> list:
    edits = []
    for method in ("post_process_after_loading", "reach_layer"):
        sources = _broadcast_sources(_series_method(tree, method))
        if not sources:
            raise PlantError(f"{MODULE}: SeriesMetadata.{method} has no dist.broadcast(src=self.group.ranks[...])")
        edits += [(node, ast.get_source_segment(text, node.slice)) for node in sources]
    return edits


def _owner_by_global_rank(text: str, tree: ast.Module) -> list:
    nodes = [node for node in ast.walk(_series_method(tree, "is_source"))
             if _is_path(node, "self.group.rank_in_group")]
    if not nodes:
        raise PlantError(f"{MODULE}: SeriesMetadata.is_source does not read self.group.rank_in_group")
    return [(node, "self.group.rank") for node in nodes]


# name -> (what it breaks, the edits: [(node, replacement text)])
BREAKAGES: dict[str, tuple[str, Callable]] = {
    "broadcast-source-is-group-rank": (
        "every broadcast of the series (set-up and reach_layer) sends from the owner's rank in the group taken "
        "as a global rank (src=i % n instead of group.ranks[i % n]): the same on a group over ranks 0..n-1, "
        "another rank on any other group (every PP stage's group but the first's)", _source_as_group_rank),
    "owner-is-global-rank": (
        "a rank owns layer i when i % n equals its global rank instead of its rank in the group (is_source "
        "reads group.rank for group.rank_in_group): the same on a group over ranks 0..n-1; on another group a "
        "layer's broadcast source (group.ranks[i % n]) is not a rank that kept its weight", _owner_by_global_rank),
}


def planted_source(text: str, breakage: str) -> str:
    """``text`` (the release's ``layer_shard_linear.py``) with ``breakage`` planted (:data:`BREAKAGES`),
    located in its syntax tree so any line's formatting takes it. :class:`PlantError` when the step is
    not there."""
    if breakage not in BREAKAGES:
        raise ConfigError(f"unknown breakage {breakage!r} (known: {', '.join(BREAKAGES)})")
    tree = ast.parse(text)
    edits = BREAKAGES[breakage][1](text, tree)
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode()))
    data = text.encode()
    for node, replacement in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        data = data[:begin] + replacement.encode() + data[end:]
    planted = data.decode()
    ast.parse(planted)
    return planted


def plant_copy(breakage: str, directory: str) -> str:
    """A copy of the installed release's ``layer_shard_linear.py`` (found by its path, never imported here)
    with ``breakage`` planted, written under ``directory``; returns its path."""
    from ascend_conformance.sut import probe

    source = probe.source_file(MODULE)
    if source is None:
        raise ConfigError(f"{label()} has no {MODULE}")
    with open(source, encoding="utf-8") as f:
        text = f.read()
    target = os.path.join(directory, breakage)
    os.makedirs(target, exist_ok=True)
    path = os.path.join(target, "layer_shard_linear.py")  # the name the window-assert check looks for
    with open(path, "w", encoding="utf-8") as f:
        f.write(planted_source(text, breakage))
    return path


__all__ = ["SUT", "ADAPTER", "FEATURE", "MODULE", "WindowAssert", "PlantError", "BREAKAGES", "label",
           "release_module", "copy_module", "shard_world", "build_layers", "register", "load", "finish",
           "reach", "forward", "drain", "forget_series", "crash_line", "crash_recorded", "planted_source", "plant_copy"]
