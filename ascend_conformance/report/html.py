"""The static HTML report: one self-contained file (``reports/index.html``) that opens from disk.

Sections: the verdict (overall — ``incomplete`` with "k of n tests have records" when a session did not
finish — then per system under test × area, and per area), failures with their evidence and repro
commands, the known divergences (every xfailed test with its expectation's finding and reference), the
conformance matrix (per area: every feature's configurations per system under test, coloured by outcome, with skip reasons),
performance (latency and busbw against size per collective, dispatch/combine per MoE method, time per
benchmark of the other areas, memory per feature, EPLB balancedness, and every benchmark as a table), figures the tests recorded, the layout
invariant findings, and the environment. A section without data says so and what produces it.

Inputs: merged results (``results.load``) and benchmark rows (``benchmarks.load_all``). Plots are
matplotlib (Agg) PNGs inlined as base64; the page is a Jinja2 template with autoescaping; no scripts,
no external resources.
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

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE).render(**build_context(document, bench_rows, title))


def write(path: str, document: Mapping, bench_rows: list[BenchRow], title: str = "ascend-conformance report") -> str:
    page = render(document, bench_rows, title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(tmp, path)
    return path


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} — {{ verdict|upper }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { padding: 18px 28px; color: #fff; }
header.pass { background: #1f7a3f; } header.fail { background: #b3261e; }
header.skipped, header.no-results { background: #6b6f76; } header.incomplete { background: #8a5300; }
header h1 { margin: 0 0 4px; font-size: 22px; }
#verdict { font-size: 30px; font-weight: 700; letter-spacing: .04em; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 10px 18px 16px; margin: 16px 0; }
h2 { font-size: 18px; margin: 8px 0 10px; } h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e6e8eb; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: #555b65; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; }
.pass, .passed, .xfailed { background: #1f7a3f; } .fail, .failed, .error, .xpassed { background: #b3261e; }
.skipped, .no-tests { background: #8a8f96; } .incomplete { background: #b26a00; }
.chip { display: inline-block; margin: 1px 2px; padding: 0 6px; border-radius: 3px; font-size: 12px; color: #fff; }
.empty { color: #6b6f76; font-style: italic; }
pre { background: #f3f4f6; padding: 8px; overflow-x: auto; font-size: 12px; max-height: 420px; }
code { font-size: 12px; background: #f3f4f6; padding: 1px 4px; }
img.plot { max-width: 100%; display: block; margin: 8px 0; border: 1px solid #eceef1; }
details summary { cursor: pointer; }
nav a { margin-right: 14px; color: #fff; }
</style>
</head>
<body>
<header class="{{ verdict|replace(' ', '-') }}">
  <h1>{{ title }}</h1>
  <div><span id="verdict">{{ verdict|upper }}</span>
  &nbsp; {{ total }} tests: {% for outcome, count in totals.items() if count %}{{ count }} {{ outcome }}{% if not loop.last %}, {% endif %}{% endfor %}</div>
  {% if not completeness.complete %}<div id="completeness"><strong>Incomplete:</strong> {{ completeness.text }}</div>{% endif %}
  <div>{{ platform }}{% if device_model %} · {{ device_model }}{% endif %} · generated {{ generated }}{% if sessions|length > 1 %} · merged from {{ sessions|length }} pytest sessions{% endif %}</div>
  <nav><a href="#areas">areas</a><a href="#failures">failures</a><a href="#divergences">known divergences</a><a href="#matrix">matrix</a><a href="#performance">performance</a><a href="#figures">figures</a><a href="#findings">layout findings</a><a href="#environment">environment</a></nav>
</header>
<main>

<section id="areas">
<h2>Verdict per system under test and area</h2>
{% if summary %}
<table id="sut-matrix">
<tr><th>area</th>{% for c in sut_matrix.columns %}<th>{{ c.sut }} <span class="badge {{ c.verdict|replace(' ', '-') }}">{{ c.verdict }}</span>{% if c.ran_on %}<br><small>{{ c.ran_on }}</small>{% endif %}</th>{% endfor %}</tr>
{% for row in sut_matrix.rows %}
<tr><td>{{ row.area }}</td>{% for cell in row.cells %}<td>{% if cell %}<span class="badge {{ cell.verdict|replace(' ', '-') }}">{{ cell.verdict }}</span> {{ cell.counts }}{% else %}<span class="empty">—</span>{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</table>
<h3>Verdict per area (every system under test)</h3>
<table>
<tr><th>area</th><th>verdict</th><th>passed</th><th>failed</th><th>error</th><th>skipped</th><th>not in release</th><th>xfailed</th><th>xpassed</th><th>no record</th><th>total</th></tr>
{% for area, counts in summary.items() %}
<tr><td>{{ area }}</td><td><span class="badge {{ counts.verdict|replace(' ', '-') }}">{{ counts.verdict }}</span></td>
<td class="num">{{ counts.passed }}</td><td class="num">{{ counts.failed }}</td><td class="num">{{ counts.error }}</td>
<td class="num">{{ counts.skipped }}</td><td class="num">{{ counts.not_in_release }}</td><td class="num">{{ counts.xfailed }}</td><td class="num">{{ counts.xpassed }}</td><td class="num">{{ counts.missing|default(0) }}</td><td class="num">{{ counts.total }}</td></tr>
{% endfor %}
</table>
{% elif not completeness.complete %}
<p class="empty">No test finished before the session stopped ({{ completeness.text }}).</p>
{% else %}
<p class="empty">No test results: run <code>make conformance</code> (records land in reports/results/).</p>
{% endif %}
</section>

<section id="failures">
<h2>Failures ({{ failures|length }})</h2>
{% for test in failures %}
<details{% if loop.index <= 5 %} open{% endif %}>
<summary><span class="badge {{ test.outcome }}">{{ test.outcome }}</span> <code>{{ test.nodeid }}</code> — {{ test.reason }}</summary>
<p>repro: <code>{{ test.repro }}</code></p>
{% for a in test.attachments %}
{% if a.kind != "repro" %}
<h3>{{ a.name }}</h3>
{% if a.base64 is defined and a.mime.startswith("image/") %}<img class="plot" alt="{{ a.name }}" src="data:{{ a.mime }};base64,{{ a.base64 }}">
{% elif a.text is defined %}<pre>{{ a.text }}</pre>{% endif %}
{% endif %}
{% endfor %}
{% if test.longrepr %}<details><summary>full report</summary><pre>{{ test.longrepr }}</pre></details>{% endif %}
{% if test.captured is defined %}<details><summary>captured output</summary><pre>{{ test.captured }}</pre></details>{% endif %}
</details>
{% else %}
<p class="empty">No failures{% if not total %} (no results){% endif %}.</p>
{% endfor %}
</section>

<section id="divergences">
<h2>Known divergences ({{ divergences|length }})</h2>
<p>Tests that failed the way an expectation of the release under test says they would (a strict xfail accepting only a Divergence): the finding, its upstream reference, and what this run observed.</p>
{% if divergences %}
<table id="divergence-list">
<tr><th>system under test</th><th>test</th><th>finding</th><th>upstream reference</th><th>observed in this run</th></tr>
{% for d in divergences %}<tr><td>{{ d.sut }}</td><td><code>{{ d.nodeid }}</code></td><td>{{ d.finding }}</td><td>{{ d.reference }}</td><td>{{ d.observed }}</td></tr>{% endfor %}
</table>
{% else %}
<p class="empty">No known divergence was hit in this run (no xfailed tests).</p>
{% endif %}
</section>

<section id="matrix">
<h2>Conformance matrix</h2>
<p>Per area: each op / method and system under test, and its configurations, coloured by outcome (hover for the reason).</p>
{% for area, data in matrix.items() %}
<h3>{{ area }}</h3>
<table id="conformance-{{ area }}">
<tr><th>feature</th><th>system under test</th><th>configurations</th></tr>
{% for (feature, sut), tests in data.features %}
<tr><td>{{ feature }}</td><td>{{ sut }}</td><td>{% for t in tests %}<span class="chip {{ t.outcome }}" title="{{ t.outcome }}{% if t.reason %}: {{ t.reason }}{% endif %}">{{ t.story }}</span>{% endfor %}</td></tr>
{% endfor %}
</table>
{% if data.skips %}
<table><tr><th>skipped because</th><th>tests</th></tr>
{% for reason, count in data.skips %}<tr><td>{{ reason }}</td><td class="num">{{ count }}</td></tr>{% endfor %}
</table>
{% endif %}
{% else %}
<p class="empty">No test results to tabulate.</p>
{% endfor %}
</section>

<section id="performance">
<h2>Performance</h2>
{% if bench_files %}<p>From {{ bench_files|join(", ") }}.</p>{% endif %}
<h3 id="perf-collectives">Collectives: latency and busbw against size</h3>
{% for plot in collective_plots %}<img class="plot" alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.png }}">
{% else %}<p class="empty">No collective benchmarks in this run (<code>make bench</code> writes them).</p>{% endfor %}
<h3 id="perf-moe">MoE dispatch / combine per method</h3>
{% for plot in moe_plots %}<img class="plot" alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.png }}">
{% else %}<p class="empty">No MoE benchmarks in this run.</p>{% endfor %}
<h3 id="perf-other">Other benchmarks (time per benchmark, per area)</h3>
{% for plot in other_plots %}<img class="plot" alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.png }}">
{% else %}<p class="empty">No other timed benchmarks in this run.</p>{% endfor %}
<h3 id="perf-memory">Memory per feature</h3>
{% for plot in memory_plots %}<img class="plot" alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.png }}">
{% else %}<p class="empty">No memory measurements in this run.</p>{% endfor %}
<h3 id="perf-balancedness">EPLB balancedness</h3>
{% for plot in balancedness_plots %}<img class="plot" alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.png }}">
<table><tr><th>load</th><th>placement</th><th>balancedness</th></tr>
{% for load, placement, value in balancedness_items %}<tr><td>{{ load }}</td><td>{{ placement }}</td><td class="num">{{ "%.4f"|format(value) }}</td></tr>{% endfor %}
</table>
{% else %}<p class="empty">No balancedness figures in this run.</p>{% endfor %}
<h3>All benchmarks</h3>
{% if bench_table %}
<table>
<tr><th>area</th><th>op</th><th>variant</th><th>world</th><th>size</th><th>dtype</th><th>mean</th><th>min</th><th>stddev</th><th>rounds</th><th>algbw GB/s</th><th>busbw GB/s</th><th>memory</th><th>benchmark</th></tr>
{% for r in bench_table %}
<tr><td>{{ r.area }}</td><td>{{ r.op }}</td><td>{{ r.variant }}</td><td class="num">{{ r.world }}</td><td class="num">{{ r.size }}</td><td>{{ r.dtype }}</td>
<td class="num">{{ r.mean }}</td><td class="num">{{ r.min }}</td><td class="num">{{ r.stddev }}</td><td class="num">{{ r.rounds }}</td>
<td class="num">{{ r.algbw }}</td><td class="num">{{ r.busbw }}</td><td class="num">{{ r.memory }}</td><td><code>{{ r.name }}</code></td></tr>
{% endfor %}
</table>
{% else %}
<p class="empty">No benchmark JSON found (pytest-benchmark schema; <code>make bench</code> writes it under reports/).</p>
{% endif %}
</section>

<section id="figures">
<h2>Figures recorded by tests</h2>
<p>From <code>report.figure(...)</code> and pytest's <code>record_property</code>.</p>
{% if figures %}
<table><tr><th>test</th><th>figure</th><th>value</th><th>unit</th></tr>
{% for f in figures %}<tr><td><code>{{ f.nodeid }}</code></td><td>{{ f.name }}</td><td class="num">{{ f.value }}</td><td>{{ f.unit }}</td></tr>{% endfor %}
</table>
{% else %}
<p class="empty">No test recorded figures (<code>report.figure(name, value, unit)</code> or <code>record_property</code> in a test).</p>
{% endif %}
</section>

<section id="findings">
<h2>Layout invariant findings</h2>
{% if findings %}
<table><tr><th>layout</th><th>rule</th><th>group kind</th><th>finding</th><th>test</th></tr>
{% for f in findings %}<tr><td>{{ f.subject }}</td><td>{{ f.rule }}</td><td>{{ f.kind }}</td><td>{{ f.text }}</td><td><code>{{ f.nodeid }}</code></td></tr>{% endfor %}
</table>
{% else %}
<p class="empty">No layout invariant findings recorded in this run.</p>
{% endif %}
{% if checked %}
<p>Layouts checked: {% for c in checked %}{{ c.subject }} ({{ c.count }} finding{{ "" if c.count == 1 else "s" }}){% if not loop.last %}; {% endif %}{% endfor %}.</p>
{% endif %}
</section>

<section id="environment">
<h2>Environment</h2>
{% if environment %}
<table>{% for key, value in environment.items() %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
{% else %}
<p class="empty">No environment recorded.</p>
{% endif %}
{% if sessions %}
<h3>Sessions merged into this report</h3>
<table><tr><th>session</th><th>started</th><th>records of collected tests</th><th>finished</th><th>results shown</th></tr>
{% for s in sessions %}<tr><td><code>{{ s.session }}</code></td><td>{{ s.started }}</td><td class="num">{{ s.recorded }}</td><td>{{ s.finished }}</td><td class="num">{{ s.tests }}</td></tr>{% endfor %}
</table>
{% endif %}
</section>
</main>
</body>
</html>
"""
