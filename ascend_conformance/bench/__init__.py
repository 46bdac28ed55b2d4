"""Timing collectives across ranks, nccl-tests style: time (max over ranks), algbw, busbw, #wrong.

A measurement of one collective, one group kind, one size, inside a live world where every rank calls
:func:`run_sweep` (every group of the kind runs at once, as the groups of a model do):

1. correctness pass, outside any timed loop: the suite's op on exactly representable inputs, every
   element compared with the value the group's rank list implies -> ``#wrong``;
2. warm-up: ``warmup`` ops of each timed variant;
3. ``rounds`` rounds, each: barrier on the world's CPU group, ``iters`` back-to-back ops, one device
   synchronisation, timed by ``platform.timer()`` (device events where the device has them, else
   ``perf_counter`` around a synchronise); the per-op time of a round is its time / ``iters``. Every
   variant is timed by this same round (:func:`time_round`), with nothing between the timer's start and
   stop but the op, so the two sides of a ratio are measured alike;
4. per round, the maximum over all ranks (a collective is as slow as its slowest member).

Each round times two variants back to back, interleaved so that drift on a busy host hits both alike:

* ``suite``: the :class:`~ascend_conformance.groups.GroupCoordinator` method, as the suite uses it;
* ``raw``: a hand-written ``torch.distributed`` loop of the same op and size on the same device group,
  with preallocated buffers, timed by the same timer — the baseline the suite's numbers are judged
  against (their ratio is the overhead of the suite's API);
* ``raw_again`` (``SweepSpec.noise_floor``): the raw loop once more, so raw_again / raw, an A/A ratio
  whose true value is 1, shows how far a ratio moves by chance on this host.

Bandwidths follow nccl-tests (PERFORMANCE.md): ``algbw = size / time`` with ``size`` as nccl-tests
defines it per op, and ``busbw = algbw * factor`` with the factor that makes busbw comparable with the
link bandwidth. GB/s means 1e9 bytes per second. Worked example, all_reduce of 1 MiB over a group of
4 taking 100 us: algbw = 1048576 / 100e-6 / 1e9 = 10.49 GB/s, busbw = 10.49 * 2 * 3 / 4 = 15.73 GB/s.

Knows nothing of pytest: ``benchmarks/collectives.py`` and the bench suite both call it. The MoE benchmarks'
rank functions, timed with :func:`time_interleaved`, are :mod:`ascend_conformance.bench.moe`. The reference
implementation never imports this package (``tests/test_reference_without_harness.py``).
"""
from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from ascend_conformance import groups, platform
from ascend_conformance.errors import ConfigError
from ascend_conformance.groups import P2P, GroupCoordinator
from ascend_conformance.topology import ParallelConfig, build_layout

# busbw / algbw per op for a group of n ranks (nccl-tests' PERFORMANCE.md).
BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "gather": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "sendrecv": lambda n: 1.0,
}
COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "sendrecv",
                                "gather")
# Ops whose size nccl-tests counts over the whole group (output of all_gather / gather, input of
# reduce_scatter) or split into n blocks (all_to_all): the element count must divide by n.
_SPLIT_OPS = frozenset({"all_gather", "reduce_scatter", "all_to_all", "gather"})

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int32": torch.int32, "int64": torch.int64, "int8": torch.int8, "float64": torch.float64}
# nccl-tests' type names, for the table.
NCCL_TYPE_NAMES = {"float32": "float", "float16": "half", "bfloat16": "bfloat16", "int32": "int32",
                   "int64": "int64", "int8": "int8", "float64": "double"}

_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*([KMG]?)B?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from nccl-tests' notation: ``8``, ``64K``, ``1M``, ``2G`` (powers of 1024)."""
    if isinstance(text, int):
        return text
    match = _SIZE_PATTERN.match(str(text))
    if not match:
        raise ConfigError(f"size {text!r} is not a number of bytes with an optional K, M or G suffix")
    return int(match.group(1)) * 1024 ** "_KMG".index(match.group(2).upper() or "_")


def size_sweep(begin: int | str, end: int | str, factor: int = 2) -> list[int]:
    """``begin, begin*factor, ...`` up to ``end`` inclusive, like nccl-tests' ``-b/-e/-f``.

    >>> size_sweep("8", "1K", 4)
    [8, 32, 128, 512]
    """
    begin, end = parse_size(begin), parse_size(end)
    if begin < 1 or end < begin or factor < 2:
        raise ConfigError(f"size sweep needs 1 <= begin <= end and factor >= 2, got begin {begin}, end {end}, "
                          f"factor {factor}")
    sizes, size = [], begin
    while size <= end:
        sizes.append(size)
        size *= factor
    return sizes


def element_count(op: str, size_bytes: int, element_size: int, group_size: int) -> int:
    """Elements of ``size_bytes`` for ``op``, rounded down as nccl-tests does (to a multiple of the
    group size for ops that split the buffer into per-rank parts); 0 when too small."""
    count = size_bytes // element_size
    if op in _SPLIT_OPS:
        count = count // group_size * group_size
    return count


def bandwidths(op: str, size_bytes: int, seconds: float, group_size: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s for ``size_bytes`` moved by ``op`` in ``seconds``."""
    if seconds <= 0:
        return 0.0, 0.0
    algbw = size_bytes / seconds / 1e9
    return algbw, algbw * BUS_FACTORS[op](group_size)


# -- inputs and expected values (exact: small integers) -----------------------------------------

_PERIOD = 7


def pattern(rank: int, start: int, stop: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Elements ``start:stop`` of rank ``rank``'s input: ``(k + 3*rank) % 7 - 3``, integers in -3..3,
    so any sum over up to 85 ranks is exact even in bfloat16 (integers up to 256)."""
    k = torch.arange(start, stop, device=device, dtype=torch.int64)
    return ((k + 3 * rank) % _PERIOD - 3).to(dtype)


def _sum_pattern(ranks: Sequence[int], start: int, stop: int, dtype, device) -> torch.Tensor:
    total = torch.zeros(stop - start, dtype=torch.int64, device=device)
    for q in ranks:
        total += pattern(q, start, stop, torch.int64, device)
    return total.to(dtype)


def _concatenated(ranks: Sequence[int], part: int, start: int, stop: int, dtype, device) -> torch.Tensor:
    """Elements ``start:stop`` of the concatenation of every rank's first ``part`` pattern elements."""
    pieces, k = [], start
    while k < stop:
        owner, offset = divmod(k, part)
        end = min(stop, (owner + 1) * part)
        pieces.append(pattern(ranks[owner], offset, offset + end - k, dtype, device))
        k = end
    return torch.cat(pieces)


def _count_wrong(result: torch.Tensor, expected: Callable[[int, int], torch.Tensor], chunk: int = 1 << 20) -> int:
    """Elements of flat ``result`` that differ from ``expected(start, stop)``, compared chunk by chunk
    (the expected tensor of a large size never exists whole)."""
    flat = result.reshape(-1)
    wrong = 0
    for start in range(0, flat.numel(), chunk):
        stop = min(start + chunk, flat.numel())
        wrong += int((flat[start:stop] != expected(start, stop)).sum())
    return wrong


@dataclasses.dataclass
class _Prepared:
    suite: Callable[[], object]
    raw: Callable[[], object]
    check: Callable[[], int]  # -> number of wrong elements


def _wait_all(works) -> None:
    for work in works:
        work.wait()


def prepare(op: str, g: GroupCoordinator, count: int, dtype: torch.dtype) -> _Prepared:
    """Buffers and closures for timing ``op`` on ``g`` with ``count`` elements as nccl-tests counts
    them (see :func:`element_count`)."""
    device, n, me = g.device, g.world_size, g.rank_in_group
    part = count // n if op in _SPLIT_OPS else count
    dg = g.device_group
    if op == "all_reduce":
        x = pattern(g.rank, 0, count, dtype, device)
        buffer = torch.zeros(count, dtype=dtype, device=device)  # zeros: repeated in-place sums stay 0
        return _Prepared(lambda: g.all_reduce(x), lambda: dist.all_reduce(buffer, group=dg),
                         lambda: _count_wrong(g.all_reduce(x), lambda a, b: _sum_pattern(g.ranks, a, b, dtype, device)))
    if op == "all_gather":
        x = pattern(g.rank, 0, part, dtype, device)
        out = torch.empty(count, dtype=dtype, device=device)
        gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return _Prepared(lambda: g.all_gather(x, dim=0), lambda: gather_tensor(out, x, group=dg),
                         lambda: _count_wrong(g.all_gather(x, dim=0),
                                              lambda a, b: _concatenated(g.ranks, part, a, b, dtype, device)))
    if op == "reduce_scatter":
        x = pattern(g.rank, 0, count, dtype, device)
        out = torch.empty(part, dtype=dtype, device=device)
        scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return _Prepared(lambda: g.reduce_scatter(x, dim=0), lambda: scatter_tensor(out, x, group=dg),
                         lambda: _count_wrong(g.reduce_scatter(x, dim=0),
                                              lambda a, b: _sum_pattern(g.ranks, me * part + a, me * part + b,
                                                                        dtype, device)))
    if op == "all_to_all":
        x = pattern(g.rank, 0, count, dtype, device)
        out = torch.empty(count, dtype=dtype, device=device)
        block = part

        def expected(start, stop):
            pieces, k = [], start
            while k < stop:
                source, offset = divmod(k, block)
                end = min(stop, (source + 1) * block)
                first = me * block + offset
                pieces.append(pattern(g.ranks[source], first, first + end - k, dtype, device))
                k = end
            return torch.cat(pieces)

        return _Prepared(lambda: g.all_to_all_single(x), lambda: dist.all_to_all_single(out, x, group=dg),
                         lambda: _count_wrong(g.all_to_all_single(x), expected))
    if op == "broadcast":
        x = pattern(g.rank, 0, count, dtype, device)
        buffer = x.clone()
        source = g.ranks[0]
        return _Prepared(lambda: g.broadcast(x, src=0), lambda: dist.broadcast(buffer, src=source, group=dg),
                         lambda: _count_wrong(g.broadcast(pattern(g.rank, 0, count, dtype, device), src=0),
                                              lambda a, b: pattern(source, a, b, dtype, device)))
    if op == "gather":
        x = pattern(g.rank, 0, part, dtype, device)
        parts = [torch.empty(part, dtype=dtype, device=device) for _ in range(n)] if me == 0 else None
        root = g.ranks[0]

        def check() -> int:
            result = g.gather(x, dst=0, dim=0)
            if me != 0:
                return 0 if result is None else result.numel()
            return _count_wrong(result, lambda a, b: _concatenated(g.ranks, part, a, b, dtype, device))

        return _Prepared(lambda: g.gather(x, dst=0, dim=0), lambda: dist.gather(x, parts, dst=root, group=dg), check)
    if op == "sendrecv":
        x = pattern(g.rank, 0, count, dtype, device)
        received = torch.empty(count, dtype=dtype, device=device)
        after, before = (me + 1) % n, (me - 1) % n
        after_global, before_global = g.ranks[after], g.ranks[before]

        def raw():
            # What hand-written code does: build the P2P ops of this step, post them, wait.
            _wait_all(dist.batch_isend_irecv([dist.P2POp(dist.isend, x, after_global, group=dg),
                                              dist.P2POp(dist.irecv, received, before_global, group=dg)]))

        def suite():
            _wait_all(g.batch_isend_irecv([P2P.send(x, after), P2P.recv(received, before)]))

        def check() -> int:
            received.zero_()
            suite()
            return _count_wrong(received, lambda a, b: pattern(g.ranks[before], a, b, dtype, device))

        return _Prepared(suite, raw, check)
    raise ConfigError(f"unknown collective {op!r}: choose from {', '.join(COLLECTIVES)}")


# -- timing -------------------------------------------------------------------------------------

def time_round(fn: Callable[[], object], iters: int, barrier: Callable[[], None]) -> float:
    """Seconds per op of one round: barrier, then ``iters`` back-to-back calls of ``fn`` and nothing else
    between the start and the stop of one platform timer (device events where the device has them, else
    ``perf_counter`` around a device synchronise). The one way every variant of every comparison here is
    timed: a suite op and its raw baseline see the same timer and the same overhead."""
    barrier()
    timer = platform.get().timer()
    timer.start()
    for _ in range(iters):
        fn()
    return timer.stop() / iters


def rank_max(values: Sequence[float], world: GroupCoordinator | None = None) -> list[float]:
    """Element-wise maximum of ``values`` over every rank of ``world`` (on its CPU group); without
    ``world``, over the default process group (scripts that built no layout), as objects: its backend may
    take device tensors only (HCCL), and these are host numbers."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if world is None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, list(values))
            return [max(column) for column in zip(*everyone)]
    elif world.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=world.cpu_group)
    return tensor.tolist()


def time_interleaved(fns: dict, *, warmup: int, rounds: int,
                     world: GroupCoordinator | None = None) -> dict[str, list[float]]:
    """Seconds per call of every function, max over the ranks, timed round-robin (one call of each per
    round, the first one rotating) so that a change of host load hits them alike and their ratio stays
    meaningful on a shared machine. Every rank calls it with the same functions (a collective). Each
    call is one :func:`time_round`: a barrier, the call, the platform timer (device events where the
    device has them). ``world`` defaults to the default process group."""
    barrier = world.barrier if world is not None else dist.barrier
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_round(fns[name], 1, barrier))
    return {name: rank_max(times[name], world) for name in names}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What :func:`run_sweep` measures. ``kinds`` None means every kind of the layout whose groups
    have more than one member (a group of one does not communicate)."""

    config: dict  # ParallelConfig fields
    ops: tuple = COLLECTIVES
    kinds: tuple | None = None
    dtype: str = "float32"
    sizes: tuple = (8, 1024, 65536)
    iters: int = 20
    warmup: int = 5
    rounds: int = 5
    noise_floor: bool = False  # also time the raw loop against itself (A/A), see _timed_rounds

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        unknown = [op for op in self.ops if op not in BUS_FACTORS]
        if unknown:
            raise ConfigError(f"unknown collectives {unknown}: choose from {', '.join(COLLECTIVES)}")
        for name in ("iters", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")


def _requested_kinds(spec: SweepSpec) -> tuple[dict, list[str]]:
    layout = build_layout(ParallelConfig(**spec.config))
    if spec.kinds is None:
        return layout, list(layout)
    missing = [kind for kind in spec.kinds if kind not in layout]
    if missing:
        raise ConfigError(f"group kinds {missing} are not in the layout of {ParallelConfig(**spec.config).describe()} "
                          f"(kinds: {', '.join(layout)})")
    return layout, list(spec.kinds)


def measured_kinds(spec: SweepSpec) -> list[str]:
    """The requested kinds (default: all of the layout) whose groups have more than one member."""
    layout, kinds = _requested_kinds(spec)
    return [kind for kind in kinds if max(len(group) for group in layout[kind]) > 1]


def skipped_kinds(spec: SweepSpec) -> dict[str, str]:
    """Requested kinds that are not measured, with the reason."""
    layout, kinds = _requested_kinds(spec)
    return {kind: "groups of one rank do not communicate" for kind in kinds
            if max(len(group) for group in layout[kind]) == 1}


def _timed_rounds(prepared: _Prepared, spec: SweepSpec, barrier: Callable[[], None]) -> dict[str, list[float]]:
    """This rank's per-op seconds per round of each variant: ``suite``, ``raw`` and, with
    ``spec.noise_floor``, ``raw_again`` (the raw loop timed a second time: the A/A ratio raw_again /
    raw is the spread a suite/raw ratio must be read against).

    The variants take turns going first (round r starts with variant r mod count): the first loop after
    a barrier runs on freshly woken ranks, and a fixed order would bias the ratio. Every variant is timed
    by :func:`time_round`.
    """
    variants = [("suite", prepared.suite), ("raw", prepared.raw)]
    if spec.noise_floor:
        variants.append(("raw_again", prepared.raw))
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    for round_index in range(spec.rounds):
        shift = round_index % len(variants)
        for name, fn in variants[shift:] + variants[:shift]:
            samples[name].append(time_round(fn, spec.iters, barrier))
    return samples


def run_sweep(spec: SweepSpec) -> list[dict]:
    """In every rank of a world of ``spec.config['world_size']``: measure every (kind, op, size) and
    return one row per measurement (identical on every rank: times are already rank-max).

    Row keys: kind, op, size (bytes as nccl-tests counts them), count, dtype, group_size, groups,
    wrong (-1 when the size is too small for the op), suite / raw (and raw_again with
    ``spec.noise_floor``: per-op seconds per round), timer (what timed every round of every variant).
    """
    layout = build_layout(ParallelConfig(**spec.config))
    kinds = measured_kinds(spec)
    groups.initialize_groups(layout)
    try:
        world = groups.get_world_group()
        dtype = DTYPES[spec.dtype]
        element_size = torch.tensor([], dtype=dtype).element_size()
        timer_name = type(platform.get().timer()).__name__
        rows = []
        for kind in kinds:
            g = groups.get_group(kind)
            for op in spec.ops:
                for size in spec.sizes:
                    count = element_count(op, size, element_size, g.world_size)
                    row = {"kind": kind, "op": op, "size": count * element_size, "requested_size": size,
                           "count": count, "dtype": spec.dtype, "group_size": g.world_size,
                           "groups": len(layout[kind]), "timer": timer_name}
                    if count == 0:
                        rows.append({**row, "wrong": -1, "suite": [], "raw": [],
                                     **({"raw_again": []} if spec.noise_floor else {})})
                        continue
                    prepared = prepare(op, g, count, dtype)
                    wrong = prepared.check()
                    for _ in range(spec.warmup):
                        prepared.suite()
                        prepared.raw()
                    samples = _timed_rounds(prepared, spec, world.barrier)
                    merged = rank_max([float(wrong), *(t for name in samples for t in samples[name])], world)
                    row["wrong"] = int(merged[0])
                    for index, name in enumerate(samples):
                        row[name] = merged[1 + index * spec.rounds: 1 + (index + 1) * spec.rounds]
                    rows.append(row)
        return rows
    finally:
        groups.destroy_groups()


# -- presenting ---------------------------------------------------------------------------------

def summarize(row: dict) -> dict:
    """Derived figures of a row: median per-op time (us), algbw / busbw (GB/s), raw time, and the
    suite/raw ratio (:func:`overhead_ratio`)."""
    if not row["suite"]:
        return {"time_us": None, "algbw": None, "busbw": None, "raw_us": None, "ratio": None, "noise": None}
    suite, raw = statistics.median(row["suite"]), statistics.median(row["raw"])
    algbw, busbw = bandwidths(row["op"], row["size"], suite, row["group_size"])
    return {"time_us": suite * 1e6, "algbw": algbw, "busbw": busbw, "raw_us": raw * 1e6,
            "ratio": overhead_ratio(row["suite"], row["raw"]),
            "noise": overhead_ratio(row["raw_again"], row["raw"]) if row.get("raw_again") else None}


def overhead_ratio(suite: Sequence[float], raw: Sequence[float]) -> float | None:
    """Median over rounds of suite time / raw time. Each round times both back to back, so the
    per-round ratio cancels the slow drift of a shared host that a ratio of medians would keep."""
    ratios = [s / r for s, r in zip(suite, raw) if r > 0]
    return statistics.median(ratios) if ratios else None


def format_table(rows: Sequence[dict], world_size: int, spec: SweepSpec) -> str:
    """nccl-tests-like tables, one per (kind, op); sizes in bytes, times the median over rounds of the
    per-op time of the slowest rank."""
    lines: list[str] = []
    current = None
    noise = spec.noise_floor
    for row in rows:
        if (row["kind"], row["op"]) != current:
            current = (row["kind"], row["op"])
            lines += ["", f"# {row['op']} on {row['kind']}: {row['groups']} group(s) of {row['group_size']} ranks, "
                          f"world {world_size}, {spec.iters} iters x {spec.rounds} rounds, warmup {spec.warmup}, "
                          f"timer {row['timer']}",
                      f"#{'size':>11} {'count':>11} {'type':>8} {'time(us)':>10} {'algbw(GB/s)':>12} "
                      f"{'busbw(GB/s)':>12} {'#wrong':>7} {'raw(us)':>10} {'suite/raw':>10}"
                      + (f" {'raw/raw':>8}" if noise else "")]
        figures = summarize(row)
        kind_name = NCCL_TYPE_NAMES.get(row["dtype"], row["dtype"])
        if figures["time_us"] is None:
            lines.append(f" {row['requested_size']:>11} {0:>11} {kind_name:>8} {'too small for ' + str(row['group_size']) + ' ranks':>41}")
            continue
        lines.append(f" {row['size']:>11} {row['count']:>11} {kind_name:>8} {figures['time_us']:>10.2f} "
                     f"{figures['algbw']:>12.4f} {figures['busbw']:>12.4f} {row['wrong']:>7} "
                     f"{figures['raw_us']:>10.2f} {figures['ratio']:>10.3f}"
                     + (f" {figures['noise']:>8.3f}" if noise else ""))
    measured = [summarize(row) for row in rows if row["suite"]]
    if measured:
        lines += ["", "# " + _spread("suite/raw time ratio", [m["ratio"] for m in measured])
                  + f"; #wrong total {sum(max(row['wrong'], 0) for row in rows)}"]
        if noise:
            lines.append("# " + _spread("raw/raw (A/A noise floor)", [m["noise"] for m in measured]))
    return "\n".join(lines).lstrip("\n")


def _spread(label: str, ratios: Sequence[float]) -> str:
    return (f"{label}: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f} "
            f"over {len(ratios)} measurements")


def benchmark_entries(rows: Sequence[dict], world_size: int, spec: SweepSpec, platform_name: str,
                      test_prefix: str = "benchmarks/collectives.py::collective") -> list[dict]:
    """pytest-benchmark entries (see :mod:`ascend_conformance.report.benchmark_json`): one per
    measured row for the suite's timing and one for the raw loop, figures in ``extra_info``."""
    from ascend_conformance.report.benchmark_json import benchmark_entry

    entries = []
    for row in rows:
        if not row["suite"]:
            continue
        for loop in ("suite", "raw"):
            samples = row[loop]
            median = statistics.median(samples)
            algbw, busbw = bandwidths(row["op"], row["size"], median, row["group_size"])
            params = {"op": row["op"], "group": row["kind"], "dtype": row["dtype"], "size": row["size"],
                      "world_size": world_size}
            param_id = f"{row['op']}-{row['kind']}-{row['dtype']}-{row['size']}B-w{world_size}"
            name = f"{'collective' if loop == 'suite' else 'collective_raw_loop'}[{param_id}]"
            entries.append(benchmark_entry(
                name, f"{test_prefix}{'' if loop == 'suite' else '_raw_loop'}[{param_id}]", samples,
                params=params, group=f"{row['op']} {row['kind']} w{world_size}", iterations=spec.iters,
                extra_info={
                    "op": row["op"], "group": row["kind"], "group_kind": row["kind"], "group_size": row["group_size"],
                    "groups": row["groups"], "world_size": world_size, "platform": platform_name,
                    "dtype": row["dtype"], "size_bytes": row["size"], "count": row["count"],
                    "algbw_gbps": algbw, "busbw_gbps": busbw, "wrong": row["wrong"], "time_us": median * 1e6,
                    "loop": loop, "variant": f"group={row['kind']},loop={loop}", "timer": row["timer"],
                    "warmup": spec.warmup, "rounds": spec.rounds,
                    "overhead_ratio": overhead_ratio(row["suite"], row["raw"]) if loop == "suite" else None,
                    "noise_floor_ratio": overhead_ratio(row["raw_again"], row["raw"]) if row.get("raw_again") else None,
                    "config": ParallelConfig(**spec.config).describe()}))
    return entries


def representative_config(world_size: int) -> dict:
    """The layout the suite and the benchmark use for a world size (ParallelConfig fields)."""
    presets = {
        8: dict(world_size=8, tp=2, pp=2, dp=2, otp=2, flashcomm2_otp=2, layer_sharding=True),
        4: dict(world_size=4, tp=4, pp=1, dp=1, flashcomm2_otp=2, layer_sharding=True, kv_producer=True,
                pd_tp_ratio=2, pd_head_ratio=2),
        2: dict(world_size=2, tp=1, pp=1, dp=2, lmhead_tp=2, embed_tp=2, mlp_tp=2, flashcomm2_otp=1,
                layer_sharding=True),
    }
    return dict(presets.get(world_size, dict(world_size=world_size, tp=world_size, pp=1, dp=1)))
