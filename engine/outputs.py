"""From sequence state to what the caller sees: the final `Output`, and stream deltas that add up to it.

A sequence's visible output splits at two token indices into thinking, the delimiter region (the end
delimiter and any final-answer splice: neither thinking nor answer text) and the sampled answer. All
texts are cut from one decode of the visible ids, so they fit together exactly, and a stop string
cuts `text` and `answer_text` at the same occurrence.
"""
from dataclasses import dataclass

from engine.budget import Phase
from engine.sequence import Sequence
from engine.stops import first_stop, partial_suffix
from engine.tokenizer import Tokenizer


@dataclass(slots=True)
class Output:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # every token after the prompt, spliced ones included
    text: str  # thinking + delimiter (+ final-answer splice) + answer
    thinking_text: str
    answer_text: str  # sampled answer tokens only
    num_thinking_tokens: int
    num_answer_tokens: int  # sampled answer tokens (no delimiter, no final-answer splice, no stop token)
    num_ignores_used: int
    finish_reason: str | None  # "stop", "length", "abort", "error"; None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None
    sample_index: int = 0  # which of the request's `n` samples
    logprobs: list[dict[int, float] | None] | None = None  # per token in token_ids (None: spliced)
    cumulative_logprob: float | None = None  # sum over the sampled tokens
    prompt_logprobs: list[dict[int, float] | None] | None = None  # per prompt token (None: not scored, as the first)


def error_output(prompt: str | list[int], message: str, sample_index: int = 0) -> Output:
    """The Output of a request that could not run (finish_reason "error", `message` in `error`); its prompt
    ids are the prompt's when it was given as ids."""
    prompt_token_ids = list(prompt) if isinstance(prompt, list) else []
    return Output(request_id=-1, prompt_token_ids=prompt_token_ids, token_ids=[], text="", thinking_text="",
                  answer_text="", num_thinking_tokens=0, num_answer_tokens=0, num_ignores_used=0,
                  finish_reason="error", error=message, sample_index=sample_index)


@dataclass(slots=True)
class StreamDelta:
    """Text added since the previous delta. "thinking" deltas add up to `Output.thinking_text`; "answer"
    deltas to the rest of `Output.text`: the delimiter and any final-answer splice, then the answer."""

    phase: str  # "thinking" or "answer"
    text: str
    token_ids: list[int]  # the ids whose text this is (a final stop token comes with the last delta)
    output: Output | None = None  # set on the last delta, when the request has finished (a thinking delta
    # when it finished before thinking ended: no answer phase began)
    setting: int = 0  # in a streamed sweep, the budget setting it belongs to


class IncrementalDecoder:
    """The text of a growing list of token ids, one delta at a time, decoding only a short window.

    Both decodes of a step start at the same token, so tokenizers that drop a leading space at the
    start of a decode give the same delta; a split multi-byte character is held back until complete.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.prefix = self.read = 0  # the window starts at `prefix`; text up to `read` is handed out

    def delta(self, token_ids: list[int], final: bool = False) -> str:
        """The text `token_ids` add; with `final` no later id can complete a split character (the text
        ends there for good: thinking that has ended), so it is handed out as it decodes."""
        if len(token_ids) <= self.read:
            return ""
        before = self.tokenizer.decode(token_ids[self.prefix : self.read])
        after = self.tokenizer.decode(token_ids[self.prefix :])
        if after.endswith("\ufffd") and not final:
            return ""
        self.prefix, self.read = self.read, len(token_ids)
        return after[len(before) :]


def make_output(seq: Sequence, tokenizer: Tokenizer, request_id: int, setting: int | None = None) -> Output:
    """The Output of a sequence (under one of its sweep settings when given)."""
    visible, _, answer_start = _visible_bounds(seq)
    text = tokenizer.decode(visible)
    thinking_chars, answer_chars = phase_chars(seq, tokenizer)
    if isinstance(seq.stop_reason, str):
        hit = first_stop(text[answer_chars:], seq.params.stop_strings)
        text = text[: answer_chars + hit[0]]
    budget = seq.budget if setting is None else seq.settings[setting]
    return Output(
        request_id=request_id,
        prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
        token_ids=seq.output_ids,
        text=text,
        thinking_text=text[:thinking_chars],
        answer_text=text[answer_chars:],
        num_thinking_tokens=0 if budget is None else budget.count(seq.num_output_tokens),
        num_answer_tokens=max(0, len(visible) - answer_start),
        num_ignores_used=0 if budget is None else budget.ignores_used,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
        error=seq.error,
        sample_index=seq.sample_index,
        logprobs=None if seq.logprobs is None else list(seq.logprobs),
        cumulative_logprob=None if seq.logprobs is None else sum(  # the sampled tokens that stayed (budget edits drop some)
            entry[token] for token, entry in zip(seq.output_ids, seq.logprobs) if entry is not None),
        prompt_logprobs=seq.prompt_logprob_entries,
    )


def _visible_bounds(seq: Sequence) -> tuple[list[int], int, int]:
    """The visible output ids and, in them, where thinking ends and the answer starts (the end while unknown)."""
    visible = seq.output_ids[: seq.num_visible_tokens]
    thinking_end = len(visible) if seq.thinking_end is None else seq.thinking_end
    answer_start = len(visible) if seq.answer_start is None else min(seq.answer_start, len(visible))
    return visible, thinking_end, answer_start


def phase_chars(seq: Sequence, tokenizer: Tokenizer) -> tuple[int, int]:
    """Where the delimiter region starts and where the answer starts, in characters of the visible text."""
    visible, thinking_end, answer_start = _visible_bounds(seq)
    return len(tokenizer.decode(visible[:thinking_end])), len(tokenizer.decode(visible[:answer_start]))


class OutputStream:
    """Turns one sequence's updates into deltas, holding back what may still change: thinking text that
    could be the start of a spelled end marker, answer text that could be the start of a stop string.

    A sweep setting's stream follows the setting: when a fork takes the setting over, `seq` is pointed at
    the fork (`Request.seq_of_setting`), which holds the same tokens, so what was handed out stays valid."""

    def __init__(self, seq: Sequence, tokenizer: Tokenizer, request_id: int, setting: int | None = None):
        self.seq, self.tokenizer, self.request_id, self.setting = seq, tokenizer, request_id, setting
        self.decoder = IncrementalDecoder(tokenizer)
        self.sent_ids = 0  # output ids handed out
        self.sent_chars = {"thinking": 0, "answer": 0}
        self.done = False

    def follow(self, request) -> None:
        """A sweep setting's stream: point at the sequence that carries the setting now (no-op otherwise)."""
        if self.setting is not None:
            self.seq = request.seq_of_setting(self.setting)

    def deltas(self) -> list[StreamDelta]:
        if self.done:
            return []
        if self.seq.is_finished:
            return self._final()
        seq, out = self.seq, []
        output = seq.output_ids
        stable = len(output) - self._held_back(output)
        thinking_end = stable if seq.thinking_end is None else min(seq.thinking_end, stable)
        for phase, end in (("thinking", thinking_end), ("answer", stable)):
            if end > self.sent_ids:
                # thinking that has ended is final: a character its last token leaves split stays split
                final = phase == "thinking" and end == seq.thinking_end
                text = self.decoder.delta(output[:end], final)
                if not text and not final:  # a split character: wait for the rest, keeping phases apart
                    break
                out.append(StreamDelta(phase, text, output[self.sent_ids : end], setting=self.setting or 0))
                self.sent_ids = end
                self.sent_chars[phase] += len(text)
        return out

    def _held_back(self, output: list[int]) -> int:
        """Trailing ids whose text could still become an end marker or a stop string."""
        seq = self.seq
        if seq.phase is Phase.THINKING:
            marker = seq.budget.tokens.marker
            strings, start = ((marker,) if marker else ()), 0
        else:
            strings, start = seq.params.stop_strings, seq.answer_start
        if not strings:
            return 0
        tail_ids = output[max(start, len(output) - max(len(s.encode()) for s in strings)) :]
        tail = self.tokenizer.decode(tail_ids)
        held_chars = partial_suffix(tail, strings)
        held = 0
        while held < len(tail_ids) and len(self.tokenizer.decode(tail_ids[: len(tail_ids) - held])) > len(tail) - held_chars:
            held += 1
        return held

    def _final(self) -> list[StreamDelta]:
        """Everything not yet handed out, the text now final (stop string cut, split characters flushed)."""
        self.done = True
        output = make_output(self.seq, self.tokenizer, self.request_id, self.setting)
        ids = output.token_ids[self.sent_ids :]
        end = self.seq.thinking_end
        cut = len(ids) if end is None else max(0, end - self.sent_ids)
        deltas, setting = [], self.setting or 0
        thinking = output.thinking_text[self.sent_chars["thinking"] :]
        if end is None:  # it finished while thinking: no answer phase began, the last delta is thinking's
            return [StreamDelta("thinking", thinking, ids, output=output, setting=setting)]
        if thinking or ids[:cut]:
            deltas.append(StreamDelta("thinking", thinking, ids[:cut], setting=setting))
        answer = output.text[len(output.thinking_text) + self.sent_chars["answer"] :]
        deltas.append(StreamDelta("answer", answer, ids[cut:], output=output, setting=setting))
        return deltas
