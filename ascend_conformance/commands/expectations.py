"""`ascend-conformance expectations --from reports/results.json`: the expectation entries a run suggests.

Reads a merged results file (or a results directory) and prints, per expectations file of the release each
record names, TOML to review and paste: a new ``[[expectation]]`` for each failed test of a system under test
that failed with a Divergence (``match`` from the message's first line, re.escape'd; ``finding`` the message
itself) or crashed (``kind = "crash"`` with its exception type); for each XPASS the entry to delete; for each
test whose entry did not match the failure it got, the entry and the message. It never edits a file, and
writes no ``reference``: only a person who read the release's source can name it, and the file refuses an
entry without one.
"""
from __future__ import annotations

import argparse
import re

NAME = "expectations"
HELP = "print the expectations-file entries a run suggests (new divergences and crashes, XPASSes to delete)"

FINDING_LENGTH = 300  # characters of the message kept as a suggested finding
_XPASS = re.compile(r"^\[XPASS\(strict\)\] \S+ no longer .*?: delete (?P<file>\S+) entry (?P<index>\d+) ")
_NOT_MATCHED = re.compile(r"^\[expectation not matched\] (?P<file>\S+) entry (?P<index>\d+) .*?; got "
                          r"(?P<got>a Divergence|\w+): (?P<message>.*)$")
_RAISED = re.compile(r"^(?:[\w.]+\.)?(?P<type>\w+): (?P<message>.*)$", re.DOTALL)
_BATCH = re.compile(r"^the world run of batch \S+ crashed: (?P<type>\w+): (?P<message>.*)$", re.DOTALL)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="RESULTS",
                        help="merged results.json (or a results directory) of a run of the SUT suites")


def _file_of(sut_label: str) -> str | None:
    """The expectations file of the release a record names: ``vllm_ascend 0.23.0.post1`` ->
    ``suites/expectations/vllm_ascend-0.23.0.post1.toml``; a checkout ``vllm_ascend main@182b75ea84`` -> main's."""
    from ascend_conformance import expectations as spec

    sut, _, release = sut_label.partition(" ")
    release = release.split("@")[0]
    if not release or release == "not":  # "vllm not installed"
        return None
    return f"{spec.DIRECTORY}/{spec.release_file_name(sut, release)}"


def _raised(record: dict) -> tuple[str, str] | None:
    """``(exception type name, first line of its message)`` of a failed record, from the exception line
    pytest reported (``ascend_conformance.errors.Divergence: ...``); a ``BatchRunFailed`` stands for the crash
    of its batch's world run, which it names."""
    found = _RAISED.match(str(record.get("reason") or ""))
    if found is None:
        return None
    batch = _BATCH.match(found["message"])
    if found["type"] == "BatchRunFailed" and batch is not None:
        return batch["type"], batch["message"]
    return found["type"], found["message"]


def suggestions(document: dict) -> dict[str, list[str]]:
    """Expectations file -> the TOML / comment blocks suggested for it, in record order."""
    from ascend_conformance import expectations as spec

    by_file: dict[str, list[str]] = {}
    for record in document.get("tests") or []:
        if not isinstance(record, dict) or record.get("outcome") not in ("failed", "error"):
            continue
        target = _file_of(str(record.get("sut") or "reference"))
        nodeid, reason = str(record.get("nodeid")), str(record.get("reason") or "")
        if target is None or record.get("outcome") == "error":
            continue  # the reference, or a setup / teardown error: nothing an expectation records
        xpass, unmatched = _XPASS.match(reason), _NOT_MATCHED.match(reason)
        if xpass is not None:
            by_file.setdefault(xpass["file"], []).append(
                f"# delete entry {xpass['index']} of {xpass['file']}: {nodeid} passes")
            continue
        if unmatched is not None:
            by_file.setdefault(unmatched["file"], []).append(
                f"# entry {unmatched['index']} of {unmatched['file']} did not match {nodeid}: it got "
                f"{unmatched['got']}: {unmatched['message']}\n#   a second finding of the test, or the entry's "
                f"match to correct: read the message before changing either")
            continue
        raised = _raised(record)
        if raised is None:
            continue
        kind, message = raised
        finding = spec.first_line(message)
        if not finding:
            continue
        fields = {"test": nodeid, "match": spec.suggested_match(message),
                  "finding": finding if len(finding) <= FINDING_LENGTH else finding[:FINDING_LENGTH] + " ..."}
        if kind != "Divergence":
            fields = {**fields, "kind": "crash", "exception": kind}
        by_file.setdefault(target, []).append(
            spec.render_entry(fields) + "\n# reference = \"...\" is required: the release's file and function "
                                        "that do it, read in its source")
    return by_file


def run(args: argparse.Namespace) -> int:
    from ascend_conformance.errors import ConfigError
    from ascend_conformance.report import results

    try:
        document = results.load(args.source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--from {args.source}: {exc}") from None
    found = suggestions(document)
    if not found:
        print(f"# {args.source}: no failed test of a system under test; nothing to suggest")
        return 0
    print(f"# suggested from {args.source}; no file was edited")
    for path, blocks in found.items():
        print(f"\n# -- {path} ({len(blocks)} suggestion{'s' if len(blocks) != 1 else ''})")
        for block in blocks:
            print(f"\n{block}")
    return 0
