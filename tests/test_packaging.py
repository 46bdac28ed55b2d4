"""What `pip install .` ships: every package of the tree is listed in pyproject.toml (setuptools installs only
the listed ones: a shim package left out would exist in a checkout and be missing from an install)."""
from __future__ import annotations

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_of_the_tree_is_listed():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for parent, dirs, files in os.walk(os.path.join(ROOT, "ascend_conformance")):
        # standin_site/ is a directory put on sys.path inside SUT runs (package data), not a package of ours
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "standin_site")]
        if "__init__.py" in files:
            found.add(os.path.relpath(parent, ROOT).replace(os.sep, "."))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found - {"ascend_conformance_fixtures"} == set(), "listed packages that do not exist"
