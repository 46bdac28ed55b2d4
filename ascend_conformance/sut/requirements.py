"""What a vLLM release needs installed beside it here: its own declared requirements, minus the accelerator
stack, pinned exactly.

vLLM's wheel declares its requirements (``Requires-Dist`` in its metadata). Installed as they are, they
would replace the host's torch with the CUDA build vLLM was compiled against (several GB, and no use on a
CPU or NPU host). So:

1. :func:`declared` reads them from the wheel, evaluates their environment markers for this interpreter,
   drops extras, and drops the accelerator stack (:func:`is_accelerator_stack`: torch and its siblings,
   CUDA / ROCm libraries, xformers, flash-attention, triton and the GPU kernel packages);
2. :func:`resolve` lets pip's resolver pick one exact version of each, and of everything they need in turn,
   in a dry run (``--ignore-installed``, so nothing of the current environment is taken for granted), and
   drops the accelerator stack from the result again (a pure-Python package may itself ask for torch);
3. the pins are installed with ``--no-deps``, so nothing can pull torch back in.

A pinned set is kept as a lock file (:data:`LOCK_DIRECTORY`, ``vllm-<version>.txt``) committed with the
suite, so a pair installs the same packages on every host and every day; a vLLM without a lock file is
resolved on the spot and its lock written into the pair's environment (``requirements.lock``), to be
committed once the pair is established.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

from ascend_conformance.errors import ConfigError

LOCK_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locks")

# Distribution names (normalised: lower case, runs of -_. as -) of the accelerator stack: never installed by
# the suite. Patterns, each with why.
ACCELERATOR_STACK = (
    r"torch", r"torchaudio", r"torchvision", r"torchcodec",  # the host's torch (CPU here, torch_npu's pair on NPU)
    r"triton(-.*)?", r"xformers", r"flash-attn.*", r"vllm-flash-attn", r"flashinfer(-.*)?",  # GPU kernels
    r"nvidia-.*", r"cuda-.*", r"cupy.*", r"nvtx", r"pynvml", r"nvidia-ml-py", r"pynvvideocodec",  # CUDA
    r"rocm.*", r"amdsmi", r"pytorch-triton-rocm",  # ROCm
    r"apache-tvm-ffi", r"tilelang", r"quack-kernels", r"humming-kernels", r"tokenspeed-mla", r"deep-gemm",
    r"deep-ep", r"fastsafetensors", r"intel-extension-for-pytorch",  # kernel libraries of GPU back ends
)
_ACCELERATOR = re.compile("|".join(f"(?:{pattern})" for pattern in ACCELERATOR_STACK))


def normalise(name: str) -> str:
    """PEP 503 normalisation: ``PyNvVideoCodec`` -> ``pynvvideocodec``, ``flash_attn`` -> ``flash-attn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_accelerator_stack(name: str) -> bool:
    """
    >>> [is_accelerator_stack(n) for n in ("torch", "nvidia-cublas", "Triton", "numpy", "torchvision", "pydantic")]
    [True, True, True, False, True, False]
    """
    return _ACCELERATOR.fullmatch(normalise(name)) is not None


def declared(wheel: str) -> list[str]:
    """The requirements a vLLM wheel declares for this interpreter, without extras and the accelerator stack."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        metadata = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if metadata is None:
            raise ConfigError(f"{wheel}: no .dist-info/METADATA in the wheel")
        text = archive.read(metadata).decode()
    kept = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's, or another platform's / Python's
        if is_accelerator_stack(requirement.name):
            continue
        requirement.marker = None
        kept.append(str(requirement))
    return kept


def resolve(requirements: list[str], log=print) -> list[str]:
    """Exact pins (``name==version``) of ``requirements`` and all they need, minus the accelerator stack,
    from pip's resolver in a dry run."""
    with tempfile.TemporaryDirectory(prefix="ascend-conformance-resolve-") as scratch:
        listing = os.path.join(scratch, "requirements.txt")
        report = os.path.join(scratch, "report.json")
        with open(listing, "w") as f:
            f.write("\n".join(requirements) + "\n")
        log(f"stack: resolving {len(requirements)} declared requirements (pip's resolver, dry run)")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                               "--disable-pip-version-check", "--report", report, "-r", listing],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("WARNING")]
            raise ConfigError(f"cannot resolve the requirements: {lines[-1] if lines else done.returncode}")
        with open(report) as f:
            chosen = json.load(f)["install"]
    pins = {normalise(item["metadata"]["name"]): f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in chosen if not is_accelerator_stack(item["metadata"]["name"])}
    return [pins[name] for name in sorted(pins)]


def lock_path(vllm_version: str) -> str:
    return os.path.join(LOCK_DIRECTORY, f"vllm-{vllm_version}.txt")


def read_lock(path: str) -> list[str]:
    """The pins of a lock file (comments and blank lines ignored); every line must be an exact pin."""
    pins = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+", line):
                raise ConfigError(f"{path}:{number}: {line!r} is not an exact pin (name==version)")
            if is_accelerator_stack(line.split("==")[0]):
                raise ConfigError(f"{path}:{number}: {line!r} is part of the accelerator stack, never installed")
            pins.append(line)
    return pins


def write_lock(path: str, pins: list[str], header: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write("".join(f"# {line}\n" for line in header.splitlines()) + "\n".join(pins) + "\n")
    os.replace(path + ".tmp", path)


def pins_for(vllm_version: str, wheel: str, log=print) -> tuple[list[str], str]:
    """(pins, where they came from): the committed lock of ``vllm_version``, else a fresh resolution."""
    committed = lock_path(vllm_version)
    if os.path.exists(committed):
        return read_lock(committed), committed
    return resolve(declared(wheel), log=log), "resolved now"


__all__ = ["ACCELERATOR_STACK", "is_accelerator_stack", "declared", "resolve", "read_lock", "write_lock",
           "lock_path", "pins_for", "normalise"]
