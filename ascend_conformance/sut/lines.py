"""Release lines, and the shim of an adapter for the line installed here.

An adapter (``vllm_ascend_moe.py``, ...) holds the test logic once. What moved between release lines of
the system under test (a signature, a module, a constructor argument) is supplied by a *shim*: one small
module per line where something changed, ``ascend_conformance/sut/shims/<adapter>/v<major>_<minor>.py``,
each providing the same functions. The installed release uses the newest shim whose line is not newer than
its own; so a line that changed nothing for an adapter needs no module of its own.

Worked example: shims ``vllm_ascend_eplb/v0_13.py`` and ``v0_23.py``; vllm-ascend 0.18.0 (comparable
0.18.0) uses ``v0_13``, 0.23.0.post1 uses ``v0_23``, main (pairing vLLM 0.27.1, comparable 0.27.1.dev0)
uses ``v0_23``; 0.11.0 is older than every shim: "vllm_ascend 0.11.0 is older than the oldest line this
adapter supports (0.13)".

Each shim declares ``FEATURES``: feature name -> :class:`Feature`, what the adapter needs of the release for
that feature. A feature whose ``marker`` needs are missing does not exist in the release: its tests are
"not in <release>: <what is missing>" (:class:`NotInRelease`). A feature that exists but whose other
needs are missing means the shim does not fit the release (an API moved): :class:`ShimMismatch`, a failure
of the suite's own, naming the line to bring up (docs/bringing_up_a_release.md).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import installed, probe
from ascend_conformance.sut.probe import Need

SHIM_PACKAGE = "ascend_conformance.sut.shims"


class NotInRelease(Exception):
    """A feature the installed release does not have; the message is the skip reason, ``not in <label>: ...``."""


class ShimMismatch(RuntimeError):
    """The shim chosen for the installed release does not fit it: the suite must bring the line up."""


@dataclasses.dataclass(frozen=True)
class Feature:
    """What an adapter needs of a release for one feature: ``marker`` (the feature exists) and ``uses``
    (what the shim drives)."""

    marker: tuple[Need, ...]
    uses: tuple[Need, ...] = ()


def shim_lines(adapter: str) -> list[tuple[tuple[int, int], str]]:
    """``[((major, minor), module name)]`` of an adapter's shims, oldest first."""
    package = importlib.import_module(f"{SHIM_PACKAGE}.{adapter}")
    found = []
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("v") and module.name[1:].replace("_", "").isdigit():
            major, minor = module.name[1:].split("_")[:2]
            found.append(((int(major), int(minor)), module.name))
    return sorted(found)


def line_module(adapter: str, release: installed.Release):
    """The shim module of ``adapter`` for ``release`` (see the module docstring)."""
    from packaging.version import Version

    version = Version(release.comparable)
    mine = (version.major, version.minor)
    available = shim_lines(adapter)
    chosen = [name for line, name in available if line <= mine]
    if not chosen:
        oldest = ".".join(map(str, available[0][0])) if available else "none"
        raise NotInRelease(f"not in {release.label}: older than the oldest line the suite's {adapter} adapter "
                           f"supports ({oldest})")
    return importlib.import_module(f"{SHIM_PACKAGE}.{adapter}.{chosen[-1]}")


def current_release(sut: str) -> installed.Release:
    release = installed.installed(sut)
    if release is None:
        raise ConfigError(f"{sut} is not installed in this environment")
    return release


def shim(adapter: str, sut: str):
    """The shim of ``adapter`` for the installed release of ``sut``."""
    return line_module(adapter, current_release(sut))


def check_feature(adapter: str, sut: str, feature: str) -> None:
    """Raise :class:`NotInRelease` when the installed release lacks ``feature``, :class:`ShimMismatch` when
    the adapter's shim for its line does not fit it; return when the feature can be driven."""
    release = current_release(sut)
    module = line_module(adapter, release)
    features = getattr(module, "FEATURES", {})
    if feature not in features:
        raise ConfigError(f"{adapter} shim {module.__name__} declares no feature {feature!r} "
                          f"(it has {', '.join(sorted(features)) or 'none'})")
    spec = features[feature]
    absent = probe.missing(spec.marker)
    if absent:
        raise NotInRelease(f"not in {release.label}: {feature} ({'; '.join(absent)})")
    unmet = probe.missing(spec.uses)
    if unmet:
        raise ShimMismatch(f"the {adapter} shim {module.__name__.rsplit('.', 1)[-1]} does not fit {release.label} "
                           f"for {feature}: {'; '.join(unmet)} (bring the line up: docs/bringing_up_a_release.md)")


__all__ = ["Feature", "Need", "NotInRelease", "ShimMismatch", "shim", "line_module", "check_feature", "shim_lines"]
