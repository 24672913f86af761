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
    # one sequence whose blocks form one run (first id, count): its cache is read in place, not gathered
    block_run: tuple[int, int] | None = None
    attn_mask: torch.Tensor | None = None  # [B, 1, max_q, max_ctx] additive: 0 where allowed, -inf elsewhere


def paged_attention(q: torch.Tensor, kv: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Write the new keys/values into the cache, then attend.

    q: [T, H, D]; kv: [T, 2, KV, D] (keys then values); kv_cache: [N, bs, 2, KV, D]. Returns [T, H, D].
    """
    kv_cache.view(-1, *kv_cache.shape[2:]).index_copy_(0, meta.slot_mapping, kv)
    if meta.is_prefill:
        return _prefill_attention(q, kv, kv_cache, meta)
    return _decode_attention(q, kv_cache, meta)


def _gather(kv_cache: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the given blocks, each [len(blocks) * bs, KV, D] (views of one gathered copy)."""
    kv = kv_cache.index_select(0, blocks).flatten(0, 1)
    return kv[:, 0], kv[:, 1]


def _prefill_attention(q, kv, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
    out = torch.empty_like(q)
    block_size = kv_cache.shape[1]
    for i, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens)):
        start, end = meta.cu_seqlens_q[i], meta.cu_seqlens_q[i + 1]
        if ctx_len == q_len:  # nothing cached before: attend to the fresh k/v
            keys, values, mask = kv[start:end, 0], kv[start:end, 1], None
        else:
            keys, values = _gather(kv_cache, meta.block_tables[i, : -(-ctx_len // block_size)])
            keys, values = keys[:ctx_len], values[:ctx_len]
            mask = torch.ones(q_len, ctx_len, dtype=torch.bool, device=q.device).tril(ctx_len - q_len)
        o = F.scaled_dot_product_attention(  # 4-D inputs: 3-D ones fall back to the slow math kernel
            q[None, start:end].transpose(1, 2),
            keys[None].transpose(1, 2),
            values[None].transpose(1, 2),
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=True,
        )
        out[start:end] = o[0].transpose(0, 1)
    return out


def _decode_attention(q, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
    num_seqs, max_q = meta.attn_mask.shape[0], meta.attn_mask.shape[2]
    if max_q == 1:
        q_pad = q.unsqueeze(1)
    else:
        q_pad = q.new_zeros(num_seqs, max_q, *q.shape[1:])
        q_pad[meta.batch_index, meta.query_index] = q
    if meta.block_run is not None:
        first, count = meta.block_run
        kv = kv_cache[first : first + count].flatten(0, 1)
        keys, values = kv[:, 0], kv[:, 1]
    else:
        keys, values = _gather(kv_cache, meta.block_tables.view(-1))
    keys = keys.view(num_seqs, -1, *keys.shape[1:])  # [B, max_ctx, KV, D]
    values = values.view(num_seqs, -1, *values.shape[1:])
    o = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=meta.attn_mask,
        enable_gqa=True,
    ).transpose(1, 2)
    return o.squeeze(1) if max_q == 1 else o[meta.batch_index, meta.query_index]
