"""Which release of each system under test this environment has: the name every result carries.

A release is read from the environment, never from a constant of the suite:

* an installed distribution (a wheel, or the project's unpacked sdist / wheel): its package metadata,
  ``vllm_ascend 0.18.0``;
* a linked source checkout (``stack --install --vllm-ascend main=PATH``, or your own tree): the name it
  was installed under (``main``), its commit and the version its own metadata gives (``git describe``, as
  setuptools-scm would), ``vllm_ascend main@182b75ea84``.

Release lines are ordered by :attr:`Release.comparable`, a PEP 440 version used by the version ranges of
expectations files (``versions = ">=0.13,<0.28"``). vllm-ascend's release numbers follow the vLLM release
they pair with (0.18.0 builds on vLLM 0.18.0), so a development checkout is ordered just before the vLLM
it pairs with: main pinning vLLM 0.27.1 compares as ``0.27.1.dev0``, after every 0.2x release before it.

Worked example: ``installed("vllm_ascend")`` in an environment set up by ``stack --install --vllm-ascend
main=/src/vllm-ascend`` gives ``Release(sut="vllm_ascend", name="main", version="0.19.2.dev1637+g182b75ea84",
commit="182b75ea84...", pairs_with="0.27.1")``: label ``vllm_ascend main@182b75ea84``, expectations file
``vllm_ascend-main.toml``, comparable ``0.27.1.dev0``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

MARKER = "ascend-conformance-stack.json"  # in sys.prefix: what the project installed there (stack.py writes it)


@dataclasses.dataclass(frozen=True)
class Release:
    """One installed release of a system under test."""

    sut: str  # "vllm" | "vllm_ascend"
    name: str  # what its users call it: "0.23.0.post1", "main"
    version: str  # PEP 440, as its metadata says ("unknown" when nothing says)
    commit: str | None = None  # a source checkout's commit
    pairs_with: str | None = None  # the vLLM release a vllm-ascend release is built on
    location: str | None = None  # the directory holding the package

    @property
    def is_checkout(self) -> bool:
        return self.commit is not None or self.name != self.version

    @property
    def label(self) -> str:
        """``vllm_ascend 0.18.0``; a checkout: ``vllm_ascend main@182b75ea84``."""
        if self.commit:
            return f"{self.sut} {self.name}@{self.commit[:10]}"
        return f"{self.sut} {self.name}"

    @property
    def file_stem(self) -> str:
        """The stem of its expectations file: ``vllm_ascend-0.18.0``, ``vllm_ascend-main``."""
        return f"{self.sut}-{self.name}"

    @property
    def comparable(self) -> str:
        """A PEP 440 version that orders it among release lines (see the module docstring)."""
        from packaging.version import InvalidVersion, Version

        if self.is_checkout and self.pairs_with:
            return f"{Version(self.pairs_with).base_version}.dev0"
        try:
            return str(Version(self.version))
        except InvalidVersion:
            return "0.dev0"

    @property
    def line(self) -> str:
        """The release line: ``0.18`` for 0.18.0, ``main`` for a checkout called main."""
        from packaging.version import InvalidVersion, Version

        if self.is_checkout:
            return self.name
        try:
            major, minor = Version(self.version).release[:2]
        except (InvalidVersion, ValueError):
            return self.name
        return f"{major}.{minor}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "label": self.label}


def marker(prefix: str | None = None) -> dict:
    """What the project's stack install recorded in this environment (``{}`` when it installed nothing)."""
    try:
        with open(os.path.join(prefix or sys.prefix, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def package_location(sut: str) -> str | None:
    """The directory holding package ``sut`` here (no import), or None when it is not installed."""
    spec = importlib.util.find_spec(sut)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def _git(directory: str, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def describe_version(directory: str) -> str | None:
    """A checkout's version as setuptools-scm would derive it from ``git describe``, or None.

    >>> describe_version("/nonexistent") is None
    True
    """
    described = _git(directory, "describe", "--tags", "--long", "--match", "v*")
    if not described:
        return None
    tag, distance, commit = described.rsplit("-", 2)
    base = tag.lstrip("v")
    if distance == "0":
        return base
    from packaging.version import InvalidVersion, Version

    try:
        release = list(Version(base).release) + [0, 0]
    except InvalidVersion:
        return None
    release[2] += 1  # setuptools-scm's guess-next-dev: the next patch release, in development
    return f"{release[0]}.{release[1]}.{release[2]}.dev{distance}+{commit}"


def source_identity(directory: str) -> dict:
    """``{"version", "commit"}`` of a source tree from its own metadata: ``git describe`` / ``git rev-parse``
    in a git checkout, else a ``_version.py`` setuptools-scm wrote; missing values are None."""
    commit = _git(directory, "rev-parse", "HEAD")
    version = describe_version(directory) if commit else None
    if version is None:
        written = os.path.join(directory, "vllm_ascend", "_version.py")
        if os.path.exists(written):
            scope: dict = {}
            try:
                with open(written) as f:
                    exec(compile(f.read(), written, "exec"), scope)  # noqa: S102 - setuptools-scm's own file
                version = str(scope.get("__version__") or scope.get("version") or "") or None
            except Exception:  # noqa: BLE001 - an unreadable file says nothing
                version = None
    return {"version": version, "commit": commit}


def installed(sut: str) -> Release | None:
    """The release of ``sut`` (``vllm`` or ``vllm_ascend``) this environment imports, or None."""
    location = package_location(sut)
    if location is None:
        return None
    recorded = marker().get(sut, {})
    if recorded.get("location") and os.path.realpath(recorded["location"]) == os.path.realpath(location):
        version, commit = recorded.get("version") or "unknown", recorded.get("commit")
        if recorded.get("checkout"):  # linked, so it may have moved since: its own metadata, now
            identity = source_identity(recorded["checkout"])
            version, commit = identity["version"] or version, identity["commit"] or commit
        return Release(sut, recorded.get("name") or version, version, commit, recorded.get("pairs_with"), location)
    try:
        version = importlib.metadata.version(sut)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is not None:
        return Release(sut, version, version, location=location)
    # A linked source tree nobody recorded: its own metadata, named "checkout".
    identity = source_identity(location)
    return Release(sut, "checkout", identity["version"] or "unknown", identity["commit"], location=location)


def label(sut: str) -> str:
    """``vllm_ascend 0.18.0`` (or ``vllm_ascend not installed``): how results and messages name the release."""
    release = installed(sut)
    return release.label if release is not None else f"{sut} not installed"


__all__ = ["Release", "installed", "label", "marker", "source_identity", "describe_version", "package_location"]
