"""Device leases shared by every process on the host (pytest-xdist workers, concurrent sessions).

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
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Iterable, Sequence

import filelock


class LeaseTimeout(TimeoutError):
    pass


def default_lease_dir(platform: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"ascend-conformance-leases-{os.getuid()}", platform)


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
        self.lock_dir = lock_dir
        self.physical_ids = tuple(physical_ids)
        os.makedirs(lock_dir, exist_ok=True)

    def _lock(self, name: str) -> filelock.BaseFileLock:
        # thread_local=False: a lease may be released by another thread than the one that took it.
        return filelock.FileLock(os.path.join(self.lock_dir, name), thread_local=False)

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
        gate = self._lock("gate.lock")
        try:
            gate.acquire(timeout=max(0.0, deadline - time.monotonic()))
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
            lock = self._lock(f"device-{device}.lock")
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                for held in reversed(taken):
                    held.release()
                return None
            taken.append(lock)
        return taken

    def busy_devices(self) -> list[int]:
        busy = []
        for device in self.physical_ids:
            lock = self._lock(f"device-{device}.lock")
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                busy.append(device)
            else:
                lock.release()
        return busy
