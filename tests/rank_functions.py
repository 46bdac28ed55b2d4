"""Functions the harness self-tests ship to ranks (module level, so every rank can import them)."""
import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from ascend_conformance.harness import rank_context, register_cleanup


def describe_rank():
    ctx = rank_context()
    return {"rank": ctx.rank, "world_size": ctx.world_size, "device": ctx.device,
            "device_index": ctx.device_index, "seed": ctx.seed, "world_seed": ctx.world_seed,
            "pid": os.getpid(), "test_id": ctx.test_id, "randn": torch.randn(3)}


def all_reduce_rank_numbers():
    t = torch.tensor([rank_context().rank + 1], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t)


def raise_on(rank):
    if rank_context().rank == rank:
        raise ValueError(f"deliberate failure on rank {rank}")
    dist.barrier()  # the others block here, waiting for the failed rank


def exit_on(rank, code, pid_dir=None):
    if pid_dir:  # lets the test identify exactly this pool's processes
        with open(os.path.join(pid_dir, f"rank{rank_context().rank}.pid"), "w") as handle:
            handle.write(str(os.getpid()))
        dist.barrier()
    if rank_context().rank == rank:
        os._exit(code)
    dist.barrier()


def signal_on(rank, signum):
    if rank_context().rank == rank:
        os.kill(os.getpid(), signum)
        time.sleep(30)
    dist.barrier()


def sleep_forever_on(rank):
    if rank_context().rank == rank:
        threading.Event().wait()  # only the harness's timeout ends this run, however loaded the box
    dist.barrier()


def skip_everywhere():
    import pytest

    pytest.skip("backend lacks the op under test")


def skip_on_rank0_only():
    import pytest

    if rank_context().rank == 0:
        pytest.skip("only rank 0 skips")


def print_marker(text):
    print(text)
    return rank_context().log_path


def leave_state_behind():
    """Create a subgroup and module state; the harness must clean both before the next test."""
    group = dist.new_group(list(range(dist.get_world_size())))
    _LEFT_BEHIND.append(group)
    return len(_LEFT_BEHIND)


def count_state():
    from ascend_conformance.harness.execution import process_groups

    return len(process_groups()), len(_LEFT_BEHIND)


_LEFT_BEHIND = []
register_cleanup(_LEFT_BEHIND.clear)


def return_unpicklable():
    return lambda: None


def hold_memory_then_sigkill(rank, megabytes, seconds):
    """`rank` holds `megabytes` of touched memory for `seconds`, then dies of SIGKILL as an OOM kill would."""
    if rank_context().rank == rank:
        block = torch.ones(megabytes * (1 << 20) // 4)
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
        del block
    dist.barrier()


def count_oom_kill_then_sigkill(rank, counter_file):
    """`rank` plays the kernel's OOM killer: bumps the oom_kill counter in `counter_file`, then dies of SIGKILL."""
    if rank_context().rank == rank:
        with open(counter_file, "w") as handle:
            handle.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
