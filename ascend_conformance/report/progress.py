"""Progress of long sweeps on stderr: quiet for short work, one rate-limited line for long work.

    from ascend_conformance.report.progress import Progress

    with Progress("all_reduce sweep", total=len(sizes)) as progress:
        for size in sizes:
            run_one(size)
            progress.advance(detail=f"{size} B")

Nothing is printed during the first ``delay`` seconds (default 3 s), so sweeps that finish quickly stay
silent; after that at most one update per ``interval`` seconds (default 2 s): done/total, percent,
elapsed, an ETA from the mean step time, and the last step's detail. On a terminal the line is rewritten
in place; elsewhere (CI logs) each update is a new line, so logs stay readable. ``close()`` (or leaving
the ``with`` block) prints a final line when anything was printed before. ``ASCEND_CONFORMANCE_PROGRESS=0``
silences it; ``=1`` shows it even for short work (delay 0).

Under pytest, stderr is captured: the ``report`` fixture's ``report.progress(label, total)`` returns a
Progress whose lines go past the capture to the terminal.

No dependency (tqdm would do, but it is not a dependency of the suite and its bars do not suit CI logs).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, ContextManager, TextIO

PROGRESS_ENV = "ASCEND_CONFORMANCE_PROGRESS"


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(self, label: str, total: int | None = None, *, stream: TextIO | None = None,
                 delay: float = 3.0, interval: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 suspend_capture: Callable[[], ContextManager] | None = None):
        setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
        self.enabled = setting not in ("0", "false", "no", "off")
        if setting in ("1", "true", "yes", "on"):
            delay = 0.0
        self.label = label
        self.total = total
        self.done = 0
        self.detail = ""
        self._stream = stream
        self._delay = delay
        self._interval = interval
        self._clock = clock
        self._suspend = suspend_capture or contextlib.nullcontext
        self._start = clock()
        self._last_print: float | None = None
        self._printed = 0
        self._closed = False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def lines_printed(self) -> int:
        return self._printed

    def advance(self, steps: int = 1, detail: str = "") -> None:
        """Record `steps` more finished steps; print when the delay and the rate limit allow."""
        self.done += steps
        if detail:
            self.detail = detail
        now = self._clock()
        if not self.enabled or now - self._start < self._delay:
            return
        if self._last_print is not None and now - self._last_print < self._interval:
            return
        self._emit(now, final=False)

    def _line(self, now: float, final: bool) -> str:
        elapsed = now - self._start
        parts = [f"{self.label}:"]
        if self.total:
            parts.append(f"{self.done}/{self.total} ({100.0 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.done} done")
        parts.append(f"elapsed {_format_seconds(elapsed)}")
        if not final and self.total and 0 < self.done < self.total:
            parts.append(f"ETA {_format_seconds(elapsed / self.done * (self.total - self.done))}")
        if final:
            parts.append("finished")
        if self.detail and not final:
            parts.append(f"| {self.detail}")
        return " ".join(parts)

    def _emit(self, now: float, final: bool) -> None:
        line = self._line(now, final)
        with self._suspend():
            stream = self.stream  # inside: with pytest's capture suspended, sys.stderr is the terminal again
            in_place = bool(getattr(stream, "isatty", lambda: False)())
            if in_place:
                stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
            else:
                stream.write(line + "\n")
            stream.flush()
        self._last_print = now
        self._printed += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._printed:
            self._emit(self._clock(), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
