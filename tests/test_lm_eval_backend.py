"""The lm-evaluation-harness backend: lm_eval runs local YAML tasks (JSON data, nothing downloaded) on a tiny
random model through `s1engine`: generation under s1's budget-forcing gen_kwargs, multiple choice through
LLM.score, rolling log-likelihoods, the CLI entry point, and clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"  # lm_eval must not reach a hub: the tasks read local JSON files
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from benchmarks.lm_eval_backend import S1EngineLM  # noqa: E402  (registers "s1engine")
from engine import SamplingParams, ThinkingBudget  # noqa: E402
from tests.lm_eval_tasks import MULTIPLE_CHOICE, generate_until, write_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3"), ("Name a prime.", "7")]


@pytest.fixture(scope="module")
def model_dir(make_model):
    # token 1 is <|im_start|>, s1's end-of-thinking marker: the model often tries to stop thinking
    return make_model("llama", seed=11, end_token=1, hf_init=True)


@pytest.fixture(scope="module")
def lm(model_dir):
    return S1EngineLM(pretrained=str(model_dir), device="cpu", block_size=8, max_gen_toks=32)


@pytest.fixture(scope="module")
def hf(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def write_tasks(root: Path, mc_docs: list[dict]) -> TaskManager:
    """A generate and a multiple-choice task as YAML over local JSONL files, the way s1's task dirs look."""
    s1_kwargs = "  max_tokens_thinking: 12\n  thinking_n_ignore: 2\n  thinking_n_ignore_str: Wait\n"
    write_task(root, "s1engine_gen", [{"question": q, "answer": a} for q, a in QUESTIONS],
               generate_until(s1_kwargs, repeats=3))
    write_task(root, "s1engine_mc", mc_docs, MULTIPLE_CHOICE)
    return TaskManager(include_path=str(root), include_defaults=False)


def record_generate(lm, monkeypatch) -> list:
    """Spy on the engine: every LLM.generate call's prompts, params and outputs."""
    calls, real = [], lm.llm.generate

    def spy(prompts, params=None, use_tqdm=True):
        outputs = real(prompts, params, use_tqdm=use_tqdm)
        calls.append((prompts, params, outputs))
        return outputs

    monkeypatch.setattr(lm.llm, "generate", spy)
    return calls


def thinking_length(lm, token_ids: list[int]) -> int:
    """Tokens before the end delimiter, counted on the output ids: the first <|im_start|> starts the
    delimiter, since every end the model wrote while its ends were ignored was replaced by the ignore string."""
    first = lm.llm.tokenizer.encode_piece("<|im_start|>answer\n")[0]
    return token_ids.index(first) if first in token_ids else len(token_ids)


def test_generate_until_forces_s1_budget_and_groups_repeats(lm, tmp_path, monkeypatch):
    calls = record_generate(lm, monkeypatch)
    results = simple_evaluate(model=lm, tasks=["s1engine_gen"], task_manager=write_tasks(tmp_path, []),
                              apply_chat_template=True, log_samples=True, bootstrap_iters=0)  # as s1's scripts
    (prompts, params, outputs), = calls  # one engine call for the whole task
    assert len(prompts) == len(QUESTIONS) and len(outputs) == 3 * len(QUESTIONS)
    for sp in params:  # repeats=3 of one context: a single request with n=3
        assert sp.n == 3 and sp.temperature == 0.0 and sp.max_tokens == 40 and sp.stop == ["Question:"]
        assert sp.budget == ThinkingBudget(max_tokens=12, num_ignore=2, ignore_str="Wait",
                                           final_answer_str="Final Answer:")
    for prompt in prompts:  # the chat template, then the think format's start
        text = lm.tok_decode(prompt)
        assert text.startswith("<|im_start|>") and "<|im_start|>user\nQuestion:" in text
        assert text.endswith("Answer:<|im_end|>\n<|im_start|>assistant\n<|im_start|>think\n")
    for out in outputs:  # the cap held, counted on the tokens themselves
        assert thinking_length(lm, out.token_ids) == out.num_thinking_tokens <= 12
        assert out.thinking_text.count("Wait") == out.num_ignores_used <= 2
    assert any(o.num_thinking_tokens == 12 and "<|im_start|>answer\nFinal Answer:" in o.text for o in outputs)
    assert any(o.num_ignores_used > 0 for o in outputs)
    samples = results["samples"]["s1engine_gen"]
    assert len(samples) == len(QUESTIONS)
    for sample in samples:  # each instance gets s1's text: think start + thinking + delimiter + answer
        index = next(i for i, q in enumerate(QUESTIONS) if q[0] in sample["arguments"][0][0])
        (texts,) = sample["resps"]  # one instance, its 3 repeats
        assert texts == ["<|im_start|>think\n" + o.text for o in outputs[3 * index: 3 * index + 3]]


def test_auto_budget_sampling_and_cli_style_gen_kwargs(model_dir, tmp_path, monkeypatch):
    lm = S1EngineLM(pretrained=str(model_dir), device="cpu", auto_thinking_margin=8, seed=5)
    calls = record_generate(lm, monkeypatch)
    simple_evaluate(model=lm, tasks=["s1engine_gen"], task_manager=write_tasks(tmp_path, []), limit=2,
                    bootstrap_iters=0,
                    gen_kwargs="max_tokens_thinking=auto,thinking_n_ignore=1,max_gen_toks=60,do_sample=true")
    (prompts, params, outputs), = calls
    encode = lm.llm.tokenizer.encode_piece
    splice = len(encode("<|im_start|>answer\n")) + len(encode("Final Answer:"))  # delimiter + final answer
    for prompt, sp in zip(prompts, params):
        assert lm.tok_decode(prompt).startswith("Question: ")  # no chat template this time
        assert lm.tok_decode(prompt).endswith("\nAnswer:<|im_start|>think\n")
        assert sp.temperature == 1.0 and sp.n == 3 and sp.max_tokens == 60
        assert sp.budget.max_tokens == min(60, lm.max_length - len(prompt)) - splice - 8
        assert sp.budget.num_ignore == 1
    assert [sp.seed for sp in params] == [5, 8]  # each request takes the next n seeds
    assert len({o.text for o in outputs[:3]}) > 1  # sampled: the three samples differ
    assert all(o.num_thinking_tokens <= params[0].budget.max_tokens for o in outputs)


def test_multiple_choice_loglikelihoods_equal_llm_score(lm, hf, tmp_path):
    context = "Question: Pick the next word.\nAnswer:"
    ctx_ids = lm.tok_encode(context)
    with torch.no_grad():  # the greedy two-token continuation, from transformers
        ids = torch.tensor([ctx_ids])
        for _ in range(2):
            ids = torch.cat([ids, hf(ids).logits[:, -1:].argmax(-1)], dim=1)
    greedy = lm.tok_decode(ids[0, len(ctx_ids):].tolist())
    assert lm.tok_encode(context + greedy) == ids[0].tolist()  # it tokenizes back the same way
    docs = [{"question": "Pick the next word.", "choices": [" cat", greedy, " dog"], "label": 1},
            {"question": "What is 2 + 3?", "choices": [" 4", " 5", " six"], "label": 1}]
    results = simple_evaluate(model=lm, tasks=["s1engine_mc"], task_manager=write_tasks(tmp_path, docs),
                              log_samples=True, bootstrap_iters=0)
    samples = results["samples"]["s1engine_mc"]
    assert len(samples) == 2
    seen_greedy = []
    for sample in samples:
        for (ctx, cont), ((logprob, is_greedy),) in zip(sample["arguments"], sample["resps"]):
            assert logprob == pytest.approx(sum(lm.llm.score(ctx, cont)[0]), abs=1e-4)
            full = torch.tensor([lm.tok_encode(ctx + cont)])
            n = len(full[0]) - len(lm.tok_encode(ctx))
            with torch.no_grad():
                logits = hf(full).logits[0, -n - 1: -1]
            want = torch.log_softmax(logits, -1).gather(1, full[0, -n:, None]).sum().item()
            assert logprob == pytest.approx(want, abs=1e-4)  # and equal to transformers
            assert is_greedy == bool((logits.argmax(-1) == full[0, -n:]).all())
            seen_greedy.append(is_greedy)
    assert seen_greedy.count(True) == 1  # the greedy choice, and only it
    lls = [[r[0][0] for r in s["resps"]] for s in samples]
    accuracy = sum(max(range(3), key=ll.__getitem__) == s["target"] for ll, s in zip(lls, samples)) / 2
    assert results["results"]["s1engine_mc"]["acc,none"] == accuracy


def test_loglikelihood_rolling_matches_transformers(model_dir, hf):
    # a context of 32 tokens (4 blocks of 8): a longer text is scored in disjoint windows
    lm = S1EngineLM(pretrained=str(model_dir), device="cpu", block_size=8, num_blocks=4)
    assert lm.max_length == 32
    short, long = "The cat sat on the mat.", " ".join(f"word{i}" for i in range(40))
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (s,), 0) for s in (short, long)],
                                   disable_tqdm=True)
    for text, value in zip((short, long), got):
        tokens = [lm.prefix_token_id] + lm.tok_encode(text)
        want, done = 0.0, 1  # tokens[done:] still to predict; a window of 32 predicts up to its last 31
        while done < len(tokens):
            end = min(done + 31, len(tokens))
            window = tokens[max(0, end - 32): end]
            with torch.no_grad():
                logprobs = torch.log_softmax(hf(torch.tensor([window])).logits[0], -1)
            first = len(window) - (end - done)
            want += sum(logprobs[p - 1, window[p]].item() for p in range(first, len(window)))
            done = end
        assert len(tokens) > 32 or text == short
        assert value == pytest.approx(want, abs=1e-3)


def test_cli_runs_a_local_task(model_dir, tmp_path):
    tasks = tmp_path / "tasks"
    write_tasks(tasks, [])
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.lm_eval_backend", "--model", "s1engine",
         "--model_args", f"pretrained={model_dir},device=cpu", "--tasks", "s1engine_gen",
         "--include_path", str(tasks), "--limit", "1", "--output_path", str(tmp_path / "out"),
         "--gen_kwargs", "max_gen_toks=16,max_tokens_thinking=4,thinking_n_ignore=1,thinking_n_ignore_str=Hmm"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = list((tmp_path / "out").rglob("results_*.json"))
    config = json.loads(result.read_text())["configs"]["s1engine_gen"]["generation_kwargs"]
    assert config["max_tokens_thinking"] == 4 and config["thinking_n_ignore_str"] == "Hmm"


def test_bad_model_args_and_gen_kwargs_raise_clearly(lm, model_dir):
    with pytest.raises(ValueError, match=r"unknown model_args \['temprature'\]"):
        S1EngineLM(pretrained=str(model_dir), temprature=1)
    with pytest.raises(ValueError, match="unknown think format"):
        S1EngineLM(pretrained=str(model_dir), think_format="s2")
    with pytest.raises(ValueError, match="max_num_seqs must be an integer >= 1"):
        S1EngineLM(pretrained=str(model_dir), max_num_seqs=0)
    with pytest.raises(ValueError, match="not both"):
        S1EngineLM(pretrained=str(model_dir), model=str(model_dir))
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        S1EngineLM(pretrained=str(model_dir / "missing"))

    def generate(**gen_kwargs):
        return lm.generate_until([Instance("generate_until", {}, ("Q: 1+1?\nA:", gen_kwargs), 0)], disable_tqdm=True)

    with pytest.raises(ValueError, match=r"does not support gen_kwargs \['rejection_sample'\]"):
        generate(rejection_sample=True, max_tokens_thinking=8)
    with pytest.raises(ValueError, match="max_tokens_thinking must be an integer >= 0, got 'lots'"):
        generate(max_tokens_thinking="lots")
    with pytest.raises(ValueError, match="min_tokens"):  # the engine's own check: min above max
        generate(max_tokens_thinking=4, min_tokens_thinking=8)
    # no thinking key: plain greedy generation, no budget, nothing put before the text
    plain = lm.llm.generate("Q: 1+1?\nA:", SamplingParams(max_tokens=4), use_tqdm=False)[0]
    assert plain.num_thinking_tokens == 0 and generate(max_gen_toks=4) == [plain.text]
    penalized = lm.llm.generate("Q: 1+1?\nA:", SamplingParams(max_tokens=8, repetition_penalty=1.5, frequency_penalty=1),
                                use_tqdm=False)[0]
    assert generate(max_gen_toks=8, repetition_penalty="1.5", frequency_penalty=1) == [penalized.text]
    with pytest.raises(ValueError, match="presence_penalty must be a number in"):
        generate(presence_penalty=5)
