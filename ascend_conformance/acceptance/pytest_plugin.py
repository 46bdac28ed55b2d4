"""The pytest side of acceptance: what collection found (for ``acceptance list``), and running exactly a
mustpass list (for ``acceptance run``). Loaded with ``-p ascend_conformance.acceptance.pytest_plugin``.

``--acceptance-inventory FILE`` writes every collected test as JSON, before any deselection: node id, area,
system under test, tier and its ``device_type`` parameter, e.g.::

    {"nodeid": "suites/test_sut_moe.py::test_comm_method[A3-mc2-W2-DP2-contiguous]", "area": "moe",
     "sut": "vllm_ascend", "tier": "default", "device_type": "A3"}

``--acceptance-list FILE`` deselects every collected test the list does not name (in every xdist worker,
so the session's recorded collection is the list's tests).
"""
from __future__ import annotations

import json
import os

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("ascend-conformance acceptance")
    group.addoption("--acceptance-inventory", default=None, metavar="FILE",
                    help="write every collected test (node id, area, sut, tier, device_type) as JSON to FILE")
    group.addoption("--acceptance-list", default=None, metavar="FILE",
                    help="run only the tests this mustpass list names")


def _marker_arg(item, name: str) -> str | None:
    marker = item.get_closest_marker(name)
    return marker.args[0] if marker is not None and marker.args else None


def tier_of(item) -> str:
    if item.get_closest_marker("bench") is not None:
        return "bench"
    return "full" if item.get_closest_marker("full") is not None else "default"


def inventory_entry(item) -> dict:
    from ascend_conformance.report.results import derive_labels

    params = getattr(getattr(item, "callspec", None), "params", {}) or {}
    device_type = params.get("device_type")
    return {"nodeid": item.nodeid,
            "area": derive_labels(item.nodeid, area=_marker_arg(item, "area")).area,
            "sut": _marker_arg(item, "sut") or "reference",
            "tier": tier_of(item),
            "device_type": device_type if isinstance(device_type, str) else None}


@pytest.hookimpl(tryfirst=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_inventory(session, config, items):
    """Before anything deselects (``-m``, the list): every collected test. Each xdist worker writes the same
    file (the controller collects nothing); each write is whole."""
    path = config.getoption("--acceptance-inventory")
    if not path:
        return
    entries = [inventory_entry(item) for item in items]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"collected": len(entries), "tests": entries}, handle, indent=0)
    os.replace(tmp, path)


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_list(session, config, items):
    listed_path = config.getoption("--acceptance-list")
    if not listed_path:
        return
    from ascend_conformance.acceptance.mustpass import read_list

    listed = set(read_list(listed_path).tests)
    keep = [item for item in items if item.nodeid in listed]
    dropped = [item for item in items if item.nodeid not in listed]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
