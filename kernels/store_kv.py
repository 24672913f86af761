"""KV store: each new token's keys and values into its paged-cache slot, through slot_mapping. A slot of
-1 stores nothing (the padded rows of a CUDA-graph batch)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(kv_ptr, cache_ptr, slot_ptr, stride_kv_t, stride_kv_c, stride_kv_h, stride_cache_c,
                     stride_cache_h, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    rows, dims = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_D)  # a row per (keys or values, KV head)
    # int64: keys-or-values times a layer's half of a large pool can pass 2^31 elements (offsets add up
    # before they reach the pointer here, unlike the attention kernels' step-by-step pointer sums)
    kind, head = (rows // NUM_KV_HEADS).to(tl.int64), (rows % NUM_KV_HEADS).to(tl.int64)
    num_rows = tl.where(slot >= 0, 2 * NUM_KV_HEADS, 0)
    mask = (rows < num_rows)[:, None] & (dims < HEAD_DIM)[None, :]
    src = kv_ptr + token * stride_kv_t + (kind * stride_kv_c + head * stride_kv_h)[:, None] + dims[None, :]
    dst = cache_ptr + (kind * stride_cache_c + head * stride_cache_h)[:, None] + slot * HEAD_DIM + dims[None, :]
    tl.store(dst, tl.load(src, mask=mask), mask=mask)


def store_kv(kv: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """kv: [T, 2, KV, D] (keys then values) -> cache [2, KV, N, bs, D] at flat slots slot_mapping [T] (-1: none)."""
    num_tokens, _, num_kv_heads, head_dim = kv.shape
    if kv.stride(-1) != 1 or kv_cache.stride(2) != kv_cache.shape[3] * head_dim or kv_cache.stride(-1) != 1:
        raise ValueError("store_kv needs each head's dims contiguous and the cache's blocks packed [N, bs, D]")
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        kv, kv_cache, slot_mapping, kv.stride(0), kv.stride(1), kv.stride(2), kv_cache.stride(0), kv_cache.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_R=triton.next_power_of_2(2 * num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim))
