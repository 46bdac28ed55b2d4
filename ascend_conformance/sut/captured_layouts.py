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
* ``{"crashed": "Type: first line"}``: the release (or the adapter) raised anything else on *every*
  rank. The next configuration still runs, so one crashing configuration does not take the others of its
  world with it. Ranks that crash at the same line of the release are in step; a rank that crashes alone
  may leave its peers blocked in a collective with it, so the ranks first agree (:class:`_Agreement`,
  through the world's store, with a timeout): unless every rank crashed, the crash ends the run as any
  rank failure does (the harness stops the others), never a hang.

Judging the views is not done here: :mod:`ascend_conformance.layout_verdict` merges and judges them.
"""
from __future__ import annotations

import datetime
import importlib
import uuid
from collections.abc import Callable, Mapping, Sequence

from ascend_conformance.errors import ConfigError, SutRefused, one_line
from ascend_conformance.sut import VLLM, VLLM_ASCEND

# How long a rank that crashed waits for the others' outcomes of the configuration. Ranks crashing at the
# same line of the release report within seconds of each other, even on a loaded box; a rank that never
# reports is blocked in a collective with the crashed one.
AGREEMENT_TIMEOUT = datetime.timedelta(seconds=300)
ADAPTERS = {VLLM: "ascend_conformance.sut.vllm_groups", VLLM_ASCEND: "ascend_conformance.sut.vllm_ascend_groups"}


def adapter(sut: str):
    """The groups adapter module of ``sut`` (``vllm`` or ``vllm_ascend``)."""
    if sut not in ADAPTERS:
        raise ConfigError(f"no groups adapter for SUT {sut!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[sut])


def capture_one(module, fields: Mapping, with_leftovers: bool,
                settle: Callable[[dict], bool] | None = None) -> dict:
    """This rank's outcome of one configuration (see the module docstring). ``settle(outcome)``: the
    agreement of the ranks (:meth:`_Agreement.settle`); when it says the crash is this rank's alone, the
    exception is raised."""
    from ascend_conformance.sut import lines
    from ascend_conformance.topology import ParallelConfig

    leftovers: list[str] = []
    options = {"report_leftovers": leftovers} if with_leftovers else {}
    try:
        with module.live_groups(ParallelConfig(**fields), **options) as built:
            view = {kind: [int(rank) for rank in coordinator.ranks] for kind, coordinator in built.items()}
    except SutRefused as refusal:
        result = {"refused": str(refusal)}
    except lines.NotInRelease as absent:
        result = {"not_in_release": str(absent)}
    except Exception as exc:  # noqa: BLE001 - the release's (or the adapter's) crash, reported per configuration
        result = {"crashed": one_line(exc, with_type=True)}
        if settle is not None and not settle(result):
            raise
        return result
    else:
        result = {"view": view, "leftovers": leftovers}
    if settle is not None:
        settle(result)
    return result


class _Agreement:
    """The ranks' outcomes of each configuration of one capture, through the world's store: a crash stands
    as the configuration's outcome only when every rank crashed (then they are in step)."""

    def __init__(self):
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        token = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=0)  # every rank starts the capture in step: a key space of its own
        self.prefix = f"ascend-conformance/capture/{token[0]}"
        self.store = dist.distributed_c10d._get_default_store()
        self.index = 0

    def settle(self, result: dict) -> bool:
        """Note this rank's outcome of the current configuration; for a crash, True when every rank crashed."""
        keys = [f"{self.prefix}/{self.index}/{rank}" for rank in range(self.world_size)]
        self.index += 1
        crashed = "crashed" in result
        self.store.set(keys[self.rank], "crashed" if crashed else "ok")
        if not crashed:
            return True
        try:
            self.store.wait(keys, AGREEMENT_TIMEOUT)
        except Exception:  # noqa: BLE001 - a rank that never reports: blocked in a collective with this one
            return False
        return all(self.store.get(key) == b"crashed" for key in keys)


def capture_views(sut: str, configs: Sequence[Mapping]) -> list[dict]:
    """In every rank: the outcome of each ParallelConfig field dict of ``configs``, in order."""
    module = adapter(sut)
    agreement = _Agreement()
    return [capture_one(module, fields, sut == VLLM_ASCEND, agreement.settle) for fields in configs]


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
