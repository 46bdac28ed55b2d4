"""`ascend-conformance acceptance {profiles,list,run,verify,release}`: vendor acceptance (docs/acceptance.md).

    acceptance profiles                           the profiles, their rules and what the host must be
    acceptance list --profile P [--write]         the mustpass list the rules select today, against the committed one
    acceptance run --profile P [--out FILE]       run exactly P's committed list; write the bundle (tar.gz)
    acceptance verify FILE [--all]                check a bundle: exit 0 acceptable, 1 problems (a line each),
                                                  2 unreadable, 3 emulated (npu-emulated never signs off)
    acceptance release                            write the release manifest of the suite version (a committed tree)

Every subcommand takes ``--checkout DIR`` (default: the checkout the package is installed from).
"""
from __future__ import annotations

import os
import sys

NAME = "acceptance"
HELP = "vendor acceptance: mustpass lists per profile, run a profile into a bundle, verify a bundle"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))

    def command(name: str, help_text: str):
        child = sub.add_parser(name, help=help_text, description=help_text)
        child.add_argument("--checkout", metavar="DIR", default=None,
                           help="the suite checkout (default: the one this package is installed from)")
        return child

    command("profiles", "list the profiles: selection rules, host requirements, allowed skips")
    listing = command("list", "print the mustpass list P's rules select from today's collection, and how it "
                              "differs from the committed list")
    listing.add_argument("--profile", required=True)
    listing.add_argument("--write", action="store_true",
                         help="write it to acceptance/mustpass/<version>/<profile>.txt (refused for a released "
                              "version)")
    listing.add_argument("--check", action="store_true",
                         help="exit 1 when the committed list names tests the suite no longer selects")
    running = command("run", "run exactly P's committed mustpass list and write the bundle")
    running.add_argument("--profile", required=True)
    running.add_argument("--out", default=None, metavar="FILE",
                         help="bundle path (default reports/acceptance-<profile>-<version>.tar.gz)")
    running.add_argument("--workers", type=int, default=None,
                         help="pytest-xdist workers of the conformance session (default: the profile's; 0: none)")
    verifying = command("verify", "check a bundle: exit 0 acceptable, 1 with each problem on its own line, "
                                  "2 unreadable, 3 emulated (a run on npu-emulated never signs off a release)")
    verifying.add_argument("bundle", metavar="FILE")
    verifying.add_argument("--all", action="store_true", help="list every problem (default: 10 per kind)")
    verifying.add_argument("--releases", metavar="DIR", default=None,
                           help="release manifests (default <checkout>/acceptance/releases)")
    releasing = command("release", "write acceptance/releases/<version>.json: the manifest of the committed suite")
    releasing.add_argument("--out", default=None, metavar="FILE", help="write it here instead")


def run(args) -> int:
    from ascend_conformance.acceptance import checkout as checkout_mod

    checkout = checkout_mod.locate(args.checkout)
    return {"profiles": _profiles, "list": _list, "run": _run, "verify": _verify, "release": _release}[args.action](
        args, checkout)


def _profiles(args, checkout) -> int:
    from ascend_conformance.acceptance import profiles
    from ascend_conformance.acceptance.checkout import suite_version

    version = suite_version()
    for profile in profiles.PROFILES.values():
        path = checkout.mustpass_path(version, profile.name)
        print(f"{profile.name}: {profile.summary}")
        print(f"  selects  {profile.rules()}")
        print(f"  host     {profile.host()}")
        for rule in profile.allowed_skips:
            print(f"  may skip /{rule.pattern}/: {rule.why}")
        if not profile.allowed_skips:
            print("  may skip nothing")
        print(f"  list     {checkout.mustpass_relpath(version, profile.name)}"
              f"{'' if os.path.exists(path) else ' (not written yet)'}")
    return 0


def _list(args, checkout) -> int:
    from ascend_conformance.acceptance import mustpass, profiles
    from ascend_conformance.acceptance.checkout import suite_version

    profile = profiles.get(args.profile)
    version = suite_version()
    released = os.path.exists(checkout.release_path(version))
    if args.write:  # refused before the collection, which takes a while
        mustpass.check_writable(checkout, version, released)
    generated = mustpass.generate(checkout, version, profile)
    path = checkout.mustpass_path(version, profile.name)
    shown = checkout.mustpass_relpath(version, profile.name)
    if args.write:
        old = mustpass.read_list(path) if os.path.exists(path) else None
        mustpass.write(checkout, generated, released)
        if old is None:
            print(f"{shown}: written, {len(generated.tests)} tests")
        else:
            change = mustpass.compare(old, generated)
            print(f"{shown}: written, {len(generated.tests)} tests ({len(change.not_in_list)} added, "
                  f"{len(change.vanished)} removed): review the diff before committing")
        return 0
    if not args.check:
        sys.stdout.write(generated.text())
    if not os.path.exists(path):
        print(f"{shown} is not written yet ({len(generated.tests)} tests selected today)", file=sys.stderr)
        return 1 if args.check else 0
    comparison = mustpass.compare(mustpass.read_list(path), generated)
    report = sys.stdout if args.check else sys.stderr
    print(f"{shown}: {len(generated.tests) - len(comparison.not_in_list)} listed tests selected today, "
          f"{len(comparison.not_in_list)} not in the list, {len(comparison.vanished)} listed but not selected",
          file=report)
    for nodeid in comparison.not_in_list:
        print(f"not in the list: {nodeid}", file=report)
    for nodeid in comparison.vanished:
        print(f"listed, not selected today: {nodeid}", file=report)
    if comparison.rules_changed:
        print(f"the profile's rules changed since the list was written: {profile.rules()}", file=report)
    return 1 if args.check and not comparison.runnable else 0


def _run(args, checkout) -> int:
    from ascend_conformance.acceptance import profiles, verify
    from ascend_conformance.acceptance import run as run_mod
    from ascend_conformance.acceptance.checkout import suite_version

    profile = profiles.get(args.profile)
    out = args.out or run_mod.default_out(profile, suite_version())
    run_mod.check_out_path(out, create_parent=args.out is None)
    try:
        path = run_mod.run(checkout, profile, out, workers=args.workers)
    except KeyboardInterrupt:
        print(f"\nacceptance: interrupted; no bundle written ({out} untouched)", file=sys.stderr)
        return 130
    print(f"\nacceptance: bundle written: {path}\n")
    report = verify.verify(path, checkout)
    print(report.render())
    return report.exit_code


def _verify(args, checkout) -> int:
    from ascend_conformance.acceptance import verify

    report = verify.verify(args.bundle, checkout, args.releases)
    print(report.render(show_all=args.all))
    return report.exit_code


def _release(args, checkout) -> int:
    from ascend_conformance.acceptance import manifest, profiles
    from ascend_conformance.acceptance.checkout import suite_version

    version = suite_version()
    path = manifest.release(checkout, version, list(profiles.PROFILES), out=args.out)
    covered = manifest.read_release(path).get("profiles") or []
    print(f"{path}: release manifest of suite {version} (mustpass lists: {', '.join(covered)})")
    return 0

