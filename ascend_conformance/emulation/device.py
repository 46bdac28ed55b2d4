"""``torch.npu`` of the emulated device: devices, streams, events, memory statistics.

What the suite and vllm-ascend call on ``torch.npu``, answered by the emulated device
(:mod:`ascend_conformance.emulation.build` loads its extension)::

    >>> import torch
    >>> from ascend_conformance import emulation
    >>> emulation.install(2)                                   # doctest: +SKIP
    >>> torch.npu.device_count(), torch.npu.current_device()   # doctest: +SKIP
    (2, 0)
    >>> torch.npu.set_device(1); x = torch.ones(256, device="npu")    # doctest: +SKIP
    >>> x.device, torch.npu.memory_allocated(1)                # doctest: +SKIP
    (device(type='npu', index=1), 1024)

How many devices: the length of ``ASCEND_RT_VISIBLE_DEVICES`` when it is set (a rank sees the devices it
leased, as on an NPU host), else ``ASCEND_CONFORMANCE_EMULATED_DEVICES``, else 8.

What differs from a device runtime, by design:

* work runs synchronously on the host, so streams order nothing, ``synchronize`` returns at once and an
  event's time is the host clock when it was recorded (``elapsed_time`` measures host time, not kernels);
* there is no caching allocator: ``memory_reserved`` counts the allocated blocks rounded to 512 bytes,
  ``empty_cache`` has nothing to give back, and ``mem_get_info`` reports a nominal capacity
  (:data:`NOMINAL_CAPACITY`) that nothing enforces;
* random ops on ``npu`` tensors run through the CPU fallback and draw from the host's default
  generator: ``torch.npu.manual_seed`` seeds that one.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import types

from ascend_conformance.errors import ConfigError

VISIBLE_DEVICES_ENV = "ASCEND_RT_VISIBLE_DEVICES"
DEVICES_ENV = "ASCEND_CONFORMANCE_EMULATED_DEVICES"
DEFAULT_DEVICES = 8
NOMINAL_CAPACITY = 64 << 30  # what mem_get_info reports as a device's total; never enforced
DEVICE_NAME = "Ascend (emulated on host memory)"

_state: dict = {}


def configured_device_count(environ=None) -> int:
    """Devices this process sees: the visible-devices mask, else ``ASCEND_CONFORMANCE_EMULATED_DEVICES``,
    else 8. A value that is not a device list or a count > 0 is a one-line ConfigError."""
    environ = os.environ if environ is None else environ
    mask = environ.get(VISIBLE_DEVICES_ENV, "").strip()
    if mask:
        ids = [tok.strip() for tok in mask.split(",")]
        if not all(tok.isdigit() for tok in ids):
            raise ConfigError(f"{VISIBLE_DEVICES_ENV} must be a comma-separated list of device ids, got {mask!r}")
        return len(ids)
    raw = environ.get(DEVICES_ENV, "").strip()
    if not raw:
        return DEFAULT_DEVICES
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{DEVICES_ENV} must be a device count >= 1, got {raw!r}")
    return int(raw)


def installed() -> bool:
    return "extension" in _state


def extension():
    """The loaded extension module (after :func:`install`)."""
    if not installed():
        raise ConfigError("the emulated npu device is not installed in this process "
                          "(ascend_conformance.emulation.install)")
    return _state["extension"]


def install(device_count: int | None = None) -> types.ModuleType:
    """Load the extension, name PrivateUse1 ``npu`` and register ``torch.npu``; return that module.

    Once per process (a second call with the same count returns the module; another count raises)."""
    import torch

    count = configured_device_count() if device_count is None else device_count
    if installed():
        if count != _state["count"]:
            raise ConfigError(f"the emulated npu is installed with {_state['count']} device(s) in this process; "
                              f"it cannot become {count}")
        return _state["module"]
    name = torch._C._get_privateuse1_backend_name()
    if name != "privateuseone":
        raise ConfigError(f"PrivateUse1 is already named {name!r} in this process (the torch_npu stand-in or "
                          f"another backend came first); install the emulated npu before it")
    from ascend_conformance.emulation import build

    ext = build.load()
    torch.utils.rename_privateuse1_backend("npu")
    ext.install(count)
    module = _module(ext)
    torch._register_device_module("npu", module)
    torch.utils.generate_methods_for_privateuse1_backend(for_tensor=True, for_module=True, for_storage=True)
    _state.update(extension=ext, count=count, module=module)
    return module


# --- device indices ---------------------------------------------------------------------------------

def _index(device=None) -> int:
    """A device argument as torch.npu takes it (None, an int, "npu:1", torch.device) -> its index."""
    import torch

    ext = extension()
    if device is None:
        return ext.current_device()
    if isinstance(device, bool):
        raise ConfigError(f"not an npu device: {device!r}")
    if isinstance(device, int):
        index = device
    else:
        parsed = torch.device(device)
        if parsed.type != "npu":
            raise ConfigError(f"not an npu device: {device!r}")
        index = ext.current_device() if parsed.index is None else parsed.index
    if not 0 <= index < ext.device_count():
        raise ConfigError(f"npu:{index} is not an emulated device: {ext.device_count()} device(s), "
                          f"npu:0..npu:{ext.device_count() - 1}")
    return index


# --- streams and events -----------------------------------------------------------------------------

class Stream:
    """A stream of the emulated device: work is already done when it is issued, so waiting orders nothing."""

    def __init__(self, device=None, priority: int = 0, **kwargs):
        self.device_index = _index(device)
        self.priority = priority

    @property
    def device(self):
        import torch

        return torch.device("npu", self.device_index)

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        event = event if event is not None else Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<torch.npu.Stream (emulated) device=npu:{self.device_index} priority={self.priority}>"


class Event:
    """A timing event: the host clock when recorded (the work before it has already run)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.enable_timing = enable_timing
        self._recorded_ns: int | None = None

    def record(self, stream=None) -> None:
        self._recorded_ns = time.perf_counter_ns()

    def wait(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: "Event") -> float:
        """Milliseconds from this event to `end_event`, as torch.cuda.Event.elapsed_time."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self._recorded_ns is None or end_event._recorded_ns is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end_event._recorded_ns - self._recorded_ns) / 1e6


_streams = threading.local()  # the current stream per thread and device, as a device runtime keeps it
_default_streams: dict[int, Stream] = {}


def default_stream(device=None) -> Stream:
    index = _index(device)
    if index not in _default_streams:
        _default_streams[index] = Stream(index)
    return _default_streams[index]


def current_stream(device=None) -> Stream:
    index = _index(device)
    current = getattr(_streams, "by_device", {})
    return current.get(index) or default_stream(index)


def set_stream(stream: Stream) -> None:
    if not hasattr(_streams, "by_device"):
        _streams.by_device = {}
    _streams.by_device[stream.device_index] = stream


@contextlib.contextmanager
def stream(stream_: Stream | None):
    if stream_ is None:
        yield
        return
    previous = current_stream(stream_.device_index)
    set_stream(stream_)
    try:
        yield
    finally:
        set_stream(previous)


# --- the module -------------------------------------------------------------------------------------

def _module(ext) -> types.ModuleType:
    import torch

    npu = types.ModuleType("torch.npu")
    npu.__doc__ = __doc__
    npu.__emulated__ = True

    def set_device(device) -> None:
        ext.set_device(_index(device))

    @contextlib.contextmanager
    def device(device_):
        previous = ext.current_device()
        set_device(device_)
        try:
            yield
        finally:
            ext.set_device(previous)

    def stats(device_=None) -> dict:
        return ext.memory_stats(_index(device_))

    def memory_stats(device_=None) -> dict:
        """torch.cuda's key names for the figures the emulated allocator keeps."""
        s = stats(device_)
        return {"allocated_bytes.all.current": s["allocated"], "allocated_bytes.all.peak": s["peak_allocated"],
                "reserved_bytes.all.current": s["reserved"], "reserved_bytes.all.peak": s["peak_reserved"],
                "allocation.all.allocated": s["allocations"], "allocation.all.freed": s["frees"]}

    def reset_peak_memory_stats(device_=None) -> None:
        ext.reset_peak(_index(device_))

    def mem_get_info(device_=None) -> tuple[int, int]:
        return NOMINAL_CAPACITY - stats(device_)["reserved"], NOMINAL_CAPACITY

    def manual_seed(seed: int) -> None:
        torch.default_generator.manual_seed(int(seed))  # the fallback's random ops draw from it

    def synchronize(device_=None) -> None:
        _index(device_)  # a bad device is an error even though there is nothing to wait for

    def get_device_properties(device_=None):
        return types.SimpleNamespace(name=DEVICE_NAME, total_memory=NOMINAL_CAPACITY, type="npu",
                                     index=_index(device_))

    npu.is_available = lambda: True
    npu.is_initialized = lambda: True
    npu.init = lambda: None
    npu._lazy_init = lambda: None
    npu._is_in_bad_fork = lambda: False
    npu.device_count = lambda: ext.device_count()
    npu.current_device = lambda: ext.current_device()
    npu.set_device = set_device
    npu.device = device
    npu.synchronize = synchronize
    npu.Stream, npu.Event = Stream, Event
    npu.current_stream, npu.default_stream = current_stream, default_stream
    npu.set_stream, npu.stream = set_stream, stream
    npu.memory_allocated = lambda device_=None: stats(device_)["allocated"]
    npu.max_memory_allocated = lambda device_=None: stats(device_)["peak_allocated"]
    npu.memory_reserved = lambda device_=None: stats(device_)["reserved"]
    npu.max_memory_reserved = lambda device_=None: stats(device_)["peak_reserved"]
    npu.memory_stats = memory_stats
    npu.reset_peak_memory_stats = reset_peak_memory_stats
    npu.reset_max_memory_allocated = reset_peak_memory_stats
    npu.mem_get_info = mem_get_info
    npu.empty_cache = lambda: None  # no cache: freed blocks go straight back to the host
    npu.manual_seed = manual_seed
    npu.manual_seed_all = manual_seed
    npu.get_device_name = lambda device_=None: DEVICE_NAME
    npu.get_device_properties = get_device_properties
    npu.is_bf16_supported = lambda: True
    return npu
