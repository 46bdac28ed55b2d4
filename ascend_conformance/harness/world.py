"""Worlds of n ranks on demand: a device lease per run, a warm pool per (n, device set).

``WorldRunner.run(n, fn, ...)``, one transaction of the host's register (harness/host_register.py):
  1. lease n devices, preferring the device set of a warm n-rank pool (so the pool is reused); when that
     pool exists, the transaction ends here;
  2. else, in the same transaction, make room among the host's warm ranks (stop this runner's least
     recently used pools) and register the new pool, which gives it its own HCCL port block; when this
     runner's own pools are not enough, post that it waits, give the lease back and try again a moment
     later while other runners stop theirs;
  3. start the new pool (outside the transaction), run, release the lease, and drop the pool if the run
     left it unhealthy.

Idle pools keep no lease: another xdist worker may run on the same devices meanwhile. On accelerator
hosts an idle rank still holds its device context; ``--max-warm-ranks`` bounds how many do on the host
(default: the number of devices; 32 on cpu). A daemon thread per runner stops this runner's idle pools
when another runner on the host waits for room; a lock keeps it away from a pool while it runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import threading
import time
from typing import Callable, Iterator, Sequence

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness.host_register import (GateTimeout, HostRegister, Lease, LeaseTimeout, RegisterState,
                                                      WarmPool)
from ascend_conformance.harness.pool import PoolConfig, RankFailure, RankPool, _SkipAll
from ascend_conformance.platform import Platform

CPU_MAX_WARM_RANKS = 32  # cpu ranks hold only host memory: room for two xdist workers' 2-, 4- and 8-rank pools
ROOM_POLL_SECONDS = 0.05  # how often a runner waiting for room looks at the register
TRIM_POLL_SECONDS = 0.2  # how often a runner with warm pools looks for others waiting for room


class RanksSkipped(Exception):
    """Every rank skipped the test itself (e.g. pytest.skip inside the rank function)."""


@dataclasses.dataclass
class WorldOptions:
    platform: Platform
    physical_ids: tuple  # device slots this process may lease (after any outer visible-devices mask)
    lease_dir: str
    log_root: str
    rank_timeout: float = 300.0
    lease_timeout: float = 900.0  # also bounds the wait for room among the host's warm ranks
    max_warm_ranks: int | None = None  # on the host (the lease directory); None: default_max_warm_ranks
    port_base: int = 30000
    failure_grace: float = 3.0


def default_max_warm_ranks(platform: Platform, physical_ids: tuple) -> int:
    """Accelerators: one warm rank per device this process may use (each holds a device context);
    cpu: CPU_MAX_WARM_RANKS."""
    if platform.virtual_devices:  # cpu slots and emulated NPUs hold no device context
        return CPU_MAX_WARM_RANKS
    return max(1, len(physical_ids))


def physical_device_ids(platform: Platform, cpu_slots: int) -> tuple:
    """Device ids this process may use: the outer visible-devices mask when set, else all devices."""
    if platform.name == "cpu":
        return tuple(range(cpu_slots))
    mask = os.environ.get(platform.visible_devices_env or "", "").strip()
    if mask:
        return tuple(int(tok) for tok in mask.split(",") if tok.strip())
    return tuple(range(platform.device_count()))


class WorldRunner:
    def __init__(self, options: WorldOptions):
        self.options = options
        self.register = HostRegister(options.lease_dir, options.physical_ids)
        self.max_warm_ranks = options.max_warm_ranks or default_max_warm_ranks(options.platform,
                                                                               options.physical_ids)
        self.pools: dict = {}
        self._warm: dict[tuple, WarmPool] = {}  # pool key -> its register entry
        self._pool_count = 0
        self._lock = threading.Lock()  # pools are used (run, started, stopped) by one thread at a time
        self._stopping = threading.Event()
        self._trimmer: threading.Thread | None = None

    def skip_reason(self, n: int) -> str | None:
        """Why a world of n ranks cannot run here (decided before anything is spawned), or None."""
        plat = self.options.platform
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            # a bug in the test, not a property of the host: an error, never a skip
            raise ConfigError(f"world size must be a whole number >= 1, got {n!r}")
        reason = plat.unavailable_reason()
        if reason:
            return f"platform {plat.name} unavailable: {reason}"
        import torch.distributed as dist

        if not dist.is_available():
            return "torch.distributed is not available in this torch build"
        if plat.backend == "gloo" and not dist.is_gloo_available():
            return "backend gloo is not available in this torch build"
        if plat.backend == "nccl" and not dist.is_nccl_available():
            return "backend nccl is not available in this torch build"
        have = len(self.options.physical_ids)
        if n > have:
            return f"needs {n} {plat.name} devices, {have} available ({list(self.options.physical_ids)})"
        return None

    def run(self, n: int, fn: Callable, args: tuple, kwargs: dict, test_id: str,
            timeout: float | None = None, pool_name: str = "") -> list:
        """``pool_name`` picks a family of warm pools: runs with different names never share ranks."""
        _check_shippable(fn)
        with self._lock:  # the trimmer takes it only when free: it never stops a pool that runs
            lease, pool = self._lease_and_pool(n, pool_name, who=f"{test_id}: ")
            try:
                return pool.run(fn, args, kwargs, test_id, timeout or self.options.rank_timeout)
            except _SkipAll as skip:
                raise RanksSkipped(skip.reason) from None
            finally:
                try:
                    if not pool.healthy:
                        self._drop(pool.key)
                finally:
                    lease.release()

    def _pools_by_recency(self):
        return sorted(list(self.pools.items()), key=lambda item: -item[1].last_used)

    def _lease_and_pool(self, n: int, name: str, who: str) -> tuple[Lease, RankPool]:
        """A lease of n devices and a healthy pool on them: a warm one, else one registered within the
        host's bound and started (waiting up to --lease-timeout for devices and for room)."""
        self.register.check_request(n, who)
        bound = self.max_warm_ranks
        started = time.monotonic()
        deadline = started + self.options.lease_timeout
        posted_wait = False
        try:
            while True:
                preferred = [key[1] for key, pool in self._pools_by_recency()
                             if key[0] == n and key[2] == name and pool.healthy]
                try:
                    with self.register.transaction(deadline) as state:
                        lease = state.lease(n, deadline, preferred, who, started=started,
                                            timeout=self.options.lease_timeout)
                        try:
                            pool = self.pools.get((n, lease.devices, name))
                            if pool is not None and pool.healthy:
                                if posted_wait:
                                    state.stop_waiting()
                                return lease, pool
                            warm = self._make_room(state, n, lease.devices, pool)
                        except BaseException:
                            lease.release()
                            raise
                        if warm is None:
                            posted_wait, held = True, state.describe()
                except GateTimeout:
                    raise LeaseTimeout(self.register.queue_message(
                        who, self.options.lease_timeout, f"{n} of devices {list(self.options.physical_ids)}")) from None
                if warm is not None:
                    break
                lease.release()  # nobody waits for room holding devices
                if time.monotonic() >= deadline:
                    raise LeaseTimeout(f"{who}waited {self.options.lease_timeout:.0f}s for room to keep {n} more "
                                       f"ranks warm: the host's bound is {bound} (--max-warm-ranks) and these "
                                       f"processes hold warm ranks: {held} (lock dir {self.register.lock_dir})")
                time.sleep(ROOM_POLL_SECONDS)
        except BaseException:
            if posted_wait:
                self.register.change_soon(RegisterState.stop_waiting)
            raise
        try:
            return lease, self._start_pool(n, lease.devices, name, warm)
        except BaseException:
            lease.release()
            self.register.change_soon(lambda state: state.remove(warm.key))
            raise

    def _make_room(self, state: RegisterState, n: int, devices: tuple, stale: RankPool | None) -> WarmPool | None:
        """Register a new n-rank pool on `devices` once it fits the host's bound, stopping this runner's least
        recently used pools first (and `stale`, an unhealthy pool of the same key); None when that is not
        enough (this runner's wait is then posted)."""
        if stale is not None:
            self._drop(stale.key, state)
        for key in self._least_recently_used(state.excess(n, self.max_warm_ranks)):
            self._drop(key, state)
        if state.excess(n, self.max_warm_ranks):
            state.wait_for(n, self.max_warm_ranks)
            return None
        return state.add(self.register.new_key(), n, devices)

    def _start_pool(self, n: int, devices: tuple, name: str, warm: WarmPool) -> RankPool:
        self._pool_count += 1
        plat = self.options.platform
        env = self.rank_environment(devices, warm.port_block)
        log_dir = os.path.join(self.options.log_root,
                               f"pool{self._pool_count}-n{n}-devices{'_'.join(str(d) for d in devices)}"
                               + (f"-{name}" if name else ""))
        pool = RankPool(n, PoolConfig(platform=plat.name, devices=devices, env=env, log_dir=log_dir,
                                      failure_grace=self.options.failure_grace, name=name)).start()
        self.pools[pool.key] = pool
        self._warm[pool.key] = warm
        self._start_trimmer()
        return pool

    def rank_environment(self, devices: tuple, port_block: int) -> dict:
        """Variables every rank of a pool on `devices` gets before touching the device runtime.

        The visible-devices mask lists exactly the leased physical ids, so rank r binds local device r
        (e.g. lease (4, 5, 6, 7): rank 3 sees ``ASCEND_RT_VISIBLE_DEVICES=4,5,6,7`` and uses npu:3).
        HCCL ports come from `port_block`, which the pool holds on the host's register for its whole
        life (host_register.py), so no two live pools of the host share a port.
        """
        plat = self.options.platform
        env = {}
        if plat.visible_devices_env:
            env[plat.visible_devices_env] = ",".join(str(d) for d in devices)
        env.update(plat.rank_environment(list(devices), port_block, self.options.port_base))
        return env

    # --- the host's bound on warm ranks ---------------------------------------------------------------
    def _least_recently_used(self, excess: int) -> list[tuple]:
        """Keys of this runner's pools, least recently used first, with at least `excess` ranks in all
        (every pool when they have fewer)."""
        victims, freed = [], 0
        for key, pool in sorted(list(self.pools.items()), key=lambda item: item[1].last_used):
            if freed >= excess:
                break
            victims.append(key)
            freed += pool.n
        return victims

    def _drop(self, key: tuple, state: RegisterState | None = None) -> None:
        """Stop the pool (a no-op for one that already killed itself) and take it off the register: in
        `state`'s transaction, else in the next one (a failed run never waits for the gate)."""
        pool = self.pools.pop(key, None)
        if pool is not None:
            pool.shutdown()
        warm = self._warm.pop(key, None)
        if warm is not None:
            if state is not None:
                state.remove(warm.key)
            else:
                self.register.change_soon(lambda later: later.remove(warm.key))

    def _start_trimmer(self) -> None:
        if self._trimmer is None:
            self._trimmer = threading.Thread(target=self._trim_loop, name="ascend-conformance-warm-trimmer",
                                             daemon=True)
            self._trimmer.start()

    def _trim_loop(self) -> None:
        while not self._stopping.wait(TRIM_POLL_SECONDS):
            if self.pools:
                try:
                    self.trim_for_others()
                except (OSError, ConfigError):
                    pass  # the register is unreachable for now; the next round tries again

    def trim_for_others(self) -> int:
        """Stop this runner's least recently used idle pools while another runner waits for room;
        returns how many pools were stopped. Waits for nothing: a busy gate or a pool that runs
        means another round."""
        with self.register.try_transaction() as state:
            if state is None or not state.excess_for_others():
                return 0
            if not self._lock.acquire(blocking=False):  # a run is in progress: its pool is not idle
                return 0
            try:
                victims = self._least_recently_used(state.excess_for_others())
                for key in victims:
                    self._drop(key, state)
                return len(victims)
            finally:
                self._lock.release()

    def shutdown(self) -> None:
        self._stopping.set()
        if self._trimmer is not None and self._trimmer is not threading.current_thread():
            self._trimmer.join()
        with self._lock:
            for key in list(self.pools):
                self._drop(key)
            try:
                self.register.release_all(time.monotonic() + self.options.lease_timeout)
            except GateTimeout:
                pass  # entries of this process are dropped by the others once it exits
            self.register.close()

    @property
    def rank_pids(self) -> list[int]:
        return [pid for pool in list(self.pools.values()) for pid in pool.pids]


def _check_shippable(fn: Callable) -> None:
    qualname = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<locals>" in qualname or "<lambda>" in qualname or not getattr(fn, "__module__", None):
        raise TypeError(f"world(n).run needs an importable module-level function, got {fn!r} "
                        f"(define it at module level so every rank can import it)")




@contextlib.contextmanager
def standalone_runner(*, rank_timeout: float = 1800.0, min_cpu_slots: int = 8, max_warm_ranks: int | None = None,
                      platform: Platform | None = None, preload: Sequence[str] = ()) -> Iterator[WorldRunner]:
    """A WorldRunner for code outside pytest (benchmark scripts, the CLI): the detected platform, the
    host-wide lease directory (so a benchmark never shares a device with a running test session), rank
    logs in a temporary directory, every rank stopped on exit.

        with standalone_runner() as runner:
            per_rank = runner.run(4, fn, args, kwargs, "bench::name")

    ``preload``: modules the rank forkserver imports before the first fork (what every rank would import).
    Raises PlatformUnavailable (one line) when the platform cannot be used.
    """
    from ascend_conformance import platform as platforms
    from ascend_conformance.harness.host_register import default_lease_dir
    from ascend_conformance.harness.pool import prestart_forkserver

    plat = platforms.require(platform or platforms.get())
    if plat.virtual_devices:
        plat.slots = max(plat.slots, min_cpu_slots)
    prestart_forkserver(preload)
    with tempfile.TemporaryDirectory(prefix="ascend-conformance-ranks-") as logs:
        runner = WorldRunner(WorldOptions(platform=plat, physical_ids=physical_device_ids(plat, plat.slots),
                                          lease_dir=default_lease_dir(plat.name), log_root=logs,
                                          rank_timeout=rank_timeout, max_warm_ranks=max_warm_ranks))
        try:
            yield runner
        finally:
            runner.shutdown()


__all__ = ["WorldRunner", "WorldOptions", "RanksSkipped", "RankFailure", "LeaseTimeout", "physical_device_ids",
           "standalone_runner"]
