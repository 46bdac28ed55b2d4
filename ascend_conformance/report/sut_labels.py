"""Which system under test a result was measured on: the ``sut`` and ``ops`` of every result record.

A test names its system under test with ``@pytest.mark.sut("vllm_ascend")`` (a module's ``pytestmark``
or per test); a test without the marker judges the suite's own reference implementation. The label
(:attr:`ascend_conformance.sut.SystemUnderTest.label`) adds the installed release, so results of two
releases never mix::

    >>> label("reference", "cpu")
    'reference'
    >>> label("vllm_ascend", "cpu")  # doctest: +SKIP
    'vllm_ascend 0.23.0.post1'

``ops`` says what ran the torch_npu leaf ops: ``torch_npu`` when the platform under test is npu and the
real torch_npu imports, else ``golden`` (the suite's models: the torch_npu stand-in inside SUT runs, the
vendor-op paths of the reference suites on CPU). A test that knows better (say, a SUT run whose ranks
report the ops and emulated device type they used) refines its own record through the ``report``
fixture: ``report.sut(ops=..., device_type=...)``.
"""
from __future__ import annotations

import functools
from importlib import metadata

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import NAMES, REFERENCE, SystemUnderTest

OPS = ("golden", "torch_npu")


def check_name(name: object) -> str:
    """``name`` when it names a system under test, else a one-line ConfigError."""
    if name not in NAMES:
        raise ConfigError(f"unknown system under test {name!r}: choose one of {', '.join(NAMES)}")
    return name


def check_ops(ops: object) -> str:
    if ops not in OPS:
        raise ConfigError(f"ops must be one of {', '.join(OPS)}, got {ops!r}")
    return ops


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str:
    """The installed release of ``name`` (the suite's own version for the reference)."""
    if name == REFERENCE:
        try:
            return metadata.version("ascend-conformance")
        except metadata.PackageNotFoundError:
            return "unknown"
    from ascend_conformance.sut import installed

    release = installed.installed(name)
    # what follows the name in its label: "0.18.0", or a checkout's "main@182b75ea84"
    return release.label.split(" ", 1)[1] if release is not None else "not installed"


@functools.lru_cache(maxsize=None)
def default_ops(platform_name: str) -> str:
    """``torch_npu`` when the platform under test is npu and the real torch_npu imports, else ``golden``."""
    if platform_name != "npu":
        return "golden"  # nothing to import: no real torch_npu runs off the npu platform
    from ascend_conformance.platform import torch_npu_import_error

    return "torch_npu" if torch_npu_import_error() is None else "golden"


def system_under_test(name: str, platform_name: str) -> SystemUnderTest:
    """The system under test ``name`` as installed here, with the ops the platform gives it."""
    return SystemUnderTest(check_name(name), _version(name), default_ops(platform_name))


def label(name: str, platform_name: str) -> str:
    return system_under_test(name, platform_name).label


def sort_key(sut_label: str) -> tuple:
    """Reference first, then vLLM, then vllm-ascend (each by release), then anything else."""
    name = sut_label.split(" ", 1)[0]
    return (NAMES.index(name) if name in NAMES else len(NAMES), sut_label)
