"""Every GroupCoordinator collective on every group kind of a layout, checked in one world run
(docs/collectives.md); the machinery behind ``suites/test_collectives.py``.

* :func:`exercise_every_group` runs in every rank of a world: it builds every group of the configuration's
  layout (``groups.initialize_groups(build_layout(config))``), runs every :data:`CASES` collective on every
  group kind the rank belongs to, in every dtype, and returns what it observed. A run costs one group set-up
  instead of hundreds.
* :func:`check_report` runs in the test process: it computes what each rank must have observed from the
  layout's rank lists and :func:`exact_values` alone — never from the result of another collective — and
  returns every mismatch, so a test reports them all together.
* Inputs are small integers (:func:`exact_values`: -4..4), a pure function of (global rank, shape, dtype,
  salt), so every sum over at most 8 ranks is exact in every dtype (bf16 holds integers up to 256 exactly):
  results compare with 0 ulp (``Kind.SUM_EXACT``), averages with 2 ulp (``Kind.AVERAGE``), moved data bit
  for bit (``Kind.EXACT``).

Worked example (world 8, DP2 PP2 TP2; ep groups [[0, 1, 4, 5], [2, 3, 6, 7]]): rank 4 is group rank 2 of ep
group [0, 1, 4, 5]. Its ep all_reduce must equal ``exact_values(0) + exact_values(1) + exact_values(4) +
exact_values(5)``; its ep reduce_scatter of a [8, 3] input keeps rows 4..5 of that sum; in the send/recv ring
it receives ``exact_values(1)`` (its previous member) and sends to rank 5.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from ascend_conformance import groups
from ascend_conformance.groups import P2P, GroupCoordinator
from ascend_conformance.tolerance import Kind, assert_close
from ascend_conformance.topology import ParallelConfig, build_layout

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int32": torch.int32, "int64": torch.int64}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


# ---------------------------------------------------------------------------------------- inputs

def exact_values(rank: int, shape, dtype: torch.dtype, salt: int, device=None) -> torch.Tensor:
    """Integers in -4..4, different per (rank, position, salt): exact in every dtype, and so is any
    sum of up to 8 of them. On ``device`` (in a rank: the group's device, ``g.device``; the expectations
    in the test process stay on the CPU).

    >>> exact_values(1, (2, 3), torch.int64, 0).tolist()
    [[-1, 4, 0], [-4, 1, -3]]
    """
    count = 1
    for size in shape:
        count *= size
    base = torch.arange(count, dtype=torch.int64, device=device).reshape(tuple(shape))
    return ((base * 5 + rank * 3 + salt) % 9 - 4).to(dtype)


def _sum(tensors) -> torch.Tensor:
    """Exact sum (in int64 / float64), back in the inputs' dtype."""
    dtype = tensors[0].dtype
    wide = torch.float64 if dtype.is_floating_point else torch.int64
    return torch.stack([t.to(wide) for t in tensors]).sum(0).to(dtype)


def _uneven_sizes(world_size: int) -> list[int]:
    """Rows per group rank for the v-collectives: uneven, with empty parts from 3 ranks on
    (e.g. 4 ranks: [1, 2, 0, 1])."""
    return [(r + 1) % 3 for r in range(world_size)]


def _alltoall_splits(world_size: int) -> list[list[int]]:
    """splits[i][j]: rows group rank i sends to group rank j; not symmetric, some zero."""
    return [[(2 * i + j) % 3 for j in range(world_size)] for i in range(world_size)]


# ------------------------------------------------------------------- the cases: run here, expect there

@dataclasses.dataclass(frozen=True)
class Case:
    """A collective: ``run(group, dtype, salt)`` in a rank returns a dict of observations;
    ``expect(members, group_rank, dtype, salt)`` in the test process returns the same dict as it must
    be. ``result`` is compared with ``compare``; other tensors exactly; anything else with ==."""

    name: str
    run: Callable
    expect: Callable
    compare: Kind = Kind.EXACT
    dtypes: tuple = tuple(DTYPES)
    needs_peer: bool = False  # point-to-point: not on groups of one
    claim: str = "values"  # what ``result`` claims (see :func:`claims`): "sum" for the reductions

    def claims(self) -> tuple[str, ...]:
        """The claims this case makes, one per kind of observation (:data:`CLAIM_OF_KEY`), in key order."""
        sample = self.expect([0, 1], 0, DTYPES[self.dtypes[0]], 0)
        return tuple(dict.fromkeys(claim_of(self, key) for key in sample))


# One verdict per claim (a known divergence of one claim must not hide another): the observation keys of
# a case and the claim each makes. ``result`` claims the case's own ``claim`` (the values: a sum, a gather).
CLAIM_OF_KEY = {"input_after": "in_place", "returns_input": "returns", "second": "values"}


def claim_of(case: "Case", key: str) -> str:
    """The claim observation ``key`` of ``case`` makes: ``in_place`` (the input is left as it was),
    ``returns`` (the call returns a new tensor, or the input where the contract says so), else the values."""
    return case.claim if key == "result" else CLAIM_OF_KEY.get(key, key)


def _run_all_reduce(g: GroupCoordinator, dtype, salt):
    x = exact_values(g.rank, (2, 3), dtype, salt, g.device)
    y = g.all_reduce(x)
    return {"result": y, "input_after": x, "returns_input": y is x}


def _expect_all_reduce(ranks, i, dtype, salt):
    x = exact_values(ranks[i], (2, 3), dtype, salt)
    return {"result": _sum([exact_values(q, (2, 3), dtype, salt) for q in ranks]), "input_after": x,
            "returns_input": len(ranks) == 1}


def _run_all_reduce_avg(g, dtype, salt):
    x = exact_values(g.rank, (2, 3), dtype, salt, g.device)
    return {"result": g.all_reduce(x, op=dist.ReduceOp.AVG)}


def _expect_all_reduce_avg(ranks, i, dtype, salt):
    parts = [exact_values(q, (2, 3), dtype, salt).double() for q in ranks]
    return {"result": (torch.stack(parts).sum(0) / len(ranks)).to(dtype)}


def _gather_case(dim: int, shape: tuple):
    def run(g, dtype, salt):
        x = exact_values(g.rank, shape, dtype, salt, g.device)
        y = g.all_gather(x, dim=dim)
        return {"result": y, "returns_input": y is x}

    def expect(ranks, i, dtype, salt):
        return {"result": torch.cat([exact_values(q, shape, dtype, salt) for q in ranks], dim=dim),
                "returns_input": len(ranks) == 1}

    return run, expect


def _reduce_scatter_case(dim: int):
    # Group size n: the input has 2n entries along `dim`; group rank i keeps entries 2i, 2i+1 of the sum.
    def shape(n):
        return (2 * n, 3) if dim == 0 else (3, 2 * n)

    def run(g, dtype, salt):
        x = exact_values(g.rank, shape(g.world_size), dtype, salt, g.device)
        y = g.reduce_scatter(x, dim=dim)
        return {"result": y, "returns_input": y is x}

    def expect(ranks, i, dtype, salt):
        total = _sum([exact_values(q, shape(len(ranks)), dtype, salt) for q in ranks])
        return {"result": total.narrow(dim, 2 * i, 2), "returns_input": len(ranks) == 1}

    return run, expect


def _run_all_gatherv(g, dtype, salt):
    sizes = _uneven_sizes(g.world_size)
    x = exact_values(g.rank, (sizes[g.rank_in_group], 3), dtype, salt, g.device)
    return {"result": g.all_gatherv(x, sizes, dim=0)}


def _expect_all_gatherv(ranks, i, dtype, salt):
    sizes = _uneven_sizes(len(ranks))
    return {"result": torch.cat([exact_values(q, (sizes[j], 3), dtype, salt) for j, q in enumerate(ranks)])}


def _run_reduce_scatterv(g, dtype, salt):
    sizes = _uneven_sizes(g.world_size)
    x = exact_values(g.rank, (sum(sizes), 3), dtype, salt, g.device)
    return {"result": g.reduce_scatterv(x, sizes, dim=0)}


def _expect_reduce_scatterv(ranks, i, dtype, salt):
    sizes = _uneven_sizes(len(ranks))
    total = _sum([exact_values(q, (sum(sizes), 3), dtype, salt) for q in ranks])
    return {"result": total[sum(sizes[:i]): sum(sizes[:i]) + sizes[i]]}


def _run_gather(g, dtype, salt):
    # To the last member, so dst is not group rank 0 (a default that would hide a src/dst mix-up).
    return {"result": g.gather(exact_values(g.rank, (2, 3), dtype, salt, g.device), dst=g.world_size - 1, dim=0)}


def _expect_gather(ranks, i, dtype, salt):
    if len(ranks) > 1 and i != len(ranks) - 1:
        return {"result": None}
    return {"result": torch.cat([exact_values(q, (2, 3), dtype, salt) for q in ranks], dim=0)}


def _run_broadcast(g, dtype, salt):
    src = 1 % g.world_size
    x = exact_values(g.rank, (2, 3), dtype, salt, g.device)
    y = g.broadcast(x, src=src)
    return {"result": y, "returns_input": y is x}


def _expect_broadcast(ranks, i, dtype, salt):
    return {"result": exact_values(ranks[1 % len(ranks)], (2, 3), dtype, salt), "returns_input": True}


def _run_all_to_all_even(g, dtype, salt):
    x = exact_values(g.rank, (2 * g.world_size, 3), dtype, salt, g.device)
    y = g.all_to_all_single(x)
    return {"result": y, "returns_input": y is x}


def _expect_all_to_all_even(ranks, i, dtype, salt):
    n = len(ranks)
    blocks = [exact_values(q, (2 * n, 3), dtype, salt)[2 * i: 2 * i + 2] for q in ranks]
    return {"result": torch.cat(blocks), "returns_input": n == 1}


def _run_all_to_all_uneven(g, dtype, salt):
    splits = _alltoall_splits(g.world_size)
    me = g.rank_in_group
    x = exact_values(g.rank, (sum(splits[me]), 3), dtype, salt, g.device)
    receive = [splits[j][me] for j in range(g.world_size)]
    return {"result": g.all_to_all_single(x, input_split_sizes=splits[me], output_split_sizes=receive)}


def _expect_all_to_all_uneven(ranks, i, dtype, salt):
    splits = _alltoall_splits(len(ranks))
    blocks = []
    for j, q in enumerate(ranks):
        sent = exact_values(q, (sum(splits[j]), 3), dtype, salt)
        start = sum(splits[j][:i])
        blocks.append(sent[start: start + splits[j][i]])
    return {"result": torch.cat(blocks)}


def _run_send_recv_ring(g, dtype, salt):
    # Default dst / src: next / previous member. Even group ranks send first, odd ones receive first,
    # so the ring completes whether or not the backend buffers a send.
    x = exact_values(g.rank, (2, 3), dtype, salt, g.device)
    if g.rank_in_group % 2 == 0:
        g.send(x)
        y = g.recv((2, 3), dtype)
    else:
        y = g.recv((2, 3), dtype)
        g.send(x)
    return {"result": y}


def _expect_ring(ranks, i, dtype, salt):
    return {"result": exact_values(ranks[(i - 1) % len(ranks)], (2, 3), dtype, salt)}


def _run_batch_ring(g, dtype, salt):
    x = exact_values(g.rank, (2, 3), dtype, salt, g.device)
    y = torch.empty((2, 3), dtype=dtype, device=g.device)
    works = g.batch_isend_irecv([P2P.send(x, (g.rank_in_group + 1) % g.world_size),
                                 P2P.recv(y, (g.rank_in_group - 1) % g.world_size)])
    for work in works:
        work.wait()
    return {"result": y}


def _pair_of(i: int, n: int) -> int | None:
    partner = i ^ 1
    return partner if partner < n else None


def _run_batch_pairs(g, dtype, salt):
    # Group ranks (0, 1), (2, 3), ... swap two tensors each way in one batch.
    partner = _pair_of(g.rank_in_group, g.world_size)
    if partner is None:
        return {"result": None}
    big = exact_values(g.rank, (2, 3), dtype, salt, g.device)
    small = exact_values(g.rank, (1,), dtype, salt + 1, g.device)
    big_in, small_in = torch.empty_like(big), torch.empty_like(small)
    works = g.batch_isend_irecv([P2P.send(big, partner), P2P.send(small, partner),
                                 P2P.recv(big_in, partner), P2P.recv(small_in, partner)])
    for work in works:
        work.wait()
    return {"result": big_in, "second": small_in}


def _expect_batch_pairs(ranks, i, dtype, salt):
    partner = _pair_of(i, len(ranks))
    if partner is None:
        return {"result": None}
    q = ranks[partner]
    return {"result": exact_values(q, (2, 3), dtype, salt), "second": exact_values(q, (1,), dtype, salt + 1)}


_all_gather_last = _gather_case(-1, (2, 3))
_all_gather_first = _gather_case(0, (2, 3))
_reduce_scatter_first = _reduce_scatter_case(0)
_reduce_scatter_last = _reduce_scatter_case(-1)

CASES = [
    Case("all_reduce", _run_all_reduce, _expect_all_reduce, Kind.SUM_EXACT, claim="sum"),
    Case("all_reduce_avg", _run_all_reduce_avg, _expect_all_reduce_avg, Kind.AVERAGE, dtypes=FLOAT_DTYPES,
         claim="mean"),
    Case("all_gather_dim-1", *_all_gather_last),
    Case("all_gather_dim0", *_all_gather_first, dtypes=("float32", "int64")),
    Case("reduce_scatter_dim0", *_reduce_scatter_first, Kind.SUM_EXACT, claim="sum"),
    Case("reduce_scatter_dim-1", *_reduce_scatter_last, Kind.SUM_EXACT, dtypes=("float32", "int64"), claim="sum"),
    Case("all_gatherv", _run_all_gatherv, _expect_all_gatherv),
    Case("reduce_scatterv", _run_reduce_scatterv, _expect_reduce_scatterv, Kind.SUM_EXACT, claim="sum"),
    Case("gather", _run_gather, _expect_gather),
    Case("broadcast", _run_broadcast, _expect_broadcast),
    Case("all_to_all_single", _run_all_to_all_even, _expect_all_to_all_even),
    Case("all_to_all_single_splits", _run_all_to_all_uneven, _expect_all_to_all_uneven),
    Case("send_recv_ring", _run_send_recv_ring, _expect_ring, needs_peer=True),
    Case("batch_isend_irecv_ring", _run_batch_ring, _expect_ring, needs_peer=True),
    Case("batch_isend_irecv_pairs", _run_batch_pairs, _expect_batch_pairs, needs_peer=True),
]


def case_salt(case_name: str, dtype_name: str) -> int:
    # Different inputs per case and dtype, so a buffer left over from another case cannot pass.
    return (sum(map(ord, case_name)) * 7 + sum(map(ord, dtype_name))) % 9


# Dtype-independent checks, once per kind.

def object_from(rank: int, kind: str) -> dict:
    return {"kind": kind, "from": rank, "payload": [rank] * 3, "nested": ("x", rank * 0.5)}


def tensor_dict_from(rank: int, kind: str, device=None) -> dict:
    """The tensors on ``device`` (in a rank: the group's), except ``scale``, a host tensor everywhere: a tensor
    dict may mix both, and host tensors travel over the CPU group (as in vLLM)."""
    return {"hidden": exact_values(rank, (2, 3), torch.bfloat16, 1, device),
            "ids": exact_values(rank, (4,), torch.int64, 2, device),
            "scale": exact_values(rank, (3,), torch.float32, 3), "empty": torch.zeros((0, 3), dtype=torch.float16,
                                                                                    device=device),
            "step": rank, "tag": f"{kind}@{rank}"}


def run_per_kind_checks(g: GroupCoordinator, kind: str) -> dict:
    src = g.world_size - 1
    observed = {"broadcast_object": g.broadcast_object(object_from(g.rank, kind) if g.rank_in_group == src else None,
                                                       src=src)}
    if g.world_size > 1:
        mine = tensor_dict_from(g.rank, kind, g.device)
        if g.rank_in_group % 2 == 0:
            g.send_tensor_dict(mine)
            observed["tensor_dict_ring"] = g.recv_tensor_dict()
        else:
            observed["tensor_dict_ring"] = g.recv_tensor_dict()
            g.send_tensor_dict(mine)
    g.barrier()
    observed["position"] = {"ranks": g.ranks, "rank_in_group": g.rank_in_group, "world_size": g.world_size,
                            "first_rank": g.first_rank, "last_rank": g.last_rank, "next_rank": g.next_rank,
                            "prev_rank": g.prev_rank, "is_first_rank": g.is_first_rank,
                            "is_last_rank": g.is_last_rank}
    return observed


def expect_per_kind(ranks: list[int], i: int, kind: str) -> dict:
    n = len(ranks)
    expected = {"broadcast_object": object_from(ranks[-1], kind),
                "position": {"ranks": ranks, "rank_in_group": i, "world_size": n, "first_rank": ranks[0],
                             "last_rank": ranks[-1], "next_rank": ranks[(i + 1) % n],
                             "prev_rank": ranks[(i - 1) % n], "is_first_rank": i == 0, "is_last_rank": i == n - 1}}
    if n > 1:
        expected["tensor_dict_ring"] = tensor_dict_from(ranks[(i - 1) % n], kind)
    return expected


def cases_for(group_size: int, dtype_names: Sequence[str], cases: Sequence[Case] | None = None):
    """(case, dtype name, salt) of every case of ``cases`` (default: all of :data:`CASES`) a member of a
    group of `group_size` runs: point-to-point cases need a peer, and a case runs only in its own dtypes."""
    for case in CASES if cases is None else cases:
        if case.needs_peer and group_size == 1:
            continue
        for dtype_name in dtype_names:
            if dtype_name in case.dtypes:
                yield case, dtype_name, case_salt(case.name, dtype_name)


# --------------------------------------------------------------------------------- in a rank

def exercise_every_group(config_fields: dict, dtype_names: list[str]) -> dict:
    """In a rank: build every group of the configuration's layout, run every case on every kind and
    dtype, return ``{(kind, case, dtype): observations}`` plus ``{(kind, "per_kind"): ...}`` and the
    getters' view."""
    layout = build_layout(ParallelConfig(**config_fields))
    groups.initialize_groups(layout)
    observed: dict = {}
    for kind in layout:
        g = groups.get_group(kind)
        for case, dtype_name, salt in cases_for(g.world_size, dtype_names):
            observed[(kind, case.name, dtype_name)] = case.run(g, DTYPES[dtype_name], salt)
        observed[(kind, "per_kind")] = run_per_kind_checks(g, kind)
    getters = {"world": groups.get_world_group, "tp": groups.get_tp_group, "pcp": groups.get_pcp_group,
               "pp": groups.get_pp_group, "dp": groups.get_dp_group, "ep": groups.get_ep_group,
               "mc2": groups.get_mc2_group, "dynamic_eplb": groups.get_dynamic_eplb_group,
               "fc3_quant_x": groups.get_fc3_quant_x_group, "otp": groups.get_otp_group,
               "lmheadtp": groups.get_lmhead_tp_group, "emtp": groups.get_embed_tp_group,
               "mlptp": groups.get_mlp_tp_group, "flashcomm2_otp": groups.get_flashcomm2_otp_group,
               "flashcomm2_odp": groups.get_flashcomm2_odp_group, "shard_weight": groups.get_shard_weight_group,
               "p_tp": groups.get_p_tp_group}
    observed["getters"] = {kind: getter().ranks for kind, getter in getters.items() if kind in layout}
    observed["kinds"] = groups.group_kinds()
    groups.destroy_groups()
    return observed


# -------------------------------------------------------------------------- in the test process

def differences(label: str, actual, expected, compare: Kind) -> list[str]:
    """One line per way ``actual`` differs from ``expected`` (nested dicts key by key; a dict's "result"
    under ``compare``, every other value exact), each starting with ``label``."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            keys = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
            return [f"{label}: observed keys {keys}, expected {sorted(expected)}"]
        out = []
        for key in expected:
            kind = compare if key == "result" else Kind.EXACT
            out += differences(f"{label}.{key}", actual[key], expected[key], kind)
        return out
    if isinstance(expected, torch.Tensor):
        try:
            assert_close(actual, expected, kind=compare, what=label)
        except AssertionError as exc:
            return [str(exc)]
        return []
    return [] if actual == expected else [f"{label}: got {actual!r}, expected {expected!r}"]


def differences_by_claim(label: str, case: Case, actual, expected) -> dict[str, list[str]]:
    """:func:`differences` of one observation of ``case``, split by claim (:func:`claim_of`): ``{claim:
    [lines]}`` for every claim of the case. Observed keys other than the expected ones are a fault of
    every claim (the observation is not what the case makes)."""
    found: dict[str, list[str]] = {claim: [] for claim in case.claims()}
    if not isinstance(actual, dict) or set(actual) != set(expected):
        problem = differences(label, actual, expected, case.compare)
        return {claim: list(problem) for claim in found}
    for key in expected:
        kind = case.compare if key == "result" else Kind.EXACT
        found.setdefault(claim_of(case, key), []).extend(differences(f"{label}.{key}", actual[key], expected[key], kind))
    return found


def check_report(config_fields: dict, dtype_names: list[str], per_rank: list[dict]) -> tuple[int, list[str]]:
    """(number of checks, mismatch messages) of every rank's observations against the layout."""
    layout = build_layout(ParallelConfig(**config_fields))
    problems: list[str] = []
    checks = 0
    for rank, observed in enumerate(per_rank):
        expected_keys = set()
        for kind, kind_groups in layout.items():
            ranks = next(group for group in kind_groups if rank in group)
            i = ranks.index(rank)
            for case, dtype_name, salt in cases_for(len(ranks), dtype_names):
                key = (kind, case.name, dtype_name)
                expected_keys.add(key)
                label = f"rank {rank} {kind} {ranks} {case.name} {dtype_name}"
                if key not in observed:
                    problems.append(f"{label}: not run")
                    continue
                expected = case.expect(ranks, i, DTYPES[dtype_name], salt)
                problems += differences(label, observed[key], expected, case.compare)
                checks += 1
            key = (kind, "per_kind")
            expected_keys.add(key)
            problems += differences(f"rank {rank} {kind} {ranks}", observed.get(key),
                                     expect_per_kind(ranks, i, kind), Kind.EXACT)
            checks += 1
        extra = {key for key in observed if isinstance(key, tuple)} - expected_keys
        if extra:
            problems.append(f"rank {rank}: ran cases the layout does not imply: {sorted(extra)[:5]}")
        mine = {kind: next(group for group in kind_groups if rank in group) for kind, kind_groups in layout.items()}
        mine.pop("world")
        getter_view = dict(observed["getters"])
        getter_view.pop("world")
        if getter_view != mine:
            problems.append(f"rank {rank}: get_*_group() gave {getter_view}, the layout says {mine}")
        if observed["kinds"] != tuple(layout):
            problems.append(f"rank {rank}: group_kinds() {observed['kinds']} != layout kinds {tuple(layout)}")
        checks += 2
    return checks, problems


def expected_observations(config_fields: dict, dtype_names: list[str]) -> list[dict]:
    """What :func:`exercise_every_group` must return in every rank (rank order), built from the expectations
    alone: a report that :func:`check_report` accepts, for testing the checker itself."""
    layout = build_layout(ParallelConfig(**config_fields))
    per_rank = []
    for rank in range(config_fields["world_size"]):
        observed = {}
        for kind, kind_groups in layout.items():
            ranks = next(group for group in kind_groups if rank in group)
            for case, dtype_name, salt in cases_for(len(ranks), dtype_names):
                observed[(kind, case.name, dtype_name)] = case.expect(ranks, ranks.index(rank), DTYPES[dtype_name],
                                                                      salt)
            observed[(kind, "per_kind")] = expect_per_kind(ranks, ranks.index(rank), kind)
        observed["getters"] = {kind: next(g for g in layout[kind] if rank in g) for kind in layout}
        observed["kinds"] = tuple(layout)
        per_rank.append(observed)
    return per_rank
