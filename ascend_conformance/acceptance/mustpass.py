"""Mustpass lists: the tests an acceptance run of a profile must run and pass, one node id per line.

A list is generated from pytest's collection plus the profile's rules (:func:`select`), reviewed and
committed as ``acceptance/mustpass/<suite version>/<profile>.txt``; ``#`` lines are its header::

    # ascend-conformance mustpass list
    # profile: cpu-reference
    # suite version: 0.1.0
    # rules: areas groups, collectives, moe, shared_weight, eplb; tiers default; systems under test ...
    # tests: 2
    suites/test_collectives.py::test_all_reduce_average_on_integers[int32]
    suites/test_topology.py::test_rank_formula

A committed list never changes by itself: a test added to the suite afterwards is *not in the list*
(:func:`compare` names it, ``acceptance list`` and ``acceptance run`` print it) and is not part of an
acceptance until someone writes the list again (``acceptance list --write``), which is refused once the
suite version is released. A listed test the suite no longer collects, or that the rules no longer
select, makes the list unrunnable: :func:`compare` reports it as a problem.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

from ascend_conformance.acceptance.checkout import Checkout
from ascend_conformance.acceptance.profiles import Profile
from ascend_conformance.errors import ConfigError

TITLE = "ascend-conformance mustpass list"
PLUGIN = "ascend_conformance.acceptance.pytest_plugin"


@dataclasses.dataclass(frozen=True)
class MustpassList:
    profile: str
    version: str
    tests: tuple[str, ...]
    rules: str = ""

    def text(self) -> str:
        header = [TITLE, f"profile: {self.profile}", f"suite version: {self.version}", f"rules: {self.rules}",
                  f"tests: {len(self.tests)}"]
        return "".join(f"# {line}\n" for line in header) + "".join(f"{test}\n" for test in self.tests)


def parse_list(text: str, shown: str) -> MustpassList:
    """A list from its text; a one-line ConfigError when it is not one (``shown`` names the file)."""
    header: dict[str, str] = {}
    tests: list[str] = []
    lines = text.splitlines()
    if not lines or lines[0].strip() != f"# {TITLE}":
        raise ConfigError(f"{shown} is not a mustpass list (its first line is not '# {TITLE}')")
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            header[key.strip()] = value.strip()
        elif "::" not in line or " " in line.split("[")[0]:
            raise ConfigError(f"{shown} line {number}: {line!r} is not a test node id")
        else:
            tests.append(line)
    if "profile" not in header or "suite version" not in header:
        raise ConfigError(f"{shown}: the header names no profile or suite version")
    if len(set(tests)) != len(tests):
        twice = sorted({t for t in tests if tests.count(t) > 1})
        raise ConfigError(f"{shown}: {len(twice)} tests listed twice, e.g. {twice[0]}")
    return MustpassList(header["profile"], header["suite version"], tuple(tests), header.get("rules", ""))


def read_list(path: str) -> MustpassList:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_list(handle.read(), path)
    except OSError as exc:
        raise ConfigError(f"cannot read mustpass list {path}: {exc.strerror or exc}") from None


def committed(checkout: Checkout, version: str, profile: Profile) -> MustpassList:
    """The committed list of ``profile`` for suite ``version``; a one-line ConfigError when there is none or
    its header names another profile or version."""
    path = checkout.mustpass_path(version, profile.name)
    if not os.path.exists(path):
        raise ConfigError(f"no mustpass list for profile {profile.name} of suite {version}: "
                          f"{os.path.relpath(path, checkout.root)} (make it with: ascend-conformance acceptance "
                          f"list --profile {profile.name} --write)")
    listed = read_list(path)
    if (listed.profile, listed.version) != (profile.name, version):
        raise ConfigError(f"{path}: its header says profile {listed.profile}, suite version {listed.version}; "
                          f"the path says {profile.name}, {version}")
    return listed


def select(inventory: list[dict], profile: Profile) -> list[str]:
    """The node ids of the inventory (:mod:`~ascend_conformance.acceptance.pytest_plugin`) the profile's
    rules select, sorted: the profile's system under test, tier and area (a benchmark, tier ``bench``, by
    its tier alone: the benchmark suites are areas of their own), and on an NPU profile the device type.

    >>> from ascend_conformance.acceptance.profiles import get
    >>> inventory = [
    ...     {"nodeid": "suites/test_topology.py::test_a", "area": "groups", "sut": "reference", "tier": "default"},
    ...     {"nodeid": "suites/test_topology.py::test_b", "area": "groups", "sut": "reference", "tier": "full"},
    ...     {"nodeid": "suites/test_sut_moe.py::test_c[A2-mc2]", "area": "moe", "sut": "vllm_ascend",
    ...      "tier": "default", "device_type": "A2"},
    ...     {"nodeid": "suites/test_sut_moe.py::test_c[A3-mc2]", "area": "moe", "sut": "vllm_ascend",
    ...      "tier": "default", "device_type": "A3"}]
    >>> select(inventory, get("cpu-reference"))  # doctest: +NORMALIZE_WHITESPACE
    ['suites/test_sut_moe.py::test_c[A2-mc2]', 'suites/test_sut_moe.py::test_c[A3-mc2]',
     'suites/test_topology.py::test_a']
    >>> select(inventory, get("npu-a3"))  # doctest: +NORMALIZE_WHITESPACE
    ['suites/test_sut_moe.py::test_c[A3-mc2]', 'suites/test_topology.py::test_a',
     'suites/test_topology.py::test_b']
    """
    chosen = []
    for entry in inventory:
        if entry["sut"] not in profile.suts or entry["tier"] not in profile.tiers:
            continue
        if entry["area"] not in profile.areas and entry["tier"] != "bench":  # benchmarks: by tier alone
            continue
        if profile.device_type and entry.get("device_type") and entry["device_type"] != profile.device_type:
            continue
        chosen.append(entry["nodeid"])
    return sorted(chosen)


def collection_args(profile: Profile) -> list[str]:
    """The pytest options that shape collection and tiers for ``profile`` (the list is generated and run
    with the same ones: ``--full`` changes some parametrisations)."""
    args = list(profile.pytest_args)
    if "full" in profile.tiers:
        args.append("--full")
    return args


def collect_inventory(checkout: Checkout, profile: Profile, python: str | None = None) -> list[dict]:
    """Every test pytest collects from ``suites/`` of the checkout under the profile's options."""
    with tempfile.TemporaryDirectory(prefix="ascend-acceptance-inventory-") as tmp:
        out = os.path.join(tmp, "inventory.json")
        command = [python or sys.executable, "-m", "pytest", "suites", "--collect-only", "-q",
                   "-p", "no:cacheprovider", "-p", PLUGIN, f"--rootdir={checkout.root}",
                   f"--acceptance-inventory={out}", "--results-dir=", *collection_args(profile)]
        done = subprocess.run(command, cwd=checkout.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            lines = [line for line in done.stdout.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith(("ERROR", "E "))]
            why = (errors or lines or ["no output"])[0] if done.returncode else f"no inventory from {PLUGIN}"
            raise ConfigError(f"collecting suites/ for profile {profile.name} failed "
                              f"(pytest exit {done.returncode}): {why}")
        with open(out, encoding="utf-8") as handle:
            return json.load(handle)["tests"]


def generate(checkout: Checkout, version: str, profile: Profile, inventory: list[dict] | None = None) -> MustpassList:
    """The list the rules select from today's collection."""
    if inventory is None:
        inventory = collect_inventory(checkout, profile)
    return MustpassList(profile.name, version, tuple(select(inventory, profile)), profile.rules())


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A committed list against today's selection."""

    vanished: tuple[str, ...]  # listed, but not selected today (not collected, or outside the rules): a problem
    not_in_list: tuple[str, ...]  # selected today, not listed: added since; not part of this version's acceptance
    rules_changed: bool  # the header's rules differ from the profile's rules today (a note)

    @property
    def runnable(self) -> bool:
        return not self.vanished


def compare(listed: MustpassList, generated: MustpassList) -> Comparison:
    """
    >>> old = MustpassList("cpu-reference", "0.1.0", ("s.py::a", "s.py::b"), "r")
    >>> compare(old, MustpassList("cpu-reference", "0.1.0", ("s.py::a", "s.py::b", "s.py::c"), "r"))
    Comparison(vanished=(), not_in_list=('s.py::c',), rules_changed=False)
    >>> compare(old, MustpassList("cpu-reference", "0.1.0", ("s.py::a",), "r")).runnable
    False
    """
    listed_set, today = set(listed.tests), set(generated.tests)
    return Comparison(tuple(sorted(listed_set - today)), tuple(sorted(today - listed_set)),
                      bool(listed.rules) and listed.rules != generated.rules)


def check_writable(checkout: Checkout, version: str, released: bool) -> None:
    """A one-line ConfigError when ``version`` is released: its lists are frozen."""
    if released:
        shown = os.path.relpath(checkout.release_path(version), checkout.root)
        raise ConfigError(f"suite {version} is released ({shown}): its mustpass lists are frozen; bump the "
                          f"suite version to make new ones")


def write(checkout: Checkout, listed: MustpassList, released: bool) -> str:
    """Write the list to its committed path (whole or not at all); refused for a released version."""
    check_writable(checkout, listed.version, released)
    path = checkout.mustpass_path(listed.version, listed.profile)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(listed.text())
    os.replace(tmp, path)
    return path
