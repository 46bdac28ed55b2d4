"""The life of one rank process of a warm pool (child side only; the parent side is pool.py).

Start-up, in this order because each step depends on the previous one:
  1. lead a process group of its own with a reaper in it (rank_group.py), so whatever a test starts
     dies with the rank; die with the parent (PR_SET_PDEATHSIG + a watchdog on the pytest process), so
     no rank outlives the session even when pytest is SIGKILLed;
  2. environment (visible-devices mask, HCCL ports, gloo on loopback) before anything touches the
     device runtime;
  3. stdout/stderr into the rank's log file; faulthandler writes fatal-signal stacks there and dumps
     every thread's stack into the stack file on SIGUSR1 (the parent's hang diagnosis);
  4. bind the device, join the world through the parent's TCPStore, report ready.
Then serve tasks until told to stop: run the test function, clean up what the test left behind
(process groups, registered project state, allocator peaks), put back process-wide state it changed
(isolation.py; what cannot be put back is written to the log and makes the parent replace the pool),
then send back the result or the failure.

Messages to the parent are plain pickles (wire.py), never multiprocessing's shared-memory pickling:
``("ready", info)``, ``("fatal", Failure)`` or ``("result", outcome, payload, cleanup_error, recycle)``.
For a returned value, `payload` is ``("inline", value)`` for a scalar, else ``("frame", type name)``
and the value follows as a frame of its own, so the parent can name the rank and the type when it
cannot unpickle it.
"""
from __future__ import annotations

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

from ascend_conformance.harness import context, execution, isolation, rank_group, wire
from ascend_conformance.harness.execution import Failure

STACK_SIGNAL = signal.SIGUSR1
# Returned values sent inside the reply header: they cannot fail to unpickle, and need no second frame.
_INLINE_TYPES = (type(None), bool, int, float, str)


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
    modules: list  # [(name, file or None)]: imported first, as pytest would (callables.modules_of)
    payload: bytes  # wire pickle of (fn, args, kwargs), unpickled once the modules are imported
    sys_path: list


def rank_main(spec: RankSpec, conn) -> None:
    rank_group.lead_own_group()
    _die_with_parent(spec.parent_pid)
    os.environ.update(spec.env)
    log = _redirect_output(spec.log_path)
    stacks = open(spec.stack_path, "a", buffering=1)
    dumps = _StackDumps(log, stacks)
    dumps.install(isolation.FATAL_SIGNALS | {STACK_SIGNAL})
    try:
        device = _join_world(spec)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        _send(conn, ("fatal", Failure(spec.rank, "WorldInitError", "rank could not join the world",
                                      traceback.format_exc())))
        return
    _send(conn, ("ready", {"pid": os.getpid(), "device": device}))
    _serve(spec, device, conn, isolation.StateGuard(rearm=dumps.install, watch_imports=True))


class _StackDumps:
    """faulthandler's two jobs in a rank: fatal-signal stacks into the log, every thread's stack into
    the stack file on SIGUSR1. `install` (re)arms them for the given signals, e.g. after a test
    replaced the SIGUSR1 handler and isolation.py put Python's record of it back."""

    def __init__(self, log, stacks):
        self.log, self.stacks = log, stacks

    def install(self, signals) -> None:
        if signals & isolation.FATAL_SIGNALS or not faulthandler.is_enabled():
            faulthandler.disable()  # enable() on an enabled handler would not reinstall it
            faulthandler.enable(file=self.log, all_threads=True)
        if STACK_SIGNAL in signals:
            faulthandler.unregister(STACK_SIGNAL)
            faulthandler.register(STACK_SIGNAL, file=self.stacks, all_threads=True)


def _send(conn, message) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=wire.PROTOCOL))


def _die_with_parent(parent_pid: int) -> None:
    rank_group.set_parent_death_signal(signal.SIGKILL)  # off Linux the watchdog below still covers it

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
    if plat.virtual_devices:
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


def _serve(spec: RankSpec, device: str, conn, guard: isolation.StateGuard) -> None:
    from ascend_conformance import platform as platforms

    plat = platforms.get()
    while True:
        try:
            task = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break  # parent gone
        if task is None:
            break
        print(f"===== {task.test_id} =====", flush=True)
        groups_before = execution.process_groups()
        outcome, value = _run_task(spec, device, task, guard)
        # Process-wide state first, so the clean-up hooks below run with the environment, default
        # device, signal handlers ... every test starts with.
        state = guard.after_run()
        if state.restored:
            print(f"[harness] {task.test_id} changed process-wide state, put back: {', '.join(state.restored)}",
                  flush=True)
        recycle = "; ".join(state.unrestorable) or None
        if recycle:
            print(f"[harness] {task.test_id} left state that cannot be put back, the pool will be replaced: "
                  f"{recycle}", flush=True)
        cleanup_error = execution.clean_up(groups_before, plat)
        if cleanup_error:
            print(f"[harness] clean-up after {task.test_id} failed; the pool will be replaced:\n{cleanup_error}",
                  flush=True)
        _reply(conn, spec.rank, outcome, value, cleanup_error, recycle)
    if dist.is_initialized():
        dist.destroy_process_group()


def _reply(conn, rank: int, outcome: str, value, cleanup_error, recycle) -> None:
    frame = None
    if outcome == "ok":
        if type(value) in _INLINE_TYPES:
            payload = ("inline", value)
        else:
            try:
                frame = wire.dumps(value)
                payload = ("frame", wire.type_name(value))
            except Exception as exc:  # noqa: BLE001 - e.g. a lambda in the result: the rank's failure
                outcome, payload = "raise", Failure(
                    rank, "PicklingError", f"the return value could not be sent to the parent: a "
                    f"{wire.type_name(value)} that cannot be pickled ({type(exc).__name__}: {exc}); return "
                    f"tensors, numbers, strings and containers of them", traceback.format_exc())
    else:
        payload = value
    _send(conn, ("result", outcome, payload, cleanup_error, recycle))
    if frame is not None:
        conn.send_bytes(frame)


def _run_task(spec: RankSpec, device: str, task: Task, guard: isolation.StateGuard):
    from ascend_conformance import platform as platforms

    plat = platforms.get()
    seed, world_seed = context.seeds_for(task.test_id, spec.rank)
    rank_ctx = context.RankContext(
        rank=spec.rank, world_size=spec.world_size, local_rank=spec.rank, device=device,
        device_index=spec.device_index, platform=plat.name, backend=plat.backend, test_id=task.test_id,
        seed=seed, world_seed=world_seed, log_path=spec.log_path)
    try:
        _extend_sys_path(task.sys_path)
        for name, path in task.modules:
            if name not in sys.modules:
                _import(name, path)
        fn, args, kwargs = wire.loads(task.payload)
    except BaseException as exc:  # noqa: BLE001 - an import error in the test module, named by rank
        return "raise", execution.failure_from(spec.rank, exc)
    guard.before_run()
    return execution.execute(fn, args, kwargs, rank_ctx)


def _extend_sys_path(paths: list) -> None:
    for entry in reversed(paths):
        if entry not in sys.path:
            sys.path.insert(0, entry)


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
