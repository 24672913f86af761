"""Stops and streaming: the streamed text equals Output.text; stops match sampled answer text only,
at one occurrence, in bytes; nothing is lost when calls interleave; thinking counts what is output."""
import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams, ThinkingBudget


def streamed(llm, prompt, params):
    deltas = list(llm.stream(prompt, params))
    return deltas, deltas[-1].output


def check_stream(deltas, out):
    thinking = "".join(d.text for d in deltas if d.phase == "thinking")
    assert thinking + "".join(d.text for d in deltas if d.phase == "answer") == out.text
    assert thinking == out.thinking_text
    assert [t for d in deltas for t in d.token_ids] == out.token_ids


def test_multi_token_stop_strings_are_held_back_while_streaming(s1_llm):
    prompt = [5, 6, 7]
    free = s1_llm.generate(prompt, SamplingParams(max_tokens=40, ignore_eos=True), use_tqdm=False)[0]
    for start in (6, 15, 25):
        stop = s1_llm.tokenizer.decode(free.token_ids[start : start + 3])  # spans 3 tokens
        params = SamplingParams(max_tokens=40, stop=[stop, "never seen ✓"], ignore_eos=True)
        expected = s1_llm.generate(prompt, params, use_tqdm=False)[0]
        deltas, out = streamed(s1_llm, prompt, params)
        assert out.finish_reason == "stop" and out.stop_reason == stop and out.text == expected.text
        check_stream(deltas, out)
        sent = ""
        for d in deltas:  # nothing handed out was taken back: the stop's first tokens were held
            sent += d.text
            assert out.text.startswith(sent)


@pytest.mark.parametrize("think_format", ["s1", "r1"])
def test_stream_equals_output_with_a_budget_and_stops(s1_llm, r1_llm, think_format):
    llm = s1_llm if think_format == "s1" else r1_llm
    budget = ThinkingBudget(max_tokens=30, num_ignore=2, final_answer_str="Final Answer:")
    base = SamplingParams(max_tokens=80, budget=budget, think_format=think_format)
    for prompt in ([5, 6, 7], [9, 10, 11, 12], [13, 14]):
        free = llm.generate(prompt, base, use_tqdm=False)[0]
        answer_ids = free.token_ids[-free.num_answer_tokens :] if free.num_answer_tokens else []
        stops = [llm.tokenizer.decode(answer_ids[2:4])] if len(answer_ids) > 6 else ["zzz"]
        params = SamplingParams(**{**base.__dict__, "stop": stops})
        deltas, out = streamed(llm, prompt, params)
        check_stream(deltas, out)
        assert out.text.startswith(out.thinking_text) and out.text.endswith(out.answer_text)
        assert not any(s in out.answer_text for s in stops)


def test_r1_thinking_never_streams_the_start_of_a_spelled_marker(r1_llm):
    params = SamplingParams(max_tokens=60, think_format="r1", budget=ThinkingBudget(num_ignore=2))
    deltas, out = streamed(r1_llm, [9, 10, 11, 12], params)
    assert out.num_ignores_used == 2
    check_stream(deltas, out)
    assert all("</" not in d.text for d in deltas if d.phase == "thinking")


def test_text_and_answer_text_are_cut_at_the_same_stop(s1_llm):
    budget = ThinkingBudget(max_tokens=6, final_answer_str="Final Answer:")
    base = SamplingParams(max_tokens=60, budget=budget)
    free = s1_llm.generate([5, 6, 7], base, use_tqdm=False)[0]
    thinking_piece = free.thinking_text[:3]  # also inside thinking, where stops do not apply
    out = s1_llm.generate([5, 6, 7], SamplingParams(**{**base.__dict__, "stop": [thinking_piece]}), use_tqdm=False)[0]
    assert out.thinking_text == free.thinking_text
    assert out.text.endswith(out.answer_text) and free.answer_text.startswith(out.answer_text)
    assert out.text == free.text[: len(out.text)]


def test_stops_never_match_inside_spliced_text(s1_llm):
    budget = ThinkingBudget(max_tokens=4, final_answer_str="Final Answer:")
    out = s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=30, budget=budget, stop=[":", "answer"]),
                          use_tqdm=False)[0]
    assert "Final Answer:" in out.text and out.num_answer_tokens > 0


@pytest.mark.parametrize("stop,spell", [("🤖", (15107, 114, 240)), ("界", (178, 239, 230))])
def test_multi_byte_stop_strings_match(make_model, stop, spell):
    # the model writes " 🤖" and "界" byte by byte: 3 tokens for 2 characters, 3 tokens for 1
    llm = LLM(model=make_model("llama", seed=11, hf_init=True, spell=spell))
    params = SamplingParams(max_tokens=60, ignore_eos=True)
    free = llm.generate([5, 6, 7], params, use_tqdm=False)[0]
    assert stop in free.text
    out = llm.generate([5, 6, 7], SamplingParams(max_tokens=60, ignore_eos=True, stop=[stop]), use_tqdm=False)[0]
    assert out.stop_reason == stop and out.text == free.text[: free.text.index(stop)]


def test_max_tokens_inside_a_splice_counts_what_is_output(s1_llm):
    budget = ThinkingBudget(min_tokens=60, ignore_str=" Wait, let me check")  # 5 tokens
    free = s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=80, budget=budget), use_tqdm=False)[0]
    assert free.num_ignores_used > 0
    ignore_ids = s1_llm.tokenizer.encode_piece(" Wait, let me check")
    first = next(i for i in range(len(free.token_ids)) if free.token_ids[i : i + 5] == ignore_ids)
    cut = s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=first + 2, budget=budget), use_tqdm=False)[0]
    assert cut.finish_reason == "length" and len(cut.token_ids) == first + 2
    assert cut.num_thinking_tokens == first + 2


def test_num_answer_tokens_counts_sampled_answer_tokens(s1_llm):
    budget = ThinkingBudget(max_tokens=5, final_answer_str="Final Answer:")
    out = s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=40, budget=budget), use_tqdm=False)[0]
    spliced = len(s1_llm.tokenizer.encode_piece("<|im_start|>answer\nFinal Answer:"))
    stop_token = out.finish_reason == "stop" and isinstance(out.stop_reason, int)
    assert out.num_answer_tokens == len(out.token_ids) - out.num_thinking_tokens - spliced - stop_token


def test_generate_while_a_stream_is_open_loses_nothing(s1_llm):
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    expected = s1_llm.generate([5, 6, 7], params, use_tqdm=False)[0]
    stream = s1_llm.stream([5, 6, 7], params)
    deltas = [next(stream)]
    s1_llm.generate([[8, 9], [10, 11, 12]], SamplingParams(max_tokens=20, ignore_eos=True), use_tqdm=False)
    deltas += list(stream)
    assert [t for d in deltas for t in d.token_ids] == expected.token_ids == deltas[-1].output.token_ids
    assert "".join(d.text for d in deltas) == expected.text
    s1_llm.core.block_manager.check_all_free()


def test_an_abandoned_stream_stops_running(s1_llm):
    stream = s1_llm.stream([5, 6, 7], SamplingParams(max_tokens=200, ignore_eos=True))
    next(stream)
    seq = stream.request.seqs[0]
    del stream
    assert seq.finish_reason == "abort"
    s1_llm.generate([8, 9], SamplingParams(max_tokens=10), use_tqdm=False)
    assert seq.num_output_tokens <= 2 and not s1_llm.has_unfinished()
    s1_llm.core.block_manager.check_all_free()
    never_started = s1_llm.stream([5, 6, 7], SamplingParams(max_tokens=200))
    del never_started
    assert not s1_llm.has_unfinished()


def test_unseeded_requests_leave_torch_global_rng_alone(s1_llm):
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = s1_llm.generate([[5, 6, 7]] * 2, params, use_tqdm=False)
    assert torch.equal(torch.rand(3), expected)
    assert a.token_ids != b.token_ids  # and unseeded samples still differ


@pytest.mark.parametrize("prompt", [(5, 6, 7), np.array([5, 6, 7]), [5, 6.0]])
def test_a_prompt_must_be_text_or_a_list_of_ids(s1_llm, prompt):
    with pytest.raises(TypeError, match="a prompt is a string or a list of int token ids|prompts must be|holds ints only; item 1 is float"):
        s1_llm.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)
    ok, bad = s1_llm.generate([[5, 6], (7, 8)], SamplingParams(max_tokens=2), use_tqdm=False)
    assert ok.finish_reason == "length" and bad.finish_reason == "error" and "tuple" in bad.error
    assert not s1_llm.has_unfinished()


def test_chat_needs_one_params_per_conversation(s1_llm):
    convs = [[{"role": "user", "content": "hi"}]] * 3
    with pytest.raises(ValueError, match="got 3 conversations but 2 SamplingParams"):
        s1_llm.chat(convs, [SamplingParams(max_tokens=2)] * 2, use_tqdm=False)


@pytest.mark.parametrize("kwargs,error", [({"device": "mps"}, ValueError), ({"device": "foo"}, ValueError),
                                          ({"dtype": torch.int8}, ValueError)])
def test_bad_device_and_dtype_fail_before_loading(make_model, kwargs, error):
    with pytest.raises(error):
        LLM(model=make_model("llama"), **kwargs)


def test_a_request_that_runs_out_while_thinking_streams_no_answer_phase(s1_llm):
    params = SamplingParams(max_tokens=6, budget=ThinkingBudget(min_tokens=50, suppress=True))
    deltas = list(s1_llm.stream([5, 6, 7], params))
    out = deltas[-1].output
    assert out.finish_reason == "length" and out.answer_text == "" and out.num_thinking_tokens == 6
    assert {d.phase for d in deltas} == {"thinking"}
    assert "".join(d.text for d in deltas) == out.text == out.thinking_text


def test_thinking_cut_inside_a_character_does_not_hold_back_the_answer(s1_llm, monkeypatch):
    """A cap can end thinking on the first byte of a character; the answer still streams token by token."""
    tok = s1_llm.tokenizer
    split = tok.encode_piece("你好")[0]
    assert tok.decode([split]).endswith("\ufffd")
    script = iter([tok.encode_piece(" a")[0], split] + tok.encode_piece(" one two three four five six"))
    sample = s1_llm.core.sampler.sample_fn

    def scripted(logits, *args):  # the one row takes the script's next token, masks and all
        forced = torch.full_like(logits, -30.0)
        forced[:, next(script, split)] = 0.0
        return sample(forced, *args)

    monkeypatch.setattr(s1_llm.core.sampler, "sample_fn", scripted)
    params = SamplingParams(max_tokens=12, budget=ThinkingBudget(max_tokens=2))
    deltas = list(s1_llm.stream([5, 6, 7], params))
    out = deltas[-1].output
    assert out.thinking_text.endswith("\ufffd") and out.num_thinking_tokens == 2 and " one two" in out.answer_text
    check_stream(deltas, out)
    assert sum(d.phase == "answer" and d.output is None for d in deltas) >= 4  # not one delta at the end


@pytest.mark.parametrize("think_format", ["s1", "r1"])
def test_a_streamed_sweep_adds_up_to_each_setting_of_the_sweep(s1_llm, r1_llm, think_format):
    from tests.test_shared_kv import random_settings  # the sweep tests' settings: caps, floors, ignores, zero caps

    llm = s1_llm if think_format == "s1" else r1_llm
    rng = __import__("random").Random(think_format)
    for trial in range(3):
        settings = random_settings(rng, 5)
        params = SamplingParams(temperature=trial / 2, seed=trial, max_tokens=50, think_format=think_format,
                                stop=["zz", " the"] if trial == 2 else None)
        expected = llm.sweep([9, 10, 11, 12], params, settings, use_tqdm=False)[0]
        deltas = list(llm.stream_sweep([9, 10, 11, 12], params, settings))
        assert llm.stats()["num_used_blocks"] == 0
        for k, out in enumerate(expected):
            mine = [d for d in deltas if d.setting == k]
            assert mine[-1].output is not None and all(d.output is None for d in mine[:-1])
            got = mine[-1].output
            assert (got.token_ids, got.text, got.num_thinking_tokens, got.finish_reason) == (
                out.token_ids, out.text, out.num_thinking_tokens, out.finish_reason), settings[k]
            check_stream(mine, out)
            sent = ""
            for d in mine:  # nothing handed out was taken back, across the setting's forks
                sent += d.text
                assert out.text.startswith(sent)
