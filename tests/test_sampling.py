"""Sampling: per-request seeds, top-k / top-p, padded vocab, stops, streaming."""
import re

import pytest
import torch

from engine import LLM, SamplingParams
from engine.sampling import Sampler, uniform
from kernels import reference
from tests.engine_logits import engine_logits


def test_seeded_tokens_do_not_depend_on_the_batch(make_model):
    llm = LLM(model=make_model("qwen3", seed=8), block_size=8)
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=20, seed=1234, ignore_eos=True)
    alone = llm.generate([3, 4, 5], params, use_tqdm=False)[0].token_ids
    others = [SamplingParams(temperature=0.7, max_tokens=n, seed=n, ignore_eos=True) for n in (5, 30, 12)]
    batch = llm.generate([[9, 9], [3, 4, 5], [7] * 20, [8]], [others[0], params, others[1], others[2]], use_tqdm=False)
    assert batch[1].token_ids == alone
    reseeded = llm.generate([3, 4, 5], SamplingParams(**{**params.__dict__, "seed": 99}), use_tqdm=False)[0]
    assert reseeded.token_ids != alone


def test_a_streams_numbers_are_uniform_independent_and_keyed_by_index():
    n = 20000
    stream, other = [uniform(7, i) for i in range(n)], [uniform(8, i) for i in range(n)]
    assert all(0 <= u < 1 for u in stream + other) and 0 <= uniform(2**64 - 1, 2**40) < 1
    counts = torch.histc(torch.tensor(stream), bins=10, min=0, max=1)
    assert (counts - n / 10).abs().max() < 5 * (n / 10 * 0.9) ** 0.5  # 5 sigma per bin
    x, y = torch.tensor(stream, dtype=torch.float64), torch.tensor(other, dtype=torch.float64)
    for a, b in ((x[1:], x[:-1]), (x, y)):  # neighbours in a stream; neighbouring seeds
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 5 / n**0.5
    assert uniform(7, 123) == stream[123] and len(set(stream)) == n


def test_top_k_and_top_p_keep_only_allowed_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 100, generator=gen) * 3
    sampler = Sampler(100, reference.sample)
    top_k = SamplingParams(temperature=1.0, top_k=3)
    top_p = SamplingParams(temperature=1.0, top_p=0.5)
    for draw in range(50):
        tokens = sampler(logits.clone(), [top_k, top_k, top_p, top_p], [(i, draw) for i in range(4)], [frozenset()] * 4)
        for row in (0, 1):
            assert tokens[row] in logits[row].topk(3).indices.tolist()
        for row in (2, 3):
            probs = logits[row].softmax(-1)
            order = probs.argsort(descending=True)
            nucleus = order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist()
            assert tokens[row] in nucleus


def test_padded_vocab_ids_are_never_sampled(make_model):
    path = make_model("llama", seed=9, vocab_size=49152 + 40)  # 40 padded embedding rows
    logits = engine_logits(path, [5, 6, 7])
    assert logits.shape[-1] == 49192
    llm = LLM(model=path)
    # make padded rows win every argmax: masked, they must still never come out
    model = llm.core.runner.model  # the output head is held in both layouts: raise the padded rows in each
    big = model.lm_head_t[:, :49152].abs().max() * 50
    model.lm_head_t[:, 49152:] = big
    (model.embed_tokens.weight if model.lm_head is None else model.lm_head)[49152:] = big
    outs = llm.generate([[5, 6, 7]] * 4, [SamplingParams(max_tokens=10, ignore_eos=True),
                                          SamplingParams(temperature=2.0, max_tokens=10, seed=1, ignore_eos=True)] * 2,
                        use_tqdm=False)
    assert all(t < 49152 for o in outs for t in o.token_ids)


def test_stop_token_ids_stop_strings_and_eos(make_model):
    llm = LLM(model=make_model("llama", seed=10))
    free = llm.generate([5, 6, 7], SamplingParams(max_tokens=30, ignore_eos=True), use_tqdm=False)[0]
    stop_id = free.token_ids[5]
    by_id = llm.generate([5, 6, 7], SamplingParams(max_tokens=30, stop_token_ids=(stop_id,)), use_tqdm=False)[0]
    first = free.token_ids.index(stop_id)
    assert by_id.token_ids == free.token_ids[: first + 1]
    assert by_id.finish_reason == "stop" and by_id.stop_reason == stop_id
    stop_str = llm.tokenizer.decode(free.token_ids[8:10])
    by_str = llm.generate([5, 6, 7], SamplingParams(max_tokens=30, stop=[stop_str]), use_tqdm=False)[0]
    assert by_str.finish_reason == "stop" and by_str.stop_reason == stop_str
    assert stop_str not in by_str.text and free.text.startswith(by_str.text)
    assert len(by_str.token_ids) <= 10


def test_stream_text_equals_generate_text(make_model):
    from engine.budget import ThinkingBudget

    llm = LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True))
    params = SamplingParams(max_tokens=40, budget=ThinkingBudget(max_tokens=12, num_ignore=1, final_answer_str="Final Answer:"))
    expected = llm.generate([5, 6, 7], params, use_tqdm=False)[0]
    deltas = list(llm.stream([5, 6, 7], params))
    thinking = "".join(d.text for d in deltas if d.phase == "thinking")
    answer = "".join(d.text for d in deltas if d.phase == "answer")
    # the delimiter and the final-answer splice stream on the answer side, but are not answer text
    assert (thinking, answer) == (expected.thinking_text, expected.text[len(expected.thinking_text):])
    assert answer == "<|im_start|>answer\nFinal Answer:" + expected.answer_text
    assert deltas[-1].output.token_ids == expected.token_ids
    assert [t for d in deltas for t in d.token_ids] == expected.token_ids  # every id handed out once, in order
    llm.core.block_manager.check_all_free()


def test_stream_deltas_add_up_to_the_text_over_a_long_random_generation(make_model):
    llm = LLM(model=make_model("qwen2", seed=12))
    params = SamplingParams(temperature=1.5, seed=3, max_tokens=300, ignore_eos=True)  # many split characters
    expected = llm.generate([5, 6, 7], params, use_tqdm=False)[0]
    deltas = list(llm.stream([5, 6, 7], params))
    assert "".join(d.text for d in deltas) == expected.text
    assert [t for d in deltas for t in d.token_ids] == expected.token_ids
    assert len(deltas) > 100  # it really streamed, a delta per token or so


def test_incremental_decoder_holds_back_split_characters(tokenizer_dir):
    from engine.outputs import IncrementalDecoder
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir, (2,))
    ids = tokenizer.encode("Wait: 🤖 sees 世界 and naïve café. <|im_start|>answer\n½", add_special_tokens=False)
    decoder, text, held = IncrementalDecoder(tokenizer), "", 0
    for n in range(1, len(ids) + 1):
        delta = decoder.delta(ids[:n])
        held += delta == ""
        assert "\ufffd" not in delta
        text += delta
    assert text == tokenizer.decode(ids) and held > 0  # byte-level pieces of 🤖 / 世界 were held back


def test_the_seed_stability_benchmark_runs(make_model, capsys):
    from benchmarks import seed_stability

    assert seed_stability.main(["--model", str(make_model("llama", seed=2)), "--prompts", "2", "--tokens", "4",
                                "--prompt-tokens", "8"]) == 0
    assert re.search(r": \d/6 samples of n=3 parted from their n=1 runs within 4 tokens", capsys.readouterr().out)
    for flags, message in ((["--prompt-tokens", "100000"], "--prompt-tokens 100000 + --tokens 48 pass the context of"),
                           (["--n", "0"], "must be positive"), (["--dtype", "float8"], "unsupported dtype")):
        with pytest.raises(SystemExit) as exit_info:  # a request that fails has no tokens: they must not count as agreeing
            seed_stability.main(["--model", str(make_model("llama", seed=2)), *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
