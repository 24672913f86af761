"""Attention over a paged KV cache (plain torch), and the per-step metadata it reads."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class AttentionMetadata:
    """Built once per step by the runner; shared by every layer."""

    positions: torch.Tensor  # [T] position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] flat cache slot each token's K/V is written to
    query_lens: list[int]  # new tokens per sequence
    context_lens: list[int]  # cached + new tokens per sequence
    cu_seqlens_q: list[int]  # [B + 1] offsets of each sequence's tokens in the flat batch
    block_tables: torch.Tensor  # [B, max_blocks], padded with 0
    is_prefill: bool
    # decode steps only: where each flat token sits in the padded [B, max_q] query, and the mask
    batch_index: torch.Tensor | None = None
    query_index: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None  # [B, 1, max_q, max_ctx] True where attention is allowed


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """Write the new k/v into the cache, then attend. q: [T, H, D]; k, v: [T, KV, D]; caches: [N, bs, KV, D]."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    if meta.is_prefill:
        return _prefill_attention(q, k, v, k_cache, v_cache, meta)
    return _decode_attention(q, k_cache, v_cache, meta)


def _prefill_attention(q, k, v, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    for i, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens)):
        start, end = meta.cu_seqlens_q[i], meta.cu_seqlens_q[i + 1]
        if ctx_len == q_len:  # nothing cached before: attend to the fresh k/v
            keys, values, mask = k[start:end], v[start:end], None
        else:
            blocks = meta.block_tables[i, : -(-ctx_len // block_size)]
            keys = k_cache.index_select(0, blocks).flatten(0, 1)[:ctx_len]
            values = v_cache.index_select(0, blocks).flatten(0, 1)[:ctx_len]
            mask = torch.ones(q_len, ctx_len, dtype=torch.bool, device=q.device).tril(ctx_len - q_len)
        o = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            keys.transpose(0, 1),
            values.transpose(0, 1),
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=True,
        )
        out[start:end] = o.transpose(0, 1)
    return out


def _decode_attention(q, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
    num_seqs, max_q = meta.attn_mask.shape[0], meta.attn_mask.shape[2]
    if max_q == 1:
        q_pad = q.unsqueeze(1)
    else:
        q_pad = q.new_zeros(num_seqs, max_q, *q.shape[1:])
        q_pad[meta.batch_index, meta.query_index] = q
    flat_tables = meta.block_tables.view(-1)
    keys = k_cache.index_select(0, flat_tables).view(num_seqs, -1, *k_cache.shape[2:])  # [B, max_ctx, KV, D]
    values = v_cache.index_select(0, flat_tables).view(num_seqs, -1, *v_cache.shape[2:])
    o = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=meta.attn_mask,
        enable_gqa=True,
    ).transpose(1, 2)
    return o.squeeze(1) if max_q == 1 else o[meta.batch_index, meta.query_index]
