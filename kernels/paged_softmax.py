"""The step both attention kernels take per page of the paged cache: load the page's keys, score the
queries against them, fold the scores into a running (flash-attention) softmax, and accumulate the
page's values."""
import torch
import triton
import triton.language as tl


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact fp32 products for fp32 (on a GPU the default is TF32, which torch's
    fp32 attention does not use); half-precision inputs take the tensor cores' own path either way."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def attend_page(q, head_base, block, tokens, dims, dim_mask, visible, m_i, l_i, acc, scale, stride_cache_c,
                stride_cache_n, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """q: [R, BLOCK_D] query rows; visible: [R, BLOCK_SIZE] which of the page's keys each row may see.
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
