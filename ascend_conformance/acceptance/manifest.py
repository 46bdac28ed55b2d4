"""The manifest of a suite: its version and the sha256 of every file that decides what a run checks.

Hashed (paths as the manifest names them):

    ascend_conformance/...   the package: reference implementation, oracles, adapters, profiles
    fixtures/...             the pytest plugin (world fixture, tiers, reports, expectations)
    suites/...               the suites, with suites/expectations/*.toml (the known divergences)
    conftest.py, pyproject.toml   the checkout's pytest configuration (strict xfails, plugin loading)
    acceptance/mustpass/<version>/<profile>.txt   the mustpass list(s)

(``__pycache__``, ``*.pyc``, ``*.egg-info`` and hidden files are not part of the suite.)

A *release manifest* (``acceptance/releases/<version>.json``, written by ``acceptance release`` from a
committed tree) holds every profile's list; a bundle's manifest holds what its run had, with its own
profile's list. :func:`diff` compares the two: a file whose hash differs, one the run had that the
release has not, and one of the release the run lacked are each a *modified suite*. For example::

    >>> release = {"suite_version": "0.1.0", "files": {"suites/test_a.py": "11", "suites/test_b.py": "22",
    ...            "acceptance/mustpass/0.1.0/npu-a2.txt": "33", "acceptance/mustpass/0.1.0/cpu-reference.txt": "44"}}
    >>> bundle = {"suite_version": "0.1.0", "files": {"suites/test_a.py": "11", "suites/test_b.py": "99",
    ...           "suites/test_c.py": "55", "acceptance/mustpass/0.1.0/cpu-reference.txt": "44"}}
    >>> diff(bundle, release, "cpu-reference")
    Diff(changed=('suites/test_b.py',), added=('suites/test_c.py',), missing=())
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterable

from ascend_conformance.acceptance.checkout import Checkout
from ascend_conformance.errors import ConfigError

FORMAT = "ascend-conformance-manifest"
ROOT_FILES = ("conftest.py", "pyproject.toml")
_SKIP_DIRS = ("__pycache__",)
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def sha256_file(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _walk(directory: str, prefix: str) -> dict[str, str]:
    out = {}
    for current, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs
                         if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(_SKIP_SUFFIXES))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                continue
            path = os.path.join(current, name)
            out[prefix + "/" + os.path.relpath(path, directory).replace(os.sep, "/")] = path
    return out


def scope(checkout: Checkout, version: str, profiles: Iterable[str]) -> dict[str, str]:
    """Manifest path -> file on disk, for every file of the suite and the named profiles' lists."""
    files = {}
    files.update(_walk(checkout.package_dir, "ascend_conformance"))
    files.update(_walk(checkout.fixtures_dir, "fixtures"))
    files.update(_walk(os.path.join(checkout.root, "suites"), "suites"))
    for name in ROOT_FILES:
        path = os.path.join(checkout.root, name)
        if os.path.isfile(path):
            files[name] = path
    for profile in profiles:
        path = checkout.mustpass_path(version, profile)
        if os.path.isfile(path):
            files[checkout.mustpass_relpath(version, profile)] = path
    return dict(sorted(files.items()))


def compute(checkout: Checkout, version: str, profiles: Iterable[str]) -> dict:
    """The manifest of the suite as it is on disk."""
    return {"format": FORMAT, "suite_version": version,
            "files": {name: sha256_file(path) for name, path in scope(checkout, version, profiles).items()}}


@dataclasses.dataclass(frozen=True)
class Diff:
    changed: tuple[str, ...]
    added: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.changed or self.added or self.missing)

    def files(self) -> list[str]:
        return [*self.changed, *self.added, *self.missing]


def diff(bundle_manifest: dict, release_manifest: dict, profile: str) -> Diff:
    """What differs between a run's manifest and the release's (the release's lists of other profiles are
    not the run's business)."""
    ran = bundle_manifest.get("files") or {}
    list_dir = f"acceptance/mustpass/{release_manifest.get('suite_version')}/"
    released = {name: digest for name, digest in (release_manifest.get("files") or {}).items()
                if not (name.startswith(list_dir) and name != f"{list_dir}{profile}.txt")}
    return Diff(tuple(sorted(n for n in ran if n in released and ran[n] != released[n])),
                tuple(sorted(n for n in ran if n not in released)),
                tuple(sorted(n for n in released if n not in ran)))


def read_release(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read release manifest {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if (not isinstance(document, dict) or document.get("format") != FORMAT
            or not isinstance(document.get("files"), dict)):
        raise ConfigError(f"{path} is not a release manifest (format {FORMAT})")
    return document


def _git(root: str, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None


def uncommitted(checkout: Checkout, paths: Iterable[str]) -> list[str] | None:
    """The files among ``paths`` (on disk) that git shows as modified or untracked; None outside a git
    work tree."""
    inside = _git(checkout.root, "rev-parse", "--is-inside-work-tree")
    if inside is None or inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    top = _git(checkout.root, "rev-parse", "--show-toplevel").stdout.strip()
    inside_top = [p for p in paths if os.path.realpath(p).startswith(os.path.realpath(top) + os.sep)]
    relative = [os.path.relpath(p, top) for p in inside_top]
    status = _git(top, "status", "--porcelain", "--untracked-files=all", "--", *relative) if relative else None
    if status is None:
        return []
    return sorted(line[3:] for line in status.stdout.splitlines() if line.strip())


def release(checkout: Checkout, version: str, profiles: Iterable[str], out: str | None = None) -> str:
    """Write the release manifest of suite ``version`` with the lists of the profiles that have one (a
    profile without a list cannot be accepted on this version); refused when no profile has a list, when
    git shows uncommitted changes to the suite, or when the version is already released with other hashes."""
    profiles = [p for p in profiles if os.path.isfile(checkout.mustpass_path(version, p))]
    if not profiles:
        raise ConfigError(f"suite {version} has no mustpass list yet: write them first "
                          f"(ascend-conformance acceptance list --profile P --write)")
    files = scope(checkout, version, profiles)
    dirty = uncommitted(checkout, files.values())
    if dirty:
        raise ConfigError(f"release from a committed tree: git shows {len(dirty)} uncommitted change(s) to the suite, "
                          f"e.g. {', '.join(dirty[:3])}")
    document = compute(checkout, version, profiles)
    head = _git(checkout.root, "rev-parse", "HEAD") if dirty is not None else None
    document["commit"] = head.stdout.strip() if head is not None and head.returncode == 0 else None
    document["profiles"] = profiles
    document["released"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = out or checkout.release_path(version)
    if os.path.exists(path):
        existing = read_release(path)
        if existing.get("files") != document["files"]:
            raise ConfigError(f"suite {version} is already released ({path}) with other files: a release is frozen; "
                              f"bump the suite version")
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)
    return path
