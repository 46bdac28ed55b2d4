"""Device leases shared by every process on the host (pytest-xdist workers, concurrent sessions, users).

A lease is a set of device slots held exclusively. Each slot is a lock file ``<dir>/device-<id>.lock``
(filelock, flock-based, so a crashed holder releases automatically). Acquisition is all-or-nothing and
fair enough not to starve large requests:

1. take the gate lock ``<dir>/gate.lock`` (blocking, with the deadline); only the gate holder may
   take device locks, so requests are served roughly in arrival order;
2. under the gate, try candidate device sets in a fixed order (the caller's preferred set first, then
   aligned windows); each attempt takes that set's locks in ascending id order without blocking and
   gives them all back if one is busy — nobody ever waits while holding a device lock, so there is no
   deadlock; between attempts the gate holder sleeps while current holders finish (release needs no gate);
3. release the gate as soon as a set is held, or fail with a message naming who waited for what.

Slot ids are physical device ids (after any outer visible-devices mask), so two sessions with
different masks on one host still exclude each other. On cpu the slots are virtual (``--devices N``).

Who shares a lease directory. Real devices belong to the host, so their default directory is one
fixed path for every user: ``/tmp/ascend-conformance-leases-<platform>`` (not ``$TMPDIR``, which
differs between users). Several users must be able to lock the same files, and filelock refuses a lock
file that another user owns in a sticky directory (that user could replace it during a hold); so a
lease directory is created whole — every lock file the harness uses made up front in a private
directory, with mode 0666, then renamed into place with mode 1777 (sticky, world-writable, like /tmp)
— and every file in it belongs to the directory's owner, which filelock and the kernel's
``fs.protected_regular`` both accept. A file made later (a device id above the pre-made range) gets
mode 0666 as well. CPU slots are virtual: the pytest fixtures give each session its own directory.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
import time
from typing import Iterable, Sequence

import filelock

from ascend_conformance.errors import ConfigError

HOST_LEASE_ROOT = "/tmp"  # fixed: every user of the host must reach the same directory
LOCK_FILE_MODE = 0o666  # any user may open (and so flock) the lock files
SHARED_DIR_MODE = 0o1777  # sticky and world-writable, as /tmp
PREMADE_DEVICE_IDS = range(64)
GATE_FILE = "gate.lock"
WARM_REGISTRY_FILE = "warm-ranks.json"  # harness/warm_ranks.py
WARM_REGISTRY_LOCK = "warm-ranks.lock"


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
        for name in [GATE_FILE, WARM_REGISTRY_FILE, WARM_REGISTRY_LOCK,
                     *(device_lock_name(d) for d in PREMADE_DEVICE_IDS)]:
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


class LeaseTimeout(TimeoutError):
    pass


@dataclasses.dataclass
class Lease:
    devices: tuple[int, ...]  # physical ids, ascending
    waited: float
    _locks: list[filelock.BaseFileLock]

    def release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks = []

    @property
    def held(self) -> bool:
        return bool(self._locks)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class LeaseManager:
    """Leases of n devices out of `physical_ids` (the slots this process may use)."""

    POLL_SECONDS = 0.01

    def __init__(self, lock_dir: str, physical_ids: Sequence[int]):
        self.lock_dir = os.path.abspath(lock_dir)
        self.physical_ids = tuple(physical_ids)
        self._prepared = False  # made on first use: a runner whose platform is unavailable makes nothing

    def _lock(self, name: str) -> filelock.BaseFileLock:
        if not self._prepared:
            prepare_lease_dir(self.lock_dir)
            self._prepared = True
        return shared_lock(os.path.join(self.lock_dir, name))

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

    def acquire(self, n: int, timeout: float, preferred: Iterable[Sequence[int]] = (),
                who: str = "") -> Lease:
        if n > len(self.physical_ids):
            raise LeaseTimeout(f"{who}needs {n} devices but only {len(self.physical_ids)} exist "
                               f"({list(self.physical_ids)})")
        candidates = self.candidate_sets(n, preferred)
        started = time.monotonic()
        deadline = started + timeout
        gate = self._lock(GATE_FILE)
        try:
            _acquire(gate, max(0.0, deadline - time.monotonic()))
        except filelock.Timeout:
            raise LeaseTimeout(f"{who}waited {timeout:.0f}s for {n} of devices {list(self.physical_ids)}: "
                               f"other requests held the queue (lock dir {self.lock_dir})") from None
        try:
            while True:
                for devices in candidates:
                    locks = self._try_all(devices)
                    if locks is not None:
                        return Lease(devices, time.monotonic() - started, locks)
                if time.monotonic() >= deadline:
                    raise LeaseTimeout(
                        f"{who}waited {timeout:.0f}s for {n} free devices out of {list(self.physical_ids)}; "
                        f"busy: {self.busy_devices()} (lock dir {self.lock_dir})")
                time.sleep(self.POLL_SECONDS)
        finally:
            gate.release()

    def _try_all(self, devices: Sequence[int]) -> list[filelock.BaseFileLock] | None:
        taken: list[filelock.BaseFileLock] = []
        for device in sorted(devices):
            lock = self._lock(device_lock_name(device))
            try:
                _acquire(lock, 0)
            except BaseException as exc:
                for held in reversed(taken):
                    held.release()
                if isinstance(exc, filelock.Timeout):
                    return None
                raise
            taken.append(lock)
        return taken

    def busy_devices(self) -> list[int]:
        busy = []
        for device in self.physical_ids:
            lock = self._lock(device_lock_name(device))
            try:
                _acquire(lock, 0)
            except filelock.Timeout:
                busy.append(device)
            else:
                lock.release()
        return busy


def shared_lock(path: str) -> filelock.BaseFileLock:
    # thread_local=False: a lease may be released by another thread than the one that took it.
    return filelock.FileLock(path, mode=LOCK_FILE_MODE, thread_local=False)


def _acquire(lock: filelock.BaseFileLock, timeout: float) -> None:
    """lock.acquire, with a lock file this user may not lock turned into one line that says what to do."""
    try:
        lock.acquire(timeout=timeout)
    except PermissionError as exc:
        raise ConfigError(f"cannot lock {lock.lock_file}: {exc.strerror or exc}; every user of the host must be "
                          f"able to lock the files of a shared lease directory (choose one with --lease-dir)") from None
