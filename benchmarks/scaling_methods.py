"""s1's test-time scaling methods. Each plans one question under the settings it is asked for: it yields the
generations it needs (see benchmarks.scaling_jobs, which batches many questions' plans in the engine) and
returns the question's sample rows per setting (one row, or one per sample for the parallel methods)."""
import math
from dataclasses import dataclass, replace

from benchmarks.evalsets import EvalItem
from benchmarks.scaling_harness import Harness, Sample
from benchmarks.scaling_jobs import Job, Plan
from benchmarks.scaling_scorers import Scorer
from engine import Output

REJECTION_ROUND = 4  # samples drawn per round of rejection sampling (sample i = seed + i, so rounds change nothing)


class Method:
    """A named method whose settings each give one run; `plan` does one question under some of its settings."""

    name: str
    bound_on = "thinking_tokens"  # what `bound` limits: "thinking_tokens" or "steps"
    rows_per_question = 1
    uses_auto_cap = True  # some setting runs under the "auto" thinking cap
    forced_caps: tuple[int, ...] = ()  # thinking caps it forces besides "auto"

    def settings(self) -> list[str]:
        raise NotImplementedError

    def bound(self, setting: str) -> int | None:
        """The limit a run is held to (its cap, or the budget the prompt states); None when it has none."""
        return None

    def plan(self, h: Harness, item: EvalItem, settings: list[str]) -> Plan:
        raise NotImplementedError


def cap_for(h: Harness, prompt: list[int], setting: str) -> int:
    return h.auto_cap(prompt) if setting == "auto" else int(setting)


@dataclass(frozen=True)
class BudgetForcing(Method):
    """Thinking caps: at the cap the end delimiter (and final-answer string) is spliced. One sweep per question."""

    caps: tuple[str, ...]  # numbers or "auto"
    name: str = "budget"

    def settings(self) -> list[str]:
        return list(self.caps)

    def bound(self, setting: str) -> int | None:
        return None if setting == "auto" else int(setting)

    @property
    def uses_auto_cap(self) -> bool:
        return "auto" in self.caps

    @property
    def forced_caps(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.caps if c != "auto")

    def plan(self, h: Harness, item: EvalItem, settings: list[str]) -> Plan:
        prompt = h.prompt(item)
        caps = [cap_for(h, prompt, s) for s in settings]
        [outputs] = yield [Job(prompt, h.params(prompt, item), [h.budget(c) for c in caps])]
        return {s: [h.row(item, Sample.of(o), c)] for s, c, o in zip(settings, caps, outputs)}


@dataclass(frozen=True)
class Extension(Method):
    """Ignore the model's end of thinking `num_ignore` times, splicing the ignore string, under the auto cap.
    One sweep per question."""

    num_ignores: tuple[int, ...]
    name: str = "ignore"

    def settings(self) -> list[str]:
        return [str(k) for k in self.num_ignores]

    def plan(self, h: Harness, item: EvalItem, settings: list[str]) -> Plan:
        prompt = h.prompt(item)
        cap = h.auto_cap(prompt)
        [outputs] = yield [Job(prompt, h.params(prompt, item), [h.budget(cap, num_ignore=int(s)) for s in settings])]
        return {s: [h.row(item, Sample.of(o), cap)] for s, o in zip(settings, outputs)}


@dataclass(frozen=True)
class Conditional(Method):
    """The prompt states the budget ("Think for up to N tokens." / "... N steps."); with `forced`, thinking
    is also cut at N: by the engine's cap for tokens, or after the N-th step (a non-empty line), re-prompting
    with the cut thinking and the end delimiter, as s1's re-prefill loop does."""

    budgets: tuple[int, ...]
    unit: str  # "tokens" or "steps"
    forced: bool

    @property
    def name(self) -> str:
        return ("token" if self.unit == "tokens" else "step") + ("-forced" if self.forced else "")

    @property
    def bound_on(self) -> str:
        return "thinking_tokens" if self.unit == "tokens" else "steps"

    @property
    def uses_auto_cap(self) -> bool:
        return not self.forced or self.unit == "steps"

    @property
    def forced_caps(self) -> tuple[int, ...]:
        return self.budgets if self.forced and self.unit == "tokens" else ()

    def settings(self) -> list[str]:
        return [str(b) for b in self.budgets]

    def bound(self, setting: str) -> int:
        return int(setting)

    def plan(self, h: Harness, item: EvalItem, settings: list[str]) -> Plan:
        prompts = [h.prompt(item, f"Think for up to {s} {self.unit}.") for s in settings]
        caps = [int(s) if self.forced and self.unit == "tokens" else h.auto_cap(p) for s, p in zip(settings, prompts)]
        outputs = yield [Job(p, h.params(p, item, h.budget(c))) for p, c in zip(prompts, caps)]
        samples = [Sample.of(o) for [o] in outputs]
        if self.forced and self.unit == "steps":
            cuts = [step_cut(h, item, p, s, int(n)) for p, s, n in zip(prompts, samples, settings)]
            answers = iter((yield [cut.job for cut in cuts if cut is not None]))
            samples = [s if cut is None else cut.joined(next(answers)[0], s) for s, cut in zip(samples, cuts)]
        bounds = [int(s) if self.unit == "tokens" else c for s, c in zip(settings, caps)]  # the run's token limit
        return {s: [h.row(item, sample, b)] for s, sample, b in zip(settings, samples, bounds)}


@dataclass(frozen=True)
class StepCut:
    """A sample's thinking cut after its N-th step, the end delimiter forced, and the answer's generation."""

    thinking: str
    forced: str  # the end delimiter and final-answer string
    thinking_tokens: int
    job: Job

    def joined(self, answer: Output, sample: Sample) -> Sample:
        return Sample(self.thinking + self.forced + answer.text, self.thinking, answer.answer_text, self.thinking_tokens,
                      answer.num_answer_tokens, sample.ignores_used, answer.finish_reason, sample.extra)


def step_cut(h: Harness, item: EvalItem, prompt: list[int], sample: Sample, max_steps: int) -> StepCut | None:
    """The cut of a sample's thinking after `max_steps` non-empty lines, with the job that answers anew from
    there; None when it thought in fewer steps."""
    lines = sample.thinking_text.splitlines(keepends=True)
    nonempty = [i for i, line in enumerate(lines) if line.strip()]
    if len(nonempty) <= max_steps:
        return None
    thinking = "".join(lines[: nonempty[max_steps - 1] + 1])
    forced = h.think_end() + (h.final_answer_str or "")
    tokenizer = h.llm.tokenizer
    thinking_ids = tokenizer.encode_piece(thinking)
    context = prompt + thinking_ids + tokenizer.encode_piece(forced)
    params = h.params(context, item)
    if h.max_answer_tokens is not None:
        params = replace(params, max_tokens=min(params.max_tokens, h.max_answer_tokens))
    return StepCut(thinking, forced, len(thinking_ids), Job(context, params))


@dataclass(frozen=True)
class RejectionSampling(Method):
    """Sample at the sampling temperature (no forcing, the auto cap as a safety) until the thinking ends within
    the cap, up to `max_tries` samples; the row keeps the accepted (or last) sample and its number of tries.
    Only thinking the model ended itself fits: a sample the auto cap cut has no known length, so it fits no
    cap, not even one at or above the auto cap."""

    caps: tuple[int, ...]
    max_tries: int
    name: str = "rejection"

    def settings(self) -> list[str]:
        return [str(c) for c in self.caps]

    def bound(self, setting: str) -> int:
        return int(setting)

    def plan(self, h: Harness, item: EvalItem, settings: list[str]) -> Plan:
        prompt = h.prompt(item)
        auto = h.auto_cap(prompt)
        accepted: dict[str, Sample] = {}
        samples: list[Sample] = []
        while len(samples) < self.max_tries and len(accepted) < len(settings):
            n = min(REJECTION_ROUND, self.max_tries - len(samples))
            params = h.params(prompt, item, h.budget(auto), sampled=True, n=n)
            [outputs] = yield [Job(prompt, replace(params, seed=params.seed + len(samples)))]
            if outputs[0].finish_reason == "error":  # the prompt did not fit: nothing was sampled
                return {s: [h.row(item, Sample.of(outputs[0], tries=0, fits=False), int(s))] for s in settings}
            samples += [Sample.of(o) for o in outputs]
            for s in settings:
                fitting = [i for i, x in enumerate(samples)
                           if x.ended_thinking and x.thinking_tokens <= int(s) and x.thinking_tokens < auto]
                if s not in accepted and fitting:
                    accepted[s] = samples[fitting[0]].with_extra(tries=fitting[0] + 1, fits=True)
        last = samples[-1].with_extra(tries=len(samples), fits=False)
        return {s: [h.row(item, accepted.get(s, last), int(s))] for s in settings}


@dataclass(frozen=True)
class ParallelSampling(Method):
    """`n` samples per question (auto cap); the summary scores maj@k and pass@k over them. With a scorer,
    best-of-N: each sample also gets a score, and best@k picks the highest-scoring of the first k."""

    n: int
    scorer: Scorer | None = None

    @property
    def name(self) -> str:
        return "parallel" if self.scorer is None else "best-of-n"

    @property
    def rows_per_question(self) -> int:
        return self.n

    def settings(self) -> list[str]:
        return [f"n{self.n}"]

    def plan(self, h: Harness, item: EvalItem, settings: list[str]) -> Plan:
        prompt = h.prompt(item)
        cap = h.auto_cap(prompt)
        logprobs = None if self.scorer is None else 0
        [outputs] = yield [Job(prompt, h.params(prompt, item, h.budget(cap), sampled=True, n=self.n, logprobs=logprobs))]
        if self.scorer is None or outputs[0].finish_reason == "error":  # an error: the prompt did not fit
            scores = [None] * len(outputs)
        else:
            scores = self.scorer(item, outputs)
        rows = []
        for o, score in zip(outputs, scores):
            if score is not None and not math.isfinite(score):
                score = None  # no answer to score (JSON has no -inf); best_of ranks it last
            extra = {"sample_index": o.sample_index} | ({} if self.scorer is None else {"score": score})
            rows.append(h.row(item, Sample.of(o, **extra), cap))
        return {settings[0]: rows}
