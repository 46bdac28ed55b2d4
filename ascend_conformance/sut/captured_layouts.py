"""Capturing the layout a system under test builds, inside the ranks of a world (docs/layout.md).

:func:`capture_views` (shipped to every rank of a world by ``world(n).run`` or the CLI's runner): for each
configuration in turn, the SUT's groups adapter builds its groups, the rank notes ``{kind: the ranks of its
group}``, and the adapter destroys them again. One world run thus captures many configurations. Each
configuration has one outcome per rank:

* ``{"view": {kind: ranks}, "leftovers": [kinds]}``: what it built (``leftovers``: the kinds the
  release's own destroy left set, vllm-ascend only);
* ``{"refused": line}``: the release's configuration step said no (before any group exists, on every
  rank alike, so the world stays in step);
* ``{"not_in_release": reason}``: the configuration needs a feature the installed release lacks;
* ``{"crashed": "Type: first line"}``: the release (or the adapter) raised anything else. The next
  configuration still runs, so one crashing configuration does not take the others of its world with it.

Judging the views is not done here: :mod:`ascend_conformance.layout_verdict` merges and judges them.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

from ascend_conformance.errors import ConfigError, SutRefused, one_line
from ascend_conformance.sut import VLLM, VLLM_ASCEND

ADAPTERS = {VLLM: "ascend_conformance.sut.vllm_groups", VLLM_ASCEND: "ascend_conformance.sut.vllm_ascend_groups"}


def adapter(sut: str):
    """The groups adapter module of ``sut`` (``vllm`` or ``vllm_ascend``)."""
    if sut not in ADAPTERS:
        raise ConfigError(f"no groups adapter for SUT {sut!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[sut])


def capture_one(module, fields: Mapping, with_leftovers: bool) -> dict:
    """This rank's outcome of one configuration (see the module docstring)."""
    from ascend_conformance.sut import lines
    from ascend_conformance.topology import ParallelConfig

    leftovers: list[str] = []
    options = {"report_leftovers": leftovers} if with_leftovers else {}
    try:
        with module.live_groups(ParallelConfig(**fields), **options) as built:
            view = {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}
    except SutRefused as refusal:
        return {"refused": str(refusal)}
    except lines.NotInRelease as absent:
        return {"not_in_release": str(absent)}
    except Exception as exc:  # noqa: BLE001 - the release's (or the adapter's) crash, reported per configuration
        return {"crashed": one_line(exc, with_type=True)}
    return {"view": view, "leftovers": leftovers}


def capture_views(sut: str, configs: Sequence[Mapping]) -> list[dict]:
    """In every rank: the outcome of each ParallelConfig field dict of ``configs``, in order."""
    module = adapter(sut)
    return [capture_one(module, fields, sut == VLLM_ASCEND) for fields in configs]


def outcome(per_rank: Sequence[Mapping]) -> tuple[str, object]:
    """``(what, value)`` of one configuration from every rank's outcome: ``("view", [views])``,
    ``("refused" | "not_in_release", line)`` or ``("crashed", "rank r: Type: message; ...")``."""
    crashed = [f"rank {rank}: {o['crashed']}" for rank, o in enumerate(per_rank) if "crashed" in o]
    if crashed:
        return "crashed", "; ".join(dict.fromkeys(crashed))
    for what in ("refused", "not_in_release"):
        if what in per_rank[0]:
            return what, per_rank[0][what]
    return "view", [o["view"] for o in per_rank]


__all__ = ["ADAPTERS", "adapter", "capture_one", "capture_views", "outcome"]
