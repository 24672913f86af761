"""Attention over a paged KV cache (plain torch), and the per-step metadata it reads.

The cache of one layer is [2, KV, N, bs, D]: keys then values, head-major, so the blocks a sequence
gathers (or a run of blocks read in place) form one [KV, tokens, D] slab per head that SDPA reads
as it is, with no transpose copy.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class DecodeGroup:
    """Sequences of similar context length that attend together, padded to the longest of them."""

    start: int  # their tokens are flat positions [start, end) of the batch
    end: int
    block_tables: torch.Tensor  # [n, max_blocks], padded with 0
    attn_mask: torch.Tensor  # [n, 1, max_q, max_blocks * bs] additive: 0 where allowed, -inf elsewhere
    # multi-token extends (spliced tokens) only: where each token sits in the padded [n, max_q] query
    batch_index: torch.Tensor | None = None
    query_index: torch.Tensor | None = None


@dataclass(slots=True)
class AttentionMetadata:
    """Built once per step by the runner; shared by every layer."""

    positions: torch.Tensor  # [T] position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] flat cache slot each token's K/V is written to
    query_lens: list[int]  # new tokens per sequence
    context_lens: list[int]  # cached + new tokens per sequence
    cu_seqlens_q: list[int]  # [B + 1] offsets of each sequence's tokens in the flat batch
    block_tables: torch.Tensor | None  # prefill: [B, max_blocks], padded with 0 (decode groups hold their own)
    is_prefill: bool
    # flat buffer the layers gather cached blocks into, reused: a fresh multi-MB tensor per layer costs
    # more in page faults than the copy itself (CPU malloc maps it anew)
    workspace: torch.Tensor
    decode_groups: list[DecodeGroup] | None = None  # decode steps only
    # one sequence whose blocks form one run (first id, count): its cache is read in place, not gathered
    block_run: tuple[int, int] | None = None
    # the Triton kernels' view of the batch (flat_metadata ops only); block_tables is then set for decode too
    context_lens_tensor: torch.Tensor | None = None  # [B]
    cu_seqlens_q_tensor: torch.Tensor | None = None  # [B + 1]
    max_query_len: int = 0


def paged_attention(q: torch.Tensor, kv: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Write the new keys/values into the cache, then attend.

    q: [T, H, D]; kv: [T, 2, KV, D] (keys then values); kv_cache: [2, KV, N, bs, D]. Returns [T, H, D].
    """
    kv_cache.flatten(2, 3).index_copy_(2, meta.slot_mapping, kv.permute(1, 2, 0, 3))
    if meta.is_prefill:
        return _prefill_attention(q, kv, kv_cache, meta)
    return _decode_attention(q, kv_cache, meta)


def _gather(kv_cache: torch.Tensor, blocks: torch.Tensor, workspace: torch.Tensor) -> torch.Tensor:
    """Keys and values of the given blocks, [2, KV, len(blocks) * bs, D]: a view of the workspace."""
    two, kv_heads, _, block_size, head_dim = kv_cache.shape
    shape = (two, kv_heads, len(blocks), block_size, head_dim)
    out = workspace[: shape[0] * shape[1] * shape[2] * shape[3] * shape[4]].view(shape)
    return torch.index_select(kv_cache, 2, blocks, out=out).flatten(2, 3)


def _prefill_attention(q, kv, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
    out = torch.empty_like(q)
    block_size = kv_cache.shape[3]
    for i, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens)):
        start, end = meta.cu_seqlens_q[i], meta.cu_seqlens_q[i + 1]
        if ctx_len == q_len:  # nothing cached before: attend to the fresh k/v
            keys, values, mask = kv[start:end, 0].transpose(0, 1), kv[start:end, 1].transpose(0, 1), None
        else:
            keys, values = _gather(kv_cache, meta.block_tables[i, : -(-ctx_len // block_size)], meta.workspace)
            keys, values = keys[:, :ctx_len], values[:, :ctx_len]
            mask = torch.ones(q_len, ctx_len, dtype=torch.bool, device=q.device).tril(ctx_len - q_len)
        o = F.scaled_dot_product_attention(  # 4-D inputs: 3-D ones fall back to the slow math kernel
            q[None, start:end].transpose(1, 2),
            keys[None],
            values[None],
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=True,
        )
        out[start:end] = o[0].transpose(0, 1)
    return out


def _decode_attention(q, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
    groups = meta.decode_groups
    if len(groups) == 1:
        return _group_attention(q, kv_cache, groups[0], meta)
    out = torch.empty_like(q)
    for group in groups:
        out[group.start : group.end] = _group_attention(q[group.start : group.end], kv_cache, group, meta)
    return out


def _group_attention(q, kv_cache, group: DecodeGroup, meta: AttentionMetadata) -> torch.Tensor:
    """q: the group's tokens [T_g, H, D] -> [T_g, H, D]."""
    num_seqs, max_q = group.attn_mask.shape[0], group.attn_mask.shape[2]
    if max_q == 1:
        q_pad = q.unsqueeze(1)
    else:
        q_pad = q.new_zeros(num_seqs, max_q, *q.shape[1:])
        q_pad[group.batch_index, group.query_index] = q
    if meta.block_run is not None:
        first, count = meta.block_run
        kv = kv_cache[:, :, first : first + count].flatten(2, 3)
    else:
        kv = _gather(kv_cache, group.block_tables.view(-1), meta.workspace)
    # [2, KV, n * max_ctx, D] -> keys and values [n, KV, max_ctx, D]
    keys, values = kv.unflatten(2, (num_seqs, -1)).transpose(1, 2)
    if q.dtype == torch.float32 or q.device.type != "cpu":
        o = F.scaled_dot_product_attention(q_pad.transpose(1, 2), keys, values, attn_mask=group.attn_mask, enable_gqa=True)
    else:
        o = _grouped_attention(q_pad.transpose(1, 2), keys, values, group.attn_mask)
    o = o.transpose(1, 2)
    return o.squeeze(1) if max_q == 1 else o[group.batch_index, group.query_index]


def _grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDPA for a few query tokens in half precision on the CPU, as two batched matmuls per KV head with
    the query heads that share it stacked (GQA without copies) and an fp32 softmax: CPU SDPA in bf16
    costs ~10x this at decode. q is scaled first, so fp16 scores cannot overflow where SDPA's would
    not. q: [n, H, Q, D]; keys, values: [n, KV, C, D]; mask: [n, 1, Q, C] additive."""
    n, num_heads, num_q, head_dim = q.shape
    num_kv, ctx = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv
    scores = ((q * head_dim ** -0.5).reshape(n, num_kv, group * num_q, head_dim) @ keys.transpose(-1, -2)).float()
    scores.view(n, num_kv, group, num_q, ctx).add_(mask.view(n, 1, 1, num_q, ctx))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return (probs @ values).view(n, num_heads, num_q, head_dim)
