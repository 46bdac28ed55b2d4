"""`ascend-conformance report`: build the static HTML report from result records and benchmark JSON.

Reads the results directory (every session's JSON-lines records, merged here, so a killed session still
reports its finished tests, and is called ``incomplete``: "k of n tests have records") or a merged
``results.json``, and every benchmark JSON file (pytest-benchmark
schema) under the benchmark paths; writes one self-contained HTML file.
"""
from __future__ import annotations

import os

NAME = "report"
HELP = "build reports/index.html (verdict, conformance matrix, plots, environment) from results and benchmarks"

def add_arguments(parser) -> None:
    parser.add_argument("--results", default=os.path.join("reports", "results"),
                        help="results directory or merged results.json (default reports/results)")
    parser.add_argument("--benchmarks", nargs="*", default=None, metavar="PATH",
                        help="benchmark JSON files or directories (default: every benchmark JSON under reports/)")
    parser.add_argument("--out", default=os.path.join("reports", "index.html"), help="output file")
    parser.add_argument("--title", default="ascend-conformance report")


def run(args) -> int:
    from ascend_conformance.errors import ConfigError
    from ascend_conformance.report import benchmarks, html, results
    from ascend_conformance.report.progress import Progress

    if os.path.exists(args.results):
        try:
            document = results.load(args.results)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--results {args.results}: {exc}") from None
    elif args.results == os.path.join("reports", "results") and os.path.exists(os.path.join("reports", "results.json")):
        document = results.load(os.path.join("reports", "results.json"))
    else:
        print(f"note: no results at {args.results}; the report shows benchmarks only")
        document = {"tests": [], "environment": {}}
    out_dir = os.path.dirname(os.path.abspath(args.out))
    paths = args.benchmarks if args.benchmarks is not None else ([out_dir] if os.path.isdir(out_dir) else [])
    with Progress("report", total=2) as progress:
        rows = benchmarks.load_all(paths)
        progress.advance(detail=f"{len(rows)} benchmarks read; rendering plots")
        html.write(args.out, document, rows, args.title)
        progress.advance()
    print(f"{args.out}: {results.verdict_line(document)}, {len(document['tests'])} tests, {len(rows)} benchmarks")
    return 0
