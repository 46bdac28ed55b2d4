"""Where an acceptance run finds the suite: the checkout (suites/, the mustpass lists, the release
manifests) and the package and pytest plugin that run it.

An acceptance run needs the checkout, not just the installed package: the suites live there. In a
checkout installed editable (``make setup``), ``ascend_conformance/`` sits in it, so the checkout is
found from the package; ``--checkout DIR`` names another one. Paths of the data::

    acceptance/mustpass/<suite version>/<profile>.txt   the mustpass list of a profile
    acceptance/releases/<suite version>.json            the manifest of a released suite version

For example, suite version 0.1.0 and profile cpu-reference read
``acceptance/mustpass/0.1.0/cpu-reference.txt``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

from ascend_conformance.errors import ConfigError

PLUGIN_PACKAGE = "ascend_conformance_fixtures"  # the suite's pytest plugin (fixtures/ in the checkout)
MUSTPASS_DIR = os.path.join("acceptance", "mustpass")
RELEASES_DIR = os.path.join("acceptance", "releases")


def suite_version() -> str:
    """The version of the suite this process runs (``ascend_conformance.__version__``)."""
    import ascend_conformance

    return ascend_conformance.__version__


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(list(spec.submodule_search_locations)[0])


@dataclasses.dataclass(frozen=True)
class Checkout:
    root: str  # the directory holding suites/ (and acceptance/)
    package_dir: str  # ascend_conformance/ as imported
    fixtures_dir: str  # the pytest plugin's directory (fixtures/ in a checkout)

    def mustpass_path(self, version: str, profile: str) -> str:
        return os.path.join(self.root, MUSTPASS_DIR, version, f"{profile}.txt")

    def mustpass_relpath(self, version: str, profile: str) -> str:
        return "/".join(("acceptance", "mustpass", version, f"{profile}.txt"))

    def release_path(self, version: str, releases_dir: str | None = None) -> str:
        return os.path.join(releases_dir or os.path.join(self.root, RELEASES_DIR), f"{version}.json")

    def released_versions(self, releases_dir: str | None = None) -> list[str]:
        directory = releases_dir or os.path.join(self.root, RELEASES_DIR)
        if not os.path.isdir(directory):
            return []
        return sorted(name[:-len(".json")] for name in os.listdir(directory) if name.endswith(".json"))


def locate(root: str | None = None) -> Checkout:
    """The checkout ``root`` (``--checkout``), else the one the imported package sits in, else the
    working directory; a one-line ConfigError when none has ``suites/``."""
    package_dir = _package_dir("ascend_conformance")
    fixtures_dir = _package_dir(PLUGIN_PACKAGE)
    if package_dir is None or fixtures_dir is None:
        raise ConfigError(f"the suite's pytest plugin ({PLUGIN_PACKAGE}) is not installed: pip install -e . "
                          f"in the checkout (make setup)")
    if root is not None:
        if not os.path.isdir(os.path.join(root, "suites")):
            raise ConfigError(f"--checkout {root}: no suites/ directory there")
        return Checkout(os.path.realpath(root), package_dir, fixtures_dir)
    for candidate in (os.path.dirname(package_dir), os.getcwd()):
        if os.path.isdir(os.path.join(candidate, "suites")):
            return Checkout(os.path.realpath(candidate), package_dir, fixtures_dir)
    raise ConfigError(f"no checkout with suites/ next to {package_dir} or in {os.getcwd()}: run from the "
                      f"ascend-conformance checkout or pass --checkout DIR")
