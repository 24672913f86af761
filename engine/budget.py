"""Budget forcing: the per-sequence state machine of DESIGN.md's contract.

Applied before each new token: cap (splice the end delimiter), suppress (mask the end-of-thinking
ids), ignore (drop the model's end of thinking and splice `ignore_str`), end. The cap is hard.
"""
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from engine.text import check_unicode


SPLIT_CONTEXT = 4  # tokens before a split token that its re-encoded parts are decoded after, to compare


class Phase(Enum):
    THINKING = "thinking"
    ANSWER = "answer"
    DONE = "done"


@dataclass(frozen=True)
class ThinkingBudget:
    """How long a request thinks. Validated when built, so a bad budget raises before `generate`."""

    min_tokens: int = 0
    max_tokens: int | None = None
    num_ignore: int = 0
    ignore_str: str = "Wait"
    final_answer_str: str | None = None
    max_answer_tokens: int | None = None
    suppress: bool = False

    def __post_init__(self):
        for name in ("min_tokens", "max_tokens", "num_ignore", "max_answer_tokens"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"ThinkingBudget.{name} must be a non-negative integer, got {value!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"ThinkingBudget.min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})"
            )
        if not isinstance(self.ignore_str, str):
            raise ValueError(f"ThinkingBudget.ignore_str must be a string, got {self.ignore_str!r}")
        if self.can_ignore and not self.ignore_str:
            raise ValueError(
                "ThinkingBudget.ignore_str must be a non-empty string when an end of thinking can be ignored "
                f"(num_ignore={self.num_ignore}, min_tokens={self.min_tokens}), got {self.ignore_str!r}"
            )
        if not isinstance(self.suppress, bool):
            raise ValueError(f"ThinkingBudget.suppress must be True or False, got {self.suppress!r}")
        if self.final_answer_str is not None and not isinstance(self.final_answer_str, str):
            raise ValueError(f"ThinkingBudget.final_answer_str must be a string or None, got {self.final_answer_str!r}")
        check_unicode(self.ignore_str, "ThinkingBudget.ignore_str")
        check_unicode(self.final_answer_str or "", "ThinkingBudget.final_answer_str")

    @property
    def can_ignore(self) -> bool:
        return self.num_ignore > 0 or self.min_tokens > 0


@dataclass(frozen=True, slots=True)
class BudgetTokens:
    """A budget resolved against one tokenizer and think format.

    The end of thinking is either one token (`end_ids`: the format's end marker when it is a single
    special token, plus EOS unless ignored), caught at sampling, or a marker spelled over several
    tokens (`marker`), caught on the decoded text of the thinking's tail.
    """

    end_ids: frozenset[int]
    marker: str | None  # the end marker's text when it is not one token
    delimiter: tuple[int, ...]  # the full end delimiter, as spliced
    delimiter_text: str
    final_answer: tuple[int, ...]  # tokens of final_answer_str (empty when unset)
    ignore: tuple[int, ...]  # tokens of ignore_str
    decode: Callable[[list[int]], str]
    encode: Callable[[str], list[int]]


@dataclass(slots=True)
class BudgetState:
    """One sequence's phase and counters. Indices count output tokens (after the prompt).

    While THINKING every output token is a thinking token (dropped ends are removed), so the
    thinking count is the output length; afterwards it is `thinking_end`. The delimiter and any
    final-answer splice fill [thinking_end, answer_start).
    """

    budget: ThinkingBudget
    tokens: BudgetTokens
    phase: Phase = Phase.THINKING
    ignores_used: int = 0
    thinking_end: int | None = None
    answer_start: int | None = None

    def count(self, num_output: int) -> int:
        return num_output if self.thinking_end is None else min(self.thinking_end, num_output)

    def masked_ids(self, num_output: int) -> frozenset[int]:
        """Ids to mask to -inf before sampling the next token (rule 3)."""
        if self.phase is Phase.THINKING and self.budget.suppress and num_output < self.budget.min_tokens:
            return self.tokens.end_ids
        return frozenset()

    def start(self, output: list[int]) -> None:
        """Before the first sample: a zero cap ends thinking at once."""
        self._cap_if_due(output)

    def accept(self, output: list[int], token: int) -> tuple[int, bool]:
        """Apply a sampled `token` to `output` in place (append, drop or replace). Returns the first output
        index that changed, so the caller knows which cached positions to recompute, and whether the
        sampled token stayed in the output as itself (not dropped, not replaced by a splice)."""
        first_changed = len(output)
        if self.phase is not Phase.THINKING:
            output.append(token)
            return first_changed, True
        if token in self.tokens.end_ids:
            return self._on_end(output, len(output), spelled=False)
        output.append(token)
        spelled = self._spelled_marker(output)
        if spelled is not None:
            start, edited = spelled
            changed, kept = self._on_end(output, start, spelled=True)
            return (changed, kept) if edited is None else (min(changed, edited), False)
        edited = self._cap_if_due(output)
        return (first_changed, True) if edited is None else (edited, False)

    def _on_end(self, output: list[int], end: int, spelled: bool) -> tuple[int, bool]:
        """The model ended thinking at output index `end` (its marker tokens, if spelled, run to the end)."""
        b, ignore = self.budget, self.tokens.ignore
        if self.ignores_used < b.num_ignore or end < b.min_tokens:
            del output[end:]
            if b.max_tokens is not None and end + len(ignore) > b.max_tokens:  # rule 8: the cap wins
                self._end_thinking(output, end, [*self.tokens.delimiter, *self.tokens.final_answer])
                return end, False
            self.ignores_used += 1
            output.extend(ignore)
            edited = self._cap_if_due(output)
            return end if edited is None else min(end, edited), False
        if spelled:  # the model's own spelling stays
            self.phase, self.thinking_end, self.answer_start = Phase.ANSWER, end, len(output)
            return len(output) - 1, True
        self._end_thinking(output, end, list(self.tokens.delimiter))
        return end, False

    def _cap_if_due(self, output: list[int]) -> int | None:
        """Splice the end when the cap is reached; returns the index of an edit before the output's end (a
        token split where a partly spelled marker begins), else None."""
        cap = self.budget.max_tokens
        if cap is None or len(output) < cap:
            return None
        start, rest, edited = self._partial_delimiter(output)
        self._end_thinking(output, start, [*rest, *self.tokens.final_answer])
        return edited

    def _end_thinking(self, output: list[int], thinking_end: int, spliced: list[int]) -> None:
        output.extend(spliced)
        self.phase, self.thinking_end, self.answer_start = Phase.ANSWER, thinking_end, len(output)

    def _partial_delimiter(self, output: list[int]) -> tuple[int, list[int], int | None]:
        """Where the delimiter starts, what is left to splice, and the index of an edit (see _split_at) when
        thinking already ends with its first part: as token ids for a one-token marker, as text for a
        spelled one."""
        delimiter = self.tokens.delimiter
        if self.tokens.marker is None:
            k = _emitted_prefix(output, delimiter)
            return len(output) - k, list(delimiter[k:]), None
        text = self.tokens.delimiter_text
        tail_ids = output[-len(text.encode()):]
        tail = self.tokens.decode(tail_ids)
        k = next((k for k in range(min(len(text) - 1, len(tail)), 0, -1) if tail.endswith(text[:k])), 0)
        if k == 0:
            return len(output), list(delimiter), None
        start, edited = self._split_at(output, tail_ids, len(tail) - k)
        return start, self.tokens.encode(text[k:]), edited

    def _spelled_marker(self, output: list[int]) -> tuple[int, int | None] | None:
        """When the last token completes the end marker: the output index where the marker starts, and the
        index of an edit (see _split_at) or None."""
        marker = self.tokens.marker
        if marker is None:
            return None
        tail_ids = output[-(len(marker.encode()) + 1):]
        tail = self.tokens.decode(tail_ids)
        before = len(self.tokens.decode(tail_ids[:-1]))
        at = tail.find(marker, max(0, before - len(marker) + 1))
        if at < 0:
            return None
        return self._split_at(output, tail_ids, at)

    def _split_at(self, output: list[int], tail_ids: list[int], at: int) -> tuple[int, int | None]:
        """The output index where character `at` of decode(tail_ids) (the output's last tokens) begins. When
        it falls inside a token (".<" then "/think>"), that token is re-encoded as the text before and the
        text from `at`, so the text before a marker stays in thinking instead of going with the marker.
        Only whitespace before it (" </") goes with the marker, in the token the model wrote. Returns that
        index and the split token's index (None when no token was split: the character starts a token,
        only whitespace precedes it, the two parts do not decode to the same text after the tokens before
        them, or the text before the marker would take thinking past the cap)."""
        decode, encode = self.tokens.decode, self.tokens.encode
        i = _token_at_char(tail_ids, at, decode)
        head, through = decode(tail_ids[:i]), decode(tail_ids[: i + 1])
        text, cut = through[len(head):], at - len(head)
        pos = len(output) - len(tail_ids) + i
        if cut <= 0 or not text[:cut].strip() or not through.startswith(head):
            return pos, None
        left, right = encode(text[:cut]), encode(text[cut:])
        cap = self.budget.max_tokens
        context = output[max(0, pos - SPLIT_CONTEXT) : pos]  # a piece's text can depend on what precedes it
        if (not left or not right or decode([*context, *left, *right]) != decode([*context, *output[pos : pos + 1]])
                or (cap is not None and pos + len(left) > cap)):  # the kept text would push thinking past the cap
            return pos, None
        after = output[pos + 1 :]
        del output[pos:]
        output.extend([*left, *right, *after])
        return pos + len(left), pos


def _token_at_char(token_ids: list[int], char: int, decode: Callable[[list[int]], str]) -> int:
    """Index of the token whose text holds character `char` of decode(token_ids)."""
    for i in range(len(token_ids)):
        if len(decode(token_ids[: i + 1])) > char:
            return i
    return len(token_ids) - 1


def _emitted_prefix(tokens: list[int], delimiter: tuple[int, ...]) -> int:
    """Length of the longest proper prefix of `delimiter` that `tokens` ends with."""
    for k in range(min(len(delimiter) - 1, len(tokens)), 0, -1):
        if tuple(tokens[-k:]) == delimiter[:k]:
            return k
    return 0
