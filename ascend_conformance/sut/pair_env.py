"""One Python environment per vLLM / vllm-ascend pair: ``.venv-sut/<vllm-ascend>-<vllm>/``.

Two releases of vLLM cannot live in one environment, so each pair the suite is run against gets its own,
beside the checkout's ``.venv``, and is reused when present::

    .venv-sut/0.18.0-0.18.0/          a venv (system site packages on, as .venv has them)
        lib/python3.11/site-packages/
            ascend_conformance_base.pth      .venv's site-packages: torch, pytest, ... (after the pair's own)
            __editable__...                  this checkout, installed editable (its pytest plugin)
            ascend_conformance_vllm_ascend.pth   the release's source directory
            vllm/, transformers/, ...        vLLM's wheel and its pins (--no-deps), shadowing .venv's
        src/vllm_ascend-0.18.0/           the release's Python source (or a link to a checkout's package)
        ascend-conformance-stack.json     what was installed: names, versions, commit, the pins' origin
        requirements.lock                 the exact pins installed

torch is never installed into it: the pair sees ``.venv``'s (the host's on an NPU host). Run the suite in a
pair with its interpreter: ``.venv-sut/0.18.0-0.18.0/bin/python -m pytest suites/test_sut_groups.py``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import installed as installed_mod
from ascend_conformance.sut import release_sources, requirements
from ascend_conformance.sut.release_sources import ReleaseSpec

ENVS_ENV = "ASCEND_CONFORMANCE_SUT_ENVS"  # the directory of pair environments (default: <checkout>/.venv-sut)
CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_PTH = "ascend_conformance_base.pth"
SOURCE_PTH = "ascend_conformance_vllm_ascend.pth"
LOCK_NAME = "requirements.lock"


def envs_directory() -> str:
    return os.environ.get(ENVS_ENV) or os.path.join(CHECKOUT_ROOT, ".venv-sut")


@dataclasses.dataclass(frozen=True)
class PairEnv:
    """A pair's environment: where it is and what it holds."""

    vllm_ascend: str  # the release's name: 0.18.0, main
    vllm: str
    directory: str

    @property
    def python(self) -> str:
        return os.path.join(self.directory, "bin", "python")

    @property
    def name(self) -> str:
        return os.path.basename(self.directory)

    def marker(self) -> dict:
        return installed_mod.marker(self.directory)

    def exists(self) -> bool:
        recorded = self.marker()
        return (os.path.exists(self.python) and recorded.get("vllm", {}).get("version") == self.vllm
                and recorded.get("vllm_ascend", {}).get("name") == self.vllm_ascend and recorded.get("complete"))


def pair_directory(vllm_ascend_name: str, vllm: str, envs_dir: str | None = None) -> str:
    return os.path.join(envs_dir or envs_directory(), f"{vllm_ascend_name}-{vllm}")


def _site_packages(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _pip(python: str, args: list[str], log) -> None:
    command = [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--disable-pip-version-check",
               "-q", *args]
    shown = " ".join(args[:4]) + (f" ... ({len(args)} in all)" if len(args) > 4 else "")
    log(f"stack: pip install --no-deps {shown}")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("WARNING")]
        raise ConfigError(f"pip install {shown} failed: {lines[-1] if lines else 'exit code ' + str(done.returncode)}")


def _create(directory: str, log) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    log(f"stack: creating {directory} (system site packages, and {sys.prefix}'s through {BASE_PTH})")
    # No pip / setuptools of its own (the interpreter's bundled ones are old: setuptools 65 cannot build an
    # editable install): the pair runs .venv's, found through the path line below, and installs into itself.
    subprocess.run([base, "-m", "venv", "--system-site-packages", "--without-pip", directory], check=True,
                   stdout=subprocess.DEVNULL)
    site = _site_packages(os.path.join(directory, "bin", "python"))
    # The environment that created the pair (torch, pytest and the suite's own dependencies), after the
    # pair's own packages. A path line only: the .pth files of .venv (its vllm-ascend link) are not
    # processed, so its pair never leaks in.
    with open(os.path.join(site, BASE_PTH), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")


def _install_checkout(python: str, log) -> None:
    """This checkout, editable, into the pair (its pytest plugin is found through its entry point)."""
    log(f"stack: pip install --no-deps -e {CHECKOUT_ROOT}")
    done = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-e", CHECKOUT_ROOT],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("WARNING")]
        raise ConfigError(f"pip install -e {CHECKOUT_ROOT} failed: {lines[-1] if lines else done.returncode}")


def install_pair(spec_text: str, vllm: str | None = None, *, envs_dir: str | None = None, device_type: str = "A3",
                 log=print) -> PairEnv:
    """Set up (or reuse) the environment of the pair vllm-ascend ``spec_text`` + vLLM ``vllm`` (default: the
    one the release pairs with). One-line ConfigError for a release or pair that cannot install."""
    spec = ReleaseSpec.parse(spec_text)
    artifact = None
    if spec.checkout is None:
        artifact = release_sources.fetch_artifact(spec.name, log=log)
        source_root = None  # read the Dockerfile after unpacking (sdists ship one)
    else:
        source_root = spec.checkout
    identity = installed_mod.source_identity(spec.checkout) if spec.checkout else {}
    name = spec.name or identity.get("version") or os.path.basename(spec.checkout)

    # Which vLLM: asked for, else the release's own Dockerfile, else the table.
    scratch = None
    if vllm is None:
        if artifact is not None and not artifact.endswith(".whl"):
            scratch = os.path.join(envs_dir or envs_directory(), f".source-{name}")
            release_sources.unpack(artifact, name, scratch, device_type, log=log)
            source_root = scratch
        vllm, how = release_sources.paired_vllm(ReleaseSpec(name, spec.checkout), source_root)
        log(f"stack: vllm-ascend {name} pairs with vLLM {vllm} ({how})")
    else:
        log(f"stack: vllm-ascend {name} with vLLM {vllm} (asked for)")
    pair = PairEnv(name, vllm, pair_directory(name, vllm, envs_dir))
    if pair.exists() and spec.checkout is None and marker_checkout(pair) == CHECKOUT_ROOT:
        log(f"stack: reusing {pair.directory}")
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        return pair
    try:
        if not os.path.exists(pair.python):
            _create(pair.directory, log)
        if marker_checkout(pair) != CHECKOUT_ROOT:
            _install_checkout(pair.python, log)
        marker = pair.marker()
        marker.pop("complete", None)
        _write_marker(pair, marker)
        if marker.get("vllm", {}).get("version") != vllm:
            wheel = _vllm_wheel(vllm, log)
            pins, origin = requirements.pins_for(vllm, wheel, log=log)
            _pip(pair.python, [wheel, *pins], log)
            requirements.write_lock(os.path.join(pair.directory, LOCK_NAME), pins,
                                    f"vLLM {vllm}'s requirements minus the accelerator stack ({origin})")
            site = _site_packages(pair.python)
            marker["vllm"] = {"version": vllm, "location": site, "pins": origin}
        source_dir = os.path.join(pair.directory, "src", f"vllm_ascend-{name}")
        if spec.checkout is not None:
            release_sources.link_checkout(spec.checkout, source_dir, device_type)
            marker["vllm_ascend"] = {"name": name, "version": identity.get("version") or "unknown",
                                     "commit": identity.get("commit"), "checkout": spec.checkout,
                                     "pairs_with": vllm, "location": source_dir}
        else:
            if scratch is not None and not os.path.exists(source_dir):
                os.makedirs(os.path.dirname(source_dir), exist_ok=True)
                os.replace(scratch, source_dir)
            release_sources.unpack(artifact, name, source_dir, device_type, log=log)
            marker["vllm_ascend"] = {"name": name, "version": name, "pairs_with": vllm, "location": source_dir,
                                     "artifact": os.path.basename(artifact),
                                     "sha256": release_sources.sha256(artifact)}
        site = _site_packages(pair.python)
        with open(os.path.join(site, SOURCE_PTH), "w") as f:
            f.write(source_dir + "\n")
        marker["suite_checkout"] = CHECKOUT_ROOT
        marker["complete"] = True
        _write_marker(pair, marker)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return pair


def marker_checkout(pair: PairEnv) -> str | None:
    return pair.marker().get("suite_checkout")


def _vllm_wheel(version: str, log) -> str:
    """vLLM's wheel for this host, downloaded once into the cache."""
    directory = os.path.join(release_sources.cache_directory(), "vllm", version)
    found = [f for f in (os.listdir(directory) if os.path.isdir(directory) else ()) if f.endswith(".whl")]
    if not found:
        os.makedirs(directory, exist_ok=True)
        log(f"stack: downloading vLLM {version}'s wheel")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "-q", "--only-binary", ":all:", "-d", directory, f"vllm=={version}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = [f for f in os.listdir(directory) if f.endswith(".whl")]
        if done.returncode or not found:
            lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("WARNING")]
            raise ConfigError(f"vLLM {version} has no wheel for this host on the index: "
                              f"{lines[-1] if lines else done.returncode}")
    return os.path.join(directory, found[0])


def _write_marker(pair: PairEnv, marker: dict) -> None:
    path = os.path.join(pair.directory, installed_mod.MARKER)
    with open(path + ".tmp", "w") as f:
        json.dump(marker, f, indent=1)
    os.replace(path + ".tmp", path)


def list_pairs(envs_dir: str | None = None) -> list[PairEnv]:
    """The complete pair environments present."""
    root = envs_dir or envs_directory()
    pairs = []
    for entry in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        recorded = installed_mod.marker(os.path.join(root, entry))
        if recorded.get("complete"):
            pairs.append(PairEnv(recorded["vllm_ascend"]["name"], recorded["vllm"]["version"],
                                 os.path.join(root, entry)))
    return pairs


def disk_usage(directory: str) -> int:
    """Bytes under ``directory`` (files only, links not followed)."""
    total = 0
    for parent, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


__all__ = ["PairEnv", "install_pair", "list_pairs", "pair_directory", "envs_directory", "disk_usage"]
