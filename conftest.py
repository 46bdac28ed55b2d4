"""Loads the suite's pytest plugin (fixtures/) for runs from this checkout.

Installed with `pip install -e .`, the plugin is already loaded through its pytest11 entry point;
loading it twice would register its options twice.
"""
import sys

_INSTALLED = "ascend_conformance_fixtures.plugin"
pytest_plugins = [] if _INSTALLED in sys.modules else ["fixtures.plugin"]
