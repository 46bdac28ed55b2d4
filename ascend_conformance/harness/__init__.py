"""Multi-rank runtime: warm rank pools, device leases, failure propagation, torchrun mode.

Public surface: ``rank_context()`` inside a rank; ``register_cleanup(hook)`` for project modules that
keep per-rank state; ``WorldRunner`` / ``TorchrunRunner`` for the pytest fixtures and the CLI.
"""
from ascend_conformance.harness.context import RankContext, rank_context, register_cleanup

__all__ = ["RankContext", "rank_context", "register_cleanup"]
