"""logit_bias, the repetition penalty and OpenAI's presence and frequency penalties: against a plain loop on
random logits, against transformers' generate with its processors, through forks, and under budget masks."""
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from engine import LLM, SamplingParams, ThinkingBudget
from engine import core, penalties
from engine.penalties import penalize
from engine.sequence import Sequence
from tests.test_generate_hf import prompts_of


def loop_reference(logits: torch.Tensor, params: list[SamplingParams], histories) -> torch.Tensor:
    """Element by element, as the docstrings say, in float64."""
    out = logits.double().clone()
    for row, (p, (tokens, num_prompt)) in enumerate(zip(params, histories)):
        for token, bias in (p.logit_bias or {}).items():
            out[row, token] += bias
        for token in set(tokens):
            value = out[row, token].item()
            out[row, token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        output = tokens[num_prompt:]
        for token in set(output):
            out[row, token] -= p.frequency_penalty * output.count(token) + p.presence_penalty
    return out


def seqs_of(params, histories):
    return [Sequence(i, list(tokens), num_prompt, p, i)
            for i, (p, (tokens, num_prompt)) in enumerate(zip(params, histories))]


def test_penalize_equals_a_plain_loop_step_after_step_and_leaves_other_rows_alone():
    gen = torch.Generator().manual_seed(7)
    vocab, width = 50, 56  # padded columns past the vocabulary
    params = [
        SamplingParams(),
        SamplingParams(repetition_penalty=1.7),
        SamplingParams(presence_penalty=0.6, frequency_penalty=-0.3),
        SamplingParams(logit_bias={3: 5.0, 17: -100, 49: 2.5}),
        SamplingParams(repetition_penalty=0.8, presence_penalty=-1.5, frequency_penalty=1.25, logit_bias={3: 1}),
        SamplingParams(temperature=0.7, top_k=5),
    ]
    histories = []
    for row in range(6):
        tokens = torch.randint(0, vocab, (int(torch.randint(1, 40, (), generator=gen)),), generator=gen).tolist()
        histories.append((tokens, int(torch.randint(0, len(tokens) + 1, (), generator=gen))))
    seqs = seqs_of(params, histories)
    for step in range(4):  # counts kept across steps take each step's new tokens
        logits = torch.randn(6, width, generator=gen) * 3
        logits[1, 5] = 0.0  # a zero logit stays zero under the repetition penalty
        seqs[1].token_ids.append(5)
        out = penalize(logits, seqs)
        assert out.dtype == torch.float32 and out.data_ptr() != logits.data_ptr()
        now = [(s.token_ids, s.num_prompt_tokens) for s in seqs]
        torch.testing.assert_close(out.double(), loop_reference(logits, params, now), rtol=1e-6, atol=1e-5)
        assert torch.equal(out[[0, 5]], logits[[0, 5]]) and out[1, 5] == 0
        for seq in seqs:
            seq.token_ids.extend(torch.randint(0, vocab, (step,), generator=gen).tolist())
    assert penalize(logits, [seqs[0], seqs[5]]) is logits  # nothing to adjust: no copy
    half = penalize(logits.half(), seqs)  # half logits are adjusted in fp32, not rounded back
    now = [(s.token_ids, s.num_prompt_tokens) for s in seqs]
    torch.testing.assert_close(half.double(), loop_reference(logits.half().float(), params, now), rtol=1e-6, atol=1e-5)


def test_counts_follow_budget_edits_of_counted_tokens(r1_llm, monkeypatch):
    """r1's end of thinking is spelled over four tokens, already counted when the last completes it; the
    budget then replaces them with "Wait": the counts must forget them. Against counting from scratch."""
    llm = r1_llm
    budget = ThinkingBudget(min_tokens=24, max_tokens=40, final_answer_str="Final Answer:")
    params = SamplingParams(max_tokens=60, think_format="r1", budget=budget, repetition_penalty=1.3,
                            frequency_penalty=0.4, logit_bias={7: 1.5})
    prompt = llm.chat_prompt([{"role": "user", "content": "think"}], params)
    kept = llm.generate([prompt, prompt[:-3] + prompt[-2:]], params, use_tqdm=False)
    assert any(o.num_ignores_used for o in kept), "no spelled end of thinking was replaced"
    real = penalties.penalize

    def from_scratch(logits, seqs):
        for seq in seqs:
            seq.token_counts = None
        return real(logits, seqs)

    monkeypatch.setattr(core, "penalize", from_scratch)
    fresh = llm.generate([prompt, prompt[:-3] + prompt[-2:]], params, use_tqdm=False)
    assert [o.token_ids for o in kept] == [o.token_ids for o in fresh]


class OpenAIPenalties(LogitsProcessor):
    """presence and frequency penalties over the generated tokens, written for this test."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            counts = torch.bincount(input_ids[row, self.prompt_len:], minlength=scores.shape[1]).float()
            scores[row] -= self.frequency * counts + self.presence * (counts > 0)
        return scores


def hf_penalized_greedy(path, prompts, max_new_tokens, params: SamplingParams):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    outs = []
    for p in prompts:
        kwargs = {"repetition_penalty": params.repetition_penalty}
        if params.logit_bias:
            kwargs["sequence_bias"] = [[[t], float(b)] for t, b in params.logit_bias.items()]
        processors = LogitsProcessorList([OpenAIPenalties(len(p), params.presence_penalty, params.frequency_penalty)])
        out = model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
                             logits_processor=processors, **kwargs)
        outs.append(out[0, len(p):].tolist())
    return outs


@pytest.mark.parametrize("arch, params", [
    ("llama", SamplingParams(max_tokens=20, repetition_penalty=1.3)),
    ("qwen2", SamplingParams(max_tokens=20, repetition_penalty=0.9, presence_penalty=0.5, frequency_penalty=0.4,
                             logit_bias={100: 3.0, 2000: -1.0, 7: 8.0})),
    ("qwen3", SamplingParams(max_tokens=20, presence_penalty=1.5, frequency_penalty=-0.5)),
])
def test_greedy_with_penalties_equals_transformers(make_model, arch, params):
    path = make_model(arch, seed=11)
    llm = LLM(model=path, block_size=8)
    plain_params = SamplingParams(max_tokens=params.max_tokens)
    prompts = prompts_of([3, 9, 20, 33], seed=5)
    prompts[0] = [5, 5, 5]  # a prompt of one repeated token
    # prompts holding what greedy would say next: the prompt counts for the repetition penalty, not the others
    prompts += [p + o.token_ids[:10] for p, o in zip(prompts[1:3], llm.generate(prompts[1:3], plain_params, use_tqdm=False))]
    expected = hf_penalized_greedy(path, prompts, params.max_tokens, params)
    got = llm.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in got] == expected
    plain = llm.generate(prompts, plain_params, use_tqdm=False)
    assert [o.token_ids for o in plain] != expected  # the adjustments changed what greedy picks
    llm.core.block_manager.check_all_free()


def test_a_sweep_and_n_samples_penalize_each_branch_by_its_own_tokens(s1_llm):
    llm = s1_llm
    prompt = llm.chat_prompt([{"role": "user", "content": "count"}], SamplingParams(budget=ThinkingBudget()))
    params = SamplingParams(max_tokens=24, temperature=0.9, seed=3, repetition_penalty=1.4, frequency_penalty=0.7)
    caps = [ThinkingBudget(max_tokens=c, final_answer_str="Final Answer:") for c in (2, 6, 12)]
    swept = llm.sweep(prompt, params, caps)[0]
    alone = [llm.generate(prompt, replace(params, budget=c), use_tqdm=False)[0] for c in caps]
    assert [o.token_ids for o in swept] == [o.token_ids for o in alone]
    forked = llm.generate(prompt, replace(params, n=3), use_tqdm=False)
    separate = [llm.generate(prompt, replace(params, seed=3 + i), use_tqdm=False)[0]
                for i in range(3)]
    assert [o.token_ids for o in forked] == [o.token_ids for o in separate]
    llm.core.block_manager.check_all_free()


def test_budget_masks_win_over_a_bias_toward_ending_thinking(s1_llm):
    llm = s1_llm
    budget = ThinkingBudget(min_tokens=9, suppress=True)
    end_ids = llm.budget_tokens(SamplingParams(budget=budget)).end_ids
    prompt = llm.chat_prompt([{"role": "user", "content": "go"}], SamplingParams(budget=budget))
    out = llm.generate(prompt, SamplingParams(max_tokens=30, budget=budget, logit_bias={t: 100 for t in end_ids}),
                       use_tqdm=False)[0]
    assert out.num_thinking_tokens == 9  # masked until the minimum, then the bias ends it at once


@pytest.mark.parametrize("kwargs, message", [
    ({"presence_penalty": 2.5}, "presence_penalty must be a number in \\[-2, 2\\]"),
    ({"frequency_penalty": float("nan")}, "frequency_penalty must be a number in \\[-2, 2\\]"),
    ({"frequency_penalty": True}, "frequency_penalty must be a number"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a positive number in fp32's normal range"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty must be a positive number"),
    ({"repetition_penalty": 1e39}, "repetition_penalty must be a positive number"),  # inf in fp32
    ({"repetition_penalty": 1e-46}, "repetition_penalty must be a positive number"),  # 0 in fp32
    ({"logit_bias": {5: 101}}, "logit_bias maps non-negative token ids to biases in \\[-100, 100\\], got 5: 101"),
    ({"logit_bias": {"5": 1}}, "logit_bias maps non-negative token ids"),
    ({"logit_bias": {-1: 1}}, "logit_bias maps non-negative token ids"),
])
def test_bad_penalties_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_a_logit_bias_outside_the_vocabulary_is_that_requests_error(s1_llm):
    with pytest.raises(ValueError, match=r"logit_bias token ids \[60000\] are outside the vocabulary \[0, 49152\)"):
        s1_llm.add_request("hi", SamplingParams(logit_bias={60000: 1, 3: 1}))
    assert not s1_llm.has_unfinished()
    bias = {3: 1.0}
    params = SamplingParams(logit_bias=bias)
    bias[3] = 50.0
    assert params.logit_bias == {3: 1.0}  # the caller's dict is copied
