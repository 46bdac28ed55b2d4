"""Expectations files of the systems under test: what they say, how an entry names its tests and its failure.

The one reader of ``suites/expectations/*.toml`` and of the reason string ``<finding> [<reference>]``, used by
the pytest plugin (``fixtures/expectations.py``), the HTML report and the acceptance verifier. Pure: no
pytest, no import of the systems under test. The format is described in docs/systems_under_test.md
("Expectations"); in short, two files apply to an installed release:

* ``<sut>-<release name>.toml`` (``vllm_ascend-0.23.0.post1.toml``, ``vllm_ascend-main.toml``): top keys
  ``sut``, ``release`` and, for a checkout such as main, the ``commit`` it was established on; its entries
  carry no ``versions``;
* ``<sut>.toml``: findings that hold across release lines, each entry with a required ``versions``
  (a PEP 440 specifier set matched against :attr:`Release.comparable <ascend_conformance.sut.installed.Release>`).

Each ``[[expectation]]`` names its tests with ``test`` (one exact node id) or ``pattern`` (``*`` is the only
special character) plus ``tests`` (how many ids of the default tier it must match; ``full_tests`` for a
``--full`` run), the failure with ``kind`` (``divergence`` or ``crash``; a crash also names its
``exception``) and ``match`` (a regular expression searched in the failure's message), and says what it is
with ``finding`` and ``reference``.

>>> entry = parse_text('''
... sut = "vllm"
... release = "1.0"
... [[expectation]]
... pattern = "suites/test_x.py::test_y[*-a]"
... tests = 2
... match = "sums in place"
... finding = "all_reduce is in place"
... reference = "vllm/parallel_state.py"
... ''', "vllm-1.0.toml", sut="vllm", release="1.0").entries[0]
>>> entry.covers("suites/test_x.py::test_y[W4-a]"), entry.covers("suites/test_x.py::test_y[W4-b]")
(True, False)
>>> entry.waives("Divergence", "all_reduce sums in place into the input", divergence=True)
True
>>> entry.waives("Divergence", "wrong sum", divergence=True)
False
>>> split_reason(entry.reason)
('all_reduce is in place', 'vllm/parallel_state.py')
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from ascend_conformance.errors import ConfigError

DIRECTORY = os.path.join("suites", "expectations")
TABLE = "expectation"
KINDS = ("divergence", "crash")
RELEASE_FILE_KEYS = ("sut", "release", "commit", TABLE)
SHARED_FILE_KEYS = ("sut", TABLE)
ENTRY_KEYS = ("test", "pattern", "tests", "full_tests", "kind", "exception", "match", "finding", "reference",
              "versions")
_TEXT_KEYS = ("finding", "reference", "match")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExpectationsError(ConfigError):
    """An expectations file that cannot be applied: one line naming the file, the entry and the value."""


def compile_pattern(pattern: str) -> re.Pattern:
    """A node-id pattern as a regular expression: ``*`` is any run of characters, everything else literal
    (``[``, ``]``, ``?`` included), so a parametrised id is written as it reads.

    >>> bool(compile_pattern("t.py::f[a?-*]").fullmatch("t.py::f[a?-b]"))
    True
    >>> bool(compile_pattern("t.py::f[ab]").fullmatch("t.py::fa"))
    False
    """
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def format_reason(finding: str, reference: str) -> str:
    """The xfail reason of an expectation: ``<finding> [<reference>]``."""
    return f"{finding} [{reference}]"


def split_reason(reason: str) -> tuple[str, str]:
    """``(finding, reference)`` of an xfail reason :func:`format_reason` wrote; any other reason is all finding.

    >>> split_reason("otp crosses PP stages [vllm_ascend/distributed/parallel_state.py]")
    ('otp crosses PP stages', 'vllm_ascend/distributed/parallel_state.py')
    >>> split_reason("flaky on gloo")
    ('flaky on gloo', '')
    """
    if reason.endswith("]") and " [" in reason:
        cut = reason.rindex(" [")
        return reason[:cut], reason[cut + 2:-1]
    return reason, ""


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str  # the file, as shown (relative to the rootdir)
    index: int  # 1-based position in the file's [[expectation]] list
    kind: str  # "divergence" | "crash"
    match: str  # a regular expression re.search'ed in the failure's message
    finding: str
    reference: str
    test: str | None = None  # an exact node id ...
    pattern: str | None = None  # ... or a pattern with the counts it must match
    tests: int | None = None  # ids of the default tier the pattern matches
    full_tests: int | None = None  # ids of a --full run the pattern matches (unchecked when absent)
    exception: str | None = None  # a crash entry's exception type name
    versions: str | None = None  # a shared file's PEP 440 specifier set

    @property
    def reason(self) -> str:
        return format_reason(self.finding, self.reference)

    @property
    def target(self) -> str:
        return self.test if self.test is not None else self.pattern

    @property
    def test_file(self) -> str:
        """The test file the entry names (the part of its id or pattern before ``::``)."""
        return self.target.split("::")[0]

    def describe(self) -> str:
        return f"{self.path} entry {self.index} ({'test' if self.test is not None else 'pattern'} = {self.target!r})"

    def covers(self, nodeid: str) -> bool:
        if self.test is not None:
            return nodeid == self.test
        return compile_pattern(self.pattern).fullmatch(nodeid) is not None

    def expected_count(self, full: bool) -> int | None:
        """How many ids a pattern must match in this tier (None: an exact id, or unchecked)."""
        return self.full_tests if full else self.tests

    def applies_to(self, comparable: str) -> bool:
        """Whether the entry applies to a release ordered as ``comparable`` (its ``versions`` range, if any)."""
        if self.versions is None:
            return True
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(self.versions).contains(comparable, prereleases=True)

    def expects(self) -> str:
        """What failure the entry waives, for messages: ``a Divergence matching r'...'``."""
        what = "a Divergence" if self.kind == "divergence" else f"a crash {self.exception}"
        return f"{what} matching r'{self.match}'"

    def waives(self, exception_type: str, message: str, *, divergence: bool) -> bool:
        """Whether a failure (its exception's type name, message, and whether it is a Divergence) is the
        one this entry records."""
        if self.kind == "divergence":
            if not divergence:
                return False
        elif exception_type != self.exception:
            return False
        return re.search(self.match, message) is not None


@dataclasses.dataclass(frozen=True)
class ExpectationsFile:
    path: str  # as shown
    sut: str
    release: str | None  # None: the shared file of every release line
    commit: str | None
    entries: tuple[Entry, ...]


def release_file_name(sut: str, release_name: str) -> str:
    return f"{sut}-{release_name}.toml"


def shared_file_name(sut: str) -> str:
    return f"{sut}.toml"


def _problem(shown: str, problem: str) -> ExpectationsError:
    return ExpectationsError(f"{shown}: {problem}".replace("\n", " "))


def _one_line(shown: str, where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise _problem(shown, f"{where}: {key} must be one non-empty line, got {value!r}")
    return value


def _entry(shown: str, index: int, raw, shared: bool) -> Entry:
    where = f"expectation {index}"
    if not isinstance(raw, dict):
        raise _problem(shown, f"{where} is not a table")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise _problem(shown, f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(ENTRY_KEYS)})")
    kind = raw.get("kind", "divergence")
    if kind not in KINDS:
        raise _problem(shown, f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    required = [*_TEXT_KEYS, *(["exception"] if kind == "crash" else []), *(["versions"] if shared else [])]
    missing = [key for key in required if key not in raw]
    if ("test" in raw) == ("pattern" in raw):
        missing.insert(0, "exactly one of test, pattern")
    if missing:
        raise _problem(shown, f"{where}: missing {', '.join(missing)}")
    fields = {key: _one_line(shown, where, key, raw[key]) for key in _TEXT_KEYS}
    try:
        re.compile(fields["match"])
    except re.error as exc:
        raise _problem(shown, f"{where}: match {fields['match']!r} is not a regular expression: {exc}") from None
    if "test" in raw:
        fields["test"] = _one_line(shown, where, "test", raw["test"])
        for key in ("tests", "full_tests"):
            if key in raw:
                raise _problem(shown, f"{where}: {key} counts the ids of a pattern; test names one id")
    else:
        fields["pattern"] = _one_line(shown, where, "pattern", raw["pattern"])
        if "*" not in fields["pattern"]:
            raise _problem(shown, f"{where}: pattern {fields['pattern']!r} has no '*': write it as test")
        if "tests" not in raw:
            raise _problem(shown, f"{where}: pattern {fields['pattern']!r} without tests (the number of "
                                  f"default-tier ids it must match)")
        for key in ("tests", "full_tests"):
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise _problem(shown, f"{where}: {key} must be a whole number >= 1, got {value!r}")
                fields[key] = value
    if kind == "crash":
        exception = raw["exception"]
        if not isinstance(exception, str) or not _IDENTIFIER.match(exception):
            raise _problem(shown, f"{where}: exception must be an exception type's name, got {exception!r}")
        fields["exception"] = exception
    elif "exception" in raw:
        raise _problem(shown, f"{where}: exception belongs to kind = \"crash\" entries")
    if "versions" in raw:
        if not shared:
            raise _problem(shown, f"{where}: versions belongs in the shared file of every release line, not "
                                  f"in a release's own file")
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        versions = raw["versions"]
        try:
            SpecifierSet(versions)
        except (InvalidSpecifier, TypeError):
            raise _problem(shown, f"{where}: versions {versions!r} is not a PEP 440 specifier set "
                                  f"(e.g. \">=0.13,<0.28\")") from None
        fields["versions"] = versions
    return Entry(path=shown, index=index, kind=kind, **fields)


def parse_text(text: str, shown: str, *, sut: str, release: str | None) -> ExpectationsFile:
    """The expectations of one file's text; ``release`` None reads the shared file of ``sut``. A malformed
    file raises one :class:`ExpectationsError` line."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _problem(shown, f"not valid TOML: {exc}") from None
    shared = release is None
    allowed = SHARED_FILE_KEYS if shared else RELEASE_FILE_KEYS
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _problem(shown, f"unknown top-level key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    if data.get("sut") != sut:
        raise _problem(shown, f"sut = {data.get('sut')!r}: the file name says {sut!r}")
    if not shared and data.get("release") != release:
        raise _problem(shown, f"release = {data.get('release')!r}: the file name says {release!r}")
    commit = data.get("commit")
    if commit is not None and not (isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{7,40}", commit)):
        raise _problem(shown, f"commit must be a git commit id (7-40 hex digits), got {commit!r}")
    raw_entries = data.get(TABLE, [])
    if not isinstance(raw_entries, list):
        raise _problem(shown, f"{TABLE} must be an array of tables ([[{TABLE}]])")
    entries = tuple(_entry(shown, index, raw, shared) for index, raw in enumerate(raw_entries, 1))
    refuse_overlaps(entries, ())
    return ExpectationsFile(shown, sut, release, commit, entries)


def parse_file(path: str, shown: str, *, sut: str, release: str | None) -> ExpectationsFile:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise _problem(shown, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise _problem(shown, f"not UTF-8 text: {exc}") from None
    return parse_text(text, shown, sut=sut, release=release)


def files_for(root: str, sut: str, release_name: str) -> list[tuple[str, str, str | None]]:
    """``(path, shown, release or None)`` of the files that apply to ``sut``'s release ``release_name``
    and exist under ``root``: its own file first, then the shared one."""
    found = []
    for name, release in ((release_file_name(sut, release_name), release_name), (shared_file_name(sut), None)):
        shown = os.path.join(DIRECTORY, name)
        path = os.path.join(root, shown)
        if os.path.isfile(path):
            found.append((path, shown, release))
    return found


def refuse_overlaps(entries: Sequence[Entry], nodeids: Iterable[str]) -> None:
    """One :class:`ExpectationsError` line naming two entries that name the same test: the same exact id,
    or both covering one of ``nodeids`` (the collected ids)."""
    exact: dict[str, Entry] = {}
    for entry in entries:
        if entry.test is not None:
            first = exact.setdefault(entry.test, entry)
            if first is not entry:
                raise _overlap(first, entry, entry.test)
    patterns = [entry for entry in entries if entry.pattern is not None]
    if not patterns:
        return
    for nodeid in nodeids:
        covering = [entry for entry in patterns if entry.covers(nodeid)]
        if nodeid in exact:
            covering.insert(0, exact[nodeid])
        if len(covering) > 1:
            raise _overlap(covering[0], covering[1], nodeid)


def _overlap(first: Entry, second: Entry, nodeid: str) -> ExpectationsError:
    return ExpectationsError(f"expectations overlap: {first.describe()} and {second.describe()} both name "
                             f"{nodeid}; one test has one expectation")


def entry_for(entries: Sequence[Entry], nodeid: str) -> Entry | None:
    """The entry naming ``nodeid`` (overlaps are refused beforehand, so there is at most one)."""
    return next((entry for entry in entries if entry.covers(nodeid)), None)


def count_problem(entry: Entry, matched: int, full: bool) -> str | None:
    """The usage-error line when a pattern matches another number of ids than it says, else None."""
    expected = entry.expected_count(full)
    if entry.pattern is None or expected is None or matched == expected:
        return None
    key = "full_tests" if full else "tests"
    tier = "a --full run" if full else "the default tier"
    return (f"{entry.describe()} says {key} = {expected} but matches {matched} ids of {tier}: fix the pattern "
            f"or the count")


# -- suggestions from a run (ascend-conformance expectations --from results.json) ---------------------------

MATCH_LENGTH = 120  # characters of a message's first line kept in a suggested match


def first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def suggested_match(message: str) -> str:
    """A ``match`` for a failure message: its first line, re.escape'd, cut at a word boundary after
    :data:`MATCH_LENGTH` characters (a prefix search still names the one finding).

    >>> suggested_match("vllm 0.23.0 all_reduce (3 checks) differs")
    'vllm\\\\ 0\\\\.23\\\\.0\\\\ all_reduce\\\\ \\\\(3\\\\ checks\\\\)\\\\ differs'
    """
    line = first_line(message)
    if len(line) > MATCH_LENGTH:
        cut = line.rfind(" ", 0, MATCH_LENGTH)
        line = line[:cut if cut > MATCH_LENGTH // 2 else MATCH_LENGTH]
    return re.escape(line)


def toml_string(value: str, literal: bool = False) -> str:
    """A TOML string: with ``literal``, a literal one where the value allows (a regular expression then reads
    as written, without doubled backslashes), else a basic string.

    >>> print(toml_string(r"a\.b", literal=True), toml_string(r"it's \d", literal=True), toml_string('say "x"'))
    'a\.b' '''it's \d''' "say \\"x\\""
    """
    printable = all(c >= " " or c == "\t" for c in value)
    if literal and printable and "'" not in value:
        return f"'{value}'"
    if literal and printable and "'''" not in value and not value.endswith("'"):
        return f"'''{value}'''"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c >= " " or c == "\t" else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def render_entry(fields: Mapping[str, object]) -> str:
    """One ``[[expectation]]`` table, keys in the documented order."""
    lines = [f"[[{TABLE}]]"]
    for key in ENTRY_KEYS:
        if key in fields and fields[key] is not None:
            value = fields[key]
            shown = value if isinstance(value, int) else toml_string(str(value), literal=key in ("match", "pattern"))
            lines.append(f"{key} = {shown}")
    return "\n".join(lines)


__all__ = ["DIRECTORY", "Entry", "ExpectationsError", "ExpectationsFile", "compile_pattern", "count_problem",
           "entry_for", "files_for", "first_line", "format_reason", "parse_file", "parse_text", "refuse_overlaps",
           "release_file_name", "render_entry", "shared_file_name", "split_reason", "suggested_match",
           "toml_string"]
