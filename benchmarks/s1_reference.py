"""s1's reference budget forcing over `transformers`: re-prefill the whole sequence at every generate call.

Generate until end-of-thinking, drop it, append the ignore tokens and call generate again on the
whole sequence; at the cap append the delimiter + final-answer tokens; then generate the answer. This
is the oracle the engine must equal token for token under greedy decoding, and the peer it must beat.
It takes every id from the tokenizer itself. An end marker that is not one added token (r1's
`</think>` on a Llama tokenizer) is caught by transformers' stop strings, whatever its tokenization.
"""
import torch
from transformers import PreTrainedTokenizerBase

from engine.budget import SPLIT_CONTEXT, ThinkingBudget
from engine.tokenizer import get_think_format


def hf_generate(model, token_ids: list[int], max_new_tokens: int, stop_ids, suppress_ids=(),
                stop_strings=None, tokenizer=None) -> list[int]:
    """Greedy continuation of `token_ids`, ending after a stop id or stop string (included) or
    `max_new_tokens`."""
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
        stop_strings=stop_strings,
        tokenizer=tokenizer,
    )
    return out[0, len(token_ids) :].tolist()


def s1_budget_forcing(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    budget: ThinkingBudget,
    think_format: str,
    eos_ids: frozenset[int],
    max_tokens: int,
    ignore_eos: bool = False,
) -> list[int]:
    """Every token after the prompt, spliced ones included, as s1's re-prefill loop produces them."""
    fmt = get_think_format(think_format)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    delimiter, final, ignore = encode(fmt.think_end), encode(budget.final_answer_str or ""), encode(budget.ignore_str)
    marker = encode(fmt.end_marker)
    one_token = len(marker) == 1 and marker[0] in tokenizer.added_tokens_decoder
    end_ids = set(marker[:1] if one_token else []) | (set() if ignore_eos else set(eos_ids))
    stop_strings = None if one_token else [fmt.end_marker]
    cap = budget.max_tokens

    def at_cap(out: list[int]) -> list[int]:
        """Thinking ends at the cap: splice what is left of the delimiter, then the final answer."""
        if one_token:
            k = max((k for k in range(1, len(delimiter)) if out[-k:] == delimiter[:k]), default=0)
            return out + delimiter[k:] + final
        text = decode(out)
        k = max((k for k in range(1, len(fmt.think_end)) if text.endswith(fmt.think_end[:k])), default=0)
        if not k:
            return out + delimiter + final
        first = max(i for i in range(len(out)) if len(decode(out[i:])) >= k)  # the token the part starts in
        out, _ = split_token(out, first, len(decode(out[first:])) - k)
        return out + encode(fmt.think_end[k:]) + final

    def split_token(out: list[int], i: int, cut: int) -> tuple[list[int], int]:
        """A marker starting `cut` characters into token i: keep the text before it (unless only whitespace)
        as its own tokens, as s1's text-level stop keeps it, when they decode to the same text after the
        tokens before and keep thinking within the cap. Returns the tokens and where the marker starts."""
        text = decode(out[i : i + 1])
        left, right = encode(text[:cut]), encode(text[cut:])
        context = out[max(0, i - SPLIT_CONTEXT) : i]
        if (cut <= 0 or not text[:cut].strip() or not left or not right
                or decode(context + left + right) != decode(context + out[i : i + 1])
                or (cap is not None and i + len(left) > cap)):
            return out, i
        return out[:i] + left + right + out[i + 1 :], i + len(left)

    out, ignores = [], 0
    while True:
        if cap is not None and len(out) >= cap:
            out = at_cap(out)
            break
        room = max_tokens - len(out)
        if cap is not None:
            room = min(room, cap - len(out))
        suppressing = budget.suppress and len(out) < budget.min_tokens
        if suppressing:
            room = min(room, budget.min_tokens - len(out))
        if room <= 0:
            return out[:max_tokens]
        new = hf_generate(model, prompt_ids + out, room, end_ids, end_ids if suppressing else (),
                          stop_strings, tokenizer)
        if new and new[-1] in end_ids:
            out += new[:-1]
            end, spelled = len(out), False
        else:
            out += new
            if stop_strings is None or fmt.end_marker not in decode(out[-len(fmt.end_marker.encode()) - 1:]):
                continue
            # the latest start from which the text still holds the marker: its first spelling token
            end = max(i for i in range(len(out)) if fmt.end_marker in decode(out[i:]))
            out, end = split_token(out, end, decode(out[end:]).find(fmt.end_marker))
            spelled = True
        if ignores < budget.num_ignore or end < budget.min_tokens:
            out = out[:end]
            if cap is not None and end + len(ignore) > cap:  # the cap wins over an ignore
                out += delimiter + final
                break
            ignores += 1
            out += ignore
            continue
        if not spelled:
            out += delimiter
        break
    room = max_tokens - len(out)
    if budget.max_answer_tokens is not None:
        room = min(room, budget.max_answer_tokens)
    out += hf_generate(model, prompt_ids + out, room, set() if ignore_eos else eos_ids)
    return out[:max_tokens]
