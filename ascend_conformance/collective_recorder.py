"""Recording the torch.distributed communication a rank issues, for tests that check *what* was called.

Inside ``with CollectiveRecorder() as recorder:`` every collective of :data:`COLLECTIVES` this process calls
is appended to ``recorder.calls`` (name, group, the group's global ranks), and every point-to-point op of a
``batch_isend_irecv`` to ``recorder.p2p`` (``isend`` / ``irecv``, peer, group, and what
``CollectiveRecorder(sent_content=f)`` says about a sent tensor, taken before it is sent: the buffer may be
reused afterwards); the calls then proceed unchanged. Both the functions of ``torch.distributed`` and every reference to them that a project
module bound at import (e.g. ``groups.py`` picks its tensor all-gather by name once) are wrapped, and all
are restored on exit.

Two uses: every member of a group must issue the same sequence of collectives on it (a DP rank with 0
tokens still joins every collective), and EPLB's redistribution may use only point-to-point ops on its
own group. Worked example, a 2-rank world where each rank calls ``dist.all_reduce(t)`` once::

    recorder.calls == [Call(name="all_reduce", group=None, ranks=(0, 1))]     on both ranks
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

COLLECTIVES: tuple[str, ...] = (
    "all_gather", "all_gather_into_tensor", "all_gather_single", "all_reduce", "reduce_scatter",
    "reduce_scatter_tensor", "reduce_scatter_single", "all_to_all", "all_to_all_single", "broadcast", "barrier",
    "gather", "scatter", "all_gather_object", "broadcast_object_list", "send", "recv",
)


class Call(NamedTuple):
    """One collective: its torch.distributed name, the group passed (None: the default group) and that
    group's global ranks."""

    name: str
    group: Any
    ranks: tuple[int, ...]


class PointToPoint(NamedTuple):
    """One op of a ``batch_isend_irecv``: ``isend`` or ``irecv``, the global peer, the group, and
    ``sent_content(tensor)`` for a send (None for a receive, or without ``sent_content``)."""

    kind: str
    peer: int
    group: Any
    content: Any


def _ranks_of(group) -> tuple[int, ...]:
    if group is None or group is dist.group.WORLD:
        return tuple(range(dist.get_world_size()))
    return tuple(dist.get_process_group_ranks(group))


class CollectiveRecorder:
    """Context manager; see the module docstring. Not re-entrant."""

    def __init__(self, sent_content: Callable[[torch.Tensor], Any] | None = None):
        self.sent_content = sent_content
        self.calls: list[Call] = []
        self.p2p: list[PointToPoint] = []
        self._patched: list[tuple[Any, str, Any]] = []

    def _wrap(self, name: str, original):
        def recorded(*args, **kwargs):
            group = kwargs.get("group")
            self.calls.append(Call(name, group, _ranks_of(group)))
            return original(*args, **kwargs)
        return recorded

    def _wrap_batch(self, original):
        def recorded(p2p_op_list):
            for op in p2p_op_list:
                kind = op.op.__name__
                content = self.sent_content(op.tensor) if kind == "isend" and self.sent_content else None
                self.p2p.append(PointToPoint(kind, op.peer, op.group, content))
            return original(p2p_op_list)
        return recorded

    def __enter__(self) -> "CollectiveRecorder":
        originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
        wrappers = {name: self._wrap(name, original) for name, original in originals.items()}
        originals["batch_isend_irecv"] = dist.batch_isend_irecv
        wrappers["batch_isend_irecv"] = self._wrap_batch(dist.batch_isend_irecv)
        by_function = {id(original): wrappers[name] for name, original in originals.items()}
        patched = [(dist, name, original) for name, original in originals.items()]
        project = [module for name, module in list(sys.modules.items())
                   if name.startswith("ascend_conformance") and module is not None]
        for module in project:
            for attribute, value in list(vars(module).items()):
                if callable(value) and id(value) in by_function:
                    patched.append((module, attribute, value))
        for owner, attribute, original in patched:
            setattr(owner, attribute, by_function[id(original)])
        self._patched = patched
        return self

    def names(self) -> list[str]:
        """The collectives called, in order."""
        return [call.name for call in self.calls]

    def __exit__(self, *exc) -> None:
        for owner, attribute, original in self._patched:
            setattr(owner, attribute, original)
        self._patched = []
