"""The emulated NPU (ascend_conformance/emulation, docs/emulation.md): the extension builds once and is
cached, tensors on ``npu:k`` behave as device tensors, and a world of ranks on the ``npu-emulated``
platform runs collectives of ``npu`` tensors through the emulated ``hccl`` backend.

The pytest process never loads the extension (it would turn PrivateUse1 into ``npu`` for every later
test): device semantics are checked inside ranks of the npu-emulated platform's own warm pools. Without
a C++ toolchain every test here skips with the one-line reason the platform gives.
"""
from __future__ import annotations

import json
import os
import sys
import threading

import numpy
import pytest
import torch
import torch.distributed as dist

from ascend_conformance import platform as platforms
from ascend_conformance.emulation import build
from ascend_conformance.harness import rank_context

pytest_plugins = ["pytester"]


_USER_CACHE = build.cache_root()  # read before pytester points HOME elsewhere


# --- the platform -------------------------------------------------------------------------------------

def test_npu_emulated_is_chosen_never_detected(monkeypatch):
    monkeypatch.setenv(platforms.PLATFORM_ENV, "npu-emulated")
    plat = platforms.detect()
    assert (plat.name, plat.backend, plat.device_type, plat.visible_devices_env, plat.record_device,
            plat.virtual_devices) == ("npu-emulated", "hccl", "npu", "ASCEND_RT_VISIBLE_DEVICES", "emulated", True)
    assert plat.rank_environment([3], 5, 30000) == platforms.NpuPlatform().rank_environment([3], 5, 30000)
    assert plat.device_count() == plat.slots, "the leasing process never loads the device: its count is --devices"
    monkeypatch.delenv(platforms.PLATFORM_ENV)
    assert platforms.detect().name != "npu-emulated"


@pytest.mark.parametrize("environ, expected", [
    ({}, 8), ({"ASCEND_CONFORMANCE_EMULATED_DEVICES": "4"}, 4),
    ({"ASCEND_RT_VISIBLE_DEVICES": "3,5", "ASCEND_CONFORMANCE_EMULATED_DEVICES": "4"}, 2),
    ({"ASCEND_RT_VISIBLE_DEVICES": "3,x"}, "ASCEND_RT_VISIBLE_DEVICES must be a comma-separated list of device ids, "
                                          "got '3,x'"),
    ({"ASCEND_CONFORMANCE_EMULATED_DEVICES": "0"}, "ASCEND_CONFORMANCE_EMULATED_DEVICES must be a device count >= 1, "
                                                   "got '0'"),
])
def test_how_many_devices_a_process_sees(environ, expected):
    from ascend_conformance.emulation.device import configured_device_count
    from ascend_conformance.errors import ConfigError

    if isinstance(expected, int):
        assert configured_device_count(environ) == expected
    else:
        with pytest.raises(ConfigError) as raised:
            configured_device_count(environ)
        assert str(raised.value) == expected


# --- the build ------------------------------------------------------------------------------------

def test_build_key_names_torch_python_and_the_sources():
    key = build.build_key()
    assert key.startswith(f"npu-device-torch{torch.__version__}-cp{sys.version_info.major}{sys.version_info.minor}-")
    assert key.endswith(build.source_digest()) and len(build.source_digest()) == 12


def test_concurrent_first_builds_compile_once_and_leave_no_partial_build(tmp_path, monkeypatch):
    """Four processes' worth of first users at once: one compiles (into a private directory renamed into
    place), the others wait on the lock and get the same finished build."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    compiles = []

    def fake_compile(final):  # what _compile_into promises: a complete directory appears atomically
        compiles.append(final)
        private = final + ".build-test"
        os.makedirs(private)
        with open(os.path.join(private, build.MODULE_NAME + ".so"), "wb") as handle:
            handle.write(b"\0")
        os.rename(private, final)

    monkeypatch.setattr(build, "_compile_into", fake_compile)
    results, errors = [], []

    def first_use():
        try:
            results.append(build.ensure_built())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(compiles) == 1, "one compile for four simultaneous first uses"
    assert len({path for path, _ in results}) == 1
    assert sorted(os.listdir(tmp_path)) == [build.build_key(), build.build_key() + ".lock"]


def test_no_compiler_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))  # nothing cached: a build is needed
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(build.BuildUnavailable) as raised:
        build.ensure_built()
    assert str(raised.value) == ("cannot build the emulated npu device: no C++ compiler (no-such-c++ not on PATH; "
                                 "install g++ or set CXX)")
    assert platforms.by_name("npu-emulated").unavailable_reason() == str(raised.value)


def test_an_unwritable_cache_is_one_line_naming_it(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(build.CACHE_ENV, str(blocked / "cache"))
    with pytest.raises(build.BuildUnavailable) as raised:
        build.ensure_built()
    assert str(raised.value) == (f"cannot build the emulated npu device: the cache directory {blocked / 'cache'} "
                                 f"cannot be made (Not a directory); set ASCEND_CONFORMANCE_CACHE to a writable "
                                 f"directory")


def test_the_extension_is_built_and_cached():
    """The real build (cold on a new machine, else from the per-user cache); a second ask is a cache hit."""
    if build.missing_tools():
        pytest.skip(f"cannot build the emulated npu device: {build.missing_tools()}")
    path, _ = build.ensure_built()
    assert os.path.isfile(path) and os.path.dirname(path) == build.build_dir()
    assert build.ensure_built() == (path, 0.0)


# --- device semantics, in a rank ------------------------------------------------------------------

def device_semantics():
    """npu:1 stays npu:1, npu + cpu raises, copies round-trip, the allocator counts bytes exactly."""
    out = {"count": torch.npu.device_count(), "current": torch.npu.current_device()}
    one = torch.arange(6.0, device="npu:1").reshape(2, 3)
    out["placed"] = [str(t.device) for t in (one, one * 2, one.t(), one.sum(), torch.topk(one, 2).values,
                                             one @ one.t(), one.to(torch.bfloat16) + 1)]
    try:
        one + torch.ones(2, 3)
        out["mixed"] = "no error"
    except RuntimeError as exc:
        out["mixed"] = str(exc).splitlines()[0]
    try:
        one + torch.ones(2, 3, device="npu:0")
        out["two devices"] = "no error"
    except RuntimeError as exc:
        out["two devices"] = str(exc).splitlines()[0]
    host = torch.randn(4, 5)
    out["round trip"] = torch.equal(host.to("npu:1").to("npu:0").cpu(), host)
    # non-blocking to the host allocates it pinned (vllm-ascend's dispatchers copy their split sizes so)
    out["non-blocking to host"] = one.to(torch.device("cpu"), non_blocking=True).tolist()
    out["broadcast copy"] = torch.zeros(3, device="npu:1").copy_(torch.tensor(2.0)).tolist()
    out["not a cpu tensor"] = (one.is_cpu, one.device.type)
    view = one.view(-1)
    view[0] = 42.0  # a view shares storage: the write shows through the base
    out["view writes through"] = one[0, 0].item()
    torch.npu.set_device(1)
    out["set_device"] = (torch.npu.current_device(), str(torch.empty(1, device="npu").device))
    # Back on the rank's own device: the warm rank runs later tests, whose groups take the current device.
    torch.npu.set_device(torch.device(rank_context().device).index)
    before = torch.npu.memory_allocated(0)
    torch.npu.reset_peak_memory_stats(0)
    block = torch.empty(1000, dtype=torch.float32, device="npu:0")
    out["allocated"] = torch.npu.memory_allocated(0) - before
    out["reserved at least"] = torch.npu.memory_reserved(0) >= torch.npu.memory_allocated(0)
    del block
    out["freed"] = torch.npu.memory_allocated(0) - before
    out["peak"] = torch.npu.max_memory_allocated(0) - before
    free, total = torch.npu.mem_get_info(0)
    out["mem_get_info"] = 0 < free <= total
    start, end = torch.npu.Event(enable_timing=True), torch.npu.Event(enable_timing=True)
    start.record()
    torch.ones(64, 64, device="npu:0") @ torch.ones(64, 64, device="npu:0")
    end.record()
    end.synchronize()
    out["elapsed ms >= 0"] = start.elapsed_time(end) >= 0
    try:
        torch.empty(1, device=f"npu:{torch.npu.device_count()}")
        out["bad index"] = "no error"
    except RuntimeError as exc:
        out["bad index"] = str(exc).splitlines()[0]
    return out


def test_device_semantics(emulated_world):
    out = emulated_world(2).run(device_semantics)[0]
    assert (out["count"], out["current"]) == (2, 0), "a rank sees the devices it leased; it is bound to npu:<rank>"
    assert out["placed"] == ["npu:1"] * 7, "results land on the inputs' device, through the CPU fallback too"
    assert out["mixed"].startswith("Expected all tensors to be on the same device, but found at least two "
                                   "devices, npu:1 and cpu!")
    assert "npu:1 and npu:0" in out["two devices"]
    assert out["round trip"] and out["not a cpu tensor"] == (False, "npu")
    assert out["non-blocking to host"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert out["broadcast copy"] == [2.0, 2.0, 2.0]
    assert out["view writes through"] == 42.0
    assert out["set_device"] == (1, "npu:1")
    assert (out["allocated"], out["freed"], out["peak"]) == (4000, 0, 4000), "the allocator counts bytes exactly"
    assert out["reserved at least"] and out["mem_get_info"] and out["elapsed ms >= 0"]
    assert out["bad index"].startswith("npu:2 is not an emulated device: 2 device(s)")


# --- a world on the emulated device -----------------------------------------------------------------

def collectives_over_hccl():
    """The suites' collectives on npu tensors, on the default group and on a new hccl group."""
    ctx = rank_context()
    rank, device = ctx.rank, ctx.device
    out = {"device": device, "platform": (ctx.platform, ctx.backend), "backend": dist.get_backend(),
           "hccl ports": all(os.environ.get(v) for v in ("HCCL_IF_BASE_PORT", "HCCL_HOST_SOCKET_PORT_RANGE",
                                                        "HCCL_NPU_SOCKET_PORT_RANGE")),
           "visible": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"), "device_index": ctx.device_index}
    t = torch.full((2,), rank + 1.0, device=device)
    dist.all_reduce(t)
    out["all_reduce"] = (str(t.device), t.tolist())
    gathered = torch.empty(4, device=device)
    dist.all_gather_into_tensor(gathered, torch.full((2,), float(rank), device=device))
    out["all_gather_into_tensor"] = gathered.tolist()
    chunks = [torch.empty(1 + r, device=device) for r in range(2)]
    dist.all_gather(chunks, torch.full((1 + rank,), float(rank), device=device))  # unequal, as HCCL allows
    out["all_gather unequal"] = [c.tolist() for c in chunks]
    scattered = torch.empty(2, device=device)
    dist.reduce_scatter_tensor(scattered, torch.arange(4.0, device=device))
    out["reduce_scatter_tensor"] = scattered.tolist()
    exchanged = torch.empty(2, device=device)
    dist.all_to_all_single(exchanged, torch.tensor([10.0 * rank, 10.0 * rank + 1], device=device))
    out["all_to_all_single"] = exchanged.tolist()
    uneven = torch.empty(2 * (1 + rank), device=device)  # split sizes as numpy arrays, as vllm-ascend passes them
    dist.all_to_all_single(uneven, torch.full((3,), float(rank), device=device),
                           output_split_sizes=numpy.array([1 + rank, 1 + rank]), input_split_sizes=numpy.array([1, 2]))
    out["all_to_all_single numpy splits"] = uneven.tolist()
    sent = torch.full((3,), float(rank), device=device)
    dist.broadcast(sent, src=1)
    out["broadcast"] = sent.tolist()
    received = torch.empty(2, device=device)
    peer = 1 - rank
    for work in dist.batch_isend_irecv([dist.P2POp(dist.irecv, received, peer),  # receive first on both ranks
                                        dist.P2POp(dist.isend, torch.full((2,), rank + 5.0, device=device), peer)]):
        work.wait()
    out["batch_isend_irecv"] = (str(received.device), received.tolist())
    objects = [None, None]
    dist.all_gather_object(objects, {"rank": rank})
    out["all_gather_object"] = objects
    group = dist.new_group([0, 1], backend="hccl")
    one = torch.ones(1, device=device)
    dist.all_reduce(one, group=group)
    out["new_group"] = (dist.get_backend(group), one.item())
    try:
        dist.all_reduce(torch.ones(2))
        out["cpu tensor"] = "no error"
    except RuntimeError as exc:
        out["cpu tensor"] = str(exc)
    dist.barrier()
    return out


def test_collectives_of_npu_tensors_through_hccl(emulated_world):
    ranks = emulated_world(2).run(collectives_over_hccl)
    for rank, out in enumerate(ranks):
        assert out["device"] == f"npu:{rank}" and out["platform"] == ("npu-emulated", "hccl")
        assert out["backend"] == "hccl" and out["hccl ports"]
        assert out["visible"].split(",")[rank] == str(out["device_index"])
        assert out["all_reduce"] == (f"npu:{rank}", [3.0, 3.0])
        assert out["all_gather_into_tensor"] == [0.0, 0.0, 1.0, 1.0]
        assert out["all_gather unequal"] == [[0.0], [1.0, 1.0]]
        assert out["reduce_scatter_tensor"] == [[0.0, 2.0], [4.0, 6.0]][rank]
        assert out["all_to_all_single"] == [[0.0, 10.0], [1.0, 11.0]][rank]
        assert out["all_to_all_single numpy splits"] == [[0.0, 1.0], [0.0, 0.0, 1.0, 1.0]][rank]
        assert out["broadcast"] == [1.0, 1.0, 1.0]
        assert out["batch_isend_irecv"] == (f"npu:{rank}", [6.0 - rank] * 2)
        assert out["all_gather_object"] == [{"rank": 0}, {"rank": 1}]
        assert out["new_group"] == ("hccl", 2.0)
        assert out["cpu tensor"].startswith("hccl (emulated) all_reduce: tensors must be on an npu device, got one "
                                            "on cpu")


# --- a CPU tensor planted in a reference collective check -------------------------------------------

def all_reduce_check_on_rank(plant_cpu: bool) -> dict:
    """The reference all_reduce check of ``collective_checks`` (the one ``suites/test_collectives.py`` runs
    on every group kind) on the world's coordinator, its input built as the check builds it, on the
    group's device; or, with ``plant_cpu``, the bug the emulated device exists to catch: the same input
    built with ``device="cpu"``. Returns the observations and the devices they were on, or the error."""
    from ascend_conformance import collective_checks, groups

    case = next(c for c in collective_checks.CASES if c.name == "all_reduce")
    built_by_the_check = collective_checks.exact_values

    def on_the_cpu(rank, shape, dtype, salt, device=None):
        return built_by_the_check(rank, shape, dtype, salt, device="cpu")

    groups.initialize_groups({"world": [list(range(dist.get_world_size()))]})
    if plant_cpu:
        collective_checks.exact_values = on_the_cpu
    try:
        observed = case.run(groups.get_world_group(), torch.float32, 3)
    except RuntimeError as exc:
        return {"error": str(exc)}
    finally:
        collective_checks.exact_values = built_by_the_check
        groups.destroy_groups()
    return {"observed": observed,
            "devices": sorted({str(observed[key].device) for key in ("result", "input_after")})}


def _differences_from_the_check(outcome: dict, rank: int) -> list:
    from ascend_conformance import collective_checks

    case = next(c for c in collective_checks.CASES if c.name == "all_reduce")
    expected = case.expect([0, 1], rank, torch.float32, 3)
    return collective_checks.differences(f"rank {rank} all_reduce", outcome["observed"], expected, case.compare)


def test_a_cpu_tensor_planted_in_a_reference_collective_check_is_caught(emulated_world, world):
    """The emulated device catches the bug class it was built for: the same reference check passes with its
    input on the rank's device, and with a ``device="cpu"`` input planted the hccl backend refuses it on
    every rank, as HCCL does. On the cpu platform (gloo) the planted tensor passes unnoticed."""
    emulated = emulated_world(2)
    for rank, outcome in enumerate(emulated.run(all_reduce_check_on_rank, False)):
        assert "error" not in outcome, outcome
        assert outcome["devices"] == [f"npu:{rank}"] and _differences_from_the_check(outcome, rank) == []
    for outcome in emulated.run(all_reduce_check_on_rank, True):
        assert outcome["error"].startswith("hccl (emulated) all_reduce: tensors must be on an npu device, got one "
                                           "on cpu (shape (2, 3), torch.float32)"), outcome
        assert "\n" not in outcome["error"]
    for rank, outcome in enumerate(world(2).run(all_reduce_check_on_rank, True)):
        assert outcome["devices"] == ["cpu"] and _differences_from_the_check(outcome, rank) == []


# --- the torch_npu stand-in on the emulated device ---------------------------------------------------

def _dispatch_and_combine(torch_npu, x, ids, weights, group, rank):
    """One MC2 round trip through the stand-in's golden ops, as vllm-ascend calls them (group by HCCL name)."""
    name = group._get_backend(torch.device("npu")).get_hccl_comm_name(rank)
    expand_x, _, assist, counts, recv_counts, _, _ = torch_npu.npu_moe_distribute_dispatch_v2(
        x, ids, name, 2, rank, 4, expert_token_nums_type=1)
    combined = torch_npu.npu_moe_distribute_combine_v2(expand_x * 2, ids, assist, recv_counts, weights, name, 2, rank, 4)
    return expand_x, counts, combined


def standin_golden_ops_on_npu_tensors():
    """The stand-in activated in an emulated rank: its torch.npu is the device's, its golden ops run on npu
    tensors (local and collective, over hccl) and give what they give on the host over gloo."""
    from ascend_conformance.sut import standin

    ops = standin.activate("A3")
    import torch_npu

    rank, device = rank_context().rank, rank_context().device
    out = {"ops": ops, "torch.npu": torch_npu.npu is torch.npu and torch.npu.is_available(),
           "soc": torch_npu.npu.get_soc_version()}
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(3, 8, generator=generator)
    ids = torch.tensor([[0, 2], [3, 1], [2, 0]], dtype=torch.int32)
    weights = torch.rand(3, 2, generator=generator)
    routed = torch_npu.npu_moe_init_routing_v2(x.to(device), ids.to(device), expert_num=4, expert_tokens_num_type=1,
                                               expert_tokens_num_flag=True, active_num=6)
    custom = torch.ops._C_ascend.npu_moe_init_routing_custom(x.to(device), ids.to(device), expert_num=4,
                                                             expert_tokens_num_type=1, expert_tokens_num_flag=True,
                                                             active_num=6, quant_mode=-1)
    host_routed = torch_npu.npu_moe_init_routing_v2(x, ids, expert_num=4, expert_tokens_num_type=1,
                                                    expert_tokens_num_flag=True, active_num=6)
    out["routing on"] = sorted({str(t.device) for t in (*routed[:3], *custom[:3])})
    out["routing as on the host"] = all(torch.equal(a.cpu(), b) for a, b in zip(routed[:3], host_routed[:3]))
    on_npu = _dispatch_and_combine(torch_npu, x.to(device), ids.to(device), weights.to(device),
                                   dist.new_group([0, 1], backend="hccl"), rank)
    on_host = _dispatch_and_combine(torch_npu, x, ids, weights, dist.new_group([0, 1], backend="gloo"), rank)
    out["mc2 on"] = sorted({str(t.device) for t in on_npu})
    out["mc2 as on the host"] = all(torch.equal(a.cpu(), b) for a, b in zip(on_npu, on_host))
    try:
        from torch_npu import npu_fusion_attention  # transformers imports it once torch.npu is available
        npu_fusion_attention(x.to(device))
        out["unmodelled"] = "no error"
    except NotImplementedError as exc:
        out["unmodelled"] = str(exc)
    return out


def test_standin_golden_ops_run_on_npu_tensors(emulated_world):
    for rank, out in enumerate(emulated_world(2, pool="standin").run(standin_golden_ops_on_npu_tensors)):
        assert (out["ops"], out["torch.npu"], out["soc"]) == ("golden", True, 250)
        assert out["routing on"] == [f"npu:{rank}"] and out["routing as on the host"]
        assert out["mc2 on"] == [f"npu:{rank}"] and out["mc2 as on the host"]
        assert out["unmodelled"].startswith("torch_npu stand-in: no golden model of npu_fusion_attention")


# --- the records of a session -----------------------------------------------------------------------

def test_records_say_golden_ops_on_the_emulated_device(pytester, emulated_runner, monkeypatch):
    """A session on npu-emulated labels every record ops=golden, device=emulated, and its environment
    names the emulation."""
    monkeypatch.setenv(build.CACHE_ENV, _USER_CACHE)  # pytester's HOME is a new directory: keep the build
    pytester.makepyfile(test_one="def test_nothing():\n    pass\n")
    run = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", "--platform", "npu-emulated",
                                        "--results-dir=results", timeout=300)
    run.assert_outcomes(passed=1)
    document = json.loads((pytester.path / "results.json").read_text())
    (record,) = document["tests"]
    assert (record["ops"], record["device"]) == ("golden", "emulated")
    assert document["environment"]["platform"] == "npu-emulated"
    assert document["environment"]["emulation"].startswith("npu-emulated: ")
