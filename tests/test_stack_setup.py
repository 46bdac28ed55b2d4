"""Setting up: the checkout's own environment (tools/ensure_setup.py) and the systems-under-test stack
(ascend_conformance/sut/stack.py). Nothing here downloads or installs: the pip and network steps are the
ones `make setup` runs; these tests check the decisions around them and the one-line errors."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import release, stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ensure_setup():
    spec = importlib.util.spec_from_file_location("ensure_setup", os.path.join(ROOT, "tools", "ensure_setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_install_of_this_environment_points_at_this_checkout():
    ensure = load_ensure_setup()
    assert ensure.installed_checkout() == os.path.realpath(ROOT)


def test_the_stamp_is_stale_when_pyproject_or_the_interpreter_changed(tmp_path, monkeypatch):
    ensure = load_ensure_setup()
    monkeypatch.setattr(ensure, "STAMP", str(tmp_path / "stamp"))
    assert not ensure.stamp_current(), "no stamp: not set up"
    (tmp_path / "stamp").write_text(json.dumps({"python": os.path.realpath(sys.prefix),
                                                "pyproject": ensure.pyproject_hash()}))
    assert ensure.stamp_current()
    (tmp_path / "stamp").write_text(json.dumps({"python": "/elsewhere", "pyproject": ensure.pyproject_hash()}))
    assert not ensure.stamp_current(), "another interpreter's stamp"
    (tmp_path / "stamp").write_text(json.dumps({"python": os.path.realpath(sys.prefix), "pyproject": "0" * 64}))
    assert not ensure.stamp_current(), "pyproject.toml changed since"


def test_make_uses_the_checkouts_own_environment_by_default():
    dry = subprocess.run(["make", "-n", "selftest"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/python tools/ensure_setup.py --stack pinned" in dry
    assert ".venv/bin/python -m pytest tests/" in dry
    own = subprocess.run(["make", "-n", "selftest", "PYTHON=/opt/mine/bin/python"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "/opt/mine/bin/python tools/ensure_setup.py" in own and "/opt/mine/bin/python -m pytest tests/" in own
    assert ".venv/bin/python tools" not in own and ".venv/bin/python -m" not in own


def test_the_pinned_list_never_names_torch_or_a_cuda_package():
    names = [requirement.split("==")[0].lower() for requirement in release.PURE_PYTHON_REQUIREMENTS]
    assert all("==" in requirement for requirement in release.PURE_PYTHON_REQUIREMENTS), "every package pinned"
    assert not [n for n in names if n.startswith(("torch", "nvidia", "triton", "flashinfer", "cuda"))]
    assert len(names) == len(set(names))


def _fake_sdist(path, digest_ok=True):
    top = f"vllm_ascend-{release.VLLM_ASCEND_VERSION}"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in ((f"{top}/vllm_ascend/__init__.py", "VERSION = 'fake'\n"),
                           (f"{top}/vllm_ascend.egg-info/PKG-INFO", f"Name: vllm_ascend\nVersion: {release.VLLM_ASCEND_VERSION}\n"),
                           (f"{top}/vllm_ascend.egg-info/entry_points.txt", "[vllm.platform_plugins]\nascend = x:y\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def test_a_sdist_whose_digest_differs_is_refused_naming_both(tmp_path, monkeypatch):
    monkeypatch.setenv(stack.SDIST_ENV, _fake_sdist(tmp_path / "fake.tar.gz"))
    with pytest.raises(ConfigError, match=rf"fake\.tar\.gz: sha256 [0-9a-f]{{64}} is not vllm-ascend "
                                          rf"{release.VLLM_ASCEND_VERSION}'s {release.VLLM_ASCEND_SDIST_SHA256}$"):
        stack._fetch_sdist(str(tmp_path / "cache"), log=lambda line: None)


def test_the_source_is_unpacked_whole_without_entry_points_and_with_the_device_type(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    source = stack._unpack_source(_fake_sdist(tmp_path / "fake.tar.gz"), "A2", log=lambda line: None)
    assert source == str(tmp_path / "src" / f"vllm_ascend-{release.VLLM_ASCEND_VERSION}")
    assert not os.path.exists(os.path.join(source, "vllm_ascend.egg-info", "entry_points.txt")), \
        "vLLM would load vllm-ascend as its platform plugin and ask for an NPU"
    assert "__device_type__ = 'A2'" in open(os.path.join(source, "vllm_ascend", "_build_info.py")).read()
    assert os.listdir(tmp_path / "src") == [os.path.basename(source)], "no staging directory left behind"


def test_a_broken_archive_leaves_nothing_half_written(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    (tmp_path / "broken.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(tarfile.TarError):
        stack._unpack_source(str(tmp_path / "broken.tar.gz"), "A3", log=lambda line: None)
    assert os.listdir(tmp_path / "src") == []


def test_linking_a_directory_without_vllm_ascend_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path} holds no vllm_ascend package"):
        stack._link_source(str(tmp_path))


def test_stack_cli_usage_errors_are_one_line(capsys):
    from ascend_conformance.cli import main

    assert main(["stack", "--vllm-ascend", "0.18.0"]) == 2
    assert capsys.readouterr().err == "error: --vllm-ascend needs --install\n"
    assert main(["stack", "--install", "--vllm", "0.18.0"]) == 2
    assert capsys.readouterr().err.startswith("error: --vllm needs --vllm-ascend (the default pair is vLLM ")
    assert main(["stack", "--install", "--vllm-ascend", "latest"]) == 2
    assert capsys.readouterr().err == ("error: 'latest' is neither a vllm-ascend version (0.18.0) nor a path nor "
                                       "NAME=PATH\n")


def test_the_stack_here_is_the_pinned_pair_and_imports():
    """`make setup` installed the pair (or the host has its own): what the SUT suites will run on."""
    packages = stack.inspect()
    missing = [name for name, package in packages.items() if package.version is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make setup STACK=none?)")
    assert stack.import_check() is None
