"""The rank forkserver of a session with systems under test preloads their heavy dependencies, and only
those: no module of a system under test (each rank imports vLLM / vllm-ascend itself, in its test's
environment) and no thread (the server forks; a thread holding a lock at fork time deadlocks the rank).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from tests.events import HANG_GUARD

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch, torch.distributed
    before = len(os.listdir("/proc/self/task"))
    from ascend_conformance.sut import dependency_preload
    print(json.dumps({"threads_before": before, "threads_after": len(os.listdir("/proc/self/task")),
                      "failed": dependency_preload.FAILED,
                      "sut_modules": sorted(m for m in sys.modules
                                            if m.split(".")[0] in ("vllm", "vllm_ascend", "torch_npu"))}))
''')


def test_preload_starts_no_thread_and_imports_no_system_under_test():
    env = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["sut_modules"] == []
    assert seen["threads_after"] == seen["threads_before"], seen


def test_a_module_that_fails_to_import_is_recorded_not_raised():
    from ascend_conformance.sut.dependency_preload import preload

    failed = preload(("json", "ascend_conformance_no_such_module"))
    assert list(failed) == ["ascend_conformance_no_such_module"]
    assert failed["ascend_conformance_no_such_module"].startswith("ModuleNotFoundError")
