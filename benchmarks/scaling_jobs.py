"""Many questions in flight at once. A method's work on one question is a plan: a generator that yields the
generations it needs next (a list of `Job`s), receives their Outputs, and returns the question's sample rows.
`run_plans` keeps up to `in_flight` plans' jobs queued in the engine together, so every method batches across
questions, and a question is done, with its rows, as soon as its own generations are; the others run on."""
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

from engine import LLM, Output, SamplingParams, ThinkingBudget
from engine.outputs import error_output
from engine.request import Request

IN_FLIGHT = 64  # questions whose jobs are queued together; a kill loses the unfinished ones


@dataclass(frozen=True)
class Job:
    """One generation: `prompt` under `params` (its `n` samples), or under each of `budgets` (a sweep)."""

    prompt: list[int]
    params: SamplingParams
    budgets: list[ThinkingBudget] | None = None


Rows = dict[str, list[dict]]
Plan = Generator[list[Job], list[list[Output]], Rows]  # yields jobs, is sent each job's Outputs, returns rows


class _Question:
    """A plan and the requests of the jobs it yielded last (a job the engine refused holds its error Outputs)."""

    def __init__(self, key: str, plan: Plan):
        self.key, self.plan = key, plan
        self.requests: list[Request | list[Output]] = []
        self.errors: list[str] = []

    def running(self) -> bool:
        return any(isinstance(r, Request) and not r.is_finished for r in self.requests)

    def advance(self, llm: LLM, outputs: list[list[Output]] | None) -> Rows | None:
        """Send the plan its jobs' Outputs (None to start it) and queue the jobs it yields; its rows once it
        returns. Jobs refused at once (a prompt longer than the context) are answered at once."""
        while True:
            try:
                jobs = self.plan.send(outputs)
            except StopIteration as done:
                return done.value
            self.requests = []
            for job in jobs:  # each kept as it is queued: an error in a later one still aborts it
                self.requests.append(self._submit(llm, job))
            if self.running():
                return None
            outputs = self.outputs(llm)

    def _submit(self, llm: LLM, job: Job) -> Request | list[Output]:
        try:
            if job.budgets is None:
                return llm.add_request(job.prompt, job.params)
            return llm.add_sweep(job.prompt, job.params, job.budgets)
        except ValueError as e:
            if len(job.prompt) < llm.max_model_len:  # only a prompt the context cannot hold is the question's
                raise
            self.errors.append(str(e))
            count = job.params.n if job.budgets is None else len(job.budgets)
            return [error_output(job.prompt, str(e), i) for i in range(count)]

    def outputs(self, llm: LLM) -> list[list[Output]]:
        return [r if isinstance(r, list) else llm.outputs(r) for r in self.requests]

    def abort(self, llm: LLM) -> None:
        for r in self.requests:
            if isinstance(r, Request):
                llm.abort(r)
        self.plan.close()


def run_plans(llm: LLM, plans: Iterable[tuple[str, Plan]], in_flight: int = IN_FLIGHT
              ) -> Iterator[tuple[str, Rows, list[str]]]:
    """Run keyed plans, at most `in_flight` at a time, yielding (key, rows, errors) as each finishes (in the
    order they finish; errors: what the engine refused of its jobs). Leaving early (an exception, Ctrl-C, the
    caller closing the iterator) aborts the unfinished plans' requests, freeing their KV blocks."""
    plans, active = iter(plans), []
    try:
        while True:
            while len(active) < in_flight and (entry := next(plans, None)) is not None:
                question = _Question(*entry)
                active.append(question)
                rows = question.advance(llm, None)
                if rows is not None:
                    active.remove(question)
                    yield question.key, rows, question.errors
            if not active:
                return
            llm.step()
            for question in [q for q in active if not q.running()]:
                rows = question.advance(llm, question.outputs(llm))
                if rows is not None:
                    active.remove(question)
                    yield question.key, rows, question.errors
    finally:
        for question in active:
            question.abort(llm)
