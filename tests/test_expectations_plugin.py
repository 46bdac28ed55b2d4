"""The expectations plugin (fixtures/expectations.py) on small pytest sessions of its own.

Each session gets a ``suites/`` folder with a test module and files under ``suites/expectations/``; the
installed releases are pinned (``releases.json`` beside the session's conftest: vllm 9.9.0, vllm_ascend
9.9.0.post1 unless a test says otherwise) so the checks do not depend on what this host has installed.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from ascend_conformance import expectations as spec
from tests.events import HANG_GUARD

pytest_plugins = ["pytester"]

RELEASE_FILE = "vllm_ascend-9.9.0.post1.toml"

MODULE = '''
import pytest
from ascend_conformance.errors import Divergence
from ascend_conformance.harness.pool import RankFailure

pytestmark = pytest.mark.sut("vllm_ascend")


class BatchRunFailed(RuntimeError):
    """What suites/sut_batch.py raises in the other tests of a batch whose world run crashed."""

    def __init__(self, original_type, original_message):
        super().__init__(f"the world run of batch b crashed: {original_type}: {original_message}")
        self.original_type, self.original_message = original_type, original_message


def test_diverges():
    raise Divergence("vllm_ascend 9.9.0.post1 builds otp [[0, 2]], reference [[0, 4]]")


def test_second_finding():
    raise Divergence("vllm_ascend 9.9.0.post1: memory 2.0x the unsharded layer's")


def test_crashes():
    raise RuntimeError("the release crashed")


def test_known_crash():
    raise ValueError("cannot reshape array of size 8 into shape (2,2,1)")


def test_known_crash_in_batch():
    raise BatchRunFailed("ValueError", "cannot reshape array of size 8 into shape (2,2,1)")


def test_rank_fails():
    raise RankFailure("rank 3 exited with code -9")


def test_conforms():
    pass


@pytest.mark.sut("vllm")
def test_other_sut():
    raise Divergence("vllm diverges, but no vllm entry names this test")


@pytest.mark.parametrize("case", ["a-b", "b", "c?"])
def test_params(case):
    raise Divergence(f"params {case} differ")
'''

# Pins the installed releases for the inner session's life (in this process or an xdist subprocess).
CONFTEST = '''
import json, os
from ascend_conformance.sut import installed

_real = []


def pytest_configure(config):
    with open(os.path.join(os.path.dirname(__file__), "releases.json")) as f:
        releases = {sut: installed.Release(sut, **fields) for sut, fields in json.load(f).items()}
    _real.append(installed.installed)
    installed.installed = releases.get


def pytest_unconfigure(config):
    installed.installed = _real.pop()
'''

RELEASES = {"vllm": {"name": "9.9.0", "version": "9.9.0"},
            "vllm_ascend": {"name": "9.9.0.post1", "version": "9.9.0.post1"}}
MAIN = {"name": "main", "version": "9.9.1.dev3+gfeedbee", "commit": "feedbee" + "0" * 33, "pairs_with": "9.10.0"}

TEST = "suites/test_fake.py::"


def entry(target: str, match: str, finding: str = "a finding", **extra) -> str:
    """One [[expectation]] table: ``target`` an exact id (``pattern = ...`` when it has a ``*``)."""
    fields = {"pattern" if "*" in target else "test": TEST + target, **extra, "match": match,
              "finding": finding, "reference": "upstream.py"}
    return spec.render_entry(fields) + "\n\n"


def release_file(*entries: str, release: str = "9.9.0.post1", commit: str | None = None) -> str:
    head = f'sut = "vllm_ascend"\nrelease = "{release}"\n' + (f'commit = "{commit}"\n' if commit else "")
    return head + "\n" + "".join(entries)


def shared_file(*entries: str) -> str:
    return 'sut = "vllm_ascend"\n\n' + "".join(entries)


@pytest.fixture
def session(pytester):
    """A pytester session with suites/test_fake.py and the installed releases pinned."""
    pytester.makeconftest(CONFTEST)
    (pytester.path / "releases.json").write_text(json.dumps(RELEASES))
    pytester.mkdir("suites")
    pytester.mkdir("suites/expectations")
    (pytester.path / "suites" / "test_fake.py").write_text(MODULE)
    return pytester


def _write(pytester, name: str, text: str) -> None:
    (pytester.path / "suites" / "expectations" / name).write_text(textwrap.dedent(text))


def _run(pytester, *args):
    return pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider", "-rfxX", "--results-dir=", *args)


def _outcomes(run) -> dict[str, str]:
    return {line.split(" ")[1]: line.split(" ")[0] for line in run.outlines
            if line.startswith(("XFAIL ", "FAILED ", "XPASS ", "PASSED "))}


def _usage_error(run) -> str:
    assert run.ret == pytest.ExitCode.USAGE_ERROR, run.outlines
    errors = [line for line in run.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1, run.errlines
    return errors[0]


ENTRIES = (entry("test_diverges", r"builds otp \[\[0, 2\]\]", "otp crosses stages"),
           entry("test_second_finding", r"prefetch distance"),
           entry("test_crashes", "crashed"),
           entry("test_known_crash", r"cannot reshape array of size 8", kind="crash", exception="ValueError"),
           entry("test_known_crash_in_batch", r"cannot reshape array", kind="crash", exception="ValueError"),
           entry("test_rank_fails", r"exited", kind="crash", exception="ValueError"),
           entry("test_conforms", "anything", "conforms finding"))


def test_an_entry_waives_exactly_the_failure_it_matches(session):
    _write(session, RELEASE_FILE, release_file(*ENTRIES))
    run = _run(session)
    assert _outcomes(run) == {TEST + "test_diverges": "XFAIL",
                              TEST + "test_second_finding": "FAILED",  # a Divergence the entry does not match
                              TEST + "test_crashes": "FAILED",  # a crash under a divergence entry
                              TEST + "test_known_crash": "XFAIL",
                              TEST + "test_known_crash_in_batch": "XFAIL",  # the batch's crash, carried
                              TEST + "test_rank_fails": "FAILED",  # a crash of another type
                              TEST + "test_conforms": "FAILED",  # XPASS(strict)
                              TEST + "test_other_sut": "FAILED",
                              TEST + "test_params[a-b]": "FAILED",
                              TEST + "test_params[b]": "FAILED",
                              TEST + "test_params[c?]": "FAILED"}
    run.stdout.fnmatch_lines([f"XFAIL {TEST}test_diverges - otp crosses stages [[]upstream.py[]]"])
    shown = f"suites/expectations/{RELEASE_FILE}"
    run.stdout.fnmatch_lines([
        f"*[[]expectation not matched[]] {shown} entry 2 (test = '{TEST}test_second_finding') expects a Divergence "
        f"matching r'prefetch distance'; got a Divergence: \"vllm_ascend 9.9.0.post1: memory 2.0x the "
        f"unsharded layer's\"*"])
    run.stdout.fnmatch_lines([f"*[[]expectation not matched[]] {shown} entry 3 * got RuntimeError: "
                              f"'the release crashed'*"])
    run.stdout.fnmatch_lines([f"*[[]expectation not matched[]] {shown} entry 6 (test = '{TEST}test_rank_fails') "
                              f"expects a crash ValueError matching r'exited'; got RankFailure: "
                              f"'rank 3 exited with code -9'*"])
    run.stdout.fnmatch_lines([f"*[[]XPASS(strict)[]] {TEST}test_conforms no longer diverges: delete {shown} "
                              f"entry 7 (test = '{TEST}test_conforms') (finding: conforms finding)*"])


def test_a_pattern_names_ids_literally_and_must_match_its_count(session):
    # "[" and "?" are literal; only "*" is special.
    _write(session, RELEASE_FILE, release_file(entry("test_params[*]", r"^params \S+ differ$", tests=3)))
    run = _run(session, f"{TEST}test_params")
    run.assert_outcomes(xfailed=3)
    _write(session, RELEASE_FILE, release_file(entry("test_params[c?]", "params")))
    run = _run(session, "suites/test_fake.py", "-k", "params")
    assert _outcomes(run)[TEST + "test_params[c?]"] == "XFAIL" and _outcomes(run)[TEST + "test_params[b]"] == "FAILED"
    _write(session, RELEASE_FILE, release_file(entry("test_params[*-b]", "params", tests=1)))
    assert _outcomes(_run(session))[TEST + "test_params[a-b]"] == "XFAIL"

    _write(session, RELEASE_FILE, release_file(entry("test_params[*]", "params", tests=2)))
    error = _usage_error(_run(session))
    assert error == (f"ERROR: suites/expectations/{RELEASE_FILE} entry 1 (pattern = '{TEST}test_params[*]') says "
                     f"tests = 2 but matches 3 ids of the default tier: fix the pattern or the count")
    # A partial run of the file cannot judge the count (its tests still xfail); a run of the whole file can.
    assert _run(session, "suites/test_fake.py", "-k", "a-b").ret == pytest.ExitCode.OK
    assert _run(session, f"{TEST}test_params[b]").ret == pytest.ExitCode.OK
    assert _run(session, "suites/test_fake.py").ret == pytest.ExitCode.USAGE_ERROR
    # --full counts with full_tests, and says when there is none.
    _write(session, RELEASE_FILE, release_file(entry("test_params[*]", "params", tests=3, full_tests=4)))
    assert _usage_error(_run(session, "--full")).endswith(
        "says full_tests = 4 but matches 3 ids of a --full run: fix the pattern or the count")
    _write(session, RELEASE_FILE, release_file(entry("test_params[*]", "params", tests=3)))
    run = _run(session, "--full")
    run.stdout.fnmatch_lines([f"expectations: suites/expectations/{RELEASE_FILE} entry 1 (pattern = "
                              f"'{TEST}test_params[[]*]') has no full_tests: its count (3 in this --full run) is "
                              f"not checked"])


def test_overlapping_entries_are_refused_naming_both(session):
    _write(session, RELEASE_FILE, release_file(entry("test_params[*]", "params", tests=3),
                                               entry("test_params[b]", "params")))
    assert _usage_error(_run(session)) == (
        f"ERROR: expectations overlap: suites/expectations/{RELEASE_FILE} entry 2 (test = '{TEST}test_params[b]') "
        f"and suites/expectations/{RELEASE_FILE} entry 1 (pattern = '{TEST}test_params[*]') both name "
        f"{TEST}test_params[b]; one test has one expectation")
    # The same across the release's file and the shared one.
    _write(session, RELEASE_FILE, release_file(entry("test_diverges", "otp")))
    _write(session, "vllm_ascend.toml", shared_file(entry("test_diverges", "otp", versions=">=9")))
    error = _usage_error(_run(session))
    assert f"{RELEASE_FILE} entry 1 (test = '{TEST}test_diverges') and suites/expectations/vllm_ascend.toml " \
           f"entry 1" in error


def test_the_shared_file_applies_within_its_range_beside_the_release_file(session):
    _write(session, RELEASE_FILE, release_file(entry("test_diverges", "otp")))
    _write(session, "vllm_ascend.toml", shared_file(
        entry("test_known_crash", "reshape", kind="crash", exception="ValueError", versions=">=9.9,<9.10"),
        entry("test_second_finding", "memory", versions="<9.9")))
    outcomes = _outcomes(_run(session))
    assert (outcomes[TEST + "test_diverges"], outcomes[TEST + "test_known_crash"],
            outcomes[TEST + "test_second_finding"]) == ("XFAIL", "XFAIL", "FAILED")  # the last: out of range


def test_a_checkout_is_ordered_before_the_release_it_pairs_with_and_its_commit_is_noted(session):
    (session.path / "releases.json").write_text(json.dumps({"vllm_ascend": MAIN}))
    _write(session, "vllm_ascend-main.toml", release_file(entry("test_diverges", "otp"), release="main",
                                                          commit="c0ffee" + "1" * 34))
    _write(session, "vllm_ascend.toml", shared_file(
        entry("test_known_crash", "reshape", kind="crash", exception="ValueError", versions=">=9.9,<9.10"),
        entry("test_second_finding", "memory", versions=">9.9.0.post1,<9.11")))
    run = _run(session)
    outcomes = _outcomes(run)
    assert (outcomes[TEST + "test_diverges"], outcomes[TEST + "test_known_crash"],
            outcomes[TEST + "test_second_finding"]) == ("XFAIL", "FAILED", "XFAIL")  # main compares as 9.10.0.dev0
    notes = [line for line in run.outlines if "established on" in line]
    assert notes == ["expectations: suites/expectations/vllm_ascend-main.toml was established on c0ffee1111, "
                     "running feedbee000"]
    _write(session, "vllm_ascend-main.toml", release_file(entry("test_diverges", "otp"), release="main",
                                                          commit=MAIN["commit"]))
    assert not [line for line in _run(session).outlines if "established on" in line]


def test_unmatched_entries_and_a_missing_file_are_reported(session):
    _write(session, RELEASE_FILE, release_file(entry("test_diverges", "otp"), entry("test_removed_long_ago", "x"),
                                               "[[expectation]]\ntest = \"suites/test_gone.py::test_x\"\n"
                                               "match = \"x\"\nfinding = \"f\"\nreference = \"r\"\n"))
    run = _run(session, "suites/test_fake.py")
    run.stdout.fnmatch_lines([
        "*expectations of the systems under test*",
        f"expectations: suites/expectations/{RELEASE_FILE} entry 2 (test = '{TEST}test_removed_long_ago') matches "
        f"no test of this tier: a --full run collects more; delete or fix it only if that one matches nothing either",
        f"expectations: suites/expectations/{RELEASE_FILE} entry 3 (test = 'suites/test_gone.py::test_x') names a "
        f"test file that does not exist",
        "expectations: no suites/expectations/vllm-9.9.0.toml for the installed vllm 9.9.0: its tests run without "
        "expectations (any other divergence fails)",
    ])
    assert sum("no suites/expectations/vllm-9.9.0.toml" in line for line in run.outlines) == 1
    _run(session, "suites/test_fake.py", "--full").stdout.fnmatch_lines([
        f"expectations: suites/expectations/{RELEASE_FILE} entry 2 (test = '{TEST}test_removed_long_ago') matches "
        f"no collected test: delete or fix it"])


def test_without_an_expectations_file_sut_tests_run_plainly_and_the_summary_says_so_once(session):
    run = _run(session)
    run.assert_outcomes(failed=10, passed=1)
    assert sum(line.startswith("expectations: no suites/expectations/vllm_ascend-9.9.0.post1.toml for the installed "
                               "vllm_ascend 9.9.0.post1") for line in run.outlines) == 1


HEAD = 'sut = "vllm_ascend"\nrelease = "9.9.0.post1"\n'
GOOD = '[[expectation]]\ntest = "t"\nmatch = "m"\nfinding = "f"\nreference = "r"\n'


@pytest.mark.parametrize("name, text, message", [
    (RELEASE_FILE, HEAD + GOOD.replace('match = "m"\n', ""), "expectation 1: missing match"),
    (RELEASE_FILE, HEAD + GOOD + 'expected = "y"\n', "expectation 1: unknown key(s) expected (allowed: "),
    (RELEASE_FILE, HEAD + GOOD.replace('test = "t"', 'pattern = "t*"'),
     "expectation 1: pattern 't*' without tests (the number of default-tier ids it must match)"),
    (RELEASE_FILE, HEAD + GOOD.replace('match = "m"', 'match = "(unclosed"'),
     "expectation 1: match '(unclosed' is not a regular expression: missing ), unterminated subpattern"),
    (RELEASE_FILE, HEAD + GOOD + 'versions = ">=9"\n',
     "expectation 1: versions belongs in the shared file of every release line, not in a release's own file"),
    ("vllm_ascend.toml", 'sut = "vllm_ascend"\n' + GOOD + 'versions = "=>9"\n',
     "expectation 1: versions '=>9' is not a PEP 440 specifier set"),
    ("vllm_ascend.toml", 'sut = "vllm_ascend"\n' + GOOD, "expectation 1: missing versions"),
    (RELEASE_FILE, HEAD + GOOD + 'kind = "crash"\n', "expectation 1: missing exception"),
    (RELEASE_FILE, HEAD + GOOD + 'kind = "hang"\n', "expectation 1: kind must be one of divergence, crash, got 'hang'"),
    (RELEASE_FILE, HEAD + GOOD + 'pattern = "p*"\ntests = 1\n', "expectation 1: missing exactly one of test, pattern"),
    (RELEASE_FILE, HEAD + GOOD + 'tests = 1\n', "expectation 1: tests counts the ids of a pattern; test names one id"),
    (RELEASE_FILE, HEAD + GOOD + GOOD, "expectations overlap: suites/expectations/vllm_ascend-9.9.0.post1.toml "
                                       "entry 1 (test = 't') and "),
    (RELEASE_FILE, 'sut = "vllm_ascend"\nversion = "9.9.0.post1"\n',
     "unknown top-level key(s) version (allowed: sut, release, commit, expectation)"),
    (RELEASE_FILE, 'sut = "vllm_ascend"\nrelease = "9.9.0"\n', "release = '9.9.0': the file name says '9.9.0.post1'"),
    (RELEASE_FILE, HEAD + GOOD.replace('finding = "f"', 'finding = ""'),
     "expectation 1: finding must be one non-empty line, got ''"),
    (RELEASE_FILE, 'sut = "vllm_ascend\n', "not valid TOML"),
])
def test_a_malformed_file_is_a_one_line_usage_error(session, name, text, message):
    _write(session, name, text)
    error = _usage_error(_run(session))
    assert message in error
    assert error.startswith(("ERROR: expectations overlap", f"ERROR: suites/expectations/{name}: ")), error


def test_xdist_workers_apply_expectations_and_the_controller_reports_their_notes(session):
    _write(session, RELEASE_FILE, release_file(*ENTRIES, entry("test_removed", "x")))
    # No wall-clock bound: the inner session ends when its tests do (its own rank timeouts bound any hang).
    run = session.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "-rfxX", "--results-dir=")
    run.assert_outcomes(xfailed=3, failed=8, passed=0)
    assert sum(f"entry 8 (test = '{TEST}test_removed') matches no test of this tier" in line
               for line in run.outlines) == 1


def test_a_crashed_batch_carries_its_exception_to_every_test_of_the_batch(tmp_path):
    """suites/sut_batch.py: the other tests of a batch get the original type and message, which is what a
    crash entry matches."""
    import importlib.util
    import os

    from fixtures.expectations import failure_of

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "suites", "sut_batch.py")
    module_spec = importlib.util.spec_from_file_location("sut_batch_under_test", path)
    sut_batch = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(sut_batch)

    class Factory:
        def getbasetemp(self):
            return tmp_path

    runs = sut_batch.SharedRuns(Factory())

    def crash():
        raise ValueError("cannot reshape array of size 8\nsecond line")

    with pytest.raises(ValueError) as first:
        runs.get("b", crash)
    with pytest.raises(sut_batch.BatchRunFailed) as other:
        runs.get("b", crash)
    assert str(other.value) == "the world run of batch b crashed: ValueError: cannot reshape array of size 8\nsecond line"
    assert failure_of(first.value) == failure_of(other.value) == (
        "ValueError", "cannot reshape array of size 8\nsecond line", False)


TIERED = '''
import pytest
from ascend_conformance.errors import Divergence

pytestmark = pytest.mark.sut("vllm_ascend")


@pytest.mark.parametrize("case", ["a", pytest.param("b", marks=pytest.mark.full)])
def test_tiered(case):
    raise Divergence(f"tier {case}")


@pytest.mark.full
def test_full_only():
    raise Divergence("full only")
'''


def test_counts_and_stale_notes_follow_the_tier(session):
    (session.path / "suites" / "test_tiered.py").write_text(TIERED)
    tiered = "suites/test_tiered.py::"
    _write(session, RELEASE_FILE, release_file(
        spec.render_entry({"pattern": tiered + "test_tiered[*]", "tests": 1, "full_tests": 2, "match": "^tier",
                           "finding": "f", "reference": "r"}) + "\n\n",
        spec.render_entry({"test": tiered + "test_full_only", "match": "full only", "finding": "f",
                           "reference": "r"}) + "\n"))
    default = _run(session, "suites/test_tiered.py")
    default.assert_outcomes(xfailed=1, skipped=2)  # a full-tier test is collected, skipped, and not counted
    assert not [line for line in default.outlines if line.startswith("expectations:")], default.outlines
    _run(session, "suites/test_tiered.py", "--full").assert_outcomes(xfailed=3)
    _write(session, RELEASE_FILE, release_file(
        spec.render_entry({"pattern": tiered + "test_tiered[*]", "tests": 2, "match": "^tier", "finding": "f",
                           "reference": "r"}) + "\n"))
    assert _usage_error(_run(session, "suites/test_tiered.py")).endswith(
        "says tests = 2 but matches 1 ids of the default tier: fix the pattern or the count")


def test_a_wrong_count_under_xdist_stops_the_run_with_its_line(session):
    """An xdist worker cannot raise a usage error (the controller would show only an INTERNALERROR naming a
    test): it runs nothing and the controller prints the entry's problem, exit status 2."""
    (session.path / "suites" / "test_tiered.py").write_text(TIERED)
    _write(session, RELEASE_FILE, release_file(
        spec.render_entry({"pattern": "suites/test_tiered.py::test_tiered[*]", "tests": 2, "match": "^tier",
                           "finding": "f", "reference": "r"}) + "\n"))
    run = session.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--results-dir=", "suites/test_tiered.py",
                                       timeout=HANG_GUARD)
    assert run.ret == pytest.ExitCode.INTERRUPTED, run.outlines
    assert not [line for line in run.outlines + run.errlines if "INTERNALERROR" in line], run.outlines
    assert [line for line in run.outlines if "Interrupted: " in line and
            line.rstrip(" !").endswith("says tests = 2 but matches 1 ids of the default tier: fix the pattern or the "
                                       "count")], run.outlines


def test_records_tell_a_known_crash_from_a_known_divergence_across_xdist(session):
    """The record of a waived test says which kind of entry waived it (the matrix counts them apart), also
    when the report crossed from an xdist worker."""
    _write(session, RELEASE_FILE, release_file(*ENTRIES))
    results_dir = session.path / "results"
    session.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", f"--results-dir={results_dir}",
                                 f"{TEST}test_diverges", f"{TEST}test_known_crash", timeout=HANG_GUARD)
    records = [json.loads(line) for path in results_dir.glob("*.jsonl") for line in path.read_text().splitlines()]
    kinds = {record["nodeid"]: record.get("expectation_kind") for record in records if "nodeid" in record}
    assert kinds == {TEST + "test_diverges": "divergence", TEST + "test_known_crash": "crash"}, kinds
