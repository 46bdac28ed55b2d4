"""The project's documentation links and its references to docs/ all resolve.

1. Markdown links: every relative link ``[text](target)`` in README.md and docs/<name>.md points at an
   existing file (relative to the document holding the link), and a ``#anchor`` names a heading of
   that file (GitHub's heading slugs; a bare ``#anchor`` names a heading of the document itself).
2. Text references: every ``docs/<name>.md`` written in the code, tests, suites, benchmarks, fixtures,
   top-level files and the documents names an existing file (from the repository root), and
   ``docs/<name>.md#anchor`` or ``docs/<name>.md`` + section sign + ``anchor`` names a heading of it.
   A section sign that follows no such reference points into a document nobody can find (the style of
   the old out-of-tree spec, "see X section n") and is reported too.
3. The checker itself: on a temporary tree every kind of dangling reference is reported, with its file
   and line, and a tree without one reports nothing.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SECTION_SIGN = "\u00a7"
# Directories that are not the project's text: VCS, environments, caches, build output, test output.
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "reports", "build", "dist", "__pycache__"}
SCANNED_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".sh", ".yml", ".yaml"}
SCANNED_NAMES = {"Makefile"}

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# docs/<name>.md, optionally followed by #anchor or by a section sign and an anchor.
_DOC_REFERENCE = re.compile(r"docs/([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*\.md)"
                            r"(?:#([\w-]+)|[ \t]*" + SECTION_SIGN + r"[ \t]*([\w-]+))?")


# ------------------------------------------------------------------------------------------ the checker

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, code marks dropped, lower case, characters other
    than letters, digits, '_', '-' and spaces removed, spaces turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in document.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(f"{base}-{counts[base]}" if base in counts else base)
            counts[base] = counts.get(base, 0) + 1
    return found


def markdown_documents(root: Path) -> list[Path]:
    docs = sorted((root / "docs").glob("*.md")) if (root / "docs").is_dir() else []
    return [path for path in [root / "README.md", *docs] if path.is_file()]


def _where(root: Path, path: Path, number: int) -> str:
    return f"{path.relative_to(root)}:{number}"


def markdown_link_problems(root: Path) -> list[str]:
    """One line per relative link in README.md and docs/<name>.md whose file or heading is missing."""
    problems = []
    for document in markdown_documents(root):
        in_fence = False
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            if _FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            for match in _LINK.finditer(_CODE_SPAN.sub("code", line)):
                target = match.group(1)
                if not target or _SCHEME.match(target):
                    continue  # absolute URLs are not ours to check
                path_part, _, anchor = target.partition("#")
                linked = (document.parent / path_part).resolve() if path_part else document
                where = _where(root, document, number)
                if not linked.exists():
                    problems.append(f"{where}: link {target} points at {path_part}, which does not exist")
                elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                    problems.append(f"{where}: link {target}: {linked.relative_to(root)} has no heading "
                                    f"with anchor #{anchor}")
    return problems


def scanned_files(root: Path) -> list[Path]:
    """The project's own text files: code, tests, suites, benchmarks, fixtures, documents, build files."""
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories
                                   if d not in SKIPPED_DIRS and not d.startswith(".") and not d.endswith(".egg-info"))
        for name in sorted(names):
            path = Path(directory) / name
            if path.suffix in SCANNED_SUFFIXES or name in SCANNED_NAMES:
                files.append(path)
    return files


def text_reference_problems(root: Path) -> list[str]:
    """One line per docs/<name>.md reference (with its anchor, if any) that does not resolve, and per
    section sign that is not part of such a reference."""
    problems = []
    anchor_cache: dict[Path, set[str]] = {}
    for path in scanned_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            where = _where(root, path, number)
            covered = []
            for match in _DOC_REFERENCE.finditer(line):
                covered.append(match.span())
                name, anchor = match.group(1), match.group(2) or match.group(3)
                target = root / "docs" / name
                if not target.is_file():
                    problems.append(f"{where}: docs/{name} does not exist")
                    continue
                if anchor:
                    known = anchor_cache.setdefault(target, anchors(target))
                    if anchor not in known:
                        problems.append(f"{where}: docs/{name} has no heading with anchor {anchor}")
            for position in (m.start() for m in re.finditer(SECTION_SIGN, line)):
                if not any(start <= position < end for start, end in covered):
                    problems.append(f"{where}: section sign without a docs/<name>.md reference before it: "
                                    f"{line.strip()[:80]}")
    return problems


# ------------------------------------------------------------------------------------- the project

def test_markdown_links_in_readme_and_docs_resolve():
    problems = markdown_link_problems(ROOT)
    assert not problems, "dangling markdown links:\n" + "\n".join(problems)


def test_every_docs_reference_in_the_project_resolves():
    problems = text_reference_problems(ROOT)
    assert not problems, "dangling references to docs/:\n" + "\n".join(problems)


def test_the_index_lists_every_document():
    index = ROOT / "docs" / "README.md"
    assert index.is_file(), "docs/README.md (the index of the documents) is missing"
    linked = {match.group(1).partition("#")[0] for match in _LINK.finditer(index.read_text(encoding="utf-8"))}
    documents = {path.name for path in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert documents <= linked, f"documents missing from docs/README.md: {sorted(documents - linked)}"


# ---------------------------------------------------------------------------------- the checker itself

def test_slugs_follow_githubs_rule():
    assert slug("Rank layout and group kinds") == "rank-layout-and-group-kinds"
    assert slug("`p_tp`") == "p_tp"
    assert slug("otp, lmheadtp, emtp, mlptp (fine-grained TP)") == "otp-lmheadtp-emtp-mlptp-fine-grained-tp"
    assert slug("The [ring](x.md) & its windows") == "the-ring--its-windows"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


# Built without a literal "docs/" so that scanning this file does not see them as references.
DOCS = "docs"
SIGN = SECTION_SIGN

_GOOD = {
    "README.md": f"# Project\n\nSee [the layout]({DOCS}/a.md#a-title) and [b]({DOCS}/b.md).\n",
    f"{DOCS}/README.md": "# Index\n\n- [a](a.md)\n- [b](b.md#twice-1)\n",
    f"{DOCS}/a.md": "# A title\n\n## Part\n\n[back](../README.md) [here](#part)\n\n```\n# not a heading\n```\n",
    f"{DOCS}/b.md": "# Twice\n\n## Twice\n",
    "pkg/module.py": f'"""Follows {DOCS}/a.md, see {DOCS}/a.md#part and {DOCS}/b.md {SIGN}twice."""\n',
}


def test_a_tree_without_dangling_references_reports_nothing(tmp_path):
    root = _tree(tmp_path, _GOOD)
    assert markdown_link_problems(root) == []
    assert text_reference_problems(root) == []


def test_each_kind_of_dangling_reference_is_reported_with_its_line(tmp_path):
    root = _tree(tmp_path, {
        **_GOOD,
        "README.md": _GOOD["README.md"] + f"[gone]({DOCS}/gone.md) [bad anchor]({DOCS}/a.md#no-such)\n",
        f"{DOCS}/a.md": _GOOD[f"{DOCS}/a.md"] + "[self](#not-here) [up](../missing.py) [b](b.md#twice-2)\n"
                                               "[fenced](#not-a-heading) `[not a link](nowhere.md)`\n",
        "pkg/module.py": _GOOD["pkg/module.py"] + f"# {DOCS}/gone.md\n# {DOCS}/a.md#no-such\n"
                                                  f"# {DOCS}/b.md {SIGN}no-such\n# see OLD_SPEC.md {SIGN}3\n",
        "suites/test_x.py": f"# {DOCS}/layout.md, the invariants\n",
        "Makefile": f"# {DOCS}/cli.md\n",
    })
    assert markdown_link_problems(root) == [
        f"README.md:4: link {DOCS}/gone.md points at {DOCS}/gone.md, which does not exist",
        f"README.md:4: link {DOCS}/a.md#no-such: {DOCS}/a.md has no heading with anchor #no-such",
        f"{DOCS}/a.md:10: link #not-here: {DOCS}/a.md has no heading with anchor #not-here",
        f"{DOCS}/a.md:10: link ../missing.py points at ../missing.py, which does not exist",
        f"{DOCS}/a.md:10: link b.md#twice-2: {DOCS}/b.md has no heading with anchor #twice-2",
        f"{DOCS}/a.md:11: link #not-a-heading: {DOCS}/a.md has no heading with anchor #not-a-heading",
    ]
    problems = text_reference_problems(root)
    for expected in (f"Makefile:1: {DOCS}/cli.md does not exist",
                     f"README.md:4: {DOCS}/gone.md does not exist",
                     f"README.md:4: {DOCS}/a.md has no heading with anchor no-such",
                     f"pkg/module.py:2: {DOCS}/gone.md does not exist",
                     f"pkg/module.py:3: {DOCS}/a.md has no heading with anchor no-such",
                     f"pkg/module.py:4: {DOCS}/b.md has no heading with anchor no-such",
                     f"pkg/module.py:5: section sign without a {DOCS}/<name>.md reference before it: "
                     f"# see OLD_SPEC.md {SIGN}3",
                     f"suites/test_x.py:1: {DOCS}/layout.md does not exist"):
        assert expected in problems, (expected, problems)
    assert len(problems) == 8, problems


def test_the_project_checks_fail_on_a_dangling_reference(tmp_path, monkeypatch):
    """The project check above, pointed at a copy of this project's documents plus one file with a
    dangling reference, fails and names it."""
    files = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in markdown_documents(ROOT)}
    files["suites/test_new.py"] = f'"""Checks the rule of {DOCS}/layout.md#no-such-section."""\n'
    monkeypatch.setattr(sys.modules[__name__], "ROOT", _tree(tmp_path, files))
    try:
        test_every_docs_reference_in_the_project_resolves()
    except AssertionError as failure:
        assert f"suites/test_new.py:1: {DOCS}/layout.md has no heading with anchor no-such-section" in str(failure)
    else:
        raise AssertionError("a dangling reference did not fail the project check")
