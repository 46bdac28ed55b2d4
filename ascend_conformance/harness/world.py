"""Worlds of n ranks on demand: a device lease per run, a warm pool per (n, device set).

``WorldRunner.run(n, fn, ...)``:
  1. lease n devices, preferring the device set of a warm n-rank pool (so the pool is reused);
  2. reuse that pool, or start one (evicting least-recently-used idle pools beyond ``max_warm_ranks``);
  3. run, release the lease, and drop the pool if the run left it unhealthy.

Idle pools keep no lease: another xdist worker may run on the same devices meanwhile. On accelerator
hosts an idle rank still holds its device context; ``--max-warm-ranks`` bounds how many do.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Callable, Iterator

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness.leases import LeaseManager, LeaseTimeout
from ascend_conformance.harness.pool import PoolConfig, RankFailure, RankPool, _SkipAll
from ascend_conformance.platform import PORT_BLOCKS, Platform

DEVICES_PER_WORKER_BLOCK = 32


class RanksSkipped(Exception):
    """Every rank skipped the test itself (e.g. pytest.skip inside the rank function)."""


@dataclasses.dataclass
class WorldOptions:
    platform: Platform
    physical_ids: tuple  # device slots this process may lease (after any outer visible-devices mask)
    lease_dir: str
    log_root: str
    rank_timeout: float = 300.0
    lease_timeout: float = 900.0
    max_warm_ranks: int = 16
    port_base: int = 30000
    worker_index: int = 0  # xdist worker number: keeps HCCL port blocks of concurrent workers apart
    failure_grace: float = 3.0


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
        self.leases = LeaseManager(options.lease_dir, options.physical_ids)
        self.pools: dict = {}
        self._pool_count = 0

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
            timeout: float | None = None) -> list:
        _check_shippable(fn)
        preferred = [key[1] for key, pool in self._pools_by_recency() if key[0] == n and pool.healthy]
        lease = self.leases.acquire(n, self.options.lease_timeout, preferred, who=f"{test_id}: ")
        try:
            pool = self._pool_for(n, lease.devices)
            try:
                return pool.run(fn, args, kwargs, test_id, timeout or self.options.rank_timeout)
            except _SkipAll as skip:
                raise RanksSkipped(skip.reason) from None
            finally:
                if not pool.healthy:
                    self.pools.pop(pool.key, None)
        finally:
            lease.release()

    def _pools_by_recency(self):
        return sorted(self.pools.items(), key=lambda item: -item[1].last_used)

    def _pool_for(self, n: int, devices: tuple) -> RankPool:
        pool = self.pools.get((n, devices))
        if pool is not None and pool.healthy:
            return pool
        self._evict_for(n)
        self._pool_count += 1
        plat = self.options.platform
        env = self.rank_environment(devices)
        log_dir = os.path.join(self.options.log_root,
                               f"pool{self._pool_count}-n{n}-devices{'_'.join(str(d) for d in devices)}")
        pool = RankPool(n, PoolConfig(platform=plat.name, devices=devices, env=env, log_dir=log_dir,
                                      failure_grace=self.options.failure_grace)).start()
        self.pools[pool.key] = pool
        return pool

    def rank_environment(self, devices: tuple) -> dict:
        """Variables every rank of a pool on `devices` gets before touching the device runtime.

        The visible-devices mask lists exactly the leased physical ids, so rank r binds local device r
        (e.g. lease (4, 5, 6, 7): rank 3 sees ``ASCEND_RT_VISIBLE_DEVICES=4,5,6,7`` and uses npu:3).
        HCCL ports come in a block per (xdist worker, first leased device): leases are exclusive, so
        blocks of concurrent worlds on one host are disjoint.
        """
        plat = self.options.platform
        env = {}
        if plat.visible_devices_env:
            env[plat.visible_devices_env] = ",".join(str(d) for d in devices)
        block = self.options.worker_index * DEVICES_PER_WORKER_BLOCK + min(devices)
        if min(devices) >= DEVICES_PER_WORKER_BLOCK or block >= PORT_BLOCKS:
            raise ConfigError(f"no HCCL port block for xdist worker {self.options.worker_index} on device "
                              f"{min(devices)}: blocks cover {PORT_BLOCKS // DEVICES_PER_WORKER_BLOCK} workers x "
                              f"{DEVICES_PER_WORKER_BLOCK} devices")
        env.update(plat.rank_environment(list(devices), block, self.options.port_base))
        return env

    def _evict_for(self, n: int) -> None:
        while self.pools and sum(p.n for p in self.pools.values()) + n > self.options.max_warm_ranks:
            key, oldest = min(self.pools.items(), key=lambda item: item[1].last_used)
            oldest.shutdown()
            del self.pools[key]

    def shutdown(self) -> None:
        for pool in list(self.pools.values()):
            pool.shutdown()
        self.pools.clear()

    @property
    def rank_pids(self) -> list[int]:
        return [pid for pool in self.pools.values() for pid in pool.pids]


def _check_shippable(fn: Callable) -> None:
    qualname = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<locals>" in qualname or "<lambda>" in qualname or not getattr(fn, "__module__", None):
        raise TypeError(f"world(n).run needs an importable module-level function, got {fn!r} "
                        f"(define it at module level so every rank can import it)")




@contextlib.contextmanager
def standalone_runner(*, rank_timeout: float = 1800.0, min_cpu_slots: int = 8, max_warm_ranks: int = 16,
                      platform: Platform | None = None) -> Iterator[WorldRunner]:
    """A WorldRunner for code outside pytest (benchmark scripts, the CLI): the detected platform, the
    host-wide lease directory (so a benchmark never shares a device with a running test session), rank
    logs in a temporary directory, every rank stopped on exit.

        with standalone_runner() as runner:
            per_rank = runner.run(4, fn, args, kwargs, "bench::name")

    Raises PlatformUnavailable (one line) when the platform cannot be used.
    """
    from ascend_conformance import platform as platforms
    from ascend_conformance.harness.leases import default_lease_dir
    from ascend_conformance.harness.pool import prestart_forkserver

    plat = platforms.require(platform or platforms.get())
    if plat.name == "cpu":
        plat.slots = max(plat.slots, min_cpu_slots)
    prestart_forkserver()
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
