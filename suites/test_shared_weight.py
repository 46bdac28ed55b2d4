"""Shared-weight series (docs/shared_weight.md) on real multi-rank worlds, every layer, input and window on
the rank's device (``npu:k`` on an NPU host or the emulated device).

Reads top to bottom as the specification of :mod:`ascend_conformance.shared_weight`:
  1. the prefetch index against a hand-written table;
  2. outputs bit-identical (Kind.EXACT) to the unsharded model over >= 3 passes, on 2 and 4 ranks, for
     several stack lengths, start layers > 0 and every prefetch_step in [0, count - 2], over each kind of
     group (ranks list, ProcessGroup, GroupCoordinator, sub-groups per PP stage), with biases and a
     post-load hook. Ranks load NaN into the weights they do not own: only the owner's copy may reach a
     forward;
  3. weight storage per rank equals (owned layers)*W + (k+1)*W, counted from the storage bytes of every
     live tensor on the rank's device (gc, deduplicated by data_ptr), and stays there across passes;
  4. the checks catch a wrong schedule: a series run with a *start-blind* index (a mutant, defined here:
     ``(i + k) mod count + start``, which ignores where the series starts) is caught when its prefetch
     distance (k + start) mod count exceeds k, and passes where it equals the correct index; below k it
     runs exact and only the measured distance shows the lost overlap (the silent case, e.g. [30, 61), k = 1).
     Whether a release schedules like this is judged on the release itself (suites/test_sut_layer_shard.py,
     test_series_prefetch_distance), never from a copy of its formula;
  5. bad registrations are one-line ConfigErrors naming the values; misuse of the protocol is a
     PrefetchError.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from ascend_conformance import shared_weight as sw
from ascend_conformance.tolerance import Kind, assert_close
from ascend_conformance.errors import ConfigError, one_line
from ascend_conformance.harness import rank_context
from ascend_conformance.live_tensors import live_storages, new_objects_only, new_storage_sizes

HIDDEN = 8
TOKENS = 3


# ==================================================================================================
# helpers (run inside the ranks)
# ==================================================================================================

def rank_device() -> torch.device:
    """Where every tensor of the series lives in a rank: the rank's device (``npu:k`` on an NPU host)."""
    return torch.device(rank_context().device)


def true_weight(seed: int, layer: int, shape, dtype) -> torch.Tensor:
    """Layer ``layer``'s weight, a function of (seed, layer) only: every rank can compute the reference.
    Drawn on the host (a seeded CPU generator gives the same values on every platform); callers move it."""
    generator = torch.Generator().manual_seed(seed * 7919 + layer)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(shape[-1])).to(dtype)


def true_bias(seed: int, layer: int, size: int, dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 104729 + layer)
    return torch.randn(size, generator=generator, dtype=torch.float64).mul(0.1).to(dtype)


def build_stack(cfg: dict, owned_by_me) -> dict:
    """nn.Linear layers [start, end) on the rank's device; weights loaded only where ``owned_by_me(i)``, NaN
    elsewhere."""
    layers = {}
    for i in range(cfg["start"], cfg["start"] + cfg["count"]):
        layer = torch.nn.Linear(cfg["hidden"], cfg["hidden"], bias=cfg.get("bias", False), dtype=cfg["dtype"],
                                device=rank_device())
        with torch.no_grad():
            if owned_by_me(i):
                layer.weight.copy_(true_weight(cfg["seed"], i, layer.weight.shape, cfg["dtype"]))
            else:
                layer.weight.fill_(float("nan"))
            if layer.bias is not None:
                layer.bias.copy_(true_bias(cfg["seed"], i, cfg["hidden"], cfg["dtype"]))
        layer.requires_grad_(False)
        layers[i] = layer
    return layers


def reference_pass(cfg: dict, x: torch.Tensor) -> list:
    """The unsharded model: every weight local (on x's device), same ops in the same order."""
    outs = []
    for i in range(cfg["start"], cfg["start"] + cfg["count"]):
        weight = true_weight(cfg["seed"], i, (cfg["hidden"], cfg["hidden"]), cfg["dtype"]).to(x.device)
        if cfg.get("post_load_scale"):
            weight = weight * cfg["post_load_scale"]
        bias = true_bias(cfg["seed"], i, cfg["hidden"], cfg["dtype"]).to(x.device) if cfg.get("bias") else None
        x = torch.tanh(torch.nn.functional.linear(x, weight, bias))
        outs.append(x)
    return outs


def sharded_pass(layers: dict, x: torch.Tensor) -> list:
    outs = []
    for i in sorted(layers):
        sw.reach_layer(layers[i])
        x = torch.tanh(layers[i](x))
        outs.append(x)
    return outs


def pass_input(cfg: dict, p: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank_context().world_seed + 31 * p + cfg["start"])
    return torch.randn(TOKENS, cfg["hidden"], generator=generator, dtype=torch.float64).to(rank_device(),
                                                                                            cfg["dtype"])


class FakeCoordinator:
    """The attributes a GroupCoordinator exposes to a series (groups.py builds the real one)."""

    def __init__(self, ranks):
        self.ranks = list(ranks)
        self.device_group = dist.new_group(self.ranks)
        self.cpu_group = dist.new_group(self.ranks, backend="gloo")
        self.unique_name = "shard_weight"


def make_groups(configs: list) -> dict:
    """Every group the configs need, created on every rank in the same order (as groups.py does)."""
    world = list(range(dist.get_world_size()))
    groups = {}
    for cfg in configs:
        kind, ranks = cfg.get("group", "ranks"), tuple(cfg["ranks"])
        if (kind, ranks) in groups:
            continue
        if kind == "ranks":
            if list(ranks) != world:
                dist.new_group(list(ranks))  # the series finds it by its ranks
            groups[kind, ranks] = list(ranks)
        elif kind == "world":
            groups[kind, ranks] = dist.group.WORLD
        elif kind == "process_group":
            groups[kind, ranks] = dist.new_group(list(ranks))
        elif kind == "coordinator":
            groups[kind, ranks] = FakeCoordinator(ranks)
        else:
            raise AssertionError(kind)
    return groups


def group_rank_of(ranks) -> int:
    return list(ranks).index(dist.get_rank())


def run_series(cfg: dict, ranks: list, passes: int, group, index_formula=sw.prefetch_index) -> list:
    """Build, register, set up and run ``passes`` passes; the outputs of every layer of every pass."""
    n, me = len(ranks), group_rank_of(ranks)
    layers = build_stack(cfg, lambda i: i % n == me)
    post_load = None
    if cfg.get("post_load_scale"):
        scale = cfg["post_load_scale"]

        def post_load(module):
            module.weight.mul_(scale)
    name = f"o_proj@{cfg['start']}"
    for i, layer in layers.items():
        sw.register_layer(name, group, layer, i, prefetch_step=cfg["k"], index_formula=index_formula,
                          post_load=post_load)
    series = sw.finish_setup(name)
    try:
        return [sharded_pass(layers, pass_input(cfg, p)) for p in range(passes)]
    finally:
        series.drain()
        sw.release_series(name)


def check_configs_exact(configs: list, passes: int) -> int:
    """Every config: sharded outputs == unsharded outputs, bit for bit, every layer of every pass."""
    checked = 0
    groups = make_groups(configs)
    for cfg in configs:
        ranks = cfg["ranks"]
        if dist.get_rank() not in ranks:
            continue
        outputs = run_series(cfg, ranks, passes, groups[cfg.get("group", "ranks"), tuple(ranks)])
        for p, outs in enumerate(outputs):
            expected = reference_pass(cfg, pass_input(cfg, p))
            for j, (got, want) in enumerate(zip(outs, expected)):
                assert_close(got, want, kind=Kind.EXACT,
                             what=f"{ {k: v for k, v in cfg.items() if k != 'seed'} } pass {p} layer {cfg['start'] + j}")
        checked += 1
    return checked


def configs_for(ranks, counts, starts, group="ranks", dtype=torch.float32, hidden=HIDDEN, **extra) -> list:
    out = []
    for count in counts:
        for start in starts:
            for k in range(0, max(0, count - 2) + 1):
                out.append(dict(ranks=list(ranks), count=count, start=start, k=k, group=group, dtype=dtype,
                                hidden=hidden, seed=1000 * count + 10 * start + k, **extra))
    return out


# ==================================================================================================
# 1. the prefetch index
# ==================================================================================================

def test_prefetch_index_runs_k_layers_ahead_and_wraps_inside_the_series():
    # Series [4, 8) (PP stage 1 of an 8-layer model), k = 2: layer 4 fetches 6, 5 -> 7, 6 -> 4, 7 -> 5.
    assert [sw.prefetch_index(i, 4, 4, 2) for i in range(4, 8)] == [6, 7, 4, 5]
    # k = 0 fetches the layer itself.
    assert [sw.prefetch_index(i, 3, 5, 0) for i in range(3, 8)] == [3, 4, 5, 6, 7]
    # Series [1, 4), k = 1: 1 -> 2, 2 -> 3, 3 -> 1.
    assert [sw.prefetch_index(i, 1, 3, 1) for i in range(1, 4)] == [2, 3, 1]


# ==================================================================================================
# 2. bit-identical to the unsharded model
# ==================================================================================================

def _exact_two_ranks():
    configs = (configs_for([0, 1], counts=[1, 2, 3, 5], starts=[0, 1, 3], group="ranks")
               + configs_for([0, 1], counts=[4], starts=[2, 7], group="world", bias=True)
               + configs_for([0, 1], counts=[3], starts=[5], group="process_group", dtype=torch.bfloat16)
               + configs_for([0, 1], counts=[4], starts=[1], group="coordinator", post_load_scale=0.5))
    return check_configs_exact(configs, passes=3)


def test_outputs_bit_identical_to_unsharded_on_2_ranks(world):
    checked = world(2, timeout=120).run(_exact_two_ranks)
    # (1 + 1 + 2 + 4) prefetch steps x 3 starts + 3 x 2 starts + 2 + 3: every config ran on both ranks.
    assert checked == [35, 35]


def _exact_four_ranks():
    configs = (
        # one series over all 4 ranks: fewer layers than ranks, and more
        configs_for([0, 1, 2, 3], counts=[3, 6], starts=[0, 5], group="ranks")
        # PP2 x shard group of 2: stage 0 holds layers [0, 3) on ranks 0, 1; stage 1 [3, 6) on ranks 2, 3,
        # both series running at the same time on disjoint groups
        + configs_for([0, 1], counts=[3], starts=[0], group="process_group")
        + configs_for([2, 3], counts=[3], starts=[3], group="process_group")
        # a sub-group that leaves ranks 0 and 2 idle, over a coordinator
        + configs_for([1, 3], counts=[4], starts=[2], group="coordinator", bias=True))
    return check_configs_exact(configs, passes=3)


def test_outputs_bit_identical_to_unsharded_on_4_ranks(world):
    checked = world(4, timeout=120).run(_exact_four_ranks)
    # all-4 configs: (2 + 5)·2 = 14 on every rank; stage series: 2 each; [1, 3] series: 3
    assert checked == [14 + 2, 14 + 2 + 3, 14 + 2, 14 + 2 + 3]


def _many_passes(count, start, k, passes):
    cfg = dict(ranks=[0, 1], count=count, start=start, k=k, group="ranks", dtype=torch.float32, hidden=HIDDEN,
               seed=5)
    return check_configs_exact([cfg], passes=passes)


@pytest.mark.parametrize("count, start, k", [(5, 3, 1), (7, 2, 2), (6, 9, 3)])
def test_ring_wraps_correctly_over_many_passes(world, count, start, k):
    # count is not a multiple of k + 1: every pass starts the ring at a different window.
    assert world(2, timeout=60).run(_many_passes, count, start, k, 8) == [1, 1]


def _exact_full_sweep(world_size):
    ranks = list(range(world_size))
    configs = configs_for(ranks, counts=list(range(1, 11)), starts=[0, 1, 2, 5, 11, 17], hidden=32)
    configs += configs_for(ranks, counts=[4, 9], starts=[3, 13], hidden=64, dtype=torch.bfloat16, bias=True)
    return check_configs_exact(configs, passes=4)


@pytest.mark.full
@pytest.mark.parametrize("world_size", [2, 4])
def test_full_sweep_bit_identical(world, world_size):
    results = world(world_size, timeout=1800).run(_exact_full_sweep, world_size)
    assert len(set(results)) == 1 and results[0] > 0


def _series_over_shard_weight_groups(k):
    from ascend_conformance import groups
    from ascend_conformance.topology import ParallelConfig, build_layout

    # World 4 = DP2 x PP2 with layer sharding: the shard_weight groups are the PP stages [0, 2] and [1, 3].
    groups.initialize_groups(build_layout(ParallelConfig(world_size=4, tp=1, pp=2, dp=2, layer_sharding=True)))
    try:
        coordinator = groups.get_shard_weight_group()
        stage = groups.get_pp_group().rank_in_group
        start, count = (0, 5) if stage == 0 else (5, 4)  # stage 1 starts at 5: 5 mod 4 != 0
        cfg = dict(ranks=list(coordinator.ranks), count=count, start=start, k=k, dtype=torch.float32, hidden=HIDDEN,
                   seed=77)
        outputs = run_series(cfg, coordinator.ranks, 3, coordinator)
        for p, outs in enumerate(outputs):
            for j, (got, want) in enumerate(zip(outs, reference_pass(cfg, pass_input(cfg, p)))):
                assert_close(got, want, kind=Kind.EXACT, what=f"stage {stage} pass {p} layer {start + j}")
        return list(coordinator.ranks), start
    finally:
        groups.destroy_groups()


def _groups_module_ready() -> str | None:
    try:
        from ascend_conformance import groups
    except ImportError as exc:
        return f"ascend_conformance.groups not importable: {exc}"
    missing = [f for f in ("initialize_groups", "get_shard_weight_group", "get_pp_group", "destroy_groups")
               if not hasattr(groups, f)]
    return f"ascend_conformance.groups lacks {missing}" if missing else None


@pytest.mark.parametrize("k", [1, 2])
def test_series_over_the_shard_weight_group_coordinators(world, k):
    reason = _groups_module_ready()
    if reason:
        pytest.skip(reason)
    assert world(4, timeout=120).run(_series_over_shard_weight_groups, k) == [
        ([0, 2], 0), ([1, 3], 5), ([0, 2], 0), ([1, 3], 5)]


# ==================================================================================================
# 3. weight storage per rank, counted from storage bytes
# ==================================================================================================

def new_storage_bytes(before: dict, dtype=torch.float32) -> int:
    """New weight storage on the rank's device (a transport's host copies are not the device's memory)."""
    return sum(new_storage_sizes(before, dtype, rank_device()))


def _storage_per_rank(configs):
    with new_objects_only():
        return [_storage_of_one_series(cfg, first=index == 0) for index, cfg in enumerate(configs)]


def _storage_of_one_series(cfg, first: bool) -> tuple:
    """(unsharded bytes, bytes after set-up, bytes after 3 passes) of one series in this rank."""
    ranks = cfg["ranks"]
    n, me = len(ranks), group_rank_of(ranks)
    before = live_storages()  # holding the tensors keeps their addresses from being reused
    layers = build_stack(cfg, lambda i: i % n == me)
    # The counter itself, once: before set-up every rank holds the whole stack.
    full = new_storage_bytes(before) if first else None
    name = "series"
    for i, layer in layers.items():
        sw.register_layer(name, list(ranks), layer, i, prefetch_step=cfg["k"])
    series = sw.finish_setup(name)
    after_setup = new_storage_bytes(before)
    for p in range(3):
        out = sharded_pass(layers, pass_input(cfg, p))
    del out
    series.drain()
    after_passes = new_storage_bytes(before)
    sw.release_series(name)
    return full, after_setup, after_passes


STORAGE_CASES = [
    # (ranks, count, start, k, hidden)
    ([0, 1], 6, 0, 0, 16),
    ([0, 1], 6, 0, 1, 16),
    ([0, 1], 5, 3, 2, 16),
    ([0, 1], 3, 1, 1, 24),
    ([0, 1, 2, 3], 8, 0, 1, 16),
    ([0, 1, 2, 3], 7, 5, 3, 16),
    ([0, 1, 2, 3], 3, 2, 0, 16),  # fewer layers than ranks: rank 1 owns nothing
]


@pytest.mark.parametrize("world_size", [2, 4])
def test_weight_storage_per_rank_matches_the_formula(world, world_size):
    cases = [c for c in STORAGE_CASES if len(c[0]) == world_size]
    configs = [dict(ranks=r, count=c, start=s, k=k, hidden=h, dtype=torch.float32, seed=3) for r, c, s, k, h in cases]
    results = world(world_size, timeout=120).run(_storage_per_rank, configs)
    for rank, per_config in enumerate(results):
        assert per_config[0][0] is not None
        for (ranks, count, start, k, hidden), (full, after_setup, after_passes) in zip(cases, per_config):
            w = hidden * hidden * 4
            owned = sum(1 for i in range(start, start + count) if i % len(ranks) == ranks.index(rank))
            what = f"rank {rank}, {count} layers from {start}, k={k}"
            assert full in (None, count * w), f"{what}: unsharded stack holds {full} bytes, want {count}·{w}"
            assert after_setup == owned * w + (k + 1) * w, \
                f"{what}: {after_setup} bytes after set-up, want ({owned} owned + {k + 1} windows)·{w}"
            assert after_passes == after_setup, f"{what}: {after_passes} bytes after 3 passes, {after_setup} before"


# ==================================================================================================
# 4. a wrong schedule is caught: the start-blind index
# ==================================================================================================

def start_blind_index(layer: int, start: int, count: int, prefetch_step: int) -> int:
    """A mutant of :func:`sw.prefetch_index` that ignores where the series starts: ``(i + k) mod count +
    start``. It equals the correct index exactly when ``start mod count == 0`` and otherwise fetches
    ``(k + start) mod count`` layers ahead, so it exercises both ways a schedule can be wrong: too far ahead
    (the window checks) and too close (only the measured distance). It is the project's own mutant: what a
    release schedules is measured on the release (suites/test_sut_layer_shard.py). Series [2, 6) with k = 1:
    layers 2..5 fetch 5, 2, 3, 4 where the correct index fetches 3, 4, 5, 2.
    """
    return (layer + prefetch_step) % count + start


def _mutant_vs_correct(count, start, k):
    ranks = list(range(dist.get_world_size()))
    cfg = dict(ranks=ranks, count=count, start=start, k=k, group="ranks", dtype=torch.float32, hidden=HIDDEN,
               seed=11)
    outcome = {}
    outs = run_series(cfg, ranks, 3, ranks, index_formula=sw.prefetch_index)
    expected = [reference_pass(cfg, pass_input(cfg, p)) for p in range(3)]
    outcome["correct_matches"] = all(torch.equal(a, b) for got, want in zip(outs, expected) for a, b in zip(got, want))
    try:
        outs = run_series(cfg, ranks, 3, ranks, index_formula=start_blind_index)
        outcome["mutant"] = "ran: outputs " + ("match" if all(
            torch.equal(a, b) for got, want in zip(outs, expected) for a, b in zip(got, want)) else "differ")
    except sw.PrefetchError as exc:
        outcome["mutant"] = str(exc)
    return outcome


@pytest.mark.parametrize("world_size, count, start, k", [
    (2, 4, 2, 1),   # PP stage 1 of an 8-layer model split 2 + 4 + 2 ... any start not a multiple of count
    (2, 3, 4, 0),
    (4, 6, 3, 2),
])
def test_window_checks_catch_a_start_blind_index_on_a_series_after_layer_0(world, world_size, count, start, k):
    outcomes = world(world_size, timeout=60).run(_mutant_vs_correct, count, start, k)
    for rank, outcome in enumerate(outcomes):
        assert outcome["correct_matches"], f"rank {rank}: correct formula does not reproduce the unsharded model"
        # The mutant schedule fetches the wrong layer on the first reach_layer; the forward of the
        # first layer not delivered is caught on every rank alike.
        assert "window" in outcome["mutant"] and "layer" in outcome["mutant"], (rank, outcome)
    assert len({o["mutant"] for o in outcomes}) == 1, outcomes


def test_start_blind_index_passes_when_start_is_a_multiple_of_count(world):
    # Stage 0 (start 0) and a stage starting at a multiple of count: the mutant schedules exactly as the
    # correct index there, and the checks must not flag it (a schedule checked only on the first PP stage
    # would never show the difference).
    for count, start, k in [(4, 0, 1), (3, 6, 1)]:
        outcomes = world(2, timeout=60).run(_mutant_vs_correct, count, start, k)
        assert all(o == {"correct_matches": True, "mutant": "ran: outputs match"} for o in outcomes), outcomes


def _prefetch_distances(count, start, k, formula_name, passes=3):
    """Run a series over the world with the named index formula and measure, for every forward from the
    second pass on, its prefetch distance: how many layers before its own ``reach_layer`` the broadcast
    of its weight was started (= the layers whose compute that broadcast overlaps; 0 = none). From the
    second pass on every window was filled by a ``reach_layer`` (the ones filled during set-up are used
    up in the first pass), whose return value is the layer it started broadcasting."""
    formula = {"correct": sw.prefetch_index, "start-blind": start_blind_index}[formula_name]
    ranks = list(range(dist.get_world_size()))
    cfg = dict(ranks=ranks, count=count, start=start, k=k, dtype=torch.float32, hidden=HIDDEN, seed=13)
    layers = build_stack(cfg, lambda i: i % len(ranks) == group_rank_of(ranks))
    name = f"distance@{start}"
    for i, layer in layers.items():
        sw.register_layer(name, ranks, layer, i, prefetch_step=k, index_formula=formula)
    series = sw.finish_setup(name)
    started_at: dict[int, int] = {}  # layer -> step of the reach_layer that last started its broadcast
    distances, exact, step = set(), True, 0
    try:
        for p in range(passes):
            x = pass_input(cfg, p)
            expected = reference_pass(cfg, x)
            for j, i in enumerate(range(start, start + count)):
                started_at[sw.reach_layer(layers[i])] = step
                x = torch.tanh(layers[i](x))
                exact = exact and torch.equal(x, expected[j])
                if p > 0:
                    distances.add(step - started_at[i])
                step += 1
    finally:
        series.drain()
        sw.release_series(name)
    return {"distances": sorted(distances), "exact": exact}


def _correct_and_mutant_distances(cases):
    return [{formula: _prefetch_distances(count, start, k, formula) for formula in ("correct", "start-blind")}
            for count, start, k in cases]


def test_distance_measurement_shows_a_start_blind_index_below_the_window(world):
    # (k + start) mod count < k: every broadcast still lands before its forward, so the window checks pass
    # and the outputs are exact; only the overlap shrinks. [30, 61) with k = 1: distance 0, no overlap at
    # all. [3, 8) with k = 3: distance 1 instead of 3. The correct formula, measured the same way, keeps k.
    cases = [(31, 30, 1), (5, 3, 3)]
    for rank, per_case in enumerate(world(2, timeout=120).run(_correct_and_mutant_distances, cases)):
        for (count, start, k), outcome in zip(cases, per_case):
            what = f"rank {rank}, series [{start}, {start + count}), k={k}"
            assert outcome["correct"] == {"distances": [k], "exact": True}, (what, outcome)
            assert outcome["start-blind"] == {"distances": [(k + start) % count], "exact": True}, (what, outcome)
            assert (k + start) % count < k, what  # the case is a silent one, not one the window checks catch


# ==================================================================================================
# 5. bad registrations and protocol misuse
# ==================================================================================================

class NotALinear(torch.nn.Module):
    def __init__(self, hidden, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden, hidden, device=device), requires_grad=False)

    def forward(self, x):
        return x @ self.weight.t()


def _bad_registrations():
    me = dist.get_rank()
    device = rank_device()
    lin = lambda *shape, dtype=torch.float32: torch.nn.Linear(*shape, bias=False, dtype=dtype,  # noqa: E731
                                                              device=device)
    zeros = lambda: torch.zeros(1, 8, device=device)  # noqa: E731 - a token for a forward
    messages = {}

    def attempt(case, fn):
        try:
            fn()
        except (ConfigError, sw.PrefetchError) as exc:
            messages[case] = f"{type(exc).__name__}: {exc}"
        else:
            messages[case] = "no error"
        finally:
            sw.release_all()

    def register_all(name, modules, group=(0, 1), k=0, first=0):
        for j, m in enumerate(modules):
            sw.register_layer(name, list(group), m, first + j, prefetch_step=k)

    attempt("shape", lambda: register_all("s", [lin(8, 8), lin(8, 4)]))
    attempt("dtype", lambda: register_all("s", [lin(8, 8), lin(8, 8, dtype=torch.float16)]))
    attempt("type", lambda: register_all("s", [lin(8, 8), NotALinear(8, device)]))
    attempt("duplicate index", lambda: (sw.register_layer("s", [0, 1], lin(8, 8), 3),
                                        sw.register_layer("s", [0, 1], lin(8, 8), 3)))
    shared = lin(8, 8)
    attempt("module twice", lambda: (sw.register_layer("a", [0, 1], shared, 0),
                                     sw.register_layer("b", [0, 1], shared, 1)))
    attempt("gap", lambda: (register_all("s", [lin(8, 8), lin(8, 8)], first=4),
                            sw.register_layer("s", [0, 1], lin(8, 8), 7, prefetch_step=0), sw.finish_setup("s")))
    attempt("k too large", lambda: (register_all("s", [lin(8, 8) for _ in range(3)], k=2), sw.finish_setup("s")))
    attempt("k negative", lambda: sw.register_layer("s", [0, 1], lin(8, 8), 0, prefetch_step=-1))
    attempt("k differs", lambda: (sw.register_layer("s", [0, 1], lin(8, 8), 0, prefetch_step=1),
                                  sw.register_layer("s", [0, 1], lin(8, 8), 1, prefetch_step=0)))
    dist.new_group([0, 1])  # the group a ranks list [0, 1] resolves to (the earliest over those ranks)
    other = dist.new_group([0, 1])
    attempt("group differs", lambda: (sw.register_layer("s", [0, 1], lin(8, 8), 0),
                                      sw.register_layer("s", other, lin(8, 8), 1)))
    attempt("no such group", lambda: sw.register_layer("s", [me], lin(8, 8), 0))
    attempt("not a member", lambda: sw.register_layer("s", [1 - me], lin(8, 8), 0))
    attempt("unsorted ranks", lambda: sw.register_layer("s", [1, 0], lin(8, 8), 0))
    attempt("rank outside world", lambda: sw.register_layer("s", [0, 2], lin(8, 8), 0))
    attempt("no weight", lambda: sw.register_layer("s", [0, 1], torch.nn.ReLU(), 0))
    attempt("negative index", lambda: sw.register_layer("s", [0, 1], lin(8, 8), -1))
    attempt("bad group", lambda: sw.register_layer("s", "tp", lin(8, 8), 0))
    attempt("after setup", lambda: (register_all("s", [lin(8, 8), lin(8, 8)]), sw.finish_setup("s"),
                                    sw.register_layer("s", [0, 1], lin(8, 8), 2, prefetch_step=0)))
    # Collective checks: the ranks disagree about the series.
    attempt("ranks disagree", lambda: (register_all("s", [lin(8, 8) for _ in range(4 if me == 0 else 3)]),
                                       sw.finish_setup("s")))
    # Protocol misuse.
    early = lin(8, 8)
    attempt("forward before setup", lambda: (register_all("s", [early, lin(8, 8)]), early(zeros())))
    attempt("reach unregistered", lambda: sw.reach_layer(lin(8, 8)))
    skipped = [lin(8, 8) for _ in range(3)]
    # k = 1 on [0, 3): the first pass fetches layer 1 at reach(0); skipping reach(1) leaves layer 2 unfetched.
    attempt("forward without reach", lambda: (register_all("s", skipped, k=1), sw.finish_setup("s"),
                                              sw.reach_layer(skipped[0]), skipped[0](zeros()),
                                              skipped[1](zeros()), skipped[2](zeros())))
    return messages


def test_bad_registrations_are_one_line_errors_naming_the_values(world):
    results = world(2, timeout=60).run(_bad_registrations)
    expected = {
        "shape": ["ConfigError", "layer 1 is not isomorphic to layer 0", "[4, 8]", "[8, 8]"],
        "dtype": ["ConfigError", "float16", "float32"],
        "type": ["ConfigError", "NotALinear", "Linear"],
        "duplicate index": ["ConfigError", "layer index 3 is registered twice"],
        "module twice": ["ConfigError", "already registered as layer 0 of series 'a'"],
        "gap": ["ConfigError", "consecutive", "[4, 5, 7]", "missing [6]"],
        "k too large": ["ConfigError", "prefetch_step 2 out of range [0, 1]", "3 layers [0, 3)"],
        "k negative": ["ConfigError", "prefetch_step must be an int >= 0, got -1"],
        "k differs": ["ConfigError", "prefetch_step 0", "the series 1"],
        "group differs": ["ConfigError", "layer 1 registered over process group of ranks [0, 1]",
                          "the series is over ranks [0, 1]"],
        "unsorted ranks": ["ConfigError", "ascending", "[1, 0]"],
        "rank outside world": ["ConfigError", "[0, 2)", "[0, 2]"],
        "no weight": ["ConfigError", "ReLU has no tensor `weight`"],
        "negative index": ["ConfigError", "layer_index must be an int >= 0, got -1"],
        "bad group": ["ConfigError", "got str"],
        "after setup": ["ConfigError", "already set up", "layer 2"],
        "ranks disagree": ["ConfigError", "registered differently", "rank 0: layers [0, 4)", "rank 1: layers [0, 3)"],
        "forward before setup": ["PrefetchError", "before finish_setup"],
        "reach unregistered": ["ConfigError", "not registered"],
        "forward without reach": ["PrefetchError", "layer 2", "no window holds it"],
    }
    for rank, messages in enumerate(results):
        for case, needles in expected.items():
            message = messages[case]
            assert "\n" not in message, (rank, case, message)
            assert all(needle in message for needle in needles), f"rank {rank} {case}: {message!r} lacks {needles}"
        assert f"rank {rank} is not a member of the group [{1 - rank}]" in messages["not a member"]
        assert f"no process group over ranks [{rank}] exists on rank {rank}" in messages["no such group"]


# ==================================================================================================
# vLLM adapter (only where vllm imports)
# ==================================================================================================

def _vllm_adapter():
    from ascend_conformance.sut.vllm_groups import live_groups
    from ascend_conformance.topology import ParallelConfig

    # vLLM's layers are built as in a worker: its TP groups and its config current (TP 2 over the world).
    with live_groups(ParallelConfig(world_size=2, tp=2, pp=1, dp=1)):
        return _vllm_series()


def _vllm_series():
    from vllm.model_executor.layers.linear import ReplicatedLinear

    me, start, count, device = dist.get_rank(), 1, 3, rank_device()
    with device:  # as vLLM's model loader builds a model: its parameters on the worker's device
        layers = {i: ReplicatedLinear(HIDDEN, HIDDEN, bias=False, prefix=f"model.layers.{i}.self_attn.o_proj")
                  for i in range(start, start + count)}
    for i, layer in layers.items():
        with torch.no_grad():
            layer.weight.copy_(true_weight(1, i, layer.weight.shape, layer.weight.dtype) if i % 2 == me
                               else torch.full_like(layer.weight, float("nan")))
        sw.register_vllm_linear("vllm_o_proj", [0, 1], layer, prefetch_step=1)
    series = sw.finish_setup("vllm_o_proj")
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(rank_context().world_seed)).to(device)
    for _ in range(3):
        y = x
        for i in range(start, start + count):
            sw.reach_layer(layers[i])
            y = layers[i](y)[0]
            want = torch.nn.functional.linear(x if i == start else want, true_weight(1, i, (HIDDEN, HIDDEN),
                                                                                     layer.weight.dtype).to(device))
            assert_close(y, want, kind=Kind.EXACT, what=f"vllm layer {i}")
    series.drain()
    return True


def test_vllm_linear_adapter(world):
    try:
        import vllm.model_executor.layers.linear  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - optional extra
        pytest.skip(f"vllm not importable: {one_line(exc)}")
    assert world(2, timeout=120).run(_vllm_adapter) == [True, True]

