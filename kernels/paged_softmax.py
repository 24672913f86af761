"""The step both attention kernels take per tile of the paged cache: load the tile's keys, score the
queries against them, fold the scores into a running (flash-attention) softmax, and accumulate the
tile's values. A tile is a whole page, or a part of a large page (page_tile)."""
import functools

import torch
import triton
import triton.language as tl


TILE_BYTES = 32 << 10  # a tile's keys, at most: fp32 pages of 128 tokens x 128 dims (64 KB of keys) compiled
# for sm_90 spilled ~7,000 local loads and stores and took 147 KB of shared memory (past sm_86/89/120's 99 KB);
# in 64-token tiles they spill none
TILE_BYTES_BEFORE_SM80 = 8 << 10  # sm_75 (T4), fp16 x 128 dims: 128-token pages spilled 945 (decode) and 2,466
# (extend) local loads and stores and took 72 KB of shared memory (past its 64 KB), 64-token pages 220 and 284;
# 32-token tiles none and 11


def page_tile(block_size: int, head_dim: int, element_size: int, capability: tuple[int, int] = (9, 0)) -> int:
    """Tokens of a page the attention kernels score at once: the page, or its largest power-of-two part
    (16 tokens at least, tl.dot's smallest) whose keys fit in the tile budget of a GPU of this compute
    capability (the CPU's interpreter takes the default)."""
    budget = TILE_BYTES if capability >= (8, 0) else TILE_BYTES_BEFORE_SM80
    tile = block_size
    while tile > 16 and tile * head_dim * element_size > budget:
        tile //= 2
    return tile


@functools.cache  # asked at every launch
def capability(device: torch.device) -> tuple[int, int]:
    """A CUDA device's compute capability; (9, 0) for the CPU (the interpreter), page_tile's default."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact fp32 products for fp32 (on a GPU the default is TF32, which torch's
    fp32 attention does not use); half-precision inputs take the tensor cores' own path either way."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def attend_tile(q, head_base, block, tokens, dims, dim_mask, visible, m_i, l_i, acc, scale, stride_cache_c,
                stride_cache_n, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """q: [R, BLOCK_D] query rows; tokens: [TILE] the tile's token offsets in page `block`; visible: [R, TILE]
    which of them each row may see (every row one at least, in the first tile a row reads).
    Returns the updated running max m_i [R], denominator l_i [R] and unnormalised output acc [R, BLOCK_D]."""
    offsets = block * stride_cache_n + tokens[:, None] * HEAD_DIM + dims[None, :]
    k = tl.load(head_base + offsets, mask=dim_mask[None, :], other=0.0)
    scores = tl.where(visible, tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    p = tl.exp(scores - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    v = tl.load(head_base + stride_cache_c + offsets, mask=dim_mask[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc
