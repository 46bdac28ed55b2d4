"""Each rank's own checks of the golden dispatch / combine inputs, made before the header handshake
(:mod:`ascend_conformance.golden.handshake`) so that a bad input fails on every rank instead of a hang."""
from __future__ import annotations

import torch

from ascend_conformance.golden.validation import check_range, check_rows, check_tensor, check_unsupported, fail, got


def check_ep_shape(op: str, world: int, rank: int, ep_world_size: int, ep_rank_id: int, moe_expert_num: int):
    """The EP arguments must describe the group passed, and the experts must split evenly over it."""
    if ep_world_size != world:
        fail(op, f"ep_world_size={ep_world_size} but group_ep has {world} ranks")
    if ep_rank_id != rank:
        fail(op, f"ep_rank_id={ep_rank_id} but this process is rank {rank} of group_ep")
    if moe_expert_num < 1 or moe_expert_num % ep_world_size:
        fail(op, f"moe_expert_num={moe_expert_num} must be a positive multiple of ep_world_size={ep_world_size}")


def check_no_tp_no_shared(op: str, *, tp_world_size, tp_rank_id, expert_shard_type, shared_expert_rank_num):
    if tp_world_size not in (0, 1) or tp_rank_id != 0:
        fail(op, f"the golden model has no TP domain (tp_world_size 0 or 1, tp_rank_id 0), got "
                 f"tp_world_size={tp_world_size}, tp_rank_id={tp_rank_id}")
    check_unsupported(op, expert_shard_type=(expert_shard_type, 0), shared_expert_rank_num=(shared_expert_rank_num, 0))


def check_expert_ids(op: str, expert_ids, n_tokens: int, experts: int):
    """int32 ``[BS, K]``, 1 <= K <= experts, ids in [0, experts), K distinct experts per token."""
    check_tensor(op, "expert_ids", expert_ids, (torch.int32,), (2,), f"int32 [{n_tokens}, K]")
    check_rows(op, "expert_ids", expert_ids, n_tokens, "int32 [BS, K]")
    if expert_ids.shape[1] < 1 or expert_ids.shape[1] > experts:
        fail(op, f"expert_ids must have 1 <= K <= moe_expert_num={experts} columns, got {got(expert_ids)}")
    check_range(op, "expert_ids", expert_ids, 0, experts)
    if expert_ids.numel():
        ordered = expert_ids.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if bool(repeated.any()):
            token = int(repeated.nonzero()[0])
            fail(op, f"expert_ids row {token} repeats an expert ({expert_ids[token].tolist()}); torch_npu needs K "
                     f"distinct experts per token")


def check_active_mask(op: str, mask, n_tokens: int, top_k: int):
    """None, bool ``[BS]`` with every True first, or bool ``[BS, K]``."""
    if mask is None:
        return
    check_tensor(op, "x_active_mask", mask, (torch.bool,), (1, 2), f"bool [{n_tokens}] or [{n_tokens}, {top_k}]")
    if list(mask.shape) not in ([n_tokens], [n_tokens, top_k]):
        fail(op, f"x_active_mask must be bool [{n_tokens}] or [{n_tokens}, {top_k}], got {got(mask)}")
    if mask.dim() == 1 and n_tokens and bool((mask[1:] & ~mask[:-1]).any()):
        fail(op, "x_active_mask [BS] must put every True before every False (torch_npu requires it)")


def entry_mask(mask, n_tokens: int, top_k: int, device) -> torch.Tensor:
    """bool [BS·K]: which routing entries take part (1-D masks select whole tokens).

    >>> entry_mask(torch.tensor([True, False]), 2, 2, "cpu").tolist()
    [True, True, False, False]
    """
    if mask is None:
        return torch.ones(n_tokens * top_k, dtype=torch.bool, device=device)
    if mask.dim() == 1:
        return mask.unsqueeze(1).expand(n_tokens, top_k).reshape(-1)
    return mask.reshape(-1)


def check_expert_scales(op: str, expert_scales, n_tokens: int, top_k: int):
    """float32 ``[BS, K]``: the weight of every routing entry."""
    check_tensor(op, "expert_scales", expert_scales, (torch.float32,), (2,), f"float32 [{n_tokens}, {top_k}]")
    if list(expert_scales.shape) != [n_tokens, top_k]:
        fail(op, f"expert_scales must be float32 [{n_tokens}, {top_k}], got {got(expert_scales)}")
