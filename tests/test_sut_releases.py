"""Release lines of the systems under test: naming the installed release, reading what it offers, choosing an
adapter's shim, pairing vllm-ascend with vLLM, its source, vLLM's requirements. Nothing here downloads or
imports a release: the packages, wheels and checkouts are made up in a temporary directory."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import installed, lines, pair_env, probe, release_sources, requirements
from ascend_conformance.sut.installed import Release
from ascend_conformance.sut.probe import Need


# -- naming the installed release -----------------------------------------------------------------------

def test_a_checkout_is_named_by_its_name_and_commit_and_ordered_before_the_vllm_it_pairs():
    main = Release("vllm_ascend", "main", "0.19.2.dev1637+g182b75ea84", "182b75ea84aa", "0.27.1")
    assert main.label == "vllm_ascend main@182b75ea84" and main.file_stem == "vllm_ascend-main"
    assert main.comparable == "0.27.1.dev0" and main.line == "main"
    released = Release("vllm_ascend", "0.23.0.post1", "0.23.0.post1")
    assert released.label == "vllm_ascend 0.23.0.post1" and released.line == "0.23" and not released.is_checkout
    from packaging.version import Version

    order = [Release("vllm_ascend", v, v) for v in ("0.18.0", "0.13.0", "0.23.0.post1")] + [main]
    assert [r.name for r in sorted(order, key=lambda r: Version(r.comparable))] == \
        ["0.13.0", "0.18.0", "0.23.0.post1", "main"]


def _git(directory, *args):
    subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_a_checkouts_version_is_what_git_describe_gives(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("1")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-qm", "one")
    _git(tmp_path, "tag", "v0.18.0")
    assert installed.describe_version(str(tmp_path)) == "0.18.0"
    (tmp_path / "f").write_text("2")
    _git(tmp_path, "commit", "-qam", "two")
    identity = installed.source_identity(str(tmp_path))
    assert identity["version"].startswith("0.18.1.dev1+g") and len(identity["commit"]) == 40


def test_the_marker_of_a_linked_checkout_names_the_release(tmp_path, monkeypatch):
    package = tmp_path / "src" / "vllm_ascend"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    (tmp_path / installed.MARKER).write_text(
        '{"vllm_ascend": {"name": "main", "version": "0.19.2.dev5+gabc", "commit": "abcdef1234567", '
        f'"pairs_with": "0.27.1", "location": "{tmp_path / "src"}"}}}}')
    found = installed.installed("vllm_ascend")
    assert found.label == "vllm_ascend main@abcdef1234" and found.comparable == "0.27.1.dev0"


# -- what a release offers ---------------------------------------------------------------------------------

@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """A package ``fakesut`` on sys.path (never imported by the probe)."""
    root = tmp_path / "fakesut"
    (root / "eplb").mkdir(parents=True)
    (root / "__init__.py").write_text("raise RuntimeError('the probe must not import me')\n")
    (root / "eplb" / "__init__.py").write_text("from .utils import place as place_alias\n")
    (root / "eplb" / "utils.py").write_text(textwrap.dedent("""
        def place(n_expert, ep_size, n_redundant): ...
        def flexible(*args, **kwargs): ...
        class Factory:
            def generate(policy_type): ...
        TABLE = {}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fakesut"


def test_the_probe_reads_modules_names_methods_and_parameters_without_importing(fake_release):
    assert probe.missing([Need("fakesut.eplb.utils", "place", ("n_expert", "ep_size")),
                          Need("fakesut.eplb.utils", "Factory.generate", ("policy_type",)),
                          Need("fakesut.eplb.utils", "TABLE"), Need("fakesut.eplb.utils", "flexible", ("anything",)),
                          Need("fakesut.eplb", "place_alias", ("n_redundant",))]) == []
    assert probe.missing([Need("fakesut.eplb.utils", "place", ("n_expert", "num_shared_experts")),
                          Need("fakesut.eplb.utils", "Factory.generate", ("policy_type", "config")),
                          Need("fakesut.eplb.utils", "gone"), Need("fakesut.layer_shard")]) == [
        "fakesut.eplb.utils.place: takes no parameter num_shared_experts",
        "fakesut.eplb.utils.Factory.generate: takes no parameter config",
        "fakesut.eplb.utils.gone: not defined",
        "fakesut.layer_shard: no such module"]
    assert "fakesut" not in sys.modules


# -- choosing a shim ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_shims(tmp_path, monkeypatch, fake_release):
    package = tmp_path / "fakeshims" / "adapter"
    package.mkdir(parents=True)
    (tmp_path / "fakeshims" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    common = ("from ascend_conformance.sut.lines import Feature\nfrom ascend_conformance.sut.probe import Need\n"
              "FEATURES = {{'eplb': Feature(marker=(Need('fakesut.eplb.utils', 'place'),), "
              "uses=(Need('fakesut.eplb.utils', 'place', ({params})),)), "
              "'sharding': Feature(marker=(Need('fakesut.layer_shard'),))}}\n")
    (package / "v0_13.py").write_text(common.format(params="'n_expert', 'ep_size', 'n_redundant'"))
    (package / "v0_23.py").write_text(common.format(params="'n_expert', 'num_shared_experts'"))
    monkeypatch.setattr(lines, "SHIM_PACKAGE", "fakeshims")
    for name in [m for m in sys.modules if m.startswith("fakeshims")]:
        monkeypatch.delitem(sys.modules, name)
    return "adapter"


def test_a_release_takes_the_newest_shim_not_newer_than_its_line(fake_shims):
    pick = lambda *release: lines.line_module(fake_shims, Release("vllm_ascend", *release)).__name__.rsplit(".", 1)[1]
    assert pick("0.13.0", "0.13.0") == "v0_13"
    assert pick("0.18.0", "0.18.0") == "v0_13"
    assert pick("0.23.0.post1", "0.23.0.post1") == "v0_23"
    assert pick("main", "0.19.2.dev3+gabc", "abc", "0.27.1") == "v0_23"
    with pytest.raises(lines.NotInRelease, match=r"^not in vllm_ascend 0\.11\.0: older than the oldest line the "
                                                 r"suite's adapter adapter supports \(0\.13\)$"):
        pick("0.11.0", "0.11.0")


def test_a_missing_feature_is_not_in_the_release_and_a_moved_api_is_a_shim_mismatch(fake_shims, monkeypatch):
    monkeypatch.setattr(lines, "current_release", lambda sut: Release("vllm_ascend", "0.18.0", "0.18.0"))
    lines.check_feature(fake_shims, "vllm_ascend", "eplb")  # v0_13's needs hold
    with pytest.raises(lines.NotInRelease, match=r"^not in vllm_ascend 0\.18\.0: sharding \(fakesut\.layer_shard: "
                                                 r"no such module\)$"):
        lines.check_feature(fake_shims, "vllm_ascend", "sharding")
    monkeypatch.setattr(lines, "current_release", lambda sut: Release("vllm_ascend", "0.23.0", "0.23.0"))
    with pytest.raises(lines.ShimMismatch, match=r"the adapter shim v0_23 does not fit vllm_ascend 0\.23\.0 for eplb: "
                                                 r"fakesut\.eplb\.utils\.place: takes no parameter num_shared_experts"):
        lines.check_feature(fake_shims, "vllm_ascend", "eplb")
    with pytest.raises(ConfigError, match="declares no feature 'moe'"):
        lines.check_feature(fake_shims, "vllm_ascend", "moe")


# -- pairing and sources -----------------------------------------------------------------------------------

def test_the_pairing_comes_from_the_release_dockerfile_else_the_table(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM base\nARG VLLM_TAG=v0.27.1\nRUN x\n")
    spec = release_sources.ReleaseSpec("main", str(tmp_path))
    assert release_sources.paired_vllm(spec, str(tmp_path))[0] == "0.27.1"
    assert release_sources.paired_vllm(release_sources.ReleaseSpec("0.18.0"), None) == \
        ("0.18.0", "the suite's table of releases (ascend_conformance/sut/release.py)")
    with pytest.raises(ConfigError, match=r"cannot tell which vLLM vllm-ascend 9\.9\.9 pairs with .*: pass --vllm"):
        release_sources.paired_vllm(release_sources.ReleaseSpec("9.9.9"), None)


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return str(path)


def test_a_wheel_is_unpacked_as_python_source_without_compiled_files_or_entry_points(tmp_path):
    wheel = _wheel(tmp_path / "vllm_ascend-0.18.0-cp311-cp311-manylinux_2_24_x86_64.whl", {
        "vllm_ascend/__init__.py": "", "vllm_ascend/vllm_ascend_C.cpython-311-x86_64-linux-gnu.so": "ELF",
        "vllm_ascend-0.18.0.dist-info/METADATA": "Name: vllm_ascend\nVersion: 0.18.0\n",
        "vllm_ascend-0.18.0.dist-info/entry_points.txt": "[vllm.platform_plugins]\nascend = vllm_ascend:register\n",
        "vllm_ascend-0.18.0.dist-info/RECORD": ""})
    source = release_sources.unpack(wheel, "0.18.0", str(tmp_path / "src" / "vllm_ascend-0.18.0"), "A2",
                                    log=lambda line: None)
    files = sorted(os.path.relpath(os.path.join(d, f), source) for d, _, names in os.walk(source) for f in names)
    assert files == ["vllm_ascend-0.18.0.dist-info/METADATA", "vllm_ascend/__init__.py", "vllm_ascend/_build_info.py"]
    assert "__device_type__ = 'A2'" in open(os.path.join(source, "vllm_ascend", "_build_info.py")).read()
    assert os.listdir(tmp_path / "src") == ["vllm_ascend-0.18.0"], "no staging directory left behind"


def test_an_sdist_with_two_top_directories_is_refused_and_leaves_nothing(tmp_path):
    archive_path = tmp_path / "odd.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        for name in ("a/vllm_ascend/__init__.py", "b/vllm_ascend/__init__.py"):
            info = tarfile.TarInfo(name)
            archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(ConfigError, match=r"expected one top directory holding vllm_ascend/, found \[('a', 'b'|'b', 'a')\]"):
        release_sources.unpack(str(archive_path), "x", str(tmp_path / "src" / "x"), "A3", log=lambda line: None)
    assert os.listdir(tmp_path / "src") == []


def test_a_checkout_is_linked_through_a_directory_of_its_own(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "vllm_ascend").mkdir(parents=True)
    (checkout / "vllm_ascend.egg-info").mkdir()
    (checkout / "vllm_ascend.egg-info" / "entry_points.txt").write_text("[vllm.platform_plugins]\n")
    linked = release_sources.link_checkout(str(checkout), str(tmp_path / "env" / "src" / "main"), "A3")
    assert os.listdir(linked) == ["vllm_ascend"], "the checkout's egg-info (its entry points) stays off the path"
    assert os.path.realpath(os.path.join(linked, "vllm_ascend")) == str(checkout / "vllm_ascend")
    assert (checkout / "vllm_ascend" / "_build_info.py").exists()


def test_the_index_artifact_is_the_sdist_else_a_cpython_311_wheel():
    files = [{"filename": "vllm_ascend-0.13.0-cp311-cp311-manylinux_2_24_x86_64.whl"},
             {"filename": "vllm_ascend-0.13.0.tar.gz"}, {"filename": "vllm_ascend-0.13.0rc1.tar.gz"}]
    assert release_sources.choose_artifact(files, "0.13.0", "x86_64")["filename"] == "vllm_ascend-0.13.0.tar.gz"
    assert release_sources.choose_artifact(files[:1], "0.13.0", "aarch64")["filename"].endswith("_x86_64.whl")
    assert release_sources.choose_artifact(files, "0.14.0", "x86_64") is None


# -- vLLM's requirements -----------------------------------------------------------------------------------

def test_vllms_declared_requirements_lose_the_accelerator_stack_extras_and_other_platforms(tmp_path):
    metadata = "\n".join(["Name: vllm", "Version: 0.27.1", "Requires-Dist: regex",
                          "Requires-Dist: torch==2.13.0", "Requires-Dist: nvidia-cutlass-dsl[cu13]==4.6.0",
                          "Requires-Dist: flashinfer-python==0.6.16", "Requires-Dist: xgrammar<1.0.0,>=0.2.1; "
                          "platform_machine == \"x86_64\" or platform_machine == \"aarch64\"",
                          "Requires-Dist: six>=1.16.0; python_version > \"3.11\"",
                          "Requires-Dist: pytest; extra == \"test\"", "Requires-Dist: fastapi[standard]<0.137"])
    wheel = _wheel(tmp_path / "vllm-0.27.1-cp38-abi3-manylinux_2_28_x86_64.whl",
                   {"vllm-0.27.1.dist-info/METADATA": metadata})
    import platform

    expected = ["regex"] + (["xgrammar<1.0.0,>=0.2.1"] if platform.machine() in ("x86_64", "aarch64") else [])
    assert requirements.declared(wheel) == expected + ["fastapi[standard]<0.137"]


def test_a_lock_file_holds_exact_pins_and_never_the_accelerator_stack(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("# header\nnumpy==2.3.5\n\nregex==2026.12.2  # comment\n")
    assert requirements.read_lock(str(good)) == ["numpy==2.3.5", "regex==2026.12.2"]
    (tmp_path / "loose.txt").write_text("numpy>=2\n")
    with pytest.raises(ConfigError, match=r"loose\.txt:1: 'numpy>=2' is not an exact pin"):
        requirements.read_lock(str(tmp_path / "loose.txt"))
    (tmp_path / "cuda.txt").write_text("triton==3.8.0\n")
    with pytest.raises(ConfigError, match="part of the accelerator stack"):
        requirements.read_lock(str(tmp_path / "cuda.txt"))


def test_the_committed_locks_pin_every_package_once():
    for name in sorted(os.listdir(requirements.LOCK_DIRECTORY)):
        pins = requirements.read_lock(os.path.join(requirements.LOCK_DIRECTORY, name))
        names = [requirements.normalise(pin.split("==")[0]) for pin in pins]
        assert len(names) == len(set(names)), name
        assert not [n for n in names if n in ("torch", "vllm", "vllm-ascend")], name


def test_pair_environments_are_listed_from_their_markers(tmp_path):
    done = tmp_path / "0.18.0-0.18.0"
    done.mkdir()
    (done / installed.MARKER).write_text('{"vllm_ascend": {"name": "0.18.0"}, "vllm": {"version": "0.18.0"}, '
                                         '"complete": true}')
    half = tmp_path / "main-0.27.1"
    half.mkdir()
    (half / installed.MARKER).write_text('{"vllm_ascend": {"name": "main"}, "vllm": {"version": "0.27.1"}}')
    assert [(p.vllm_ascend, p.vllm) for p in pair_env.list_pairs(str(tmp_path))] == [("0.18.0", "0.18.0")]
