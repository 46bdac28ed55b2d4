"""What stack of systems under test this host has, and installing the project's pinned pair.

Two ways a host gets vLLM and vllm-ascend:

* **host install** — an NPU host usually has them installed next to its torch / torch_npu / CANN (or a
  platform engineer's editable checkout of vllm-ascend): the suite uses what is there, reports its
  versions, and never replaces it (nor torch);
* **project stack** — elsewhere ``ascend-conformance stack --install`` (run by ``make setup``) installs the
  pair pinned in :mod:`ascend_conformance.sut.release` into the current environment: vLLM's wheel with
  ``--no-deps`` plus an explicit list of pure-Python packages (so no CUDA torch is ever pulled), and
  vllm-ascend's source distribution unpacked as source under ``<env>/src/`` (its C++/CANN ops are never
  built; only its Python code runs, on the stand-in's golden ops).

:func:`inspect` says which of the two each package is (or that it is missing); :func:`install` is
idempotent: it installs what is missing and leaves what is present alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import release

SDIST_ENV = "ASCEND_CONFORMANCE_VLLM_ASCEND_SDIST"  # a local path or URL of the sdist (mirrors, offline hosts)
from ascend_conformance.sut.installed import MARKER  # noqa: E402 - in sys.prefix: what the project installed there
PTH = "ascend_conformance_vllm_ascend.pth"  # in site-packages: the vllm-ascend source directory


@dataclasses.dataclass(frozen=True)
class Package:
    """One package of the stack as this environment has it."""

    name: str  # distribution name: vllm, vllm_ascend
    version: str | None  # None when missing
    origin: str  # "host install" | "project stack" | "missing"
    location: str | None

    def describe(self) -> str:
        if self.version is None:
            return f"{self.name}: missing"
        return f"{self.name} {self.version} ({self.origin}, {self.location})"


def _marker_path() -> str:
    return os.path.join(sys.prefix, MARKER)


def _marker() -> dict:
    try:
        with open(_marker_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _package(name: str) -> Package:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return Package(name, None, "missing", None)
    location = os.path.dirname(list(spec.submodule_search_locations)[0])
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (no package metadata)"
    mine = _marker().get(name, {})
    origin = "project stack" if mine.get("location") == location else "host install"
    return Package(name, version, origin, location)


def inspect() -> dict[str, Package]:
    """``{"vllm": Package, "vllm_ascend": Package}`` for this environment (no import of either)."""
    return {name: _package(name) for name in ("vllm", "vllm_ascend")}


def unavailable_reason(name: str) -> str | None:
    """None when SUT ``name`` (``vllm`` or ``vllm_ascend``) is installed here; else the one-line skip
    reason. vllm-ascend needs vLLM too."""
    packages = inspect()
    needed = ["vllm"] + (["vllm_ascend"] if name == "vllm_ascend" else [])
    missing = [n for n in needed if packages[n].version is None]
    if missing:
        return (f"{' and '.join(missing)} not installed (make setup installs vllm {release.VLLM_VERSION} + "
                f"vllm-ascend {release.VLLM_ASCEND_VERSION}; or install your own)")
    return None


# -- installing ----------------------------------------------------------------------------------

def _pip(*args: str, log) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *args]
    log(f"stack: {' '.join(command[2:])}")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("WARNING")]
        raise ConfigError(f"pip install {' '.join(args[:3])}{' ...' if len(args) > 3 else ''} failed: "
                          f"{lines[-1] if lines else 'exit code ' + str(done.returncode)}")


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("torch is not installed in this environment: install it first (make setup does; "
                          "the stack install never installs torch)") from None


def _fetch_sdist(cache_dir: str, log) -> str:
    """Path of the verified vllm-ascend sdist, downloaded once into ``cache_dir``."""
    source = os.environ.get(SDIST_ENV) or release.VLLM_ASCEND_SDIST_URL
    if os.path.exists(source):
        path = source
    else:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, release.VLLM_ASCEND_SDIST_NAME)
        if not (os.path.exists(path) and _sha256(path) == release.VLLM_ASCEND_SDIST_SHA256):
            log(f"stack: downloading {source}")
            partial = path + ".part"
            try:
                with urllib.request.urlopen(source, timeout=120) as response, open(partial, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as exc:
                raise ConfigError(f"cannot download vllm-ascend {release.VLLM_ASCEND_VERSION} from {source}: {exc} "
                                  f"(set {SDIST_ENV} to a local copy or a mirror URL)") from None
            os.replace(partial, path)
    digest = _sha256(path)
    if digest != release.VLLM_ASCEND_SDIST_SHA256:
        raise ConfigError(f"{path}: sha256 {digest} is not vllm-ascend {release.VLLM_ASCEND_VERSION}'s "
                          f"{release.VLLM_ASCEND_SDIST_SHA256}")
    return path


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _unpack_source(sdist: str, device_type: str, log) -> str:
    """Unpack the sdist under ``<env>/src/`` (whole or not at all) and return the source directory."""
    top = f"vllm_ascend-{release.VLLM_ASCEND_VERSION}"
    src_root = os.path.join(sys.prefix, "src")
    final = os.path.join(src_root, top)
    if os.path.isdir(os.path.join(final, "vllm_ascend")):
        return final
    os.makedirs(src_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=src_root)
    try:
        log(f"stack: unpacking {os.path.basename(sdist)} into {final} (Python source only, no build)")
        with tarfile.open(sdist) as archive:
            archive.extractall(staging, filter="data")
        unpacked = os.path.join(staging, top)
        # vLLM would load vllm-ascend as its platform plugin through these entry points and ask for an
        # NPU; the suite drives vllm-ascend's modules itself, so the source copy declares none.
        entry_points = os.path.join(unpacked, "vllm_ascend.egg-info", "entry_points.txt")
        if os.path.exists(entry_points):
            os.remove(entry_points)
        # setup.py would generate this from SOC_VERSION; the stand-in reports the same device type.
        with open(os.path.join(unpacked, "vllm_ascend", "_build_info.py"), "w") as f:
            f.write(f"# Written by ascend-conformance's stack install (no build): the emulated device type.\n"
                    f"__device_type__ = {device_type!r}\n")
        os.replace(unpacked, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _link_source(source_dir: str) -> str:
    """Put ``source_dir`` on this environment's path through a .pth file; return the .pth path."""
    import sysconfig

    if not os.path.isdir(os.path.join(source_dir, "vllm_ascend")):
        raise ConfigError(f"{source_dir} holds no vllm_ascend package (expected {source_dir}/vllm_ascend/)")
    pth = os.path.join(sysconfig.get_paths()["purelib"], PTH)
    with open(pth + ".tmp", "w") as f:
        f.write(os.path.abspath(source_dir) + "\n")
    os.replace(pth + ".tmp", pth)
    if os.path.abspath(source_dir) not in sys.path:  # new interpreters read the .pth; this one is told
        sys.path.append(os.path.abspath(source_dir))
    return pth


def install(*, cache_dir: str | None = None, device_type: str = "A3", log=print) -> dict[str, Package]:
    """Install whatever of the default pair is missing here; leave host installs alone. (Any other pair gets
    an environment of its own: :func:`ascend_conformance.sut.pair_env.install_pair`.)"""
    torch_version = _torch_version()
    before = inspect()
    marker = _marker()
    if before["vllm"].version is None:
        _pip(f"vllm=={release.VLLM_VERSION}", *release.PURE_PYTHON_REQUIREMENTS, log=log)
        marker["vllm"] = {"version": release.VLLM_VERSION, "location": inspect()["vllm"].location}
    else:
        log(f"stack: using {before['vllm'].describe()}")
    if before["vllm_ascend"].version is None:
        sdist = _fetch_sdist(cache_dir or os.path.expanduser("~/.cache/ascend-conformance"), log)
        source = _unpack_source(sdist, device_type, log)
        _link_source(source)
        marker["vllm_ascend"] = {"version": release.VLLM_ASCEND_VERSION, "location": source,
                                 "pairs_with": release.VLLM_VERSION}
    else:
        log(f"stack: using {before['vllm_ascend'].describe()}")
    importlib.invalidate_caches()
    marker["torch"] = torch_version
    with open(_marker_path() + ".tmp", "w") as f:
        json.dump(marker, f, indent=1)
    os.replace(_marker_path() + ".tmp", _marker_path())
    return inspect()


def absent_modules() -> list[str]:
    """The modules of ``IMPORTED_MODULES`` whose source the installed releases do not have (a feature a line
    removed or has not yet: e.g. layer sharding in vllm-ascend main); read from the source, not imported."""
    from ascend_conformance.sut import probe

    return [name for name in release.IMPORTED_MODULES if probe.source_file(name) is None]


def import_check(timeout: float = 300) -> str | None:
    """Import the modules the SUT adapters drive that the installed releases have, in a fresh interpreter with
    the stand-in active where the real torch_npu is absent. None when they import; else the one-line error."""
    present = [name for name in release.IMPORTED_MODULES if name not in absent_modules()]
    code = ("from ascend_conformance.sut import standin; standin.activate()\n"
            "import importlib\n"
            f"for name in {tuple(present)!r}: importlib.import_module(name)\n")
    env = dict(os.environ, VLLM_TARGET_DEVICE=os.environ.get("VLLM_TARGET_DEVICE", "cpu"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"
