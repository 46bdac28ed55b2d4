"""Where a vllm-ascend release's Python source comes from, and which vLLM it pairs with.

The suite runs vllm-ascend's Python code, never its C++ / CANN ops, so every release is used as source:

* a **release on the package index** (``0.18.0``, ``0.23.0.post1``): its artifact, an sdist or a wheel
  (the sdist where there is one: it ships the Dockerfile; else a CPython 3.11 wheel, whose Python files are
  the same on every host, so an x86_64 wheel does on any), is downloaded once into a cache, checked against the sha256 the suite
  recorded for it (:data:`~ascend_conformance.sut.release.KNOWN_RELEASES`; a release not recorded there
  prints its digest to be recorded), and unpacked without its compiled files;
* a **source checkout** (``main=/src/vllm-ascend``, or a bare path): linked, not copied, through a directory
  of the environment's own holding a symbolic link to its ``vllm_ascend`` package, so the checkout's
  build metadata (an egg-info with entry points from an earlier ``pip install -e``) never reaches the
  import path.

Either way vLLM must not load vllm-ascend as its platform plugin (it would ask for an NPU): entry points are
stripped from what the environment sees; and ``vllm_ascend/_build_info.py``, which vllm-ascend's build
generates from SOC_VERSION (git-ignored in a checkout), is written where missing, naming the device type
the torch_npu stand-in emulates.

The vLLM a release pairs with is the ``VLLM_TAG`` of its own Dockerfile where it ships one (sdists,
checkouts), else the suite's table.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import zipfile

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import release as known

CACHE_ENV = "ASCEND_CONFORMANCE_CACHE"  # where downloaded artifacts are kept (default ~/.cache/ascend-conformance)
ARTIFACT_ENV = "ASCEND_CONFORMANCE_VLLM_ASCEND_ARTIFACT"  # a local sdist / wheel to use instead of the index's
BUILD_INFO = ("# Written by ascend-conformance (no build of vllm-ascend's ops): the device type its torch_npu\n"
              "# stand-in emulates; vllm-ascend's setup.py would write it from SOC_VERSION.\n"
              "__device_type__ = {device_type!r}\n")


@dataclasses.dataclass(frozen=True)
class ReleaseSpec:
    """What the user asked for: ``0.18.0`` (the index), ``main=/src/vllm-ascend`` or ``/src/vllm-ascend``."""

    name: str
    checkout: str | None = None  # absolute path of a source checkout; None for a release on the index

    @classmethod
    def parse(cls, text: str) -> "ReleaseSpec":
        """
        >>> ReleaseSpec.parse("0.18.0")
        ReleaseSpec(name='0.18.0', checkout=None)
        >>> ReleaseSpec.parse("main=/nowhere")
        Traceback (most recent call last):
        ascend_conformance.errors.ConfigError: /nowhere holds no vllm_ascend package (expected /nowhere/vllm_ascend/)
        """
        text = text.strip()
        if not text:
            raise ConfigError("empty vllm-ascend release: give a VERSION, a PATH or NAME=PATH")
        name, sep, path = text.partition("=")
        if sep:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name) or not path:
                raise ConfigError(f"{text!r}: NAME=PATH needs a name of letters, digits and ._+- and a path")
            return cls(name, _checkout_path(path))
        if os.sep in text or text.startswith(".") or os.path.isdir(text):
            return cls("", _checkout_path(text))
        from packaging.version import InvalidVersion, Version

        try:
            Version(text)
        except InvalidVersion:
            raise ConfigError(f"{text!r} is neither a vllm-ascend version (0.18.0) nor a path nor NAME=PATH") from None
        return cls(text)


def _checkout_path(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(os.path.join(path, "vllm_ascend")):
        raise ConfigError(f"{path} holds no vllm_ascend package (expected {path}/vllm_ascend/)")
    return path


def cache_directory() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ascend-conformance")


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# -- the pairing -------------------------------------------------------------------------------------------

def dockerfile_vllm(source_root: str) -> str | None:
    """The vLLM version of ``ARG VLLM_TAG=v0.27.1`` in the tree's Dockerfile, or None.

    >>> import tempfile, os; d = tempfile.mkdtemp(); _ = open(os.path.join(d, "Dockerfile"), "w").write(
    ...     "FROM x\\nARG VLLM_TAG=v0.27.1\\n")
    >>> dockerfile_vllm(d)
    '0.27.1'
    """
    try:
        with open(os.path.join(source_root, "Dockerfile")) as f:
            text = f.read()
    except OSError:
        return None
    found = re.search(r"^\s*ARG\s+VLLM_TAG=v?([0-9][0-9A-Za-z.+-]*)\s*$", text, re.MULTILINE)
    return found.group(1) if found else None


def paired_vllm(spec: ReleaseSpec, source_root: str | None) -> tuple[str, str]:
    """(vLLM version, where that came from) for a vllm-ascend release."""
    if source_root is not None:
        tag = dockerfile_vllm(source_root)
        if tag:
            return tag, f"{os.path.join(source_root, 'Dockerfile')} VLLM_TAG"
    if spec.checkout is None and spec.name in known.KNOWN_RELEASES:
        return known.KNOWN_RELEASES[spec.name].vllm, "the suite's table of releases (ascend_conformance/sut/release.py)"
    if spec.checkout is not None and spec.name in known.KNOWN_CHECKOUTS:
        return known.KNOWN_CHECKOUTS[spec.name], "the suite's table of checkouts (ascend_conformance/sut/release.py)"
    raise ConfigError(f"cannot tell which vLLM vllm-ascend {spec.name or spec.checkout} pairs with (no Dockerfile "
                      f"VLLM_TAG, not in the suite's table): pass --vllm VERSION")


# -- releases on the index ---------------------------------------------------------------------------------

def fetch_artifact(version: str, log=print) -> str:
    """The verified sdist or wheel of vllm-ascend ``version``, downloaded once into the cache."""
    local = os.environ.get(ARTIFACT_ENV)
    recorded = known.KNOWN_RELEASES.get(version)
    if local:
        path = local
    else:
        directory = os.path.join(cache_directory(), "releases", f"vllm_ascend-{version}")
        found = [p for p in glob.glob(os.path.join(directory, "vllm_ascend-*")) if not p.endswith(".part")]
        if recorded is not None:
            found = [p for p in found if os.path.basename(p) == recorded.artifact]
        if not found:
            found = [_download(version, directory, recorded.artifact if recorded else None, log)]
        path = found[0]
    digest = sha256(path)
    if recorded is not None and os.path.basename(path) == recorded.artifact and digest != recorded.sha256:
        raise ConfigError(f"{path}: sha256 {digest} is not vllm-ascend {version}'s {recorded.sha256}")
    if recorded is None:
        log(f"stack: vllm-ascend {version} is not in the suite's table; {os.path.basename(path)} has sha256 {digest} "
            f"(record it in ascend_conformance/sut/release.py once established)")
    return path


INDEX_ENV = "ASCEND_CONFORMANCE_INDEX"  # a PEP 691 simple index (default: PyPI's)
DEFAULT_INDEX = "https://pypi.org/simple"


def index_files(project: str) -> list[dict]:
    """The files the index lists for ``project`` (PEP 691 JSON: filename, url, hashes), without building or
    resolving anything (pip's download of an sdist would build its metadata, and so its build requirements)."""
    import json
    import urllib.request

    url = f"{os.environ.get(INDEX_ENV, DEFAULT_INDEX).rstrip('/')}/{project}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot list {project} on {url}: {exc} (set {INDEX_ENV} to a mirror, or "
                          f"{ARTIFACT_ENV} to a local file)") from None


def choose_artifact(files: list[dict], version: str, machine: str) -> dict | None:
    """The sdist of ``version`` if the index has one, else a CPython 3.11 wheel (this machine's, else x86_64).

    >>> files = [{"filename": "vllm_ascend-0.18.0-cp311-cp311-manylinux_2_24_x86_64.whl"},
    ...          {"filename": "vllm_ascend-0.18.0-cp310-cp310-manylinux_2_24_x86_64.whl"}]
    >>> choose_artifact(files, "0.18.0", "aarch64")["filename"]
    'vllm_ascend-0.18.0-cp311-cp311-manylinux_2_24_x86_64.whl'
    """
    mine = [f for f in files if not f.get("yanked")]
    for wanted in (f"vllm_ascend-{version}.tar.gz", f"vllm-ascend-{version}.tar.gz"):
        for item in mine:
            if item["filename"] == wanted:
                return item
    wheels = [f for f in mine if f["filename"].startswith(f"vllm_ascend-{version}-cp311-") and f["filename"].endswith(".whl")]
    for arch in (machine, "x86_64"):
        for item in wheels:
            if item["filename"].endswith(f"_{arch}.whl"):
                return item
    return None


def _download(version: str, directory: str, filename: str | None, log) -> str:
    """Download the release's artifact (``filename``, else :func:`choose_artifact`) into ``directory``,
    checked against the index's own sha256; whole or not at all."""
    import platform
    import urllib.request

    files = index_files("vllm-ascend")
    if filename is not None:
        item = next((f for f in files if f["filename"] == filename), None)
    else:
        item = choose_artifact(files, version, platform.machine())
    if item is None:
        raise ConfigError(f"vllm-ascend {version} is not on the index (no sdist, no CPython 3.11 wheel)")
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, item["filename"])
    partial = final + ".part"
    log(f"stack: downloading {item['url']}")
    try:
        with urllib.request.urlopen(item["url"], timeout=300) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise ConfigError(f"cannot download vllm-ascend {version} from {item['url']}: {exc}") from None
    expected = item.get("hashes", {}).get("sha256")
    if expected and sha256(partial) != expected:
        os.remove(partial)
        raise ConfigError(f"{item['url']}: sha256 differs from the index's {expected}")
    os.replace(partial, final)
    return final


def unpack(artifact: str, version: str, destination: str, device_type: str, log=print) -> str:
    """Unpack an sdist or wheel's Python source into ``destination`` (whole or not at all); return it.

    Compiled files (``*.so``) and entry points are left out; ``_build_info.py`` is written where missing.
    """
    if os.path.isdir(os.path.join(destination, "vllm_ascend")):
        return destination
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        log(f"stack: unpacking {os.path.basename(artifact)} into {destination} (Python source only, no build)")
        if artifact.endswith(".whl"):
            with zipfile.ZipFile(artifact) as archive:
                members = [m for m in archive.namelist() if not m.endswith(".so") and not m.endswith("/RECORD")]
                archive.extractall(staging, members)
            root = staging
        else:
            with tarfile.open(artifact) as archive:
                archive.extractall(staging, filter="data")
            tops = [d for d in os.listdir(staging) if os.path.isdir(os.path.join(staging, d, "vllm_ascend"))]
            if len(tops) != 1:
                raise ConfigError(f"{artifact}: expected one top directory holding vllm_ascend/, found {tops}")
            root = os.path.join(staging, tops[0])
        if not os.path.isdir(os.path.join(root, "vllm_ascend")):
            raise ConfigError(f"{artifact}: no vllm_ascend package inside")
        for entry_points in glob.glob(os.path.join(root, "*.*-info", "entry_points.txt")):
            os.remove(entry_points)  # vLLM would load vllm-ascend as its platform plugin and ask for an NPU
        write_build_info(os.path.join(root, "vllm_ascend"), device_type)
        os.replace(root, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def write_build_info(package_dir: str, device_type: str) -> None:
    """``_build_info.py`` naming the emulated device type, unless the release (or its build) has one."""
    path = os.path.join(package_dir, "_build_info.py")
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(BUILD_INFO.format(device_type=device_type))
        os.replace(path + ".tmp", path)


# -- checkouts ----------------------------------------------------------------------------------------------

def link_checkout(checkout: str, destination: str, device_type: str) -> str:
    """A directory ``destination`` holding a symbolic link ``vllm_ascend`` to the checkout's package (so the
    checkout's own egg-info / entry points stay off the import path); return it."""
    write_build_info(os.path.join(checkout, "vllm_ascend"), device_type)  # git-ignored: its build writes it too
    os.makedirs(destination, exist_ok=True)
    link = os.path.join(destination, "vllm_ascend")
    target = os.path.join(checkout, "vllm_ascend")
    if os.path.islink(link) and os.readlink(link) == target:
        return destination
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)
    return destination


__all__ = ["ReleaseSpec", "paired_vllm", "dockerfile_vllm", "fetch_artifact", "unpack", "link_checkout",
           "write_build_info", "cache_directory", "sha256"]
