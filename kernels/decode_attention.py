"""Paged decode attention (flash-decoding): one query token per sequence, read against its block table.

Pass 1: a program per (sequence, KV head, context split) walks its split's pages in place (no gather)
and attends all G query heads of that KV head at once, as one [G, D] x [D, bs] dot per page: GQA
without copying K/V per query head. It writes an unnormalised partial output and its log-sum-exp.
Pass 2: a program per (sequence, query head) merges the splits.
"""
import torch
import triton
import triton.language as tl

from kernels.paged_softmax import attend_page, dot_precision

TARGET_PROGRAMS = 256  # enough (sequence, head, split) programs to fill a GPU's SMs a few times over
MIN_BLOCKS_PER_SPLIT = 4
REDUCE_SPLITS = 16  # splits pass 2 merges at a time


# Integers that change with the batch are not specialized on (value 1, multiples of 16): the eager path
# would otherwise compile new variants as contexts grow.
@triton.jit(do_not_specialize=["stride_table_b", "num_splits", "blocks_per_split"])
def _decode_split_kernel(q_ptr, cache_ptr, tables_ptr, context_lens_ptr, part_out_ptr, part_lse_ptr, scale,
                         stride_q_b, stride_q_h, stride_cache_c, stride_cache_h, stride_cache_n, stride_table_b,
                         num_splits, blocks_per_split, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_heads = tl.num_programs(1) * GROUP
    context_len = tl.load(context_lens_ptr + seq)
    groups, dims, tokens = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_SIZE)
    heads = kv_head * GROUP + groups
    head_mask, dim_mask = groups < GROUP, dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_q_b + heads[:, None] * stride_q_h + dims[None, :],
                mask=head_mask[:, None] & dim_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, (context_len + BLOCK_SIZE - 1) // BLOCK_SIZE)
    head_base = cache_ptr + kv_head * stride_cache_h
    for j in range(first, last):
        block = tl.load(tables_ptr + seq * stride_table_b + j).to(tl.int64)
        visible = (j * BLOCK_SIZE + tokens)[None, :] < context_len
        m_i, l_i, acc = attend_page(q, head_base, block, tokens, dims, dim_mask, visible, m_i, l_i, acc, scale,
                                    stride_cache_c, stride_cache_n, HEAD_DIM, DOT_PRECISION)
    nonempty = l_i > 0  # an empty split (or a padded head row) weighs nothing in pass 2
    safe_l = tl.where(nonempty, l_i, 1.0)
    out = acc / safe_l[:, None]
    lse = tl.where(nonempty, m_i + tl.log(safe_l), float("-inf"))
    row = (seq * num_heads + heads) * num_splits + split
    tl.store(part_out_ptr + row[:, None] * HEAD_DIM + dims[None, :], out, mask=head_mask[:, None] & dim_mask[None, :])
    tl.store(part_lse_ptr + row, lse, mask=head_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_reduce_kernel(part_out_ptr, part_lse_ptr, out_ptr, stride_out_b, stride_out_h, num_splits,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """Merges the splits BLOCK_S at a time with a running max, so one compiled variant serves any count."""
    seq, head = tl.program_id(0), tl.program_id(1)
    row = seq * tl.num_programs(1) + head
    splits, dims = tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, num_splits, BLOCK_S):
        split_mask = start + splits < num_splits
        part_rows = row * num_splits + start + splits
        lse = tl.load(part_lse_ptr + part_rows, mask=split_mask, other=float("-inf"))
        m_new = tl.maximum(m_i, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # every split so far empty: weigh them 0, not NaN
        weights, alpha = tl.exp(lse - m_safe), tl.exp(m_i - m_safe)
        parts = tl.load(part_out_ptr + part_rows[:, None] * HEAD_DIM + dims[None, :],
                        mask=split_mask[:, None] & dim_mask[None, :], other=0.0)
        acc = acc * alpha + tl.sum(parts * weights[:, None], 0)
        l_i = l_i * alpha + tl.sum(weights, 0)
        m_i = m_new
    tl.store(out_ptr + seq * stride_out_b + head * stride_out_h + dims, (acc / l_i).to(out_ptr.dtype.element_ty),
             mask=dim_mask)


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, blocks_per_split: int | None = None) -> torch.Tensor:
    """One query token per sequence. q: [B, H, D]; kv_cache: [2, KV, N, bs, D]; block_tables: [B, max_blocks];
    context_lens: [B] (the query's own key included). Returns [B, H, D]."""
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, _, block_size, _ = kv_cache.shape
    if q.stride(-1) != 1 or kv_cache.stride(-1) != 1 or kv_cache.stride(-2) != head_dim:
        raise ValueError("decode_attention needs q's and the cache's head dims contiguous")
    group = num_heads // num_kv_heads
    max_blocks = block_tables.shape[1]
    if blocks_per_split is None:
        wanted = max(1, TARGET_PROGRAMS // max(1, num_seqs * num_kv_heads))
        blocks_per_split = max(MIN_BLOCKS_PER_SPLIT, -(-max_blocks // wanted))
    num_splits = max(1, -(-max_blocks // blocks_per_split))
    part_out = torch.empty(num_seqs * num_heads * num_splits, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_seqs * num_heads * num_splits, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, kv_cache, block_tables, context_lens, part_out, part_lse, head_dim ** -0.5,
        q.stride(0), q.stride(1), kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), block_tables.stride(0),
        num_splits, blocks_per_split, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype))
    out = torch.empty_like(q)
    _decode_reduce_kernel[(num_seqs, num_heads)](
        part_out, part_lse, out, out.stride(0), out.stride(1), num_splits,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=REDUCE_SPLITS)
    return out
