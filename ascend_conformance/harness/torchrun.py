"""torchrun mode: pytest itself is one rank of a launched world (RANK / WORLD_SIZE set).

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


def launched_by_torchrun(environ=os.environ) -> bool:
    return "RANK" in environ and "WORLD_SIZE" in environ


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

    def run(self, n: int, fn, args: tuple, kwargs: dict, test_id: str, timeout: float | None = None) -> list:
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
