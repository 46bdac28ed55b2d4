"""Reading benchmark JSON (pytest-benchmark's schema) into flat rows for the HTML report and ``compare``.

A file is ``{"machine_info": {...}, "commit_info": {...}, "benchmarks": [{"name", "fullname", "group",
"params", "extra_info", "stats": {"mean", "min", "median", "stddev", "rounds", ...}}], "datetime",
"version"}``; times in ``stats`` are seconds. The suite's figures travel in ``extra_info`` (and in
``params`` for the parametrised ones). These names are understood (first one present wins):

=============  ================================================================================
op             ``op``, ``collective``, ``method``, ``feature``, else ``group``, else the name
size (bytes)   ``size_bytes``, ``bytes``, ``nbytes``, ``message_bytes``, ``size``
dtype          ``dtype``
world size     ``world_size``, ``ranks``, ``nranks``
area           ``area``, else the module in ``fullname`` (``suites/test_moe_x.py`` or ``benchmarks/moe.py``,
               results.AREA_BY_MODULE_PREFIX)
busbw / algbw  ``busbw_gbps`` / ``algbw_gbps`` (GB/s), or ``busbw`` / ``algbw``
memory         ``peak_memory_bytes``, ``peak_bytes``, ``memory_bytes``
balancedness   ``balancedness`` (mean over layers), with ``placement``, ``load`` (and ``replicas``) naming
               the case
variant        ``variant``: anything else that tells two cases of one op apart (e.g. ``group=tp``,
               ``load=zipf1.0``); part of the comparison key
phase          ``phase`` (e.g. dispatch / combine), ``group_kind`` (tp / ep / ...)
=============  ================================================================================

platform / device model come from ``machine_info`` (``platform``, ``device_model`` — what
``environment.machine_info()`` writes), else from ``extra_info``, else ``"unknown"``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping

from ascend_conformance.report.results import area_of_module, split_nodeid

_OP_KEYS = ("op", "collective", "method", "feature")
_SIZE_KEYS = ("size_bytes", "bytes", "nbytes", "message_bytes", "size")
_WORLD_KEYS = ("world_size", "ranks", "nranks")
_MEMORY_KEYS = ("peak_memory_bytes", "peak_bytes", "memory_bytes")


@dataclasses.dataclass
class BenchRow:
    file: str
    name: str
    fullname: str
    group: str
    area: str
    platform: str
    device_model: str
    world_size: int | None
    op: str
    size: int | None
    dtype: str
    mean: float | None  # seconds
    min: float | None
    max: float | None
    median: float | None
    stddev: float | None
    rounds: int | None
    algbw: float | None  # GB/s
    busbw: float | None
    memory: int | None  # bytes
    variant: str
    extra: dict

    @property
    def key(self) -> tuple:
        """The identity a baseline is matched on: (platform, device model, world size, op, size, dtype,
        variant)."""
        return (self.platform, self.device_model, self.world_size, self.op, self.size, self.dtype, self.variant)

    @property
    def phase(self) -> str:
        return str(self.extra.get("phase") or "")


def _first(mappings: Iterable[Mapping], keys: Iterable[str]):
    for key in keys:
        for mapping in mappings:
            if isinstance(mapping, Mapping) and mapping.get(key) not in (None, ""):
                return mapping[key]
    return None


def _number(value, kind=float):
    if value is None or isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def rows_from_document(document: Mapping, file: str = "") -> list[BenchRow]:
    machine = document.get("machine_info") or {}
    rows = []
    for bench in document.get("benchmarks") or []:
        extra = dict(bench.get("extra_info") or {})
        params = dict(bench.get("params") or {})
        stats = bench.get("stats") or {}
        sources = (extra, params)
        fullname = str(bench.get("fullname") or bench.get("name") or "")
        name = str(bench.get("name") or fullname)
        area = extra.get("area")
        if not area and "::" in fullname:  # the module of a node id: suites/test_x.py or benchmarks/x.py
            area = area_of_module(split_nodeid(fullname)[0])
        op = _first(sources, _OP_KEYS) or bench.get("group") or name.split("[")[0]
        rows.append(BenchRow(
            file=file, name=name, fullname=fullname, group=str(bench.get("group") or ""), area=str(area or "other"),
            platform=str(machine.get("platform") or extra.get("platform") or "unknown"),
            device_model=str(machine.get("device_model") or extra.get("device_model") or "unknown"),
            world_size=_number(_first(sources, _WORLD_KEYS), int), op=str(op),
            size=_number(_first(sources, _SIZE_KEYS), int), dtype=str(_first(sources, ("dtype",)) or ""),
            mean=_number(stats.get("mean")), min=_number(stats.get("min")), max=_number(stats.get("max")), median=_number(stats.get("median")),
            stddev=_number(stats.get("stddev")), rounds=_number(stats.get("rounds"), int),
            algbw=_number(_first(sources, ("algbw_gbps", "algbw"))),
            busbw=_number(_first(sources, ("busbw_gbps", "busbw"))),
            memory=_number(_first(sources, _MEMORY_KEYS), int), variant=str(_first(sources, ("variant",)) or ""),
            extra=extra))
    return rows


def is_benchmark_document(document) -> bool:
    return isinstance(document, Mapping) and isinstance(document.get("benchmarks"), list) \
        and "machine_info" in document


def load_file(path: str) -> list[BenchRow]:
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    if not is_benchmark_document(document):
        raise ValueError(f"{path}: not benchmark JSON in pytest-benchmark's schema "
                         "(needs 'machine_info' and a 'benchmarks' list)")
    return rows_from_document(document, path)


# Directories that never hold benchmark JSON (Allure writes thousands of small JSON files).
SKIP_DIRS = ("allure-results", "allure-report", "results", "node_modules", ".git")


def find_files(paths: Iterable[str]) -> list[str]:
    """Benchmark JSON files among `paths` (files, or directories searched recursively, skipping
    ``SKIP_DIRS``)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            candidates = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                candidates.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".json"))
        else:
            candidates = [path]
        for candidate in candidates:
            try:
                with open(candidate, encoding="utf-8") as handle:
                    if is_benchmark_document(json.load(handle)):
                        found.append(candidate)
            except (OSError, ValueError, UnicodeDecodeError):
                continue
    return found


def load_all(paths: Iterable[str]) -> list[BenchRow]:
    rows: list[BenchRow] = []
    for path in find_files(paths):
        rows.extend(load_file(path))
    return rows
