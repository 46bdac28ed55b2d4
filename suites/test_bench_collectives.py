"""Collective benchmarks (``ascend_conformance.bench``) and their pytest-benchmark JSON.

* Default tier, device-free: the arithmetic a reader of the tables relies on — nccl-tests' bus factors,
  the size sweep, element counts, bandwidths of a worked example — and the JSON: statistics identical to
  pytest-benchmark's own, a document that ``pytest-benchmark compare`` and the suite's report both read.
* ``-m bench -p no:xdist``: a short sweep on 2, 4 and 8 ranks through the same code as
  ``benchmarks/collectives.py``; every measured op must be correct (#wrong 0), and the figures land in
  ``reports/benchmarks/collectives-w{n}.json`` (next to ``--results-dir``). The suite/raw ratio is reported, not asserted: on a
  shared CPU host it measures the neighbours as much as the suite.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ascend_conformance import bench
from ascend_conformance.errors import ConfigError
from ascend_conformance.report import benchmark_json
from ascend_conformance.report.benchmarks import load_file


# ----------------------------------------------------------------------------------- arithmetic

@pytest.mark.parametrize("op, n, factor", [
    # nccl-tests PERFORMANCE.md: allreduce 2(n-1)/n, reducescatter / allgather / alltoall (n-1)/n,
    # broadcast / sendrecv 1.
    ("all_reduce", 8, 1.75), ("all_reduce", 2, 1.0), ("all_gather", 4, 0.75), ("reduce_scatter", 8, 0.875),
    ("all_to_all", 2, 0.5), ("gather", 4, 0.75), ("broadcast", 8, 1.0), ("sendrecv", 2, 1.0),
])
def test_bus_factors_are_nccl_tests(op, n, factor):
    assert bench.BUS_FACTORS[op](n) == pytest.approx(factor)


def test_bandwidths_of_the_worked_example():
    algbw, busbw = bench.bandwidths("all_reduce", 1 << 20, 100e-6, 4)
    assert (round(algbw, 2), round(busbw, 2)) == (10.49, 15.73)


def test_size_sweep_and_sizes():
    assert bench.size_sweep(8, "1M", 8) == [8, 64, 512, 4096, 32768, 262144]
    assert bench.parse_size("64K") == 65536 and bench.parse_size("2g") == 2 << 30
    with pytest.raises(ConfigError, match=r"^size '1.5M' is not a number of bytes"):
        bench.parse_size("1.5M")
    with pytest.raises(ConfigError, match=r"begin 64, end 8, factor 2"):
        bench.size_sweep(64, 8)


def test_element_counts_round_like_nccl_tests():
    # float32, 8 ranks: all_gather of 40 bytes is 10 elements -> 8 (whole per-rank parts); all_reduce keeps 10.
    assert bench.element_count("all_gather", 40, 4, 8) == 8
    assert bench.element_count("all_reduce", 40, 4, 8) == 10
    assert bench.element_count("all_to_all", 8, 4, 4) == 0


def test_sweep_spec_rejects_unknown_names():
    with pytest.raises(ConfigError, match=r"unknown collectives \['allreduce'\]"):
        bench.SweepSpec(config=bench.representative_config(2), ops=("allreduce",))
    spec = bench.SweepSpec(config=bench.representative_config(8), kinds=("tp", "nope"))
    with pytest.raises(ConfigError, match=r"group kinds \['nope'\] are not in the layout"):
        bench.measured_kinds(spec)


def test_default_kinds_skip_groups_of_one():
    kinds = bench.measured_kinds(bench.SweepSpec(config=bench.representative_config(8)))
    assert "pcp" not in kinds and "flashcomm2_odp" not in kinds
    assert {"world", "tp", "pp", "dp", "ep", "otp", "shard_weight"} <= set(kinds)


def test_overhead_ratio_is_per_round():
    # Drift that doubles both variants in the last round leaves the per-round ratio at 1.1.
    assert bench.overhead_ratio([1.1, 1.1, 2.2], [1.0, 1.0, 2.0]) == pytest.approx(1.1)


# ----------------------------------------------------------------------------------- JSON

def test_statistics_are_pytest_benchmarks():
    stats_module = pytest.importorskip("pytest_benchmark.stats")
    for samples in ([3.0], [2.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0], [0.1 * i for i in range(1, 12)] + [9.0]):
        theirs = stats_module.Stats()
        for value in samples:
            theirs.update(value)
        ours = benchmark_json.stats_from_samples(samples)
        for field in stats_module.Stats.fields:
            if isinstance(theirs.as_dict()[field], str):
                assert ours[field] == theirs.as_dict()[field]
            else:
                assert ours[field] == pytest.approx(theirs.as_dict()[field]), field


def _rows() -> list[dict]:
    return [{"kind": "tp", "op": "all_reduce", "size": 4096, "requested_size": 4096, "count": 1024,
             "dtype": "float32", "group_size": 2, "groups": 4, "timer": "WallTimer", "wrong": 0,
             "suite": [1.1e-4, 1.0e-4, 1.2e-4], "raw": [1.0e-4, 1.0e-4, 1.0e-4]},
            {"kind": "ep", "op": "all_gather", "size": 0, "requested_size": 8, "count": 0, "dtype": "float32",
             "group_size": 4, "groups": 2, "timer": "WallTimer", "wrong": -1, "suite": [], "raw": []}]


def test_document_is_read_by_pytest_benchmark_and_the_report(tmp_path):
    spec = bench.SweepSpec(config=bench.representative_config(8), iters=10, rounds=3)
    entries = bench.benchmark_entries(_rows(), 8, spec, "cpu")
    assert [e["name"] for e in entries] == ["collective[all_reduce-tp-float32-4096B-w8]",
                                            "collective_raw_loop[all_reduce-tp-float32-4096B-w8]"]
    extra = entries[0]["extra_info"]
    assert extra["busbw_gbps"] == pytest.approx(4096 / 1.1e-4 / 1e9 * 1.0)  # n = 2: factor 1
    assert extra["overhead_ratio"] == pytest.approx(1.1) and extra["wrong"] == 0
    path = benchmark_json.write(str(tmp_path / "c.json"), benchmark_json.document(entries))

    rows = load_file(path)
    assert [(r.op, r.size, r.dtype, r.world_size, r.variant) for r in rows] == [
        ("all_reduce", 4096, "float32", 8, "group=tp,loop=suite"), ("all_reduce", 4096, "float32", 8, "group=tp,loop=raw")]
    assert rows[0].median == pytest.approx(1.1e-4) and rows[0].busbw == pytest.approx(extra["busbw_gbps"])

    pytest.importorskip("pytest_benchmark")
    shown = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", path, "--columns=min,median"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "collective[all_reduce-tp-float32-4096B-w8]" in shown.stdout and "Failed to load" not in shown.stdout + shown.stderr


def test_table_names_every_figure():
    spec = bench.SweepSpec(config=bench.representative_config(8), iters=10, rounds=3)
    table = bench.format_table(_rows(), 8, spec)
    assert "# all_reduce on tp: 4 group(s) of 2 ranks, world 8, 10 iters x 3 rounds, warmup 5" in table
    line = next(text for text in table.splitlines() if text.split()[:1] == ["4096"])
    assert line.split() == ["4096", "1024", "float", "110.00", "0.0372", "0.0372", "0", "100.00", "1.100"]
    assert "too small for 4 ranks" in table
    assert "suite/raw time ratio: median 1.100" in table and "raw/raw" not in table

    with_floor = bench.SweepSpec(config=bench.representative_config(8), iters=10, rounds=3, noise_floor=True)
    rows = _rows()
    rows[0]["raw_again"], rows[1]["raw_again"] = [1.0e-4, 1.05e-4, 0.95e-4], []
    table = bench.format_table(rows, 8, with_floor)
    line = next(text for text in table.splitlines() if text.split()[:1] == ["4096"])
    assert line.split()[-2:] == ["1.100", "1.000"]
    assert "raw/raw (A/A noise floor): median 1.000" in table


# ----------------------------------------------------------------------------------- live sweep

BENCH_SIZES = (8, 4096, 65536)


@pytest.mark.bench
@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_collective_sweep(world, world_size, record_property, report):
    spec = bench.SweepSpec(config=bench.representative_config(world_size), sizes=BENCH_SIZES, iters=10,
                           warmup=2, rounds=3)
    rows = world(world_size, timeout=1800).run(bench.run_sweep, spec)[0]
    print("\n" + bench.format_table(rows, world_size, spec))
    measured = [row for row in rows if row["suite"]]
    expected = {(kind, op) for kind in bench.measured_kinds(spec) for op in spec.ops}
    assert {(row["kind"], row["op"]) for row in measured} == expected
    wrong = [(row["kind"], row["op"], row["size"], row["wrong"]) for row in measured if row["wrong"]]
    assert not wrong, f"collectives returned wrong elements (kind, op, bytes, #wrong): {wrong}"
    assert all(t > 0 for row in measured for t in row["suite"] + row["raw"])

    from ascend_conformance import platform

    entries = bench.benchmark_entries(rows, world_size, spec, platform.get().name,
                                      test_prefix="suites/test_bench_collectives.py::test_collective_sweep")
    path = report.benchmark_json(f"collectives-w{world_size}.json", entries)
    assert len(load_file(path)) == 2 * len(measured)
    ratios = sorted(bench.overhead_ratio(row["suite"], row["raw"]) for row in measured)
    record_property("suite_raw_ratio_median", round(ratios[len(ratios) // 2], 3))
    record_property("benchmark_json", path)
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle)["benchmarks"][0]["extra_info"]["world_size"] == world_size
