"""The host's register of warm pools: how many rank processes are kept warm, and each pool's port block.

Idle ranks keep their device context (and, on NPU, HCCL buffers and listening ports), so the bound
``--max-warm-ranks`` holds for the host, not per pytest process: every WorldRunner that uses a lease
directory writes its pools into ``<lease dir>/warm-ranks.json`` under ``warm-ranks.lock`` (a file
lock, so it holds across xdist workers, sessions and users). A register entry is a pool: its owner
(process id, process start time, runner number), its rank count, its devices and its port block.

Port blocks. Each pool owns one HCCL port block (``platform.PORT_BLOCKS`` of them) for as long as it
lives, idle or not: the lowest block no live pool of the host holds. So pools of different sizes in one
worker, and pools of different workers and sessions, never share ``HCCL_IF_BASE_PORT`` or a socket port
range (keying the block by something else — the worker and first device, say — gives pools (0, 1) and
(0, 1, 2, 3) of one worker the same block).

Room. A new pool of n ranks may start when the ranks on the register plus n stay within the bound
(a pool larger than the bound only when the register is empty). The runner that needs room first stops
its own least recently used pools; when that is not enough it posts what it waits for (``waiting``), and
every other runner with idle pools stops its least recently used ones until the waiter fits (their
trimming thread, see world.py). Example, bound 8: worker A keeps (0..3) and then (4, 5) warm, 6 ranks;
worker B has none and needs 4: 6 + 4 - 8 = 2 ranks too many, so B posts "waiting: 4"; A stops its least
recently used pool, (0..3); the register holds 2, B registers its 4 (6 <= 8) and withdraws its wait.

Entries of processes that died are dropped on every read (their ranks died with them), so a SIGKILLed
session never holds room or ports. The file is written in place (a sticky shared directory does not let
one user replace another's file) with one ``pwrite`` followed by a truncate; readers decode the first
JSON value, so even a writer killed between the two leaves a readable register.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import threading
from typing import Iterator

import psutil

from ascend_conformance.harness.leases import (WARM_REGISTRY_FILE, WARM_REGISTRY_LOCK, create_shared_file,
                                               prepare_lease_dir, shared_lock)
from ascend_conformance.platform import PORT_BLOCKS

_runner_numbers = itertools.count()


@dataclasses.dataclass(frozen=True)
class WarmPool:
    """One registered pool (what the register knows of it)."""

    key: str
    owner: str
    pid: int
    n: int
    devices: tuple
    port_block: int


def _this_process() -> tuple[int, float]:
    pid = os.getpid()
    return pid, psutil.Process(pid).create_time()


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.5  # else the pid was reused
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


class RegisterState:
    """The register's content inside one transaction (see WarmRegister.transaction)."""

    def __init__(self, data: dict, owner: str, pid: int, started: float):
        self.pools: dict = data.get("pools", {})
        self.waiting: dict = data.get("waiting", {})
        self._owner, self._pid, self._started = owner, pid, started
        self.changed = False

    def to_json(self) -> dict:
        return {"pools": self.pools, "waiting": self.waiting}

    def prune(self) -> None:
        """Drop the entries of processes that no longer run."""
        for table in (self.pools, self.waiting):
            for key, entry in list(table.items()):
                if not _alive(entry["pid"], entry["started"]):
                    del table[key]
                    self.changed = True

    @property
    def ranks(self) -> int:
        return sum(entry["n"] for entry in self.pools.values())

    def has_room(self, n: int, bound: int) -> bool:
        return self.ranks + n <= max(bound, n)

    def excess(self, n: int, bound: int) -> int:
        """How many registered ranks must go before n more fit."""
        return max(0, self.ranks + n - max(bound, n))

    def add(self, key: str, n: int, devices: tuple) -> WarmPool:
        """Register a pool (the lowest free port block is its own); it no longer waits."""
        taken = {entry["port_block"] for entry in self.pools.values()}
        block = next((b for b in range(PORT_BLOCKS) if b not in taken), None)
        if block is None:
            raise RuntimeError(f"all {PORT_BLOCKS} HCCL port blocks are held by warm pools of this host")
        self.pools[key] = {"owner": self._owner, "pid": self._pid, "started": self._started, "n": n,
                           "devices": list(devices), "port_block": block}
        self.waiting.pop(self._owner, None)
        self.changed = True
        return WarmPool(key, self._owner, self._pid, n, tuple(devices), block)

    def remove(self, key: str) -> None:
        if self.pools.pop(key, None) is not None:
            self.changed = True

    def wait_for(self, n: int, bound: int) -> None:
        """Post that this owner waits for room for n ranks under its `bound` (others stop idle pools)."""
        wait = {"pid": self._pid, "started": self._started, "n": n, "bound": bound}
        if self.waiting.get(self._owner) != wait:
            self.waiting[self._owner] = wait
            self.changed = True

    def stop_waiting(self) -> None:
        if self.waiting.pop(self._owner, None) is not None:
            self.changed = True

    def excess_for_others(self) -> int:
        """How many registered ranks must go before every other owner's wait fits (0: nobody waits)."""
        return max((self.excess(w["n"], w["bound"]) for owner, w in self.waiting.items() if owner != self._owner),
                   default=0)

    def describe(self) -> str:
        by_pid: dict = {}
        for entry in self.pools.values():
            by_pid[entry["pid"]] = by_pid.get(entry["pid"], 0) + entry["n"]
        return ", ".join(f"pid {pid}: {n}" for pid, n in sorted(by_pid.items())) or "none"


class WarmRegister:
    """One runner's view of the register in `lock_dir` (prepared like a lease directory)."""

    def __init__(self, lock_dir: str):
        self.lock_dir = os.path.abspath(lock_dir)  # made on first use, like the lease directory
        self.path = os.path.join(self.lock_dir, WARM_REGISTRY_FILE)
        self._file_lock = shared_lock(os.path.join(lock_dir, WARM_REGISTRY_LOCK))
        self._thread_lock = threading.Lock()  # the file lock object is shared by this runner's threads
        self.pid, self.started = _this_process()
        self.owner = f"{self.pid}-{next(_runner_numbers)}"
        self._pool_numbers = itertools.count()
        self._prepared = False

    def new_key(self) -> str:
        return f"{self.owner}/{next(self._pool_numbers)}"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[RegisterState]:
        """The pruned register, written back on exit if it changed."""
        with self._thread_lock:
            if not self._prepared:
                prepare_lease_dir(self.lock_dir)
                self._prepared = True
            with self._file_lock:
                fd = self._open()
                try:
                    state = RegisterState(_decode(_read_all(fd)), self.owner, self.pid, self.started)
                    state.prune()
                    yield state
                    if state.changed:
                        data = json.dumps(state.to_json(), indent=0).encode()
                        os.pwrite(fd, data, 0)
                        os.ftruncate(fd, len(data))
                finally:
                    os.close(fd)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            try:
                create_shared_file(self.path)
            except FileExistsError:
                pass
            return os.open(self.path, os.O_RDWR)

    def release(self, key: str) -> None:
        with self.transaction() as state:
            state.remove(key)

    def release_all(self) -> None:
        """Every pool and wait of this runner off the register."""
        if not self._prepared:
            return  # never used: nothing of this runner is on it (and nothing is made now)
        with self.transaction() as state:
            for key, entry in list(state.pools.items()):
                if entry["owner"] == self.owner:
                    state.remove(key)
            state.stop_waiting()

    def pools(self) -> list[WarmPool]:
        with self.transaction() as state:
            return [WarmPool(key, e["owner"], e["pid"], e["n"], tuple(e["devices"]), e["port_block"])
                    for key, e in state.pools.items()]


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _decode(raw: bytes) -> dict:
    text = raw.decode(errors="replace").strip()
    if not text:
        return {}
    try:
        value, _ = json.JSONDecoder().raw_decode(text)  # a stale tail after a torn write is ignored
    except ValueError:
        return {}  # not written by this module: taken as empty
    return value if isinstance(value, dict) else {}
