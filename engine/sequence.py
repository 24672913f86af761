"""One sequence's state: its tokens, its KV blocks, its budget phase, how it finished."""
from dataclasses import dataclass, field
from enum import Enum

from engine.budget import BudgetState, Phase
from engine.penalties import TokenCounts
from engine.sampling import SamplingParams


class OutputView:
    """The output part of a sequence's token list, edited in place (no copy of a long thinking)."""

    __slots__ = ("tokens", "offset")

    def __init__(self, tokens: list[int], offset: int):
        self.tokens, self.offset = tokens, offset

    def __len__(self) -> int:
        return len(self.tokens) - self.offset

    def __getitem__(self, index: slice) -> list[int]:
        start, stop, _ = index.indices(len(self))
        return self.tokens[self.offset + start : self.offset + stop]

    def __delitem__(self, index: slice) -> None:
        start, stop, _ = index.indices(len(self))
        del self.tokens[self.offset + start : self.offset + stop]

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def extend(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    seq_id: int
    token_ids: list[int]  # prompt + output, spliced tokens included
    num_prompt_tokens: int
    params: SamplingParams
    seed: int  # its random stream (engine.sampling.uniform): draw i is uniform(seed, i)
    request_id: int = 0
    sample_index: int = 0
    # the budget settings this sequence carries, by index: one for a plain request, several in a sweep
    # until their decisions differ (then the sequence forks); empty without a budget
    settings: dict[int, BudgetState] = field(default_factory=dict)
    fork_seeds: list[int] = field(default_factory=list)  # `n` samples: seeds of the forks at the first sample
    logprobs: list[dict[int, float] | None] | None = None  # per output token when asked for; None if spliced
    # per prompt token from prompt_logprobs_from on, as computed, when asked for (params.prompt_logprobs)
    prompt_logprobs: list[dict[int, float]] | None = None
    prompt_logprobs_from: int = 1
    # set when a sequence that owes prompt logprobs is already done at submission (a zero budget's splice
    # filled its length): it runs its prefill without sampling, then finishes with this reason
    finish_after_prefill: str | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    num_cached_tokens: int = 0  # tokens whose KV is in the cache
    block_table: list[int] = field(default_factory=list)
    block_keys: list[int] = field(default_factory=list)  # prefix-cache keys of its leading full blocks
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None
    num_draws: int = 0  # tokens sampled into it: the index of its next draw
    token_counts: TokenCounts | None = None  # for penalties (engine.penalties), made at its first penalized step

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def budget(self) -> BudgetState | None:
        """The budget state (in a sweep, every setting a sequence carries is in the same state)."""
        settings = self.settings
        return next(iter(settings.values())) if settings else None

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def output(self) -> OutputView:
        return OutputView(self.token_ids, self.num_prompt_tokens)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_logit_span(self) -> tuple[int, int]:
        """The positions [first, end) whose logits still owe a prompt logprob (position p's logits score
        token p + 1); empty when none do."""
        if self.prompt_logprobs is None:
            return 0, 0
        return self.prompt_logprobs_from - 1 + len(self.prompt_logprobs), self.num_prompt_tokens - 1

    @property
    def prompt_logprob_entries(self) -> list[dict[int, float] | None] | None:
        """Per prompt token, its entry (None before prompt_logprobs_from, as for the first token)."""
        return None if self.prompt_logprobs is None else [None] * self.prompt_logprobs_from + self.prompt_logprobs

    @property
    def num_uncached_tokens(self) -> int:
        return len(self.token_ids) - self.num_cached_tokens

    @property
    def phase(self) -> Phase:
        if self.is_finished:
            return Phase.DONE
        return Phase.ANSWER if self.budget is None else self.budget.phase

    @property
    def thinking_end(self) -> int | None:
        """Output index where thinking ends (None while thinking; 0 without a budget)."""
        return 0 if self.budget is None else self.budget.thinking_end

    @property
    def answer_start(self) -> int | None:
        """Output index of the first sampled answer token, after the delimiter and any final-answer splice."""
        return 0 if self.budget is None else self.budget.answer_start

    @property
    def num_visible_tokens(self) -> int:
        """Output tokens that make text: all but a final stop token or EOS."""
        return self.num_output_tokens - isinstance(self.stop_reason, int)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
