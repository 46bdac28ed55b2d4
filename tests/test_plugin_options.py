"""Option values the runtime cannot use are one-line usage errors at start-up, never a failure of every
multi-rank test later (an infinite or NaN timeout) or an INTERNALERROR traceback (a results directory
that cannot be written)."""
from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]


def _one_usage_error(result) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (result.ret, result.stdout.lines[-20:], result.stderr.lines)
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.lines
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()
    return errors[0]


@pytest.mark.parametrize("option, value", [("--rank-timeout", "inf"), ("--rank-timeout", "nan"),
                                           ("--lease-timeout", "nan")])
def test_non_finite_limits_are_usage_errors(pytester, option, value):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    error = _one_usage_error(pytester.runpytest_subprocess(f"{option}={value}"))
    assert option in error and value in error, error


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_a_results_dir_that_cannot_be_written_is_a_usage_error_leaving_nothing_behind(pytester, tmp_path, where):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    if where == "under-a-file":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        target = blocker / "results"
    else:
        target = "/proc/ascend-conformance-results"  # procfs refuses new directories, even to root
    error = _one_usage_error(pytester.runpytest_subprocess(f"--results-dir={target}"))
    assert f"--results-dir {target}" in error, error
    assert not os.path.exists(target)


def test_an_infinite_world_timeout_is_an_error(world):
    from ascend_conformance.errors import ConfigError

    for bad in (float("inf"), float("nan"), 0, -1.0):
        with pytest.raises(ConfigError, match=r"world\(n, timeout=\.\.\.\) must be a finite number of seconds > 0"):
            world(2, timeout=bad)
