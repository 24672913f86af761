"""s1's reference budget forcing over `transformers`: re-prefill the whole sequence at every generate call.

Generate until end-of-thinking, drop it, append the ignore tokens and call generate again on the
whole sequence; at the cap append delimiter + final-answer tokens; then generate the answer. This is
the oracle the engine must equal token for token under greedy decoding, and the peer it must beat.
"""
import torch

from engine.budget import BudgetTokens, ThinkingBudget


def hf_generate(model, token_ids: list[int], max_new_tokens: int, stop_ids, suppress_ids=()) -> list[int]:
    """Greedy continuation of `token_ids`, ending after a stop id (included) or `max_new_tokens`."""
    if max_new_tokens <= 0:
        return []
    out = model.generate(
        torch.tensor([token_ids]),
        attention_mask=torch.ones(1, len(token_ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(stop_ids) or None,
        pad_token_id=0,
        suppress_tokens=sorted(suppress_ids) or None,
    )
    return out[0, len(token_ids) :].tolist()


def s1_budget_forcing(
    model,
    prompt_ids: list[int],
    budget: ThinkingBudget,
    tokens: BudgetTokens,
    eos_ids: frozenset[int],
    max_tokens: int,
) -> list[int]:
    """Every token after the prompt, spliced ones included, as s1's re-prefill loop produces them."""
    seq = list(prompt_ids)
    count = ignores = 0
    while True:
        if budget.max_tokens is not None and count >= budget.max_tokens:
            seq += tokens.delimiter + tokens.final_answer
            break
        room = max_tokens - (len(seq) - len(prompt_ids))
        if budget.max_tokens is not None:
            room = min(room, budget.max_tokens - count)
        suppressing = budget.suppress and count < budget.min_tokens
        if suppressing:
            room = min(room, budget.min_tokens - count)
        if room <= 0:
            return seq[len(prompt_ids) :][:max_tokens]
        new = hf_generate(model, seq, room, tokens.end_ids, tokens.end_ids if suppressing else ())
        ended = bool(new) and new[-1] in tokens.end_ids
        thinking = new[:-1] if ended else new
        seq += thinking
        count += len(thinking)
        if not ended:
            continue
        if ignores < budget.num_ignore or count < budget.min_tokens:
            ignores += 1
            seq += tokens.ignore
            count += len(tokens.ignore)
            continue
        seq += tokens.delimiter
        break
    room = max_tokens - (len(seq) - len(prompt_ids))
    if budget.max_answer_tokens is not None:
        room = min(room, budget.max_answer_tokens)
    seq += hf_generate(model, seq, room, eos_ids)
    return seq[len(prompt_ids) :][:max_tokens]
