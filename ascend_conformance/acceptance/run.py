"""``acceptance run``: run exactly a profile's mustpass list and write the bundle.

Steps: read the committed list of the suite's version; collect the suite once to see which tests are
not in the list (printed, and named in the bundle) and which listed ones are benchmarks; run the
listed tests in one pytest session (xdist workers; the expectations of the installed systems under
test apply, as in any run), and the listed benchmarks, if any, in a second, serial one; merge the
records, build the HTML report, hash the suite, and pack everything into one tar.gz
(:mod:`~ascend_conformance.acceptance.bundle`). pytest's output streams to the terminal as it runs and
into the bundle's console.log. The work happens in a temporary directory that is removed afterwards;
the bundle appears whole or not at all.
"""
from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from ascend_conformance import expectations
from ascend_conformance.acceptance import bundle as bundle_mod
from ascend_conformance.acceptance import manifest, mustpass
from ascend_conformance.acceptance.checkout import Checkout, suite_version
from ascend_conformance.acceptance.profiles import Profile
from ascend_conformance.errors import ConfigError

SUT_NAMES = ("vllm", "vllm_ascend")


def default_out(profile: Profile, version: str) -> str:
    return os.path.join("reports", f"acceptance-{profile.name}-{version}.tar.gz")


def check_out_path(out: str, create_parent: bool = False) -> str:
    """``out`` when a bundle can be written there (its directory exists and is writable), else a ConfigError."""
    directory = os.path.dirname(os.path.abspath(out))
    if create_parent:
        os.makedirs(directory, exist_ok=True)
    if os.path.isdir(out):
        raise ConfigError(f"--out {out} is a directory: name the bundle file "
                          f"(e.g. {os.path.join(out, 'acceptance.tar.gz')})")
    if not os.path.isdir(directory):
        raise ConfigError(f"--out {out}: directory {directory} does not exist")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write in {directory}: {exc.strerror or exc}") from None
    return out


class _Console:
    """pytest's output, to the terminal as it comes and to console.log."""

    def __init__(self, path: str, echo: Callable[[str], None]):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self._echo = echo

    def line(self, text: str) -> None:
        self.write(text + "\n")

    def write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()
        self._echo(text)

    def run(self, command: list[str], cwd: str) -> int:
        self.line(f"$ {' '.join(command)}")
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.write(decoder.decode(chunk))
            self.write(decoder.decode(b"", final=True))
            return process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            process.stdout.close()

    def close(self) -> None:
        self._file.close()


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _pytest_command(python: str, checkout: Checkout, profile: Profile, work: str, junit: str,
                    selection: list[str]) -> list[str]:
    return [python, "-m", "pytest", "suites", "-p", "no:cacheprovider", "-p", mustpass.PLUGIN,
            f"--rootdir={checkout.root}", f"--acceptance-list={os.path.join(work, 'mustpass.txt')}",
            f"--junitxml={os.path.join(work, junit)}", f"--alluredir={os.path.join(work, 'allure-results')}",
            f"--results-dir={os.path.join(work, 'results')}", *platform_args(profile), *selection]


def platform_args(profile: Profile) -> list[str]:
    """The profile's collection options; under ``ASCEND_CONFORMANCE_PLATFORM=npu-emulated`` an npu profile
    runs on the emulated npu instead (its bundle's verdict is then EMULATED: docs/emulation.md)."""
    from ascend_conformance import platform as platforms

    args = mustpass.collection_args(profile)
    if os.environ.get(platforms.PLATFORM_ENV) != "npu-emulated":
        return args
    if profile.platform != "npu":
        raise ConfigError(f"npu-emulated stands in for the npu profiles only; profile {profile.name} runs on "
                          f"platform {profile.platform}")
    at = args.index("--platform")
    return args[:at] + ["--platform", "npu-emulated"] + args[at + 2:]


def _session(console: _Console, python: str, checkout: Checkout, profile: Profile, work: str, name: str, junit: str,
             selection: list[str]) -> dict:
    """Run one pytest session of the list; a ConfigError when pytest refused it or collected nothing."""
    console.line(f"acceptance: {name} session")
    code = console.run(_pytest_command(python, checkout, profile, work, junit, selection), checkout.root)
    if code == 4:
        raise ConfigError(f"pytest refused the {name} session (usage error): {_last_error(console.path)}")
    if code == 5:
        raise ConfigError(f"the {name} session collected none of the listed tests")
    return {"session": name, "exitstatus": code}


def _last_error(console_path: str) -> str:
    with open(console_path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR") or line.startswith("error")]
    return (errors or lines or ["no output"])[-1]


def run(checkout: Checkout, profile: Profile, out: str, workers: int | None = None, python: str | None = None,
        echo: Callable[[str], None] = _echo) -> str:
    """Run the profile's mustpass list and write the bundle to ``out``; returns its path."""
    python = python or sys.executable
    version = suite_version()
    listed = mustpass.committed(checkout, version, profile)
    platform_args(profile)  # an emulated run of a profile it cannot stand in for is refused before anything runs
    workers = profile.workers if workers is None else workers
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    started = time.time()
    work = tempfile.mkdtemp(prefix=f"ascend-acceptance-{profile.name}-")
    try:
        console = _Console(os.path.join(work, "console.log"), echo)
        try:
            console.line(f"acceptance: profile {profile.name} ({profile.host()}), mustpass {version}/{profile.name}: "
                         f"{len(listed.tests)} tests")
            with open(os.path.join(work, "mustpass.txt"), "w", encoding="utf-8") as handle:
                handle.write(listed.text())
            inventory_path = os.path.join(work, "inventory.json")
            distribute = ["-n", str(workers)] if workers > 0 else ["-p", "no:xdist"]
            exits = [_session(console, python, checkout, profile, work, "conformance", "junit.xml",
                              [f"--acceptance-inventory={inventory_path}", "-m", "not bench", *distribute])]
            if not os.path.exists(inventory_path):
                raise ConfigError(f"the conformance session stopped before its collection was done: "
                                  f"{_last_error(console.path)}")
            with open(inventory_path, encoding="utf-8") as handle:
                inventory = json.load(handle)["tests"]
            comparison = mustpass.compare(listed, mustpass.generate(checkout, version, profile, inventory))
            listed_set = set(listed.tests)
            benches = [entry["nodeid"] for entry in inventory
                       if entry["tier"] == "bench" and entry["nodeid"] in listed_set]
            if benches:
                exits.append(_session(console, python, checkout, profile, work, "benchmarks", "junit-bench.xml",
                                      ["-m", "bench", "-p", "no:xdist"]))
            if comparison.not_in_list:
                console.line(f"acceptance: {len(comparison.not_in_list)} test(s) of the suite are not in the list "
                             f"(added after it was made; not part of this acceptance), e.g. "
                             f"{comparison.not_in_list[0]}")
            if comparison.vanished:
                console.line(f"acceptance: {len(comparison.vanished)} listed test(s) are not selected from the suite "
                             f"today (they have no result), e.g. {comparison.vanished[0]}")
        finally:
            console.close()
        index = _assemble(checkout, profile, version, listed, comparison, exits, work, started)
        members = _members(checkout, work)
        return bundle_mod.write(out, index, members)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assemble(checkout: Checkout, profile: Profile, version: str, listed, comparison, exits, work: str,
              started: float) -> dict:
    """Write results.json, index.html, environment.json, profile.json, manifest.json and the expectations
    into ``work``; returns bundle.json's content."""
    from ascend_conformance.report import benchmarks, html, results

    document = results.merge_directory(os.path.join(work, "results"), os.path.join(work, "results.json"))
    bench_dir = os.path.join(work, "benchmarks")
    rows = benchmarks.load_all([bench_dir]) if os.path.isdir(bench_dir) else []
    html.write(os.path.join(work, "index.html"), document, rows,
               f"ascend-conformance acceptance: {profile.name}, suite {version}")
    environment = dict(document.get("environment") or {})
    os.makedirs(os.path.join(work, "expectations"), exist_ok=True)
    for sut in SUT_NAMES:
        release = environment.get(sut)
        for source, _, _ in (expectations.files_for(checkout.root, sut, str(release)) if release else ()):
            shutil.copyfile(source, os.path.join(work, "expectations", os.path.basename(source)))
    for name, content in (("environment.json", environment), ("profile.json", profile.to_dict()),
                          ("manifest.json", manifest.compute(checkout, version, [profile.name]))):
        with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=1)
    return {"format": bundle_mod.FORMAT, "format_version": bundle_mod.FORMAT_VERSION, "profile": profile.name,
            "suite_version": version, "mustpass": {"path": checkout.mustpass_relpath(version, profile.name),
                                                   "tests": len(listed.tests)},
            "created": time.time(), "duration_s": round(time.time() - started, 1), "sessions": exits,
            "verdict": document.get("verdict"), "not_in_list": list(comparison.not_in_list),
            "vanished": list(comparison.vanished)}


def _members(checkout: Checkout, work: str) -> dict[str, str]:
    """Bundle member name -> file in the work directory (every file the run left there)."""
    members = {}
    for current, _, files in os.walk(work):
        for name in files:
            path = os.path.join(current, name)
            relative = os.path.relpath(path, work).replace(os.sep, "/")
            if relative.endswith(".lock") or "/." in "/" + relative or ".tmp" in name:
                continue
            members[relative] = path
    return members
