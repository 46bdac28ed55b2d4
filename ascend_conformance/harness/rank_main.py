"""The life of one rank process of a warm pool (child side only; the parent side is pool.py).

Start-up, in this order because each step depends on the previous one:
  1. die with the parent (PR_SET_PDEATHSIG + a watchdog on the pytest process), so no rank outlives
     the session even when pytest is SIGKILLed;
  2. environment (visible-devices mask, HCCL ports) before anything touches the device runtime;
  3. stdout/stderr into the rank's log file; faulthandler writes fatal-signal stacks there and dumps
     every thread's stack into the stack file on SIGUSR1 (the parent's hang diagnosis);
  4. bind the device, join the world through the parent's TCPStore, report ready.
Then serve tasks until told to stop: run the test function, send back the result or the failure, clean
up what the test left behind (process groups, registered project state, allocator peaks).

Messages to the parent are tuples ``(kind, payload)``; kinds: ``ready``, ``result``, ``fatal``.
"""
from __future__ import annotations

import ctypes
import dataclasses
import faulthandler
import importlib
import importlib.util
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from ascend_conformance.harness import context, execution
from ascend_conformance.harness.execution import Failure

STACK_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class RankSpec:
    rank: int
    world_size: int
    platform: str
    env: dict
    store_host: str
    store_port: int
    store_prefix: str
    log_path: str
    stack_path: str
    parent_pid: int
    device_index: int  # leased physical id of this rank's device
    pg_timeout_s: float


@dataclasses.dataclass
class Task:
    test_id: str
    module: str
    module_file: str | None
    qualname: str
    payload: bytes  # pickle of (args, kwargs), unpickled after the module is importable
    sys_path: list


def rank_main(spec: RankSpec, conn) -> None:
    _die_with_parent(spec.parent_pid)
    os.environ.update(spec.env)
    log = _redirect_output(spec.log_path)
    faulthandler.enable(file=log, all_threads=True)
    stacks = open(spec.stack_path, "a", buffering=1)
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)
    try:
        device = _join_world(spec)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        conn.send(("fatal", Failure(spec.rank, "WorldInitError", "rank could not join the world",
                                    traceback.format_exc())))
        return
    conn.send(("ready", {"pid": os.getpid(), "device": device}))
    _serve(spec, device, conn)


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the watchdog below still covers it

    def watchdog():
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(70)
            except PermissionError:
                pass

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def _redirect_output(log_path: str):
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    return sys.stderr


def _join_world(spec: RankSpec) -> str:
    from ascend_conformance import platform as platforms

    plat = platforms.by_name(spec.platform)
    platforms.set_current(plat)
    if plat.name == "cpu":
        # Many ranks share few cores: intra-op threads would only fight each other.
        torch.set_num_threads(1)
    local_rank = spec.rank  # the visible-devices mask holds exactly this pool's devices, in rank order
    plat.bind(local_rank)
    store = dist.TCPStore(spec.store_host, spec.store_port, spec.world_size, is_master=False,
                          timeout=timedelta(seconds=120))
    store = dist.PrefixStore(spec.store_prefix, store)
    dist.init_process_group(plat.backend, store=store, rank=spec.rank, world_size=spec.world_size,
                            timeout=timedelta(seconds=spec.pg_timeout_s))
    # Build the communicator now, so the first test does not pay for (or time) lazy initialisation.
    dist.barrier()
    return plat.device(local_rank)


def _serve(spec: RankSpec, device: str, conn) -> None:
    from ascend_conformance import platform as platforms

    plat = platforms.get()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break  # parent gone
        if task is None:
            break
        print(f"===== {task.test_id} =====", flush=True)
        groups_before = execution.process_groups()
        outcome, value = _run_task(spec, device, task)
        cleanup_error = execution.clean_up(groups_before, plat)
        try:
            conn.send(("result", (outcome, value, cleanup_error)))
        except Exception:  # noqa: BLE001 - unpicklable return value
            failure = Failure(spec.rank, "PicklingError", "the return value could not be sent to the parent",
                              traceback.format_exc())
            conn.send(("result", ("raise", failure, cleanup_error)))
    if dist.is_initialized():
        dist.destroy_process_group()


def _run_task(spec: RankSpec, device: str, task: Task):
    from ascend_conformance import platform as platforms

    plat = platforms.get()
    seed, world_seed = context.seeds_for(task.test_id, spec.rank)
    rank_ctx = context.RankContext(
        rank=spec.rank, world_size=spec.world_size, local_rank=spec.rank, device=device,
        device_index=spec.device_index, platform=plat.name, backend=plat.backend, test_id=task.test_id,
        seed=seed, world_seed=world_seed, log_path=spec.log_path)
    try:
        _extend_sys_path(task.sys_path)
        fn = _resolve(task)
        args, kwargs = pickle.loads(task.payload)
    except BaseException as exc:  # noqa: BLE001 - an import error in the test module, named by rank
        return "raise", execution.failure_from(spec.rank, exc)
    return execution.execute(fn, args, kwargs, rank_ctx)


def _extend_sys_path(paths: list) -> None:
    for entry in reversed(paths):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def _resolve(task: Task):
    module = sys.modules.get(task.module)
    if module is None:
        module = _import(task.module, task.module_file)
    obj = module
    for part in task.qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _import(name: str, path: str | None):
    """Import a test module as pytest would: by name when importable, else from its file; with
    pytest's assertion rewriting for test files, so a failing `assert` in a rank explains itself."""
    if path and _is_test_file(path):
        return _import_rewritten(name, path)
    try:
        return importlib.import_module(name)
    except ImportError:
        if not path:
            raise
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


def _is_test_file(path: str) -> bool:
    base = os.path.basename(path)
    return base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py"


def _import_rewritten(name: str, path: str):
    import ast
    import types

    try:
        from _pytest.assertion.rewrite import rewrite_asserts
    except ImportError:  # pytest absent in the rank: plain import
        rewrite_asserts = None
    with open(path, "rb") as handle:
        source = handle.read()
    tree = ast.parse(source, filename=path)
    if rewrite_asserts is not None:
        rewrite_asserts(tree, source, path)
    module = types.ModuleType(name)
    module.__file__ = path
    if "." in name:
        module.__package__ = name.rpartition(".")[0]
    sys.modules[name] = module
    try:
        exec(compile(tree, path, "exec", dont_inherit=True), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module
