"""The acceptance bundle: one tar.gz a vendor submits and a reviewer verifies.

Members (``bundle.json`` first; it says what the bundle is)::

    bundle.json          format, profile, suite version, mustpass list, sessions run, tests not in the list
    manifest.json        suite version + sha256 of every suite, fixture and package file and the list
    mustpass.txt         the profile's mustpass list as run
    profile.json         the profile's rules and host requirements as run
    environment.json     platform, SoC, device count, driver, firmware, CANN, torch, torch_npu, vllm, ...
    expectations/*.toml  the known divergences of the installed releases of the systems under test
    results.json         the merged result records; results/ the records, collections, completion marks
    junit.xml            JUnit XML (junit-bench.xml for the benchmark session, when there is one)
    allure-results/      the Allure results
    benchmarks/*.json    benchmark JSON in pytest-benchmark's schema (when the run wrote any)
    console.log          everything pytest printed
    index.html           the HTML report

:func:`write` writes the bundle whole or not at all (a temporary file renamed into place);
:func:`read` loads one into memory, or raises a one-line ConfigError when the file is not a bundle.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Mapping

from ascend_conformance.errors import ConfigError

FORMAT = "ascend-conformance-acceptance-bundle"
FORMAT_VERSION = 1
INDEX = "bundle.json"
MAX_MEMBER = 512 << 20  # bytes; anything larger is not something this suite writes


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write(out_path: str, index: Mapping, members: Mapping[str, str | bytes]) -> str:
    """Write ``index`` as bundle.json and every member (a file on disk or bytes) into ``out_path``.

    Nothing is left at ``out_path`` (nor a temporary file) when writing fails."""
    out_path = os.path.abspath(out_path)
    tmp = os.path.join(os.path.dirname(out_path), f".{os.path.basename(out_path)}.tmp{os.getpid()}")
    now = time.time()
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            _add(tar, INDEX, json.dumps(dict(index), indent=1, default=str).encode(), now)
            for name in sorted(members):
                source = members[name]
                if isinstance(source, (bytes, bytearray)):
                    _add(tar, name, bytes(source), now)
                else:
                    with open(source, "rb") as handle:
                        _add(tar, name, handle.read(), os.path.getmtime(source))
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out_path


class Bundle:
    """A bundle read into memory: ``index`` (bundle.json) and ``members`` (name -> bytes)."""

    def __init__(self, path: str, index: dict, members: dict[str, bytes]):
        self.path, self.index, self.members = path, index, members

    def has(self, name: str) -> bool:
        return name in self.members

    def text(self, name: str) -> str | None:
        data = self.members.get(name)
        return None if data is None else data.decode("utf-8", errors="replace")

    def json(self, name: str):
        """The member parsed as JSON; None when absent; ValueError when it is not JSON."""
        text = self.text(name)
        return None if text is None else json.loads(text)

    def names(self, prefix: str = "", suffix: str = "") -> list[str]:
        return sorted(n for n in self.members if n.startswith(prefix) and n.endswith(suffix))


def read(path: str) -> Bundle:
    """The bundle at ``path``; a one-line ConfigError when it is missing or not an acceptance bundle."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not an acceptance bundle (.tar.gz)")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name
                if name.startswith("/") or ".." in name.split("/"):
                    raise ConfigError(f"{path}: member {name!r} has an unsafe path: not an acceptance bundle")
                if info.size > MAX_MEMBER:
                    raise ConfigError(f"{path}: member {name} is {info.size} bytes: not an acceptance bundle")
                handle = tar.extractfile(info)
                members[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"{path} is not an acceptance bundle: not a readable tar.gz ({exc})") from None
    if INDEX not in members:
        raise ConfigError(f"{path} is not an acceptance bundle: it has no {INDEX}")
    try:
        index = json.loads(members[INDEX].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not an acceptance bundle: {INDEX} is not JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an acceptance bundle: {INDEX} does not say format {FORMAT}")
    if index.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: bundle format version {index.get('format_version')!r}; this verifier reads "
                          f"version {FORMAT_VERSION}")
    for key in ("profile", "suite_version"):
        if not isinstance(index.get(key), str) or not index[key]:
            raise ConfigError(f"{path} is not an acceptance bundle: {INDEX} names no {key}")
    return Bundle(path, index, members)
