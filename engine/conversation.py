"""A think-format conversation as token ids, one way for the engine's prompts and for SFT's training rows.

Ids are encoded segment by segment, the way the engine produces them: the templated prompt (plus the think
start), then what the model writes, with the end-of-thinking delimiter encoded on its own as the engine splices
it. Encoding the whole text at once would merge tokens across those seams: r1's `</think>\\n\\n` followed by the
answer tokenizes as '\\n', '\\n' instead of the spliced '\\n\\n'.
"""
from transformers import PreTrainedTokenizerBase

from engine.text import check_unicode
from engine.tokenizer import CHATML_TEMPLATE, ThinkFormat


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> str:
    template = tokenizer.chat_template or CHATML_TEMPLATE
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


ROLES = ("system", "user", "assistant")


def check_messages(messages) -> None:
    """A conversation is a non-empty list of {"role": system|user|assistant, "content": str} dicts."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"a conversation is a non-empty list of {{role, content}} messages, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict with role and content, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}] has role {m.get('role')!r}; it must be one of {', '.join(ROLES)}")
        if "content" not in m:
            raise ValueError(f"messages[{i}] has no content")
        if not isinstance(m["content"], str):
            raise TypeError(f"messages[{i}].content must be a string, got {type(m['content']).__name__}")
        check_unicode(m["content"], f"messages[{i}].content")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], think_format: ThinkFormat | None) -> list[int]:
    """The conversation with the generation prompt, opening thinking when a think format is given."""
    check_messages(messages)
    text = chat_text(tokenizer, messages, add_generation_prompt=True)
    if think_format is not None:
        text += think_format.think_start
    return tokenizer.encode(text, add_special_tokens=False)


def conversation_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict],
                     think_format: ThinkFormat | None) -> tuple[list[int], list[bool]]:
    """(input_ids, loss_mask) of a whole conversation, in which an assistant message may hold `thinking` beside
    its `content` (the answer). The mask is True on what the assistant writes: thinking, the end-of-thinking
    delimiter, the answer and the end-of-turn token."""
    thinks = [m["role"] == "assistant" and "thinking" in m for m in messages]
    if any(thinks) and think_format is None:
        raise ValueError("the conversation has thinking but no think format to delimit it")
    templated = [{"role": m["role"], "content": think_format.render(m["thinking"], m["content"]) if think
                  else m["content"]} for m, think in zip(messages, thinks)]
    text = chat_text(tokenizer, templated, add_generation_prompt=False)
    end_of_turn = tokenizer.eos_token
    input_ids, loss_mask = [], []

    def add(piece: str, target: bool) -> None:
        ids = tokenizer.encode(piece, add_special_tokens=False)
        input_ids.extend(ids)
        loss_mask.extend([target] * len(ids))

    encoded_up_to = 0  # characters of `text` already encoded
    for i, (message, think) in enumerate(zip(messages, thinks)):
        if message["role"] != "assistant":
            continue
        prompt = chat_text(tokenizer, templated[:i], add_generation_prompt=True)
        end = len(prompt) + len(templated[i]["content"])
        if not text.startswith(prompt + templated[i]["content"]):
            raise ValueError(f"the chat template does not render assistant turn {i} verbatim after its prompt; "
                             "cannot find the tokens to train on")
        if not text.startswith(end_of_turn, end):
            raise ValueError(f"the chat template does not close assistant turn {i} with the EOS token {end_of_turn!r}")
        # For the first turn this is prompt_ids(messages[:i]); later turns continue the template's text.
        add(prompt[encoded_up_to:] + (think_format.think_start if think else ""), target=False)
        if think:
            add(message["thinking"], target=True)
            add(think_format.think_end, target=True)  # as the engine splices it
        add(message["content"], target=True)
        add(end_of_turn, target=True)
        encoded_up_to = end + len(end_of_turn)
    add(text[encoded_up_to:], target=False)
    return input_ids, loss_mask
