"""One world run shared by every test of a batch, once per session, across xdist workers.

A SUT suite checks many configurations (or cases) per world run, since importing vLLM and vllm-ascend
into every rank costs seconds, yet reports each as a test of its own, so that a known divergence is an
expectation on exactly one test id. The first test of a batch runs the world and keeps the outcome in a
file of the session's shared temporary directory, behind a lock; every other test of the batch, in this
worker or another, reads it. A crash of the run fails every test of the batch (in the worker that ran it
with the original exception), a skip skips them all, with the reason.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import filelock
import pytest
import torch


def _file_name(key: str) -> str:
    """A file name for ``key``: readable, and short enough for any file system (a digest keeps it unique)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    if len(safe) > 80:
        safe = f"{safe[:60]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    return safe + ".pt"


class BatchRunFailed(RuntimeError):
    """The shared world run of a batch crashed (in another test, perhaps in another worker).

    Carries the original exception's type name and message, which a crash expectation
    (``fixtures/expectations.py``) matches, so a known crash is recognised alike in every test of the batch.
    """

    def __init__(self, key: str, original_type: str, original_message: str):
        super().__init__(f"the world run of batch {key} crashed: {original_type}: {original_message}")
        self.original_type = original_type
        self.original_message = original_message


class SharedRuns:
    def __init__(self, tmp_path_factory):
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent  # the workers' basetemps are popen-gwN folders of the session's one
        self.directory = os.path.join(str(base), "sut-batches")
        os.makedirs(self.directory, exist_ok=True)

    def get(self, key: str, run: Callable[[], object]):
        """``run()``'s result for ``key``, computed by the first caller of the session."""
        path = os.path.join(self.directory, _file_name(key))
        with filelock.FileLock(path + ".lock"):
            if os.path.exists(path):
                outcome, value = torch.load(path, weights_only=False)
            else:
                try:
                    value = run()
                except pytest.skip.Exception as skip:
                    torch.save(("skip", skip.msg), path)
                    raise
                except Exception as exc:
                    torch.save(("crash", (type(exc).__name__, str(exc))), path)
                    raise
                torch.save(("ok", value), path)
                return value
        if outcome == "skip":
            pytest.skip(value)
        if outcome == "crash":
            raise BatchRunFailed(key, *value)
        return value
