"""Budget forcing equals s1's re-prefill reference loop over transformers, token for token (greedy)."""
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.s1_reference import s1_budget_forcing
from engine import LLM, SamplingParams, ThinkingBudget, runner
from tests.conftest import R1_SPELLING

# s1 ends thinking with one special token, <|im_start|> (id 1). This tokenizer has no </think> token: the
# r1 model spells " </think>\n\n" as ' </', 'think', '>', '\n\n', caught on the decoded text.
# "r1-glued" spells ".<", "/", "think", ">": the marker starts inside a token whose "." stays in thinking.
MODELS = {"s1": dict(end_token=1), "r1": dict(spell=R1_SPELLING), "r1-glued": dict(spell=(15602, 31, 17400, 46))}
MAX_TOKENS = 96


def random_budgets(rng: random.Random, n: int) -> list[ThinkingBudget]:
    budgets = []
    for _ in range(n):
        max_tokens = rng.choice([None, 0, 1, 3, 8, 20, 40])
        min_tokens = rng.choice([0, 0, 2, 6, 15])
        if max_tokens is not None:
            min_tokens = min(min_tokens, max_tokens)
        budgets.append(
            ThinkingBudget(
                min_tokens=min_tokens,
                max_tokens=max_tokens,
                num_ignore=rng.choice([0, 1, 2, 4]),
                ignore_str=rng.choice(["Wait", " Wait, let me check"]),
                final_answer_str=rng.choice([None, "Final Answer:"]),
                max_answer_tokens=rng.choice([None, 0, 5]),
                suppress=rng.random() < 0.3,
            )
        )
    return budgets


@pytest.mark.parametrize("model", list(MODELS))
def test_budget_forcing_matches_s1_reference(make_model, model, monkeypatch):
    # one attention group per distinct context length: splices (multi-token extends) cross groups too
    monkeypatch.setattr(runner, "GROUP_OVERHEAD_SLOTS", 0)
    path = make_model("llama", seed=11, hf_init=True, **MODELS[model])
    think_format = model.split("-")[0]
    rng = random.Random(model)
    budgets = random_budgets(rng, 12)
    prompts = [torch.randint(3, 49152, (rng.randint(3, 40),), generator=torch.Generator().manual_seed(i)).tolist()
               for i in range(len(budgets))]
    params = [SamplingParams(max_tokens=MAX_TOKENS, budget=b, think_format=think_format) for b in budgets]

    llm = LLM(model=path, block_size=8, max_num_seqs=16)
    outputs = llm.generate(prompts, params, use_tqdm=False)  # all settings batched together
    llm.core.block_manager.check_all_free()

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ignores_seen = caps_seen = 0
    for prompt, p, out in zip(prompts, params, outputs):
        expected = s1_budget_forcing(hf, tokenizer, prompt, p.budget, think_format, {tokenizer.eos_token_id}, MAX_TOKENS)
        assert out.token_ids == expected, f"budget {p.budget}"
        assert out.num_thinking_tokens <= (p.budget.max_tokens if p.budget.max_tokens is not None else MAX_TOKENS)
        ignores_seen += out.num_ignores_used
        caps_seen += p.budget.max_tokens is not None and out.num_thinking_tokens >= p.budget.max_tokens
    # the settings must actually exercise both forcing directions
    print(f"ignores spliced: {ignores_seen}, caps hit: {caps_seen}")
    assert ignores_seen >= 3 and caps_seen >= 3
    if model == "r1-glued":  # the "." of ".<" kept: split off where the model ended thinking itself
        kept = [out for out in outputs if out.thinking_text.endswith(".") or ".Wait" in out.thinking_text]
        assert len(kept) >= 3
