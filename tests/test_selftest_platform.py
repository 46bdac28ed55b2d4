"""`make test` on an accelerator host: the self-tests (tests/) run on cpu whatever the host has, while
the conformance tests of the same session keep the detected platform (tests/conftest.py).

An "NPU host" here is a stand-in torch_npu that imports and reports 8 devices, so detection picks npu;
nothing ever runs on it. One pytest session runs two self-tests that assume cpu — a gloo world in the
session (cpu device names) and a pytest subprocess started without --platform — and then a test outside
tests/ that checks the session's platform is still npu.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from ascend_conformance import platform as platforms
from tests.events import HANG_GUARD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = HANG_GUARD

STAND_IN_TORCH_NPU = '''
import types

import torch

torch.utils.rename_privateuse1_backend("npu")  # as the real torch_npu does
torch.npu = types.SimpleNamespace(device_count=lambda: 8, get_device_name=lambda index: "stand-in NPU")
__version__ = "stand-in"
'''

CONFORMANCE_LIKE_TEST = '''
from ascend_conformance import platform as platforms


def test_the_session_keeps_the_detected_platform(world_runner):
    assert platforms.get().name == "npu"
    assert world_runner.options.platform.name == "npu"
    assert world_runner.options.physical_ids == tuple(range(8))
'''


def test_self_tests_pin_cpu_on_an_npu_host_and_the_rest_keeps_npu(tmp_path):
    stand_in = tmp_path / "site" / "torch_npu"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(textwrap.dedent(STAND_IN_TORCH_NPU))
    outside = tmp_path / "conformance"
    outside.mkdir()
    (outside / "test_detected.py").write_text(CONFORMANCE_LIKE_TEST)

    env = {k: v for k, v in os.environ.items()
           if k not in (platforms.PLATFORM_ENV, "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS", "RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    check = subprocess.run([sys.executable, "-c", "from ascend_conformance import platform as p; print(p.detect().name)"],
                           capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert check.stdout.strip() == "npu", f"the stand-in must make this look like an NPU host: {check.stderr}"

    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rA",
               "tests/test_harness_faults.py::test_rank_context_and_seeds",
               "tests/test_harness_faults.py::test_plugin_loads_by_name_outside_the_checkout",
               str(outside / "test_detected.py"),
               "--results-dir=", f"--lease-dir={tmp_path / 'npu-leases'}", f"--basetemp={tmp_path / 'basetemp'}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    passed = {line.rsplit("::", 1)[-1] for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    assert passed == {"test_rank_context_and_seeds", "test_plugin_loads_by_name_outside_the_checkout",
                      "test_the_session_keeps_the_detected_platform"}, output
