"""cpu / cuda / npu: what differs between devices, behind one small interface.

Everything device-specific the suite needs lives here: the collective backend (gloo / nccl / hccl), the
environment variable that masks visible devices, binding a rank to a device, synchronising, timing
events and memory statistics. The rest of the suite asks ``platform.get()`` and never tests for a
device type itself.

Detection (``detect()``): npu when ``torch_npu`` imports and sees a device, else cuda when CUDA sees a
device, else cpu. ``ASCEND_CONFORMANCE_PLATFORM=cpu|cuda|npu|npu-emulated`` (or pytest's ``--platform``)
overrides it; ``npu-emulated`` (the NPU code path on a CPU host, ``docs/emulation.md``) is never detected,
only chosen; an overridden platform that cannot be used is reported by ``unavailable_reason()`` — the fixtures
turn that into a skip reason, the CLI into ``error: ...``.

torch_npu is imported lazily and guarded: on a machine without CANN its import raises (``libhccl.so:
cannot open shared object file``) and that text becomes the reason, never a crash.

Memory on CPU: there is no caching allocator with statistics, so ``CpuPlatform`` measures allocations
with the PyTorch profiler's allocator events (``profile_memory=True``): the peak of live tensor bytes
allocated inside a ``measure_peak()`` block, above what was live when it started. That counts tensor
storage exactly (what the memory budgets of the shared-weight and EPLB suites are about) and ignores
interpreter and allocator overhead, which RSS would mix in.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Iterator

from ascend_conformance.errors import PlatformUnavailable
from ascend_conformance.errors import one_line as _one_line

PLATFORM_ENV = "ASCEND_CONFORMANCE_PLATFORM"
# HCCL port blocks: 16 ports per block and variable; 512 blocks per variable, one per live warm pool of the
# host (harness/host_register.py hands them out).
PORTS_PER_BLOCK = 16
PORT_BLOCKS = 512
KIND_STRIDE = PORTS_PER_BLOCK * PORT_BLOCKS
PORT_SPAN = 3 * KIND_STRIDE  # ports used above --hccl-port-base
PLATFORM_NAMES = ("cpu", "cuda", "npu", "npu-emulated")


@dataclasses.dataclass
class PeakMemory:
    """Result of ``measure_peak()``: bytes above the starting point, filled in when the block exits."""

    peak_bytes: int = 0
    method: str = ""


class Platform:
    """The device-independent interface; one subclass per device type."""

    name: str = ""
    backend: str = ""  # torch.distributed backend of the device group
    device_type: str = ""  # torch device type
    visible_devices_env: str | None = None  # variable that masks devices, None on cpu
    # Devices the suite makes up (cpu lease slots, emulated NPUs): their count is --devices, their leases
    # are the session's own, and their ranks share the host's cores.
    virtual_devices: bool = False
    record_device: str = ""  # the `device` of every result record: cpu, cuda, npu or emulated

    # --- availability -------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """None when usable; else a one-line reason (used as the skip reason)."""
        return None

    def device_count(self) -> int:
        raise NotImplementedError

    # --- ranks --------------------------------------------------------------------------------------
    def bind(self, local_index: int):
        """Make `local_index` (within the visible devices) this process's current device; return it."""
        raise NotImplementedError

    def device(self, local_index: int) -> str:
        return f"{self.device_type}:{local_index}"

    def rank_environment(self, physical_ids: list[int], port_block: int, port_base: int) -> dict[str, str]:
        """Variables a rank must have before it touches the device runtime."""
        return {}

    # --- timing and memory --------------------------------------------------------------------------
    def synchronize(self) -> None:
        raise NotImplementedError

    def timer(self) -> "Timer":
        """A start/stop timer: device events where the device has them, else perf_counter."""
        return WallTimer(self.synchronize)

    def reset_peak_memory(self) -> None:
        pass

    def release_cached_memory(self) -> None:
        """Give cached device memory back between tests (nothing to do on cpu)."""

    def memory_stats(self) -> dict[str, int]:
        """Allocator figures in bytes: allocated, peak_allocated, reserved, free, total (where known)."""
        return {}

    @contextlib.contextmanager
    def measure_peak(self) -> Iterator[PeakMemory]:
        """Peak bytes allocated within the block above the starting level."""
        raise NotImplementedError

    # --- description --------------------------------------------------------------------------------
    def versions(self) -> dict[str, str]:
        import torch

        out = {"torch": torch.__version__}
        try:
            from importlib.metadata import version

            out["vllm"] = version("vllm")
        except Exception:  # noqa: BLE001 - absent is the normal case
            out["vllm"] = "not installed"
        try:
            from importlib.metadata import version

            out["vllm_ascend"] = version("vllm_ascend")
        except Exception:  # noqa: BLE001
            out["vllm_ascend"] = "not installed"
        return out

    def describe(self) -> dict[str, object]:
        reason = self.unavailable_reason()
        info: dict[str, object] = {"platform": self.name, "backend": self.backend,
                                   "available": reason is None}
        if reason:
            info["unavailable_reason"] = reason
        else:
            info["device_count"] = self.device_count()
            info["devices"] = self.device_names()
        info.update(self.versions())
        return info

    def device_names(self) -> list[str]:
        return []


class Timer:
    def start(self) -> None: ...

    def stop(self) -> float:
        """Seconds since start(), after the device has finished the enqueued work."""
        ...


class WallTimer(Timer):
    def __init__(self, synchronize):
        self._synchronize = synchronize
        self._t0 = 0.0

    def start(self) -> None:
        self._synchronize()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        self._synchronize()
        return time.perf_counter() - self._t0


class EventTimer(Timer):
    """Device events bracket the enqueued work; the elapsed time excludes host-side launch gaps."""

    def __init__(self, module):
        self._start = module.Event(enable_timing=True)
        self._end = module.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1000.0


class CpuPlatform(Platform):
    name, backend, device_type = "cpu", "gloo", "cpu"
    virtual_devices, record_device = True, "cpu"
    # CPU "devices" are slots of the lease pool (pytest --devices N); ranks share the cores.
    slots = 8

    def device_count(self) -> int:
        return self.slots

    def bind(self, local_index: int):
        import torch

        return torch.device("cpu")

    def device(self, local_index: int) -> str:
        return "cpu"

    def synchronize(self) -> None:
        pass

    def memory_stats(self) -> dict[str, int]:
        import psutil

        vm = psutil.virtual_memory()
        rss = psutil.Process().memory_info().rss
        return {"rss": rss, "free": vm.available, "total": vm.total}

    @contextlib.contextmanager
    def measure_peak(self) -> Iterator[PeakMemory]:
        from torch.profiler import ProfilerActivity, profile

        result = PeakMemory(method="torch.profiler allocator events (tensor bytes)")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield result
        result.peak_bytes = _peak_from_profiler_events(prof)

    def device_names(self) -> list[str]:
        import platform as host

        return [f"{host.machine()}: {self.slots} lease slots over {os.cpu_count()} cores"]


def _peak_from_profiler_events(prof) -> int:
    """Running sum of allocator deltas in time order; the maximum is the peak above the start."""
    deltas = []
    for event in prof.profiler.kineto_results.events():
        if event.name() == "[memory]" and event.device_type().name == "CPU":
            deltas.append((event.start_ns(), event.nbytes()))
    deltas.sort()
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


class _AcceleratorPlatform(Platform):
    """Shared code of cuda and npu: both expose torch.<type> with the same allocator/event API."""

    def _module(self):
        import torch

        return getattr(torch, self.device_type)

    def device_count(self) -> int:
        return self._module().device_count()

    def bind(self, local_index: int):
        import torch

        self._module().set_device(local_index)
        return torch.device(self.device_type, local_index)

    def synchronize(self) -> None:
        self._module().synchronize()

    def timer(self) -> Timer:
        return EventTimer(self._module())

    def reset_peak_memory(self) -> None:
        self._module().reset_peak_memory_stats()

    def release_cached_memory(self) -> None:
        import gc

        gc.collect()  # tensors in reference cycles a test left behind hold device memory until collected
        self._module().empty_cache()

    def memory_stats(self) -> dict[str, int]:
        mod = self._module()
        free, total = mod.mem_get_info()
        return {"allocated": mod.memory_allocated(), "peak_allocated": mod.max_memory_allocated(),
                "reserved": mod.memory_reserved(), "free": free, "total": total}

    @contextlib.contextmanager
    def measure_peak(self) -> Iterator[PeakMemory]:
        mod = self._module()
        mod.synchronize()
        mod.reset_peak_memory_stats()
        start = mod.memory_allocated()
        result = PeakMemory(method=f"torch.{self.device_type} allocator max_memory_allocated")
        yield result
        mod.synchronize()
        result.peak_bytes = mod.max_memory_allocated() - start

    def device_names(self) -> list[str]:
        mod = self._module()
        return [mod.get_device_name(i) for i in range(mod.device_count())]


class CudaPlatform(_AcceleratorPlatform):
    name, backend, device_type = "cuda", "nccl", "cuda"
    record_device = "cuda"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"

    def unavailable_reason(self) -> str | None:
        import torch

        if not torch.cuda.is_available():
            return f"CUDA not available (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
        return None


class NpuPlatform(_AcceleratorPlatform):
    name, backend, device_type = "npu", "hccl", "npu"
    record_device = "npu"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"

    def _module(self):
        # torch.npu exists only once torch_npu is imported: device autoload is off (package __init__),
        # and rank processes fork from a server that never imported it.
        import torch
        import torch_npu  # noqa: F401

        return torch.npu

    def unavailable_reason(self) -> str | None:
        error = torch_npu_import_error()
        if error:
            return error
        try:
            count = self.device_count()
        except Exception as exc:  # noqa: BLE001 - a torch_npu that imports but whose torch.npu is unusable
            return f"torch_npu imported but torch.npu is unusable: {_one_line(exc)}"
        if count == 0:
            return "torch_npu imported but sees no NPU device"
        return None

    def rank_environment(self, physical_ids: list[int], port_block: int, port_base: int) -> dict[str, str]:
        """HCCL ports of block `port_block` (the caller makes blocks unique per concurrent world): 16
        ports per block for each variable, the three variables KIND_STRIDE apart so no two ranges meet."""
        start = port_base + PORTS_PER_BLOCK * port_block
        host, npu = start + KIND_STRIDE, start + 2 * KIND_STRIDE
        return {
            "HCCL_IF_BASE_PORT": str(start),
            "HCCL_HOST_SOCKET_PORT_RANGE": f"{host}-{host + PORTS_PER_BLOCK - 1}",
            "HCCL_NPU_SOCKET_PORT_RANGE": f"{npu}-{npu + PORTS_PER_BLOCK - 1}",
        }

    def versions(self) -> dict[str, str]:
        out = super().versions()
        try:
            import torch_npu

            out["torch_npu"] = torch_npu.__version__
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out["torch_npu"] = f"not importable ({_one_line(exc)})"
        out["cann"] = _cann_version()
        out["driver"] = _read_first_line("/usr/local/Ascend/driver/version.info") or "unknown"
        return out


class EmulatedNpuPlatform(NpuPlatform):
    """npu-emulated: the NPU code path on a CPU host (``ascend_conformance.emulation``, docs/emulation.md).

    Ranks bind ``npu:k`` of an emulated device (PrivateUse1 on host memory), join worlds with the
    emulated ``hccl`` backend, and read timing events and memory statistics from the emulated
    allocator; the HCCL port variables and the visible-devices mask are set as on an NPU host. The
    process that leases (pytest itself) only builds the extension, so it never becomes an ``npu``
    process: the device count there is ``slots`` (pytest's ``--devices``). The torch_npu ops are the
    golden models (the stand-in), so every record says ``ops = golden`` and ``device = emulated``.
    """

    name = "npu-emulated"
    virtual_devices, record_device = True, "emulated"
    slots = 8

    def _module(self):
        from ascend_conformance import emulation

        return emulation.install()

    def unavailable_reason(self) -> str | None:
        from ascend_conformance import emulation

        try:
            emulation.ensure_built()
        except emulation.BuildUnavailable as exc:
            return str(exc)
        return None

    def device_count(self) -> int:
        from ascend_conformance import emulation

        return self._module().device_count() if emulation.installed() else self.slots

    def device_names(self) -> list[str]:
        from ascend_conformance.emulation.device import DEVICE_NAME

        return [DEVICE_NAME] * self.device_count()

    def versions(self) -> dict[str, str]:
        from ascend_conformance.emulation import build

        out = Platform.versions(self)
        out["emulation"] = f"npu-emulated: PrivateUse1 'npu' on host memory, hccl over gloo ({build.build_key()})"
        out["torch_npu"] = "not used: the emulated device runs the torch_npu stand-in's golden ops"
        return out


@functools.lru_cache(maxsize=None)
def torch_npu_import_error() -> str | None:
    """None when torch_npu imports; else the one-line reason (the skip reason of every NPU-only check)."""
    try:
        import torch  # noqa: F401 - torch first: torch_npu patches it
        import torch_npu  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "torch_npu":
            return "torch_npu not installed (pip install -e .[npu] on an NPU host)"
        return f"torch_npu not importable: {_one_line(exc)}"
    except Exception as exc:  # noqa: BLE001 - OSError for libhccl.so, RuntimeError, ...
        return f"torch_npu not importable: {_one_line(exc)}"
    if getattr(torch_npu, "__standin__", False):
        return "torch_npu is the suite's CPU stand-in (golden ops), not a device runtime"
    return None


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return " ".join(line.strip() for line in handle if line.strip())[:200]
    except OSError:
        return None


def _cann_version() -> str:
    home = os.environ.get("ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest")
    for candidate in ("version.cfg", "compiler/version.info", "runtime/version.info"):
        text = _read_first_line(os.path.join(home, candidate))
        if text:
            return text
    return "not found"


_PLATFORMS = {"cpu": CpuPlatform, "cuda": CudaPlatform, "npu": NpuPlatform, "npu-emulated": EmulatedNpuPlatform}


def by_name(name: str) -> Platform:
    if name not in _PLATFORMS:
        from ascend_conformance.errors import ConfigError

        raise ConfigError(f"unknown platform {name!r}: choose one of {', '.join(PLATFORM_NAMES)}")
    return _PLATFORMS[name]()


def detect() -> Platform:
    """The override when set, else npu > cuda > cpu by what is usable here."""
    override = os.environ.get(PLATFORM_ENV)
    if override:
        return by_name(override)
    npu = NpuPlatform()
    if npu.unavailable_reason() is None:
        return npu
    cuda = CudaPlatform()
    if cuda.unavailable_reason() is None:
        return cuda
    return CpuPlatform()


_current: Platform | None = None


def get() -> Platform:
    """The platform of this process (detected once, or set by the harness / fixtures)."""
    global _current
    if _current is None:
        _current = detect()
    return _current


def set_current(platform: Platform) -> None:
    global _current
    _current = platform


def require(platform: Platform) -> Platform:
    """Return `platform` when usable, else raise PlatformUnavailable with its reason."""
    reason = platform.unavailable_reason()
    if reason:
        raise PlatformUnavailable(f"platform {platform.name} unavailable: {reason}")
    return platform
