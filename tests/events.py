"""How the self-tests wait: for an event (a line, a file, a process's exit, a counter), never for a span of
wall time that a loaded box may need more of.

A test that waits for something polls until it happened, or until it can no longer happen (the process that
would do it exited), and fails then with what it waited for. The one wall-clock number is
:data:`HANG_GUARD`: a wait that has not seen its event after that long is a hang, not slowness, so a broken
build still ends with a message rather than at CI's limit. It decides no verdict under load: the slowest
wait of the suite (a subprocess importing torch and starting a pool) takes about 30 s on a quiet box and a
few minutes at load average 30.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable

import pytest

HANG_GUARD = 1800.0  # seconds; see the module docstring
POLL = 0.05


def wait_for(predicate: Callable[[], object], what: str, *, possible: Callable[[], bool] = lambda: True,
             poll: float = POLL) -> None:
    """Return once ``predicate()`` is true; fail when ``possible()`` says it can no longer become true (and
    it is not), or after :data:`HANG_GUARD`."""
    guard = time.monotonic() + HANG_GUARD
    while not predicate():
        if not possible():
            if predicate():
                return
            pytest.fail(f"{what}: can no longer happen", pytrace=False)
        if time.monotonic() >= guard:
            pytest.fail(f"{what}: nothing after {HANG_GUARD:g}s, a hang", pytrace=False)
        time.sleep(poll)


def read_line(proc: subprocess.Popen, what: str) -> str:
    """The next line ``proc`` writes to its stdout (a pipe opened in binary mode); fails when it exits first."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer = b""
    try:
        while b"\n" not in buffer:
            if not selector.select(HANG_GUARD):
                pytest.fail(f"{what}: no line after {HANG_GUARD:g}s, a hang", pytrace=False)
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr and proc.poll() is not None else ""
                pytest.fail(f"{what}: the process exited ({proc.poll()}) first:\n{err}", pytrace=False)
            buffer += chunk
    finally:
        selector.close()
    return buffer.split(b"\n", 1)[0].decode()


__all__ = ["HANG_GUARD", "read_line", "wait_for"]
