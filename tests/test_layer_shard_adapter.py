"""The layer-sharding adapter without a release: which shim each release line takes, "not in <release>" where
layer sharding is gone, the planted breakages located in a release's syntax tree, one crash line per
configuration."""
from __future__ import annotations

import ast
import os
import textwrap

import pytest

from ascend_conformance.errors import ConfigError
from ascend_conformance.sut import installed, lines, probe
from ascend_conformance.sut import vllm_ascend_layer_shard as layer_shard

ADAPTER = layer_shard.ADAPTER


def release(name: str, pairs_with: str | None = None, commit: str | None = None) -> installed.Release:
    return installed.Release(sut="vllm_ascend", name=name, version=name if commit is None else "0.19.2.dev1",
                             commit=commit, pairs_with=pairs_with)


@pytest.mark.parametrize("name, pairs_with, commit", [
    ("0.13.0", None, None), ("0.18.0", None, None), ("0.23.0.post1", None, None),
    ("main", "0.27.1", "182b75ea84" + "0" * 30),
])
def test_every_supported_line_takes_the_v0_13_shim(name, pairs_with, commit):
    module = lines.line_module(ADAPTER, release(name, pairs_with, commit))
    assert module.__name__.endswith(f"{ADAPTER}.v0_13"), module.__name__
    assert set(module.FEATURES) == {layer_shard.FEATURE}


def test_a_line_older_than_the_shims_is_not_in_release():
    with pytest.raises(lines.NotInRelease, match=r"^not in vllm_ascend 0\.11\.0: older than the oldest line .*0\.13"):
        lines.line_module(ADAPTER, release("0.11.0"))


# -- the feature probed in a source tree ------------------------------------------------------------

SERIES_MODULE = '''
def register_layer_to_shard_weight_series(series_name, group, layer, prefetch_step=1):
    pass
def post_process_after_loading_for_shard_weight_series(layer):
    pass
def reach_layer_for_shard_weight_series(layer):
    pass
class ShardWindowMetadata:
    pass
class SeriesMetadata:
    def is_source(self, layer_idx):
        return True
    def reach_layer(self, layer_idx):
        pass
_series_dict = {}
_layer_external_dict = {}
'''


def fake_tree(root, with_layer_sharding: bool) -> str:
    files = {
        "vllm/__init__.py": "", "vllm/model_executor/__init__.py": "",
        "vllm/model_executor/layers/__init__.py": "", "vllm/model_executor/models/__init__.py": "",
        "vllm/model_executor/layers/linear.py": (
            "class ReplicatedLinear:\n"
            "    def __init__(self, input_size, output_size, bias=True, params_dtype=None, prefix=''):\n"
            "        pass\n"),
        "vllm/model_executor/models/utils.py": "def extract_layer_index(layer_name, num_attn_module=1):\n    pass\n",
        "vllm_ascend/__init__.py": "", "vllm_ascend/ops/__init__.py": "", "vllm_ascend/distributed/__init__.py": "",
        "vllm_ascend/distributed/parallel_state.py": "def get_shard_weight_group():\n    pass\n",
    }
    if with_layer_sharding:
        files["vllm_ascend/ops/layer_shard_linear.py"] = SERIES_MODULE
    for relative, text in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


@pytest.fixture
def installed_tree(tmp_path, monkeypatch):
    def use(name: str, with_layer_sharding: bool, pairs_with=None, commit=None):
        root = fake_tree(tmp_path / name, with_layer_sharding)
        monkeypatch.setattr(installed, "package_location", lambda sut: root)
        monkeypatch.setattr(lines, "current_release", lambda sut: release(name, pairs_with, commit))
    return use


def test_layer_sharding_can_be_driven_where_the_release_has_it(installed_tree):
    installed_tree("0.18.0", with_layer_sharding=True)
    lines.check_feature(ADAPTER, "vllm_ascend", layer_shard.FEATURE)  # returns: nothing missing


def test_main_without_layer_shard_linear_is_not_in_release_naming_the_commit(installed_tree):
    installed_tree("main", with_layer_sharding=False, pairs_with="0.27.1", commit="182b75ea84" + "0" * 30)
    with pytest.raises(lines.NotInRelease) as caught:
        lines.check_feature(ADAPTER, "vllm_ascend", layer_shard.FEATURE)
    assert str(caught.value) == ("not in vllm_ascend main@182b75ea84: layer_sharding "
                                 "(vllm_ascend.ops.layer_shard_linear: no such module)")


def test_a_moved_protocol_call_is_a_shim_mismatch_not_a_skip(installed_tree, tmp_path):
    installed_tree("0.18.0", with_layer_sharding=True)
    path = probe.source_file(layer_shard.MODULE)
    with open(path, "w") as f:
        f.write(SERIES_MODULE.replace("def reach_layer_for_shard_weight_series(layer)",
                                      "def reach_layer_for_shard_weight_series(module)"))
    with pytest.raises(lines.ShimMismatch, match=r"v0_13 does not fit vllm_ascend 0\.18\.0 for layer_sharding: "
                       r"vllm_ascend\.ops\.layer_shard_linear\.reach_layer_for_shard_weight_series: "
                       r"takes no parameter layer"):
        lines.check_feature(ADAPTER, "vllm_ascend", layer_shard.FEATURE)


# -- planted breakages ------------------------------------------------------------------------------

# The shape of a release's series (not its code): the owner test and the two broadcasts, one of them
# spread over lines as older releases format it.
SERIES_SHAPE = textwrap.dedent('''
    import torch.distributed as dist

    class SeriesMetadata:
        def is_source(self, layer_idx):
            return layer_idx % self.group.world_size == self.group.rank_in_group

        def post_process_after_loading(self):
            for layer_idx in range(4):
                dist.broadcast(self.weights[layer_idx],
                               src=self.group.ranks[layer_idx %
                                                    self.group.world_size],
                               group=self.group.device_group)

        def reach_layer(self, layer_idx):
            nxt = layer_idx + 1
            self.work = dist.broadcast(self.weights[nxt], src=self.group.ranks[nxt % self.group.world_size],
                                       group=self.group.device_group, async_op=True)
''')


def calls(text: str, method: str) -> list[str]:
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    function = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method)
    return [ast.unparse(n) for n in ast.walk(function) if isinstance(n, (ast.Call, ast.Compare))]


def test_broadcast_source_breakage_sends_from_the_group_rank_in_every_broadcast():
    planted = layer_shard.planted_source(SERIES_SHAPE, "broadcast-source-is-group-rank")
    assert any("src=layer_idx % self.group.world_size" in c for c in calls(planted, "post_process_after_loading"))
    assert any("src=nxt % self.group.world_size" in c for c in calls(planted, "reach_layer"))
    assert "self.group.ranks[" not in planted
    assert calls(planted, "is_source") == calls(SERIES_SHAPE, "is_source")  # the owner is left alone


def test_owner_breakage_reads_the_global_rank_and_leaves_the_broadcasts():
    planted = layer_shard.planted_source(SERIES_SHAPE, "owner-is-global-rank")
    assert calls(planted, "is_source") == ["layer_idx % self.group.world_size == self.group.rank"]
    assert planted.count("src=self.group.ranks[") == 2


@pytest.mark.parametrize("breakage, without, message", [
    ("broadcast-source-is-group-rank", "src=self.group.ranks[nxt % self.group.world_size]",
     r"SeriesMetadata\.reach_layer has no dist\.broadcast\(src=self\.group\.ranks\[\.\.\.\]\)"),
    ("owner-is-global-rank", "self.group.rank_in_group", r"is_source does not read self\.group\.rank_in_group"),
])
def test_a_step_the_line_moved_cannot_be_planted_and_says_which(breakage, without, message):
    moved = SERIES_SHAPE.replace(without, "src_of(nxt)" if "src=" in without else "self.me")
    with pytest.raises(layer_shard.PlantError, match=message):
        layer_shard.planted_source(moved, breakage)


def test_unknown_breakage_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown breakage 'x' \(known: broadcast-source-is-group-rank, "):
        layer_shard.planted_source(SERIES_SHAPE, "x")


@pytest.mark.parametrize("breakage", list(layer_shard.BREAKAGES))
def test_every_breakage_plants_in_the_installed_release(breakage):
    path = probe.source_file(layer_shard.MODULE)
    if path is None:
        pytest.skip(f"no {layer_shard.MODULE} installed here")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    planted = layer_shard.planted_source(text, breakage)
    assert planted != text and planted.count("\n") == text.count("\n")


# -- one line per crashed configuration --------------------------------------------------------------

def _raise_in_a_release_file(tmp_path):
    path = tmp_path / "vllm_ascend" / "ops" / "layer_shard_linear.py"
    path.parent.mkdir(parents=True)
    path.write_text("def reach_layer():\n    raise ValueError('Global rank 1 is not part of group\\nmore')\n")
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["reach_layer"]


def test_a_crashed_configuration_is_recorded_in_one_line_with_where_it_was_raised(tmp_path):
    outcome: dict = {"owned": 2}
    with layer_shard.crash_recorded(outcome):
        _raise_in_a_release_file(tmp_path)()
    assert outcome == {"owned": 2, "crash": "ValueError: Global rank 1 is not part of group "
                                            "(vllm_ascend/ops/layer_shard_linear.py:2 reach_layer)"}


def test_a_configuration_that_runs_records_nothing_and_interrupts_still_propagate():
    outcome: dict = {}
    with layer_shard.crash_recorded(outcome):
        outcome["ran"] = True
    assert outcome == {"ran": True}
    with pytest.raises(KeyboardInterrupt), layer_shard.crash_recorded(outcome):
        raise KeyboardInterrupt
    assert "crash" not in outcome
