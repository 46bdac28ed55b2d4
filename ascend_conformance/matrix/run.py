"""Running the suites of systems under test once per vLLM / vllm-ascend pair, each in its own environment.

For every release asked for, :func:`prepare` finds its environment: this one, when it already holds that
release (the default pair ``make setup`` installed), else the pair's own under ``.venv-sut/`` (set up by
:func:`ascend_conformance.sut.pair_env.install_pair`, reused when present). :func:`run_release` then runs
pytest there over the SUT suites, from this checkout, with the release's results in a directory of its own,
and prints progress while it runs (tests done of tests collected, failures so far, minutes).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import time

from ascend_conformance.errors import ConfigError
from ascend_conformance.matrix.table import Column
from ascend_conformance.report import results as results_mod
from ascend_conformance.sut import installed, pair_env
from ascend_conformance.sut.release_sources import ReleaseSpec

ROOT = pair_env.CHECKOUT_ROOT
DEFAULT_SUITES = ("suites/test_sut_*.py",)
PROGRESS_EVERY = 15.0  # seconds between progress lines of a release while its run goes on


@dataclasses.dataclass(frozen=True)
class Target:
    """One release of the matrix: what was asked, the interpreter of its environment, how it compares."""

    asked: str  # as given on the command line: 0.18.0, main=/src/vllm-ascend
    name: str  # the release's name: 0.18.0, main
    python: str
    environment: str  # "this environment" or the pair's directory
    comparable: str

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in self.name)


def parse_releases(text: str) -> list[str]:
    """``0.18.0,0.23.0.post1,main=/src/va`` -> the specs, each checked (one-line errors), no duplicates."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise ConfigError("--releases is empty: give a comma-separated list, e.g. 0.18.0,0.23.0.post1,main=PATH")
    names = [ReleaseSpec.parse(spec).name or spec for spec in specs]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ConfigError(f"--releases names {', '.join(doubled)} more than once")
    return specs


def _here(spec: ReleaseSpec) -> bool:
    """Whether this environment already holds the release ``spec`` asks for."""
    release = installed.installed("vllm_ascend")
    if release is None or spec.checkout is not None:
        return False
    return release.name == spec.name and not release.is_checkout


def prepare(specs: list[str], *, install: bool = True, log=print) -> list[Target]:
    """The environment of every release, in release order (oldest line first)."""
    from packaging.version import Version

    targets = []
    for text in specs:
        spec = ReleaseSpec.parse(text)
        if _here(spec):
            release = installed.installed("vllm_ascend")
            targets.append(Target(text, release.name, sys.executable, "this environment", release.comparable))
            continue
        if install:
            pair = pair_env.install_pair(text, log=log)
        else:
            found = [p for p in pair_env.list_pairs() if p.vllm_ascend == (spec.name or text)]
            if not found:
                raise ConfigError(f"no environment for vllm-ascend {spec.name or text} (run without --no-install, "
                                  f"or ascend-conformance stack --install --vllm-ascend {text})")
            pair = found[0]
        recorded = pair.marker().get("vllm_ascend", {})
        release = installed.Release("vllm_ascend", recorded.get("name", pair.vllm_ascend),
                                    recorded.get("version", pair.vllm_ascend), recorded.get("commit"),
                                    recorded.get("pairs_with", pair.vllm))
        targets.append(Target(text, release.name, pair.python, pair.directory, release.comparable))
    return sorted(targets, key=lambda t: Version(t.comparable))


def _counts(results_dir: str) -> tuple[int, int, int]:
    """(records written, tests collected, failing records) of a run in progress."""
    done = failing = 0
    for path in glob.glob(os.path.join(results_dir, "*" + results_mod.RECORDS_SUFFIX)):
        for record in results_mod.read_lines(path):
            done += 1
            failing += record.get("outcome") in results_mod.FAILING
    collected = 0
    for path in glob.glob(os.path.join(results_dir, "*" + results_mod.COLLECTED_SUFFIX)):
        try:
            with open(path) as f:
                collected = max(collected, len(json.load(f).get("tests", {})))
        except (OSError, ValueError):
            pass
    return done, collected, failing


def pytest_command(target: Target, out_dir: str, workers: int, suites: list[str], extra: list[str]) -> list[str]:
    results_dir = os.path.join(out_dir, "results")
    command = [target.python, "-m", "pytest", *suites, "-p", "no:cacheprovider", "-q", "-rN",
               "--results-dir", results_dir, "--clean-results", "--junitxml", os.path.join(out_dir, "junit.xml")]
    if workers > 1:
        command += ["-n", str(workers)]
    return command + list(extra)


def run_release(target: Target, out_dir: str, *, workers: int, suites: list[str], extra: list[str],
                position: str, log=print) -> Column:
    """Run the SUT suites in ``target``'s environment; its column of the matrix."""
    os.makedirs(out_dir, exist_ok=True)
    patterns = [p for pattern in suites for p in (sorted(glob.glob(os.path.join(ROOT, pattern))) or [pattern])]
    paths = [os.path.relpath(p, ROOT) for p in patterns]
    command = pytest_command(target, out_dir, workers, paths, extra)
    log(f"[{position}] vllm-ascend {target.name} ({target.environment}): running {len(paths)} suite file(s)")
    started = time.monotonic()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "VIRTUAL_ENV"))}
    with open(os.path.join(out_dir, "pytest.log"), "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=environment)
        last = (-1, -1, -1)
        while process.poll() is None:
            time.sleep(1.0 if time.monotonic() - started < 5 else 5.0)
            now = _counts(os.path.join(out_dir, "results"))
            if now != last and time.monotonic() - getattr(run_release, "_said", 0.0) >= PROGRESS_EVERY:
                done, collected, failing = now
                log(f"[{position}] vllm-ascend {target.name}: {done}/{collected or '?'} tests"
                    f"{f', {failing} failing' if failing else ''}, {(time.monotonic() - started) / 60:.1f} min")
                run_release._said = time.monotonic()
                last = now
    minutes = (time.monotonic() - started) / 60
    results_dir = os.path.join(out_dir, "results")
    run_error = None
    records: dict[str, dict] = {}
    if os.path.isdir(results_dir) and glob.glob(os.path.join(results_dir, "*" + results_mod.RECORDS_SUFFIX)):
        document = results_mod.merge_directory(results_dir, os.path.join(out_dir, "results.json"))
        records = {record["nodeid"]: record for record in document.get("tests", [])}
    if not records:
        tail = _tail(os.path.join(out_dir, "pytest.log"))
        run_error = f"pytest exited {process.returncode} with no results: {tail}"
    label = _label(records) or f"vllm_ascend {target.name}"
    log(f"[{position}] vllm-ascend {target.name}: done in {minutes:.1f} min, pytest exit {process.returncode}"
        + (f"; {run_error}" if run_error else ""))
    return Column(target.name, label, round(minutes, 2), records, run_error)


def _label(records: dict[str, dict]) -> str:
    """``vllm_ascend 0.18.0 + vllm 0.18.0``: the releases the records say ran (never the asked-for name)."""
    suts = sorted({r.get("sut") for r in records.values() if r.get("sut") and r.get("sut") != "reference"},
                  key=lambda s: (not s.startswith("vllm_ascend"), s))
    return " + ".join(suts)


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


__all__ = ["Target", "parse_releases", "prepare", "run_release", "pytest_command", "DEFAULT_SUITES"]
