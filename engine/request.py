"""A request: one prompt and its params, and the sequences it runs: one, `n` samples forked after the
prompt, or the branches of a budget sweep."""
from dataclasses import dataclass

from engine.budget import ThinkingBudget
from engine.sampling import SamplingParams
from engine.sequence import Sequence


@dataclass(slots=True)
class Request:
    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    sweep: list[ThinkingBudget] | None = None  # a sweep's settings, by index

    @property
    def is_finished(self) -> bool:
        for seq in self.seqs:  # a loop, not all() and any(): asked of every pending request every step
            if not seq.is_finished or seq.fork_seeds:
                return False
        return True

    def samples(self) -> list[Sequence]:
        """The `n` samples in order."""
        return sorted(self.seqs, key=lambda seq: seq.sample_index)

    def seq_of_setting(self, index: int) -> Sequence:
        return next(seq for seq in self.seqs if index in seq.settings)
