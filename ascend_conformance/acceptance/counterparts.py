"""What JUnit XML and Allure results say about each test, in the categories a result record maps to, so
the verifier can check that the three tell the same story.

Categories: ``passed`` (passed, or a non-strict xpass), ``failed`` (failed or errored; Allure's failed or
broken), ``skipped`` and ``xfailed`` (JUnit: ``<skipped type="pytest.xfail">``; Allure: skipped with an
``XFAIL`` message). Tests are matched by key: JUnit by (classname, name), Allure by (package label, name),
both derived from the node id::

    >>> junit_key("suites/test_moe_ops.py::TestX::test_y[a-b]")
    ('suites.test_moe_ops.TestX', 'test_y[a-b]')
    >>> allure_key("suites/test_moe_ops.py::TestX::test_y[a-b]")
    ('suites.test_moe_ops', 'test_y[a-b]')
    >>> category("xpassed"), category("error"), category("xfailed")
    ('passed', 'failed', 'xfailed')
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable

_CATEGORY = {"passed": "passed", "xpassed": "passed", "failed": "failed", "error": "failed",
             "skipped": "skipped", "xfailed": "xfailed"}


def category(outcome: str) -> str:
    """The category of a result record's outcome."""
    return _CATEGORY.get(outcome, outcome)


def _split(nodeid: str) -> tuple[str, list[str], str]:
    """(module dotted, class names, test name with its parameters)."""
    base, bracket, params = nodeid.partition("[")
    parts = base.split("::")
    path = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
    return path.replace("/", "."), parts[1:-1], parts[-1] + bracket + params


def junit_key(nodeid: str) -> tuple[str, str]:
    module, classes, name = _split(nodeid)
    return ".".join([module, *classes]), name


def allure_key(nodeid: str) -> tuple[str, str]:
    module, _, name = _split(nodeid)
    return module, name


def junit_outcomes(xml_texts: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """Key -> the categories of its test cases in the JUnit documents; ValueError for a document that is
    not XML."""
    out: dict[tuple[str, str], list[str]] = {}
    for text in xml_texts:
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise ValueError(f"not XML: {exc}") from None
        for case in root.iter("testcase"):
            tags = {child.tag: child for child in case}
            if "failure" in tags or "error" in tags:
                kind = "failed"
            elif "skipped" in tags:
                kind = "xfailed" if tags["skipped"].get("type") == "pytest.xfail" else "skipped"
            else:
                kind = "passed"
            out.setdefault((case.get("classname", ""), case.get("name", "")), []).append(kind)
    return out


def allure_outcomes(result_texts: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """Key -> the categories of its Allure results (``*-result.json`` documents)."""
    out: dict[tuple[str, str], list[str]] = {}
    for text in result_texts:
        try:
            result = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(result, dict):
            continue
        labels = {label.get("name"): label.get("value") for label in result.get("labels") or []
                  if isinstance(label, dict)}
        status = result.get("status")
        message = ((result.get("statusDetails") or {}).get("message") or "")
        if status in ("failed", "broken"):
            kind = "failed"
        elif status == "skipped":
            kind = "xfailed" if message.startswith("XFAIL") else "skipped"
        else:
            kind = status or "unknown"
        out.setdefault((labels.get("package", ""), result.get("name", "")), []).append(kind)
    return out
