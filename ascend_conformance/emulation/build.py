"""Building the emulated device's C++ extension once per torch and source, and loading it.

The extension (``csrc/npu_device.cpp``) is compiled with ``torch.utils.cpp_extension.load`` against the
torch of this environment on first use and kept in a per-user cache, one directory per key::

    <cache>/npu-device-torch2.13.0+cpu-cp311-<sha256 of the sources, 12 hex>/

``<cache>`` is ``$ASCEND_CONFORMANCE_CACHE``, else ``$XDG_CACHE_HOME/ascend-conformance``, else
``~/.cache/ascend-conformance``. A changed source, torch or Python gives a new key, so a stale build is
never loaded. Many processes may ask at once (xdist workers, the ranks of a pool): the first takes a file
lock next to the cache directory and builds into a private directory that it renames into place when
the build succeeded, so the key's directory either holds a complete build or does not exist. The others
wait on the lock and then load the finished build.

What a build needs (a C++ compiler, ninja, Python's headers) is checked first; a missing piece is one
line naming it, e.g. ``cannot build the emulated npu device: no C++ compiler (c++ not on PATH; install
g++ or set CXX)``. A failed compile leaves its full output in ``<key>.failed.log`` and says where.

Loading a build registers the ``npu`` backend's kernels with torch's dispatcher for the life of the
process, so each process loads it at most once (:func:`load`); :func:`ensure_built` only builds, for a
process (pytest itself) that must not become an ``npu`` process.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import time

from ascend_conformance.errors import ConfigError

SOURCES = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "npu_device.cpp"),)
MODULE_NAME = "ascend_conformance_npu_device"
CACHE_ENV = "ASCEND_CONFORMANCE_CACHE"


class BuildUnavailable(ConfigError):
    """The extension cannot be built here (a tool is missing, or the compile failed): one line."""


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as handle:
            digest.update(os.path.basename(path).encode() + b"\0" + handle.read())
    return digest.hexdigest()[:12]


def cache_root() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ascend-conformance")


def build_key() -> str:
    import torch

    return f"npu-device-torch{torch.__version__}-cp{sys.version_info.major}{sys.version_info.minor}-{source_digest()}"


def build_dir() -> str:
    return os.path.join(cache_root(), build_key())


def missing_tools() -> str | None:
    """None when a build can run here; else what is missing, in one line."""
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler} not on PATH; install g++ or set CXX)"
    if shutil.which("ninja") is None:
        return "no ninja (torch.utils.cpp_extension builds with it; pip install ninja or apt-get install ninja-build)"
    headers = sysconfig.get_paths().get("include") or ""
    if not os.path.isfile(os.path.join(headers, "Python.h")):
        return f"no Python headers (Python.h not in {headers}; install python{sys.version_info.major}." \
               f"{sys.version_info.minor}-dev)"
    return None


def _shared_object(directory: str) -> str | None:
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        if name.startswith(MODULE_NAME) and name.endswith(".so"):
            return os.path.join(directory, name)
    return None


def ensure_built() -> tuple[str, float]:
    """The path of the built extension and the seconds this call spent building it (0.0 when cached).

    Raises BuildUnavailable (one line) when it cannot be built here."""
    final = build_dir()
    found = _shared_object(final)
    if found:
        return found, 0.0
    from filelock import FileLock

    try:
        os.makedirs(cache_root(), exist_ok=True)
    except OSError as exc:
        raise BuildUnavailable(f"cannot build the emulated npu device: the cache directory {cache_root()} cannot be "
                               f"made ({exc.strerror or exc}); set {CACHE_ENV} to a writable directory") from None
    with FileLock(final + ".lock"):
        found = _shared_object(final)  # another process built it while this one waited
        if found:
            return found, 0.0
        missing = missing_tools()
        if missing:
            raise BuildUnavailable(f"cannot build the emulated npu device: {missing}")
        started = time.perf_counter()
        _compile_into(final)
        return _shared_object(final), time.perf_counter() - started


def _compile_into(final: str) -> None:
    """Compile in a private directory, then rename it to `final` (atomic: complete or absent).

    The compile runs in a child interpreter: ``cpp_extension.load`` imports what it built, and this
    process may be one that must not become an ``npu`` process (see the module docstring)."""
    import subprocess

    private = f"{final}.build-{os.getpid()}"
    shutil.rmtree(private, ignore_errors=True)
    os.makedirs(private)
    log = final + ".failed.log"
    script = ("import sys, torch.utils.cpp_extension as ce; "
              "ce.load(sys.argv[1], sys.argv[3:], build_directory=sys.argv[2], extra_cflags=['-O2'])")
    done = subprocess.run([sys.executable, "-c", script, MODULE_NAME, private, *SOURCES],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        with open(log, "w", encoding="utf-8") as handle:
            handle.write(done.stdout)
        shutil.rmtree(private, ignore_errors=True)
        raise BuildUnavailable(f"building the emulated npu device failed (exit {done.returncode}); compiler "
                               f"output in {log}")
    if os.path.exists(log):
        os.remove(log)
    os.rename(private, final)


_loaded: dict = {}


def load():
    """Build when needed, then import the extension into this process (once); return the module."""
    if "module" in _loaded:
        return _loaded["module"]
    path, seconds = ensure_built()
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE_NAME] = module
    _loaded.update(module=module, path=path, build_seconds=seconds)
    return module
