"""One request's state: its tokens, its KV blocks, its budget phase."""
from dataclasses import dataclass, field
from enum import Enum

import torch

from engine.budget import BudgetState, Phase
from engine.sampling import SamplingParams


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
    generator: torch.Generator
    budget: BudgetState | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    num_cached_tokens: int = 0  # tokens whose KV is in the cache
    block_table: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncached_tokens(self) -> int:
        return len(self.token_ids) - self.num_cached_tokens

    @property
    def phase(self) -> Phase:
        return Phase.ANSWER if self.budget is None else self.budget.phase

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
