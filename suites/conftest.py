"""Fixtures the conformance suites share."""
from __future__ import annotations

import pytest
from sut_batch import SharedRuns


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    """One world run per batch of SUT tests per session, across xdist workers (suites/sut_batch.py)."""
    return SharedRuns(tmp_path_factory)
