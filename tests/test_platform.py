"""The platform layer: detection, overrides, the torch_npu guard, timers and CPU memory measurement."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ascend_conformance import platform as platforms
from ascend_conformance.errors import ConfigError
from tests.events import HANG_GUARD

pytest_plugins = ["pytester"]


def run_cli(*args, env_extra=None, pythonpath=None):
    env = dict(os.environ)
    env.pop(platforms.PLATFORM_ENV, None)
    env.update(env_extra or {})
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "ascend_conformance", *args], capture_output=True, text=True,
                          env=env, timeout=HANG_GUARD)


@pytest.fixture
def broken_torch_npu(tmp_path):
    """A torch_npu that fails to import the way the real one does on a host without CANN."""
    package = tmp_path / "torch_npu"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        raise OSError("libhccl.so: cannot open shared object file: No such file or directory")
    """))
    return str(tmp_path)


def test_cpu_is_detected_without_accelerators(monkeypatch):
    monkeypatch.delenv(platforms.PLATFORM_ENV, raising=False)  # tests/conftest.py pins cpu: detect for real
    if platforms.NpuPlatform().unavailable_reason() is None or torch.cuda.is_available():
        pytest.skip("this host has an accelerator")
    plat = platforms.detect()
    assert (plat.name, plat.backend, plat.visible_devices_env) == ("cpu", "gloo", None)


def test_backend_and_visible_devices_variable_per_platform():
    assert (platforms.NpuPlatform.backend, platforms.NpuPlatform.visible_devices_env) == ("hccl", "ASCEND_RT_VISIBLE_DEVICES")
    assert (platforms.CudaPlatform.backend, platforms.CudaPlatform.visible_devices_env) == ("nccl", "CUDA_VISIBLE_DEVICES")


def test_override_selects_platform(monkeypatch):
    monkeypatch.setenv(platforms.PLATFORM_ENV, "npu")
    assert platforms.detect().name == "npu"
    monkeypatch.setenv(platforms.PLATFORM_ENV, "tpu")
    with pytest.raises(ConfigError, match="unknown platform 'tpu'"):
        platforms.detect()


def test_broken_torch_npu_becomes_a_reason_not_a_crash(broken_torch_npu):
    result = run_cli("info", "--json", pythonpath=broken_torch_npu)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["platform"] == "cpu"
    assert info["npu"] == ("torch_npu not importable: libhccl.so: cannot open shared object file: "
                           "No such file or directory")


def test_forced_npu_platform_skips_multi_rank_tests_with_the_reason(pytester, monkeypatch, broken_torch_npu):
    pytester.makepyfile(test_needs_npu="""
        def noop():
            return None
        def test_world(world):
            world(2).run(noop)
    """)
    monkeypatch.setenv("PYTHONPATH", broken_torch_npu + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = pytester.runpytest_subprocess("-rs", "--platform", "npu")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*platform npu unavailable: torch_npu not importable: libhccl.so*"])


def test_hccl_port_blocks_never_meet():
    """Every port block (one per live warm pool of the host, tests/test_warm_ranks.py) gets ports no
    other one gets, in all three variables."""
    owner = {}
    for block in range(platforms.PORT_BLOCKS):
        env = platforms.NpuPlatform().rank_environment([0], block, 30000)
        ports = {int(env["HCCL_IF_BASE_PORT"]) + i for i in range(16)}  # HCCL uses 16 from the base
        for name in ("HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE"):
            lo, hi = map(int, env[name].split("-"))
            ports |= set(range(lo, hi + 1))
        for port in ports:
            assert port not in owner, f"port {port} of block {block} also in block {owner[port]}"
            owner[port] = block
    assert max(owner) < 30000 + platforms.PORT_SPAN <= 65536


def test_cpu_peak_memory_is_measured_from_allocations():
    plat = platforms.CpuPlatform()
    with plat.measure_peak() as peak:
        a = torch.empty(1_000_000, dtype=torch.uint8)
        b = torch.empty(500_000, dtype=torch.uint8)
        del a
        c = torch.empty(2_000_000, dtype=torch.uint8)
        del b, c
    # live bytes went 1.0 MB -> 1.5 MB -> 0.5 MB -> 2.5 MB: the peak is 2.5 MB
    assert peak.peak_bytes == 2_500_000
    assert "profiler" in peak.method


def test_wall_timer_measures_elapsed_time():
    import time

    timer = platforms.CpuPlatform().timer()
    outer = time.perf_counter()
    timer.start()
    time.sleep(0.05)
    measured = timer.stop()
    around = time.perf_counter() - outer
    # At least the sleep, at most the span around start and stop, however long a loaded box made that.
    assert 0.05 <= measured <= around, (measured, around)


def test_info_command_prints_versions():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert f"torch         {torch.__version__}" in result.stdout or torch.__version__ in result.stdout
    for key in ("platform", "backend", "torch_npu", "cann", "driver", "vllm"):
        assert key in result.stdout


def test_outer_visible_devices_mask_is_respected(monkeypatch, tmp_path):
    from ascend_conformance.harness.world import WorldOptions, WorldRunner, physical_device_ids

    npu = platforms.NpuPlatform()
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "2,3,5,7")
    ids = physical_device_ids(npu, cpu_slots=8)
    assert ids == (2, 3, 5, 7)
    runner = WorldRunner(WorldOptions(platform=npu, physical_ids=ids, lease_dir=str(tmp_path / "leases"),
                                      log_root=str(tmp_path / "logs")))
    # leases come from the mask only, and ranks see exactly their leased devices
    assert runner.register.candidate_sets(2) == [(2, 3), (5, 7)]
    with runner.register.acquire(2, timeout=HANG_GUARD, preferred=[(5, 7)]) as lease:
        assert lease.devices == (5, 7)
        env = runner.rank_environment(lease.devices, port_block=3)
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "5,7"


def test_npu_platform_imports_torch_npu_before_using_the_device(tmp_path):
    """Ranks never import torch_npu themselves (autoload is off): binding must import it."""
    package = tmp_path / "torch_npu"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import types, torch
        torch.utils.rename_privateuse1_backend("npu")  # as the real torch_npu does
        calls = []
        torch.npu = types.SimpleNamespace(set_device=calls.append, device_count=lambda: 2,
                                          synchronize=lambda: calls.append("sync"))
        __version__ = "stand-in"
    """))
    code = textwrap.dedent("""
        import sys
        from ascend_conformance.platform import NpuPlatform
        assert "torch_npu" not in sys.modules
        plat = NpuPlatform()
        device = plat.bind(1)
        plat.synchronize()
        import torch_npu
        print(device, torch_npu.calls, plat.device_count())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["npu:1", "[1,", "'sync']", "2"]
