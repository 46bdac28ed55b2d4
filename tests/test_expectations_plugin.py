"""The expectations plugin (fixtures/expectations.py) on small pytest sessions of its own.

Each session gets a ``suites/`` folder with a test module and ``suites/expectations/<sut>-<version>.toml``;
the installed versions are pinned (vllm 9.9.0, vllm_ascend 9.9.0.post1) so the checks do not depend on what
this host has installed. One module, four tests, one known-divergence entry each:

* a Divergence under an expectation -> xfailed, with "<finding> [<reference>]" as the reason;
* a RuntimeError or a RankFailure (an AssertionError, but not a Divergence) under one -> FAILED;
* a pass under one -> FAILED, naming the file and the entry to delete;
* an entry matching no collected test, a missing file, a malformed file -> summary line / usage error.
"""
from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

VERSIONS = {"vllm": "9.9.0", "vllm_ascend": "9.9.0.post1"}

MODULE = '''
import pytest
from ascend_conformance.errors import Divergence
from ascend_conformance.harness.pool import RankFailure

pytestmark = pytest.mark.sut("vllm_ascend")


def test_diverges():
    raise Divergence("vllm_ascend 9.9.0.post1 builds otp [[0, 2]], reference [[0, 4]]")


def test_crashes():
    raise RuntimeError("the release crashed")


def test_rank_fails():
    raise RankFailure("rank 3 exited with code -9")


def test_conforms():
    pass


@pytest.mark.sut("vllm")
def test_other_sut():
    raise Divergence("vllm diverges, but no vllm entry names this test")


def test_unexpected_divergence():
    raise Divergence("not known")


@pytest.mark.parametrize("case", ["a-b", "b"])
def test_params(case):
    raise Divergence(f"params {case}")
'''

ENTRIES = {name: (f"suites/test_fake.py::{name}", f"{name} finding", f"upstream {name}.py")
           for name in ("test_diverges", "test_crashes", "test_rank_fails", "test_conforms")}


def _expectations(entries: dict, sut: str = "vllm_ascend", version: str = VERSIONS["vllm_ascend"]) -> str:
    text = f'sut = "{sut}"\nversion = "{version}"\n\n# groups\n'
    for test, finding, reference in entries.values():
        text += f'[[divergence]]\ntest = "{test}"\nfinding = "{finding}"\nreference = "{reference}"\n\n'
    return text


# Pins the installed versions for the inner session's life (in this process or an xdist subprocess).
CONFTEST = f'''
from ascend_conformance.sut import stack

_real = []


def pytest_configure(config):
    _real.append(stack.inspect)
    stack.inspect = lambda: {{name: stack.Package(name, version, "host install", "/nowhere")
                             for name, version in {VERSIONS!r}.items()}}


def pytest_unconfigure(config):
    stack.inspect = _real.pop()
'''


@pytest.fixture
def session(pytester):
    """A pytester session with suites/test_fake.py and the installed versions pinned."""
    pytester.makeconftest(CONFTEST)
    pytester.mkdir("suites")
    pytester.mkdir("suites/expectations")
    (pytester.path / "suites" / "test_fake.py").write_text(MODULE)
    return pytester


def _write(pytester, name: str, text: str) -> None:
    (pytester.path / "suites" / "expectations" / name).write_text(textwrap.dedent(text))


def _run(pytester, *args):
    return pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider", "-rfxX", "--results-dir=", *args)


def test_divergence_xfails_and_everything_else_fails(session):
    _write(session, "vllm_ascend-9.9.0.post1.toml", _expectations(ENTRIES))
    run = _run(session)
    run.assert_outcomes(xfailed=1, failed=7, passed=0)
    outcomes = {line.split(" ")[1]: line.split(" ")[0] for line in run.outlines
                if line.startswith(("XFAIL ", "FAILED ", "XPASS "))}
    assert outcomes == {"suites/test_fake.py::test_diverges": "XFAIL",
                        "suites/test_fake.py::test_crashes": "FAILED",
                        "suites/test_fake.py::test_rank_fails": "FAILED",
                        "suites/test_fake.py::test_conforms": "FAILED",
                        "suites/test_fake.py::test_other_sut": "FAILED",
                        "suites/test_fake.py::test_unexpected_divergence": "FAILED",
                        "suites/test_fake.py::test_params[a-b]": "FAILED",
                        "suites/test_fake.py::test_params[b]": "FAILED"}
    run.stdout.fnmatch_lines(["XFAIL suites/test_fake.py::test_diverges - test_diverges finding "
                              "[[]upstream test_diverges.py[]]"])
    run.stdout.fnmatch_lines(["*RuntimeError: the release crashed*"])
    run.stdout.fnmatch_lines(["*RankFailure: rank 3 exited with code -9*"])


def test_a_pass_under_an_expectation_fails_naming_the_entry_to_delete(session):
    _write(session, "vllm_ascend-9.9.0.post1.toml", _expectations(ENTRIES))
    run = _run(session, "suites/test_fake.py::test_conforms")
    run.assert_outcomes(failed=1)
    run.stdout.fnmatch_lines([
        "*[[]XPASS(strict)[]] suites/test_fake.py::test_conforms no longer diverges: delete "
        "suites/expectations/vllm_ascend-9.9.0.post1.toml entry 4 (test = 'suites/test_fake.py::test_conforms') "
        "(finding: test_conforms finding)*"])


def test_patterns_match_node_ids_and_unmatched_entries_are_reported(session):
    entries = {"wildcards": ("suites/test_fake.py::test_?iverges*", "wildcard finding", "ref"),
               "a literal bracket": ("suites/test_fake.py::test_params[[]a-b]", "bracket finding", "ref"),
               "rank fails too": ("suites/test_fake.py::test_rank_*", "crash finding", "ref"),
               "stale": ("suites/test_fake.py::test_removed_long_ago", "stale finding", "ref"),
               "missing file": ("suites/test_gone.py::test_x", "gone finding", "ref")}
    _write(session, "vllm_ascend-9.9.0.post1.toml", _expectations(entries))
    run = _run(session, "suites/test_fake.py")
    # test_diverges and test_params[a-b] match (xfail); test_rank_fails matches but is no Divergence (fails);
    # test_params[b] does not match (the [[] is a literal bracket, not a set).
    run.assert_outcomes(xfailed=2, failed=5, passed=1)
    run.stdout.fnmatch_lines([
        "*expectations of the systems under test*",
        "expectations: no suites/expectations/vllm-9.9.0.toml for the installed vllm 9.9.0: its tests run "
        "without expectations (a divergence fails)",
        "expectations: suites/expectations/vllm_ascend-9.9.0.post1.toml entry 4 "
        "(test = 'suites/test_fake.py::test_removed_long_ago') matches no test of this tier: a --full run "
        "collects more; delete or fix it only if that one matches nothing either",
        "expectations: suites/expectations/vllm_ascend-9.9.0.post1.toml entry 5 "
        "(test = 'suites/test_gone.py::test_x') names a test file that does not exist",
    ])
    assert sum("no suites/expectations/vllm-9.9.0.toml" in line for line in run.outlines) == 1
    # The full tier collects every parametrisation: there an unmatched entry is stale.
    full = _run(session, "suites/test_fake.py", "--full")
    full.stdout.fnmatch_lines([
        "expectations: suites/expectations/vllm_ascend-9.9.0.post1.toml entry 4 "
        "(test = 'suites/test_fake.py::test_removed_long_ago') matches no collected test: delete or fix it"])


def test_without_an_expectations_file_sut_tests_run_plainly_and_the_summary_says_so_once(session):
    run = _run(session)
    run.assert_outcomes(failed=7, passed=1)
    assert sum(line.startswith("expectations: no suites/expectations/vllm_ascend-9.9.0.post1.toml for the installed "
                               "vllm_ascend 9.9.0.post1") for line in run.outlines) == 1


@pytest.mark.parametrize("text, message", [
    ('sut = "vllm_ascend"\nversion = "9.9.0.post1"\n[[divergence]]\ntest = "x"\n',
     "divergence entry 1: missing finding, reference"),
    ('sut = "vllm_ascend"\nversion = "9.9.0.post1"\n[[divergence]]\ntest = "x"\nfinding = "f"\nreference = "r"\n'
     'expected = "y"\n', "divergence entry 1: unknown key(s) expected"),
    ('sut = "vllm_ascend"\nversion = "9.9.0"\n', "sut = 'vllm_ascend', version = '9.9.0': the file name says "
                                                 "sut = 'vllm_ascend', version = '9.9.0.post1'"),
    ('sut = "vllm_ascend"\nversion = "9.9.0.post1"\n[[divergence]]\ntest = "x"\nfinding = ""\nreference = "r"\n',
     "divergence entry 1: finding must be one non-empty line, got ''"),
    ('sut = "vllm_ascend"\nversion = "9.9.0.post1"\nnotes = 1\n',
     "unknown top-level key(s) notes (allowed: sut, version, divergence)"),
    ('sut = "vllm_ascend\n', "not valid TOML"),
])
def test_a_malformed_file_is_a_one_line_usage_error(session, text, message):
    _write(session, "vllm_ascend-9.9.0.post1.toml", text)
    run = _run(session)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in run.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(
        "ERROR: suites/expectations/vllm_ascend-9.9.0.post1.toml: "), run.errlines
    assert message in errors[0]


def test_xdist_workers_apply_expectations_and_the_controller_reports_their_notes(session):
    entries = dict(ENTRIES, stale=("suites/test_fake.py::test_removed", "stale", "ref"))
    _write(session, "vllm_ascend-9.9.0.post1.toml", _expectations(entries))
    run = session.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "-rfxX", "--results-dir=", timeout=600)
    run.assert_outcomes(xfailed=1, failed=7, passed=0)
    assert sum("entry 5 (test = 'suites/test_fake.py::test_removed') matches no test of this tier" in line
               for line in run.outlines) == 1
