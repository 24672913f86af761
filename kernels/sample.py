"""The sampler as one kernel: budget masks, vocabulary padding, temperature, top-k, top-p, greedy rows,
and one draw per row from a number its request's own random stream supplied.

A program per row walks the vocabulary in tiles, without sorting. Top-k and top-p become thresholds on
an order-preserving integer key of each logit, found bit by bit from the most significant (a radix
select: counting passes for the k-th largest key; mass passes for the smallest key whose larger keys
hold less than top_p of the mass), 32 of each, or 16 when no finite logit uses the keys' low 16 bits
(logits from a bf16 product). Masses accumulate in fp64. The draw is the first kept
token whose running probability passes uniform * kept mass (inverse-CDF in vocabulary order), as in
kernels.reference.sample.
"""
import torch
import triton
import triton.language as tl

BLOCK = 4096  # 16 elements a thread at 8 warps; the interpreter's cost is per tile


@triton.jit
def _scaled_tile(row_ptr, masked_ptr, start, vocab_size, inv_temperature, NUM_MASKED: tl.constexpr,
                 BLOCK: tl.constexpr):
    """A tile of logits times 1/temperature (budget-masked and padded entries -inf), its ids, validity, and
    the keys of the logits before scaling (the same order, ties included)."""
    offs = start + tl.arange(0, BLOCK)
    valid = offs < vocab_size
    x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
    for i in tl.static_range(NUM_MASKED):
        x = tl.where(offs == tl.load(masked_ptr + i), float("-inf"), x)
    bits = tl.where(x == 0.0, 0, x.to(tl.int32, bitcast=True))  # -0.0 is +0.0's tie, not below it
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64) + 2147483648  # float order, as 0..2^32-1
    return x * inv_temperature, offs, valid, key


@triton.jit
def _sample_kernel(logits_ptr, stride_row, vocab_size, temperature_ptr, top_k_ptr, top_p_ptr, uniform_ptr,
                   masked_ptr, out_ptr, NUM_MASKED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr, masked_ptr = logits_ptr + row * stride_row, masked_ptr + row * NUM_MASKED
    best, token = tl.full([], float("-inf"), tl.float32), tl.full([], 0, tl.int64)
    low_bits = tl.full([], 0, tl.int64)
    for start in range(0, vocab_size, BLOCK):  # greedy: the first argmax
        x, offs, valid, key = _scaled_tile(row_ptr, masked_ptr, start, vocab_size, 1.0, NUM_MASKED, BLOCK)
        tile_max = tl.max(x, 0)
        token = tl.where(tile_max > best, start + tl.argmax(x, 0), token)
        best = tl.maximum(best, tile_max)
        low_bits = tl.maximum(low_bits, tl.max(tl.where(x > float("-inf"), key & 0xFFFF, 0), 0))
    # logits from a bf16 product carry 16 significant bits: the selects below need only the keys' top 16
    key_bits = tl.where(low_bits > 0, 32, 16)
    temperature = tl.load(temperature_ptr + row)
    if temperature > 0:
        inv_t = 1.0 / temperature
        peak = best * inv_t
        top_k, top_p = tl.load(top_k_ptr + row), tl.load(top_p_ptr + row).to(tl.float64)
        one = tl.full([], 1, tl.int64)
        kth_key = tl.full([], 0, tl.int64)  # keep keys >= it
        if top_k > 0:
            for i in range(key_bits):
                candidate = kth_key | (one << (31 - i))
                count = tl.full([], 0, tl.int32)
                for start in range(0, vocab_size, BLOCK):
                    x, offs, valid, key = _scaled_tile(row_ptr, masked_ptr, start, vocab_size, inv_t, NUM_MASKED, BLOCK)
                    count += tl.sum((valid & (key >= candidate)).to(tl.int32), 0)
                kth_key = tl.where(count >= top_k, candidate, kth_key)
        total = tl.full([], 0.0, tl.float64)
        for start in range(0, vocab_size, BLOCK):
            x, offs, valid, key = _scaled_tile(row_ptr, masked_ptr, start, vocab_size, inv_t, NUM_MASKED, BLOCK)
            total += tl.sum(tl.where(key >= kth_key, tl.exp(x - peak), 0.0).to(tl.float64), 0)
        nucleus_key = tl.full([], -1, tl.int64)  # keep keys > it
        kept_mass = total  # without top-p the kept tokens are those the total summed, in the same order
        if top_p < 1.0:
            nucleus_key = tl.full([], 0, tl.int64)
            for i in range(key_bits):
                candidate = nucleus_key | (one << (31 - i))
                above = tl.full([], 0.0, tl.float64)
                for start in range(0, vocab_size, BLOCK):
                    x, offs, valid, key = _scaled_tile(row_ptr, masked_ptr, start, vocab_size, inv_t, NUM_MASKED, BLOCK)
                    keep = (key >= kth_key) & (key > candidate)
                    above += tl.sum(tl.where(keep, tl.exp(x - peak), 0.0).to(tl.float64), 0)
                nucleus_key = tl.where(above >= top_p * total, candidate, nucleus_key)
            kept_mass = tl.full([], 0.0, tl.float64)
            for start in range(0, vocab_size, BLOCK):
                x, offs, valid, key = _scaled_tile(row_ptr, masked_ptr, start, vocab_size, inv_t, NUM_MASKED, BLOCK)
                keep = (key >= kth_key) & (key > nucleus_key)
                kept_mass += tl.sum(tl.where(keep, tl.exp(x - peak), 0.0).to(tl.float64), 0)
        target = tl.load(uniform_ptr + row).to(tl.float64) * kept_mass
        running = tl.full([], 0.0, tl.float64)
        drawn = tl.full([], -1, tl.int64)
        for start in range(0, vocab_size, BLOCK):
            x, offs, valid, key = _scaled_tile(row_ptr, masked_ptr, start, vocab_size, inv_t, NUM_MASKED, BLOCK)
            keep = (key >= kth_key) & (key > nucleus_key)
            p = tl.where(keep, tl.exp(x - peak), 0.0).to(tl.float64)
            passed = (running + tl.cumsum(p, 0)) > target
            first = tl.min(tl.where(passed, offs, vocab_size), 0).to(tl.int64)
            drawn = tl.where((drawn < 0) & (first < vocab_size), first, drawn)
            running += tl.sum(p, 0)
        token = tl.where(drawn >= 0, drawn, token)  # rounding left nothing past the target: the argmax
    tl.store(out_ptr + row, token)


def sample(logits: torch.Tensor, vocab_size: int, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, uniform: torch.Tensor, masked_ids: torch.Tensor) -> torch.Tensor:
    """See kernels.reference.sample: logits [B, >= vocab_size]; temperature, top_p, uniform [B] float;
    top_k [B] int; masked_ids [B, M] int (-1 for none). Returns [B] int64."""
    num_rows = logits.shape[0]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows:
        _sample_kernel[(num_rows,)](
            logits, logits.stride(0), vocab_size, temperature.float().contiguous(), top_k.contiguous(),
            top_p.float().contiguous(), uniform.double().contiguous(), masked_ids.contiguous(), out,
            NUM_MASKED=masked_ids.shape[1], BLOCK=min(BLOCK, triton.next_power_of_2(vocab_size)), num_warps=8)
    return out
