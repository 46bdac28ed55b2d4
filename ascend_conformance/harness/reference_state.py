"""The per-rank state of the reference implementation, reset by the harness after every test.

The reference modules know nothing of the harness: a plain ``torchrun`` script imports and uses them as
they are and calls their reset functions itself when it is done. Those that keep state between calls each
expose one, and this list is the only place the harness learns of them:

    shared_weight.release_all()               registered series (drained first: their broadcasts use groups)
    moe.parallel.forget_initialised_groups()  which groups moe_groups() initialised
    groups.destroy_groups()                   the coordinators of the initialised layout

Only a module that was imported can hold state, so a reset runs for the imported ones only (importing the
others here would cost every test their import time for nothing). Every reset runs even when an earlier
one raises; then one error names them all, and the rank pool is replaced before the next test.
"""
from __future__ import annotations

import sys

# (module, function), in the order they run.
RESETS: tuple[tuple[str, str], ...] = (
    ("ascend_conformance.shared_weight", "release_all"),
    ("ascend_conformance.moe.parallel", "forget_initialised_groups"),
    ("ascend_conformance.groups", "destroy_groups"),
)


def reset_reference_state() -> None:
    """Call the reset function of every imported reference module that keeps state."""
    failures = []
    for module_name, function_name in RESETS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        try:
            getattr(module, function_name)()
        except Exception as exc:  # noqa: BLE001 - reset the others, then report every failure
            failures.append(f"{module_name}.{function_name}(): {type(exc).__name__}: {exc}")
    if failures:
        raise RuntimeError("reference state could not be reset: " + "; ".join(failures))
