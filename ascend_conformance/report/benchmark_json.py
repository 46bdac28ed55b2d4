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
and the sample is already divided by it (pytest-benchmark stores per-operation times too). Statistics
follow pytest-benchmark's definitions (quartiles by its methods 2 / 3, Tukey fences at 1.5 IQR) so a
comparison against a baseline written by pytest-benchmark itself is like for like.

The suite's figures go in ``extra_info`` with the names ``report.benchmarks`` reads: ``op``,
``size_bytes``, ``dtype``, ``world_size``, ``algbw_gbps``, ``busbw_gbps``, ``variant``, ``platform``, plus
anything else the producer wants to keep (``wrong``, ``group``, ``count``, ...).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import subprocess
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence


def _quartiles(data: list[float]) -> tuple[float, float]:
    """(q1, q3) of sorted ``data`` as pytest-benchmark computes them (methods 3 and 2 of
    https://en.wikipedia.org/wiki/Quartile#Computing_methods)."""
    rounds = len(data)
    if rounds == 1:
        return data[0], data[0]
    if rounds % 2:
        n, q = rounds // 4, rounds % 4
        if q == 1:
            return 0.25 * data[n - 1] + 0.75 * data[n], 0.75 * data[3 * n] + 0.25 * data[3 * n + 1]
        return 0.75 * data[n] + 0.25 * data[n + 1], 0.25 * data[3 * n + 1] + 0.75 * data[3 * n + 2]
    return statistics.median(data[: rounds // 2]), statistics.median(data[rounds // 2:])


def stats_from_samples(samples: Sequence[float], iterations: int = 1, include_data: bool = True) -> dict:
    """pytest-benchmark's ``stats`` block for per-operation times ``samples`` (seconds, one per round).

    >>> s = stats_from_samples([2.0, 1.0, 4.0, 3.0])
    >>> s["median"], s["q1"], s["q3"], s["iqr"], s["ops"]
    (2.5, 1.5, 3.5, 2.0, 0.4)
    """
    data = [float(x) for x in samples]
    if not data:
        raise ValueError("no samples: a benchmark needs at least one round")
    if any(math.isnan(x) or x < 0 for x in data):
        raise ValueError(f"samples must be non-negative seconds, got {data}")
    ordered = sorted(data)
    mean = statistics.mean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0
    q1, q3 = _quartiles(ordered)
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    stddev_outliers = sum(1 for x in data if x < mean - stddev or x > mean + stddev)
    iqr_outliers = sum(1 for x in data if x < low or x > high)
    if len(data) == 1:
        ld15iqr = hd15iqr = data[0]
    else:
        # lowest / highest datum still within 1.5 IQR of the quartiles (pytest-benchmark >= 5.3;
        # 5.2 returned the first datum *above* the upper fence)
        ld15iqr = ordered[bisect_left(ordered, low)]
        hd15iqr = ordered[bisect_right(ordered, high) - 1]
    total = sum(data)
    stats = {
        "min": ordered[0], "max": ordered[-1], "mean": mean, "stddev": stddev, "rounds": len(data),
        "median": statistics.median(data), "iqr": iqr, "q1": q1, "q3": q3, "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers, "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": ld15iqr, "hd15iqr": hd15iqr, "ops": len(data) / total if total else 0, "total": total,
    }
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
