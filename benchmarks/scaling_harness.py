"""What every scaling method shares: prompts, budgets and sampling params for one model, and sample rows."""
import zlib
from dataclasses import dataclass, replace

from benchmarks.evalsets import EvalItem, prompt_text
from benchmarks.grading import thinking_ended, verdict
from engine import LLM, Output, SamplingParams, ThinkingBudget
from engine.tokenizer import get_think_format

AUTO_ANSWER_ROOM = 100  # s1's "auto" cap leaves this many tokens of the context for the answer


@dataclass(frozen=True)
class Sample:
    """One generated continuation, as a sample row needs it (an engine Output, or one pieced together)."""

    text: str
    thinking_text: str
    answer_text: str
    thinking_tokens: int
    answer_tokens: int
    ignores_used: int
    finish_reason: str | None
    extra: tuple[tuple[str, object], ...] = ()  # method-specific fields: tries, score, sample_index

    @classmethod
    def of(cls, output: Output, **extra) -> "Sample":
        return cls(output.text, output.thinking_text, output.answer_text, output.num_thinking_tokens,
                   output.num_answer_tokens, output.num_ignores_used, output.finish_reason, tuple(extra.items()))

    def with_extra(self, **extra) -> "Sample":
        return replace(self, extra=self.extra + tuple(extra.items()))

    @property
    def ended_thinking(self) -> bool:
        return thinking_ended(self.text, self.thinking_text, self.finish_reason, self.answer_tokens)


@dataclass(frozen=True)
class Harness:
    llm: LLM
    think_format: str = "s1"
    system: str | None = None
    max_tokens: int | None = None  # per continuation; None: the context left after the prompt
    max_answer_tokens: int | None = None
    final_answer_str: str | None = "Final Answer:"
    ignore_str: str = "Wait"
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    sample_temperature: float = 1.0  # rejection sampling, parallel samples, best-of-N
    seed: int = 0

    def prompt(self, item: EvalItem, instruction: str | None = None) -> list[int]:
        """The chat prompt of a question (plus an instruction line), opened for thinking."""
        question = prompt_text(item) + (f"\n\n{instruction}" if instruction else "")
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": question}]
        return self.llm.chat_prompt(messages, SamplingParams(budget=ThinkingBudget(), think_format=self.think_format))

    def auto_cap(self, prompt: list[int]) -> int:
        """s1's "auto" thinking cap: the continuation's room (context - prompt, or max_tokens when less) -
        delimiters - 100 (or max_answer_tokens when less), so that a run without a cap still ends thinking
        and answers."""
        spliced = self.llm.budget_tokens(SamplingParams(budget=self.budget(None), think_format=self.think_format))
        room = self.room(prompt) - len(spliced.delimiter) - len(spliced.final_answer)
        return max(0, room - self.answer_room())

    def answer_room(self) -> int:
        """Tokens the "auto" cap leaves for the answer: 100, or max_answer_tokens when fewer."""
        return AUTO_ANSWER_ROOM if self.max_answer_tokens is None else min(AUTO_ANSWER_ROOM, self.max_answer_tokens)

    def room(self, prompt: list[int]) -> int:
        """Tokens a continuation of this prompt may take: the context left, or max_tokens when less."""
        left = self.llm.max_model_len - len(prompt)
        return left if self.max_tokens is None else min(self.max_tokens, left)

    def budget(self, max_tokens: int | None, num_ignore: int = 0) -> ThinkingBudget:
        return ThinkingBudget(max_tokens=max_tokens, num_ignore=num_ignore, ignore_str=self.ignore_str,
                              final_answer_str=self.final_answer_str, max_answer_tokens=self.max_answer_tokens)

    def params(self, prompt: list[int], item: EvalItem, budget: ThinkingBudget | None = None,
               sampled: bool = False, **overrides) -> SamplingParams:
        """Params for one prompt: the harness's sampling (or its sampling temperature), seeded per question."""
        return SamplingParams(
            temperature=self.sample_temperature if sampled else self.temperature, top_p=self.top_p,
            top_k=self.top_k, max_tokens=max(1, self.room(prompt)), seed=self.question_seed(item), budget=budget,
            think_format=self.think_format, **overrides)

    def question_seed(self, item: EvalItem) -> int:
        """A seed per question that does not depend on which questions ran before (so a resume repeats it)."""
        return (self.seed * 1_000_003 + zlib.crc32(item.id.encode())) % 2**31

    def row(self, item: EvalItem, sample: Sample, max_thinking_tokens: int | None) -> dict:
        """A sample row; `max_thinking_tokens` is the run's token limit (its cap, or the one the prompt states)."""
        return {
            "id": item.id, "question": item.question, "reference": item.answer, "output": sample.text,
            "thinking_text": sample.thinking_text, "answer_text": sample.answer_text,
            **self.graded(item, sample.text, sample.ended_thinking),
            "thinking_tokens": sample.thinking_tokens, "answer_tokens": sample.answer_tokens,
            "ignores_used": sample.ignores_used, "finish_reason": sample.finish_reason,
            "max_thinking_tokens": max_thinking_tokens, **dict(sample.extra),
        }

    def graded(self, item: EvalItem, text: str, ended_thinking: bool) -> dict:
        """A sample's grading fields (benchmarks.grading.verdict)."""
        return verdict(text, item.answer, choices=item.choices, think_format=self.think_format,
                       ended_thinking=ended_thinking)

    def think_end(self) -> str:
        return get_think_format(self.think_format).think_end
