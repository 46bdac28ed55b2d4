"""What a result was measured on: platform (and, on npu-emulated, the emulation), device model / SoC,
driver, firmware, CANN, torch, torch_npu, the systems under test (vllm, vllm_ascend: release and where it
comes from), host.

:func:`capture` returns a flat ``{name: str}`` mapping (the Allure environment, the HTML report's
environment table, and the ``machine_info`` of benchmark JSON via :func:`machine_info`, whose
``platform`` / ``device_model`` / ``world_size``-free fields key the baseline comparison).
:func:`write_allure_properties` writes it as ``environment.properties`` in an allure-results directory.

Nothing here raises: a version that cannot be read is reported as such ("not installed", "unknown").
"""
from __future__ import annotations

import os
import platform as host_platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata

from ascend_conformance import platform as platforms

# Display order of the fields; anything else captured follows in alphabetical order.
FIELDS = ("platform", "backend", "emulation", "device_model", "soc", "device_count", "driver", "firmware", "cann", "torch",
          "torch_npu", "vllm", "vllm_origin", "vllm_ascend", "vllm_ascend_origin", "ascend_conformance", "python", "host",
          "os", "cpu", "git_commit")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host_platform.processor() or host_platform.machine()


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "not a git checkout"
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _systems_under_test() -> dict[str, str]:
    """``vllm`` / ``vllm_ascend``: the installed release; ``<name>_origin``: a host install or the
    project's pinned stack, and where it lives (``ascend_conformance.sut.stack``)."""
    try:
        from ascend_conformance.sut import stack

        packages = stack.inspect()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        reason = f"unknown ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return {name: _package_version(name) for name in ("vllm", "vllm_ascend")} | {
            f"{name}_origin": reason for name in ("vllm", "vllm_ascend")}
    from ascend_conformance.sut import installed

    env = {}
    for name, package in packages.items():
        release = installed.installed(name)
        # as result labels name it: "0.18.0", or a checkout's "main@182b75ea84" (its version and commit beside)
        env[name] = release.label.split(" ", 1)[1] if release is not None else "not installed"
        if release is not None and release.is_checkout:
            env[f"{name}_version"] = release.version
            env[f"{name}_commit"] = release.commit or "unknown"
        if release is not None and release.pairs_with:
            env[f"{name}_pairs_with"] = f"vllm {release.pairs_with}"
        env[f"{name}_origin"] = f"{package.origin}: {package.location}" if package.version else package.origin
    return env


def capture(platform: platforms.Platform | None = None) -> dict[str, str]:
    """The environment of this process's platform (detected when not given)."""
    plat = platform or platforms.get()
    try:
        described = plat.describe()
    except Exception as exc:  # noqa: BLE001 - a broken runtime is a finding, not a crash
        described = {"platform": plat.name, "backend": plat.backend, "unavailable_reason": str(exc)}
    env: dict[str, str] = {}
    for key, value in described.items():
        if key == "devices":
            continue
        env[key] = str(value)
    devices = described.get("devices") or []
    if plat.name == "cpu":
        env["device_model"] = _cpu_model()
        env["soc"] = "n/a (cpu platform)"
    elif plat.record_device == "emulated":
        env["device_model"] = str(devices[0]) if devices else "unknown"
        # The stand-in emulates a device type per test (part of each SUT test id), never a real SoC.
        env["soc"] = "none: emulated npu on the host (golden ops; device type A2 / A3 / A5 per test)"
    else:
        env["device_model"] = str(devices[0]) if devices else "unknown"
        env["soc"] = env["device_model"]  # torch_npu names the SoC (e.g. Ascend910B3) as the device name
        if len(set(map(str, devices))) > 1:
            env["device_models"] = ", ".join(sorted(set(map(str, devices))))
    env.setdefault("device_count", "0")
    # torch_npu / CANN / driver even when the platform under test is not npu: a vendor sign-off wants
    # to see what was installed. Read without importing torch_npu (its import initialises CANN).
    env.setdefault("torch_npu", _package_version("torch_npu"))
    env.setdefault("cann", platforms._cann_version())
    env.setdefault("driver", platforms._read_first_line("/usr/local/Ascend/driver/version.info") or "not found")
    env.setdefault("firmware", platforms._read_first_line("/usr/local/Ascend/firmware/version.info") or "not found")
    env.update(_systems_under_test())
    env["ascend_conformance"] = _package_version("ascend-conformance")
    env["python"] = sys.version.split()[0]
    env["host"] = socket.gethostname()
    env["os"] = f"{host_platform.system()} {host_platform.release()} {host_platform.machine()}"
    env["cpu"] = f"{_cpu_model()} ({os.cpu_count()} cores)"
    env["git_commit"] = _git_commit()
    return ordered(env)


def ordered(env: Mapping[str, str]) -> dict[str, str]:
    first = [k for k in FIELDS if k in env]
    return {k: env[k] for k in first + sorted(k for k in env if k not in FIELDS)}


def machine_info(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``machine_info`` block of benchmark JSON: pytest-benchmark's own fields plus ours.

    ``node`` / ``machine`` / ``python_version`` / ``system`` / ``release`` are pytest-benchmark's names;
    ``platform`` and ``device_model`` are the keys the baseline comparison matches on.
    """
    env = dict(env or capture())
    info = {
        "node": env.get("host", socket.gethostname()),
        "processor": host_platform.processor(),
        "machine": host_platform.machine(),
        "python_implementation": host_platform.python_implementation(),
        "python_version": host_platform.python_version(),
        "python_compiler": host_platform.python_compiler(),
        "release": host_platform.release(),
        "system": host_platform.system(),
    }
    info.update(env)
    return info


def _escape_properties(text: str, key: bool) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch in "=:#!" and key:
            out.append("\\" + ch)
        elif ch == " " and (key or i == 0):
            out.append("\\ ")
        elif ord(ch) > 126:  # \uXXXX, astral characters as their UTF-16 surrogate pair
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{int.from_bytes(units[j:j + 2], 'big'):04x}" for j in range(0, len(units), 2))
        else:
            out.append(ch)
    return "".join(out)


def write_allure_properties(allure_dir: str, env: Mapping[str, str]) -> str:
    """Write ``environment.properties`` (Java properties, ISO-8859-1 safe) into ``allure_dir``."""
    os.makedirs(allure_dir, exist_ok=True)
    path = os.path.join(allure_dir, "environment.properties")
    lines = [f"{_escape_properties(str(k), True)}={_escape_properties(str(v), False)}" for k, v in env.items()]
    with open(path, "w", encoding="latin-1", errors="replace") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _join_surrogates(chars: list[str]) -> str:
    return "".join(chars).encode("utf-16-be", "surrogatepass").decode("utf-16-be")


def read_properties(path: str) -> dict[str, str]:
    """Parse the simple properties files :func:`write_allure_properties` writes (for tests and tools)."""
    out: dict[str, str] = {}
    with open(path, encoding="latin-1") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line or line.startswith(("#", "!")):
                continue
            key, value, i, escaped = [], [], 0, False
            target = key
            while i < len(line):
                ch = line[i]
                if escaped:
                    if ch == "u":
                        target.append(chr(int(line[i + 1:i + 5], 16)))
                        i += 4
                    else:
                        target.append({"n": "\n", "r": "\r", "t": "\t"}.get(ch, ch))
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch in "=:" and target is key:
                    target = value
                else:
                    target.append(ch)
                i += 1
            out[_join_surrogates(key)] = _join_surrogates(value)
    return out
