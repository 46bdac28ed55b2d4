"""Breakage planted into a copy of the installed vllm-ascend must turn suites/test_sut_eplb.py red (issue 16,
item 6), on the default pair (vllm-ascend 0.23.0.post1, whose source the plants are written against).

One world of 4 ranks imports a copy of vllm_ascend (never the installed package) with two plants, each
switched on by ``ASCEND_CONFORMANCE_PLANTED`` inside the rank, so the same process also runs the release's
own behaviour as the control:

(a) ``twice``: ``SwiftBalanceEplb.rebalance_experts`` copies slot 0 of rank 0 into its last slot in layer 0,
    so an expert is placed twice on one rank. Caught by ``test_vllm_ascend_policy`` (its judge:
    "the placement is not one the release can apply ... twice on one rank").
(b) ``group-ranks``: ``D2DExpertWeightLoader.generate_expert_d2d_transfer_task`` addresses its peers by
    their rank in the dynamic_eplb group instead of ``comm_group.ranks[...]`` (what 0.18.0 did before
    vllm-ascend #10486). With the EPLB group the whole world the two agree, so the world-EP scenarios of
    ``test_vllm_ascend_weight_transfer`` cannot see it (checked here on the W4 one); the PP 2 scenario
    (EP groups [0, 2] and [1, 3]) catches it.
"""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from ascend_conformance.errors import Divergence
from ascend_conformance.sut import VLLM_ASCEND, installed, stack

SUITES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "suites")
if SUITES not in sys.path:
    sys.path.insert(0, SUITES)

import test_sut_eplb as suite  # noqa: E402 - the suite judged here lives in suites/

FLAG = "ASCEND_CONFORMANCE_PLANTED"
POLICY_CASE = ("swift_balancer", "zipf1.5", "E16-G4-red4")  # passes on the release as it is
PP2_CASE = ("shuffled", 16, 2, 2, "bfloat16", 2)
WORLD_EP_CASE = ("shuffled", 16, 4, 4, "bfloat16", 1)
PLANTS = {
    "eplb/core/policy/policy_swift_balancer.py": [(
        "        return change, per_layer_priority, new_deployment.tolist()",
        f"        if __import__('os').environ.get({FLAG!r}) == 'twice':  # planted\n"
        "            new_deployment[0][0][-1] = new_deployment[0][0][0]\n"
        "        return change, per_layer_priority, new_deployment.tolist()")],
    "eplb/core/eplb_device_transfer_loader.py": [
        (f"self.comm_group.ranks[{peer}]",
         f"({peer} if __import__('os').environ.get({FLAG!r}) == 'group-ranks' else self.comm_group.ranks[{peer}])")
        for peer in ("dst_rank", "recv_rank")],
}


def plant(copy_root: str) -> None:
    for relative, edits in PLANTS.items():
        path = os.path.join(copy_root, "vllm_ascend", relative)
        with open(path) as f:
            text = f.read()
        for old, new in edits:
            if text.count(old) != 1:
                pytest.fail(f"cannot plant into {relative}: {text.count(old)} occurrences of {old!r}")
            text = text.replace(old, new)
        with open(path, "w") as f:
            f.write(text)


def _planted_on_rank(copy_root: str) -> dict:
    """Every rank: the control and the planted runs, in that order, with the copy imported."""
    from ascend_conformance.sut import vllm_ascend_eplb

    vllm_ascend_eplb.use_source(copy_root)
    out = {}
    for name, value, run in (
            ("policy_control", "", lambda: vllm_ascend_eplb.run_cases([suite._ascend_case(*POLICY_CASE)])[0]),
            ("policy_planted", "twice", lambda: vllm_ascend_eplb.run_cases([suite._ascend_case(*POLICY_CASE)])[0]),
            ("pp2_control", "", lambda: suite._transfer_on_rank(*PP2_CASE[:2], *PP2_CASE[3:])),
            ("pp2_planted", "group-ranks", lambda: suite._transfer_on_rank(*PP2_CASE[:2], *PP2_CASE[3:])),
            ("world_ep_planted", "group-ranks",
             lambda: suite._transfer_on_rank(*WORLD_EP_CASE[:2], *WORLD_EP_CASE[3:]))):
        os.environ[FLAG] = value
        try:
            out[name] = run()
        finally:
            os.environ.pop(FLAG, None)
    return out


@pytest.fixture
def planted_runs(world, tmp_path):
    reason = stack.unavailable_reason(VLLM_ASCEND)
    if reason:
        pytest.skip(reason)
    release = installed.installed(VLLM_ASCEND)
    if not release.comparable.startswith("0.23."):
        pytest.skip(f"the plants are written against vllm_ascend 0.23.0.post1's source; installed: {release.label}")
    source = stack.inspect()[VLLM_ASCEND].location  # found, never imported here: no torch_npu in pytest
    copy_root = str(tmp_path / "vllm_ascend_planted")
    shutil.copytree(os.path.join(source, "vllm_ascend"), os.path.join(copy_root, "vllm_ascend"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    plant(copy_root)
    return suite.sut_world(world, VLLM_ASCEND, 4, timeout=suite.RUN_TIMEOUT, variant="eplb-planted").run(
        _planted_on_rank, copy_root)


def test_planted_breakage_turns_the_eplb_suite_red(planted_runs, report):
    first = planted_runs[0]
    # (a) the control passes the policy judge; the planted policy is caught as an expert twice on a rank
    suite.judge_ascend_policy(*POLICY_CASE, first["policy_control"])
    with pytest.raises(Divergence, match=r"not one the release can apply") as caught:
        suite.judge_ascend_policy(*POLICY_CASE, first["policy_planted"])
    assert "twice on one rank" in str(caught.value), str(caught.value)
    report.attach("(a) caught by test_vllm_ascend_policy", str(caught.value))
    # (b) the PP 2 transfer passes as the release is, and is red with group ranks used as global ranks
    assert suite.judge_transfer([rank["pp2_control"] for rank in planted_runs], PP2_CASE) > 0
    with pytest.raises(Divergence, match=r"PP 2 .*(raises on ranks|do not pair up)") as caught:
        suite.judge_transfer([rank["pp2_planted"] for rank in planted_runs], PP2_CASE)
    assert "generate_expert_d2d_transfer_task" in str(caught.value), str(caught.value)
    report.attach("(b) caught by test_vllm_ascend_weight_transfer[" + suite.transfer_id(*PP2_CASE) + "]",
                  str(caught.value))
    # ... which no world-EP scenario can see: there a group rank is the global rank
    assert suite.judge_transfer([rank["world_ep_planted"] for rank in planted_runs], WORLD_EP_CASE) > 0
