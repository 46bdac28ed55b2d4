"""GroupCoordinator collectives on live worlds (docs/collectives.md), every group kind of a layout.

1. every collective of the contract, on every group kind of three representative layouts (full tier: four
   more), in float32 / float16 / bfloat16 / int32 / int64: one ``world(n).run`` per layout, every mismatch
   reported together (how the observations are made and checked: :mod:`ascend_conformance.collective_checks`);
2. the checker itself catches a wrong observation;
3. backend gaps, established by running the operation, not assumed: on gloo (torch 2.13) every collective
   here works in every dtype except all_reduce AVG on integer dtypes, which gloo rejects (it divides the
   integer sum in place); ``test_all_reduce_average_on_integers`` skips with the backend's own message where
   the backend refuses, and fails where a backend refuses that is not known to;
4. every bad input is a one-line error naming the values, raised before any communication.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ascend_conformance import groups
from ascend_conformance.collective_checks import (
    DTYPES, check_report, exact_values, exercise_every_group, expected_observations,
)
from ascend_conformance.errors import ConfigError, one_line
from ascend_conformance.groups import P2P, GroupLookupError
from ascend_conformance.harness import rank_context
from ascend_conformance.tolerance import Kind, assert_close
from ascend_conformance.topology import ParallelConfig, build_layout

# Representative configurations (ParallelConfig fields). Together they create every kind of
# docs/layout.md: the 8-rank one has PP2 x DP2 so stage-local kinds (ep, otp, shard_weight) differ
# from the world, and group-of-one kinds (pcp, flashcomm2_odp with TP = o); the 4-rank one has
# FlashComm2 OTP groups of non-adjacent ranks ([0, 2], [1, 3]) and p_tp; the 2-rank one has the
# fine-grained lmhead / embedding / MLP TP kinds and FlashComm2 with o = 1 (ODP == TP, no OTP group).
CONFIGS = {
    "W8-DP2-PP2-TP2-otp2-fc2otp2-sharding": dict(
        world_size=8, tp=2, pp=2, dp=2, otp=2, flashcomm2_otp=2, layer_sharding=True),
    "W4-TP4-fc2otp2-sharding-ptp2": dict(
        world_size=4, tp=4, pp=1, dp=1, flashcomm2_otp=2, layer_sharding=True, kv_producer=True,
        pd_tp_ratio=2, pd_head_ratio=2),
    "W2-DP2-lmhead2-embed2-mlp2-fc2otp1-sharding": dict(
        world_size=2, tp=1, pp=1, dp=2, lmhead_tp=2, embed_tp=2, mlp_tp=2, flashcomm2_otp=1,
        layer_sharding=True),
}
# Full tier: PCP > 1 and a world-sized ep group, FlashComm2 o = 4 with replicated-head p_tp, external
# DP, and groups of three ranks (sizes that are not powers of two).
FULL_CONFIGS = {
    "W8-DP2-PCP2-TP2-lmhead2-embed2-mlp2-dsacp": dict(
        world_size=8, tp=2, pp=1, dp=2, pcp=2, lmhead_tp=2, embed_tp=2, mlp_tp=2, layer_sharding=True,
        dsa_cp=True),
    "W8-TP8-fc2otp4-ptp4-heads2": dict(
        world_size=8, tp=8, pp=1, dp=1, flashcomm2_otp=4, layer_sharding=True, kv_producer=True,
        pd_tp_ratio=4, pd_head_ratio=2, num_head_replica=2),
    "W8-E2-PP2-TP2-otp1-sharding": dict(world_size=8, tp=2, pp=2, dp=1, otp=1, layer_sharding=True),
    "W6-DP2-TP3-lmhead2": dict(world_size=6, tp=3, pp=1, dp=2, lmhead_tp=2),
}


def _run_and_check(world, name: str, fields: dict, dtype_names: list[str]) -> None:
    per_rank = world(fields["world_size"], timeout=240).run(exercise_every_group, fields, dtype_names)
    checks, problems = check_report(fields, dtype_names, per_rank)
    assert not problems, (f"{name}: {len(problems)} of {checks} checks failed:\n" + "\n".join(problems[:40])
                          + ("\n..." if len(problems) > 40 else ""))
    # Every kind of the layout ran every case it should: a silent skip would pass vacuously.
    assert checks >= fields["world_size"] * len(build_layout(ParallelConfig(**fields))) * 2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_collective_on_every_group_kind(world, name):
    _run_and_check(world, name, CONFIGS[name], list(DTYPES))


@pytest.mark.full
@pytest.mark.parametrize("name", list(FULL_CONFIGS))
def test_every_collective_on_every_group_kind_full(world, name):
    _run_and_check(world, name, FULL_CONFIGS[name], list(DTYPES))


def test_check_report_catches_a_wrong_observation():
    """The checker itself: a report built from the expectations passes, one corrupted value fails."""
    fields = CONFIGS["W2-DP2-lmhead2-embed2-mlp2-fc2otp1-sharding"]
    dtype_names = ["float32", "int64"]
    per_rank = expected_observations(fields, dtype_names)
    checks, problems = check_report(fields, dtype_names, per_rank)
    assert problems == [] and checks > 100

    corrupted = per_rank[1][("dp", "reduce_scatterv", "float32")]["result"]
    corrupted[0, 0] += 1
    per_rank[0][("ep", "per_kind")]["position"]["next_rank"] = 0
    _, problems = check_report(fields, dtype_names, per_rank)
    assert len(problems) == 2, problems
    assert any(p.startswith("rank 0 ep [0, 1].position.next_rank: got 0, expected 1") for p in problems), problems
    assert any(p.startswith("rank 1 dp [0, 1] reduce_scatterv float32.result (sum_exact)") for p in problems), problems


# -------------------------------------------------------------------- backend gaps: found, not assumed

# (backend, operation, dtype) combinations a backend is known to refuse, with what it says. Found by
# running them: gloo's all_reduce AVG sums, then divides the integer result in place, which torch
# refuses ("result type Float can't be cast to the desired output type Int"). The emulated hccl backend
# (docs/emulation.md) runs gloo on host copies, so it has gloo's gaps, under its own name: what the real
# HCCL does is established on an NPU host, where the backend is "hccl".
EMULATED_HCCL = "hccl (emulated, over gloo)"
KNOWN_BACKEND_GAPS = {("gloo", "all_reduce AVG", "int32"), ("gloo", "all_reduce AVG", "int64"),
                      (EMULATED_HCCL, "all_reduce AVG", "int32"), (EMULATED_HCCL, "all_reduce AVG", "int64")}


def average_integers_on_rank(dtype_name: str) -> dict:
    """all_reduce AVG of integers whose sum divides by the group size (so the mean is exact): rank r
    contributes base + 2r - (n - 1). Returns the result or the backend's error."""
    layout = {"world": [list(range(dist.get_world_size()))]}
    groups.initialize_groups(layout)
    g = groups.get_world_group()
    n, dtype = g.world_size, DTYPES[dtype_name]
    backend = dist.get_backend(g.device_group)
    if rank_context().platform == "npu-emulated":
        backend = EMULATED_HCCL
    base = exact_values(0, (2, 3), dtype, 5, g.device)
    x = base + (2 * g.rank - (n - 1))
    try:
        result = g.all_reduce(x, op=dist.ReduceOp.AVG)
    except RuntimeError as exc:
        return {"error": one_line(exc, with_type=True), "backend": backend}
    finally:
        groups.destroy_groups()
    return {"result": result, "expected": base, "backend": backend}


@pytest.mark.parametrize("dtype_name", ["int32", "int64"])
def test_all_reduce_average_on_integers(world, dtype_name):
    outcome = world(2, timeout=60).run(average_integers_on_rank, dtype_name)
    for rank, seen in enumerate(outcome):
        if "error" in seen:
            gap = (seen["backend"], "all_reduce AVG", dtype_name)
            assert gap in KNOWN_BACKEND_GAPS, f"rank {rank}: backend {seen['backend']} refused {gap}: {seen['error']}"
            pytest.skip(f"{seen['backend']} does not support all_reduce AVG on {dtype_name} "
                        f"(torch {torch.__version__}): {seen['error']}")
        assert_close(seen["result"], seen["expected"], kind=Kind.SUM_EXACT, what=f"rank {rank} AVG {dtype_name}")


# ----------------------------------------------------------------------------- errors, one line each

def _message(call) -> str:
    try:
        call()
    except (ConfigError, GroupLookupError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def bad_inputs_on_rank() -> dict:
    """Each bad input on a 2-rank world group; every rejection happens before any communication, so
    one rank's error cannot leave the other waiting."""
    messages = {"before_init": _message(lambda: groups.get_tp_group())}
    world_size = dist.get_world_size()
    for name, layout in {
        "descending": {"tp": [[1, 0]]},
        "overlap": {"tp": [[0, 1], [1]]},
        "outside": {"tp": [[0, 1, world_size]]},
        "empty": {"tp": [[0, 1], []]},
    }.items():
        messages[name] = _message(lambda: groups.initialize_groups(layout))
    rank = dist.get_rank()
    # Every rank passes a layout, but rank 1's differs: caught before any group is created.
    messages["different_layouts"] = _message(
        lambda: groups.initialize_groups({"tp": [[0, 1]] if rank == 0 else [[0], [1]]}))

    groups.initialize_groups({"world": [[0, 1]], "tp": [[0], [1]]})
    g = groups.get_world_group()
    messages["twice"] = _message(lambda: groups.initialize_groups({"world": [[0, 1]]}))
    messages["unknown_kind"] = _message(lambda: groups.get_ep_group())
    x = torch.ones(3, 2, device=g.device)
    messages["reduce_scatter_indivisible"] = _message(lambda: g.reduce_scatter(x, dim=0))
    messages["reduce_scatterv_sum"] = _message(lambda: g.reduce_scatterv(x, [1, 1], dim=0))
    messages["reduce_scatterv_count"] = _message(lambda: g.reduce_scatterv(x, [3], dim=0))
    messages["all_gatherv_own_size"] = _message(lambda: g.all_gatherv(x, [1, 2], dim=0))
    messages["all_gather_dim"] = _message(lambda: g.all_gather(x, dim=2))
    messages["all_to_all_indivisible"] = _message(lambda: g.all_to_all_single(x))
    messages["all_to_all_split_sum"] = _message(lambda: g.all_to_all_single(x, [1, 1], [1, 1]))
    messages["all_to_all_one_split"] = _message(lambda: g.all_to_all_single(x, [1, 2]))
    messages["send_to_self"] = _message(lambda: g.send(x, dst=g.rank_in_group))
    messages["recv_outside"] = _message(lambda: g.recv((3, 2), torch.float32, src=2))
    messages["broadcast_src"] = _message(lambda: g.broadcast(x, src=-1))
    messages["batch_op"] = _message(lambda: g.batch_isend_irecv([P2P("put", x, 1 - g.rank_in_group)]))
    # A group of one returns its input for sizes that fit it, and still checks the sizes.
    single = groups.get_tp_group()
    messages["single_reduce_scatterv_sum"] = _message(lambda: single.reduce_scatterv(x, [2], dim=0))
    groups.destroy_groups()
    messages["after_destroy"] = _message(lambda: groups.get_world_group())
    return messages


def test_bad_inputs_raise_one_line_errors_naming_the_values(world):
    messages = world(2, timeout=60).run(bad_inputs_on_rank)
    expected = {
        "before_init": r"^GroupLookupError: no groups are initialised: call initialize_groups\(layout\) first \(asked for tp\)$",
        "descending": r"^ConfigError: tp group \[1, 0\] is not in ascending rank order",
        "overlap": r"^ConfigError: rank 1 is in two tp groups, \[0, 1\] and \[1\]",
        "outside": r"^ConfigError: tp group \[0, 1, 2\] holds ranks \[2\] outside the world 0\.\.1$",
        "empty": r"^ConfigError: tp has an empty group$",
        "different_layouts": r"^ConfigError: initialize_groups got a different layout on ranks \[1\] than on rank 0",
        "twice": r"^RuntimeError: groups are already initialised \(world, tp\)",
        "unknown_kind": r"^GroupLookupError: the initialised layout has no ep groups \(kinds: world, tp\)$",
        "reduce_scatter_indivisible": r"^ConfigError: reduce_scatter on world group of size 2: dim 0 has size 3, "
                                      r"which is not divisible by 2$",
        "reduce_scatterv_sum": r"^ConfigError: reduce_scatterv on world: sizes \[1, 1\] sum to 2 but dim 0 has 3 entries$",
        "reduce_scatterv_count": r"^ConfigError: reduce_scatterv on world: sizes \[3\] must be 2 non-negative numbers",
        "all_gatherv_own_size": r"^ConfigError: all_gatherv on world: group rank \d passes 3 entries along dim 0 but "
                                r"sizes\[\d\] = [12] \(sizes \[1, 2\]\)$",
        "all_gather_dim": r"^ConfigError: all_gather on world: dim 2 is out of range for shape \(3, 2\)$",
        "all_to_all_indivisible": r"^ConfigError: all_to_all_single on world group of size 2: 3 rows are not divisible by 2",
        "all_to_all_split_sum": r"^ConfigError: all_to_all_single on world: input_split_sizes \[1, 1\] sum to 2 but the "
                                r"input has 3 rows$",
        "all_to_all_one_split": r"^ConfigError: all_to_all_single on world: give both input_split_sizes and "
                                r"output_split_sizes or neither \(got \[1, 2\] and None\)$",
        "send_to_self": r"^ConfigError: send dst \d is this rank's own group rank in world group \[0, 1\]",
        "recv_outside": r"^ConfigError: recv src 2 is not a group rank of world group \[0, 1\] \(0\.\.1\)$",
        "broadcast_src": r"^ConfigError: broadcast src -1 is not a group rank of world group \[0, 1\]",
        "batch_op": r"^ConfigError: batch_isend_irecv on world: op must be 'send' or 'recv', got 'put'$",
        "single_reduce_scatterv_sum": r"^ConfigError: reduce_scatterv on tp: sizes \[2\] sum to 2 but dim 0 has 3 entries$",
        "after_destroy": r"^GroupLookupError: no groups are initialised",
    }
    import re

    for rank, seen in enumerate(messages):
        assert set(seen) == set(expected)
        for name, pattern in expected.items():
            assert re.search(pattern, seen[name]), f"rank {rank} {name}: {seen[name]!r} does not match {pattern!r}"
            assert "\n" not in seen[name]
