"""A rank's own child processes die with the rank, however it dies.

Each rank leads its own process group, so everything a test starts from it (``subprocess.Popen``,
multiprocessing children) is in that group. Two things kill the group:

- the parent, when it kills a pool (after a failure, on eviction, at the end of the session):
  ``kill_group(rank_pid)`` sends SIGKILL to the group while the rank is still alive;
- a reaper: a small process the rank forks first thing, kept in the group. It asks the kernel for
  SIGTERM when the rank dies (PR_SET_PDEATHSIG) and then SIGKILLs the whole group, itself included.
  This covers the deaths no parent code sees: the rank SIGKILLed by the OOM killer, the pytest process
  SIGKILLed (its ranks die by their own PDEATHSIG, then their reapers clear the groups).

Example: a rank runs ``Popen(["sleep", "300"])`` and the session is killed with ``kill -9``: the rank
dies with its forkserver, its reaper wakes and kills ``sleep`` — nothing is re-parented to PID 1.

A child that leaves the group on purpose (``setsid``, ``start_new_session=True``) is on its own.
"""
from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
REAPER_NAME = b"rank-reaper"  # what ps / psutil's name() show for the reaper (the command line is the rank's)
_libc = None


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` when this process's parent (thread) exits; False off Linux."""
    return _prctl(_PR_SET_PDEATHSIG, int(signum))


def _prctl(option: int, value) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return _libc.prctl(option, value) == 0
    except (OSError, AttributeError):
        return False


def lead_own_group() -> None:
    """Make the calling rank the leader of a new process group and fork its reaper into it.

    Call it first, while the rank has a single thread and has opened nothing of its own.
    """
    os.setpgid(0, 0)
    rank_pid = os.getpid()
    if os.fork() == 0:
        _reap(rank_pid)  # never returns


def _reap(rank_pid: int) -> None:
    try:
        # Hold nothing of the rank's: its pipe to the parent, log files, sockets.
        os.closerange(3, 1 << 16)
        _prctl(_PR_SET_NAME, ctypes.c_char_p(REAPER_NAME))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
        if set_parent_death_signal(signal.SIGTERM) and os.getppid() == rank_pid:
            signal.sigwait({signal.SIGTERM})  # the rank died (or the group is being torn down)
        elif os.getppid() == rank_pid:
            _poll_parent(rank_pid)
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)


def _poll_parent(rank_pid: int) -> None:
    import time

    while os.getppid() == rank_pid:
        time.sleep(0.5)


def kill_group(rank_pid: int) -> None:
    """SIGKILL the process group a live rank leads (the rank, its reaper, every child in the group).

    Only for a rank known to be alive: its pid then still names its group, never a stranger's.
    """
    try:
        if os.getpgid(rank_pid) == rank_pid:
            os.killpg(rank_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
