"""The host's register of what its test processes hold: device leases, warm pools and their HCCL port blocks.

Every process that runs worlds (pytest-xdist workers, concurrent sessions, users, ``standalone_runner``
scripts) shares one lease directory with the others of the host, and reaches it through a
:class:`HostRegister`. The register has one lock, the gate ``<dir>/gate.lock``, and one transaction
(:meth:`HostRegister.transaction`): under the gate a runner leases devices, registers a new warm pool, stops
its own idle pools to make room, or posts that it waits for room, and all of that is one step for the rest
of the host. Every lock file is opened once per register and kept open; taking and giving back a lock is
one ``flock(2)`` call on that descriptor (the kernel drops the locks of a process that dies, however it
dies). A warm ``world(n).run`` costs one transaction: the gate, n device locks, the gate given back, and
n device locks given back after the run.

Devices. A lease is a set of device slots held exclusively, each the flock of ``<dir>/device-<id>.lock``.
Acquisition is all-or-nothing and fair enough not to starve large requests:

1. take the gate (waiting, up to the deadline, while other requests hold it): only the gate holder takes
   device locks, so requests are served in arrival order;
2. under the gate, try candidate device sets in a fixed order (the caller's preferred sets first, then
   aligned windows); each attempt takes that set's locks in ascending id order without blocking and
   gives them all back if one is busy: nobody waits while holding a device lock, so there is no deadlock;
   between attempts the gate holder sleeps while the holders finish (giving a lease back needs no gate);
3. give the gate back as soon as a set is held, or fail with a message naming who waited for what.

Slot ids are physical device ids (after any outer visible-devices mask), so two sessions with different
masks on one host still exclude each other. On cpu the slots are virtual (``--devices N``).

Warm pools (``register.json``, read and written only under the gate). Idle ranks keep their device context
(and, on NPU, HCCL buffers and listening ports), so the bound ``--max-warm-ranks`` holds for the host, not
per pytest process. An entry is a pool: its owner (process id, process start time, runner number), its rank
count, its devices and its port block. Each pool owns one HCCL port block (``platform.PORT_BLOCKS`` of them)
for as long as it lives, idle or not: the lowest block no live pool of the host holds, so pools of
different sizes in one worker, and pools of different workers and sessions, never share
``HCCL_IF_BASE_PORT`` or a socket port range (keying the block by something else — the worker and first
device, say — gives pools (0, 1) and (0, 1, 2, 3) of one worker the same block).

Room. A new pool of n ranks may start when the ranks on the register plus n stay within the bound (a pool
larger than the bound only when the register is empty). The runner that needs room first stops its own
least recently used pools; when that is not enough it posts what it waits for (``waiting``), gives its
lease back and tries again a moment later, while every other runner with idle pools stops its least
recently used ones until the waiter fits (their trimming thread, see world.py). Example, bound 8: worker A
keeps (0..3) and then (4, 5) warm, 6 ranks; worker B has none and needs 4: 6 + 4 - 8 = 2 ranks too many, so
B posts "waiting: 4"; A stops its least recently used pool, (0..3); the register holds 2, B registers its 4
(6 <= 8) and withdraws its wait. Entries of processes that died are dropped on every read (their ranks died
with them), so a SIGKILLed session never holds room or ports. The file is written in place (a sticky shared
directory does not let one user replace another's file) with one ``pwrite`` followed by a truncate; readers
decode the first JSON value, so even a writer killed between the two leaves a readable register.

Who shares a lease directory. Real devices belong to the host, so their default directory is one fixed
path for every user: ``/tmp/ascend-conformance-leases-<platform>`` (not ``$TMPDIR``, which differs between
users). Several users must be able to lock the same files, and the kernel's ``fs.protected_regular``
refuses to create-open a file that another user owns in a sticky directory; so a lease directory is
created whole — every file the harness uses made up front in a private directory, with mode 0666, then
renamed into place with mode 1777 (sticky, world-writable, like /tmp) — and every file in it belongs to
the directory's owner. A file made later (a device id above the pre-made range) gets mode 0666 as well.
CPU slots are virtual: the pytest fixtures give each session its own directory.

Why hand-written: the filelock package opens (and, for a shared file, re-modes) the lock file on every
acquire and keeps a re-entrant counter per lock object, about 1 ms for a lease of four devices here; what
this module needs of it is the flock call on a descriptor it keeps, which the standard library's
``fcntl.flock`` gives directly. A register object is not shared with a forked child (the child would share
its open file descriptions, and so its locks): a child makes its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import itertools
import json
import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import Callable, Iterable, Iterator, Sequence

import psutil

from ascend_conformance.errors import ConfigError
from ascend_conformance.platform import PORT_BLOCKS

HOST_LEASE_ROOT = "/tmp"  # fixed: every user of the host must reach the same directory
LOCK_FILE_MODE = 0o666  # any user may open (and so flock) the lock files
SHARED_DIR_MODE = 0o1777  # sticky and world-writable, as /tmp
PREMADE_DEVICE_IDS = range(64)
GATE_FILE = "gate.lock"  # the register's one lock
REGISTER_FILE = "register.json"  # the warm pools and the waits for room

_runner_numbers = itertools.count()


def device_lock_name(device: int) -> str:
    return f"device-{device}.lock"


def default_lease_dir(platform: str) -> str:
    """Host-wide for real devices (every user and session of the host); per user for cpu slots."""
    if platform == "cpu":
        return os.path.join(tempfile.gettempdir(), f"ascend-conformance-leases-{os.getuid()}", platform)
    return os.path.join(HOST_LEASE_ROOT, f"ascend-conformance-leases-{platform}")


def prepare_lease_dir(path: str) -> str:
    """Create the lease directory `path` whole (see the module docstring) unless it exists; return it.

    A directory that already exists is used as it is (made by another session, or by an administrator
    for ``--lease-dir``). Raises ConfigError (one line) when it cannot be made.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(path)
    staging = None
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}-", dir=parent)
        for name in [GATE_FILE, REGISTER_FILE, *(device_lock_name(d) for d in PREMADE_DEVICE_IDS)]:
            create_shared_file(os.path.join(staging, name))
        os.chmod(staging, SHARED_DIR_MODE)
        try:
            os.rename(staging, path)
            staging = None
        except OSError as exc:  # another process made it first: use theirs
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EPERM, errno.EACCES) or not os.path.isdir(path):
                raise
    except OSError as exc:
        raise ConfigError(f"cannot create the lease directory {path}: {exc.strerror or exc} "
                          f"(choose another with --lease-dir)") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def create_shared_file(path: str) -> None:
    """An empty file any user may read and write (the mode is set after creation: umask does not apply)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, LOCK_FILE_MODE)
    try:
        os.fchmod(fd, LOCK_FILE_MODE)
    finally:
        os.close(fd)


def _open_shared(path: str) -> int:
    """A descriptor of the shared file `path` (made, mode 0666, when missing); ConfigError when this user
    may not open it."""
    try:
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            try:
                create_shared_file(path)
            except FileExistsError:
                pass  # another process made it meanwhile
            return os.open(path, os.O_RDWR)
    except PermissionError as exc:
        raise ConfigError(f"cannot lock {path}: {exc.strerror or exc}; every user of the host must be able to "
                          f"lock the files of a shared lease directory (choose one with --lease-dir)") from None


class LeaseTimeout(TimeoutError):
    pass


class GateTimeout(LeaseTimeout):
    """The gate stayed held by others until the deadline (the caller says what it waited for)."""


class _LockFile:
    """A lock file kept open: its flock is taken and given back on the same open file description."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str):
        self.path = path
        self.fd = _open_shared(path)

    def try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


@dataclasses.dataclass
class Lease:
    devices: tuple[int, ...]  # physical ids, ascending
    waited: float
    _register: "HostRegister | None"

    def release(self) -> None:
        if self._register is not None:
            self._register._release_devices(self.devices)
            self._register = None

    @property
    def held(self) -> bool:
        return self._register is not None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclasses.dataclass(frozen=True)
class WarmPool:
    """One registered pool (what the register knows of it)."""

    key: str
    owner: str
    pid: int
    n: int
    devices: tuple
    port_block: int


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.5  # else the pid was reused
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


class RegisterState:
    """The register inside one transaction: device leases, and the warm pools and waits of ``register.json``
    (read on first use, pruned of dead processes, written back at the end of the transaction if changed)."""

    def __init__(self, register: "HostRegister"):
        self._register = register
        self._data: dict | None = None
        self.changed = False

    # -- devices -----------------------------------------------------------------------------------------
    def lease(self, n: int, deadline: float, preferred: Iterable[Sequence[int]] = (), who: str = "",
              started: float | None = None, timeout: float | None = None) -> Lease:
        """n devices, the preferred sets first; waits (holding the gate) until `deadline`."""
        register = self._register
        register.check_request(n, who)
        started = time.monotonic() if started is None else started
        candidates = register.candidate_sets(n, preferred)
        while True:
            for devices in candidates:
                if register._try_all(devices):
                    return Lease(devices, time.monotonic() - started, register)
            if time.monotonic() >= deadline:
                waited = deadline - started if timeout is None else timeout
                raise LeaseTimeout(
                    f"{who}waited {waited:.0f}s for {n} free devices out of {list(register.physical_ids)}; "
                    f"busy: {register.busy_devices()} (lock dir {register.lock_dir})")
            time.sleep(register.POLL_SECONDS)

    # -- warm pools --------------------------------------------------------------------------------------
    def _load(self) -> dict:
        if self._data is None:
            data = _decode(self._register._read())
            self._data = {"pools": data.get("pools", {}) if isinstance(data.get("pools"), dict) else {},
                          "waiting": data.get("waiting", {}) if isinstance(data.get("waiting"), dict) else {}}
            self.prune()
        return self._data

    @property
    def pools(self) -> dict:
        return self._load()["pools"]

    @property
    def waiting(self) -> dict:
        return self._load()["waiting"]

    def to_json(self) -> dict:
        return {"pools": self.pools, "waiting": self.waiting}

    def prune(self) -> None:
        """Drop the entries of processes that no longer run."""
        for table in (self._data["pools"], self._data["waiting"]):
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
        """Register a pool (the lowest free port block is its own); its owner no longer waits."""
        taken = {entry["port_block"] for entry in self.pools.values()}
        block = next((b for b in range(PORT_BLOCKS) if b not in taken), None)
        if block is None:
            raise RuntimeError(f"all {PORT_BLOCKS} HCCL port blocks are held by warm pools of this host")
        owner, pid, started = self._register.identity()
        self.pools[key] = {"owner": owner, "pid": pid, "started": started, "n": n, "devices": list(devices),
                           "port_block": block}
        self.waiting.pop(owner, None)
        self.changed = True
        return WarmPool(key, owner, pid, n, tuple(devices), block)

    def remove(self, key: str) -> None:
        if self.pools.pop(key, None) is not None:
            self.changed = True

    def wait_for(self, n: int, bound: int) -> None:
        """Post that this owner waits for room for n ranks under its `bound` (others stop idle pools)."""
        owner, pid, started = self._register.identity()
        wait = {"pid": pid, "started": started, "n": n, "bound": bound}
        if self.waiting.get(owner) != wait:
            self.waiting[owner] = wait
            self.changed = True

    def stop_waiting(self) -> None:
        if self.waiting.pop(self._register.owner, None) is not None:
            self.changed = True

    def excess_for_others(self) -> int:
        """How many registered ranks must go before every other owner's wait fits (0: nobody waits)."""
        return max((self.excess(w["n"], w["bound"]) for owner, w in self.waiting.items()
                    if owner != self._register.owner), default=0)

    def describe(self) -> str:
        by_pid: dict = {}
        for entry in self.pools.values():
            by_pid[entry["pid"]] = by_pid.get(entry["pid"], 0) + entry["n"]
        return ", ".join(f"pid {pid}: {n}" for pid, n in sorted(by_pid.items())) or "none"


class HostRegister:
    """One runner's view of the register in `lock_dir`: leases of devices out of `physical_ids` (the slots
    this process may use) and its warm pools. The directory and the lock files are made and opened on
    first use, so a runner whose platform is unavailable makes nothing."""

    POLL_SECONDS = 0.01

    def __init__(self, lock_dir: str, physical_ids: Sequence[int] = ()):
        self.lock_dir = os.path.abspath(lock_dir)
        self.physical_ids = tuple(physical_ids)
        self.path = os.path.join(self.lock_dir, REGISTER_FILE)
        self.pid = os.getpid()
        self.owner = f"{self.pid}-{next(_runner_numbers)}"
        self._started: float | None = None  # this process's start time (psutil), read when first needed
        self._pool_numbers = itertools.count()
        self._files: dict[str, _LockFile] = {}  # kept open until close() (or until collected)
        self._held: set[int] = set()  # devices leased through this object
        self._mutex = threading.RLock()  # guards _files and _held
        self._gate_thread = threading.Lock()  # the gate's flock is this object's: its threads take turns
        self._pending: list[Callable[[RegisterState], None]] = []  # changes put off while the gate was busy
        self._prepared = False
        weakref.finalize(self, _close_files, self._files)

    # -- files -------------------------------------------------------------------------------------------
    def _lock(self, name: str) -> _LockFile:
        with self._mutex:
            lock = self._files.get(name)
            if lock is None:
                if not self._prepared:
                    prepare_lease_dir(self.lock_dir)
                    self._prepared = True
                lock = self._files[name] = _LockFile(os.path.join(self.lock_dir, name))
            return lock

    def close(self) -> None:
        """Close every kept-open file (giving back what this object held); reopened on next use."""
        with self._mutex:
            self._held.clear()
            _close_files(self._files)

    def _read(self) -> bytes:
        fd = self._lock(REGISTER_FILE).fd
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(fd, 1 << 16, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def _write(self, data: dict) -> None:
        fd = self._lock(REGISTER_FILE).fd
        raw = json.dumps(data, indent=0).encode()
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, len(raw))

    def identity(self) -> tuple[str, int, float]:
        """(owner, pid, process start time) of this register's entries."""
        if self._started is None:
            self._started = psutil.Process(self.pid).create_time()
        return self.owner, self.pid, self._started

    def new_key(self) -> str:
        return f"{self.owner}/{next(self._pool_numbers)}"

    # -- the transaction ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, deadline: float | None = None) -> Iterator[RegisterState]:
        """The register under the gate until the block ends (written back if it changed). Waits for the
        gate until `deadline` (time.monotonic; None: as long as it takes), then raises LeaseTimeout."""
        state = self._enter(deadline)
        try:
            yield state
        finally:
            self._exit(state)

    def try_transaction(self) -> contextlib.AbstractContextManager[RegisterState | None]:
        """A transaction if the gate is free now, else None (nothing waited for)."""
        return _Optional(self)

    def _enter(self, deadline: float | None, wait: bool = True) -> RegisterState | None:
        if wait:
            remaining = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._gate_thread.acquire(timeout=remaining):
                raise GateTimeout("the gate stayed held by another thread of this process")
        elif not self._gate_thread.acquire(blocking=False):
            return None
        try:
            gate = self._lock(GATE_FILE)
            while not gate.try_lock():
                if not wait:
                    self._gate_thread.release()
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    raise GateTimeout("the gate stayed held by other requests")
                time.sleep(self.POLL_SECONDS)
        except BaseException:
            self._gate_thread.release()
            raise
        state = RegisterState(self)
        try:
            pending, self._pending = self._pending, []
            for change in pending:
                change(state)
        except BaseException:
            self._exit(state)
            raise
        return state

    def _exit(self, state: RegisterState) -> None:
        try:
            if state.changed:
                self._write(state.to_json())
        finally:
            try:
                self._lock(GATE_FILE).unlock()
            finally:
                self._gate_thread.release()

    def change_soon(self, change: Callable[[RegisterState], None]) -> None:
        """Apply `change` now if the gate is free, else at this register's next transaction (never waits)."""
        with self.try_transaction() as state:
            if state is None:
                self._pending.append(change)
            else:
                change(state)

    # -- devices -----------------------------------------------------------------------------------------
    def check_request(self, n: int, who: str = "") -> None:
        if n > len(self.physical_ids):
            raise LeaseTimeout(f"{who}needs {n} devices but only {len(self.physical_ids)} exist "
                               f"({list(self.physical_ids)})")

    def candidate_sets(self, n: int, preferred: Iterable[Sequence[int]] = ()) -> list[tuple[int, ...]]:
        """Preferred sets (warm pools) first, then windows of n slots aligned at multiples of n."""
        sets: list[tuple[int, ...]] = []
        for devices in preferred:
            devices = tuple(sorted(devices))
            if len(devices) == n and set(devices) <= set(self.physical_ids) and devices not in sets:
                sets.append(devices)
        for start in range(0, len(self.physical_ids) - n + 1, n):
            window = tuple(sorted(self.physical_ids[start:start + n]))
            if window not in sets:
                sets.append(window)
        return sets

    def acquire(self, n: int, timeout: float, preferred: Iterable[Sequence[int]] = (), who: str = "") -> Lease:
        """A lease of n devices: one transaction, waiting up to `timeout` seconds in all."""
        self.check_request(n, who)
        started = time.monotonic()
        deadline = started + timeout
        try:
            with self.transaction(deadline) as state:
                return state.lease(n, deadline, preferred, who, started=started, timeout=timeout)
        except GateTimeout:
            raise LeaseTimeout(self.queue_message(who, timeout, f"{n} of devices {list(self.physical_ids)}")) from None

    def queue_message(self, who: str, timeout: float, what: str) -> str:
        return f"{who}waited {timeout:.0f}s for {what}: other requests held the queue (lock dir {self.lock_dir})"

    def _try_all(self, devices: Sequence[int]) -> bool:
        with self._mutex:
            if any(device in self._held for device in devices):
                return False
            taken: list[_LockFile] = []
            for device in sorted(devices):
                lock = self._lock(device_lock_name(device))
                if not lock.try_lock():
                    for held in reversed(taken):
                        held.unlock()
                    return False
                taken.append(lock)
            self._held.update(devices)
            return True

    def _release_devices(self, devices: Sequence[int]) -> None:
        with self._mutex:
            for device in sorted(devices, reverse=True):
                lock = self._files.get(device_lock_name(device))
                if lock is not None and device in self._held:
                    lock.unlock()
                self._held.discard(device)

    def busy_devices(self) -> list[int]:
        busy = []
        with self._mutex:
            for device in self.physical_ids:
                if device in self._held:
                    busy.append(device)
                    continue
                lock = self._lock(device_lock_name(device))
                if lock.try_lock():
                    lock.unlock()
                else:
                    busy.append(device)
        return busy

    # -- warm pools --------------------------------------------------------------------------------------
    def release(self, key: str) -> None:
        with self.transaction() as state:
            state.remove(key)

    def release_all(self, deadline: float | None = None) -> None:
        """Every pool and wait of this runner off the register."""
        if not self._prepared:
            return  # never used: nothing of this runner is on it (and nothing is made now)
        with self.transaction(deadline) as state:
            for key, entry in list(state.pools.items()):
                if entry["owner"] == self.owner:
                    state.remove(key)
            state.stop_waiting()

    def pools(self) -> list[WarmPool]:
        with self.transaction() as state:
            return [WarmPool(key, e["owner"], e["pid"], e["n"], tuple(e["devices"]), e["port_block"])
                    for key, e in state.pools.items()]


class _Optional:
    """``with register.try_transaction() as state``: state is None when the gate was busy."""

    def __init__(self, register: HostRegister):
        self._register = register
        self._state: RegisterState | None = None

    def __enter__(self) -> RegisterState | None:
        self._state = self._register._enter(None, wait=False)
        return self._state

    def __exit__(self, *exc) -> None:
        if self._state is not None:
            self._register._exit(self._state)


def _close_files(files: dict) -> None:
    for lock in files.values():
        try:
            os.close(lock.fd)
        except OSError:
            pass
    files.clear()


def _decode(raw: bytes) -> dict:
    text = raw.decode(errors="replace").strip()
    if not text:
        return {}
    try:
        value, _ = json.JSONDecoder().raw_decode(text)  # a stale tail after a torn write is ignored
    except ValueError:
        return {}  # not written by this module: taken as empty
    return value if isinstance(value, dict) else {}
