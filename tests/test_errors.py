"""Bad input gets a clear exception naming the problem; in a batch the others still run."""
import json
import shutil
import threading
import time

import pytest

from engine import LLM, SamplingParams, ThinkingBudget
from engine.config import ModelConfig


@pytest.fixture(scope="module")
def llm(make_model):
    return LLM(model=make_model("llama", max_position_embeddings=64), block_size=8)


def test_unknown_architecture(make_model, tmp_path):
    src = make_model("llama")
    shutil.copytree(src, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture 'MambaForCausalLM'"):
        LLM(model=tmp_path / "m")


def test_missing_dir_config_and_weights(make_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="model dir .*nowhere does not exist"):
        LLM(model=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json in model dir"):
        LLM(model=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="config.json is a file: pass the dir that holds config.json"):
        LLM(model=make_model("llama") / "config.json")
    shutil.copytree(make_model("llama"), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors weights"):
        LLM(model=tmp_path / "m")


def test_corrupt_weights_and_missing_tensor(make_model, tmp_path):
    shutil.copytree(make_model("llama"), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])
    with pytest.raises(ValueError, match="corrupt weight file .*model.safetensors"):
        LLM(model=tmp_path / "m")
    config = ModelConfig.from_dir(make_model("llama"))
    assert config.num_hidden_layers == 2
    shutil.copytree(make_model("llama"), tmp_path / "n")
    raw = json.loads((tmp_path / "n" / "config.json").read_text())
    raw["num_hidden_layers"] = 3
    (tmp_path / "n" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="missing tensor 'model.layers.2"):
        LLM(model=tmp_path / "n")


@pytest.mark.parametrize("flock", ["works", "fails"])
def test_processes_that_start_together_convert_the_default_model_once(tmp_path, monkeypatch, flock):
    """Processes that find the cache empty together (test workers, torchrun ranks): one converts the default
    model, the others wait for it and get the whole dir (they used to convert it again and race to rename).
    Where the filesystem takes no flock, each converts, and the first dir stays: no later one replaces it."""
    import fcntl

    import engine.weights as weights

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    if flock == "fails":
        monkeypatch.setattr(fcntl, "flock", lambda *a: (_ for _ in ()).throw(OSError(37, "No locks available")))
    conversions, results, errors = [], [], []

    def convert(gguf_path, out):
        conversions.append(out)
        n = len(conversions)
        time.sleep(0.3 + 0.1 * n)  # long enough for every caller to find no config.json; the first ends first
        out.mkdir()
        (out / "config.json").write_text(str(n))

    def call():
        try:
            results.append(weights.default_model_dir())
        except Exception as e:
            errors.append(e)

    monkeypatch.setattr(weights, "_fetch_default_gguf", lambda workdir: workdir / "model.gguf")
    monkeypatch.setattr(weights, "convert_gguf", convert)
    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert not errors and len(conversions) == (1 if flock == "works" else 3)
    assert results == [tmp_path / weights.DEFAULT_MODEL_NAME] * 3
    assert (results[0] / "config.json").read_text() == "1"  # the first finished: not replaced by a later one
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{weights.DEFAULT_MODEL_NAME}.lock", weights.DEFAULT_MODEL_NAME]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dtype": "float64"}, "unsupported dtype 'float64'"),
        ({"block_size": 0}, "block_size must be a positive integer"),
        ({"max_num_seqs": -1}, "max_num_seqs must be a positive integer"),
        ({"num_blocks": 0}, "num_blocks must be a positive integer"),
    ],
)
def test_bad_engine_settings(make_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLM(model=make_model("llama"), **kwargs)


def test_unsupported_rope_scaling():
    raw = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
           "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "longrope"}}
    with pytest.raises(ValueError, match="unsupported rope scaling type 'longrope'"):
        ModelConfig.from_dict(raw)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"min_tokens": 10, "max_tokens": 5}, r"min_tokens \(10\) is above max_tokens \(5\)"),
        ({"max_tokens": -1}, "max_tokens must be a non-negative integer"),
        ({"min_tokens": -3}, "min_tokens must be a non-negative integer"),
        ({"num_ignore": -1}, "num_ignore must be a non-negative integer"),
        ({"max_answer_tokens": -2}, "max_answer_tokens must be a non-negative integer"),
        ({"suppress": "false"}, "suppress must be True or False"),
        ({"num_ignore": 1, "ignore_str": "W\udc00"}, "ignore_str is not valid Unicode: it holds a lone surrogate"),
        ({"final_answer_str": "\ud800"}, "final_answer_str is not valid Unicode"),
    ],
)
def test_bad_budgets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThinkingBudget(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": -1.0}, "temperature must be a number >= 0"),
        ({"top_p": 0.0}, "top_p must be a number in"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"max_tokens": 0}, "max_tokens is 0, which only scores the prompt: it needs prompt_logprobs"),
        ({"max_tokens": -1}, "max_tokens must be a non-negative integer"),
        ({"think_format": "xml"}, "unknown think format 'xml'"),
        ({"stop": 5}, "stop must be a non-empty string"),
        ({"stop": ["ok", ""]}, "stop must be a non-empty string"),
        ({"stop_token_ids": (3, -1)}, "stop_token_ids must be non-negative integers"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_bad_prompts_raise_alone(llm):
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate("", SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.add_request([], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="prompt has 80 tokens; the context holds 64"):
        llm.generate([5] * 80, SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([5, 10**6], SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="continuation is empty"):  # not "prompt is empty"
        llm.score([5, 6], [])
    with pytest.raises(ValueError, match=r"continuation token ids \[1000000\] are outside the vocabulary"):
        llm.score([5, 6], [10**6])
    with pytest.raises(ValueError, match=r"stop_token_ids token ids \[1000000\] are outside the vocabulary"):
        llm.generate([5], SamplingParams(max_tokens=4, stop_token_ids=[3, 10**6]), use_tqdm=False)
    with pytest.raises(ValueError, match="the prompt is not valid Unicode: it holds a lone surrogate '.ud800' at character 2"):
        llm.generate("ab\ud800", SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="messages.0. has no content"):
        llm.chat([{"role": "user"}], SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.sweep("", SamplingParams(max_tokens=4), [ThinkingBudget(max_tokens=1)], use_tqdm=False)
    with pytest.raises(TypeError, match=r"params\[1\] is a str"):
        llm.generate([[5], [6]], [SamplingParams(), "greedy"], use_tqdm=False)
    assert not llm.has_unfinished()
    llm.core.block_manager.check_all_free()


@pytest.mark.parametrize("call,message", [
    (lambda llm: llm.chat({"role": "user", "content": "hi"}), "conversations must be a non-empty list of messages .* got dict"),
    (lambda llm: llm.chat("hello"), "conversations must be .* got str"),  # not five error Outputs, one a character
    (lambda llm: llm.chat([[{"role": "user", "content": "hi"}], {"role": "user", "content": "hi"}]), "conversations must be"),
    (lambda llm: llm.sweep(None, SamplingParams(), [ThinkingBudget()]), "prompts must be a string, .* got NoneType"),
    (lambda llm: llm.sweep(("hi",), SamplingParams(), [ThinkingBudget()]), "got a tuple"),  # as generate
    (lambda llm: llm.score(None, "x"), "prompts must be .* got NoneType"),
    (lambda llm: llm.score(["a"], "b"), "continuations must be a list like prompts, got str"),
    (lambda llm: llm.generate([5, "a"]), "a prompt of token ids holds ints only; item 1 is str"),
    (lambda llm: llm.generate([__import__("numpy").int64(5), 6]), "item 0 is int64"),  # one prompt, not a batch
    (lambda llm: llm.sweep(["", [5, 6]], SamplingParams(), None), "budgets must be a non-empty list .* got NoneType"),
    (lambda llm: llm.score([5, 6], [5, "x"]), "a continuation of token ids holds ints only; item 1 is str"),
])
def test_bad_argument_types_name_the_problem(llm, call, message):
    with pytest.raises(TypeError, match=message):
        call(llm)
    assert not llm.has_unfinished()


def test_one_bad_request_does_not_stop_the_batch(llm):
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    outs = llm.generate([[5, 6, 7], "", [9] * 80, [11, 12]], params, use_tqdm=False)
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "length"]
    assert "empty" in outs[1].error and "context holds 64" in outs[2].error
    assert len(outs[0].token_ids) == 6 and len(outs[3].token_ids) == 6
    outs = llm.generate([[5, 6, 7], ""], SamplingParams(max_tokens=2, n=2), use_tqdm=False)
    assert [(o.finish_reason, o.sample_index) for o in outs] == [("length", 0), ("length", 1), ("error", 0), ("error", 1)]
    assert outs[2] is not outs[3]  # one Output per sample, not one object repeated
    llm.core.block_manager.check_all_free()


def test_a_bad_conversation_or_sweep_prompt_in_a_list_does_not_stop_the_others(llm):
    params = SamplingParams(max_tokens=3, ignore_eos=True, n=2)
    good = [{"role": "user", "content": "hi"}]
    outs = llm.chat([good, [{"role": "user"}], [{"role": "user", "content": "x\ud800"}], good], params, use_tqdm=False)
    assert [(o.finish_reason, o.sample_index) for o in outs] == [("length", 0), ("length", 1), ("error", 0), ("error", 1),
                                                                  ("error", 0), ("error", 1), ("length", 0), ("length", 1)]
    assert outs[2].error == "conversations[1]: messages[0] has no content"
    assert outs[4].error.startswith("conversations[2]: messages[0].content is not valid Unicode")
    assert [o.token_ids for o in outs[6:]] == [o.token_ids for o in llm.chat(good, params, use_tqdm=False)]
    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}" + \
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    hf, template = llm.tokenizer.hf, llm.tokenizer.hf.chat_template
    hf.chat_template = strict  # a template that refuses some conversations, as some models' do
    try:
        outs = llm.chat([[{"role": "system", "content": "x"}, *good], good], SamplingParams(max_tokens=2), use_tqdm=False)
    finally:
        hf.chat_template = template
    assert [o.finish_reason for o in outs] == ["error", "length"] and "no system messages" in outs[0].error
    budgets = [ThinkingBudget(max_tokens=1), ThinkingBudget(max_tokens=2)]
    rows = llm.sweep([[5, 6], [9] * 80, [7]], SamplingParams(max_tokens=4), budgets, use_tqdm=False)
    assert [[o.finish_reason for o in row] for row in rows] == [["length"] * 2, ["error"] * 2, ["length"] * 2]
    assert "context holds 64" in rows[1][0].error
    assert [o.token_ids for o in rows[2]] == [o.token_ids for o in llm.sweep([7], SamplingParams(max_tokens=4), budgets,
                                                                            use_tqdm=False)[0]]
    llm.core.block_manager.check_all_free()


def test_generation_stops_at_the_context_end(llm):
    out = llm.generate([5] * 60, SamplingParams(max_tokens=50, ignore_eos=True), use_tqdm=False)[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4
    llm.core.block_manager.check_all_free()


def test_aborted_stream_frees_its_blocks(llm):
    stream = llm.stream([5, 6, 7], SamplingParams(max_tokens=30, ignore_eos=True))
    next(stream)
    stream.close()
    assert not llm.has_unfinished()
    llm.core.block_manager.check_all_free()


def test_interrupted_generate_frees_its_requests_and_the_engine_goes_on(llm, monkeypatch):
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    expected = llm.generate([[5, 6, 7], [8, 9]], params, use_tqdm=False)
    run, calls = llm.core.runner.run, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run(*args, **kwargs)

    monkeypatch.setattr(llm.core.runner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([[5, 6, 7], [8, 9]], params, use_tqdm=False)
    assert not llm.has_unfinished()
    llm.core.block_manager.check_all_free()
    again = llm.generate([[5, 6, 7], [8, 9]], params, use_tqdm=False)
    assert [o.token_ids for o in again] == [o.token_ids for o in expected]


@pytest.mark.parametrize("where", ["forward", "sampler"])
def test_a_step_interrupted_part_way_leaves_the_other_requests_whole(llm, monkeypatch, where):
    """Ctrl-C in generate in a step that planned copy-on-write copies for another caller's n samples (the
    forward never ran), or once their forward ran and their numbers were drawn, before their tokens came:
    that request still gives the tokens it gives uninterrupted (a draw is keyed by its index, which moves
    on with the token only)."""
    prompt = list(range(100, 121))  # block size 8: the samples share a partial last block
    params = SamplingParams(max_tokens=12, n=3, ignore_eos=True, seed=1, temperature=1.0, top_k=5)
    expected = [o.token_ids for o in llm.generate(prompt, params, use_tqdm=False)]
    llm.reset_prefix_cache()
    request = llm.add_request(prompt, params)  # someone else's: a stream, a server job
    run, sample, calls = llm.core.runner.run, llm.core.sampler.sample_fn, []

    def forward(batch):
        if batch.copies and not calls:
            calls.append(batch.copies)
            raise KeyboardInterrupt
        return run(batch)

    def sampler(*args):
        calls.append(1)
        if len(calls) == 2:  # the first decode step, its forward done and its tokens counted
            raise KeyboardInterrupt
        return sample(*args)

    if where == "forward":
        monkeypatch.setattr(llm.core.runner, "run", forward)
    else:
        monkeypatch.setattr(llm.core.sampler, "sample_fn", sampler)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([5, 6, 7], SamplingParams(max_tokens=5), use_tqdm=False)
    assert calls
    while llm.has_unfinished():
        llm.step()
    assert [o.token_ids for o in llm.outputs(request)] == expected
    llm.core.block_manager.check_all_free()


@pytest.mark.parametrize("where", ["schedule", "forking"])
def test_a_step_interrupted_in_scheduling_or_forking_leaves_the_other_requests_whole(llm, monkeypatch, where):
    """Ctrl-C right after the scheduler planned a step (blocks taken, copies planned, prompts moved to running),
    or while an n=4 request forks its samples (two made, one being made): the request still gives its 4 samples,
    each once, with the tokens it gives uninterrupted."""
    prompt = list(range(200, 221))
    params = SamplingParams(max_tokens=10, n=4, ignore_eos=True)
    expected = [(o.sample_index, o.token_ids) for o in llm.generate(prompt, params, use_tqdm=False)]
    llm.reset_prefix_cache()
    request = llm.add_request(prompt, params)
    core, calls = llm.core, []
    schedule, branch = core.scheduler.schedule, core._branch

    def scheduled():
        batch = schedule()
        if len(calls) == 1:  # the second step: the first decode, its copies planned
            raise KeyboardInterrupt
        calls.append(1)
        return batch

    def forked(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # while it makes the third sample
            raise KeyboardInterrupt
        return branch(*args, **kwargs)

    if where == "schedule":
        monkeypatch.setattr(core.scheduler, "schedule", scheduled)
    else:
        monkeypatch.setattr(core, "_branch", forked)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([5, 6, 7], SamplingParams(max_tokens=5), use_tqdm=False)
    monkeypatch.undo()
    while llm.has_unfinished():
        llm.step()
    assert [(o.sample_index, o.token_ids) for o in llm.outputs(request)] == expected
    assert not core.requests
    llm.core.block_manager.check_all_free()


def test_an_interrupt_while_generate_queues_its_prompts_drops_those_queued(llm, monkeypatch):
    add, calls = llm.add_request, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return add(*args)

    monkeypatch.setattr(llm, "add_request", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([[5, 6, 7], [8, 9]], SamplingParams(max_tokens=5), use_tqdm=False)
    assert not llm.has_unfinished() and not llm.core.requests
    llm.core.block_manager.check_all_free()


def test_a_finish_interrupted_while_it_ends_the_samples_still_ends_them_all(llm, monkeypatch):
    """An n=3 request that ends at its prefill (it only scores its prompt) ends its samples as it finishes;
    Ctrl-C while it makes the second: the step's recovery makes the rest, so the request is done."""
    params = SamplingParams(n=3, max_tokens=0, prompt_logprobs=0)
    request = llm.add_request(list(range(300, 312)), params)
    branch, calls = llm.core._branch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return branch(*args, **kwargs)

    monkeypatch.setattr(llm.core, "_branch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.step()
    assert request.is_finished and not llm.core.requests and not llm.has_unfinished()
    outs = llm.outputs(request)
    assert [o.sample_index for o in outs] == [0, 1, 2] and len({len(o.prompt_logprobs) for o in outs}) == 1
    llm.core.block_manager.check_all_free()


def test_a_second_interrupt_while_generate_cleans_up_still_drops_every_request(llm, monkeypatch):
    run, abort, aborts = llm.core.runner.run, llm.core.abort, []

    def interrupted(batch):
        raise KeyboardInterrupt

    def abort_twice_interrupted(request):
        aborts.append(request)
        abort(request)
        if len(aborts) == 1:
            raise KeyboardInterrupt  # the second Ctrl-C, after the first request's abort

    monkeypatch.setattr(llm.core.runner, "run", interrupted)
    monkeypatch.setattr(llm.core, "abort", abort_twice_interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([[5, 6, 7], [8, 9], [10, 11]], SamplingParams(max_tokens=5), use_tqdm=False)
    assert len(aborts) == 3 and not llm.has_unfinished() and not llm.core.requests
    llm.core.block_manager.check_all_free()
