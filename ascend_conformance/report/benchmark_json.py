"""Writing benchmark figures in pytest-benchmark's JSON schema, so ``pytest-benchmark compare`` and
:mod:`ascend_conformance.report.benchmarks` read them like any pytest-benchmark run.

A document (pytest-benchmark 5.x, ``pytest_benchmark_generate_json`` + ``Metadata.as_dict``)::

    {"machine_info": {...}, "commit_info": {"id", "time", "author_time", "dirty", "project", "branch"},
     "benchmarks": [{"group", "name", "fullname", "params", "param", "extra_info", "options",
                     "stats": {"min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3",
                               "iqr_outliers", "stddev_outliers", "outliers", "ld15iqr", "hd15iqr",
                               "ops", "total", "data", "iterations"}}],
     "datetime": "<ISO 8601, UTC>", "version": "<pytest-benchmark version>"}

Times are seconds. One *round* is one timed sample; ``iterations`` says how many operations it covered,
and the sample is already divided by it (pytest-benchmark stores per-operation times too). The statistics
are pytest-benchmark's own (``pytest_benchmark.stats.Stats``), so a comparison against a baseline written
by pytest-benchmark itself is like for like.

The suite's figures go in ``extra_info`` with the names ``report.benchmarks`` reads: ``op``,
``size_bytes``, ``dtype``, ``world_size``, ``algbw_gbps``, ``busbw_gbps``, ``variant``, ``platform``, plus
anything else the producer wants to keep (``wrong``, ``group``, ``count``, ...).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
from collections.abc import Mapping, Sequence


def stats_from_samples(samples: Sequence[float], iterations: int = 1, include_data: bool = True) -> dict:
    """pytest-benchmark's ``stats`` block for per-operation times ``samples`` (seconds, one per round).

    >>> s = stats_from_samples([2.0, 1.0, 4.0, 3.0])
    >>> s["median"], s["q1"], s["q3"], s["iqr"], s["ops"]
    (2.5, 1.5, 3.5, 2.0, 0.4)
    """
    # pytest-benchmark (>= 5.3: its hd15iqr is the highest datum within the fence) is a dev dependency;
    # only writing benchmark JSON needs it, reading and comparing does not.
    from pytest_benchmark.stats import Stats

    data = [float(x) for x in samples]
    if not data:
        raise ValueError("no samples: a benchmark needs at least one round")
    if any(math.isnan(x) or x < 0 for x in data):
        raise ValueError(f"samples must be non-negative seconds, got {data}")
    computed = Stats()
    for value in data:
        computed.update(value)
    stats = computed.as_dict()
    if include_data:
        stats["data"] = data
    stats["iterations"] = int(iterations)
    return stats


def benchmark_entry(name: str, fullname: str, samples: Sequence[float], *, params: Mapping | None = None,
                    extra_info: Mapping | None = None, group: str | None = None, iterations: int = 1,
                    options: Mapping | None = None) -> dict:
    """One element of ``benchmarks``: ``name`` as pytest shows it (``test_x[param-id]``), ``fullname``
    the node id, ``samples`` per-operation seconds per round."""
    params = dict(params) if params else None
    return {
        "group": group, "name": name, "fullname": fullname, "params": params,
        "param": "-".join(str(v) for v in params.values()) if params else None,
        "extra_info": dict(extra_info or {}), "options": dict(options or {}),
        "stats": stats_from_samples(samples, iterations),
    }


def _git(*args: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def commit_info(project: str = "ascend-conformance") -> dict:
    """pytest-benchmark's ``commit_info`` for the checkout this package runs from."""
    try:
        description = _git("describe", "--dirty", "--always", "--long", "--abbrev=40").split("-")
        dirty = description[-1] == "dirty"
        if dirty:
            description.pop()
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        return {"id": description[-1].lstrip("g"), "time": _git("show", "-s", "--pretty=format:%cI"),
                "author_time": _git("show", "-s", "--pretty=format:%aI"), "dirty": dirty, "project": project,
                "branch": "(detached head)" if branch == "HEAD" else branch}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"id": "unknown", "time": None, "author_time": None, "dirty": False, "project": project,
                "branch": "(unknown)", "error": repr(exc)}


def _pytest_benchmark_version() -> str:
    try:
        from importlib.metadata import version

        return version("pytest-benchmark")
    except Exception:  # noqa: BLE001 - not installed: the schema is still 5.x's
        return "5.2.3"


def document(benchmarks: Sequence[Mapping], machine_info: Mapping | None = None,
             commit: Mapping | None = None) -> dict:
    """A whole pytest-benchmark JSON document (machine and commit captured now when not given)."""
    if machine_info is None:
        from ascend_conformance.report.environment import machine_info as capture_machine_info

        machine_info = capture_machine_info()
    return {
        "machine_info": dict(machine_info), "commit_info": dict(commit or commit_info()),
        "benchmarks": [dict(b) for b in benchmarks],
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": _pytest_benchmark_version(),
    }


def write(path: str, doc: Mapping) -> str:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a file); return the path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2, ensure_ascii=True, default=str)
        handle.write("\n")
    os.replace(temporary, path)
    return path


def figure_entry(name: str, fullname: str, extra_info: Mapping, *, params: Mapping | None = None,
                 group: str | None = None) -> dict:
    """An element of ``benchmarks`` that carries figures but no timing (balancedness, memory): the
    schema requires ``stats``, so it holds one round of 0 s, and ``extra_info['timed']`` is False."""
    return benchmark_entry(name, fullname, [0.0], params=params, extra_info={**extra_info, "timed": False},
                           group=group)
