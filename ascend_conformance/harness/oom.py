"""Evidence for why a rank died of SIGKILL: the kernel's OOM killer, or not.

The OOM killer leaves no trace in the victim's log (SIGKILL cannot be caught), so the parent keeps two
pieces of evidence of its own:

- the OOM-kill counters: ``oom_kill`` in the rank's memory cgroup (v2 ``memory.events``, v1
  ``memory.oom_control``) and system-wide in ``/proc/vmstat``, read when the pool starts and again
  when a rank is found dead;
- the peak resident set size of each rank (``VmHWM`` in ``/proc/<pid>/status``, the kernel's own
  high-water mark), sampled while a run is longer than SAMPLE_SECONDS; a run shorter than that is
  never sampled, so a fast run costs nothing.

Example line, appended to "rank 1 of 4 was killed by SIGKILL (signal 9)":

    likely the kernel's OOM killer: oom_kill rose by 1 in /sys/fs/cgroup/memory/ci/memory.oom_control
    since the pool started (cgroup limit 8.0 GiB); peak RSS seen 7.9 GiB
"""
from __future__ import annotations

import os

SAMPLE_SECONDS = 0.5
VMSTAT = "/proc/vmstat"


def counter_files(pid: int) -> list[str]:
    """The OOM-kill counter files that cover process `pid`: its memory cgroup's, then /proc/vmstat."""
    files = []
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            cgroup_lines = handle.read().splitlines()
        with open("/proc/self/mountinfo") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        cgroup_lines, mounts = [], []
    for path in cgroup_paths(cgroup_lines, mounts):
        for name in ("memory.events", "memory.oom_control"):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                files.append(candidate)
                break
    if os.path.exists(VMSTAT):
        files.append(VMSTAT)
    return files


def cgroup_paths(cgroup_lines: list[str], mountinfo_lines: list[str]) -> list[str]:
    """Directories of the memory cgroup(s) named in /proc/<pid>/cgroup, under their mount points.

    ``4:memory:/ci/job7`` with the v1 memory hierarchy mounted at /sys/fs/cgroup/memory gives
    /sys/fs/cgroup/memory/ci/job7; ``0::/ci/job7`` with cgroup2 at /sys/fs/cgroup gives
    /sys/fs/cgroup/ci/job7.
    """
    v1_mount = v2_mount = None
    for line in mountinfo_lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if root != "/":
            continue  # a bind mount of a sub-tree: the paths in /proc/<pid>/cgroup do not apply
        if fstype == "cgroup2" and v2_mount is None:
            v2_mount = mount_point
        elif fstype == "cgroup" and "memory" in options.split(",") and v1_mount is None:
            v1_mount = mount_point
    paths = []
    for line in cgroup_lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and v2_mount:
            paths.append(os.path.join(v2_mount, path.lstrip("/")))
        elif "memory" in controllers.split(",") and v1_mount:
            paths.append(os.path.join(v1_mount, path.lstrip("/")))
    return paths


def read_oom_kills(path: str) -> int | None:
    """The ``oom_kill N`` counter in a cgroup events file or /proc/vmstat; None when absent."""
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None


def read_peak_rss(pid: int) -> int | None:
    """Bytes of the process's peak resident set (VmHWM); None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_limit(counter_file: str) -> int | None:
    """The limit of the cgroup whose counter file this is (v2 memory.max, v1 memory.limit_in_bytes)."""
    directory = os.path.dirname(counter_file)
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            with open(os.path.join(directory, name)) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):  # "max" / the v1 "unlimited" page-rounded 2**63
            return int(text)
    return None


class OomWatch:
    """The counters at pool start, the peak RSS per rank seen since, and the verdict for a dead rank."""

    def __init__(self, files: list[str]):
        self.files = list(files)
        self.start = {path: read_oom_kills(path) for path in self.files}
        self.peak: dict[int, int] = {}  # rank -> bytes

    def sample(self, pids: dict[int, int]) -> None:
        """Record each live rank's peak RSS; `pids` maps rank -> pid."""
        for rank, pid in pids.items():
            value = read_peak_rss(pid)
            if value is not None and value > self.peak.get(rank, 0):
                self.peak[rank] = value

    def explain(self, rank: int) -> str:
        """One clause on whether the OOM killer probably killed `rank`."""
        rises = []
        for path in self.files:
            before, now = self.start.get(path), read_oom_kills(path)
            if before is not None and now is not None and now > before:
                rises.append((path, now - before))
        peak = self.peak.get(rank)
        peak_text = f"peak RSS seen {format_bytes(peak)}" if peak else "no RSS sample (the run was short)"
        if rises:
            path, delta = rises[0]
            limit = memory_limit(path) if path != VMSTAT else None
            limit_text = f" (cgroup limit {format_bytes(limit)})" if limit else ""
            return (f"likely the kernel's OOM killer: oom_kill rose by {delta} in {path} since the pool started"
                    f"{limit_text}; {peak_text}")
        counted = [path for path in self.files if self.start.get(path) is not None]
        if counted:
            return f"no OOM kill counted ({', '.join(counted)} unchanged): probably not the OOM killer; {peak_text}"
        return f"no OOM-kill counter readable here; {peak_text}"


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
