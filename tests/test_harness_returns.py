"""Returned values cross from the ranks as plain pickle bytes: no shared memory, no file descriptors, a
view ships only its own elements, and what the parent cannot unpickle is named by rank and type."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from ascend_conformance.harness import rank_context, wire
from ascend_conformance.harness.pool import RankFailure
from tests.events import HANG_GUARD


# --- functions the ranks run ------------------------------------------------------------------------------
def tensors_of_every_kind():
    base = torch.arange(8_000_000, dtype=torch.float32)  # 32 MB
    rank = rank_context().rank
    return {"view": base[1000:1010], "strided": base[:40:4], "scalar": torch.tensor(rank + 0.5),
            "bf16": torch.full((3,), rank, dtype=torch.bfloat16), "grad": torch.ones(2, requires_grad=True) * 2,
            "list": [torch.full((2,), rank)] * 2}


class ExplodesOnLoad:
    """Pickles in the rank; unpickling (which only ever happens in the parent) raises."""

    def __reduce__(self):
        return _refuse_to_rebuild, ("made in a rank",)


def _refuse_to_rebuild(note):
    raise ValueError(f"ExplodesOnLoad cannot be rebuilt here ({note})")


def unreadable_on_rank_1():
    return ExplodesOnLoad() if rank_context().rank == 1 else "fine"


# --- tests ------------------------------------------------------------------------------------------------
def test_tensors_arrive_as_their_own_elements_not_shared_memory(world):
    results = world(2).run(tensors_of_every_kind)
    for rank, value in enumerate(results):
        tensors = [value["view"], value["strided"], value["scalar"], value["bf16"], value["grad"], *value["list"]]
        assert not any(t.is_shared() for t in tensors), "a returned tensor lives in shared memory"
        assert value["view"].tolist() == [float(i) for i in range(1000, 1010)]
        assert value["view"].untyped_storage().nbytes() == 40, "a 10-element view must ship 10 elements"
        assert value["strided"].tolist() == [float(i) for i in range(0, 40, 4)]
        assert value["strided"].untyped_storage().nbytes() == 40
        assert value["scalar"].item() == rank + 0.5 and value["bf16"].dtype == torch.bfloat16
        assert value["grad"].tolist() == [2.0, 2.0] and not value["grad"].requires_grad
        assert value["list"][0].tolist() == [rank, rank]


def test_a_view_pickles_to_its_elements():
    view = torch.arange(1_000_000, dtype=torch.float32)[500:510]
    assert len(wire.dumps(view)) < 300
    back = wire.loads(wire.dumps(view))
    assert torch.equal(back, view) and back.untyped_storage().nbytes() == 40


def test_a_value_the_parent_cannot_unpickle_names_the_rank_and_the_type(world):
    with pytest.raises(RankFailure) as failure:
        world(2).run(unreadable_on_rank_1)
    text = str(failure.value)
    assert text.startswith(f"rank 1 of 2 returned a {__name__}.ExplodesOnLoad that the parent could not unpickle: "
                           f"builtins.ValueError: ExplodesOnLoad cannot be rebuilt here (made in a rank)"), text


# --- the real limits: a 64 MB /dev/shm and `ulimit -n 1024` ---------------------------------------------------
RANK_FUNCTIONS = '''
import torch
from ascend_conformance.harness import rank_context


def hundred_megabytes():
    return torch.full((25_000_000,), float(rank_context().rank + 1))  # 100 MB per rank


def many_small_tensors(count):
    return [torch.full((4,), float(i)) for i in range(count)]
'''

LIMITED_PARENT = '''
import os
import resource
import sys

from ascend_conformance.harness.world import WorldOptions, WorldRunner
from ascend_conformance.platform import CpuPlatform


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import limited_fns

    shm = os.statvfs("/dev/shm")
    print("shm bytes", shm.f_blocks * shm.f_frsize, "nofile", resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
    work = sys.argv[1]
    runner = WorldRunner(WorldOptions(platform=CpuPlatform(), physical_ids=(0, 1), lease_dir=work + "/leases",
                                      log_root=work + "/logs", rank_timeout=1800.0, lease_timeout=1800.0))  # HANG_GUARD
    try:
        big = runner.run(2, limited_fns.hundred_megabytes, (), {}, "limits::100MB")
        assert [t.numel() for t in big] == [25_000_000] * 2 and [t[-1].item() for t in big] == [1.0, 2.0]
        print("100 MB per rank returned", flush=True)
        del big
        many = runner.run(2, limited_fns.many_small_tensors, (1500,), {}, "limits::1500 tensors")
        assert [len(m) for m in many] == [1500, 1500] and many[1][1499].tolist() == [1499.0] * 4
        print("1500 tensors per rank returned", flush=True)
    finally:
        runner.shutdown()


if __name__ == "__main__":
    main()
'''


def _can_mount_private_shm() -> str | None:
    """None when `unshare -m` with a tmpfs /dev/shm works here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64m tmpfs /dev/shm"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a private 64 MB /dev/shm: {probe.stderr.strip() or probe.returncode}"
    return None


def test_100mb_returns_under_a_64mb_dev_shm_and_1500_tensors_under_ulimit_1024(tmp_path):
    """The conditions of Docker's default /dev/shm and a common fd limit, made for real: a private mount
    namespace with a 64 MB tmpfs on /dev/shm, and RLIMIT_NOFILE 1024, for a parent and its ranks."""
    reason = _can_mount_private_shm()
    if reason:
        pytest.skip(reason)
    (tmp_path / "limited_fns.py").write_text(RANK_FUNCTIONS)
    (tmp_path / "limited_parent.py").write_text(LIMITED_PARENT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=64m tmpfs /dev/shm && ulimit -n 1024 &&
        exec {sys.executable} {tmp_path / 'limited_parent.py'} {tmp_path}
    """)
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=HANG_GUARD)
    output = result.stdout + result.stderr
    assert "shm bytes 67108864 nofile 1024" in output, output[-3000:]
    assert result.returncode == 0, output[-5000:]
    assert "100 MB per rank returned" in output and "1500 tensors per rank returned" in output, output[-3000:]
