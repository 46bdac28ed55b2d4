"""torchrun mode: pytest itself is one rank of a launched world.

The mode switches on when torchrun's own variables are present (``TORCHELASTIC_RUN_ID``,
``LOCAL_WORLD_SIZE`` or ``GROUP_RANK``, which torch.distributed.run sets for every worker) next to
``RANK`` / ``WORLD_SIZE``, or when pytest is given ``--torchrun``. ``RANK`` / ``WORLD_SIZE`` alone do not
switch it on: Kubernetes / Volcano job pods set them for every process, and such a pod runs warm pools
as usual. ``--torchrun`` is for other launchers that set ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` themselves.

This is the multi-node path: ``torchrun --nnodes 2 --nproc-per-node 8 -m pytest suites/`` runs the same
tests on every rank; ``world(n).run(fn)`` with n == WORLD_SIZE runs `fn` in place on every rank and
gathers every rank's outcome to all of them, so every rank passes or fails the test together (and
names the failing ranks). Other n skip with the reason. Only rank 0 writes reports.

A hang past the timeout dumps this rank's stack (faulthandler) and exits the process: the launcher then
tears down the world, and every rank's log holds its own stack.
"""
from __future__ import annotations

import faulthandler
import os

import torch.distributed as dist

from ascend_conformance.harness import context, execution
from ascend_conformance.harness.pool import RankFailure
from ascend_conformance.harness.world import RanksSkipped
from ascend_conformance.platform import Platform


# Set by torch.distributed.run (torchrun) for every worker, and not by job schedulers.
TORCHRUN_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "GROUP_RANK")
# What the launched world needs, whoever launched it (the env:// rendezvous of init_process_group).
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_explicit = False  # pytest --torchrun


def launched_by_torchrun(environ=os.environ) -> bool:
    """True when this process is one rank of a launched world: torchrun's own variables are set (or
    --torchrun was given) next to RANK / WORLD_SIZE."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return False
    return _explicit or any(name in environ for name in TORCHRUN_VARIABLES)


def use_launched_world(environ=os.environ) -> None:
    """--torchrun: treat this process as a rank of the launched world; ConfigError (one line) when the
    launcher's variables are missing."""
    global _explicit
    missing = [name for name in LAUNCH_VARIABLES if not environ.get(name)]
    if missing:
        from ascend_conformance.errors import ConfigError

        raise ConfigError(f"--torchrun needs {', '.join(LAUNCH_VARIABLES)} in the environment (set by the launcher); "
                          f"missing: {', '.join(missing)}")
    _explicit = True


def forget_launched_world() -> None:
    """End of a pytest session: --torchrun does not outlive it (in-process pytester sessions)."""
    global _explicit
    _explicit = False


class TorchrunRunner:
    def __init__(self, platform: Platform, rank_timeout: float):
        self.platform = platform
        self.rank_timeout = rank_timeout
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._cpu_group = None

    def _ensure_initialised(self) -> None:
        if dist.is_initialized():
            return
        self.platform.bind(self.local_rank)
        dist.init_process_group(self.platform.backend)
        # Outcomes are gathered as Python objects over gloo, whatever the device backend.
        self._cpu_group = dist.new_group(backend="gloo")

    def skip_reason(self, n: int) -> str | None:
        reason = self.platform.unavailable_reason()
        if reason:
            return f"platform {self.platform.name} unavailable: {reason}"
        if n != self.world_size:
            return f"torchrun world has {self.world_size} ranks; this test needs a world of {n}"
        return None

    @property
    def device_index(self) -> int:
        mask = os.environ.get(self.platform.visible_devices_env or "", "").strip()
        if mask:
            return int(mask.split(",")[self.local_rank])
        return self.local_rank

    def run(self, n: int, fn, args: tuple, kwargs: dict, test_id: str, timeout: float | None = None,
            pool_name: str = "") -> list:
        # pool_name separates warm pools; the launched world is the only one here, whatever the name.
        self._ensure_initialised()
        seed, world_seed = context.seeds_for(test_id, self.rank)
        rank_ctx = context.RankContext(
            rank=self.rank, world_size=self.world_size, local_rank=self.local_rank,
            device=self.platform.device(self.local_rank), device_index=self.device_index,
            platform=self.platform.name, backend=self.platform.backend, test_id=test_id, seed=seed,
            world_seed=world_seed, log_path=None)
        groups_before = execution.process_groups()
        faulthandler.dump_traceback_later(timeout or self.rank_timeout, exit=True)
        try:
            outcome, value = execution.execute(fn, args, kwargs, rank_ctx)
            outcomes = [None] * self.world_size
            dist.all_gather_object(outcomes, (outcome, value), group=self._cpu_group)
        finally:
            faulthandler.cancel_dump_traceback_later()
        cleanup_error = execution.clean_up(groups_before, self.platform)
        failures = [v for kind, v in outcomes if kind == "raise"]
        if failures and len(failures) == self.world_size and all(f.skipped for f in failures):
            raise RanksSkipped(failures[0].message)
        if failures:
            raise RankFailure("\n".join(
                f"rank {f.rank} of {self.world_size} raised {f.exc_type}: {f.message}\n"
                f"--- rank {f.rank} traceback ---\n{f.traceback.rstrip()}" for f in failures))
        if cleanup_error:
            raise RuntimeError(f"rank {self.rank} could not clean up after the test:\n{cleanup_error}")
        return [v for _, v in outcomes]

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    @property
    def rank_pids(self) -> list[int]:
        return []
