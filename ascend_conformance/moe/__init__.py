"""MoE communication methods (docs/moe.md): prepare → permute → expert MLP → unpermute → finalize.

    context.py           ForwardContext: num_tokens_across_dp, max_tokens_across_dp, padded_num_tokens, mc2_mask
    placement.py         ExpertPlacement: expert_map of every EP rank (contiguous, non-contiguous, uneven), slot ids
    parallel.py          the TP / DP / EP / MC2 groups a method talks to (ascend_conformance.groups coordinators)
    ops.py               op provider: torch_npu on an NPU, the golden models elsewhere
    mlp.py               ExpertMLP: SwiGLU experts through npu_grouped_matmul
    methods.py           Dummy, NativeAllGather, AllGather, AllToAll, MC2 (METHODS by CLI name)
    selection.py         vllm-ascend's method choice as a pure function
    oracle.py            the dense float32 oracle
    scenario.py          one seeded scenario as a value: layout, inputs, weights, repro line (CLI, suites, benchmarks)
    scenario_on_rank.py  a scenario in a rank of a world: groups, inputs, forward, the rank's verdict
    scenario_verdict.py  a rank's output against the dense oracle; every rank's folded into one summary
    scenario_report.py   what a failing scenario prints
    benchmark.py         permute/unpermute throughput, dispatch/combine latency and bandwidth, peak memory
"""
from ascend_conformance.moe.context import ForwardContext, forward_context, gather_forward_context
from ascend_conformance.moe.methods import (COMPUTING_METHODS, METHODS, MC2, AllGather, AllToAll, Dispatched, Dummy,
                                            MoECommMethod, NativeAllGather, Prepared, method_class)
from ascend_conformance.moe.mlp import ExpertMLP
from ascend_conformance.moe.oracle import dense_moe
from ascend_conformance.moe.placement import ExpertPlacement
from ascend_conformance.moe.selection import mc2_tokens_capacity, select_method

__all__ = ["ForwardContext", "forward_context", "gather_forward_context", "MoECommMethod", "Prepared", "Dispatched",
           "Dummy", "NativeAllGather", "AllGather", "AllToAll", "MC2", "METHODS", "COMPUTING_METHODS",
           "method_class", "ExpertMLP", "dense_moe", "ExpertPlacement", "mc2_tokens_capacity", "select_method"]
