"""A warm pool of n rank processes (parent side; the child side is rank_main.py).

The pool is spawned once from a forkserver that has already imported torch, joins one
torch.distributed world through a TCPStore the parent binds to a free port on 127.0.0.1 (loopback.py),
and then serves any number of ``run`` calls. Calls and results cross the pipes as plain pickles
(wire.py): tensors travel as their own elements, never through shared memory or file descriptors.
A run either returns every rank's value, or raises :class:`RankFailure` naming the rank:

- a rank raised: its remote traceback; ranks still running get a short grace to finish, then are
  aborted with their stacks (they are typically blocked in a collective waiting for the failed rank);
- a rank exited (os._exit, SIGSEGV, SIGKILL): its exit code or signal and the tail of its log, which
  holds faulthandler's stack for fatal signals; for SIGKILL, whether the OOM killer probably did it
  (oom.py);
- a rank's return value cannot be unpickled here: the rank, the value's type and the error;
- the run exceeded its timeout: every rank's Python stack (faulthandler, SIGUSR1).
After anything but a clean run the pool is killed (never reused), so the next test starts clean; so is
a pool whose ranks report state a test left that cannot be put back (isolation.py). Killing a pool
kills each rank's process group, so what a test started in a rank goes with it (rank_group.py).
"""
from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import timedelta

from ascend_conformance.harness import callables, loopback, oom, rank_group, rank_main, wire
from ascend_conformance.harness.execution import Failure
from ascend_conformance.harness.rank_main import RankSpec, Task

LOG_TAIL_LINES = 40
_serial = itertools.count()
_context = None


def forkserver_context(extra_preload: Sequence[str] = ()):
    """The forkserver, started once per process with torch imported, so a new rank costs a fork.

    The device runtime is not initialised in the server (torch_npu / CUDA are touched only by a rank,
    after its visible-devices variable is set). Under pytest, pytest and its assertion rewriter are
    preloaded too: every rank imports them anyway (test modules are imported with rewriting,
    ``pytest.skip`` imports pytest), and on a loaded host doing that in a new pool's first run took longer
    than the grace its peers get after a rank's skip. ``extra_preload`` adds modules the caller knows
    the session's ranks will import (only the first call's list counts: the server starts once). The
    last preload makes the server leave at once when the session ends (forkserver_exit.py).
    """
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        under_pytest = ["pytest", "_pytest.assertion.rewrite"] if "pytest" in sys.modules else []
        _context.set_forkserver_preload(["torch", "torch.distributed", *under_pytest, *extra_preload,
                                         "ascend_conformance.harness.rank_main",
                                         "ascend_conformance.harness.forkserver_exit"])
    return _context


def prestart_forkserver(extra_preload: Sequence[str] = ()) -> None:
    """Start the forkserver now; it imports torch (and ``extra_preload``) while the first tests run."""
    forkserver_context(extra_preload)
    from multiprocessing import forkserver

    forkserver.ensure_running()


class RankFailure(AssertionError):
    """A run failed in one or more ranks; the message names them and carries their evidence."""


class PoolStartError(RuntimeError):
    pass


@dataclasses.dataclass
class PoolConfig:
    platform: str
    devices: tuple  # leased physical ids, rank r on devices[r]
    env: dict  # extra environment for every rank (visible devices, ports)
    log_dir: str
    start_timeout: float = 120.0
    failure_grace: float = 3.0  # how long survivors may take to finish after another rank failed
    pg_timeout: float = 3600.0  # the harness, not the backend, decides when a collective hangs
    oom_counter_files: tuple | None = None  # None: the ranks' memory cgroup and /proc/vmstat (oom.py)
    name: str = ""  # pools of different names never share ranks (a SUT's imports stay in its own pools)


class RankPool:
    def __init__(self, n: int, config: PoolConfig):
        self.n = n
        self.config = config
        self.serial = next(_serial)
        self.healthy = False
        self.runs = 0
        self.last_used = time.monotonic()
        self._procs: list = []
        self._conns: list = []
        self._store = None
        self._oom: oom.OomWatch | None = None
        self.log_paths = [os.path.join(config.log_dir, f"rank{r}.log") for r in range(n)]
        self.stack_paths = [os.path.join(config.log_dir, f"rank{r}.stacks") for r in range(n)]

    @property
    def key(self):
        return self.n, tuple(self.config.devices), self.config.name

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    @property
    def store_port(self) -> int | None:
        """Port of the pool's rendezvous store (listening on 127.0.0.1 only)."""
        return None if self._store is None else self._store.port

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> "RankPool":
        import torch.distributed as dist

        os.makedirs(self.config.log_dir, exist_ok=True)
        self._store = loopback.loopback_store(self.n + 1, timedelta(seconds=self.config.start_timeout))
        ctx = forkserver_context()
        prefix = f"pool{os.getpid()}-{self.serial}"
        env = {**loopback.rank_environment(), **self.config.env}
        for rank in range(self.n):
            parent_end, child_end = ctx.Pipe()
            spec = RankSpec(rank=rank, world_size=self.n, platform=self.config.platform, env=dict(env),
                            store_host=loopback.LOOPBACK_HOST, store_port=self._store.port, store_prefix=prefix,
                            log_path=self.log_paths[rank], stack_path=self.stack_paths[rank],
                            parent_pid=os.getpid(), device_index=self.config.devices[rank],
                            pg_timeout_s=self.config.pg_timeout)
            proc = ctx.Process(target=rank_main.rank_main, args=(spec, child_end), daemon=True,
                               name=f"ascend-conformance-rank{rank}")
            proc.start()
            child_end.close()
            self._procs.append(proc)
            self._conns.append(parent_end)
        replies = self._collect(time.monotonic() + self.config.start_timeout)
        failures = [p for p in replies.values() if isinstance(p, Failure)]
        if failures or len(replies) < self.n:
            self.kill()
            detail = "\n".join(self._describe_failure(f) for f in failures) or self._missing_report(replies)
            raise PoolStartError(f"a {self.n}-rank {self.config.platform} world could not start:\n{detail}")
        files = self.config.oom_counter_files
        self._oom = oom.OomWatch(list(files) if files is not None else oom.counter_files(self._procs[0].pid))
        self.healthy = True
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop ranks politely (they destroy their process groups), kill what does not stop."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """SIGKILL every live rank's process group (the rank, its reaper, what the test started)."""
        self.healthy = False
        for proc in self._procs:
            if proc.is_alive():
                rank_group.kill_group(proc.pid)
                proc.kill()
        for proc in self._procs:
            proc.join(5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._store = None

    # --- running ------------------------------------------------------------------------------------
    def run(self, fn, args: tuple, kwargs: dict, test_id: str, timeout: float) -> list:
        if not self.healthy:
            raise RuntimeError("run on a pool that is not healthy")
        modules, payload = callables.encode_call(fn, args, kwargs)  # NotShippable: nothing sent, pool intact
        self.runs += 1
        self.last_used = time.monotonic()
        task = Task(test_id=test_id, modules=modules, payload=payload, sys_path=list(sys.path))
        blob = pickle.dumps(task, protocol=wire.PROTOCOL)
        log_offsets = [_size(p) for p in self.log_paths]
        try:
            for conn in self._conns:
                conn.send_bytes(blob)
            replies = self._collect(time.monotonic() + timeout, grace=self.config.failure_grace)
        except BaseException:
            # Interrupted in the parent (Ctrl-C, a signal handler that raises): the ranks are still busy
            # with this task and would answer the next run with its replies. Kill, never reuse.
            self.kill()
            raise

        results = [None] * self.n
        failures: list[Failure] = []  # in arrival order: the first to fail is usually the cause
        unreadable: list[_Unreadable] = []
        replace = False  # a rank could not clean up, or reported state it cannot put back
        for rank, reply in replies.items():
            if isinstance(reply, _Result):
                if reply.outcome == "ok":
                    results[rank] = reply.value
                elif reply.outcome == "unreadable":
                    unreadable.append(reply.value)
                else:
                    failures.append(reply.value)
                replace = replace or bool(reply.cleanup_error or reply.recycle)
        missing = [r for r in range(self.n) if r not in replies]
        dead = {r: reply for r, reply in replies.items() if isinstance(reply, _Exited)}

        if not failures and not unreadable and not missing and not dead:
            if replace:
                self.kill()  # results are valid; the next test must not inherit this state (the ranks' logs say why)
            self.last_used = time.monotonic()
            return results

        if failures and all(f.skipped for f in failures) and not missing and not dead and not unreadable \
                and len(failures) == self.n:
            raise _SkipAll(failures[0].message)
        self._raise_failure(failures, dead, missing, unreadable, timeout, log_offsets)

    def _raise_failure(self, failures, dead, missing, unreadable, timeout, log_offsets) -> None:
        timed_out = bool(missing) and not failures and not dead and not unreadable
        stacks = self._dump_stacks(missing) if missing else {}
        self.kill()
        parts = []
        if timed_out:
            parts.append(f"world of {self.n} ranks timed out after {timeout:g}s (--rank-timeout): "
                         f"ranks {missing} did not return; every rank's stack follows")
            stacks = stacks or {}
        # A rank that died is the cause; its peers' errors ("connection closed by peer") are consequences.
        for rank, exited in sorted(dead.items()):
            cause = ""
            if exited.exitcode == -signal.SIGKILL and self._oom is not None:
                cause = f"; {self._oom.explain(rank)}"
            parts.append(f"rank {rank} of {self.n} {exited.describe()}{cause}")
        for failure in failures:
            parts.append(self._describe_failure(failure))
        for item in unreadable:
            parts.append(f"rank {item.rank} of {self.n} returned a {item.type_name} that the parent could not "
                         f"unpickle: {item.error}\n--- parent traceback (unpickling rank {item.rank}'s value) ---\n"
                         f"{item.traceback.rstrip()}")
        if missing and not timed_out:
            parts.append(f"ranks {missing} were still running {self.config.failure_grace:g}s after the failure "
                         f"and were aborted (probably blocked in a collective waiting for the failed rank)")
        for rank in sorted(stacks):
            parts.append(f"--- rank {rank} stack ---\n{stacks[rank].rstrip()}")
        for rank in sorted(set(missing) | set(dead) | {f.rank for f in failures} | {u.rank for u in unreadable}):
            tail = _tail(self.log_paths[rank], log_offsets[rank])
            if tail:
                parts.append(f"--- rank {rank} log tail ({self.log_paths[rank]}) ---\n{tail}")
        raise RankFailure("\n".join(parts))

    def _describe_failure(self, failure: Failure) -> str:
        return (f"rank {failure.rank} of {self.n} raised {failure.exc_type}: {failure.message}\n"
                f"--- rank {failure.rank} traceback ---\n{failure.traceback.rstrip()}")

    def _missing_report(self, replies) -> str:
        lines = []
        for rank in range(self.n):
            reply = replies.get(rank)
            if isinstance(reply, _Exited):
                lines.append(f"rank {rank} {reply.describe()}\n{_tail(self.log_paths[rank], 0)}")
            elif reply is None:
                lines.append(f"rank {rank} did not join within {self.config.start_timeout:g}s\n"
                             f"{_tail(self.log_paths[rank], 0)}")
        return "\n".join(lines)

    def _collect(self, deadline: float, grace: float | None = None) -> dict:
        """Wait for one reply per rank until `deadline`; an exited rank's reply is an _Exited.

        After the first failure the deadline shrinks to `grace`: the other ranks may be blocked forever
        waiting for the failed one.
        """
        replies: dict = {}
        waiting = {conn: rank for rank, conn in enumerate(self._conns)}
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        next_sample = time.monotonic() + oom.SAMPLE_SECONDS  # only runs longer than this are sampled

        def shorten():
            nonlocal deadline
            deadline = min(deadline, time.monotonic() + (grace if grace is not None else 1.0))

        def receive(conn) -> bool:
            """Record the rank's reply; False when the pipe is closed (the sentinel reports the exit)."""
            rank = waiting.pop(conn)
            try:
                message = pickle.loads(conn.recv_bytes())
                if message[0] == "result":
                    message = ("result", self._read_result(rank, conn, message))
            except (EOFError, OSError):
                return False
            kind, payload = message
            replies[rank] = payload
            if kind == "fatal" or (kind == "result" and payload.outcome == "raise"):
                shorten()
            return True

        while len(replies) < self.n:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_sample and self._oom is not None:
                self._oom.sample({r: self._procs[r].pid for r in range(self.n) if r not in replies})
                next_sample = now + oom.SAMPLE_SECONDS
            watch = list(waiting) + [s for s, r in sentinels.items() if r not in replies]
            for obj in multiprocessing.connection.wait(watch, timeout=min(deadline, next_sample) - now):
                if obj in waiting:
                    receive(obj)
                elif obj in sentinels and sentinels[obj] not in replies:
                    rank = sentinels[obj]
                    conn = self._conns[rank]
                    if conn in waiting and conn.poll() and receive(conn):
                        continue  # it replied before exiting; the reply is what counts
                    waiting.pop(conn, None)
                    self._procs[rank].join(1)
                    replies[rank] = _Exited(self._procs[rank].exitcode)
                    shorten()
        return replies

    @staticmethod
    def _read_result(rank: int, conn, header: tuple) -> "_Result":
        """The rank's result from its header and, for a returned value that is not a scalar, the frame
        that follows; a value that cannot be unpickled here becomes an _Unreadable naming rank and type."""
        _, outcome, payload, cleanup_error, recycle = header
        value = payload
        if outcome == "ok":
            how, content = payload
            if how == "inline":
                value = content
            else:
                frame = conn.recv_bytes()  # EOFError when the rank died mid-send: the sentinel reports it
                try:
                    value = wire.loads(frame)
                except Exception as exc:  # noqa: BLE001 - e.g. a class the parent cannot import
                    outcome = "unreadable"  # the rank itself finished: its peers are not waiting for it
                    value = _Unreadable(rank, content, f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}",
                                        traceback.format_exc())
        return _Result(outcome, value, cleanup_error, recycle)

    def _dump_stacks(self, ranks: list[int]) -> dict[int, str]:
        """Every listed rank's Python stack, through faulthandler's SIGUSR1 handler."""
        offsets = {r: _size(self.stack_paths[r]) for r in ranks}
        for rank in ranks:
            proc = self._procs[rank]
            if proc.is_alive():
                try:
                    os.kill(proc.pid, rank_main.STACK_SIGNAL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3.0
        stacks: dict[int, str] = {}
        while time.monotonic() < deadline and len(stacks) < len(ranks):
            time.sleep(0.05)
            for rank in ranks:
                text = _read_from(self.stack_paths[rank], offsets[rank])
                # faulthandler writes the whole dump in one go; a dump ends with the main thread
                if text and "most recent call first" in text and rank not in stacks:
                    time.sleep(0.05)
                    stacks[rank] = _read_from(self.stack_paths[rank], offsets[rank])
        for rank in ranks:
            stacks.setdefault(rank, "(no stack: the rank did not answer SIGUSR1)")
        return stacks


@dataclasses.dataclass
class _Result:
    outcome: str  # "ok", "raise" or "unreadable"
    value: object  # the returned value, a Failure, or an _Unreadable
    cleanup_error: str | None
    recycle: str | None  # state the test left that cannot be put back (isolation.py), else None


@dataclasses.dataclass
class _Unreadable:
    """A rank returned a value the parent could not unpickle."""

    rank: int
    type_name: str
    error: str
    traceback: str


@dataclasses.dataclass
class _Exited:
    exitcode: int | None

    def describe(self) -> str:
        code = self.exitcode
        if code is None:
            return "disappeared (exit status unknown)"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name} (signal {-code})"
        return f"exited with code {code}"


class _SkipAll(Exception):
    """Every rank called pytest.skip: the test is skipped with rank 0's reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(path: str, offset: int) -> str:
    lines = _read_from(path, offset).rstrip().splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
