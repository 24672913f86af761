"""SamplingParams(prompt_logprobs=k): every prompt token's log-probability given the tokens before it, and
the k most likely tokens there, equal transformers' log_softmax; whole or chunked prefill, a cached prefix,
`n` forks, preemption and batches mixing requests with and without them all give the same entries."""
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM, SamplingParams, ThinkingBudget


def hf_logprobs(path, ids: list[int]) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def check_entries(entries, ids: list[int], want: torch.Tensor, k: int) -> None:
    assert len(entries) == len(ids) and entries[0] is None
    for pos in range(1, len(ids)):
        entry, row = entries[pos], want[pos - 1]
        assert next(iter(entry)) == ids[pos]  # the prompt's own token first
        assert entry[ids[pos]] == pytest.approx(row[ids[pos]].item(), abs=1e-4)
        top = row.topk(k)
        assert set(entry) == {ids[pos]} | set(top.indices.tolist())
        for token, value in zip(top.indices.tolist(), top.values.tolist()):
            assert entry[token] == pytest.approx(value, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prompt_logprobs_equal_transformers_whole_chunked_and_cached(make_model, arch):
    path = make_model(arch, seed=21)
    ids = random_ids(45, seed=1)
    want = hf_logprobs(path, ids)
    params = SamplingParams(max_tokens=3, prompt_logprobs=2)
    for llm in (LLM(model=path, block_size=8), LLM(model=path, block_size=8, max_num_batched_tokens=16)):
        first, again = llm.generate([ids, ids], params, use_tqdm=False)  # the second may share the first's blocks
        (third,) = llm.generate([ids], params, use_tqdm=False)  # every full block of it is in the prefix cache now
        for out in (first, again, third):
            check_entries(out.prompt_logprobs, ids, want, k=2)
        assert third.token_ids == first.token_ids
        llm.core.block_manager.check_all_free()
    assert llm.stats()["num_cached_prompt_tokens"] == 0  # prompt positions owed logprobs are never taken from it


def test_prompt_logprobs_beside_plain_requests_forks_and_preemption(make_model):
    path = make_model("llama", seed=4)
    prompts = [random_ids(n, seed=n) for n in (30, 41, 25, 37, 12, 44)]
    plain = SamplingParams(max_tokens=40, ignore_eos=True)
    scored = SamplingParams(max_tokens=40, ignore_eos=True, prompt_logprobs=0, n=2, temperature=1.0, seed=3)
    params = [scored if i % 2 else plain for i in range(len(prompts))]
    large = LLM(model=path, block_size=4, num_blocks=512).generate(prompts, params, use_tqdm=False)
    small_llm = LLM(model=path, block_size=4, num_blocks=40)  # 160 slots; the batch needs ~700: preemptions
    small = small_llm.generate(prompts, params, use_tqdm=False)
    assert small_llm.core.scheduler.num_preemptions > 0
    assert [o.token_ids for o in small] == [o.token_ids for o in large]
    outputs = iter(small)
    for prompt, p in zip(prompts, params):
        for _ in range(p.n):
            out = next(outputs)
            if p is plain:
                assert out.prompt_logprobs is None
            else:
                want = hf_logprobs(path, prompt)
                check_entries(out.prompt_logprobs, prompt, want, k=0)
    small_llm.core.block_manager.check_all_free()


def test_prompt_logprobs_with_a_zero_thinking_cap_and_a_one_token_prompt(make_model):
    path = make_model("qwen2", seed=6)
    llm = LLM(model=path)
    ids = random_ids(20, seed=2)
    budget = ThinkingBudget(max_tokens=0)  # the delimiter is spliced at submission: output, not prompt
    out = llm.generate([ids], SamplingParams(max_tokens=8, budget=budget, prompt_logprobs=1, logprobs=0),
                       use_tqdm=False)[0]
    check_entries(out.prompt_logprobs, ids, hf_logprobs(path, ids), k=1)
    assert out.num_thinking_tokens == 0 and len(out.logprobs) == len(out.token_ids)
    (single,) = llm.generate([[ids[0]]], SamplingParams(max_tokens=2, prompt_logprobs=3), use_tqdm=False)
    assert single.prompt_logprobs == [None]
    llm.core.block_manager.check_all_free()


def test_prompt_logprobs_must_be_a_non_negative_integer():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="prompt_logprobs must be None or a non-negative integer"):
            SamplingParams(prompt_logprobs=bad)


def test_a_request_done_at_submission_still_gets_its_prompt_logprobs_and_nothing_more(make_model):
    path = make_model("qwen2", seed=6, max_position_embeddings=64)
    llm = LLM(model=path, block_size=8)
    ids = random_ids(40, seed=3)
    for budget, max_tokens in [(ThinkingBudget(max_tokens=0, max_answer_tokens=0), 20),  # the answer cap at once
                               (ThinkingBudget(max_tokens=0, final_answer_str="Final Answer:"), 2)]:  # the length
        plain = SamplingParams(max_tokens=max_tokens, budget=budget, n=2, seed=1, temperature=1.0)
        without, = llm.generate([ids], plain, use_tqdm=False)[:1]
        outs = llm.generate([ids], replace(plain, prompt_logprobs=1), use_tqdm=False)
        assert [o.token_ids for o in outs] == [without.token_ids] * 2 and outs[0].finish_reason == "length"
        for out in outs:
            check_entries(out.prompt_logprobs, ids, hf_logprobs(path, ids), k=1)
    long = random_ids(63, seed=4)  # the splice runs past the context: trimmed, never forwarded
    out = llm.generate([long], SamplingParams(max_tokens=50, budget=ThinkingBudget(max_tokens=0), prompt_logprobs=0),
                       use_tqdm=False)[0]
    assert out.finish_reason == "length" and len(long) + len(out.token_ids) == 64
    check_entries(out.prompt_logprobs, long, hf_logprobs(path, long), k=0)
    llm.core.block_manager.check_all_free()


def test_more_logprobs_than_the_vocabulary_is_an_error_for_that_request_alone(make_model):
    llm = LLM(model=make_model("llama", seed=4))
    outs = llm.generate([[5, 6, 7], [8, 9]], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=2, prompt_logprobs=10**6)],
                        use_tqdm=False)
    assert outs[0].finish_reason == "length" and "prompt_logprobs=1000000 is more than the vocabulary" in outs[1].error
    with pytest.raises(ValueError, match="logprobs=60000 is more than the vocabulary's 49152 tokens"):
        llm.add_request([5], SamplingParams(logprobs=60000))
    llm.core.block_manager.check_all_free()


def test_max_tokens_zero_scores_the_prompt_and_generates_nothing(make_model):
    path = make_model("llama", seed=21)
    llm = LLM(model=path, block_size=8)
    ids = random_ids(30, seed=5)
    outs = llm.generate([ids, ids[:1]], SamplingParams(max_tokens=0, prompt_logprobs=1, n=2), use_tqdm=False)
    assert [(o.token_ids, o.finish_reason) for o in outs] == [([], "length")] * 4
    for out in outs[:2]:
        check_entries(out.prompt_logprobs, ids, hf_logprobs(path, ids), k=1)
    assert outs[2].prompt_logprobs == [None]
    llm.core.block_manager.check_all_free()


def test_a_prompt_filling_the_context_can_be_scored(make_model):
    path = make_model("llama", seed=21, max_position_embeddings=64)
    llm = LLM(model=path, block_size=8)
    ids = random_ids(64, seed=6)
    out = llm.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=0), use_tqdm=False)[0]
    assert out.error is None and out.token_ids == []
    check_entries(out.prompt_logprobs, ids, hf_logprobs(path, ids), k=0)
    with pytest.raises(ValueError, match="at least one must be left to generate"):
        llm.add_request(ids, SamplingParams(max_tokens=1, prompt_logprobs=0))
    with pytest.raises(ValueError, match="prompt has 65 tokens; the context holds 64"):
        llm.add_request(ids + [5], SamplingParams(max_tokens=0, prompt_logprobs=0))
    llm.core.block_manager.check_all_free()
