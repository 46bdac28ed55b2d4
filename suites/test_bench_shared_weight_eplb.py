"""Benchmarks (``-m bench -p no:xdist``): the shared-weight series and EPLB (docs/shared_weight.md and docs/eplb.md).

* shared weight: forward time per layer with prefetch_step k = 0, 1, 2 against the unsharded model
  (compute alone: every weight resident) and the broadcast alone, i.e. how much of the broadcast the
  prefetch hides; weight storage per rank, unsharded vs sharded, theory vs measured (live storages);
* EPLB: balancedness of the rebalanced placement vs round-robin on uniform, Zipf 1.0 and Zipf 1.5 loads;
  redistribution time per layer and measured peak memory per rank against one layer's moved experts.

Figures go to ``reports/benchmarks/bench_shared_weight_w{n}.json`` and ``bench_eplb.json`` (next to
``--results-dir``) in pytest-benchmark's schema, to the ``report`` fixture, and to the terminal (``-s``). The same code runs standalone:
``python benchmarks/shared_weight.py`` and ``python benchmarks/eplb.py``.
"""
from __future__ import annotations

import contextlib
import io

import pytest

from benchmarks import eplb as eplb_bench
from benchmarks import shared_weight as sw_bench

pytestmark = pytest.mark.bench


def _table(fn, *args) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        fn(*args)
    text = buffer.getvalue()
    print(text)
    return text


@pytest.mark.parametrize("world_size", [2, 4])
def test_bench_shared_weight(world, report, request, world_size):
    hidden, tokens, count, start, iters = 1024, 32, 8, 3, 20
    results = world(world_size, timeout=1800).run(sw_bench.shared_weight_rank, hidden, tokens, count, start,
                                                  sw_bench.KS, iters, 3)
    summary = sw_bench.summarize(results, count)
    text = _table(sw_bench.print_tables, summary, world_size, hidden, tokens, count, start)
    report.attach(f"shared weight {world_size} ranks", text)
    for k, row in summary["sharded"].items():
        report.figure(f"per layer k={k}", row["per_layer_s"] * 1e3, "ms")
        report.figure(f"broadcast hidden k={k}", row["hidden_share"] * 100, "%")
    report.benchmark_json(f"bench_shared_weight_w{world_size}.json",
                          sw_bench.bench_entries(summary, results, world_size, hidden, tokens, count, start,
                                                 fullname_prefix=request.node.nodeid))
    w = hidden * hidden * 4
    for r in results:
        assert r["unsharded_bytes"] == count * w
        for k, m in r["memory"].items():
            owned = sum(1 for i in range(start, start + count) if i % world_size == r["rank"])
            assert m["measured"] == m["theory"] == owned * w + (k + 1) * w, (r["rank"], k, m)
            assert m["pass_peak"] < w, f"a pass allocated {m['pass_peak']} B: weights must not be allocated per pass"


def test_bench_eplb(world, report, request):
    balance = eplb_bench.balancedness_table(16, 64, 8, (0, 16))
    text = _table(eplb_bench.print_balancedness, balance)
    keyed = {(r["load"], r["replicas"], r["placement"]): r for r in balance}
    for load in ("zipf1.0", "zipf1.5"):
        for replicas in (64, 80):
            assert keyed[load, replicas, "eplb"]["mean"] > keyed[load, replicas, "round_robin"]["mean"], (load, replicas)
        report.figure(f"balancedness eplb {load} R=80", keyed[load, 80, "eplb"]["mean"])
        report.figure(f"balancedness round-robin {load} R=80", keyed[load, 80, "round_robin"]["mean"])

    world_size, experts, redundant, layers, hidden, inter = 4, 32, 8, 8, 256, 128
    results = world(world_size, timeout=1800).run(eplb_bench.redistribution_rank, layers, experts, redundant, hidden,
                                                  inter, 5)
    summary = eplb_bench.redistribution_summary(results)
    text += _table(eplb_bench.print_redistribution, summary, world_size, experts, experts + redundant, hidden, inter)
    report.attach("eplb", text)
    report.figure("redistribution per layer", summary["median_per_layer_s"] * 1e3, "ms")
    for r in summary["ranks"]:
        assert r["max_layer_receive_bytes"] <= r["measured_peak_bytes"] <= r["budget_bytes"], r
        report.figure(f"peak rank {r['rank']}", r["measured_peak_bytes"], "B")
    report.benchmark_json("bench_eplb.json", eplb_bench.bench_entries(balance, summary, results, world_size, experts,
                                                                      experts + redundant, hidden, inter,
                                                                      fullname_prefix=request.node.nodeid))
