"""Shared KV: prefix caching, `n` samples, budget sweeps by forking, logprobs, and the counters."""
import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM, SamplingParams, ThinkingBudget

def prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def computed(llm, fn):
    before = llm.stats()
    result = fn()
    after = llm.stats()
    assert after["num_used_blocks"] == 0
    return result, {k: after[k] - before[k] for k in after}


def test_a_repeated_prompt_computes_only_its_last_partial_block(s1_llm):
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    p = prompt(50, seed=1)
    first, _ = computed(s1_llm, lambda: s1_llm.generate(p, params, use_tqdm=False)[0])
    second, delta = computed(s1_llm, lambda: s1_llm.generate(p, params, use_tqdm=False)[0])
    assert second.token_ids == first.token_ids
    assert delta["num_cached_prompt_tokens"] == 48 and delta["num_computed_tokens"] == 2 + 9


def test_prompts_sharing_a_prefix_compute_it_once(make_model):
    llm = LLM(model=make_model("qwen2", seed=4), block_size=8)
    base = LLM(model=make_model("qwen2", seed=4), block_size=8, enable_prefix_caching=False)
    shared = prompt(40, seed=2)
    prompts = [shared + prompt(5 + i, seed=10 + i) for i in range(4)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    outs, delta = computed(llm, lambda: llm.generate(prompts, params, use_tqdm=False))
    assert [o.token_ids for o in outs] == [o.token_ids for o in base.generate(prompts, params, use_tqdm=False)]
    assert delta["num_cached_prompt_tokens"] == 3 * 40
    assert delta["num_computed_tokens"] == sum(len(p) for p in prompts) - 3 * 40 + 4 * 5


def test_a_prompt_waiting_for_a_block_being_computed_lets_the_prompts_behind_it_in(make_model):
    llm = LLM(model=make_model("qwen2", seed=4), block_size=8)
    contexts = [prompt(40, seed=20 + i) for i in range(3)]
    prompts = [c + prompt(3, seed=30 + 2 * i + j) for i, c in enumerate(contexts) for j in range(2)]  # a, a', b, b', ..
    steps, step = [], llm.core.step
    llm.core.step = lambda: steps.append(len(step()))
    outs, delta = computed(llm, lambda: llm.generate(prompts, SamplingParams(max_tokens=1), use_tqdm=False))
    assert steps[:2] == [3, 3]  # a, b, c first; then a', b', c' from the cache (was 1 + 2 + 2 + 1 over four steps)
    assert delta["num_cached_prompt_tokens"] == 3 * 40


def test_a_passed_over_prompt_holds_no_blocks_so_a_tight_pool_cannot_stall(make_model):
    path = make_model("llama", seed=4)
    x, y, z, b = prompt(16, seed=40), prompt(9, seed=41), prompt(6, seed=42), prompt(40, seed=43)
    prompts, params = [x + y, x + y[:8] + z, b], [SamplingParams(max_tokens=n, ignore_eos=True) for n in (20, 2, 2)]
    roomy = LLM(model=path, block_size=8).generate(prompts, params, use_tqdm=False)
    llm = LLM(model=path, block_size=8, num_blocks=6, max_num_batched_tokens=16)
    llm.generate([x + [7]], SamplingParams(max_tokens=1), use_tqdm=False)  # x is in the prefix cache
    steps, step = [], llm.core.step

    def bounded_step():
        steps.append(None)
        if len(steps) > 60:  # it held x's blocks while waiting, and the 40-token prompt never fit: a livelock
            raise RuntimeError("no progress in 60 steps")
        return step()

    llm.core.step = bounded_step
    tight = llm.generate(prompts, params, use_tqdm=False)  # the second waits for a block the first computes
    assert [o.token_ids for o in tight] == [o.token_ids for o in roomy]
    llm.core.block_manager.check_all_free()


def test_a_small_pool_evicts_and_preempts_and_gives_the_large_pools_outputs(make_model):
    path = make_model("llama", seed=5)
    prompts = [prompt(20, seed=i) + prompt(10, seed=100 + i % 2) for i in range(6)]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    big = LLM(model=path, block_size=4).generate(prompts, params, use_tqdm=False)
    small = LLM(model=path, block_size=4, num_blocks=40)
    outs, delta = computed(small, lambda: small.generate(prompts, params, use_tqdm=False))
    assert [o.token_ids for o in outs] == [o.token_ids for o in big]
    assert delta["num_preemptions"] > 0
    again, _ = computed(small, lambda: small.generate(prompts, params, use_tqdm=False))
    assert [o.token_ids for o in again] == [o.token_ids for o in big]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_n_samples_equal_requests_with_consecutive_seeds(s1_llm, temperature):
    budget = ThinkingBudget(max_tokens=12, num_ignore=1, final_answer_str="Final Answer:")
    params = SamplingParams(temperature=temperature, seed=7, max_tokens=30, budget=budget, n=4)
    prompts = [prompt(21, seed=3), prompt(9, seed=4)]
    outs, delta = computed(s1_llm, lambda: s1_llm.generate(prompts, params, use_tqdm=False))
    assert [o.sample_index for o in outs] == [0, 1, 2, 3] * 2  # prompt-major
    for i, out in enumerate(outs):
        alone = s1_llm.generate(prompts[i // 4], replace(params, n=1, seed=7 + i % 4), use_tqdm=False)[0]
        assert out.token_ids == alone.token_ids and out.text == alone.text
    # each prompt computed once: 21 + 9 prompt tokens, then every sample's own tokens
    own = sum(len(o.token_ids) for o in outs) - len(outs)  # the last token of each is never forwarded
    assert delta["num_computed_tokens"] <= 30 + own
    if temperature:
        assert len({tuple(o.token_ids) for o in outs[:4]}) > 1


def test_an_n_request_aborted_before_its_samples_fork_gives_n_aborted_outputs(s1_llm):
    for steps in (0, 1):  # queued, or its prompt half prefilled
        request = s1_llm.add_request(prompt(40, seed=5), SamplingParams(n=3, max_tokens=8))
        for _ in range(steps):
            s1_llm.step()
        s1_llm.abort(request)
        outs = s1_llm.outputs(request)
        assert [(o.sample_index, o.finish_reason) for o in outs] == [(0, "abort"), (1, "abort"), (2, "abort")]
        assert request.is_finished and not s1_llm.has_unfinished() and s1_llm.stats()["num_used_blocks"] == 0


def test_unseeded_samples_differ(s1_llm):
    outs = s1_llm.generate(prompt(9), SamplingParams(temperature=1.0, max_tokens=12, n=3, ignore_eos=True),
                           use_tqdm=False)
    assert len({tuple(o.token_ids) for o in outs}) == 3


def random_settings(rng: random.Random, n: int) -> list[ThinkingBudget]:
    settings = []
    for _ in range(n):
        cap = rng.choice([None, 0, 2, 6, 14, 25, 40])
        floor = rng.choice([0, 0, 3, 9])
        settings.append(ThinkingBudget(
            min_tokens=min(floor, cap) if cap is not None else floor,
            max_tokens=cap,
            num_ignore=rng.choice([0, 1, 2]),
            ignore_str=rng.choice(["Wait", " Wait, let me check"]),
            final_answer_str=rng.choice([None, "Final Answer:"]),
            max_answer_tokens=rng.choice([None, 4]),
            suppress=rng.random() < 0.3,
        ))
    return settings


@pytest.mark.parametrize("think_format,temperature", [("s1", 0.0), ("s1", 1.0), ("r1", 0.0), ("r1", 1.0)])
def test_every_sweep_output_equals_its_setting_run_alone(s1_llm, r1_llm, think_format, temperature):
    llm = s1_llm if think_format == "s1" else r1_llm
    rng = random.Random(f"{think_format}{temperature}")
    prompts = [prompt(rng.randint(3, 30), seed=s) for s in range(3)]
    for trial in range(2):
        settings = random_settings(rng, 6)
        params = SamplingParams(temperature=temperature, seed=trial, max_tokens=60, think_format=think_format)
        swept, _ = computed(llm, lambda: llm.sweep(prompts, params, settings, use_tqdm=False))
        for p, row in zip(prompts, swept):
            for setting, out in zip(settings, row):
                alone = llm.generate(p, replace(params, budget=setting), use_tqdm=False)[0]
                assert out.token_ids == alone.token_ids, setting
                assert (out.text, out.num_thinking_tokens, out.num_ignores_used, out.finish_reason) == (
                    alone.text, alone.num_thinking_tokens, alone.num_ignores_used, alone.finish_reason)


def test_a_sweep_setting_ended_at_the_start_is_cut_to_max_tokens_like_its_run_alone(s1_llm):
    ends = ThinkingBudget(max_tokens=0, final_answer_str="Final Answer:", max_answer_tokens=0)
    goes_on = ThinkingBudget(max_tokens=0, final_answer_str="Final Answer:")
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    for settings in ([ends, goes_on], [goes_on, ends]):
        swept = s1_llm.sweep([5, 6, 7], params, settings, use_tqdm=False)[0]
        alone = [s1_llm.generate([5, 6, 7], replace(params, budget=b), use_tqdm=False)[0] for b in settings]
        assert [o.token_ids for o in swept] == [o.token_ids for o in alone]
        assert all(len(o.token_ids) == 3 and o.finish_reason == "length" for o in swept)


def test_a_sweep_of_caps_computes_each_shared_prefix_once(s1_llm):
    caps = [4, 8, 16, 24, 32, 40]
    settings = [ThinkingBudget(max_tokens=c, num_ignore=8, final_answer_str="Final Answer:") for c in caps]
    params = SamplingParams(max_tokens=64)
    prompts = [prompt(17, seed=s) for s in range(3)]
    swept, delta = computed(s1_llm, lambda: s1_llm.sweep(prompts, params, settings, use_tqdm=False))
    _, alone = computed(s1_llm, lambda: [s1_llm.generate(prompts, replace(params, budget=s), use_tqdm=False)
                                         for s in settings])
    splice = len(s1_llm.tokenizer.encode_piece("<|im_start|>answer\nFinal Answer:"))
    # the prompt and the longest setting's tokens once, plus each branch's splice and answer
    assert delta["num_computed_tokens"] <= sum(
        17 + max(len(o.token_ids) for o in row) + sum(splice + o.num_answer_tokens for o in row) for row in swept)
    assert delta["num_computed_tokens"] < alone["num_computed_tokens"]


def test_logprobs_equal_transformers_log_softmax(make_model):
    path = make_model("qwen3", seed=6, end_token=1)
    llm = LLM(model=path, block_size=8)
    budget = ThinkingBudget(max_tokens=6, num_ignore=1, final_answer_str="Final Answer:")
    p = prompt(11, seed=8)
    zero_cap = ThinkingBudget(max_tokens=0, final_answer_str="Final Answer:")  # spliced before any sampling
    for params in (SamplingParams(max_tokens=20, logprobs=3, budget=budget),
                   SamplingParams(max_tokens=20, logprobs=2, budget=zero_cap),
                   SamplingParams(max_tokens=20, logprobs=0, temperature=0.8, top_k=20, seed=1, ignore_eos=True)):
        out = llm.generate(p, params, use_tqdm=False)[0]
        assert len(out.logprobs) == len(out.token_ids)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            reference = torch.log_softmax(hf(torch.tensor([p + out.token_ids])).logits[0, len(p) - 1 : -1], -1)
        sampled = 0
        for i, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
            if entry is None:
                continue  # a spliced token
            sampled += 1
            assert token in entry and len(entry) <= params.logprobs + 1
            for t, value in entry.items():
                assert abs(value - reference[i, t].item()) < 1e-4
            assert set(reference[i].topk(params.logprobs).indices.tolist()) <= set(entry)
        assert sampled < len(out.token_ids) if params.budget else sampled == len(out.token_ids)
        total = sum(e[t] for t, e in zip(out.token_ids, out.logprobs) if e is not None)
        assert out.cumulative_logprob == pytest.approx(total, abs=1e-4)


def test_cumulative_logprob_sums_the_sampled_tokens_that_stayed(r1_llm):
    """An ignored end spelled over several sampled tokens drops them: their logprobs leave the sum too."""
    params = SamplingParams(max_tokens=60, logprobs=0, think_format="r1", budget=ThinkingBudget(num_ignore=2))
    outputs = r1_llm.generate([[5, 6, 7], [9, 10, 11, 12]], params, use_tqdm=False)
    assert sum(out.num_ignores_used for out in outputs) >= 1
    for out in outputs:
        total = sum(e[t] for t, e in zip(out.token_ids, out.logprobs) if e is not None)
        assert out.cumulative_logprob == pytest.approx(total, abs=1e-4)


def test_a_batch_of_max_num_seqs_prompts_is_let_in_at_once(make_model):
    """Admission counted each sequence it let in twice (in the running set and in the batch being built), so
    a fresh batch took log2(max_num_seqs) prefill steps to fill."""
    llm = LLM(model=make_model("qwen2", seed=4), block_size=8, max_num_seqs=8)
    sizes, schedule = [], llm.core.scheduler.schedule

    def watched():
        batch, rejected = schedule()
        sizes.append((batch.is_prefill, len(batch.seqs)))
        return batch, rejected

    llm.core.scheduler.schedule = watched
    computed(llm, lambda: llm.generate([prompt(5, seed=40 + i) for i in range(8)], SamplingParams(max_tokens=2), use_tqdm=False))
    assert sizes[0] == (True, 8)


def test_forks_past_max_num_seqs_wait_their_turn(make_model):
    """`n` samples and sweep branches join the running set when they split off; the ones past max_num_seqs
    wait (their prompt blocks stay cached), so no step decodes more sequences than the limit; a prompt is let
    in with room for its samples, so the step they fork in samples no more rows than the limit either."""
    path = make_model("qwen2", seed=4)
    small, large = LLM(model=path, block_size=8, max_num_seqs=4), LLM(model=path, block_size=8)
    widest, schedule = [], small.core.scheduler.schedule

    def watched():
        batch, rejected = schedule()
        widest.append(0 if batch is None else len(batch.seqs))
        return batch, rejected

    small.core.scheduler.schedule = watched
    params = SamplingParams(n=6, max_tokens=12, ignore_eos=True)  # greedy: every sample the same tokens
    outs, _ = computed(small, lambda: small.generate([prompt(20, seed=1), prompt(13, seed=2)], params, use_tqdm=False))
    assert max(widest) == 4 and small.stats()["num_preemptions"] > 0
    expected = large.generate([prompt(20, seed=1), prompt(13, seed=2)], params, use_tqdm=False)
    assert [(o.sample_index, o.token_ids) for o in outs] == [(o.sample_index, o.token_ids) for o in expected]
    caps = [ThinkingBudget(max_tokens=c, final_answer_str="Final Answer:") for c in (1, 3, 5, 7, 9, 11)]
    widest.clear()
    swept, _ = computed(small, lambda: small.sweep(prompt(20, seed=3), SamplingParams(max_tokens=30), caps, use_tqdm=False))
    assert max(widest) <= 4
    assert [o.token_ids for o in swept[0]] == [o.token_ids for o in large.sweep(prompt(20, seed=3), SamplingParams(max_tokens=30), caps, use_tqdm=False)[0]]
    rows, sampler = [], small.core.sampler.sample_fn
    small.core.sampler.sample_fn = lambda logits, *args: rows.append(len(logits)) or sampler(logits, *args)
    prompts = [prompt(9 + i, seed=10 + i) for i in range(4)]
    params = SamplingParams(n=3, max_tokens=5, temperature=1.0, seed=3)
    outs, _ = computed(small, lambda: small.generate(prompts, params, use_tqdm=False))
    assert max(rows) <= 4 and [o.token_ids for o in outs] == [o.token_ids for o in large.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("min_tokens", (2, 4))  # the settings' masks part at the first sample, or at a later one
def test_sweep_settings_that_split_past_max_num_seqs_wait_to_sample(make_model, min_tokens):
    """Settings whose end-of-thinking masks differ split inside a step's sampling; past max_num_seqs the split
    waits its turn (it once sampled at once: 3 rows from 2 requests at max_num_seqs=2) and draws later what it
    would have drawn then."""
    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    small, large = LLM(model=path, block_size=8, max_num_seqs=2), LLM(model=path, block_size=8)
    rows, sample = [], small.core.sampler.sample_fn
    small.core.sampler.sample_fn = lambda logits, *args: rows.append(len(logits)) or sample(logits, *args)
    budgets = [ThinkingBudget(min_tokens=min_tokens, suppress=True), ThinkingBudget()]
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=5)
    plain = small.add_request([100, 200, 300], SamplingParams(max_tokens=8))
    sweep = small.add_sweep([400, 500, 600], params, budgets)
    while small.has_unfinished():
        small.step()
    assert max(rows) <= 2 and small.stats()["num_used_blocks"] == 0
    assert small.outputs(plain)[0].token_ids == large.generate([100, 200, 300], SamplingParams(max_tokens=8),
                                                                use_tqdm=False)[0].token_ids
    alone = [large.generate([400, 500, 600], replace(params, budget=b), use_tqdm=False)[0].token_ids for b in budgets]
    assert [o.token_ids for o in small.outputs(sweep)] == alone
