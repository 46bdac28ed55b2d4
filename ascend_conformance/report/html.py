"""The static HTML report: one self-contained file (``reports/index.html``) that opens from disk.

Sections: the verdict (overall — ``incomplete`` with "k of n tests have records" when a session did not
finish — then per system under test × area, and per area), failures with their evidence and repro
commands, the known divergences (every xfailed test with its expectation's finding and reference), the
conformance matrix (per area: every feature's configurations per system under test, coloured by outcome, with skip reasons),
performance (latency and busbw against size per collective, dispatch/combine per MoE method, time per
benchmark of the other areas, memory per feature, EPLB balancedness, and every benchmark as a table), figures the tests recorded, the layout
invariant findings, and the environment. A section without data says so and what produces it.

Inputs: merged results (``results.load``) and benchmark rows (``benchmarks.load_all``). Plots are
matplotlib (Agg) PNGs inlined as base64; the page is the Jinja2 template ``templates/report.html.j2`` with
autoescaping; no scripts, no external resources.
"""
from __future__ import annotations

import base64
import collections
import datetime
import io
import os
from collections.abc import Iterable, Mapping

from ascend_conformance.expectations import split_reason
from ascend_conformance.report import results as results_mod
from ascend_conformance.report import sut_labels
from ascend_conformance.report.benchmarks import BenchRow
from ascend_conformance.report.baseline import human_bytes, human_seconds

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
TEMPLATE = "report.html.j2"  # the page (Jinja2, autoescaped), shipped as package data
_UNIT_BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1e3, "MB": 1e6, "GB": 1e9,
               "bytes": 1}


# ----------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _series_label(row: BenchRow) -> str:
    kind = str(row.extra.get("group_kind") or "")
    parts = [f"{row.world_size} ranks" if row.world_size else "", row.dtype, row.variant,
             kind if kind and kind not in row.variant else ""]
    return ", ".join(p for p in parts if p) or row.name


def collective_plots(rows: list[BenchRow]) -> list[dict]:
    """Per collective: latency and busbw against message size, one line per world size / dtype / group."""
    plt = _pyplot()
    by_op: dict[str, list[BenchRow]] = collections.defaultdict(list)
    for row in rows:
        if row.size and row.mean is not None:
            by_op[row.op].append(row)
    plots = []
    for op, op_rows in sorted(by_op.items()):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        series: dict[str, list[BenchRow]] = collections.defaultdict(list)
        for row in op_rows:
            series[_series_label(row)].append(row)
        for label, points in sorted(series.items()):
            points.sort(key=lambda r: r.size)
            sizes = [p.size for p in points]
            left.plot(sizes, [p.mean * 1e6 for p in points], marker="o", markersize=3, label=label)
            if any(p.busbw is not None for p in points):
                right.plot(sizes, [p.busbw if p.busbw is not None else float("nan") for p in points], marker="o",
                           markersize=3, label=label)
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("message size (bytes)")
            axis.grid(True, which="both", alpha=0.3)
        left.set_yscale("log")
        left.set_ylabel("time (us, max over ranks)")
        left.set_title(f"{op}: latency")
        right.set_ylabel("busbw (GB/s)")
        right.set_title(f"{op}: bus bandwidth")
        left.legend(fontsize=7)
        plots.append({"title": f"{op}: latency and busbw against size", "png": _png(fig)})
    return plots


def moe_plots(rows: list[BenchRow]) -> list[dict]:
    """Dispatch / combine time per method (grouped bars), and peak memory per method where measured."""
    plt = _pyplot()
    timed = [r for r in rows if r.mean]
    if not timed:
        return []

    def method_of(row: BenchRow) -> str:
        return str(row.extra.get("method") or row.op)

    times = {(method_of(r), r.phase or "time"): r.mean * 1e6 for r in timed}
    methods = sorted({m for m, _ in times})
    phases = sorted({p for _, p in times})
    fig, axes = plt.subplots(1, 2 if any(r.memory for r in rows) else 1, figsize=(10, 3.6), squeeze=False)
    axis = axes[0][0]
    width = 0.8 / len(phases)
    for i, phase in enumerate(phases):
        axis.bar([m + i * width for m in range(len(methods))], [times.get((m, phase), 0.0) for m in methods], width,
                 label=phase)
    axis.set_xticks([m + width * (len(phases) - 1) / 2 for m in range(len(methods))], methods, rotation=20, fontsize=8)
    axis.set_ylabel("time (us)")
    axis.set_title("MoE dispatch / combine per method")
    axis.legend(fontsize=7)
    if axes.shape[1] > 1:
        memory: dict[str, int] = {}
        for row in rows:
            if row.memory:
                memory[method_of(row)] = max(memory.get(method_of(row), 0), row.memory)
        mem_axis = axes[0][1]
        names = sorted(memory)
        mem_axis.bar(range(len(names)), [memory[n] / (1 << 20) for n in names], color="tab:purple")
        mem_axis.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        mem_axis.set_ylabel("peak memory (MiB)")
        mem_axis.set_title("MoE peak memory per method")
    return [{"title": "MoE dispatch / combine per method", "png": _png(fig)}]


def time_bars(area: str, rows: list[BenchRow]) -> list[dict]:
    """Mean time per benchmark of one area (horizontal bars with the min-max range)."""
    rows = sorted((r for r in rows if r.mean), key=lambda r: (r.op, r.variant, r.world_size or 0, r.size or 0))
    if not rows:
        return []
    plt = _pyplot()
    labels = [f"{r.op}" + (f" [{r.variant}]" if r.variant else "") + (f" ({r.world_size} ranks)" if r.world_size else "")
              for r in rows]
    fig, axis = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.2))
    means = [r.mean * 1e3 for r in rows]
    spread = [[(r.mean - (r.min if r.min is not None else r.mean)) * 1e3 for r in rows],
              [((r.max if r.max is not None else r.mean) - r.mean) * 1e3 for r in rows]]
    axis.barh(range(len(rows)), means, xerr=spread, color="tab:blue", ecolor="#555", capsize=2)
    axis.set_yticks(range(len(rows)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("mean time (ms)")
    axis.set_title(f"{area}: time per benchmark")
    axis.grid(True, axis="x", alpha=0.3)
    return [{"title": f"{area}: time per benchmark", "png": _png(fig)}]


def memory_plot(items: list[tuple[str, float]]) -> list[dict]:
    if not items:
        return []
    plt = _pyplot()
    items = sorted(items)
    fig, axis = plt.subplots(figsize=(10, 0.35 * len(items) + 1.2))
    values = [v / (1 << 20) for _, v in items]
    axis.barh(range(len(items)), values, color="tab:purple")
    axis.set_yticks(range(len(items)), [k for k, _ in items], fontsize=8)
    axis.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 100:  # KiB next to GiB: a linear axis hides the small ones
        axis.set_xscale("log")
    axis.set_xlabel("peak memory (MiB)")
    axis.set_title("Peak memory per feature")
    axis.grid(True, axis="x", alpha=0.3)
    return [{"title": "Peak memory per feature", "png": _png(fig)}]


def balancedness_plot(items: list[tuple[str, str, float]]) -> list[dict]:
    """Grouped bars: one group per load, one bar per placement (mean load / max load, 1 = perfect)."""
    if not items:
        return []
    plt = _pyplot()
    loads = sorted({load for load, _, _ in items})
    placements = sorted({placement for _, placement, _ in items})
    width = 0.8 / len(placements)
    fig, axis = plt.subplots(figsize=(8, 3.4))
    for i, placement in enumerate(placements):
        values = {load: value for load, p, value in items if p == placement}
        axis.bar([x + i * width for x in range(len(loads))], [values.get(load, 0.0) for load in loads], width,
                 label=placement)
    axis.set_xticks([x + width * (len(placements) - 1) / 2 for x in range(len(loads))], loads, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("balancedness (mean / max load)")
    axis.set_title("EPLB balancedness")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [{"title": "EPLB balancedness", "png": _png(fig)}]


# ----------------------------------------------------------------------------------------------------
# Page model
# ----------------------------------------------------------------------------------------------------

def _bench_table(rows: Iterable[BenchRow]) -> list[dict]:
    return [{"area": r.area, "op": r.op, "variant": r.variant or "", "world": r.world_size or "",
             "size": human_bytes(r.size) if r.size is not None else "", "dtype": r.dtype,
             "mean": human_seconds(r.mean), "min": human_seconds(r.min),
             "stddev": human_seconds(r.stddev) if r.stddev is not None else "", "rounds": r.rounds or "",
             "algbw": f"{r.algbw:.3g}" if r.algbw is not None else "",
             "busbw": f"{r.busbw:.3g}" if r.busbw is not None else "",
             "memory": human_bytes(r.memory) if r.memory is not None else "", "name": r.name,
             "file": os.path.basename(r.file)}
            for r in sorted(rows, key=lambda r: (r.area, r.op, r.variant, r.world_size or 0, r.size or 0, r.dtype))]


def _figure_bytes(figure: Mapping) -> float | None:
    scale = _UNIT_BYTES.get(str(figure.get("unit", "")))
    value = figure.get("value")
    if scale is None or not isinstance(value, (int, float)):
        return None
    return float(value) * scale


def _matrix(tests: list[Mapping]) -> dict:
    """area -> {"features": [((feature, sut), [test, ...])], "skips": [(reason, count)]}."""
    matrix: dict[str, dict] = {}
    for test in tests:
        area = matrix.setdefault(test.get("area") or "other", {"features": {}, "skips": collections.Counter()})
        area["features"].setdefault((test.get("feature") or "", results_mod.sut_of(test)), []).append(test)
        if test.get("outcome") in ("skipped", "not_in_release"):
            area["skips"][test.get("reason") or "(no reason given)"] += 1
    order = list(results_mod.AREAS)
    out = {}
    for name in sorted(matrix, key=lambda a: (order.index(a) if a in order else len(order), a)):
        area = matrix[name]
        features = sorted(area["features"].items(), key=lambda kv: (kv[0][0], sut_labels.sort_key(kv[0][1])))
        out[name] = {"features": features, "skips": area["skips"].most_common()}
    return out


def _sut_matrix(by_sut: Mapping[str, Mapping]) -> dict:
    """The verdict per system under test × area: columns (one per SUT, with the ops it ran on) and rows
    (one per area, a cell per column: None where that SUT has no test of the area)."""
    columns = []
    for sut, entry in by_sut.items():
        ran_on = [f"{', '.join(entry.get('ops') or [])} ops" if entry.get("ops") else "",
                  f"emulating {', '.join(entry['device_types'])}" if entry.get("device_types") else ""]
        columns.append({"sut": sut, "verdict": entry["verdict"], "ran_on": "; ".join(p for p in ran_on if p)})
    areas = sorted({area for entry in by_sut.values() for area in entry["areas"]},
                   key=lambda a: (results_mod.AREAS.index(a) if a in results_mod.AREAS else len(results_mod.AREAS), a))
    rows = [{"area": area, "cells": [_cell(by_sut[c["sut"]]["areas"].get(area)) for c in columns]} for area in areas]
    return {"columns": columns, "rows": rows}


def _cell(counts: Mapping | None) -> dict | None:
    if counts is None:
        return None
    shown = [(name, counts.get(name, 0)) for name in (*results_mod.OUTCOMES, "missing") if counts.get(name, 0)]
    return {"verdict": counts["verdict"], "counts": ", ".join(f"{n} {name}" for name, n in shown)}


def _divergences(tests: list[Mapping]) -> list[dict]:
    """Every xfailed test: the known divergence (the expectation's finding and reference, as the xfail
    reason) and what this run observed, grouped by system under test."""
    rows = []
    for test in tests:
        if test.get("outcome") != "xfailed":
            continue
        finding, reference = split_reason(test.get("reason") or "(no reason given)")
        rows.append({"sut": results_mod.sut_of(test), "nodeid": test["nodeid"], "area": test.get("area", ""),
                     "finding": finding, "reference": reference, "observed": test.get("observed", "")})
    return sorted(rows, key=lambda r: (sut_labels.sort_key(r["sut"]), r["area"], r["nodeid"]))


def _load_label(row: BenchRow) -> str:
    label = str(row.extra.get("load") or row.variant or row.name)
    if row.extra.get("replicas") is not None:
        label += f" R={row.extra['replicas']}"
    return label


def _when(epoch) -> str:
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S") if epoch else ""


def _session_row(session) -> dict:
    if not isinstance(session, Mapping):  # older documents listed bare ids
        return {"session": str(session), "started": "", "tests": "", "recorded": "", "finished": ""}
    collected = session.get("collected")
    finished = session.get("finished")
    return {"session": session.get("session", ""), "started": _when(session.get("started")),
            "tests": session.get("tests", ""),
            "recorded": (f"{session.get('recorded', '')} of {collected}" if collected is not None
                         else str(session.get("recorded", ""))),
            "finished": (_when(finished) if finished else "no completion mark" if "finished" in session else "")}


def build_context(document: Mapping, bench_rows: list[BenchRow], title: str = "ascend-conformance report") -> dict:
    tests = list(document.get("tests") or [])
    summary = document.get("summary") or results_mod.summarize(tests)
    completeness = document.get("completeness") or {"complete": True, "text": ""}
    verdict = document.get("verdict") or results_mod.overall_verdict(summary, completeness["complete"])
    by_sut = document.get("by_sut") or results_mod.summarize_by_sut(tests)
    totals = collections.Counter(t.get("outcome") for t in tests)

    collective_rows = [r for r in bench_rows if r.area == "collectives" or (r.busbw is not None and r.size)]
    moe_rows = [r for r in bench_rows if r.area == "moe" and r.phase and r not in collective_rows]
    other_rows: dict[str, list[BenchRow]] = collections.defaultdict(list)
    for row in bench_rows:
        if row not in collective_rows and row not in moe_rows and row.mean:
            other_rows[row.area].append(row)
    memory_items = [(f"{r.area}: {r.op}" + (f" [{r.variant}]" if r.variant else "")
                     + (f" ({r.world_size} ranks)" if r.world_size else ""), float(r.memory))
                    for r in bench_rows if r.memory]
    balancedness_items = [(_load_label(r), str(r.extra.get("placement") or r.op), float(r.extra["balancedness"]))
                          for r in bench_rows if isinstance(r.extra.get("balancedness"), (int, float))]
    figures = []
    for test in tests:
        for figure in test.get("figures") or []:
            figures.append({"nodeid": test["nodeid"], **figure})
            as_bytes = _figure_bytes(figure)
            if as_bytes is not None and "memory" in str(figure.get("name", "")).lower():
                memory_items.append((f"{test.get('area')}: {test.get('feature')} [{test.get('story')}] "
                                     f"{figure['name']}", as_bytes))
            if str(figure.get("name", "")).startswith("balancedness") and isinstance(figure.get("value"), (int, float)):
                context = figure.get("context") or {}
                balancedness_items.append((str(context.get("load") or test.get("story")),
                                           str(context.get("placement") or figure["name"]), float(figure["value"])))
        for name, value in test.get("properties") or []:  # pytest's record_property
            figures.append({"nodeid": test["nodeid"], "name": name, "value": value, "unit": "",
                            "source": "record_property"})
    findings = [dict(f, nodeid=t["nodeid"]) for t in tests for f in (t.get("findings") or []) if "rule" in f]
    checked = [dict(f, nodeid=t["nodeid"]) for t in tests for f in (t.get("findings") or []) if f.get("checked")]
    failures = [t for t in tests if t.get("outcome") in results_mod.FAILING or t.get("outcome") == "xpassed"]
    environment = document.get("environment") or {}
    return {
        "title": title,
        "generated": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "verdict": verdict,
        "completeness": completeness,
        "sut_matrix": _sut_matrix(by_sut),
        "divergences": _divergences(tests),
        "totals": {o: totals.get(o, 0) for o in results_mod.OUTCOMES},
        "total": len(tests),
        "summary": summary,
        "failures": failures,
        "matrix": _matrix(tests),
        "collective_plots": collective_plots(collective_rows) if collective_rows else [],
        "moe_plots": moe_plots(moe_rows) if moe_rows else [],
        "memory_plots": memory_plot(memory_items),
        "other_plots": [plot for area, rows in sorted(other_rows.items()) for plot in time_bars(area, rows)],
        "balancedness_plots": balancedness_plot(balancedness_items),
        "balancedness_items": sorted(balancedness_items),
        "bench_table": _bench_table(bench_rows),
        "bench_files": sorted({os.path.basename(r.file) for r in bench_rows}),
        "figures": figures,
        "findings": findings,
        "checked": checked,
        "environment": {k: v for k, v in environment.items() if k not in ("started",)},
        "sessions": [_session_row(s) for s in document.get("sessions") or []],
        "platform": environment.get("platform", "unknown"),
        "device_model": environment.get("device_model", ""),
    }


def render(document: Mapping, bench_rows: list[BenchRow], title: str = "ascend-conformance report") -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**build_context(document, bench_rows, title))


def write(path: str, document: Mapping, bench_rows: list[BenchRow], title: str = "ascend-conformance report") -> str:
    page = render(document, bench_rows, title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(tmp, path)
    return path
