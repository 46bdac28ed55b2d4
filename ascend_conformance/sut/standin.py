"""Running vllm-ascend's Python code where the real torch_npu cannot run: the torch_npu stand-in.

vllm-ascend imports ``torch_npu`` at module level and calls its ``npu_*`` MoE ops. On a host without CANN
(this suite's CI, a developer's laptop) the real torch_npu does not import, so inside a run of a system
under test :func:`activate` puts ``standin_site/`` first on ``sys.path``: ``import torch_npu`` then
finds the stand-in, whose ops are the golden models of :mod:`ascend_conformance.golden`. The systems
under test thus run their own routing, dispatch and combine code for real; only the leaf ops are the
suite's models, which the ops suites check against the real torch_npu on NPU hosts.

Rules that keep the stand-in honest:

* it is used only when the real torch_npu does not import (:func:`activate` returns ``"torch_npu"``
  and changes nothing on an NPU host);
* it is active only in the processes of SUT runs (the ranks of a SUT's own warm pool, or a CLI run),
  never in the pytest process, and every result of such a run is labelled ``ops = golden``;
* it never makes platform detection believe an NPU exists: ``torch.npu.is_available()`` is False,
  ``device_count()`` is 0 and the module carries ``__standin__`` (``platform`` refuses it with a reason);
* the device type it emulates (A2, A3, A5: what vllm-ascend reads from its build info and from
  ``torch_npu.npu.get_soc_version()``) is chosen per run and reported with the result;
* an op it has no model of raises AttributeError naming the op (on the emulated device, where libraries
  import torch_npu ops at module level, the name imports and calling it raises NotImplementedError naming
  it): nothing computes "something close".

What it provides besides the ops, each as a real torch_npu host would have it:

* the device name ``npu`` (``torch.device("npu")`` parses, as after torch_npu renames PrivateUse1), with
  no device behind it: tensors stay on the CPU (``torch.npu.current_device()`` is the CPU device). On the
  npu-emulated platform the emulated device (``ascend_conformance.emulation``) is installed first and is
  the device: ``torch_npu.npu`` is its ``torch.npu`` plus ``get_soc_version``, and the golden ops run on
  ``npu`` tensors;
* HCCL communicator names: torch_npu's collective MoE ops take the communicator *name* that
  ``group._get_backend(torch.device("npu")).get_hccl_comm_name(rank)`` returns (vllm-ascend's token
  dispatchers ask exactly that). Here the gloo groups answer with a name the stand-in registers
  (``standin-hccl-<group name>``), and the golden distribute ops are handed the ProcessGroup that name
  stands for (:func:`process_group_for_hccl_name`);
* the vllm-ascend custom ops (``torch.ops._C_ascend.*``) of the unquantized MoE path, registered on the
  golden models by :mod:`ascend_conformance.sut.standin_custom_ops`;
* the integer dtypes an NPU kernel of a plain torch op accepts where the CPU kernel does not:
  ``torch.histc`` of int32 expert ids (vllm-ascend's all-to-all dispatcher counts tokens per expert that
  way; torch_npu's histc takes integer input and returns the input's dtype). Computed exactly in float64
  and returned in the input's dtype; floating inputs go to torch's own kernel untouched;
* the custom ops a release registers for the NPU only (``torch.library`` kernels under the PrivateUse1 key,
  as vllm-ascend's ``direct_register_custom_op(..., dispatch_key="PrivateUse1")`` registers
  ``torch.ops.vllm.maybe_all_reduce_tensor_model_parallel`` and its kin): the same Python kernel is
  registered for the CPU key too, since the stand-in's "NPU tensors" are host tensors (an op that already
  has a CPU kernel keeps it);
* HCCL's all-gather of unequal first dimensions (``dist.all_gather`` into a list of chunks of different
  sizes, as ``tensor_split`` makes them; HCCL gathers them, gloo refuses): on a group whose backend
  refuses, each rank's chunk is padded to the largest, gathered, and cut back into its slot.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import types
import weakref

STANDIN_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_site")

# vllm-ascend's device type -> an SoC version torch_npu reports for it (vllm_ascend.utils reads ranges:
# 220-225 A2, 250-255 A3, 260 A5).
SOC_VERSIONS = {"A2": 220, "A3": 250, "A5": 260}
DEFAULT_DEVICE_TYPE = "A3"

_state = {"device_type": None}


def emulated_device_type() -> str | None:
    """The device type the active stand-in emulates, or None when it is not active."""
    return _state["device_type"]


def real_torch_npu_error() -> str | None:
    """None when the real torch_npu imports in this process; else why not (one line)."""
    if "torch_npu" in sys.modules and getattr(sys.modules["torch_npu"], "__standin__", False):
        return "the torch_npu in this process is the stand-in"
    from ascend_conformance.platform import torch_npu_import_error

    return torch_npu_import_error()


def activate(device_type: str = DEFAULT_DEVICE_TYPE) -> str:
    """Make ``import torch_npu`` work in this process; return the ops it gives: ``"torch_npu"`` (the
    real one imports: nothing changes) or ``"golden"`` (the stand-in, emulating ``device_type``).

    Idempotent; switching the emulated device type of an active stand-in is allowed (vllm-ascend reads
    it per call through ``get_soc_version``).
    """
    from ascend_conformance.errors import ConfigError

    if device_type not in SOC_VERSIONS:
        raise ConfigError(f"device type must be one of {', '.join(SOC_VERSIONS)}, got {device_type!r}")
    module = sys.modules.get("torch_npu")
    if module is not None and not getattr(module, "__standin__", False):
        return "torch_npu"
    if module is None and real_torch_npu_error() is None:
        return "torch_npu"
    sys.modules.pop("torch_npu", None)  # a failed import of the real one may have left nothing usable
    if STANDIN_SITE not in sys.path:
        sys.path.insert(0, STANDIN_SITE)
    _state["device_type"] = device_type
    import torch_npu  # noqa: F401 - the stand-in now

    if not getattr(torch_npu, "__standin__", False):  # pragma: no cover - a real one appeared meanwhile
        return "torch_npu"
    _name_the_npu_device()
    _answer_hccl_comm_names()
    _accept_npu_integer_histc()
    _all_gather_unequal_chunks_as_hccl()
    _npu_kernels_serve_host_tensors()
    from ascend_conformance.platform import torch_npu_import_error

    torch_npu_import_error.cache_clear()  # it cached the real one's absence; now the stand-in answers
    from ascend_conformance.sut import standin_custom_ops

    standin_custom_ops.register()
    return "golden"


def _name_the_npu_device() -> None:
    """``torch.device("npu")`` parses, as it does once torch_npu renamed PrivateUse1, while torch still
    sees no accelerator: the PrivateUse1 hooks say not built, not available (so ``torch.accelerator``
    and ``torch.distributed`` keep choosing the CPU)."""
    import torch

    if torch._C._get_privateuse1_backend_name() != "privateuseone":
        return

    class _NoDevice(torch._C._acc.PrivateUse1Hooks):
        def is_available(self) -> bool:
            return False

        def has_primary_context(self, device_index) -> bool:
            return False

        def is_built(self) -> bool:
            return False

    class _NoDeviceGuard(torch._C._acc.DeviceGuard):
        def type_(self):
            return torch._C._autograd.DeviceType.PrivateUse1

    torch.utils.rename_privateuse1_backend("npu")
    torch._C._acc.register_python_privateuseone_hook(_NoDevice())
    torch._C._acc.register_python_privateuseone_device_guard(_NoDeviceGuard())


def _accept_npu_integer_histc() -> None:
    import torch

    histc = torch.histc
    if getattr(histc, "__standin__", False):
        return

    @functools.wraps(histc)
    def npu_histc(input, bins=100, min=0, max=0, *, out=None):
        if out is not None or input.is_floating_point():
            return histc(input, bins=bins, min=min, max=max, **({"out": out} if out is not None else {}))
        return histc(input.to(torch.float64), bins=bins, min=min, max=max).to(input.dtype)

    npu_histc.__standin__ = True
    torch.histc = npu_histc


def _all_gather_unequal_chunks_as_hccl() -> None:
    import torch
    import torch.distributed as dist

    all_gather = dist.all_gather
    if getattr(all_gather, "__standin__", False):
        return

    @functools.wraps(all_gather)
    def hccl_all_gather(tensor_list, tensor, group=None, async_op=False):
        shapes = {tuple(t.shape) for t in tensor_list} | {tuple(tensor.shape)}
        if len(shapes) == 1 or async_op or dist.get_backend(group) != "gloo":
            return all_gather(tensor_list, tensor, group=group, async_op=async_op)
        if len({shape[1:] for shape in shapes}) != 1:
            raise RuntimeError(f"all_gather: chunks may differ only in their first dimension, got {sorted(shapes)}")
        longest = max(shape[0] for shape in shapes)
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[:tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in tensor_list]
        all_gather(gathered, padded, group=group)
        for target, source in zip(tensor_list, gathered):
            target.copy_(source[:target.shape[0]])
        return None

    hccl_all_gather.__standin__ = True
    dist.all_gather = hccl_all_gather


NPU_DISPATCH_KEYS = ("PrivateUse1", "npu")


def _npu_kernels_serve_host_tensors() -> None:
    import torch

    impl = torch.library.Library.impl
    if getattr(impl, "__standin__", False):
        return

    @functools.wraps(impl)
    def npu_impl(self, op_name, fn, dispatch_key="", **kwargs):
        registered = impl(self, op_name, fn, dispatch_key, **kwargs)
        if dispatch_key in NPU_DISPATCH_KEYS and callable(fn) and isinstance(op_name, str):
            qualified = op_name if "::" in op_name else f"{self.ns}::{op_name}"
            if not torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"):
                impl(self, op_name, fn, "CPU", **kwargs)
        return registered

    npu_impl.__standin__ = True
    torch.library.Library.impl = npu_impl


# -- HCCL communicator names ------------------------------------------------------------------------

HCCL_NAME_PREFIX = "standin-hccl-"
# Weak: a name must not keep its group alive after the release destroys it (each gloo group keeps threads
# polling; a warm rank accumulated hundreds). A destroyed group's name then resolves to nothing, as a
# destroyed HCCL communicator would.
_groups_by_hccl_name: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class _HcclNameOnly:
    """What ``group._get_backend(npu)`` is to vllm-ascend: the thing that names the group's HCCL
    communicator. Here it names a gloo group; nothing else of a backend is offered."""

    def __init__(self, group):
        self._group = group

    def get_hccl_comm_name(self, rank: int) -> str:
        name = HCCL_NAME_PREFIX + str(self._group.group_name)
        _groups_by_hccl_name[name] = self._group
        return name


def _answer_hccl_comm_names() -> None:
    import torch
    import torch.distributed as dist

    get_backend = dist.ProcessGroup._get_backend
    if getattr(get_backend, "__standin__", False):
        return

    @functools.wraps(get_backend)
    def _get_backend(group, device):
        if torch.device(device).type == "npu":
            return _HcclNameOnly(group)
        return get_backend(group, device)

    _get_backend.__standin__ = True
    dist.ProcessGroup._get_backend = _get_backend


def process_group_for_hccl_name(op: str, name):
    """The ProcessGroup a stand-in HCCL name stands for (a ProcessGroup passes through)."""
    from ascend_conformance.errors import ConfigError

    if not isinstance(name, str):
        return name
    group = _groups_by_hccl_name.get(name)
    if group is None:
        raise ConfigError(f"{op}: no process group has the HCCL communicator name {name!r} in the torch_npu "
                          f"stand-in (names come from group._get_backend(torch.device('npu')).get_hccl_comm_name)")
    return group


def _with_named_group(op: str, model):
    """``model`` taking ``group_ep`` as an HCCL name, as torch_npu does."""
    signature = inspect.signature(model)

    @functools.wraps(model)
    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["group_ep"] = process_group_for_hccl_name(op, bound.arguments.get("group_ep"))
        return model(*bound.args, **bound.kwargs)

    return call


# -- what the stand-in module is made of ------------------------------------------------------------

class _Stream:
    """A stream on a device-less host: work is already ordered, so waiting orders nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        return event if event is not None else _Event()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _Event:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


def _host_device():
    import torch

    return torch.device("cpu")


def _soc_version() -> int:
    return SOC_VERSIONS[_state["device_type"] or DEFAULT_DEVICE_TYPE]


def npu_module() -> types.ModuleType:
    """``torch_npu.npu`` / ``torch.npu`` of the stand-in: streams and events, no device; on the emulated
    device, its ``torch.npu`` with the SoC version added."""
    from ascend_conformance.emulation import installed as emulated_device_installed

    if emulated_device_installed():
        import torch

        npu = torch.npu
        npu.get_soc_version = _soc_version
        sys.modules["torch_npu.npu"] = npu
        return npu
    npu = types.ModuleType("torch_npu.npu")
    npu.__doc__ = "torch.npu of the conformance stand-in: no device; streams and events order nothing."
    npu.Stream = _Stream
    npu.Event = _Event
    npu.current_stream = lambda device=None: _Stream()
    npu.default_stream = lambda device=None: _Stream()
    npu.stream = lambda stream=None: contextlib.nullcontext()
    npu.synchronize = lambda device=None: None
    npu.current_device = _host_device  # no NPU: tensors vllm-ascend allocates "on the device" stay on the host
    npu.set_device = lambda device=None: None
    npu.empty_cache = lambda: None
    npu.is_available = lambda: False
    npu.device_count = lambda: 0
    npu.get_soc_version = _soc_version
    npu.__standin__ = True
    streams = types.ModuleType("torch_npu.npu.streams")  # vllm-ascend 0.13 imports Stream / Event from here
    streams.Stream, streams.Event = _Stream, _Event
    npu.streams = streams
    sys.modules["torch_npu.npu"] = npu
    sys.modules["torch_npu.npu.streams"] = streams
    _tensors_stay_on_the_host()
    return npu


def _tensors_stay_on_the_host() -> None:
    """``tensor.npu()`` (vllm-ascend moves maps "to the device" that way) returns the tensor itself."""
    import torch

    if not hasattr(torch.Tensor, "npu"):
        torch.Tensor.npu = lambda self, *args, **kwargs: self


class NpuOnlyDtype:
    """A dtype of torch_npu's own that torch lacks (``hifloat8``): it compares equal to no torch dtype, so
    vllm-ascend's membership tables (``QUANT_DTYPES``) import and answer False; handing it to torch raises
    TypeError naming it, as no golden model computes in it."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"torch_npu.{self.name} (stand-in: no torch dtype)"


NPU_ONLY_DTYPES = {"hifloat8": NpuOnlyDtype("hifloat8")}


def golden_op(name: str):
    """torch_npu attribute ``name`` of the stand-in: a golden model, a dtype torch_npu exports under torch's
    own name (``float4_e2m1fn_x2``, ``float8_e8m0fnu``: vllm-ascend main builds tables of them at import), or
    AttributeError naming it."""
    import torch

    if isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if name in NPU_ONLY_DTYPES:
        return NPU_ONLY_DTYPES[name]
    if name.startswith("npu_"):
        from ascend_conformance import golden

        op = getattr(golden, name, None)
        if op is not None:
            if "group_ep" in inspect.signature(op).parameters:
                return _with_named_group(name, op)
            return op
        message = (f"torch_npu stand-in: no golden model of {name} (the code path under test calls an op the suite "
                   f"does not model; run it on an NPU host with the real torch_npu)")
        from ascend_conformance.emulation import installed as emulated_device_installed

        if emulated_device_installed():
            # With a device, libraries take their NPU branches and import torch_npu ops at module level
            # (transformers: `from torch_npu import npu_fusion_attention`): the name imports, a call fails.
            def unmodelled(*args, **kwargs):
                raise NotImplementedError(message)

            unmodelled.__name__ = name
            return unmodelled
        raise AttributeError(message)
    raise AttributeError(f"torch_npu stand-in has no attribute {name!r}")
