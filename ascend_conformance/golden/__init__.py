"""Pure-PyTorch models of the torch_npu MoE ops of docs/ops.md, with torch_npu's names and keywords.

Where torch_npu is present the suites run these next to the real ops on the same inputs; everywhere else
they stand in for the real ops, so a native MoE path and an op path still cross-check two implementations.
Every model validates its inputs and raises :class:`~ascend_conformance.errors.ConfigError` with a one-line
message naming the op, the argument and the offending dtype / shape / value.

Notation
--------
Routing input ``expert_idx`` (or ``expert_ids`` / ``indices``) is ``[N, K]``: token n chose K experts.
Its entries are addressed by the **flat index** ``f = n·K + k``. An entry is *valid* when its expert lies
in the active range ``[lo, hi)``; ``A`` is the number of valid entries. ``s`` is the **stable** argsort of
the valid entries by expert id: ascending expert, ties kept in flat-index order (token order, since one
token never picks an expert twice). Destination row ``j`` of the expanded (permuted) tensor holds the
token of entry ``s[j]``, i.e. ``x[s[j] // K]``.

Worked example, N=2, K=2, E=4, ``expert_idx = [[2, 0], [0, 3]]`` → flat ids ``[2, 0, 0, 3]`` (f = 0..3)::

    s                          = [1, 2, 0, 3]      experts 0 (f=1), 0 (f=2), 2 (f=0), 3 (f=3)
    expanded_x                 = x[[0, 1, 0, 1]]   x[s // K]
    expanded_row_idx, type 0   = [2, 0, 1, 3]      source → destination: entry f went to row [f]
    expanded_row_idx, type 1   = [1, 2, 0, 3]      destination → source: row j came from entry s[j]
    expert tokens, count       = [2, 0, 1, 1]      cumsum [2, 2, 3, 4]; key-value [[0, 2], [2, 1], [3, 1]]
    with active_expert_range=[0, 2):  s = [1, 2], A = 2, type 0 = [-1, 0, 1, -1], counts = [2, 0]

Rows documented as undefined (past ``A``, past the sum of a group list, past the rows a rank received)
are written as zeros (indices: -1) here; real ops leave garbage there, so nothing may rely on them.

Collective ops
--------------
``npu_moe_distribute_dispatch(_v2)`` / ``npu_moe_distribute_combine(_v2)`` are modelled over
``torch.distributed.all_to_all_single`` on the EP group. torch_npu takes ``group_ep`` as an HCCL
communicator *name*; these models take the same keyword but need the ``torch.distributed.ProcessGroup``
itself. Expert ``e`` lives on EP rank ``e // L`` with ``L = moe_expert_num / ep_world_size``. A rank
receives its rows ordered by local expert, then source rank, then source order. Before moving any data the
ranks exchange a small header, so a bad input on one rank makes *every* rank raise ConfigError instead of
leaving the others blocked in a collective. ``assist_info_for_combine`` / ``expand_idx``,
``ep_recv_counts``, ``tp_recv_counts`` and ``expand_scales`` are opaque handles from dispatch to combine:
here ``expand_idx`` / ``assist_info_for_combine`` is int32 ``[BS·K]`` (the entry's position in the
rank's send order, -1 when not sent; torch_npu's v2 handle is ``[A·128]``) and ``ep_recv_counts`` is the
int32 cumsum of received rows per (local expert, source rank) segment. Compare nothing about them.

Where these models differ from torch_npu's documentation (docs/ops.md decides)
--------------------------------------------------------------------------------
* ``npu_moe_init_routing_v2``: ``quant_mode`` defaults to -1 (none; torch_npu's default 0, static
  quantisation, is unsupported there too); ``expert_tokens_num_type=2`` returns ``[n, 2]`` rows for the n
  non-empty experts (torch_npu: ``[expert_num, 2]`` with those rows first); type 0 (cumsum) and
  ``active_num`` truncation are modelled although current torch_npu documents only types 1/2 and
  ``active_num == N·K``; the third output is computed even when ``expert_tokens_num_flag`` is False.
* ``npu_moe_finalize_routing``: a -1 destination contributes nothing, bias included (torch_npu's numpy
  reference adds ``scale·bias`` for it).
* ``npu_grouped_matmul``: ``split_item`` defaults to 3 and ``group_type`` to 0, the only modelled mode
  (torch_npu: 0 and -1).
* dispatch / combine also accept float32 ``x`` (torch_npu: bf16 / fp16 only) and ranks holding 0 tokens.

Modules
-------
    validation.py         the one-line input checks every op shares
    routing.py            npu_moe_init_routing_v2, npu_moe_token_permute / unpermute, npu_moe_finalize_routing
    matmul.py             npu_grouped_matmul
    activation.py         npu_swiglu
    handshake.py          the header the EP ranks exchange before a dispatch / combine moves data
    distribute_inputs.py  each rank's own dispatch / combine input checks
    distribute.py         npu_moe_distribute_dispatch(_v2), npu_moe_distribute_combine(_v2)

Callers use this package's names (``golden.npu_moe_init_routing_v2(...)``), which keep torch_npu's
keyword signatures; the modules are how the models are organised, not an interface.
"""
from ascend_conformance.golden.distribute import (
    npu_moe_distribute_combine, npu_moe_distribute_combine_v2, npu_moe_distribute_dispatch,
    npu_moe_distribute_dispatch_v2,
)
from ascend_conformance.golden.activation import npu_swiglu
from ascend_conformance.golden.matmul import npu_grouped_matmul
from ascend_conformance.golden.routing import (
    npu_moe_finalize_routing, npu_moe_init_routing_v2, npu_moe_token_permute, npu_moe_token_unpermute,
)

__all__ = [
    "npu_moe_init_routing_v2",
    "npu_moe_token_permute",
    "npu_moe_token_unpermute",
    "npu_moe_finalize_routing",
    "npu_grouped_matmul",
    "npu_swiglu",
    "npu_moe_distribute_dispatch",
    "npu_moe_distribute_dispatch_v2",
    "npu_moe_distribute_combine",
    "npu_moe_distribute_combine_v2",
]
