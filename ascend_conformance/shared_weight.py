"""Shared-weight series (layer sharding), docs/shared_weight.md.

A *series* is a run of isomorphic layers ``[start, end)`` of one PP stage (e.g. every ``o_proj`` of the
stage) registered over a group of ``n`` ranks. After the weights are loaded, :func:`finish_setup` keeps
layer ``i``'s weight only on group rank ``i mod n`` and gives every rank a ring of ``k + 1`` window
buffers (``k = prefetch_step``); every other copy is disposed, its storage really freed. Per rank::

    weight storage = (layers it owns) * W + (k + 1) * W          (W = bytes of one layer's weight)

Protocol, identical on every rank of the group (the broadcasts are collectives)::

    series = register_layer("o_proj", group, layer, layer_index=i, prefetch_step=k)   # every layer
    ... load weights ...
    finish_setup("o_proj")                                  # once, collective over the group
    for each forward pass, for each layer i in order:
        reach_layer(layer)                                  # starts the async broadcast of a later layer
        y = layer(x)                                        # waits for layer i's own weight first

``reach_layer(i)`` broadcasts layer ``start + ((i - start + k) mod count)`` (:func:`prefetch_index`) from
its owner into the next window of the ring (``dist.broadcast(..., async_op=True)`` over the series'
group); the layer's forward (a forward pre-hook) waits for that broadcast. With ``k = 0`` every layer
fetches its own weight just before it runs (no overlap); with ``k >= 1`` the fetch of layer ``i + k``
overlaps the compute of layers ``i .. i + k - 1``. The first ``k`` windows are filled during set-up, so
the ring wraps from one pass to the next without a gap.

``index_formula=`` runs a series with another index rule (the suite's mutants: a rule that ignores
``start`` must trip the window checks or show in the measured distance). What a release's own series
schedules is measured on the release (``suites/test_sut_layer_shard.py``), never modelled here.

Every rank tracks which layer each window holds; a forward whose window holds another layer raises
:class:`PrefetchError` on every rank at the same layer (the bookkeeping is identical everywhere), so a
wrong schedule fails loudly instead of computing with a stale weight.

Groups: a ``torch.distributed`` ProcessGroup, a GroupCoordinator-like object with ``ranks`` (group-rank
order) and ``device_group`` (and optionally ``cpu_group`` for set-up metadata), or a list of global ranks
(ascending), resolved to the existing process group over exactly those ranks (the default group when they
are the whole world). The series never creates a group: ``new_group`` is collective over the whole world
(or, with local synchronisation, named after the ranks and the number of live groups, so a re-created
group can meet the previous one's stale rendezvous keys).

Modules: anything with a tensor ``weight`` (``torch.nn.Linear`` here); :func:`register_vllm_linear` adapts
a vLLM ``LinearBase`` (layer index from its prefix, quantisation post-processing at set-up) where vllm
imports. :func:`release_all` drops the registry (the pytest harness calls it after every test).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ascend_conformance.errors import ConfigError, one_line

__all__ = [
    "prefetch_index",
    "PrefetchError",
    "SharedWeightSeries",
    "register_layer",
    "register_vllm_linear",
    "finish_setup",
    "reach_layer",
    "get_series",
    "series_of",
    "release_series",
    "release_all",
    "dispose_tensor",
]

IndexFormula = Callable[[int, int, int, int], int]


def prefetch_index(layer: int, start: int, count: int, prefetch_step: int) -> int:
    """The layer whose weight ``reach_layer(layer)`` prefetches: ``start + ((layer - start + k) mod count)``.

    >>> [prefetch_index(i, 4, 4, 1) for i in range(4, 8)]     # PP stage 1 holds layers 4..7
    [5, 6, 7, 4]
    """
    return start + (layer - start + prefetch_step) % count


class PrefetchError(RuntimeError):
    """The prefetch schedule did not deliver a layer's weight to its forward (or was used out of order)."""


def dispose_tensor(tensor: torch.Tensor) -> None:
    """Point ``tensor`` at an empty storage so the storage it held is freed (if nothing else holds it)."""
    with torch.no_grad():
        tensor.set_(torch.empty(0, dtype=tensor.dtype, device=tensor.device))


# --------------------------------------------------------------------------------------------------
# groups
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Group:
    ranks: tuple  # global ranks in group-rank order
    process_group: object  # the communicator of the broadcasts
    meta_group: object  # group for the set-up consistency check (a coordinator's cpu group, else the same)
    description: str


def _existing_group(ranks: tuple):
    """A process group this rank belongs to whose members are exactly ``ranks`` (the earliest created), or the
    default group when ``ranks`` is the whole world; None when there is none. Looking up instead of creating
    keeps the series free of collectives on ranks outside its group."""
    default = dist.distributed_c10d._get_default_group()
    for pg, mapping in dist.distributed_c10d._world.pg_group_ranks.items():
        if pg is default or dist.get_rank() not in mapping:
            continue
        if tuple(sorted(mapping, key=mapping.get)) == ranks:
            return pg
    if ranks == tuple(range(dist.get_world_size())):
        return dist.group.WORLD
    return None


def _resolve_group(group) -> _Group:
    if not dist.is_initialized():
        raise ConfigError("torch.distributed is not initialised: a shared-weight series needs a process group")
    world = dist.get_world_size()
    if isinstance(group, (list, tuple)):
        ranks = tuple(group)
        if not ranks or any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
            raise ConfigError(f"group ranks must be a non-empty list of ints, got {list(group)!r}")
        if list(ranks) != sorted(set(ranks)) or ranks[0] < 0 or ranks[-1] >= world:
            raise ConfigError(f"group ranks must be ascending, distinct and in [0, {world}), got {list(ranks)}")
        if dist.get_rank() not in ranks:
            raise ConfigError(f"rank {dist.get_rank()} is not a member of the group {list(ranks)}")
        pg = _existing_group(ranks)
        if pg is None:
            raise ConfigError(f"no process group over ranks {list(ranks)} exists on rank {dist.get_rank()}: create it "
                              f"on every rank first (dist.new_group or groups.initialize_groups) or pass the group")
        return _Group(ranks, pg, pg, f"ranks {list(ranks)}")
    if isinstance(group, dist.ProcessGroup):
        ranks = tuple(dist.get_process_group_ranks(group))
        return _Group(ranks, group, group, f"process group of ranks {list(ranks)}")
    if hasattr(group, "ranks") and hasattr(group, "device_group"):
        ranks = tuple(int(r) for r in group.ranks)
        name = getattr(group, "unique_name", "") or getattr(group, "name", "") or type(group).__name__
        return _Group(ranks, group.device_group, getattr(group, "cpu_group", None) or group.device_group,
                      f"group {name} of ranks {list(ranks)}")
    raise ConfigError(f"group must be a list of ranks, a torch.distributed ProcessGroup or a GroupCoordinator, "
                      f"got {type(group).__name__}")


# --------------------------------------------------------------------------------------------------
# the series
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Layer:
    index: int
    module: torch.nn.Module
    post_load: Optional[Callable]
    slot: Optional[int] = None  # window slot assigned to this layer by the last prefetch of it
    hook: object = None


@dataclasses.dataclass
class _Window:
    tensor: torch.Tensor
    layer: Optional[int] = None  # layer whose weight this window carries (once `work` completes)
    work: object = None


def _describe_module(module) -> tuple:
    weight = module.weight
    return (type(module).__qualname__, tuple(weight.shape), weight.dtype, weight.device)


class SharedWeightSeries:
    """One named series; built by :func:`register_layer`, see the module docstring for the protocol."""

    def __init__(self, name: str, group: _Group, prefetch_step: int, index_formula: IndexFormula):
        self.name = name
        self._group = group
        self.prefetch_step = prefetch_step
        self.index_formula = index_formula
        self._layers: dict[int, _Layer] = {}
        self._signature: Optional[tuple] = None
        self._windows: list[_Window] = []
        self._offset = 0
        self._state = "registering"
        self._process_group = group.process_group
        self.group_rank = group.ranks.index(dist.get_rank())

    # --- description --------------------------------------------------------------------------------
    @property
    def ranks(self) -> tuple:
        return self._group.ranks

    @property
    def group_size(self) -> int:
        return len(self._group.ranks)

    @property
    def process_group(self):
        return self._process_group

    @property
    def start(self) -> int:
        return min(self._layers) if self._layers else 0

    @property
    def end(self) -> int:
        return max(self._layers) + 1 if self._layers else 0

    @property
    def count(self) -> int:
        return len(self._layers)

    @property
    def is_ready(self) -> bool:
        return self._state == "ready"

    @property
    def windows(self) -> tuple:
        """The k + 1 window tensors (empty before set-up)."""
        return tuple(w.tensor for w in self._windows)

    def owner(self, layer: int) -> int:
        """Group rank storing ``layer``'s weight: ``layer mod n``."""
        return layer % self.group_size

    def owns(self, layer: int) -> bool:
        return self.owner(layer) == self.group_rank

    def owned_layers(self) -> list:
        return [i for i in sorted(self._layers) if self.owns(i)]

    def module(self, layer: int) -> torch.nn.Module:
        return self._layers[layer].module

    def __repr__(self) -> str:
        return (f"SharedWeightSeries({self.name!r}, layers [{self.start}, {self.end}), k={self.prefetch_step}, "
                f"group {list(self.ranks)}, rank {self.group_rank}, {self._state})")

    # --- registration -------------------------------------------------------------------------------
    def _register(self, module, layer_index: int, post_load) -> None:
        if self._state != "registering":
            raise ConfigError(f"series {self.name!r} is already set up ({self._state}): register every layer "
                              f"before finish_setup, got layer {layer_index}")
        if layer_index in self._layers:
            raise ConfigError(f"series {self.name!r}: layer index {layer_index} is registered twice")
        signature = _describe_module(module)
        if self._signature is None:
            self._signature = signature
        elif signature != self._signature:
            first = min(self._layers)
            raise ConfigError(f"series {self.name!r}: layer {layer_index} is not isomorphic to layer {first}: "
                              f"{_fmt_signature(signature)} vs {_fmt_signature(self._signature)}")
        layer = _Layer(layer_index, module, post_load)
        layer.hook = module.register_forward_pre_hook(self._make_pre_hook(layer_index))
        self._layers[layer_index] = layer

    def _make_pre_hook(self, layer_index: int):
        def pre_hook(_module, _args):
            self.wait_layer(layer_index)
        return pre_hook

    # --- set-up -------------------------------------------------------------------------------------
    def finish_setup(self) -> "SharedWeightSeries":
        """Collective over the group: check the registration (here and against the other ranks), run the
        post-load hooks, keep only owned weights, allocate and pre-fill the window ring."""
        if self._state != "registering":
            raise ConfigError(f"series {self.name!r}: finish_setup called twice ({self._state})")
        indices = sorted(self._layers)
        if not indices:
            raise ConfigError(f"series {self.name!r} has no layers")
        start, end, k = indices[0], indices[-1] + 1, self.prefetch_step
        missing = sorted(set(range(start, end)) - set(indices))
        if missing:
            raise ConfigError(f"series {self.name!r}: layer indices must be consecutive, got {_fmt_indices(indices)} "
                              f"(missing {_fmt_indices(missing)})")
        count = end - start
        if not 0 <= k <= max(0, count - 2):
            raise ConfigError(f"series {self.name!r}: prefetch_step {k} out of range [0, {max(0, count - 2)}] "
                              f"for {count} layers [{start}, {end})")
        self._check_against_other_ranks(start, end)

        for index in indices:
            layer = self._layers[index]
            if layer.post_load is not None:
                # The hook needs the complete weight everywhere (e.g. quantisation repacking).
                dist.broadcast(layer.module.weight.data, src=self.ranks[self.owner(index)],
                               group=self._process_group)
                layer.post_load(layer.module)
        signature = _describe_module(self._layers[start].module)
        for index in indices:
            got = _describe_module(self._layers[index].module)
            if got != signature:
                raise ConfigError(f"series {self.name!r}: after post-load layer {index} is {_fmt_signature(got)}, "
                                  f"layer {start} {_fmt_signature(signature)}")
            if not self._layers[index].module.weight.is_contiguous():
                raise ConfigError(f"series {self.name!r}: layer {index} weight is not contiguous "
                                  f"(stride {tuple(self._layers[index].module.weight.stride())})")
        _, shape, dtype, device = signature
        for index in indices:
            if not self.owns(index):
                dispose_tensor(self._layers[index].module.weight)
        self._windows = [_Window(torch.empty(shape, dtype=dtype, device=device)) for _ in range(k + 1)]
        self._state = "ready"
        # The first k layers of a pass are fetched now, so the ring runs k layers ahead from the start.
        for step in range(k):
            self._fetch(start + step, step)
            self._wait_window(step)
        self._offset = k % (k + 1)
        return self

    def _check_against_other_ranks(self, start: int, end: int) -> None:
        # The device type, not the index: every rank holds its layers on its own device (npu:0, npu:1, ...).
        kind, shape, dtype, device = self._signature
        mine = (self.name, start, end, self.prefetch_step, _fmt_signature((kind, shape, dtype, device.type)),
                getattr(self.index_formula, "__qualname__", repr(self.index_formula)))
        gathered = [None] * self.group_size
        dist.all_gather_object(gathered, mine, group=self._group.meta_group)
        if any(other != mine for other in gathered):
            detail = "; ".join(f"rank {self.ranks[r]}: layers [{g[1]}, {g[2]}) k={g[3]} {g[4]} {g[5]}"
                               for r, g in enumerate(gathered))
            raise ConfigError(f"series {self.name!r} is registered differently on the ranks of its group: {detail}")

    # --- the prefetch ring --------------------------------------------------------------------------
    def _fetch(self, target: int, slot: int) -> None:
        """Start the broadcast of layer ``target`` into window ``slot``."""
        window = self._windows[slot]
        self._wait_window(slot)  # a window is reused only when its previous broadcast is complete
        previous = window.layer
        if previous is not None and self._layers[previous].slot == slot:
            self._layers[previous].slot = None
            if not self.owns(previous):
                dispose_tensor(self._layers[previous].module.weight)
        layer = self._layers[target]
        if layer.slot is not None and layer.slot != slot and not self.owns(target):
            dispose_tensor(layer.module.weight)  # prefetched again before it was used: the new copy wins
        layer.slot = slot
        window.layer = target
        if self.owns(target):
            tensor = layer.module.weight.data
        else:
            with torch.no_grad():
                layer.module.weight.set_(window.tensor)
            tensor = window.tensor
        window.work = dist.broadcast(tensor, src=self.ranks[self.owner(target)], group=self._process_group,
                                     async_op=True)

    def _wait_window(self, slot: int) -> None:
        window = self._windows[slot]
        if window.work is not None:
            work, window.work = window.work, None
            work.wait()

    def reach_layer(self, layer: int) -> int:
        """Start the async prefetch for the layer ``k`` steps after ``layer``; returns the prefetched index."""
        if self._state != "ready":
            raise PrefetchError(f"series {self.name!r}: reach_layer({layer}) before finish_setup ({self._state})")
        if layer not in self._layers:
            raise ConfigError(f"series {self.name!r}: layer {layer} is not in [{self.start}, {self.end})")
        target = self.index_formula(layer, self.start, self.count, self.prefetch_step)
        if target not in self._layers:
            raise PrefetchError(f"series {self.name!r}: prefetch index {target} for layer {layer} is outside "
                                f"[{self.start}, {self.end})")
        slot = self._offset
        self._offset = (self._offset + 1) % (self.prefetch_step + 1)
        self._fetch(target, slot)
        return target

    def wait_layer(self, layer: int) -> None:
        """Block until ``layer``'s weight is in place (its forward pre-hook calls this)."""
        if self._state != "ready":
            raise PrefetchError(f"series {self.name!r}: layer {layer} ran its forward before finish_setup "
                                f"({self._state})")
        entry = self._layers[layer]
        if entry.slot is None:
            raise PrefetchError(f"series {self.name!r}: layer {layer} reached its forward but no window holds it "
                                f"(windows hold layers {[w.layer for w in self._windows]})")
        window = self._windows[entry.slot]
        if window.layer != layer:
            raise PrefetchError(f"series {self.name!r}: layer {layer} expects window {entry.slot}, which holds "
                                f"layer {window.layer}")
        self._wait_window(entry.slot)
        if not self.owns(layer) and entry.module.weight.data_ptr() != window.tensor.data_ptr():
            raise PrefetchError(f"series {self.name!r}: layer {layer}'s weight was replaced after its prefetch")

    def drain(self) -> None:
        """Wait for every broadcast in flight (call before the group goes away)."""
        for slot in range(len(self._windows)):
            self._wait_window(slot)

    def release(self) -> None:
        """Drain, remove the forward hooks and forget the windows; the series cannot run any more."""
        if self._state == "ready":
            self.drain()
        for layer in self._layers.values():
            if layer.hook is not None:
                layer.hook.remove()
                layer.hook = None
        self._windows = []
        self._state = "released"


def _fmt_signature(signature: tuple) -> str:
    kind, shape, dtype, device = signature
    return f"{kind} weight {list(shape)} {str(dtype).replace('torch.', '')} on {device}"


def _fmt_indices(indices: list) -> str:
    return "[" + ", ".join(str(i) for i in indices) + "]"


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

_series: dict[str, SharedWeightSeries] = {}
_layer_of: dict[int, tuple] = {}  # id(module) -> (series, layer index, module)


def register_layer(series_name: str, group, module: torch.nn.Module, layer_index: int, *, prefetch_step: int = 1,
                   index_formula: IndexFormula = prefetch_index, post_load: Optional[Callable] = None
                   ) -> SharedWeightSeries:
    """Register ``module`` as layer ``layer_index`` of the series ``series_name`` over ``group``.

    The first registration creates the series with ``group``, ``prefetch_step`` and ``index_formula``;
    later ones must pass the same. ``post_load(module)``, if given, runs in :func:`finish_setup` on every
    rank with the complete weight (the owner's, broadcast) before it is sharded — the place for
    quantisation post-processing. Raises :class:`ConfigError` (one line) on every bad registration.
    """
    if not isinstance(series_name, str) or not series_name:
        raise ConfigError(f"series_name must be a non-empty str, got {series_name!r}")
    if not isinstance(module, torch.nn.Module) or not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise ConfigError(f"series {series_name!r}: module {type(module).__name__} has no tensor `weight`")
    if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
        raise ConfigError(f"series {series_name!r}: layer_index must be an int >= 0, got {layer_index!r}")
    if isinstance(prefetch_step, bool) or not isinstance(prefetch_step, int) or prefetch_step < 0:
        raise ConfigError(f"series {series_name!r}: prefetch_step must be an int >= 0, got {prefetch_step!r}")
    if not callable(index_formula):
        raise ConfigError(f"series {series_name!r}: index_formula must be callable, got {index_formula!r}")
    if id(module) in _layer_of:
        other, index, _ = _layer_of[id(module)]
        raise ConfigError(f"series {series_name!r}: this {type(module).__name__} is already registered as layer "
                          f"{index} of series {other.name!r}")
    resolved = _resolve_group(group)
    if dist.get_rank() not in resolved.ranks:  # a ProcessGroup / coordinator this rank is not part of
        raise ConfigError(f"series {series_name!r}: rank {dist.get_rank()} is not a member of the group "
                          f"{list(resolved.ranks)}")
    series = _series.get(series_name)
    if series is None:
        series = SharedWeightSeries(series_name, resolved, prefetch_step, index_formula)
        _series[series_name] = series
    else:
        if series._group.process_group is not resolved.process_group or series.ranks != resolved.ranks:
            raise ConfigError(f"series {series_name!r}: layer {layer_index} registered over {resolved.description}, "
                              f"the series is over {series._group.description}")
        if prefetch_step != series.prefetch_step:
            raise ConfigError(f"series {series_name!r}: layer {layer_index} has prefetch_step {prefetch_step}, "
                              f"the series {series.prefetch_step}")
        if index_formula is not series.index_formula:
            raise ConfigError(f"series {series_name!r}: layer {layer_index} has index_formula "
                              f"{getattr(index_formula, '__name__', index_formula)}, the series "
                              f"{getattr(series.index_formula, '__name__', series.index_formula)}")
    series._register(module, layer_index, post_load)
    _layer_of[id(module)] = (series, layer_index, module)
    return series


def get_series(series_name: str) -> SharedWeightSeries:
    if series_name not in _series:
        raise ConfigError(f"no shared-weight series named {series_name!r} (registered: {sorted(_series)})")
    return _series[series_name]


def series_of(module: torch.nn.Module) -> tuple:
    """(series, layer index) of a registered module."""
    if id(module) not in _layer_of:
        raise ConfigError(f"this {type(module).__name__} is not registered in any shared-weight series")
    series, index, _ = _layer_of[id(module)]
    return series, index


def finish_setup(series_name_or_module) -> SharedWeightSeries:
    """Finish the set-up of a series (by name, or by any of its modules); collective over its group."""
    if isinstance(series_name_or_module, torch.nn.Module):
        series = series_of(series_name_or_module)[0]
    else:
        series = get_series(series_name_or_module)
    return series.finish_setup()


def reach_layer(module: torch.nn.Module) -> int:
    """``series.reach_layer(index)`` for a registered module; returns the prefetched layer index."""
    series, index = series_of(module)
    return series.reach_layer(index)


def release_series(series_name: str) -> None:
    series = _series.pop(series_name, None)
    if series is None:
        return
    for key in [key for key, (s, _, _) in _layer_of.items() if s is series]:
        del _layer_of[key]
    series.release()


def release_all() -> None:
    """Drop every series: a script calls it when done, the pytest harness after every test."""
    errors = []
    for name in list(_series):
        try:
            release_series(name)
        except Exception as exc:  # noqa: BLE001 - release the others, then report
            errors.append(f"{name}: {exc}")
    _series.clear()
    _layer_of.clear()
    if errors:
        raise RuntimeError("shared-weight series could not be released: " + "; ".join(errors))



# --------------------------------------------------------------------------------------------------
# vLLM adapter
# --------------------------------------------------------------------------------------------------

def register_vllm_linear(series_name: str, group, layer, prefetch_step: int = 1,
                         index_formula: IndexFormula = prefetch_index) -> SharedWeightSeries:
    """Register a vLLM ``LinearBase`` (needs vllm): the layer index comes from ``layer.prefix`` and the
    quant method's ``process_weights_after_loading`` moves into the series' set-up (where every rank has
    the complete weight), so vLLM's own post-load pass does not run it a second time on a disposed weight."""
    try:
        from vllm.model_executor.layers.linear import LinearBase
        from vllm.model_executor.models.utils import extract_layer_index
    except Exception as exc:  # noqa: BLE001 - vllm is an optional extra
        raise ConfigError(f"register_vllm_linear needs vllm: {one_line(exc)}") from None
    if not isinstance(layer, LinearBase):
        raise ConfigError(f"register_vllm_linear needs a vllm LinearBase, got {type(layer).__name__}")
    index = extract_layer_index(layer.prefix)
    quant_method = getattr(layer, "quant_method", None)
    post_load = None
    if quant_method is not None and hasattr(quant_method, "process_weights_after_loading"):
        # A quant method object may serve several layers: keep its real hook once, silence it for vLLM.
        post_load = getattr(quant_method, "_shared_weight_post_load", None)
        if post_load is None:
            post_load = quant_method.process_weights_after_loading
            quant_method._shared_weight_post_load = post_load
            quant_method.process_weights_after_loading = lambda _layer: None
    return register_layer(series_name, group, layer, index, prefetch_step=prefetch_step,
                          index_formula=index_formula, post_load=post_load)
