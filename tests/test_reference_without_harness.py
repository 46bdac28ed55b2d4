"""The reference implementation runs without the test runtime: a plain ``torchrun`` script can use it.

A fresh interpreter refuses to import ``ascend_conformance.harness`` and pytest (a meta-path finder that
raises for them), imports every module of the package but the harness, the adapters to systems under test
(``sut/``) and ``__main__``, and uses the groups and a MoE
method in a one-rank gloo world, as a script launched by torchrun would; then it resets the reference state
with the modules' own functions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from tests.events import HANG_GUARD

SCRIPT = textwrap.dedent('''
    import importlib, importlib.abc, json, os, pkgutil, sys

    BLOCKED = ("ascend_conformance.harness", "pytest", "_pytest")

    class RefuseTestRuntime(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == blocked or name.startswith(blocked + ".") for blocked in BLOCKED):
                raise ImportError(f"{name} is blocked: the reference implementation must not need it")
            return None

    sys.meta_path.insert(0, RefuseTestRuntime())

    # Not reference code: the test runtime itself (the harness and the acceptance run's pytest plugin), the
    # adapters that drive systems under test (they import those systems), and the CLI entry point (it runs
    # on import).
    NOT_REFERENCE = ("ascend_conformance.harness", "ascend_conformance.acceptance.pytest_plugin",
                     "ascend_conformance.sut", "ascend_conformance.__main__")

    import ascend_conformance
    imported = []
    for info in pkgutil.walk_packages(ascend_conformance.__path__, "ascend_conformance."):
        if any(info.name == name or info.name.startswith(name + ".") for name in NOT_REFERENCE):
            continue
        importlib.import_module(info.name)
        imported.append(info.name)

    import torch
    import torch.distributed as dist
    from ascend_conformance import groups, shared_weight
    from ascend_conformance.moe import parallel
    from ascend_conformance.moe.scenario import Scenario
    from ascend_conformance.moe.scenario_on_rank import run_on_rank
    from ascend_conformance.topology import ParallelConfig, build_layout

    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    groups.initialize_groups(build_layout(ParallelConfig(world_size=1, tp=1, pp=1, dp=1)))
    total = groups.get_tp_group().all_reduce(torch.tensor([2.0, 3.0])).tolist()
    groups.destroy_groups()

    scenario = Scenario(method="alltoall", world_size=1, experts=4, top_k=2, tokens=3, hidden=8, intermediate=4,
                        dtype="float32", seed=1)
    moe = run_on_rank(scenario)
    shared_weight.release_all()
    parallel.forget_initialised_groups()
    groups.destroy_groups()
    dist.destroy_process_group()
    print(json.dumps({"imported": imported, "all_reduce": total, "moe_ok": moe["ok"], "moe_tokens": moe["tokens"],
                      "moe_message": moe["message"], "groups_left": groups.groups_initialized(),
                      "runtime_loaded": sorted(name for name in sys.modules if name.startswith(BLOCKED))}))
''')


def test_reference_imports_and_runs_without_the_harness_or_pytest(tmp_path):
    env = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "ASCEND_CONFORMANCE_PLATFORM": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=HANG_GUARD, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    for module in ("ascend_conformance.groups", "ascend_conformance.shared_weight", "ascend_conformance.moe.parallel",
                   "ascend_conformance.moe.scenario", "ascend_conformance.golden", "ascend_conformance.eplb.redistribute"):
        assert any(name == module or name.startswith(module + ".") for name in seen["imported"]), module
    assert seen["runtime_loaded"] == []
    assert seen["all_reduce"] == [2.0, 3.0]
    assert seen["moe_ok"] and seen["moe_tokens"] == 3, seen["moe_message"]
    assert seen["groups_left"] is False
