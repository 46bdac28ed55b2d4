"""Input checks shared by every golden op: one-line ConfigErrors that name the op, the argument and the
offending dtype / shape / value, e.g. ``npu_moe_token_permute: indices must be int32 or int64 [N, K] or [N],
got torch.float32 [4, 2]``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ascend_conformance.errors import ConfigError

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
FLOAT_NAMES = "float16, bfloat16 or float32"


def fail(op: str, message: str):
    raise ConfigError(f"{op}: {message}")


def got(value) -> str:
    """How a message shows what it was given: ``torch.int32 [4, 2]`` for a tensor, else type and repr.

    >>> got(torch.zeros(4, 2, dtype=torch.int32)), got(3)
    ('torch.int32 [4, 2]', 'int 3')
    """
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def got_list(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return got(value)


def check_tensor(op: str, name: str, value, dtypes: Sequence[torch.dtype], ndims: Sequence[int], spec: str):
    """`value` must be a tensor of one of `dtypes` with one of `ndims` dimensions; `spec` is how the message
    names what was expected, e.g. ``int32 [N, K]``."""
    if not isinstance(value, torch.Tensor) or value.dtype not in dtypes or value.dim() not in ndims:
        fail(op, f"{name} must be {spec}, got {got(value)}")


def check_rows(op: str, name: str, value: torch.Tensor, rows: int, spec: str):
    if value.shape[0] != rows:
        fail(op, f"{name} must be {spec} with {rows} rows, got {got(value)}")


def check_range(op: str, name: str, value: torch.Tensor, lo: int, hi: int | None):
    """Every element of `value` in [lo, hi) (hi None: no upper bound); the message names the first one
    outside and its index."""
    if value.numel() == 0:
        return
    bad = value < lo
    if hi is not None:
        bad |= value >= hi
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        fail(op, f"{name} values must be {bound}, got {int(value[where])} at index {list(where)}")


def check_choice(op: str, name: str, value, allowed: Sequence, why: str = ""):
    if value not in allowed:
        fail(op, f"{name} must be one of {list(allowed)}{why}, got {value!r}")


def check_unsupported(op: str, **given):
    """Each keyword is (value, default): a non-default value is a feature these models do not implement."""
    for name, (value, default) in given.items():
        differs = (value is not None) if default is None else (value != default)
        if differs:
            shown = got_list(value) if isinstance(value, (list, tuple)) else got(value)
            shown = shown if isinstance(value, (list, tuple, torch.Tensor)) else repr(value)
            fail(op, f"{name}={shown} is not modelled by the golden op (only {default!r} is)")
