"""The cross-release matrix: the SUT suites run once per vLLM / vllm-ascend pair, one table of tests ×
releases (``ascend-conformance matrix``).

    run.py      each release's environment, and its pytest run with progress
    table.py    records -> cells (pass, expected divergence, new divergence, crash, not in release, ...),
                and what changed between adjacent releases (pure)
    render.py   the report: matrix.json and matrix.html (templates/matrix.html.j2)
"""
