"""Process-wide state a test leaves in a warm rank: put back after every run, or the pool is recycled.

A warm rank runs many tests, so anything one test changes for the whole process would reach the next:
environment variables, the working directory, torch's global modes (grad, deterministic algorithms,
anomaly detection, intra-op threads, default dtype and device, float32 matmul precision), sys.path,
warnings filters, logging levels and root handlers, signal handlers, the signal mask, a pending alarm,
sys.stdout / sys.stderr, the recursion limit. ``StateGuard`` compares each against a baseline after
every run and restores what changed, e.g.

    test A: os.environ["HCCL_DEBUG"] = "1"; torch.set_grad_enabled(False); signal.signal(SIGUSR1, h)
    after A: HCCL_DEBUG unset again, grad mode on, SIGUSR1 dumps stacks again (faulthandler re-armed)
    test B starts exactly as A did.

What cannot be put back makes the run report ``unrestorable`` reasons and the pool is replaced: a
thread the test started that is still running, a handler installed outside Python (getsignal() is
None) that the test replaced, a working directory that no longer exists, a torch function / dispatch
mode the test entered and never left.

The baseline is the state just before the test function runs, after the harness imported the test's
modules: what a module sets when it is imported belongs to it, as it would in a fresh process. That
holds for modules a test imports lazily inside a rank function too (``from vllm... import`` in a SUT
adapter): with ``watch_imports`` the guard wraps the import system's module loader, and what a first
import changes (vllm's env_override.py sets TORCHINDUCTOR_COMPILE_THREADS, say; a warnings filter, a
signal handler, a helper thread) joins the baseline instead of being put back after the test. Since
every run ends restored, the baseline is re-taken only when it can differ — new modules were imported
or sys.path changed — so a warm run pays for comparisons only: a handful of C calls, one dict
comparison for the environment and a few cheap syscalls (getcwd, the signal mask, the alarm timer).

Logging levels are compared only when some ``setLevel`` / ``logging.disable`` ran since the baseline:
both clear every logger's level cache (``Manager._clear_cache``), which removes a marker this module
keeps in the root logger's cache, so the common case costs one dict lookup instead of a walk over the
hundred-odd loggers torch creates.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Callable

import torch

try:
    from _signal import getsignal as _getsignal  # without signal.py's enum conversion: ~10x faster
except ImportError:  # pragma: no cover - other interpreters
    _getsignal = signal.getsignal

# Signals a test plausibly touches, and those the harness itself relies on: SIGUSR1 (stack dumps for
# hang reports) and the fatal ones faulthandler reports into the rank log.
STACK_SIGNALS = frozenset({signal.SIGUSR1})
FATAL_SIGNALS = frozenset(getattr(signal, name) for name in ("SIGSEGV", "SIGFPE", "SIGABRT", "SIGBUS", "SIGILL")
                          if hasattr(signal, name))
WATCHED_SIGNALS = tuple(sorted(STACK_SIGNALS | FATAL_SIGNALS | {
    getattr(signal, name) for name in ("SIGUSR2", "SIGINT", "SIGTERM", "SIGHUP", "SIGALRM", "SIGCHLD", "SIGPIPE",
                                       "SIGQUIT") if hasattr(signal, name)}))
THREAD_GRACE_SECONDS = 0.2  # a thread told to stop but not joined may still be on its way out
_LOG_MARK = object()  # lives in logging.root._cache until some setLevel / logging.disable clears it


@dataclasses.dataclass
class Outcome:
    restored: list  # short names of what was put back, e.g. "env HCCL_DEBUG", "grad mode"
    unrestorable: list  # reasons the process cannot be reused

    def __bool__(self) -> bool:
        return bool(self.restored or self.unrestorable)


def _environ():
    # The encoded mapping behind os.environ: comparing it is a C dict comparison; os.environ.copy()
    # decodes every entry (~0.1 ms).
    return getattr(os.environ, "_data", os.environ)


def _torch_modes() -> tuple:
    return (torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.is_anomaly_enabled(),
            torch.is_anomaly_check_nan_enabled(), torch.get_num_threads(), torch.get_default_dtype(),
            torch.get_float32_matmul_precision(), _default_device())


def _default_device():
    context = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)  # set_default_device's
    return None if context is None else context.device


def _mode_stacks() -> tuple:
    return torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack()


def _signals() -> tuple:
    return tuple(_getsignal(s) for s in WATCHED_SIGNALS)


def _signal_mask():
    return signal.pthread_sigmask(signal.SIG_BLOCK, ())


def _logging_quiet() -> bool:
    """True when no setLevel / logging.disable ran since the mark was set."""
    cache = getattr(logging.root, "_cache", None)
    return cache is not None and _LOG_MARK in cache


def _mark_logging() -> None:
    cache = getattr(logging.root, "_cache", None)
    if cache is not None:
        cache[_LOG_MARK] = True


def _logger_states() -> dict:
    states = {"": (logging.root.level, logging.root.disabled)}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            states[name] = (logger.level, logger.disabled)
    return states


@dataclasses.dataclass
class _Baseline:
    environ: dict
    cwd: str
    torch_modes: tuple
    mode_stacks: tuple
    sys_path: list
    sys_path_object: list
    warning_filters: list
    warning_filters_object: list
    showwarning: object
    root_handlers: list
    logging_disable: int
    logger_states: dict
    threads: set
    signals: tuple
    signal_mask: set
    stdio: tuple
    recursion_limit: int
    modules: int

    @classmethod
    def take(cls) -> "_Baseline":
        _mark_logging()
        return cls(environ=dict(_environ()), cwd=os.getcwd(), torch_modes=_torch_modes(), mode_stacks=_mode_stacks(),
                   sys_path=list(sys.path), sys_path_object=sys.path, warning_filters=list(warnings.filters),
                   warning_filters_object=warnings.filters, showwarning=warnings.showwarning,
                   root_handlers=list(logging.root.handlers), logging_disable=logging.root.manager.disable,
                   logger_states=_logger_states(), threads=set(threading.enumerate()), signals=_signals(),
                   signal_mask=_signal_mask(), stdio=(sys.stdout, sys.stderr),
                   recursion_limit=sys.getrecursionlimit(), modules=len(sys.modules))


@dataclasses.dataclass
class _ImportStart:
    """What an import may change, taken when the loader starts executing a new module (~10 us)."""

    environ: dict
    torch_modes: tuple
    sys_path: list
    warning_filters: list
    root_handlers: list
    signals: tuple
    threads: set

    @classmethod
    def take(cls) -> "_ImportStart":
        return cls(dict(_environ()), _torch_modes(), list(sys.path), list(warnings.filters),
                   list(logging.root.handlers), _signals(), set(threading.enumerate()))


def watch_module_loads(on_import: Callable[[_ImportStart], None]) -> Callable[[], None]:
    """Call ``on_import(state_at_start)`` each time a module is loaded for the first time, once its
    code has run; returns the function that stops watching.

    It wraps ``_load_unlocked`` of the import system (importlib._bootstrap), which executes every newly
    imported module whether through an import statement or importlib.import_module; modules already in
    sys.modules never reach it, so a warm run does not pay for it. Where an interpreter lacks it, nothing
    is watched (import-time settings of lazily imported modules are then put back like a test's).
    """
    bootstrap = sys.modules.get("_frozen_importlib")
    original = getattr(bootstrap, "_load_unlocked", None)
    if original is None:
        return lambda: None

    def load_unlocked(spec):
        start = _ImportStart.take()
        try:
            return original(spec)
        finally:
            on_import(start)

    bootstrap._load_unlocked = load_unlocked

    def stop() -> None:
        bootstrap._load_unlocked = original

    return stop


class StateGuard:
    """``before_run()`` just before the test function, ``after_run()`` after it (before the harness's
    own clean-up); `rearm(signals)` re-installs the harness's handlers (faulthandler) for signals whose
    Python-level handler was put back. With `watch_imports`, what a module changes when a test imports
    it for the first time is kept (see the module docstring); ``close()`` stops watching."""

    def __init__(self, rearm: Callable[[set], None], watch_imports: bool = False):
        self._rearm = rearm
        self._baseline: _Baseline | None = None
        self.close = watch_module_loads(self._absorb_import) if watch_imports else (lambda: None)

    def before_run(self) -> None:
        base = self._baseline
        if base is None or len(sys.modules) != base.modules or sys.path != base.sys_path:
            self._baseline = _Baseline.take()

    def after_run(self) -> Outcome:
        base = self._baseline
        outcome = Outcome([], [])
        if base is None:
            return outcome
        faulthandler.cancel_dump_traceback_later()  # a pending dump_traceback_later(exit=True) would kill us
        if _environ() != base.environ:
            self._restore_environ(base, outcome)
        if os.getcwd() != base.cwd:  # noqa: PTH109 - one syscall
            try:
                os.chdir(base.cwd)
                outcome.restored.append("working directory")
            except OSError as exc:
                outcome.unrestorable.append(f"the working directory {base.cwd} cannot be entered again ({exc})")
        if _torch_modes() != base.torch_modes:
            self._restore_torch(base, outcome)
        if _mode_stacks() != base.mode_stacks:
            outcome.unrestorable.append(f"a torch function / dispatch mode entered by the test is still active "
                                        f"(mode stack depths {_mode_stacks()}, were {base.mode_stacks})")
        if sys.path is not base.sys_path_object or sys.path != base.sys_path:
            sys.path = base.sys_path_object
            sys.path[:] = base.sys_path
            outcome.restored.append("sys.path")
        if warnings.filters is not base.warning_filters_object or warnings.filters != base.warning_filters \
                or warnings.showwarning is not base.showwarning:
            warnings.filters = base.warning_filters_object
            warnings.filters[:] = base.warning_filters
            warnings.showwarning = base.showwarning
            getattr(warnings, "_filters_mutated", lambda: None)()  # drop the C-level "once" caches
            outcome.restored.append("warnings filters")
        if not (_logging_quiet() and logging.root.handlers == base.root_handlers
                and logging.root.manager.disable == base.logging_disable):
            self._restore_logging(base, outcome)
        if _signals() != base.signals or _signal_mask() != base.signal_mask:
            self._restore_signals(base, outcome)
        if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
            signal.setitimer(signal.ITIMER_REAL, 0)
            outcome.restored.append("pending alarm (cancelled)")
        if not faulthandler.is_enabled():
            self._rearm(set(FATAL_SIGNALS))
            outcome.restored.append("faulthandler")
        if (sys.stdout, sys.stderr) != base.stdio:
            sys.stdout, sys.stderr = base.stdio
            outcome.restored.append("sys.stdout / sys.stderr")
        if sys.getrecursionlimit() != base.recursion_limit:
            sys.setrecursionlimit(base.recursion_limit)
            outcome.restored.append("recursion limit")
        self._check_threads(base, outcome)
        return outcome

    def _absorb_import(self, start: _ImportStart) -> None:
        """Make what the import that began at `start` changed part of the baseline."""
        base = self._baseline
        if base is None:
            return
        environ = _environ()
        if environ != start.environ:
            for key in start.environ.keys() - environ.keys():
                base.environ.pop(key, None)
            for key, value in environ.items():
                if start.environ.get(key) != value:
                    base.environ[key] = value
        modes = _torch_modes()
        if modes != start.torch_modes:
            base.torch_modes = tuple(now if now != then else kept
                                     for now, then, kept in zip(modes, start.torch_modes, base.torch_modes))
        signals = _signals()
        if signals != start.signals:
            base.signals = tuple(now if now != then else kept
                                 for now, then, kept in zip(signals, start.signals, base.signals))
        if sys.path != start.sys_path:
            added = [entry for entry in sys.path if entry not in start.sys_path]
            base.sys_path = [entry for entry in sys.path if entry in base.sys_path or entry in added] + \
                [entry for entry in base.sys_path if entry not in sys.path]
        if warnings.filters != start.warning_filters:
            added = [entry for entry in warnings.filters if entry not in start.warning_filters]
            base.warning_filters = added + [entry for entry in base.warning_filters if entry not in added]
        if logging.root.handlers != start.root_handlers:
            base.root_handlers += [h for h in logging.root.handlers if h not in start.root_handlers]
        base.threads |= set(threading.enumerate()) - start.threads

    # --- the restorers (run only for what changed) ------------------------------------------------
    @staticmethod
    def _restore_environ(base: _Baseline, outcome: Outcome) -> None:
        now = dict(_environ())
        for key in now.keys() - base.environ.keys():
            name = os.fsdecode(key)
            del os.environ[name]
            outcome.restored.append(f"env {name} (unset)")
        for key, value in base.environ.items():
            if now.get(key) != value:
                name = os.fsdecode(key)
                os.environ[name] = os.fsdecode(value)
                outcome.restored.append(f"env {name}")

    @staticmethod
    def _restore_torch(base: _Baseline, outcome: Outcome) -> None:
        grad, det, det_warn, anomaly, anomaly_nan, threads, dtype, precision, device = base.torch_modes
        now = _torch_modes()
        if now[0] != grad:
            torch.set_grad_enabled(grad)
            outcome.restored.append("grad mode")
        if now[1:3] != (det, det_warn):
            # Not torch.use_deterministic_algorithms: it imports torch._inductor (seconds) to set the
            # flag's inductor copy, which only matters where inductor is already imported.
            torch._C._set_deterministic_algorithms(det, warn_only=det_warn)
            inductor_config = sys.modules.get("torch._inductor.config")
            if inductor_config is not None:
                inductor_config.deterministic = det
            outcome.restored.append("deterministic algorithms")
        if now[3:5] != (anomaly, anomaly_nan):
            torch.set_anomaly_enabled(anomaly, anomaly_nan)
            outcome.restored.append("anomaly detection")
        if now[5] != threads:
            torch.set_num_threads(threads)
            outcome.restored.append("torch num_threads")
        if now[6] != dtype:
            torch.set_default_dtype(dtype)
            outcome.restored.append("default dtype")
        if now[7] != precision:
            torch.set_float32_matmul_precision(precision)
            outcome.restored.append("float32 matmul precision")
        if now[8] != device:
            torch.set_default_device(device)
            outcome.restored.append("default device")

    @staticmethod
    def _restore_logging(base: _Baseline, outcome: Outcome) -> None:
        changed = False
        if logging.root.manager.disable != base.logging_disable:
            logging.disable(base.logging_disable)
            changed = True
        for name, (level, disabled) in base.logger_states.items():
            logger = logging.root if name == "" else logging.Logger.manager.loggerDict.get(name)
            if not isinstance(logger, logging.Logger):
                continue
            if logger.level != level:
                logger.setLevel(level)
                changed = True
            if logger.disabled != disabled:
                logger.disabled = disabled
                changed = True
        if logging.root.handlers != base.root_handlers:
            for handler in list(logging.root.handlers):
                if handler not in base.root_handlers:
                    logging.root.removeHandler(handler)
            for handler in base.root_handlers:
                if handler not in logging.root.handlers:
                    logging.root.addHandler(handler)
            changed = True
        if changed:
            outcome.restored.append("logging levels / root handlers")
        _mark_logging()

    def _restore_signals(self, base: _Baseline, outcome: Outcome) -> None:
        rearm = set()
        for signum, handler, was in zip(WATCHED_SIGNALS, _signals(), base.signals):
            if handler == was:
                continue
            name = signal.Signals(signum).name
            if was is None:  # installed outside Python before the test: nothing to put back with
                outcome.unrestorable.append(f"the {name} handler (installed outside Python) was replaced by the test")
                continue
            signal.signal(signum, was)
            outcome.restored.append(f"{name} handler")
            rearm.add(signum)
        if _signal_mask() != base.signal_mask:
            signal.pthread_sigmask(signal.SIG_SETMASK, base.signal_mask)
            outcome.restored.append("signal mask")
        rearm &= STACK_SIGNALS | FATAL_SIGNALS
        if rearm:
            self._rearm(rearm)

    @staticmethod
    def _check_threads(base: _Baseline, outcome: Outcome) -> None:
        threads = threading.enumerate()
        if len(threads) == len(base.threads) and base.threads.issuperset(threads):
            return
        # A _DummyThread stands for a native thread that called into Python (a library's own worker);
        # the test did not start it and it cannot be joined.
        new = [t for t in threads if t not in base.threads and not isinstance(t, threading._DummyThread)]
        deadline = time.monotonic() + THREAD_GRACE_SECONDS
        for thread in new:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in new:
            if thread.is_alive():
                kind = "daemon" if thread.daemon else "non-daemon"
                outcome.unrestorable.append(f"a {kind} thread the test started is still running: {thread.name!r}")
        # Threads that ended are not missed; native threads' stand-ins belong to the process from now on.
        base.threads = {t for t in threading.enumerate()
                        if t in base.threads or isinstance(t, threading._DummyThread)}
