"""Paged decode attention (flash-decoding): one query token per sequence, read against its block table.

Pass 1: a program per (sequence, KV head, context split) walks its split's pages in place (no gather)
and attends all G query heads of that KV head at once, as one [G, D] x [D, tile] dot per tile of a page: GQA
without copying K/V per query head. It writes an unnormalised partial output and its log-sum-exp.
Pass 2: a program per (sequence, query head) merges the splits.

Each sequence cuts its own context into at most `num_splits` splits of at least `min_blocks_per_split`
pages, inside the kernel: the split count is fixed at launch (a CUDA graph fixes it at capture, for the
table's full width), yet a short sequence in a batch of long ones, or every sequence of a graph captured
for the longest context, still spreads its pages over the programs, and pass 2 merges only the splits
that hold pages.
"""
import torch
import triton
import triton.language as tl

from kernels.paged_softmax import attend_tile, capability, dot_precision, page_tile

TARGET_PROGRAMS = 1024  # (sequence, head, split) programs: several per SM, loads enough in flight to hide latency
# the interpreter (CPU tensors) runs programs one after another, so filling a GPU only adds empty programs
# there (a CUDA graph's table as wide as the longest context: hundreds a layer); a few splits a sequence
# keep the split-and-merge path under test
INTERPRETER_SPLITS = 4
MIN_BLOCKS_PER_SPLIT = 4
REDUCE_SPLITS = 16  # splits pass 2 merges at a time
# software-pipelining depth of the page loop: at 3 (Triton's default) Triton 3.6 for sm_90 keeps one page
# in flight and waits for it every iteration; at 5 it double-buffers the page's K and V in shared memory,
# which large tiles cannot afford (fp32 tiles of 64 tokens would need 139 KB): those keep 3
NUM_STAGES = 5
PIPELINED_TILE_BYTES = 32 << 10  # K + V of a tile, at most, for NUM_STAGES (bf16: 64 tokens of 128 dims)


def num_stages(tile: int, head_dim: int, element_size: int) -> int:
    """The page loop's pipelining depth for tiles of this size."""
    return NUM_STAGES if 2 * tile * head_dim * element_size <= PIPELINED_TILE_BYTES else 3


@triton.jit
def _split_pages(context_len, split, num_splits, min_blocks_per_split, BLOCK_SIZE: tl.constexpr):
    """The pages [first, last) of a sequence's split, and how many of its splits hold pages."""
    num_blocks = (context_len + BLOCK_SIZE - 1) // BLOCK_SIZE
    per_split = tl.maximum(min_blocks_per_split, (num_blocks + num_splits - 1) // num_splits)
    first = split * per_split
    return first, tl.minimum(first + per_split, num_blocks), (num_blocks + per_split - 1) // per_split


# Integers that change with the batch are not specialized on (value 1, multiples of 16): the eager path
# would otherwise compile new variants as contexts grow.
@triton.jit(do_not_specialize=["stride_table_b", "num_splits", "min_blocks_per_split"])
def _decode_split_kernel(q_ptr, cache_ptr, tables_ptr, context_lens_ptr, part_out_ptr, part_lse_ptr, scale,
                         stride_q_b, stride_q_h, stride_cache_c, stride_cache_h, stride_cache_n, stride_table_b,
                         num_splits, min_blocks_per_split, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    TILES: tl.constexpr = BLOCK_SIZE // TILE
    num_heads = tl.num_programs(1) * GROUP
    context_len = tl.load(context_lens_ptr + seq)
    groups, dims, tokens = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_D), tl.arange(0, TILE)
    heads = kv_head * GROUP + groups
    head_mask, dim_mask = groups < GROUP, dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_q_b + heads[:, None] * stride_q_h + dims[None, :],
                mask=head_mask[:, None] & dim_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    first, last, _ = _split_pages(context_len, split, num_splits, min_blocks_per_split, BLOCK_SIZE)
    head_base = cache_ptr + kv_head.to(tl.int64) * stride_cache_h  # past 2**31 in a pool of > 2**31 keys a layer
    # the split's pages, a tile at a time, up to the last tile that holds a key
    for t in range(first * TILES, tl.minimum(last * TILES, (context_len + TILE - 1) // TILE)):
        block = tl.load(tables_ptr + seq * stride_table_b + t // TILES).to(tl.int64)
        visible = (t * TILE + tokens)[None, :] < context_len
        m_i, l_i, acc = attend_tile(q, head_base, block, t % TILES * TILE + tokens, dims, dim_mask, visible, m_i,
                                    l_i, acc, scale, stride_cache_c, stride_cache_n, HEAD_DIM, DOT_PRECISION)
    safe_l = tl.where(l_i > 0, l_i, 1.0)  # 0 only in splits without pages, which are not stored
    out = acc / safe_l[:, None]
    lse = m_i + tl.log(safe_l)
    row = (seq * num_heads + heads) * num_splits + split
    # splits without pages write nothing: pass 2 reads only the others (the test broadcast to a vector, as
    # the interpreter wants masks)
    written = head_mask & (groups * 0 + first < last)
    tl.store(part_out_ptr + row[:, None] * HEAD_DIM + dims[None, :], out, mask=written[:, None] & dim_mask[None, :])
    tl.store(part_lse_ptr + row, lse, mask=written)


@triton.jit(do_not_specialize=["num_splits", "min_blocks_per_split"])
def _decode_reduce_kernel(part_out_ptr, part_lse_ptr, context_lens_ptr, out_ptr, stride_out_b, stride_out_h,
                          num_splits, min_blocks_per_split, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """Merges the sequence's splits that hold pages, BLOCK_S at a time with a running max, so one compiled
    variant serves any count."""
    seq, head = tl.program_id(0), tl.program_id(1)
    row = seq * tl.num_programs(1) + head
    _, _, used = _split_pages(tl.load(context_lens_ptr + seq), 0, num_splits, min_blocks_per_split, BLOCK_SIZE)
    splits, dims = tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, used, BLOCK_S):
        split_mask = start + splits < used
        part_rows = row * num_splits + start + splits
        lse = tl.load(part_lse_ptr + part_rows, mask=split_mask, other=float("-inf"))
        m_new = tl.maximum(m_i, tl.max(lse, 0))  # finite: every chunk holds a split with pages
        weights, alpha = tl.exp(lse - m_new), tl.exp(m_i - m_new)
        parts = tl.load(part_out_ptr + part_rows[:, None] * HEAD_DIM + dims[None, :],
                        mask=split_mask[:, None] & dim_mask[None, :], other=0.0)
        acc = acc * alpha + tl.sum(parts * weights[:, None], 0)
        l_i = l_i * alpha + tl.sum(weights, 0)
        m_i = m_new
    tl.store(out_ptr + seq * stride_out_b + head * stride_out_h + dims, (acc / l_i).to(out_ptr.dtype.element_ty),
             mask=dim_mask)


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, num_splits: int | None = None,
                     min_blocks_per_split: int = MIN_BLOCKS_PER_SPLIT) -> torch.Tensor:
    """One query token per sequence. q: [B, H, D]; kv_cache: [2, KV, N, bs, D]; block_tables: [B, max_blocks];
    context_lens: [B] (the query's own key included, at least 1). Returns [B, H, D]. Each sequence's context
    is cut into at most num_splits splits (default: enough programs to fill the GPU; INTERPRETER_SPLITS on
    the CPU) of at least min_blocks_per_split pages."""
    num_seqs, num_heads, head_dim = q.shape
    _, num_kv_heads, _, block_size, _ = kv_cache.shape
    if q.stride(-1) != 1 or kv_cache.stride(-1) != 1 or kv_cache.stride(-2) != head_dim:
        raise ValueError("decode_attention needs q's and the cache's head dims contiguous")
    group = num_heads // num_kv_heads
    if num_splits is None:
        wanted = max(1, TARGET_PROGRAMS // max(1, num_seqs * num_kv_heads)) if q.is_cuda else INTERPRETER_SPLITS
        num_splits = min(wanted, -(-block_tables.shape[1] // min_blocks_per_split))
    num_splits = max(1, num_splits)
    part_out = torch.empty(num_seqs * num_heads * num_splits, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_seqs * num_heads * num_splits, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    tile = page_tile(block_size, head_dim, kv_cache.element_size(), capability(q.device))
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, kv_cache, block_tables, context_lens, part_out, part_lse, head_dim ** -0.5,
        q.stride(0), q.stride(1), kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), block_tables.stride(0),
        num_splits, min_blocks_per_split, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size, TILE=tile, HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype),
        num_stages=num_stages(tile, head_dim, kv_cache.element_size()))
    out = torch.empty_like(q)
    _decode_reduce_kernel[(num_seqs, num_heads)](
        part_out, part_lse, context_lens, out, out.stride(0), out.stride(1), num_splits, min_blocks_per_split,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=REDUCE_SPLITS)
    return out
