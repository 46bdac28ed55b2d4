"""vLLM's own GroupCoordinator put through the reference's collective expectations (docs/collectives.md).

:func:`exercise_coordinators` runs in every rank of a world: vLLM's groups adapter builds the groups of a
configuration (:func:`ascend_conformance.sut.vllm_groups.live_groups`), and every case of
:mod:`ascend_conformance.collective_checks` that vLLM's coordinator offers runs on its tp, pp, dp and ep
coordinators, in every dtype, with the same exact integer inputs; :func:`check_coordinators` in the test
process computes what each rank must have observed from the *reference* layout's rank lists (so a
coordinator with the wrong members fails too), one verdict per (case, dtype, claim): all_reduce's sum, its
in-place aliasing and its return value are three verdicts, so a known divergence of one cannot hide another
(:func:`verdict_keys`).

What vLLM's GroupCoordinator offers (0.13.0 to 0.27.1 alike), and so what runs: all_reduce (sum only: it takes no op),
all_gather along a dim, reduce_scatter along a dim, gather, broadcast, send / recv, broadcast_object,
send_tensor_dict / recv_tensor_dict, barrier and its rank positions. It has all_gatherv and
reduce_scatterv, which call its device communicator: where that communicator does not implement them
the case is reported unavailable with the communicator's own exception (a skip, never a pass). It has no
all_to_all and no batch_isend_irecv. broadcast_object runs from group rank 0 and from the last member;
the latter is unavailable on groups with a message-queue broadcaster (the TP groups), whose
broadcast_object asserts src == 0. The project's calls ``all_gatherv(x, sizes, dim)`` /
``reduce_scatterv(x, sizes, dim)`` are vLLM's ``(x, dim, sizes)``: :class:`_ProjectCallShapes` maps them.

Three cases are added here on 3-D inputs (every case of collective_checks is 2-D, where "move dim to the
front" and "move the front to dim" are the same permutation, and so are they for dims 0 and 1 of any
tensor): reduce_scatter along dims 1 and -1 and all_gather along dim 1. Worked example, group of 2, input
[4, 4, 4] reduced along dim -1: group rank i must keep ``sum[:, :, 2i:2i+2]``, shape [4, 4, 2].

A case whose call raises in a rank (other than NotImplementedError) is recorded as raised there and the
others go on; the test process reports it as a crash of that case, never as a divergence. Every input is
made on the coordinator's device (``g.device``: the rank's NPU where vLLM's platform is one), as in the
reference's collective checks.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ascend_conformance import collective_checks
from ascend_conformance.collective_checks import DTYPES, Case, cases_for, differences, exact_values
from ascend_conformance.errors import one_line
from ascend_conformance.tolerance import Kind
from ascend_conformance.topology import ParallelConfig, build_layout

KINDS = ("tp", "pp", "dp", "ep")
# collective_checks cases vLLM's GroupCoordinator has a call for (the v-cases may still be unavailable
# on a platform's communicator, see the module docstring).
SHARED_CASES = ("all_reduce", "all_gather_dim-1", "all_gather_dim0", "reduce_scatter_dim0", "reduce_scatter_dim-1",
                "all_gatherv", "reduce_scatterv", "gather", "broadcast", "send_recv_ring")
UNAVAILABLE = "unavailable"
RAISED = "raised"


def _wide_sum(tensors) -> torch.Tensor:
    wide = torch.float64 if tensors[0].dtype.is_floating_point else torch.int64
    return torch.stack([t.to(wide) for t in tensors]).sum(0).to(tensors[0].dtype)


def _reduce_scatter_3d(dim: int):
    # Every dim 2n long, so a scatter along the wrong dim still has the expected shape: only values tell.
    def shape(n):
        return (2 * n, 2 * n, 2 * n)

    def run(g, dtype, salt):
        return {"result": g.reduce_scatter(exact_values(g.rank, shape(g.world_size), dtype, salt, device=g.device),
                                           dim=dim)}

    def expect(ranks, i, dtype, salt):
        total = _wide_sum([exact_values(q, shape(len(ranks)), dtype, salt) for q in ranks])
        return {"result": total.narrow(dim, 2 * i, 2)}

    return run, expect


def _run_all_gather_3d(g, dtype, salt):
    return {"result": g.all_gather(exact_values(g.rank, (2, 2, 3), dtype, salt, device=g.device), dim=1)}


def _expect_all_gather_3d(ranks, i, dtype, salt):
    return {"result": torch.cat([exact_values(q, (2, 2, 3), dtype, salt) for q in ranks], dim=1)}


THREE_D_CASES = (
    Case("reduce_scatter_3d_dim1", *_reduce_scatter_3d(1), Kind.SUM_EXACT, dtypes=("float32", "bfloat16", "int64"),
         claim="sum"),
    Case("reduce_scatter_3d_dim-1", *_reduce_scatter_3d(-1), Kind.SUM_EXACT, dtypes=("float32", "bfloat16", "int64"),
         claim="sum"),
    Case("all_gather_3d_dim1", _run_all_gather_3d, _expect_all_gather_3d, dtypes=("float32", "bfloat16", "int64")),
)
CASES: tuple[Case, ...] = tuple(case for case in collective_checks.CASES if case.name in SHARED_CASES) + THREE_D_CASES

# Dtype-independent checks, once per kind: (name, run(g, kind) -> observation, expect(ranks, i, kind)).
# broadcast_object goes once from group rank 0 and once from the last member: vLLM sends objects of a group
# with a message-queue broadcaster (its TP groups) through that queue, which only broadcasts from rank 0.


def _broadcast_object_from(src_of):
    def run(g, kind):
        if src_of(g.world_size) != 0 and getattr(g, "mq_broadcaster", None) is not None:
            return {UNAVAILABLE: "broadcast_object from a group rank other than 0 on a group with a message-queue "
                                 "broadcaster (GroupCoordinator.broadcast_object asserts src == 0 there)"}
        src = src_of(g.world_size)
        mine = collective_checks.object_from(g.rank, kind) if g.rank_in_group == src else None
        return {"result": g.broadcast_object(mine, src=src)}

    return run


def _expect_broadcast_object(src_of):
    return lambda ranks, i, kind: {"result": collective_checks.object_from(ranks[src_of(len(ranks))], kind)}


def _run_tensor_dict_ring(g, kind):
    if g.world_size == 1:
        return {"result": None}
    mine = collective_checks.tensor_dict_from(g.rank, kind, g.device)  # device tensors, and the host "scale"
    if g.rank_in_group % 2 == 0:
        g.send_tensor_dict(mine)
        return {"result": g.recv_tensor_dict()}
    received = g.recv_tensor_dict()
    g.send_tensor_dict(mine)
    return {"result": received}


def _expect_tensor_dict_ring(ranks, i, kind):
    n = len(ranks)
    return {"result": collective_checks.tensor_dict_from(ranks[(i - 1) % n], kind) if n > 1 else None}


def _run_positions(g, kind):
    g.barrier()
    return {"result": {"ranks": list(g.ranks), "rank_in_group": g.rank_in_group, "world_size": g.world_size,
                       "first_rank": g.first_rank, "last_rank": g.last_rank, "next_rank": g.next_rank,
                       "prev_rank": g.prev_rank, "is_first_rank": g.is_first_rank, "is_last_rank": g.is_last_rank}}


def _expect_positions(ranks, i, kind):
    return {"result": collective_checks.expect_per_kind(ranks, i, kind)["position"]}


PER_KIND_CASES = {
    "broadcast_object_from_0": (_broadcast_object_from(lambda n: 0), _expect_broadcast_object(lambda n: 0)),
    "broadcast_object_from_last": (_broadcast_object_from(lambda n: n - 1), _expect_broadcast_object(lambda n: n - 1)),
    "tensor_dict_ring": (_run_tensor_dict_ring, _expect_tensor_dict_ring),
    "barrier_and_positions": (_run_positions, _expect_positions),
}
CASE_NAMES: tuple[str, ...] = tuple(case.name for case in CASES) + tuple(PER_KIND_CASES)
PER_KIND_CLAIM = "values"
# The GroupCoordinator methods each case calls (features of the vLLM shim: a release without one has not the case).
METHODS: dict[str, tuple[str, ...]] = {
    "all_reduce": ("all_reduce",), "all_gather_dim-1": ("all_gather",), "all_gather_dim0": ("all_gather",),
    "reduce_scatter_dim0": ("reduce_scatter",), "reduce_scatter_dim-1": ("reduce_scatter",),
    "all_gatherv": ("all_gatherv",), "reduce_scatterv": ("reduce_scatterv",), "gather": ("gather",),
    "broadcast": ("broadcast",), "send_recv_ring": ("send", "recv"), "reduce_scatter_3d_dim1": ("reduce_scatter",),
    "reduce_scatter_3d_dim-1": ("reduce_scatter",), "all_gather_3d_dim1": ("all_gather",),
    "broadcast_object_from_0": ("broadcast_object",), "broadcast_object_from_last": ("broadcast_object",),
    "tensor_dict_ring": ("send_tensor_dict", "recv_tensor_dict"), "barrier_and_positions": ("barrier",),
}


def verdict_keys(dtype_names: Sequence[str]) -> list[tuple]:
    """One key per verdict: ``(case, dtype, claim)`` for the dtype cases, ``(case, claim)`` for the per-kind ones."""
    keys: list[tuple] = [(case.name, dtype, claim) for case in CASES for dtype in dtype_names if dtype in case.dtypes
                         for claim in case.claims()]
    return keys + [(name, PER_KIND_CLAIM) for name in PER_KIND_CASES]


class _ProjectCallShapes:
    """vLLM's coordinator, answering the project's argument order for the v-collectives."""

    def __init__(self, coordinator):
        self._coordinator = coordinator

    def __getattr__(self, name):
        return getattr(self._coordinator, name)

    def all_gatherv(self, input_, sizes, dim=0):
        self._needs_communicator("all_gatherv")
        return self._coordinator.all_gatherv(input_, dim=dim, sizes=sizes)

    def reduce_scatterv(self, input_, sizes, dim=0):
        self._needs_communicator("reduce_scatterv")
        return self._coordinator.reduce_scatterv(input_, dim=dim, sizes=sizes)

    def _needs_communicator(self, name):
        # vLLM gives groups of one no device communicator, and its v-collectives go straight to it.
        if self._coordinator.device_communicator is None:
            raise NotImplementedError(f"{name} needs a device communicator, which vLLM gives no group of one")


# -- in a rank ---------------------------------------------------------------------------------------

def exercise_coordinators(config_fields: Mapping, dtype_names: Sequence[str]) -> dict:
    """In every rank: build vLLM's groups for the config, run every case on its tp / pp / dp / ep
    coordinators; ``{(kind, case, dtype): observations}`` plus ``{(kind, per-kind case): ...}``."""
    from ascend_conformance.sut import vllm_groups

    observed: dict = {}
    with vllm_groups.live_groups(ParallelConfig(**config_fields)) as built:
        for kind in KINDS:
            g = _ProjectCallShapes(built[kind])
            for case, dtype_name, salt in cases_for(g.world_size, dtype_names, CASES):
                observed[(kind, case.name, dtype_name)] = _observe(
                    built[kind], lambda: case.run(g, DTYPES[dtype_name], salt))
            for name, (run, _) in PER_KIND_CASES.items():
                observed[(kind, name)] = _observe(built[kind], lambda: run(g, kind))
    return observed


def _observe(coordinator, call) -> dict:
    try:
        return call()
    except NotImplementedError as exc:
        communicator = type(getattr(coordinator, "device_communicator", None)).__name__
        return {UNAVAILABLE: f"{communicator}: NotImplementedError{': ' + str(exc) if str(exc) else ''}"}
    except Exception as exc:  # noqa: BLE001 - the release's own error, reported as a crash
        return {RAISED: one_line(exc, with_type=True)}


# -- in the test process -----------------------------------------------------------------------------

def _record(verdicts: dict, keys: Sequence[tuple], label: str, got, judge_claims) -> None:
    """One observation into the verdicts of ``keys`` (every claim of one case and dtype)."""
    kind = label.split()[2]
    if got is None:
        for key in keys:
            verdicts[key]["problems"].append(f"{label}: not run")
    elif UNAVAILABLE in got:
        for key in keys:
            verdicts[key]["unavailable"].append(f"{kind}: {got[UNAVAILABLE]}")
    elif RAISED in got:
        for key in keys:
            verdicts[key]["raised"].append(f"{label}: {got[RAISED]}")
    else:
        by_claim = judge_claims()
        for key in keys:
            verdicts[key]["problems"] += by_claim.get(key[-1], [])
            verdicts[key]["checks"] += 1


def check_coordinators(config_fields: Mapping, dtype_names: Sequence[str],
                       per_rank: Sequence[dict]) -> dict[tuple, dict]:
    """``{verdict key: {"checks": n, "problems": [...], "unavailable": [...], "raised": [...]}}`` of every rank's
    observations against the reference layout of the config, one verdict per :func:`verdict_keys` key."""
    layout = build_layout(ParallelConfig(**config_fields))
    verdicts = {key: {"checks": 0, "problems": [], "unavailable": [], "raised": []} for key in verdict_keys(dtype_names)}
    for rank, observed in enumerate(per_rank):
        for kind in KINDS:
            ranks = next(group for group in layout[kind] if rank in group)
            i = ranks.index(rank)
            for case, dtype_name, salt in cases_for(len(ranks), dtype_names, CASES):
                label = f"rank {rank} {kind} {ranks} {case.name} {dtype_name}"
                got = observed.get((kind, case.name, dtype_name))
                _record(verdicts, [(case.name, dtype_name, claim) for claim in case.claims()], label, got,
                        lambda: collective_checks.differences_by_claim(
                            label, case, got, case.expect(ranks, i, DTYPES[dtype_name], salt)))
            for name, (_, expect) in PER_KIND_CASES.items():
                label = f"rank {rank} {kind} {ranks} {name}"
                got = observed.get((kind, name))
                _record(verdicts, [(name, PER_KIND_CLAIM)], label, got,
                        lambda: {PER_KIND_CLAIM: differences(label, got, expect(ranks, i, kind), Kind.EXACT)})
    for verdict in verdicts.values():
        verdict["unavailable"] = sorted(set(verdict["unavailable"]))
    return verdicts


__all__ = ["KINDS", "CASES", "CASE_NAMES", "METHODS", "verdict_keys", "exercise_coordinators", "check_coordinators"]
