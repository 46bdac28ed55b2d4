"""Layouts of live systems known to diverge from the reference, written from docs/systems_under_test.md.

vllm-ascend (as described in docs/systems_under_test.md) builds

- the fine-grained TP groups (``otp``, ``lmheadtp``, ``emtp``, ``mlptp``) and ``shard_weight`` on a
  ``(pp, dp, tp)`` grid, i.e. it reads rank r as ``((p*DP + d)*TP + t)`` with PP *outside* DP, where
  vLLM puts DP outside PP;
- ``mc2`` as consecutive blocks of DP*PCP*TP ranks, where vLLM's EP varies (d, c, t) with p fixed.

With PP = 1 both readings coincide and the layout is correct. With PP > 1 and DP > 1 they do not.
Worked example, world 8, DP2 PP2 TP2, OTP 2. On the (pp, dp, tp) grid rank = p*4 + d*2 + t, so the
OTP group of (p, t) = (0, 0) is d = 0, 1 -> ranks [0, 2]::

    vllm-ascend otp  [[0, 2], [1, 3], [4, 6], [5, 7]]   (= vLLM's pp groups: each crosses stages)
    reference otp    [[0, 4], [1, 5], [2, 6], [3, 7]]
    vllm-ascend mc2  [[0, 1, 2, 3], [4, 5, 6, 7]]       (blocks of DP*PCP*TP = 4)
    reference ep     [[0, 1, 4, 5], [2, 3, 6, 7]]

This file is deliberately independent of the reference's grouping code: it rebuilds only the diverging
kinds from the description and takes every other kind from ``build_layout``.
"""
from __future__ import annotations

import itertools

from ascend_conformance.topology import FINE_GRAINED_TP_SIZE_FIELDS, ParallelConfig, build_layout


def _pp_outside_dp_rank(config: ParallelConfig, e: int, p: int, d: int, c: int, t: int) -> int:
    # The (pp, dp, tp) grid; PCP keeps its place just outside TP and external DP stays outermost.
    return (((e * config.pp + p) * config.dp + d) * config.pcp + c) * config.tp + t


def _module_tp_index(config: ParallelConfig, t: int) -> int:
    # Same module-TP rule as the reference (docs/layout.md shard_weight); only the grid differs.
    if config.flashcomm2_otp is not None and config.flashcomm2_otp > 1:
        return t // (config.tp // config.flashcomm2_otp)
    if config.flashcomm2_otp == 1 or config.dsa_cp:
        return 0
    return t


def vllm_ascend_layout(config: ParallelConfig) -> dict[str, list[list[int]]]:
    """The layout vllm-ascend builds for ``config``, per docs/systems_under_test.md's known divergence."""
    layout = build_layout(config)
    coordinates = list(itertools.product(
        range(config.external_dp), range(config.pp), range(config.dp), range(config.pcp),
        range(config.tp)))

    for kind, field in FINE_GRAINED_TP_SIZE_FIELDS.items():
        size = getattr(config, field)
        if size is None:
            continue
        groups: dict[tuple, list[int]] = {}
        # itertools.product runs d in ascending order for each fixed (e, p, c, t): members in d order.
        for e, p, d, c, t in coordinates:
            groups.setdefault((e, p, c, t, d // size), []).append(
                _pp_outside_dp_rank(config, e, p, d, c, t))
        layout[kind] = sorted(groups.values(), key=min)

    if config.layer_sharding:
        groups = {}
        for e, p, d, c, t in coordinates:
            groups.setdefault((e, p, _module_tp_index(config, t)), []).append(
                _pp_outside_dp_rank(config, e, p, d, c, t))
        layout["shard_weight"] = sorted((sorted(group) for group in groups.values()), key=min)

    block = config.dp * config.pcp * config.tp
    layout["mc2"] = [list(range(start, start + block)) for start in range(0, config.world_size, block)]
    return layout
