"""Imported only as a forkserver preload (pool.forkserver_context): the forkserver leaves at once when
its session ends, instead of tearing down the interpreter with torch loaded.

The forkserver exits when the pytest process that started it is gone. An orderly interpreter shutdown
then costs it about a second of CPU (measured with strace here: 3.5 s of wall time, with no system call
for 2.6 s of it, on the loaded 2-core box), so the forkserver outlived its session by seconds. It holds
nothing that needs an orderly end — no files, no children of its own once the ranks are gone — so the
first exit handler (registered last, after torch's) leaves with os._exit.

The handler acts in the forkserver only: a process forked from it (a rank) inherits the registration
but has another pid, and ranks end through os._exit anyway.
"""
import atexit
import os
import sys

_FORKSERVER_PID = os.getpid()


def _leave_now() -> None:
    if os.getpid() != _FORKSERVER_PID:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream: nothing to keep
            pass
    os._exit(0)


atexit.register(_leave_now)
