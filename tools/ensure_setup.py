"""Bring the environment `make` uses up to date for this checkout; fast when it already is.

Run by `make setup` (and so by every target) with the interpreter `PYTHON` names — the checkout's own
`.venv` unless you chose another. It checks, and installs only what is missing:

1. torch: the one that is there is kept (NPU hosts ship torch + torch_npu as a pair, visible in `.venv`
   through system site-packages); with none, the CPU build `torch==2.13.0` (an unpinned `torch` would
   pull a multi-GB CUDA build);
2. this checkout installed editable with its [dev] extras: the install must point at *this* checkout
   (a second clone set up later, or a deleted one, is noticed) and pyproject.toml must not have changed
   since (`.setup-stamp` records its hash and the interpreter);
3. the systems under test (`--stack pinned`, the default): `ascend-conformance stack --install`, which
   keeps a host's vLLM / vllm-ascend and otherwise installs the pinned pair; `--stack none` skips it.
Standard library only: it runs before anything else is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = os.path.join(ROOT, ".setup-stamp")
TORCH_PIN = "torch==2.13.0"
# Modules of the [dev] extras (pyproject.toml) whose absence means the extras are not installed.
DEV_MODULES = ("pytest", "xdist", "pytest_benchmark", "allure_pytest", "filelock", "psutil", "matplotlib", "jinja2",
               "selenium")


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("setup:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def pyproject_hash() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def installed_checkout() -> str | None:
    """The directory this environment's editable ascend-conformance install points at, or None."""
    # Only the installed distribution has direct_url.json (a build's egg-info in a checkout on sys.path has not).
    for dist in importlib.metadata.distributions(name="ascend-conformance"):
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            return os.path.realpath(url[len("file://"):])
    return None


def stamp_current() -> bool:
    try:
        with open(STAMP) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    return stamp == {"python": os.path.realpath(sys.prefix), "pyproject": pyproject_hash()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", choices=("pinned", "none"), default="pinned")
    args = parser.parse_args()
    if importlib.util.find_spec("torch") is None:
        pip(TORCH_PIN)
    here = os.path.realpath(ROOT)
    if (installed_checkout() != here or not stamp_current()
            or any(importlib.util.find_spec(m) is None for m in DEV_MODULES)):
        if os.path.exists(STAMP):
            os.remove(STAMP)
        pip("-e", f"{ROOT}[dev]")
        importlib.invalidate_caches()
        if installed_checkout() != here:
            print(f"setup: error: ascend-conformance in {sys.prefix} points at {installed_checkout()}, not {here}",
                  file=sys.stderr)
            return 2
    if args.stack == "pinned":
        done = subprocess.run([sys.executable, "-m", "ascend_conformance", "stack", "--install"])
        if done.returncode:
            return done.returncode
    with open(STAMP + ".tmp", "w") as f:
        json.dump({"python": os.path.realpath(sys.prefix), "pyproject": pyproject_hash()}, f)
    os.replace(STAMP + ".tmp", STAMP)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
