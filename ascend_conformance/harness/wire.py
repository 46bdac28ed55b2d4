"""What crosses the pipe between the parent and its ranks: plain pickle bytes, tensors as their elements.

multiprocessing's own pickler hands CPU tensors over as shared memory (a file in /dev/shm and one file
descriptor per storage). That breaks under Docker's default 64 MB /dev/shm, under ``ulimit -n 1024``
with many small tensors, and it ships a view's whole base buffer. Here a tensor is pickled as exactly
its own elements: detached, moved to the CPU, made contiguous, then its bytes are written into the
pickle (protocol 5, in band). Example: a 10-element float32 view of a 500 MB tensor costs 40 bytes
plus its dtype and shape, and comes back as a plain CPU tensor that owns its memory:

    >>> big = torch.arange(1e6); view = big[100:110]
    >>> len(dumps(view)) < 300
    True
    >>> loads(dumps(view)).untyped_storage().nbytes()
    40

Only strided, non-quantized tensors of type Tensor or Parameter are encoded this way (a Parameter
arrives as a plain tensor, as ``.detach()`` would give); other tensors (sparse, quantized, subclasses)
use torch's own pickling, which is still plain bytes — never shared memory.
"""
from __future__ import annotations

import io
import pickle

import torch

PROTOCOL = 5
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor) and type(obj) in _PLAIN_TENSOR_TYPES \
                and obj.layout == torch.strided and not obj.is_quantized:
            return _rebuild_tensor, _tensor_parts(obj)
        return NotImplemented


def dumps(obj) -> memoryview:
    """Pickle `obj` with tensors as their own elements (see the module docstring); the result can be
    handed to ``Connection.send_bytes`` without another copy."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getbuffer()


def loads(data):
    return pickle.loads(data)


def type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _tensor_parts(tensor: torch.Tensor) -> tuple:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    shape = tuple(tensor.shape)
    if tensor.numel() == 0:
        return b"", tensor.dtype, shape
    # A contiguous tensor viewed as bytes covers exactly its own elements, whatever its storage offset.
    raw = tensor.reshape(-1).view(torch.uint8).numpy()
    return pickle.PickleBuffer(raw), tensor.dtype, shape


def _rebuild_tensor(data, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    if not isinstance(data, bytearray):  # a read-only buffer: torch.frombuffer needs a writable one
        data = bytearray(data)
    return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape)
