"""The committed mustpass lists of this checkout can still be run (docs/acceptance.md#mustpass-lists).

For every profile, the list of the current suite version must exist, name the profile and version it
sits under, and every listed test must still be selected from today's collection under the profile's
rules: a renamed, removed or re-tiered listed test fails here, naming it, because an acceptance of that
list could never be complete. Tests added since the list was written are no failure — they are not in
the list until someone writes it again (``acceptance list --write``, refused once the version is
released); their number is printed. One collection per set of collection options (the NPU profiles
share one).
"""
from __future__ import annotations

import functools

import pytest

from ascend_conformance.acceptance import checkout as checkout_mod
from ascend_conformance.acceptance import mustpass, profiles


@functools.lru_cache(maxsize=None)
def _inventory(args: tuple[str, ...]) -> tuple:
    profile = next(p for p in profiles.PROFILES.values() if tuple(mustpass.collection_args(p)) == args)
    return tuple(mustpass.collect_inventory(checkout_mod.locate(), profile))


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_committed_list_is_runnable(name, capsys):
    profile = profiles.get(name)
    checkout = checkout_mod.locate()
    version = checkout_mod.suite_version()
    listed = mustpass.committed(checkout, version, profile)
    inventory = list(_inventory(tuple(mustpass.collection_args(profile))))
    comparison = mustpass.compare(listed, mustpass.generate(checkout, version, profile, inventory))
    assert not comparison.vanished, (
        f"{checkout.mustpass_relpath(version, name)} lists {len(comparison.vanished)} test(s) the suite no longer "
        f"selects for {name}: {', '.join(comparison.vanished[:10])}; an unreleased version's list is rewritten with "
        f"`ascend-conformance acceptance list --profile {name} --write` (review the diff), a released one is frozen")
    with capsys.disabled():
        if comparison.not_in_list:
            print(f"\n{name}: {len(comparison.not_in_list)} test(s) of the suite are not in "
                  f"{checkout.mustpass_relpath(version, name)} (added after it was written)")
