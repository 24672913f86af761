"""What a finished (or streaming) request hands back to the caller."""
from dataclasses import dataclass

from engine.sequence import Sequence
from engine.tokenizer import Tokenizer


@dataclass(slots=True)
class Output:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # every token after the prompt, spliced ones included
    text: str
    thinking_text: str
    answer_text: str
    num_thinking_tokens: int
    num_ignores_used: int
    finish_reason: str | None  # "stop", "length", "abort", "error"; None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None


@dataclass(slots=True)
class StreamDelta:
    phase: str  # "thinking" or "answer"
    text: str
    token_ids: list[int]  # ids appended since the previous delta (spliced ones included)
    output: Output | None = None  # set on the last delta, when the request has finished


class IncrementalDecoder:
    """The text of a growing list of token ids, one delta at a time, decoding only a short window.

    Both decodes of a step start at the same token, so tokenizers that drop a leading space at the
    start of a decode give the same delta; a split multi-byte character is held back until complete.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.prefix = self.read = 0  # the window starts at `prefix`; text up to `read` is handed out

    def delta(self, token_ids: list[int]) -> str:
        if len(token_ids) <= self.read:
            return ""
        before = self.tokenizer.decode(token_ids[self.prefix : self.read])
        after = self.tokenizer.decode(token_ids[self.prefix :])
        if after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(token_ids)
        return after[len(before) :]


def _visible_ids(seq: Sequence) -> list[int]:
    out = seq.output_ids
    return out[:-1] if isinstance(seq.stop_reason, int) else out  # a final stop token is not text


def phase_token_ids(seq: Sequence) -> tuple[list[int], list[int]]:
    """(thinking ids, answer ids) of the visible output."""
    visible = _visible_ids(seq)
    budget = seq.budget
    if budget is None:
        return [], visible
    end = len(visible) if budget.thinking_end is None else budget.thinking_end
    return visible[:end], [] if budget.answer_start is None else visible[budget.answer_start :]


def make_output(seq: Sequence, tokenizer: Tokenizer) -> Output:
    visible, budget = _visible_ids(seq), seq.budget
    thinking, answer = phase_token_ids(seq)
    answer_text = tokenizer.decode(answer)
    text = tokenizer.decode(visible)
    if isinstance(seq.stop_reason, str):
        answer_text = answer_text[: answer_text.find(seq.stop_reason)]
        text = text[: text.rfind(seq.stop_reason)]
    return Output(
        request_id=seq.seq_id,
        prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
        token_ids=list(seq.output_ids),
        text=text,
        thinking_text=tokenizer.decode(thinking),
        answer_text=answer_text,
        num_thinking_tokens=0 if budget is None else budget.count,
        num_ignores_used=0 if budget is None else budget.ignores_used,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
        error=seq.error,
    )
