"""Every Triton kernel against its plain-torch reference (kernels.reference), on the CPU under the Triton
interpreter: fresh random inputs, outputs pre-filled with NaN so an unwritten element shows."""
import zlib

import pytest
import torch

from kernels.interpret import enable_interpreter

enable_interpreter()  # before any kernel module is imported: @triton.jit reads it then

from kernels import (activation, decode_attention, extend_attention, paged_softmax, reference, rms_norm, rotary, sample,
                     store_kv)

DTYPES = (torch.float32, torch.float16)
# (atol, rtol) per dtype. fp16 attention rounds the softmax weights to fp16 for the P @ V dot, as on a GPU.
# fp32: over 72 extend cases on other seeds with values ~N(0, 1) the kernel and the reference part by up
# to 2.5e-6 (a weighted sum that cancels to a small output keeps the values' rounding), so atol is twice
# that: ~40 ulps of 1.
ATTENTION_TOL = {torch.float32: (5e-6, 1e-5), torch.float16: (1e-3, 1e-3)}
ELEMENTWISE_TOL = {torch.float32: (1e-6, 1e-6), torch.float16: (1e-3, 1e-3)}
# (query heads per KV head, KV heads)
GQA = ((1, 2), (4, 1), (8, 1))


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch):
    """Every buffer the kernels (and references) allocate starts as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


def generator(*key) -> torch.Generator:
    """Random inputs of their own per case, the same every run (hash() of a string is salted per process)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(*shape, dtype, gen) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def paged(context_lens: list[int], block_size: int, shared: tuple[int, int, int] | None, gen):
    """Block tables [B, max_blocks] (padded with 0) over a shuffled pool, and the pool size. shared =
    (a, b, n): sequence b's first n blocks are sequence a's (a prefix-cache hit)."""
    needed = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(needed) + 1  # one block no sequence uses
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(n)] for n in needed]
    if shared is not None:
        a, b, n = shared
        assert context_lens[a] >= n * block_size and context_lens[b] > n * block_size
        tables[b][:n] = tables[a][:n]
    width = max(needed)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables]), num_blocks


def assert_close(actual, expected, tol):
    assert not actual.isnan().any(), "the kernel left elements unwritten"
    torch.testing.assert_close(actual, expected, atol=tol[0], rtol=tol[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "fp16"))
@pytest.mark.parametrize("head_dim", (64, 128))
@pytest.mark.parametrize("block_size", (16, 32))
def test_store_kv(dtype, head_dim, block_size):
    gen = generator("store", dtype, head_dim, block_size)
    num_kv_heads, num_blocks, num_tokens = 2, 9, 23
    cache = randn(2, num_kv_heads, num_blocks, block_size, head_dim, dtype=dtype, gen=gen)
    expected = cache.clone()
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::5] = -1  # padded rows of a graph batch: nothing stored
    # a view into a fused qkv projection, as the model passes it
    qkv = randn(num_tokens, 4 + 2 * num_kv_heads, head_dim, dtype=dtype, gen=gen)
    kv = qkv[:, 4:].view(num_tokens, 2, num_kv_heads, head_dim)
    original = cache.clone()
    reference.store_kv(kv, expected, slots)
    store_kv.store_kv(kv, cache, slots)
    assert torch.equal(cache, expected)
    stored = slots >= 0
    assert torch.equal(cache.flatten(2, 3)[:, :, slots[stored]], kv[stored].permute(1, 2, 0, 3))
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool).index_fill_(0, slots[stored], False)
    assert torch.equal(cache.flatten(2, 3)[:, :, untouched], original.flatten(2, 3)[:, :, untouched])


DECODE_CASES = [(d, h, g, bs) for d in DTYPES for h in (64, 128) for g in GQA for bs in (16, 32)]


def case_id(case) -> str:
    dtype, head_dim, (group, kv_heads), block_size = case
    return f"{str(dtype)[6:]}-d{head_dim}-gqa{group}x{kv_heads}-bs{block_size}"


@pytest.mark.parametrize("dtype,head_dim,gqa,block_size", DECODE_CASES, ids=map(case_id, DECODE_CASES))
def test_decode_attention(dtype, head_dim, gqa, block_size, monkeypatch):
    gen = generator("decode", dtype, head_dim, gqa, block_size)
    group, num_kv_heads = gqa
    # long (many blocks, ends mid-block), mid-block sharing the long one's first 2 blocks, one token, a full block run
    context_lens = [12 * block_size + 9, 3 * block_size + 5, 1, 2 * block_size]
    tables, num_blocks = paged(context_lens, block_size, (0, 1, 2), gen)
    cache = randn(2, num_kv_heads, num_blocks, block_size, head_dim, dtype=dtype, gen=gen)
    q = randn(len(context_lens), group * num_kv_heads, head_dim, dtype=dtype, gen=gen)
    lens = torch.tensor(context_lens)
    expected = reference.decode_attention(q, cache, tables, lens)
    # the default; up to 5 splits of >= 1 page (the long one 5 of 3 pages, the last short); one split a sequence
    for num_splits, min_blocks in ((None, 4), (5, 1), (1, 4)):
        actual = decode_attention.decode_attention(q, cache, tables, lens, num_splits, min_blocks)
        assert_close(actual, expected, ATTENTION_TOL[dtype])  # splits without pages stay NaN: none is read
    # one page per split (each sequence its own count: 13, 4, 1, 2), merged 4 at a time, the last chunk partial
    monkeypatch.setattr(decode_attention, "REDUCE_SPLITS", 4)
    assert_close(decode_attention.decode_attention(q, cache, tables, lens, 16, 1), expected, ATTENTION_TOL[dtype])


EXTEND_CASES = DECODE_CASES


@pytest.mark.parametrize("dtype,head_dim,gqa,block_size", EXTEND_CASES, ids=map(case_id, EXTEND_CASES))
def test_extend_attention(dtype, head_dim, gqa, block_size):
    gen = generator("extend", dtype, head_dim, gqa, block_size)
    group, num_kv_heads = gqa
    # (cached prefix, new tokens): a fresh prefill ending mid-block; a prefix-cache hit on its first 2
    # blocks; a splice after a prefix ending mid-block; one token; a chunked prefill of several tiles
    chunks = [(0, 2 * block_size + 3), (2 * block_size, 7), (4 * block_size + 11, 4), (3 * block_size, 1),
              (block_size, 37)]
    context_lens = [p + n for p, n in chunks]
    tables, num_blocks = paged(context_lens, block_size, (0, 1, 2), gen)
    cache = randn(2, num_kv_heads, num_blocks, block_size, head_dim, dtype=dtype, gen=gen)
    cu_seqlens_q = torch.tensor([0] + [n for _, n in chunks]).cumsum(0)
    q = randn(int(cu_seqlens_q[-1]), group * num_kv_heads, head_dim, dtype=dtype, gen=gen)
    args = (q, cache, tables, cu_seqlens_q, torch.tensor(context_lens), max(n for _, n in chunks))
    assert_close(extend_attention.extend_attention(*args), reference.extend_attention(*args), ATTENTION_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "fp16"))
def test_attention_over_pages_larger_than_a_tile(dtype, monkeypatch):
    """Pages of 64 tokens read 16 at a time (large pages on a GPU: page_tile): contexts ending in a page's
    first, third and last tile, a shared page, splits starting mid-sequence."""
    block_size, head_dim, group, num_kv_heads = 64, 64, 4, 2
    monkeypatch.setattr(paged_softmax, "TILE_BYTES", 16 * head_dim * dtype.itemsize)
    assert paged_softmax.page_tile(block_size, head_dim, dtype.itemsize) == 16
    gen = generator("tiles", dtype)
    context_lens = [5 * block_size + 9, block_size + 40, 1, 3 * block_size]
    tables, num_blocks = paged(context_lens, block_size, (0, 1, 1), gen)
    cache = randn(2, num_kv_heads, num_blocks, block_size, head_dim, dtype=dtype, gen=gen)
    q = randn(len(context_lens), group * num_kv_heads, head_dim, dtype=dtype, gen=gen)
    lens = torch.tensor(context_lens)
    expected = reference.decode_attention(q, cache, tables, lens)
    for num_splits, min_blocks in ((None, 4), (16, 1), (4, 1)):
        actual = decode_attention.decode_attention(q, cache, tables, lens, num_splits, min_blocks)
        assert_close(actual, expected, ATTENTION_TOL[dtype])
    # (cached prefix, new tokens): a prefill ending in a page's third tile, a splice after a prefix ending
    # mid-tile, one token at a page's start, a chunk across a page boundary
    chunks = [(0, block_size + 40), (block_size + 7, 5), (2 * block_size, 1), (block_size - 10, 30)]
    lens = torch.tensor([p + n for p, n in chunks])
    tables, num_blocks = paged(lens.tolist(), block_size, None, gen)
    cache = randn(2, num_kv_heads, num_blocks, block_size, head_dim, dtype=dtype, gen=gen)
    cu_seqlens_q = torch.tensor([0] + [n for _, n in chunks]).cumsum(0)
    q = randn(int(cu_seqlens_q[-1]), group * num_kv_heads, head_dim, dtype=dtype, gen=gen)
    args = (q, cache, tables, cu_seqlens_q, lens, max(n for _, n in chunks))
    assert_close(extend_attention.extend_attention(*args), reference.extend_attention(*args), ATTENTION_TOL[dtype])


def test_page_tiles_keep_a_tiles_keys_within_tile_bytes():
    assert paged_softmax.page_tile(128, 128, 4) == 64  # fp32: 64 KB of keys a page, 32 KB a tile
    assert paged_softmax.page_tile(128, 128, 2) == 128 and paged_softmax.page_tile(16, 128, 4) == 16
    assert paged_softmax.page_tile(128, 64, 4) == 128 and paged_softmax.page_tile(8, 256, 4) == 8
    assert paged_softmax.page_tile(128, 128, 2, (7, 5)) == 32 and paged_softmax.page_tile(16, 128, 4, (7, 5)) == 16
    assert paged_softmax.page_tile(128, 128, 2, (8, 0)) == 128


def test_extend_matches_decode_for_single_tokens():
    gen = generator("extend-decode")
    context_lens = [5 * 16 + 3, 1, 40]
    tables, num_blocks = paged(context_lens, 16, None, gen)
    cache = randn(2, 2, num_blocks, 16, 64, dtype=torch.float32, gen=gen)
    q = randn(3, 8, 64, dtype=torch.float32, gen=gen)
    lens = torch.tensor(context_lens)
    extended = extend_attention.extend_attention(q, cache, tables, torch.arange(4), lens, 1)
    assert_close(extended, decode_attention.decode_attention(q, cache, tables, lens), ATTENTION_TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "fp16"))
@pytest.mark.parametrize("hidden", (64, 96, 576))
def test_rms_norm(dtype, hidden):
    gen = generator("norm", dtype, hidden)
    x, residual = randn(7, hidden, dtype=dtype, gen=gen), randn(7, hidden, dtype=dtype, gen=gen)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    tol = ELEMENTWISE_TOL[dtype]
    assert_close(rms_norm.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6), tol)
    normed, summed = rms_norm.add_rms_norm(x, residual, weight, 1e-6)
    expected_normed, expected_summed = reference.add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed, expected_summed)
    assert_close(normed, expected_normed, tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "fp16"))
@pytest.mark.parametrize("head_dim", (64, 128))
def test_rotary_in_place_on_a_qkv_view(dtype, head_dim):
    gen = generator("rotary", dtype, head_dim)
    num_tokens, heads, kv_heads = 9, 4, 2
    qkv = randn(num_tokens, heads + 2 * kv_heads, head_dim, dtype=dtype, gen=gen)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen)
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(positions.double(), inv_freq)
    freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).unsqueeze(1)  # as engine.model builds it
    expected = qkv.clone()
    reference.rotary_(expected[:, : heads + kv_heads], freqs)
    rotary.rotary_(qkv[:, : heads + kv_heads], freqs)
    assert torch.equal(qkv[:, heads + kv_heads :], expected[:, heads + kv_heads :])  # values untouched
    torch.testing.assert_close(qkv, expected, atol=ELEMENTWISE_TOL[dtype][0] * 4, rtol=ELEMENTWISE_TOL[dtype][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=("fp32", "fp16"))
@pytest.mark.parametrize("intermediate", (96, 1536))
def test_silu_and_mul(dtype, intermediate):
    gen = generator("silu", dtype, intermediate)
    x = randn(5, 2 * intermediate, dtype=dtype, gen=gen) * 3
    assert_close(activation.silu_and_mul(x), reference.silu_and_mul(x), ELEMENTWISE_TOL[dtype])


# (temperature, top_k, top_p) per row: greedy rows, plain draws, top-k alone, top-p alone, both, top-k = 1,
# top-k beyond the vocabulary, and a top-p that keeps one token
SAMPLE_ROWS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (1.0, 40, 0.6), (2.0, 1, 1.0),
               (0.5, 5000, 1.0), (1.0, 0, 1e-6), (0.0, 3, 0.5), (3.0, 0, 0.95)]


@pytest.mark.parametrize("vocab,padded", ((300, 320), (9000, 9000)), ids=("padded", "three-tiles"))
def test_sample(vocab, padded):
    gen = generator("sample", vocab)
    rows = SAMPLE_ROWS * 2
    logits = torch.randn(len(rows), padded, generator=gen) * torch.rand(len(rows), 1, generator=gen) * 6
    logits[:, vocab:] = 1e4  # padding that would win every draw were it not cut off
    logits[1::4] = (logits[1::4] * 2).round() / 2  # rows full of ties
    logits[3::4] = logits[3::4].bfloat16().float()  # rows as a bf16 product gives them: 16-bit keys suffice
    dense = [2, 4, 12, 14]  # top-k / top-p rows whose logits agree in their top 16 bits: all 32 key bits count
    logits[dense, :vocab] = 3 + 1e-3 * torch.randn(len(dense), vocab, generator=gen)
    temperature, top_k, top_p = (torch.tensor(c) for c in zip(*rows))
    uniform = torch.rand(len(rows), generator=gen, dtype=torch.float64)
    # budget masks: the row's argmax (so masking shows), another id, or none
    masked = torch.full((len(rows), 2), -1)
    masked[::2, 0] = logits[::2, :vocab].argmax(-1)
    masked[::3, 1] = torch.randint(0, vocab, (len(masked[::3]),), generator=gen)
    args = (logits, vocab, temperature, top_k, top_p, uniform, masked)
    expected, actual = reference.sample(*args), sample.sample(*args)
    assert not (masked == actual[:, None]).any() and (actual < vocab).all()
    greedy = temperature == 0
    assert torch.equal(actual[greedy], expected[greedy])
    for row in (~greedy).nonzero().flatten().tolist():
        if actual[row] != expected[row]:  # allowed only where the target sits on a cdf step, within rounding
            assert _target_on_a_step(logits[row:row + 1], vocab, rows[row], uniform[row], masked[row], actual[row]), row


def _target_on_a_step(logits, vocab, row_params, uniform, masked, token) -> bool:
    temperature, top_k, top_p = row_params
    x = logits[0, :vocab].clone()
    x[masked[masked >= 0]] = float("-inf")
    probs = (x / temperature).double().softmax(-1)
    cdf = probs.cumsum(-1) / probs.sum()
    return min(abs(cdf[int(token)] - uniform), abs(cdf[int(token) - 1] - uniform)) < 1e-6


def test_sample_reference_draws_follow_the_filtered_distribution():
    """Many draws of one row with fresh uniforms land on each kept token about as often as its probability
    (the kernel is held to the reference row by row above)."""
    gen = generator("sample-freq")
    vocab, draws = 50, 4000
    logits = (torch.randn(1, vocab, generator=gen) * 2).expand(draws, vocab).contiguous()
    ones = torch.ones(draws)
    tokens = reference.sample(logits, vocab, ones * 0.8, torch.full((draws,), 10), ones * 0.8,
                           torch.rand(draws, generator=gen, dtype=torch.float64), torch.full((draws, 1), -1))
    probs = (logits[0] / 0.8).softmax(-1)
    top = probs.topk(10)
    top_probs = top.values / top.values.sum()  # top-p applies to the top-k tokens' renormalised mass
    keep = top.indices[(top_probs.cumsum(0) - top_probs) < 0.8]
    expected = torch.zeros(vocab).index_put_((keep,), probs[keep] / probs[keep].sum())
    observed = torch.bincount(tokens, minlength=vocab).double() / draws
    assert set(tokens.tolist()) <= set(keep.tolist())
    assert (observed - expected).abs().max() < 0.03
