"""Imported by the rank forkserver when a session runs systems under test: the heavy third-party
libraries the stack's import chain loads, so a new rank forks with them in memory.

Importing vLLM and vllm-ascend costs a rank ~12 s of CPU here, ~90 % of it in these libraries
(torch's compiler stack, which ``vllm.env_override`` pulls in, transformers, sympy, openai's types) and
~10 % in vLLM / vllm-ascend themselves. A pool of 8 SUT ranks paid that 8 times over, in every pool of
every worker. The systems under test are *not* preloaded: each rank still imports vLLM and vllm-ascend
itself, with the environment its test sets (platform variables, the torch_npu stand-in), as a worker
does.

Left out: anything that starts a thread at import (the server forks; ``scipy.linalg`` starts OpenBLAS's
thread pool), and anything whose import reads configuration a test may change. Each import is guarded:
a missing or broken library only costs the ranks their own import, never the forkserver.
"""
from __future__ import annotations

import importlib

# The order is the import chain's: torch's compiler first (vllm.env_override), then model / API types.
MODULES = (
    "torch._dynamo",
    "torch._functorch.aot_autograd",
    "torch._inductor.compile_fx",
    "torch._inductor.lowering",
    "sympy",
    "networkx",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "openai",
)


def preload(modules=MODULES) -> dict[str, str]:
    """Import ``modules``; returns ``{module: why it failed}`` for those that did not import."""
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the ranks import it themselves (and report) if they need it
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


FAILED = preload()
