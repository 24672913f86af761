"""Plain-torch references of every kernel, each with the signature of its Triton twin in this package.

Attention references loop over sequences and compute in fp32: slow, plainly right. The engine's own
torch path (engine.attention) is the fast CPU one; these are what the kernels are tested against.
"""
import torch
import torch.nn.functional as F


def store_kv(kv: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """kv: [T, 2, KV, D] (keys then values) -> cache [2, KV, N, bs, D] at flat slots slot_mapping [T] (-1: none)."""
    stored = slot_mapping >= 0
    kv_cache.flatten(2, 3).index_copy_(2, slot_mapping[stored], kv[stored].permute(1, 2, 0, 3))


def _pages(kv_cache: torch.Tensor, table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [KV, length, D] of the first `length` tokens held by the blocks in `table`."""
    block_size = kv_cache.shape[3]
    kv = kv_cache[:, :, table[: -(-length // block_size)]].flatten(2, 3)[:, :, :length]
    return kv[0], kv[1]


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, num_splits: int | None = None,
                     min_blocks_per_split: int = 4) -> torch.Tensor:
    """One query token per sequence. q: [B, H, D]; block_tables: [B, max_blocks]; context_lens: [B]
    (the query's own key included). Returns [B, H, D]. num_splits and min_blocks_per_split only shape the
    kernel's work."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        keys, values = _pages(kv_cache, block_tables[b], int(context_lens[b]))
        o = F.scaled_dot_product_attention(q[b, :, None].float(), keys.float(), values.float(), enable_gqa=True)
        out[b] = o[:, 0].to(q.dtype)
    return out


def extend_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, max_query_len: int) -> torch.Tensor:
    """Causal attention of each sequence's new tokens (already stored in the cache) over its whole context.

    q: [T, H, D], the new tokens of sequence b at flat rows cu_seqlens_q[b]:cu_seqlens_q[b + 1], the last
    of its context_lens[b] positions. Returns [T, H, D].
    """
    out = torch.empty_like(q)
    for b in range(len(context_lens)):
        start, end, ctx = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(context_lens[b])
        keys, values = _pages(kv_cache, block_tables[b], ctx)
        mask = torch.ones(end - start, ctx, dtype=torch.bool, device=q.device).tril(ctx - (end - start))
        o = F.scaled_dot_product_attention(q[start:end].transpose(0, 1).float(), keys.float(), values.float(),
                                           attn_mask=mask, enable_gqa=True)
        out[start:end] = o.transpose(0, 1).to(q.dtype)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, weight.shape, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual)."""
    summed = x + residual
    return F.rms_norm(summed, weight.shape, weight, eps), summed


def rotary_(x: torch.Tensor, freqs: torch.Tensor) -> None:
    """Rotate x in place. x: [T, heads, D], each head's dims interleaved in pairs (the engine's layout);
    freqs: [T, 1, D/2] complex64, e^(i * position * inv_freq)."""
    if x.dtype in (torch.float32, torch.float64):
        torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(freqs)
    else:  # no complex type for half precisions
        x.copy_(torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * freqs).flatten(-2))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> silu(gate) * up, [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def sample(logits: torch.Tensor, vocab_size: int, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, uniform: torch.Tensor, masked_ids: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [B, >= vocab_size] (columns from vocab_size on are padding, never taken).

    masked_ids [B, M]: ids set to -inf first (budget masks), -1 for none. A row with temperature 0 takes
    its first argmax. Any other row multiplies by 1/temperature, keeps the tokens whose logit is at least
    its top_k-th largest (0: all), then those whose strictly larger kept logits hold less than top_p of
    the kept mass (ties are kept or dropped together, as in transformers' top-k), and takes the first
    token, in vocabulary order, whose cumulative kept probability exceeds uniform[row] (in [0, 1))
    times the kept mass: one number per row from the request's own random stream decides the draw (the
    argmax should rounding leave no token past it). Returns [B] int64.
    """
    rows, slots = (masked_ids >= 0).nonzero(as_tuple=True)
    x = logits[:, :vocab_size].float().index_put((rows, masked_ids[rows, slots]), torch.tensor(float("-inf")))
    tokens = x.argmax(dim=-1)
    drawn = (temperature > 0).nonzero().flatten()
    if len(drawn) == 0:
        return tokens
    raw, x = x[drawn], x[drawn] * (1.0 / temperature[drawn, None].float())
    top_k, top_p = top_k[drawn], top_p[drawn]
    kept = _top_k_top_p(raw, x, top_k, top_p) if ((top_k > 0) | (top_p < 1)).any() else x
    cdf = (kept - x.max(dim=-1, keepdim=True).values).exp().double().cumsum(dim=-1)
    target = uniform[drawn].double() * cdf[:, -1]
    picked = torch.searchsorted(cdf, target[:, None], right=True).flatten()
    tokens[drawn] = torch.where(picked < vocab_size, picked, tokens[drawn])
    return tokens


def _top_k_top_p(raw: torch.Tensor, x: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The scaled logits x with -inf where the logits before scaling (raw: the same order, its ties) fall
    below each row's top_k-th (top_k 0: none), then wherever the kept tokens strictly more likely than a
    token hold top_p or more of the kept mass."""
    sorted_raw, order = raw.sort(dim=-1, descending=True)
    sorted_x = x.gather(-1, order)
    k = torch.where(top_k > 0, top_k, x.shape[-1]).clamp(max=x.shape[-1])
    sorted_x = sorted_x.masked_fill(sorted_raw < sorted_raw.gather(-1, (k - 1)[:, None]), float("-inf"))
    probs = sorted_x.double().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # a tie's mass above it is the one before the first of its equals
    ranks = torch.arange(x.shape[-1], device=x.device).expand_as(sorted_x)
    first_equal = torch.where(sorted_raw != sorted_raw.roll(1, dims=-1), ranks, 0)
    first_equal[:, 0] = 0
    mass_above = mass_before.gather(-1, first_equal.cummax(dim=-1).values)
    sorted_x = sorted_x.masked_fill(mass_above >= top_p[:, None].double(), float("-inf"))
    return torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x)
