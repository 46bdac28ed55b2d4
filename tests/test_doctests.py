"""The worked examples in the package's docstrings run, so they cannot drift from the code they describe.

One test per module of ``ascend_conformance`` whose source holds a ``>>>`` example; it runs every example
of the module with the standard library's doctest (``ELLIPSIS`` on, for tracebacks) and fails with
doctest's own report. Part of ``make test`` because it is a test module like any other.
"""
from __future__ import annotations

import doctest
import importlib
import io
import pathlib

import pytest

import ascend_conformance

PACKAGE = pathlib.Path(ascend_conformance.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py" or ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_package_has_examples_to_run():
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    examples = 0
    for test in doctest.DocTestFinder().find(module, name):
        examples += len(test.examples)
        runner.run(test, out=report.write)
    assert examples, f"{name} has '>>>' in its source but no example doctest can find"
    assert runner.failures == 0, f"{runner.failures} of {examples} examples of {name} failed:\n{report.getvalue()}"
