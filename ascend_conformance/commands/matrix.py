"""`ascend-conformance matrix --releases 0.18.0,0.23.0.post1,main=PATH [--out DIR] [-n N] [--suites GLOB ...]`.

Runs the suites of systems under test once per vLLM / vllm-ascend pair, each in its own environment (this
one where it holds the release; else ``.venv-sut/<vllm-ascend>-<vllm>/``, set up when missing unless
``--no-install``), and writes one report: ``DIR/matrix.html`` and ``DIR/matrix.json`` (rows: tests by area;
columns: releases, oldest line first; cells: pass, expected divergence, expected crash, new divergence,
crash, fixed, not in release, skipped, no result), with what changed between adjacent releases and the
minutes of each release; each release's own results, JUnit XML and pytest log under ``DIR/<release>/``.

Exit status: 0 when no cell is unexpected (new divergence, crash, fixed, no result, a run that died), 1 when
one is, 2 on bad input.
"""
from __future__ import annotations

NAME = "matrix"
HELP = "run the SUT suites once per vLLM / vllm-ascend pair and write one table of tests x releases"


def add_arguments(parser) -> None:
    parser.add_argument("--releases", required=True, metavar="LIST",
                        help="comma-separated vllm-ascend releases: VERSION, PATH or NAME=PATH (main=/src/vllm-ascend)")
    parser.add_argument("--out", default="reports/matrix", metavar="DIR", help="report directory (default %(default)s)")
    parser.add_argument("-n", "--workers", type=int, default=2, metavar="N", help="pytest-xdist workers per run")
    parser.add_argument("--suites", nargs="+", metavar="GLOB", help="suite files (default suites/test_sut_*.py)")
    parser.add_argument("--full", action="store_true", help="the full tier of every matrix (pytest --full)")
    parser.add_argument("--no-install", action="store_true", help="only pairs whose environment exists")


def run(args) -> int:
    import datetime
    import os
    import platform as host_platform

    from ascend_conformance.errors import ConfigError
    from ascend_conformance.matrix import render, run as matrix_run, table

    if args.workers < 1:
        raise ConfigError(f"-n must be at least 1, got {args.workers}")
    specs = matrix_run.parse_releases(args.releases)
    out = os.path.abspath(args.out)
    targets = matrix_run.prepare(specs, install=not args.no_install)
    columns = []
    for index, target in enumerate(targets, 1):
        columns.append(matrix_run.run_release(
            target, os.path.join(out, target.slug), workers=args.workers,
            suites=list(args.suites or matrix_run.DEFAULT_SUITES), extra=["--full"] if args.full else [],
            position=f"{index}/{len(targets)}"))
    document = table.build(columns)
    import torch

    document["host"] = {"hostname": host_platform.node(), "torch": torch.__version__,
                        "platform": host_platform.platform(), "date": datetime.date.today().isoformat()}
    json_path, html_path = render.write(document, out)
    for column in document["columns"]:
        shown = ", ".join(f"{n} {kind}" for kind, n in column["counts"].items() if n)
        print(f"{column['name']} ({column['label']}): {shown or 'no tests'}; {column['minutes']} min")
    print(f"matrix: {document['unexpected']} unexpected cell(s); {html_path} ({json_path})")
    return 1 if document["unexpected"] else 0
