"""``acceptance verify``: check a bundle mechanically before anyone reads it.

A bundle is acceptable when every one of these holds (each failure is one problem line):

* **mustpass** — every test of the profile's mustpass list has a result, and it passed, or xfailed
  under an expectation (``suites/expectations/<sut>-<release>.toml`` and ``<sut>.toml``, bundled) of the
  release of its system under test that the environment names, or was skipped for a reason the profile allows;
* **session** — every pytest session of the run recorded its collection and its completion mark, with
  exit status 0 or 1 (2 is an interrupted session);
* **suite** — the manifest matches the release manifest of its suite version
  (``acceptance/releases/<version>.json`` of the verifier's checkout), else "modified suite: these
  files differ"; the bundled mustpass list and expectations are the files the manifest hashed, and the
  list is the verifier's committed list of that version and profile;
* **environment** — platform, backend, SoC, device count, driver, firmware, CANN, torch, torch_npu,
  vllm, vllm_ascend and host are named, fit the profile (platform npu and a real torch_npu for npu-*),
  and agree with the results (the ops and releases the records name);
* **counterparts** — results.json is the merge of the records in results/, and JUnit XML and the
  Allure results give every test the outcome results.json gives it.

The bundle's contents are what the run reported: the checks make a hand-edited or incomplete bundle
visible, they do not prove a run happened (a reviewer still reads the console log and report).

A bundle of an npu profile run on the **npu-emulated** platform (``docs/emulation.md``) is judged with
every check, and its verdict is ``EMULATED`` (exit :data:`EXIT_EMULATED`) whatever the checks found: an
emulated host never signs off a release. What emulation cannot give is noted once instead of being a
problem (the platform npu-emulated in place of npu, golden ops in place of torch_npu, no SoC / CANN /
driver / firmware / torch_npu, and so the golden-vs-real comparisons skip, counted as allowed skips);
every record must then say ``device = emulated``. The problems the checks
find are listed below the verdict, as for a real host, so an emulated run shows what an NPU host's run
of the same list would still have to fix.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time

from ascend_conformance.acceptance import bundle as bundle_mod
from ascend_conformance.acceptance import counterparts, manifest, mustpass, profiles
from ascend_conformance import expectations as spec
from ascend_conformance.acceptance.checkout import Checkout
from ascend_conformance.errors import ConfigError

# Environment fields a bundle must name (the list), and those an NPU host must name with a real value.
REQUIRED_ENVIRONMENT = ("platform", "backend", "soc", "device_count", "driver", "firmware", "cann", "torch",
                        "torch_npu", "vllm", "vllm_ascend", "host")
NPU_REAL_VALUES = ("soc", "driver", "firmware", "cann", "torch_npu")
_ABSENT_PREFIXES = ("not ", "unknown", "n/a", "none")
EXIT_STATUS = {0: "all tests passed", 1: "some tests failed", 2: "interrupted", 3: "internal error",
               4: "usage error", 5: "no tests collected"}
EXIT_ACCEPTABLE, EXIT_NOT_ACCEPTABLE, EXIT_UNREADABLE, EXIT_EMULATED = 0, 1, 2, 3
EMULATED_PLATFORM = "npu-emulated"  # stands in for the npu platform (platform.EmulatedNpuPlatform)
REQUIRED_MEMBERS = ("manifest.json", "mustpass.txt", "environment.json", "results.json", "console.log", "index.html")
PER_KIND_SHOWN = 10


@dataclasses.dataclass
class Report:
    path: str
    summary: list[str] = dataclasses.field(default_factory=list)
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (kind, text)
    notes: list[str] = dataclasses.field(default_factory=list)
    emulated: bool = False  # the run was on npu-emulated: never acceptable, whatever the checks found

    @property
    def acceptable(self) -> bool:
        return not self.problems and not self.emulated

    @property
    def exit_code(self) -> int:
        """0 acceptable, 1 not acceptable (problems), 3 emulated (never a sign-off)."""
        if self.emulated:
            return EXIT_EMULATED
        return EXIT_ACCEPTABLE if self.acceptable else EXIT_NOT_ACCEPTABLE

    def problem(self, kind: str, text: str) -> None:
        self.problems.append((kind, text))

    def render(self, show_all: bool = False) -> str:
        lines = list(self.summary)
        for note in self.notes:
            lines.append(f"note     {note}")
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        if self.emulated:
            lines.append(f"verdict  EMULATED: run on an emulated npu, which never signs off a release; the checks "
                         f"found {count}{' (below)' if self.problems else ''}")
        elif self.acceptable:
            lines.append("verdict  ACCEPTABLE")
            return "\n".join(lines)
        else:
            lines.append(f"verdict  NOT ACCEPTABLE: {count}")
        shown: dict[str, int] = {}
        hidden: dict[str, int] = {}
        for kind, text in self.problems:
            if show_all or shown.get(kind, 0) < PER_KIND_SHOWN:
                shown[kind] = shown.get(kind, 0) + 1
                lines.append(f"{kind}: {text}")
            else:
                hidden[kind] = hidden.get(kind, 0) + 1
        for kind, count in hidden.items():
            lines.append(f"... and {count} more '{kind}' problems (acceptance verify --all lists every one)")
        return "\n".join(lines)


def _absent(value) -> bool:
    text = str(value if value is not None else "").strip().lower()
    return not text or text.startswith(_ABSENT_PREFIXES)


def _few(items, limit: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _merge_records(bundle: bundle_mod.Bundle) -> dict:
    """The merge (results.py) of the bundle's results/ directory, as ``ascend-conformance report`` makes it."""
    from ascend_conformance.report import results as results_mod

    with tempfile.TemporaryDirectory(prefix="ascend-acceptance-verify-") as tmp:
        for name in bundle.names("results/"):
            relative = name[len("results/"):]
            if not relative or "/" in relative:
                continue
            with open(os.path.join(tmp, relative), "wb") as handle:
                handle.write(bundle.members[name])
        return results_mod.merge_directory(tmp)


def _expectations(bundle: bundle_mod.Bundle, report: Report) -> dict[tuple[str, str | None], list[spec.Entry]]:
    """(sut, release name; None for the shared file of every release line) -> the bundled entries, read by
    the parser the plugin uses."""
    out: dict[tuple[str, str | None], list[spec.Entry]] = {}
    for name in bundle.names("expectations/", ".toml"):
        stem = os.path.basename(name)[:-len(".toml")]
        sut, _, release = stem.partition("-")
        try:
            parsed = spec.parse_text(bundle.text(name), name, sut=sut, release=release or None)
        except spec.ExpectationsError as exc:
            report.problem("bundle", str(exc))
            continue
        out[(sut, release or None)] = list(parsed.entries)
    return out


def _applicable(expectations: dict, sut: str, release: str) -> list[spec.Entry]:
    """The entries of ``sut``'s release ``release``: its own file's, and the shared file's whose range
    contains it (a checkout such as main is not a PEP 440 version: the bundle holds only the files its run
    applied, so the shared entries are taken as they are)."""
    from packaging.version import InvalidVersion, Version

    try:
        comparable = str(Version(release))
    except InvalidVersion:
        comparable = None
    shared = expectations.get((sut, None), [])
    return [*expectations.get((sut, release), []),
            *(entry for entry in shared if comparable is None or entry.applies_to(comparable))]


def verify(path: str, checkout: Checkout, releases_dir: str | None = None) -> Report:
    """Check the bundle at ``path``; a ConfigError (exit 2) when it is not a readable bundle."""
    bundle = bundle_mod.read(path)
    report = Report(path)
    index = bundle.index
    version, profile_name = index["suite_version"], index["profile"]
    created = index.get("created")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(created)) if isinstance(created, (int, float)) else "?"
    report.summary.append(f"bundle   {path} (written {when})")
    try:
        profile = profiles.get(profile_name)
    except ConfigError as exc:
        report.problem("profile", str(exc))
        return report
    report.summary.append(f"profile  {profile.name}: {profile.host()}")

    for name in REQUIRED_MEMBERS:
        if not bundle.has(name):
            report.problem("bundle", f"the bundle has no {name}")

    listed = _check_mustpass_list(bundle, checkout, version, profile, report)
    _check_manifest(bundle, checkout, version, profile, releases_dir, report)
    merged = _merge_records(bundle)
    _check_sessions(merged, report)
    _check_results_json(bundle, merged, report)
    environment = _check_environment(bundle, merged, profile, report)
    if listed is not None:
        _check_mustpass(bundle, merged, listed, profile, environment, report)
    _check_counterparts(bundle, merged, report)
    benchmarks = bundle.names("benchmarks/", ".json")
    if benchmarks:
        report.summary.append(f"perf     {len(benchmarks)} benchmark JSON file(s) (not judged here: "
                              f"ascend-conformance compare against the host's baseline)")
    return report


# -- the parts ---------------------------------------------------------------------------------------

def _check_mustpass_list(bundle, checkout: Checkout, version: str, profile, report: Report):
    """The list to judge by: the verifier's committed list of this version and profile (else the bundle's,
    whose hash the manifest check pins to the release)."""
    bundled = None
    if bundle.has("mustpass.txt"):
        try:
            bundled = mustpass.parse_list(bundle.text("mustpass.txt"), "the bundle's mustpass.txt")
        except ConfigError as exc:
            report.problem("mustpass list", str(exc))
    path = checkout.mustpass_path(version, profile.name)
    own = mustpass.read_list(path) if os.path.exists(path) else None
    if own is None:
        report.notes.append(f"this checkout has no {checkout.mustpass_relpath(version, profile.name)}: "
                            f"judging by the bundle's list (the manifest check ties it to the release)")
        return bundled
    if bundled is not None and (bundled.tests, bundled.profile, bundled.version) != (own.tests, own.profile,
                                                                                      own.version):
        dropped = sorted(set(own.tests) - set(bundled.tests))
        added = sorted(set(bundled.tests) - set(own.tests))
        report.problem("mustpass list", f"the bundle's mustpass.txt is not "
                                        f"{checkout.mustpass_relpath(version, profile.name)}: {len(dropped)} test(s) "
                                        f"dropped ({_few(dropped, 3)}), {len(added)} added")
    return own


def _check_manifest(bundle, checkout: Checkout, version: str, profile, releases_dir, report: Report) -> None:
    try:
        ran = bundle.json("manifest.json")
    except ValueError as exc:
        report.problem("bundle", f"manifest.json is not JSON: {exc}")
        return
    if not isinstance(ran, dict) or not isinstance(ran.get("files"), dict):
        if bundle.has("manifest.json"):
            report.problem("bundle", "manifest.json has no files")
        return
    if ran.get("suite_version") != version:
        report.problem("modified suite", f"manifest.json is of suite {ran.get('suite_version')}, the bundle says "
                                         f"{version}")
    # The bundled list and expectations must be the files the run hashed.
    list_name = checkout.mustpass_relpath(version, profile.name)
    bundled_files = {"mustpass.txt": list_name}
    bundled_files.update({name: "suites/expectations/" + name[len("expectations/"):]
                          for name in bundle.names("expectations/", ".toml")})
    for member, manifest_name in bundled_files.items():
        data = bundle.members.get(member)
        if data is None:
            continue
        import hashlib

        if ran["files"].get(manifest_name) != hashlib.sha256(data).hexdigest():
            report.problem("modified suite", f"the bundle's {member} is not the {manifest_name} its manifest hashed")
    release_path = checkout.release_path(version, releases_dir)
    if not os.path.exists(release_path):
        released = checkout.released_versions(releases_dir)
        report.problem("modified suite", f"suite {version} is not a released version: no {release_path} "
                                         f"(released: {', '.join(released) or 'none'})")
        return
    try:
        release = manifest.read_release(release_path)
    except ConfigError as exc:
        report.problem("modified suite", str(exc))
        return
    difference = manifest.diff(ran, release, profile.name)
    if difference.empty:
        report.summary.append(f"suite    {version}: {len(ran['files'])} files match the release manifest")
        return
    parts = ([f"{name} (changed)" for name in difference.changed]
             + [f"{name} (not in the release)" for name in difference.added]
             + [f"{name} (missing)" for name in difference.missing])
    report.summary.append(f"suite    {version}: MODIFIED, {len(parts)} of {len(ran['files'])} files differ from the "
                          f"release")
    report.problem("modified suite", f"these files differ from release {version}: {_few(parts, 12)}")


def _check_sessions(merged: dict, report: Report) -> None:
    sessions = merged.get("sessions") or []
    if not sessions:
        report.problem("session", "the bundle has no test session (results/ has no records)")
        return
    states = []
    for session in sessions:
        name, status = session.get("session"), session.get("exitstatus")
        if session.get("collected") is None:
            report.problem("session", f"session {name} never recorded its collection")
        if not session.get("finished"):
            report.problem("session", f"session {name} was interrupted: it has no completion mark (killed, or still "
                                      f"running)")
            states.append("interrupted")
        elif status not in (0, 1):
            report.problem("session", f"session {name} was interrupted: pytest exit status {status} "
                                      f"({EXIT_STATUS.get(status, 'unknown')})")
            states.append(f"exit {status}")
        else:
            states.append(f"completed (exit {status})")
    report.summary.append(f"sessions {len(sessions)}: {', '.join(states)}")


def _check_results_json(bundle, merged: dict, report: Report) -> None:
    try:
        document = bundle.json("results.json")
    except ValueError as exc:
        report.problem("results", f"results.json is not JSON: {exc}")
        return
    if document is None:
        return
    if not isinstance(document, dict) or not isinstance(document.get("tests"), list):
        report.problem("results", "results.json has no tests list")
        return
    claimed = {t.get("nodeid"): t.get("outcome") for t in document["tests"] if isinstance(t, dict)}
    recorded = {t["nodeid"]: t.get("outcome") for t in merged.get("tests") or []}
    for nodeid in sorted(set(claimed) | set(recorded)):
        if nodeid not in recorded:
            report.problem("results", f"results.json lists {nodeid} ({claimed[nodeid]}), results/ has no record of it")
        elif nodeid not in claimed:
            report.problem("results", f"results.json lacks {nodeid}, recorded {recorded[nodeid]} in results/")
        elif claimed[nodeid] != recorded[nodeid]:
            report.problem("results", f"results.json says {claimed[nodeid]}, its record in results/ says "
                                      f"{recorded[nodeid]}: {nodeid}")


def _check_environment(bundle, merged: dict, profile, report: Report) -> dict:
    try:
        environment = bundle.json("environment.json") or {}
    except ValueError as exc:
        report.problem("environment", f"environment.json is not JSON: {exc}")
        return {}
    if not isinstance(environment, dict):
        report.problem("environment", "environment.json is not an object")
        return {}
    for field in REQUIRED_ENVIRONMENT:
        if str(environment.get(field, "")).strip() == "":
            report.problem("environment", f"environment.json names no {field}")
    platform, backend = environment.get("platform"), environment.get("backend")
    emulated = platform == EMULATED_PLATFORM and profile.platform == "npu"
    if emulated:
        report.emulated = True
        report.notes.append(f"emulated: platform {EMULATED_PLATFORM} stands in for {profile.platform}; golden ops in "
                            f"place of {profile.ops}, and no SoC, CANN, driver, firmware or torch_npu to check")
    elif platform and platform != profile.platform:
        report.problem("environment", f"platform {platform}: profile {profile.name} runs on platform "
                                      f"{profile.platform}")
    if backend and backend != profile.backend:
        report.problem("environment", f"backend {backend}: profile {profile.name} runs on {profile.backend}")
    try:
        devices = int(str(environment.get("device_count", "")).strip())
    except ValueError:
        devices = None
    if environment.get("device_count") not in (None, "") and (devices is None or devices < profile.min_devices):
        report.problem("environment", f"device_count {environment.get('device_count')}: profile {profile.name} needs "
                                      f">= {profile.min_devices}")
    if profile.platform == "npu" and not emulated:
        for field in NPU_REAL_VALUES:
            if field in environment and _absent(environment[field]):
                report.problem("environment", f"{field} is {environment[field]!r}: profile {profile.name} needs the "
                                              f"real NPU stack")
    if profile.soc_prefixes and not emulated and environment.get("soc") and not any(
            str(environment["soc"]).lower().startswith(p.lower()) for p in profile.soc_prefixes):
        report.problem("environment", f"SoC {environment['soc']} is not of profile {profile.name} "
                                      f"({' or '.join(p + '*' for p in profile.soc_prefixes)})")
    for sut in profile.suts:
        if sut != "reference" and sut in environment and _absent(environment[sut]):
            report.problem("environment", f"{sut} is {environment[sut]!r}: profile {profile.name} judges {sut}")
    # The sessions' own environments (captured when each started) must be this one.
    session_env = merged.get("environment") or {}
    for field in ("platform", "backend", "host", "torch", "torch_npu", "vllm", "vllm_ascend", "device_count"):
        if field in session_env and field in environment and str(session_env[field]) != str(environment[field]):
            report.problem("environment", f"environment.json says {field} {environment[field]}, the session recorded "
                                          f"{session_env[field]}")
    # The results must have been measured on this environment.
    tests = merged.get("tests") or []
    ops = "golden" if emulated else profile.ops
    wrong_ops = [t["nodeid"] for t in tests
                 if t.get("ops") and t["ops"] != ops and t.get("outcome") != "skipped"]
    if wrong_ops:
        report.problem("environment", f"{len(wrong_ops)} test(s) ran with ops other than {ops} (profile "
                                      f"{profile.name}{' on an emulated npu' if emulated else ''}), e.g. {wrong_ops[0]}")
    if emulated:
        elsewhere = [t["nodeid"] for t in tests if t.get("device") != "emulated"]
        if elsewhere:
            report.problem("environment", f"{len(elsewhere)} test(s) do not say device emulated in an emulated run, "
                                          f"e.g. {elsewhere[0]}")
    if profile.device_type:
        wrong_type = [t["nodeid"] for t in tests if t.get("device_type") and t["device_type"] != profile.device_type]
        if wrong_type:
            report.problem("environment", f"{len(wrong_type)} test(s) ran on device type other than "
                                          f"{profile.device_type}, e.g. {wrong_type[0]}")
    for sut_label in sorted({t.get("sut") for t in tests if t.get("sut") and t.get("sut") != "reference"}):
        name, _, release = sut_label.partition(" ")
        if name in environment and str(environment[name]) != release:
            report.problem("environment", f"results name {sut_label}, the environment has {name} {environment[name]}")
    report.summary.append(
        "host     " + ", ".join(f"{field} {environment.get(field, '?')}" for field in
                                ("host", "platform", "backend", "device_count", "soc", "driver", "firmware", "cann",
                                 "torch", "torch_npu", "vllm", "vllm_ascend")))
    return environment


def _check_mustpass(bundle, merged: dict, listed: mustpass.MustpassList, profile, environment: dict,
                    report: Report) -> None:
    expectations = _expectations(bundle, report)
    records = {t["nodeid"]: t for t in merged.get("tests") or []}
    counts = {"passed": 0, "xfailed": 0, "skipped": 0, "not_in_release": 0}
    allowed_reasons: dict[str, int] = {}
    for nodeid in listed.tests:
        record = records.get(nodeid)
        if record is None:
            report.problem("missing", f"{nodeid} has no result")
            continue
        outcome, full_reason = record.get("outcome"), record.get("reason") or ""
        reason = full_reason.splitlines()[0] if full_reason else ""
        if outcome == "passed":
            counts["passed"] += 1
        elif outcome == "xfailed":
            sut_label = record.get("sut") or "reference"
            name, _, release = sut_label.partition(" ")
            if name == "reference":
                report.problem("xfailed", f"{nodeid}: an expected failure of the reference implementation ({reason}); "
                                          f"only known divergences of systems under test are waived")
            elif str(environment.get(name)) != release:
                report.problem("xfailed", f"{nodeid}: xfailed as {sut_label}, the environment has {name} "
                                          f"{environment.get(name)}")
            elif not any(entry.covers(nodeid) and full_reason == entry.reason
                         for entry in _applicable(expectations, name, release)):
                report.problem("xfailed", f"{nodeid}: xfailed, but no bundled expectation of {sut_label} names it "
                                          f"with this finding (expectations/{name}-{release}.toml, "
                                          f"expectations/{name}.toml)")
            else:
                counts["xfailed"] += 1
        elif outcome == "not_in_release":
            # A feature the installed release lacks: what a profile's mustpass list may expect of a release line
            # is that it was judged where it exists; where it does not, it is counted apart.
            counts["not_in_release"] += 1
        elif outcome == "skipped":
            rule = profile.allowed_skip(reason)
            if rule is None and report.emulated:  # no real torch_npu, gloo under hccl: inherent to the emulation
                rule = next((r for r in profiles.EMULATED_RUN_SKIPS if r.matches(reason)), None)
            if rule is None:
                report.problem("skipped", f"{nodeid}: {reason or 'no reason'} (not a skip profile {profile.name} "
                                          f"allows)")
            else:
                counts["skipped"] += 1
                allowed_reasons[rule.why] = allowed_reasons.get(rule.why, 0) + 1
        elif outcome == "xpassed":
            report.problem("xpassed", f"{nodeid}: an expected failure passed ({reason})")
        else:
            report.problem(outcome or "failed", f"{nodeid}: {reason or outcome}")
    outside = sorted(set(records) - set(listed.tests))
    judged = sum(counts.values())
    line = (f"mustpass {listed.version}/{listed.profile}: {len(listed.tests)} tests; {counts['passed']} passed, "
            f"{counts['xfailed']} xfailed (known divergences), {counts['skipped']} skipped (allowed), "
            f"{counts['not_in_release']} not in the release, "
            f"{len(listed.tests) - judged} not acceptable")
    report.summary.append(line)
    for why, count in allowed_reasons.items():
        report.summary.append(f"         {count} allowed skip(s): {why}")
    if outside:
        report.notes.append(f"{len(outside)} test(s) outside the mustpass list ran and are not judged, "
                            f"e.g. {outside[0]}")
    not_in_list = bundle.index.get("not_in_list") or []
    if not_in_list:
        report.notes.append(f"{len(not_in_list)} test(s) of the suite are not in this mustpass list (added after it "
                            f"was made), e.g. {not_in_list[0]}")


def _check_counterparts(bundle, merged: dict, report: Report) -> None:
    tests = merged.get("tests") or []
    junit_names = bundle.names("junit", ".xml")
    if not junit_names:
        report.problem("junit", "the bundle has no JUnit XML (junit.xml)")
    else:
        try:
            junit = counterparts.junit_outcomes(bundle.text(name) for name in junit_names)
        except ValueError as exc:
            report.problem("junit", f"JUnit XML is {exc}")
        else:
            _compare(tests, junit, counterparts.junit_key, "junit.xml", report, "junit")
    allure_names = bundle.names("allure-results/", "-result.json")
    if not allure_names:
        report.problem("allure", "the bundle has no Allure results (allure-results/*-result.json)")
    else:
        allure = counterparts.allure_outcomes(bundle.text(name) for name in allure_names)
        _compare(tests, allure, counterparts.allure_key, "allure-results", report, "allure")


def _compare(tests, other: dict, key_of, shown: str, report: Report, kind: str) -> None:
    groups: dict[tuple, list[dict]] = {}
    for test in tests:
        groups.setdefault(key_of(test["nodeid"]), []).append(test)
    for key, members in groups.items():
        ours = sorted(counterparts.category(t.get("outcome", "")) for t in members)
        theirs = sorted(other.get(key, []))
        if ours == theirs:
            continue
        names = ", ".join(t["nodeid"] for t in members)
        if not theirs:
            report.problem(kind, f"{shown} has no result for {names}")
        else:
            report.problem(kind, f"{shown} says {'/'.join(theirs)}, results.json says {'/'.join(ours)}: {names}")
