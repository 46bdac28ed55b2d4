"""The reference implementation runs without the test runtime: a plain ``torchrun`` script can use it.

A fresh interpreter refuses to import ``ascend_conformance.harness`` and pytest (a meta-path finder that
raises for them), imports every module of the package but the harness, the adapters to systems under test
(``sut/``) and ``__main__``, and uses the groups and a MoE
method in a one-rank gloo world, as a script launched by torchrun would; then it resets the reference state
with the modules' own functions.

And the reference knows no report format: by the package's import graph (every import statement of every
module, those inside functions too, followed through any module), no module outside the test runtime and its
tools reaches ``ascend_conformance.report`` or ``ascend_conformance.bench``.
"""
from __future__ import annotations

import ast
import collections
import json
import os
import subprocess
import sys
import textwrap
import warnings
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


# --- the reference imports no report and no benchmark -------------------------------------------------------
PACKAGE = "ascend_conformance"
REPORTING = ("ascend_conformance.report", "ascend_conformance.bench")
# The test runtime and its tools: they may import the report and the benchmarks. Everything else is the
# reference implementation or what it stands on (topology, groups, collective_checks, moe, eplb, shared_weight,
# golden, tolerance, platform, ...).
TOOLS = (*REPORTING, "ascend_conformance.harness", "ascend_conformance.sut", "ascend_conformance.acceptance",
         "ascend_conformance.commands", "ascend_conformance.matrix", "ascend_conformance.cli",
         "ascend_conformance.__main__")


def _within(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _package_modules() -> dict[str, str]:
    """module name -> source file, for every module of the package."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)
    modules = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(root)).replace(os.sep, ".")
                modules[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return modules


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (relative imports resolved)."""
    with open(path, encoding="utf-8") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (invalid escape sequences): the graph is the question here
        tree = ast.parse(handle.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(target for target in targets if target in modules)
    return found


def test_no_reference_module_imports_the_report_or_the_benchmarks():
    modules = _package_modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    reference = sorted(name for name in modules if not _within(name, TOOLS))
    assert {"ascend_conformance.topology", "ascend_conformance.groups", "ascend_conformance.moe.methods",
            "ascend_conformance.eplb.plan", "ascend_conformance.shared_weight"} <= set(reference)
    reached = {}
    for start in reference:
        path_to = {start: [start]}
        queue = collections.deque([start])
        while queue:
            current = queue.popleft()
            for target in sorted(graph[current]):
                if target not in path_to:
                    path_to[target] = path_to[current] + [target]
                    queue.append(target)
        bad = sorted(target for target in path_to if _within(target, REPORTING))
        if bad:
            reached[start] = " -> ".join(path_to[bad[0]])
    assert not reached, ("reference modules import the report or the benchmarks (move the code to "
                         "ascend_conformance/bench or benchmarks/): " + "; ".join(reached.values()))
