"""KV pool sizing: the arithmetic that fits the pool in a GPU after the warm-up step, and the warm-up
step itself (it runs on any device; the pool it used is replaced and nothing leaks into generation)."""
from engine import LLM, SamplingParams
from engine.runner import kv_pool_blocks, warm_up_blocks

GIB = 1 << 30


def test_pool_fits_what_the_utilization_leaves():
    # 80 GiB GPU, another process holds 2 GiB, this one reserved 8 and peaked at 6 (weights + warm-up)
    total, free, reserved, peak = 80 * GIB, 70 * GIB, 8 * GIB, 6 * GIB
    assert kv_pool_blocks(total, free, reserved, peak, 0.9, GIB // 4) == int((72 - 2 - 6) * 4)
    assert kv_pool_blocks(total, free, reserved, peak, 0.1, GIB // 4) == 0  # nothing left: the caller raises


def test_warm_up_then_a_fresh_pool_generates_as_before(make_model):
    path = make_model("qwen3", seed=4)
    prompts, params = [[5, 6, 7], list(range(40, 90))], SamplingParams(max_tokens=12, temperature=0.7, seed=2)
    expected = [o.token_ids for o in LLM(model=path, num_blocks=64).generate(prompts, params, use_tqdm=False)]
    llm = LLM(model=path, num_blocks=64, max_num_batched_tokens=100, max_num_seqs=7)
    runner = llm.core.runner
    runner.allocate_kv_cache(warm_up_blocks(100, 7, runner.block_size))
    runner.warm_up(100, 7, llm.core.sampler.vocab_size)  # 7 sequences of 14-15 tokens, the last blocks part-filled
    assert runner.kv_cache.abs().sum() > 0
    runner.allocate_kv_cache(64)
    assert runner.kv_cache.abs().sum() == 0
    assert [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == expected


def test_warm_up_keeps_each_sequence_within_the_model_positions(make_model):
    llm = LLM(model=make_model("llama", seed=5), num_blocks=8)  # the tiny models hold 1024 positions
    runner = llm.core.runner
    runner.allocate_kv_cache(warm_up_blocks(3000, 1, runner.block_size))
    runner.warm_up(3000, 1, llm.core.sampler.vocab_size)  # one holds only 1024 of the 3000 tokens: no out-of-range position


def test_warm_up_takes_the_steps_log_softmax_in_chunks_and_samples_the_engines_vocabulary(make_model, monkeypatch):
    """Its memory peak is a real step's (prompt scoring's chunks, not all rows at once: the pool would come
    out smaller than it need be), and the sampler sees the vocabulary a request's sampling passes."""
    import torch

    from engine import runner as runner_module

    llm = LLM(model=make_model("llama", seed=5), num_blocks=8)
    runner = llm.core.runner
    runner.allocate_kv_cache(warm_up_blocks(1000, 2, runner.block_size))
    rows, vocab_sizes, log_softmax, sample = [], [], torch.log_softmax, runner.ops.sample
    monkeypatch.setattr(runner_module, "PROMPT_LOGPROB_ROWS", 300)
    monkeypatch.setattr(torch, "log_softmax", lambda x, *a, **k: rows.append(len(x)) or log_softmax(x, *a, **k))
    monkeypatch.setattr(runner.ops, "sample", lambda logits, vocab_size, *a: vocab_sizes.append(vocab_size) or
                        sample(logits, vocab_size, *a))
    runner.warm_up(1000, 2, llm.core.sampler.vocab_size - 7)
    assert rows == [300, 300, 300, 100] and vocab_sizes == [llm.core.sampler.vocab_size - 7]
