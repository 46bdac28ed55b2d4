"""The torch_npu stand-in stays honest (ascend_conformance/sut/standin.py).

Each check runs in a fresh interpreter: activating the stand-in patches torch for the life of a process,
which the pytest process must never see.

* platform detection refuses the stand-in with a reason, and never raises when a torch_npu imports but its
  torch.npu is unusable;
* an op the suite has no golden model of raises AttributeError naming it;
* ``activate()`` returns ``torch_npu`` and changes nothing when a real torch_npu imports (a fake one here);
* what the stand-in adds keeps torch believing there is no accelerator, and the HCCL names it hands out
  resolve to the groups they name, without keeping a destroyed group alive.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from tests.events import HANG_GUARD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, extra_path: str | None = None, timeout: float = HANG_GUARD) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    path = [p for p in (extra_path, ROOT, os.environ.get("PYTHONPATH")) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_platform_detection_refuses_the_standin_with_a_reason():
    out = _python("""
        import json
        from ascend_conformance.sut import standin
        ops = standin.activate("A3")
        from ascend_conformance import platform
        import torch
        npu = platform.NpuPlatform()
        print(json.dumps({"ops": ops, "reason": npu.unavailable_reason(),
                          "import_error": platform.torch_npu_import_error(),
                          "accelerator": torch.accelerator.is_available(),
                          "accelerator_type": str(torch._C._get_accelerator()),
                          "npu_device": str(torch.device("npu")), "npu_available": torch.npu.is_available(),
                          "device_count": torch.npu.device_count()}))
    """)
    assert out["ops"] == "golden"
    assert out["reason"] == out["import_error"] == "torch_npu is the suite's CPU stand-in (golden ops), not a device runtime"
    assert (out["accelerator"], out["accelerator_type"]) == (False, "cpu")
    assert (out["npu_device"], out["npu_available"], out["device_count"]) == ("npu", False, 0)


def test_detection_never_raises_when_torch_npu_imports_but_torch_npu_is_unusable(tmp_path):
    fake = tmp_path / "torch_npu"
    fake.mkdir()
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import torch, types
        __version__ = "9.9.9-broken"
        def _broken(*args, **kwargs):
            raise RuntimeError("drvErr: device not found\\nmore")
        torch.npu = types.SimpleNamespace(device_count=_broken, is_available=_broken)
    """))
    out = _python("""
        import json
        from ascend_conformance import platform
        print(json.dumps({"reason": platform.NpuPlatform().unavailable_reason()}))
    """, extra_path=str(tmp_path))
    assert out["reason"] == "torch_npu imported but torch.npu is unusable: drvErr: device not found"


def test_an_op_without_a_golden_model_raises_attribute_error_naming_it():
    out = _python("""
        import json
        from ascend_conformance.sut import standin
        standin.activate("A5")
        import torch_npu
        try:
            torch_npu.npu_fused_infer_attention_score
            missing = None
        except AttributeError as exc:
            missing = str(exc)
        print(json.dumps({"missing": missing, "has_v2": hasattr(torch_npu, "npu_moe_distribute_dispatch_v2"),
                          "soc": torch_npu.npu.get_soc_version(), "device_type": standin.emulated_device_type()}))
    """)
    assert out["missing"].startswith("torch_npu stand-in: no golden model of npu_fused_infer_attention_score")
    assert out["has_v2"] is True and (out["soc"], out["device_type"]) == (260, "A5")


def test_activate_changes_nothing_when_a_real_torch_npu_imports(tmp_path):
    fake = tmp_path / "torch_npu"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "2.9.0.post1+fake-real"\n')
    out = _python("""
        import json, sys, torch
        before = {"path": list(sys.path), "histc": torch.histc, "get_backend": torch.distributed.ProcessGroup._get_backend}
        from ascend_conformance.sut import standin
        ops = standin.activate("A3")
        import torch_npu
        try:
            torch.device("npu")
            npu_parses = True
        except RuntimeError:
            npu_parses = False
        print(json.dumps({"ops": ops, "version": torch_npu.__version__, "path_same": sys.path == before["path"],
                          "histc_same": torch.histc is before["histc"], "npu_parses": npu_parses,
                          "get_backend_same": torch.distributed.ProcessGroup._get_backend is before["get_backend"],
                          "device_type": standin.emulated_device_type(), "has_npu_attr": hasattr(torch, "npu")}))
    """, extra_path=str(tmp_path))
    assert out == {"ops": "torch_npu", "version": "2.9.0.post1+fake-real", "path_same": True, "histc_same": True,
                   "npu_parses": False, "get_backend_same": True, "device_type": None, "has_npu_attr": False}


def test_hccl_names_resolve_to_their_groups_and_custom_ops_are_the_golden_models():
    out = _python("""
        import json, os, torch, torch.distributed as dist
        from ascend_conformance.sut import standin
        standin.activate("A3")
        import torch_npu
        from ascend_conformance import golden
        # A world of one needs no port: an in-process store (a port from the pid collided with another session's).
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        group = dist.new_group([0])
        name = group._get_backend(torch.device("npu")).get_hccl_comm_name(0)
        resolved = standin.process_group_for_hccl_name("op", name) is group
        try:
            standin.process_group_for_hccl_name("npu_moe_distribute_dispatch_v2", "hccl-nobody")
            unknown = None
        except Exception as exc:
            unknown = f"{type(exc).__name__}: {exc}"
        x = torch.arange(12.0).view(3, 4)
        ids = torch.tensor([[2, 0], [1, 3], [0, 2]], dtype=torch.int32)
        kwargs = dict(active_num=6, expert_num=4, expert_tokens_num_type=1, expert_tokens_num_flag=True,
                      active_expert_range=[0, 2], quant_mode=-1)
        custom = torch.ops._C_ascend.npu_moe_init_routing_custom(x, ids, **kwargs)
        model = golden.npu_moe_init_routing_v2(x, ids, **kwargs)
        same = all(torch.equal(a, b) for a, b in zip(custom, model))
        counts = torch.histc(torch.tensor([0, 3, 3, 1], dtype=torch.int32), bins=4, min=0, max=4)
        # A name must not keep its group alive: a destroyed gloo group's threads go, and its name resolves
        # to nothing (a warm rank once kept every MoE world's groups, hundreds of polling threads).
        loops = lambda: sum(open(f"/proc/self/task/{t}/comm").read().strip() == "gloo_tcp_loop"
                            for t in os.listdir("/proc/self/task"))
        with_group = loops()
        dist.destroy_process_group(group)
        del group
        after_destroy = loops()
        try:
            standin.process_group_for_hccl_name("op", name)
            stale = None
        except Exception as exc:
            stale = type(exc).__name__
        print(json.dumps({"name": name, "resolved": resolved, "unknown": unknown, "custom_is_golden": same,
                          "histc": counts.tolist(), "histc_dtype": str(counts.dtype),
                          "npu_tensor_is_self": (lambda t: t.npu() is t)(torch.ones(1)),
                          "gloo_loops": [with_group, after_destroy], "stale": stale}))
        dist.destroy_process_group()
    """)
    assert out["name"].startswith("standin-hccl-") and out["resolved"] is True
    assert out["unknown"].startswith("ConfigError: npu_moe_distribute_dispatch_v2: no process group has the HCCL "
                                     "communicator name 'hccl-nobody'")
    assert out["custom_is_golden"] is True
    assert (out["histc"], out["histc_dtype"]) == ([1, 1, 0, 2], "torch.int32")
    assert out["npu_tensor_is_self"] is True
    assert out["gloo_loops"][1] == out["gloo_loops"][0] - 1 and out["stale"] == "ConfigError", out
