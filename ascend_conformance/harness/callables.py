"""Which callables ``world(n).run`` can ship to its ranks, and how.

A call crosses to the ranks by pickle, so `fn` is shipped by reference and must be importable there:

    run(all_reduce_ones)                         a module-level function
    run(functools.partial(scaled_sum, 2.0))      a partial of one (its bound arguments are pickled)
    run(Checker(tol=1e-3).verify)                a bound method of a picklable object (the object is pickled)
    run(torch.ones, 4)                           a builtin reachable by name

Lambdas, closures and functions defined inside a test cannot be imported by a rank; they are refused
before anything is sent, with one line that names the offending piece (the function, or which
argument) and says what to do instead.

The modules `fn` comes from are imported in the rank before the call is unpickled, the way pytest
imports them (a test file gets assertion rewriting), so a test module that is not importable by name
still works.
"""
from __future__ import annotations

import functools
import inspect
import sys

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness import wire

_ADVICE_FN = ("define it at module level (or pass a functools.partial of a module-level function, or a bound "
              "method of a picklable object) so every rank can import it")
_ADVICE_ARG = "pass picklable values (no lambdas, local functions, open files or locks)"


class NotShippable(ConfigError, TypeError):
    """`fn` or one of its arguments cannot be sent to the ranks (one line saying what to do)."""


def encode_call(fn, args: tuple, kwargs: dict) -> tuple[list, bytes]:
    """(modules to import first as [(name, file or None)], pickle of (fn, args, kwargs)); raises
    NotShippable naming the piece that cannot be pickled."""
    if not callable(fn):
        raise NotShippable(f"world(n).run needs a callable, got {_short(fn)}")
    try:
        payload = wire.dumps((fn, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - any pickling failure: find the culprit, say what to do
        raise NotShippable(_explain(fn, args, kwargs, exc)) from None
    return modules_of(fn), bytes(payload)


def modules_of(fn) -> list[tuple[str, str | None]]:
    """The modules a rank must import to unpickle `fn`: its function's, and for a bound method (or a
    callable object) the class's; through any number of partials."""
    names: list[str] = []

    def add(name):
        if isinstance(name, str) and name not in names:
            names.append(name)

    obj = fn
    for _ in range(32):  # partial(partial(method)) ...; bounded against self-referential objects
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif inspect.ismethod(obj):
            owner = obj.__self__
            add(owner.__module__ if isinstance(owner, type) else type(owner).__module__)
            obj = obj.__func__
        else:
            break
    add(getattr(obj, "__module__", None))
    if not (inspect.isroutine(obj) or isinstance(obj, type)):
        add(type(obj).__module__)  # a callable object: its class
    return [(name, getattr(sys.modules.get(name), "__file__", None)) for name in names]


def _explain(fn, args: tuple, kwargs: dict, error: Exception) -> str:
    if _fails(fn):
        return (f"world(n).run cannot ship {_short(fn)} to the ranks ({_first_line(error)}): {_ADVICE_FN}")
    for index, arg in enumerate(args):
        if _fails(arg):
            return (f"world(n).run cannot ship argument {index} ({_short(arg)}) to the ranks "
                    f"({_first_line(_error_of(arg))}): {_ADVICE_ARG}")
    for key, arg in kwargs.items():
        if _fails(arg):
            return (f"world(n).run cannot ship keyword argument {key}={_short(arg)} to the ranks "
                    f"({_first_line(_error_of(arg))}): {_ADVICE_ARG}")
    return f"world(n).run cannot ship the call of {_short(fn)} to the ranks ({_first_line(error)}): {_ADVICE_ARG}"


def _fails(obj) -> bool:
    return _error_of(obj) is not None


def _error_of(obj) -> Exception | None:
    try:
        wire.dumps(obj)
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def _short(obj) -> str:
    text = " ".join(repr(obj).split())  # one line, even for a tensor's repr
    return text if len(text) <= 120 else text[:117] + "..."


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
