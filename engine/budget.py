"""Budget forcing: the per-sequence state machine of DESIGN.md's contract.

Applied before each new token: cap (splice the end delimiter), suppress (mask the
end-of-thinking ids), ignore (drop a sampled end and splice `ignore_str`), end.
"""
from dataclasses import dataclass
from enum import Enum


class Phase(Enum):
    THINKING = "thinking"
    ANSWER = "answer"
    DONE = "done"


@dataclass(frozen=True)
class ThinkingBudget:
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
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"ThinkingBudget.{name} must be a non-negative integer, got {value!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"ThinkingBudget.min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})"
            )
        if self.num_ignore and not self.ignore_str:
            raise ValueError("ThinkingBudget.ignore_str must be non-empty when num_ignore > 0")


@dataclass(frozen=True, slots=True)
class BudgetTokens:
    """A budget resolved against one tokenizer and think format."""

    end_ids: frozenset[int]  # first token of the end delimiter, plus the EOS ids
    delimiter: tuple[int, ...]  # the end delimiter
    final_answer: tuple[int, ...]  # tokens of final_answer_str (empty when unset)
    ignore: tuple[int, ...]  # tokens of ignore_str


@dataclass(slots=True)
class BudgetState:
    budget: ThinkingBudget
    tokens: BudgetTokens
    phase: Phase = Phase.THINKING
    count: int = 0
    ignores_used: int = 0
    answer_tokens: int = 0
    thinking_end: int | None = None  # output index where the delimiter starts
    answer_start: int | None = None  # output index where the answer starts

    def masked_ids(self) -> frozenset[int]:
        """Ids to mask to -inf before sampling the next token (rule 3)."""
        if self.phase is Phase.THINKING and self.budget.suppress and self.count < self.budget.min_tokens:
            return self.tokens.end_ids
        return frozenset()

    def start(self, output: list[int]) -> list[int]:
        """Tokens to splice before the first sample (a zero cap ends thinking at once)."""
        return self._cap_if_due(output, [])

    def accept(self, token: int, output: list[int]) -> list[int]:
        """The tokens that a sampled `token` turns into; `output` is every token so far after the prompt."""
        if self.phase is Phase.ANSWER:
            self.answer_tokens += 1
            return [token]
        if token not in self.tokens.end_ids:
            self.count += 1
            return self._cap_if_due(output, [token])
        if self.ignores_used < self.budget.num_ignore or self.count < self.budget.min_tokens:
            self.ignores_used += 1
            self.count += len(self.tokens.ignore)
            return self._cap_if_due(output, list(self.tokens.ignore))
        return self._end_thinking(len(output), list(self.tokens.delimiter))

    def _cap_if_due(self, output: list[int], appended: list[int]) -> list[int]:
        cap = self.budget.max_tokens
        if cap is None or self.count < cap:
            return appended
        sofar = output + appended
        rest = self.tokens.delimiter[_emitted_prefix(sofar, self.tokens.delimiter):]
        start = len(sofar) - (len(self.tokens.delimiter) - len(rest))
        self.count -= len(self.tokens.delimiter) - len(rest)
        return appended + self._end_thinking(start, list(rest) + list(self.tokens.final_answer))

    def _end_thinking(self, delimiter_start: int, spliced: list[int]) -> list[int]:
        self.phase = Phase.ANSWER
        self.thinking_end = delimiter_start
        self.answer_start = delimiter_start + len(self.tokens.delimiter)
        return spliced


def _emitted_prefix(tokens: list[int], delimiter: tuple[int, ...]) -> int:
    """Length of the longest proper prefix of `delimiter` that `tokens` ends with."""
    for k in range(min(len(delimiter) - 1, len(tokens)), 0, -1):
        if tuple(tokens[-k:]) == delimiter[:k]:
            return k
    return 0
