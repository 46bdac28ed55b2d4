"""Running one test function inside a rank and cleaning up after it.

Shared by pool ranks (rank_main.py) and torchrun mode (torchrun.py), so both report failures and
leave ranks clean in exactly the same way.
"""
from __future__ import annotations

import dataclasses
import sys
import traceback

import torch
import torch.distributed as dist

from ascend_conformance.harness import context


@dataclasses.dataclass
class Failure:
    rank: int
    exc_type: str
    message: str
    traceback: str
    skipped: bool = False


def execute(fn, args: tuple, kwargs: dict, rank_ctx: context.RankContext):
    """("ok", value with tensors on the CPU) or ("raise", Failure); never raises."""
    context.set_rank_context(rank_ctx)
    seed_generators(rank_ctx.seed, rank_ctx.device)
    try:
        return "ok", to_cpu(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, named by rank
        return "raise", failure_from(rank_ctx.rank, exc)
    finally:
        context.set_rank_context(None)


def seed_generators(seed: int, device: str) -> None:
    """Seed the CPU generator and the rank's own device's, as ``torch.manual_seed`` would for this rank.

    Not ``torch.manual_seed`` itself: it also registers a lazy seeding call for every other device type
    torch knows (cuda, xpu, mtia, ...), each formatting the caller's stack — 0.9 ms per call measured
    on the 2-core development box, more than the rest of a warm no-op run in the rank.
    """
    torch.default_generator.manual_seed(seed)
    device_type = device.split(":", 1)[0]
    if device_type != "cpu":
        getattr(torch, device_type).manual_seed(seed)  # torch.npu / torch.cuda: the current device


def failure_from(rank: int, exc: BaseException) -> Failure:
    lines = str(exc).strip().splitlines()
    return Failure(rank, f"{type(exc).__module__}.{type(exc).__qualname__}", lines[0] if lines else "",
                   traceback.format_exc(), skipped=_is_skip(exc))


def process_groups() -> set:
    """Process groups other than the default one that exist now."""
    if not dist.is_initialized():
        return set()
    default = dist.distributed_c10d._get_default_group()
    return {pg for pg in dist.distributed_c10d._world.pg_map if pg is not default}


def clean_up(groups_before: set, plat) -> str | None:
    """Undo what a test left in the rank; a message when it cannot (the pool is then replaced)."""
    try:
        # Project hooks first: they destroy the groups they own in their own way (e.g. groups.py's
        # coordinators); then whatever the test created directly.
        context.run_cleanups()
        for group in process_groups() - groups_before:
            dist.destroy_process_group(group)
        torch.set_default_dtype(torch.float32)
        if not dist.is_initialized():
            return "the test destroyed the default process group"
        plat.release_cached_memory()
        plat.reset_peak_memory()
        return None
    except BaseException:  # noqa: BLE001
        return traceback.format_exc()


def to_cpu(value):
    """Results cross to a parent that may not have the device runtime: move tensors to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if type(value) in (list, tuple):
        return type(value)(to_cpu(v) for v in value)
    if type(value) is dict:
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def _is_skip(exc: BaseException) -> bool:
    pytest = sys.modules.get("pytest")
    return pytest is not None and isinstance(exc, pytest.skip.Exception)
