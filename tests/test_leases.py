"""Device leases (harness/host_register.py) under real contention between processes.

Every test uses a private lock directory (tmp_path), so concurrent sessions on this host neither
disturb nor are disturbed by these tests. Leasing processes are started with the "spawn" context
(they only need host_register.py, not torch) and record what they held into per-process files; intervals are
taken with time.monotonic(), which on Linux is CLOCK_MONOTONIC and comparable across processes.

Recorded intervals are conservative: `start` is read after acquire() returned and `end` before
release() is called, so two leases that really excluded each other can never show overlapping
intervals, and leases that really overlapped (held for 5-25 ms) almost always do.
"""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import re
import signal
import tempfile
import time

import pytest

from ascend_conformance.harness.host_register import HostRegister, LeaseTimeout
from tests.events import HANG_GUARD, wait_for

SLOTS = 8
CTX = multiprocessing.get_context("spawn")
# Every wait here is for an event (a process ready, a lease granted, a counter grown); HANG_GUARD only ends a hang.


# --- helpers shared by the parent and the leasing processes --------------------------------------------
def _flock_busy(path: str) -> bool:
    """True when another open file description holds the flock of `path` (the lease lock files).

    flock(2) locks belong to open file descriptions, so this probe conflicts with a lock held by any
    process, including the calling one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _device_lock(lock_dir: str, device: int) -> str:
    return os.path.join(lock_dir, f"device-{device}.lock")


def _not_held(lock_dir: str, devices) -> list[int]:
    return [d for d in devices if not _flock_busy(_device_lock(lock_dir, d))]


def _write_record(out, record: dict) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def _read_records(paths) -> list[dict]:
    records = []
    for path in paths:
        with open(path) as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records


# --- process bodies (module level: the spawn context imports them) --------------------------------------
def _mixed_leaser(lock_dir, index, sizes, bound, go, out_path):
    """Lease each size in `sizes` in turn, hold it 5-25 ms, check it is held throughout, release."""
    rng = random.Random(index)
    manager = HostRegister(lock_dir, range(SLOTS))
    with open(out_path, "w") as out:
        if not go.wait(HANG_GUARD):
            _write_record(out, {"index": index, "error": "start signal never came"})
            return
        for n in sizes:
            requested = time.monotonic()
            try:
                lease = manager.acquire(n, bound, who=f"leaser {index}: ")
            except LeaseTimeout as exc:
                _write_record(out, {"index": index, "n": n, "requested": requested,
                                    "failed": time.monotonic(), "error": str(exc)})
                continue
            start = time.monotonic()
            missing_at_start = _not_held(lock_dir, lease.devices)
            time.sleep(rng.uniform(0.005, 0.025))
            missing_at_end = _not_held(lock_dir, lease.devices)
            end = time.monotonic()
            lease.release()
            _write_record(out, {"index": index, "n": n, "devices": list(lease.devices), "requested": requested,
                                "start": start, "end": end, "waited": lease.waited,
                                "missing_at_start": missing_at_start, "missing_at_end": missing_at_end})


def _small_leaser(lock_dir, index, hold, stop, served, out_path):
    """Lease one device over and over (hold it `hold` s, re-request at once) until told to stop."""
    manager = HostRegister(lock_dir, range(SLOTS))
    with open(out_path, "w") as out:
        while not stop.is_set():
            requested = time.monotonic()
            try:
                lease = manager.acquire(1, HANG_GUARD, who=f"small {index}: ")
            except LeaseTimeout as exc:
                _write_record(out, {"index": index, "n": 1, "requested": requested, "error": str(exc)})
                return
            start = time.monotonic()
            time.sleep(hold)
            end = time.monotonic()
            lease.release()
            _write_record(out, {"index": index, "n": 1, "devices": list(lease.devices), "requested": requested,
                                "start": start, "end": end})
            with served.get_lock():
                served.value += 1


def _holder(lock_dir, sizes, out_path, ready, stop):
    """Take one lease per size, report the devices, hold them until stopped (or killed)."""
    manager = HostRegister(lock_dir, range(SLOTS))
    leases = [manager.acquire(n, HANG_GUARD, who="holder: ") for n in sizes]
    with open(out_path, "w") as out:
        json.dump(sorted(d for lease in leases for d in lease.devices), out)
    ready.set()
    stop.wait(HANG_GUARD)


def _waiter(lock_dir, n, started):
    """Request n devices with a long timeout (so it sits in acquire, holding the gate)."""
    manager = HostRegister(lock_dir, range(SLOTS))
    started.set()
    manager.acquire(n, HANG_GUARD, who="waiter: ")


# --- process management ---------------------------------------------------------------------------------
class _Procs:
    """Processes started by one test; whatever is still alive at the end is killed and reaped."""

    def __init__(self):
        self.procs = []

    def start(self, target, *args):
        proc = CTX.Process(target=target, args=args, daemon=True)
        proc.start()
        self.procs.append(proc)
        return proc

    def join_all(self) -> None:
        """Wait for every process to end (each ends by itself once its work is done)."""
        for proc in self.procs:
            proc.join(HANG_GUARD)
        stuck = [p.pid for p in self.procs if p.is_alive()]
        assert not stuck, f"leasing processes {stuck} still running after {HANG_GUARD:g}s: a hang"
        failed = [(p.pid, p.exitcode) for p in self.procs if p.exitcode != 0]
        assert not failed, f"leasing processes exited abnormally (pid, exit code): {failed}"

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(5)


@pytest.fixture
def procs():
    started = _Procs()
    try:
        yield started
    finally:
        started.kill_all()


def _overlaps(intervals) -> list[tuple]:
    """Pairs of (start, end, tag) intervals that intersect, per sorted sweep."""
    found = []
    ordered = sorted(intervals)
    for (s1, e1, t1), (s2, e2, t2) in zip(ordered, ordered[1:]):
        if s2 < e1:
            found.append(((s1, e1, t1), (s2, e2, t2)))
    return found


# --- tests ----------------------------------------------------------------------------------------------
def test_concurrent_mixed_requests_are_exclusive_all_or_nothing_and_all_served(tmp_path, procs):
    lock_dir = str(tmp_path / "locks")
    # A request waits as long as the others take (no bound of its own: on a loaded box that is longer); what
    # is checked is that every request is served, exclusively and all or nothing.
    n_procs, rounds, bound = 7, 5, HANG_GUARD
    sizes = [1, 2, 4, 8]
    go = CTX.Event()
    outs = [str(tmp_path / f"leaser{i}.jsonl") for i in range(n_procs)]
    plan = {i: [sizes[(i + r) % len(sizes)] for r in range(rounds)] for i in range(n_procs)}
    for i in range(n_procs):
        procs.start(_mixed_leaser, lock_dir, i, plan[i], bound, go, outs[i])
    go.set()
    procs.join_all()

    records = _read_records(outs)
    errors = [r for r in records if "error" in r]
    assert not errors, f"requests not served: {errors}"
    expected = sum(len(v) for v in plan.values())
    assert len(records) == expected, f"{len(records)} of {expected} requests recorded"
    by_index = {i: [r["n"] for r in records if r["index"] == i] for i in range(n_procs)}
    assert by_index == plan, "every process must have been served every request, in order"

    allowed = {n: {tuple(range(s, s + n)) for s in range(0, SLOTS, n)} for n in sizes}
    per_device: dict[int, list] = {d: [] for d in range(SLOTS)}
    for r in records:
        devices = tuple(r["devices"])
        assert devices in allowed[r["n"]], f"{r['n']}-device lease got {devices}, not an aligned window"
        # all-or-nothing: every device of the lease is locked from the first to the last moment of use
        assert not r["missing_at_start"] and not r["missing_at_end"], \
            f"lease {devices} of process {r['index']} did not hold {r['missing_at_start'] or r['missing_at_end']}"
        assert r["start"] < r["end"]
        for d in devices:
            per_device[d].append((r["start"], r["end"], f"process {r['index']} ({r['n']} devices)"))

    for device, intervals in per_device.items():
        clash = _overlaps(intervals)
        assert not clash, f"device {device} was leased twice at once: {clash[0]}"

    # The run must have had real concurrency, or the exclusivity check above proved nothing.
    all_intervals = [(r["start"], r["end"], r["index"]) for r in records]
    assert _overlaps(all_intervals), "no two leases were ever held at the same time: no contention happened"


def test_eight_device_request_is_served_while_one_device_requests_keep_coming(tmp_path, procs):
    lock_dir = str(tmp_path / "locks")
    n_small, hold = 4, 0.05
    stop = CTX.Event()
    served = CTX.Value("i", 0)
    outs = [str(tmp_path / f"small{i}.jsonl") for i in range(n_small)]
    for i in range(n_small):
        procs.start(_small_leaser, lock_dir, i, hold, stop, served, outs[i])
    # Wait until the stream of small leases is flowing (every process served at least twice on average).
    leasing = lambda: any(p.is_alive() for p in procs.procs)  # noqa: E731 - the leasers can still serve
    wait_for(lambda: served.value >= 2 * n_small, "the 1-device leasers to get going", possible=leasing)

    manager = HostRegister(lock_dir, range(SLOTS))
    requested = time.monotonic()
    served_before = served.value
    with manager.acquire(SLOTS, HANG_GUARD, who="big: ") as lease:
        start = time.monotonic()
        assert lease.devices == tuple(range(SLOTS))
        assert not _not_held(lock_dir, lease.devices)
        time.sleep(hold)
        end = time.monotonic()
    # The small leasers go on after the big lease (they were queued, not starved either).
    wait_for(lambda: served.value >= served_before + 2 * n_small, "the 1-device leasers to resume",
             possible=leasing)
    stop.set()
    procs.join_all()

    records = _read_records(outs)
    errors = [r for r in records if "error" in r]
    assert not errors, f"1-device requests failed: {errors}"
    # Served, not starved: granted while the stream went on (leases before and after it, none during).
    assert requested <= start
    during = [r for r in records if r["start"] < end and r["end"] > start]
    assert not during, f"1-device leases overlapped the 8-device lease: {during}"
    before = [r for r in records if r["end"] <= start]
    after = [r for r in records if r["start"] >= end]
    assert before and after, "1-device leases must have been served both before and after the 8-device one"


def _never_waiting(monkeypatch) -> None:
    """From here on, a wait of the lease manager (its poll, or filelock's) fails the test: "at once" is
    counted in attempts, not seconds."""
    def refuse(seconds):
        raise AssertionError(f"the lease manager waited ({seconds}s) where it must not wait at all")

    monkeypatch.setattr(time, "sleep", refuse)


def test_request_for_more_devices_than_exist_fails_at_once(tmp_path, monkeypatch):
    manager = HostRegister(str(tmp_path / "locks"), range(SLOTS))
    monkeypatch.setattr(manager, "_lock", lambda name: pytest.fail(f"took lock {name} for an impossible request"))
    _never_waiting(monkeypatch)
    with pytest.raises(LeaseTimeout) as info:
        manager.acquire(SLOTS + 1, HANG_GUARD, who="test_x: ")
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message.strip(), f"message must be one line: {message!r}"
    assert re.search(r"\b9\b", message) and re.search(r"\b8\b", message), \
        f"message must name the request (9) and the number of devices (8): {message!r}"
    assert message.startswith("test_x: "), f"message must name who asked: {message!r}"


@pytest.mark.parametrize("held_sizes", [[8], [4, 2]], ids=["all-held", "six-held"])
def test_request_while_devices_are_held_elsewhere_times_out_naming_the_busy_devices(tmp_path, procs, held_sizes):
    lock_dir = str(tmp_path / "locks")
    ready, stop = CTX.Event(), CTX.Event()
    out = str(tmp_path / "held.json")
    procs.start(_holder, lock_dir, held_sizes, out, ready, stop)
    assert ready.wait(HANG_GUARD), "holder process did not take its leases"
    with open(out) as handle:
        held = json.load(handle)
    assert len(held) == sum(held_sizes)

    manager = HostRegister(lock_dir, range(SLOTS))
    timeout = 0.5
    began = time.monotonic()
    with pytest.raises(LeaseTimeout) as info:
        manager.acquire(4, timeout, who="test_y: ")
    elapsed = time.monotonic() - began
    message = str(info.value)
    # Not before its timeout; how long after it depends on the box's load, so that is not judged.
    assert timeout <= elapsed, f"failed after {elapsed:.2f}s, before its {timeout}s timeout"
    assert f"busy: {held}" in message, f"message must name exactly the busy devices {held}: {message!r}"
    assert "test_y: " in message
    stop.set()
    procs.join_all()


def test_preferred_set_is_honoured_when_free(tmp_path):
    manager = HostRegister(str(tmp_path / "locks"), range(SLOTS))
    # A preferred set need not be an aligned window; order inside it does not matter.
    with manager.acquire(2, HANG_GUARD, preferred=[(6, 5)]) as first:
        assert first.devices == (5, 6)
        # 5 is busy: the next preferred set that is free wins over the aligned windows
        with manager.acquire(2, HANG_GUARD, preferred=[(5, 6), (7, 3)]) as second:
            assert second.devices == (3, 7)
            # all preferred sets busy: fall back to the first free aligned window
            with manager.acquire(2, HANG_GUARD, preferred=[(5, 6), (3, 7)]) as third:
                assert third.devices == (0, 1)
    # sets of the wrong size or with unknown ids are ignored, not honoured
    with manager.acquire(2, HANG_GUARD, preferred=[(6, 7, 8), (7, 9)]) as lease:
        assert lease.devices == (0, 1)
    assert _not_held(str(tmp_path / "locks"), range(SLOTS)) == list(range(SLOTS)), \
        "every lease must have been released"


def test_leases_and_the_gate_of_a_sigkilled_process_are_released(tmp_path, procs, monkeypatch):
    lock_dir = str(tmp_path / "locks")
    ready, stop, waiting = CTX.Event(), CTX.Event(), CTX.Event()
    holder = procs.start(_holder, lock_dir, [SLOTS], str(tmp_path / "held.json"), ready, stop)
    assert ready.wait(HANG_GUARD), "holder process did not take its lease"
    # A second process waits for all devices: it sits in acquire() holding the gate.
    waiter = procs.start(_waiter, lock_dir, SLOTS, waiting)
    assert waiting.wait(HANG_GUARD)
    gate = os.path.join(lock_dir, "gate.lock")
    wait_for(lambda: _flock_busy(gate), "the waiting process to take the gate", possible=waiter.is_alive)

    manager = HostRegister(lock_dir, range(SLOTS))
    with pytest.raises(LeaseTimeout, match="held the queue"):
        manager.acquire(1, 0.3)

    os.kill(waiter.pid, signal.SIGKILL)
    waiter.join()  # SIGKILL: it exits, however long the box takes to schedule that
    assert waiter.exitcode == -signal.SIGKILL
    # The gate is free again (the kernel dropped the dead process's flock); the devices are still held.
    with pytest.raises(LeaseTimeout, match=re.escape(f"busy: {list(range(SLOTS))}")):
        manager.acquire(1, 0.3)

    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert holder.exitcode == -signal.SIGKILL
    # Released at once: its exit dropped the locks, so the first attempt gets every device, without a wait.
    _never_waiting(monkeypatch)
    with manager.acquire(SLOTS, HANG_GUARD) as lease:
        assert lease.devices == tuple(range(SLOTS))
    monkeypatch.undo()


# --- host-wide leases across users ----------------------------------------------------------------------
def test_the_default_accelerator_lease_dir_is_one_path_for_every_user(monkeypatch, tmp_path):
    from ascend_conformance.harness.host_register import default_lease_dir

    seen = set()
    for uid, tmpdir in ((0, None), (4242, str(tmp_path / "tmp-of-4242")), (4243, "/var/tmp")):
        monkeypatch.setattr(os, "getuid", lambda uid=uid: uid)
        if tmpdir:
            monkeypatch.setenv("TMPDIR", tmpdir)
        else:
            monkeypatch.delenv("TMPDIR", raising=False)
        monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
        seen.add(default_lease_dir("npu"))
    assert seen == {"/tmp/ascend-conformance-leases-npu"}, \
        f"users with other uids or TMPDIRs must share one lease directory per host: {sorted(seen)}"


USER_A, USER_B = 4242, 4243  # not 65534: filelock treats the overflow uid as ambiguous


def _become(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _user_holds_a_lease(uid, lock_dir, held, release, reply):
    """As `uid`, with a strict umask: create the lease directory, hold 2 devices until `release`."""
    try:
        _become(uid)
        os.umask(0o077)
        with HostRegister(lock_dir, range(SLOTS)).acquire(2, HANG_GUARD, who="user A: ") as lease:
            reply.send(("held", list(lease.devices)))
            held.set()
            release.wait(HANG_GUARD)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        reply.send(("error", f"{type(exc).__name__}: {exc}"))
        held.set()


def _user_tries_leases(uid, lock_dir, reply):
    """As another user: all 8 devices (must time out on the 2 held), then 2 devices (must succeed)."""
    try:
        _become(uid)
        os.umask(0o077)
        manager = HostRegister(lock_dir, range(SLOTS))
        try:
            manager.acquire(SLOTS, 0.5, who="user B: ")
            all_eight = "granted"
        except LeaseTimeout as exc:
            all_eight = str(exc)
        with manager.acquire(2, HANG_GUARD, who="user B: ") as lease:
            two = list(lease.devices)
        reply.send(("ok", all_eight, two))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        reply.send(("error", f"{type(exc).__name__}: {exc}", None))


@pytest.fixture
def sticky_root():
    """A directory like /tmp (root's, mode 1777) that other users can reach; tmp_path is private."""
    root = tempfile.mkdtemp(prefix="ascend-conformance-users-", dir="/tmp")
    os.chmod(root, 0o1777)
    try:
        yield root
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two other users (setuid)")
def test_two_users_exclude_each_other_through_a_lease_dir_one_of_them_created(sticky_root):
    lock_dir = os.path.join(sticky_root, "ascend-conformance-leases-npu")
    # Load everything the forked children need while this process can still read its installation:
    # after setuid they cannot (the interpreter lives under a private home).
    with HostRegister(os.path.join(sticky_root, "warm-up"), range(SLOTS)).acquire(1, HANG_GUARD):
        pass
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    a_end, a_reply = fork.Pipe(duplex=False)
    b_end, b_reply = fork.Pipe(duplex=False)
    user_a = fork.Process(target=_user_holds_a_lease, args=(USER_A, lock_dir, held, release, a_reply), daemon=True)
    user_b = fork.Process(target=_user_tries_leases, args=(USER_B, lock_dir, b_reply), daemon=True)
    try:
        user_a.start()
        assert held.wait(HANG_GUARD), "user A never took its lease"
        assert a_end.poll(HANG_GUARD)
        assert a_end.recv() == ("held", [0, 1])

        info = os.stat(lock_dir)
        assert (info.st_uid, oct(info.st_mode & 0o7777)) == (USER_A, oct(0o1777)), \
            "the lease directory must be sticky and world-writable, like /tmp"
        for name in os.listdir(lock_dir):
            entry = os.stat(os.path.join(lock_dir, name))
            assert (entry.st_uid, oct(entry.st_mode & 0o777)) == (USER_A, oct(0o666)), \
                f"{name}: every file belongs to the directory's owner and any user may lock it"

        user_b.start()
        assert b_end.poll(HANG_GUARD), "user B did not answer"
        status, all_eight, two = b_end.recv()
        assert status == "ok", f"user B could not use user A's lease directory: {all_eight}"
        assert all_eight.startswith("user B: waited") and "busy: [0, 1]" in all_eight, \
            f"user B must wait for the 2 devices user A holds: {all_eight}"
        assert two == [2, 3], f"user B must get 2 of the devices user A does not hold: {two}"
    finally:
        release.set()
        for proc in (user_a, user_b):
            if proc.pid is not None:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()


def test_a_runner_that_never_runs_a_world_makes_no_lease_directory(tmp_path):
    """A session on a host whose platform is unavailable must not leave host-wide directories behind."""
    from ascend_conformance.harness.world import WorldOptions, WorldRunner
    from ascend_conformance.platform import NpuPlatform

    lock_dir = tmp_path / "ascend-conformance-leases-npu"
    runner = WorldRunner(WorldOptions(platform=NpuPlatform(), physical_ids=(), lease_dir=str(lock_dir),
                                      log_root=str(tmp_path / "logs")))
    runner.shutdown()
    assert not lock_dir.exists()
