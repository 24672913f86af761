"""Extend/prefill attention: causal attention of a chunk of new tokens per sequence over its whole context.

The chunk's keys and values are stored in the cache first (store_kv), so one loop over the sequence's
pages serves a fresh prefill, a chunked prefill, a prefix-cache hit and a budget-forcing splice alike;
blocks shared between sequences are read like any other. Varlen: sequence b's new tokens are the flat
rows cu_seqlens_q[b]:cu_seqlens_q[b + 1]. A program per (sequence, query head, tile of BLOCK_M new
tokens) reads its KV head's pages in place (GQA without copying K/V), a key tile (page_tile) at a time.
"""
import torch
import triton
import triton.language as tl

from kernels.paged_softmax import attend_tile, capability, dot_precision, page_tile

BLOCK_M = 16


@triton.jit(do_not_specialize=["stride_table_b"])  # the tables' width changes with the batch: one variant
def _extend_kernel(q_ptr, cache_ptr, tables_ptr, cu_seqlens_q_ptr, context_lens_ptr, out_ptr, scale,
                   stride_q_t, stride_q_h, stride_out_t, stride_out_h, stride_cache_c, stride_cache_h,
                   stride_cache_n, stride_table_b, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    seq, head, tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    TILES: tl.constexpr = BLOCK_SIZE // TILE
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    context_len = tl.load(context_lens_ptr + seq)
    prefix_len = context_len - q_len
    rows, dims, tokens = tile * BLOCK_M + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), tl.arange(0, TILE)
    row_mask, dim_mask = rows < q_len, dims < HEAD_DIM
    q = tl.load(q_ptr + (q_start + rows)[:, None] * stride_q_t + head * stride_q_h + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    q_pos = prefix_len + rows
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # keys up to this tile's last query; none for a tile past the sequence's chunk
    last_key = tl.minimum(prefix_len + (tile + 1) * BLOCK_M, context_len)
    num_tiles = tl.where(tile * BLOCK_M < q_len, (last_key + TILE - 1) // TILE, 0)
    head_base = cache_ptr + (head // GROUP).to(tl.int64) * stride_cache_h  # as in decode attention
    for t in range(0, num_tiles):
        block = tl.load(tables_ptr + seq * stride_table_b + t // TILES).to(tl.int64)
        key_pos = t * TILE + tokens
        visible = (key_pos[None, :] <= q_pos[:, None]) & (key_pos[None, :] < context_len)
        m_i, l_i, acc = attend_tile(q, head_base, block, t % TILES * TILE + tokens, dims, dim_mask, visible, m_i,
                                    l_i, acc, scale, stride_cache_c, stride_cache_n, HEAD_DIM, DOT_PRECISION)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + (q_start + rows)[:, None] * stride_out_t + head * stride_out_h + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def extend_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, max_query_len: int) -> torch.Tensor:
    """q: [T, H, D]; kv_cache: [2, KV, N, bs, D] holding every token of each context, the new ones included;
    block_tables: [B, max_blocks]; cu_seqlens_q: [B + 1]; context_lens: [B]. Returns [T, H, D]."""
    num_tokens, num_heads, head_dim = q.shape
    _, num_kv_heads, _, block_size, _ = kv_cache.shape
    if q.stride(-1) != 1 or kv_cache.stride(-1) != 1 or kv_cache.stride(-2) != head_dim:
        raise ValueError("extend_attention needs q's and the cache's head dims contiguous")
    out = torch.empty_like(q)
    if num_tokens == 0:
        return out
    grid = (len(context_lens), num_heads, triton.cdiv(max_query_len, BLOCK_M))
    _extend_kernel[grid](
        q, kv_cache, block_tables, cu_seqlens_q, context_lens, out, head_dim ** -0.5,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), kv_cache.stride(0), kv_cache.stride(1),
        kv_cache.stride(2), block_tables.stride(0), GROUP=num_heads // num_kv_heads, BLOCK_M=BLOCK_M,
        BLOCK_SIZE=block_size, TILE=page_tile(block_size, head_dim, kv_cache.element_size(), capability(q.device)),
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), DOT_PRECISION=dot_precision(q.dtype))
    return out
