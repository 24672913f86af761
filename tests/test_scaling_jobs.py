"""Plans in flight (benchmarks.scaling_jobs): questions batched in the engine, each done as soon as its own
generations are; outputs equal each job run alone; refused jobs answered; leaving early frees every block."""
import json

import pytest
import torch

from benchmarks import scaling
from benchmarks.evalsets import EvalItem, write_eval_set
from benchmarks.scaling_jobs import Job, run_plans
from engine import LLM, SamplingParams, ThinkingBudget


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def llm(make_model):
    return LLM(model=make_model("qwen2", seed=7, end_token=1), block_size=8)


def params(tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, ignore_eos=True, **kw)


def alone(llm, job: Job) -> list[list[int]]:
    if job.budgets is None:
        return [o.token_ids for o in llm.generate(job.prompt, job.params, use_tqdm=False)]
    return [o.token_ids for o in llm.sweep(job.prompt, job.params, job.budgets, use_tqdm=False)[0]]


def test_plans_finish_in_their_own_time_with_each_jobs_outputs(llm):
    log = []

    def plan(key, rounds):
        got = []
        for jobs in rounds:
            log.append(("start", key))
            outputs = yield jobs
            assert [len(o) for o in outputs] == [job.params.n if job.budgets is None else len(job.budgets) for job in jobs]
            got.append([[o.token_ids for o in out] for out in outputs])
        return {"tokens": got}

    sweep = Job(prompt(20, 1), params(12), [ThinkingBudget(max_tokens=c, final_answer_str="Final Answer:") for c in (2, 5)])
    rounds = {
        "long": [[Job(prompt(30, 2), params(40))]],
        "two rounds": [[Job(prompt(9, 3), params(3)), sweep], [], [Job(prompt(12, 4), params(4, temperature=1.0, seed=3, n=3))]],
        "short": [[Job(prompt(25, 5), params(2))]],
    }
    finished = [(key, rows) for key, rows, errors in run_plans(llm, ((k, plan(k, r)) for k, r in rounds.items()))]
    assert [key for key, _ in finished] == ["short", "two rounds", "long"]  # not the order they were queued in
    for key, rows in finished:
        assert rows["tokens"] == [[alone(llm, job) for job in jobs] for jobs in rounds[key]], key
    llm.core.block_manager.check_all_free()


def test_at_most_in_flight_plans_run_at_once(llm):
    running, most = set(), [0]

    def plan(key):
        running.add(key)
        most[0] = max(most[0], len(running))
        yield [Job(prompt(10, key), params(3 + key))]
        running.discard(key)
        return {}

    assert sorted(k for k, _, _ in run_plans(llm, ((k, plan(k)) for k in range(7)), in_flight=3)) == list(range(7))
    assert most[0] == 3


def test_a_refused_job_gets_error_outputs_and_the_rest_run(llm):
    too_long = prompt(llm.max_model_len, 6)

    def plan():
        bad, good = yield [Job(too_long, params(4, n=2)), Job(prompt(8, 7), params(4))]
        return {"bad": [o.finish_reason for o in bad], "good": [o.finish_reason for o in good]}

    [(key, rows, errors)] = list(run_plans(llm, [("q", plan())]))
    assert rows == {"bad": ["error", "error"], "good": ["length"]}
    assert errors == [f"prompt has {llm.max_model_len} tokens; the context holds {llm.max_model_len} "
                      "(and at least one must be left to generate)"]


def test_leaving_early_aborts_the_unfinished_plans_and_frees_their_blocks(llm):
    closed = []

    def plan(key, tokens):
        try:
            yield [Job(prompt(40, key), params(tokens))]
            return {}
        finally:
            closed.append(key)

    plans = run_plans(llm, [(k, plan(k, 2 if k == 0 else 50)) for k in range(4)])
    assert next(plans)[0] == 0
    assert llm.stats()["num_used_blocks"] > 0  # the others are mid-generation
    plans.close()
    assert sorted(closed) == [0, 1, 2, 3] and not llm.has_unfinished()
    llm.core.block_manager.check_all_free()

    def failing(key):
        yield [Job(prompt(40, key), params(1 if key == 0 else 50))]
        raise RuntimeError("a bug in a plan")

    with pytest.raises(RuntimeError, match="a bug in a plan"):
        list(run_plans(llm, [(k, failing(k)) for k in range(3)]))
    assert not llm.has_unfinished()
    llm.core.block_manager.check_all_free()


def test_scaling_logs_questions_in_order_when_a_later_one_finishes_first(make_model, tmp_path, capsys):
    model = make_model("llama", seed=5, end_token=1, hf_init=True)
    items = [EvalItem("long", "Tell me " * 40 + "a story.", "1"), EvalItem("short", "2+2?", "4"),
             EvalItem("huge", "word " * 1100, "5")]  # longer than the tiny model's 1024-token context
    data = tmp_path / "eval.jsonl"
    write_eval_set(items, data)
    argv = ["--model", str(model), "--data", str(data), "--device", "cpu", "--methods", "budget,parallel,best-of-n,rejection",
            "--n", "2", "--max-tries", "2", "--budgets", "4,auto", "--max-tokens", "16", "--max-answer-tokens", "2",
            "--output", str(tmp_path / "out")]
    assert scaling.main(argv) == 0
    best = [json.loads(line) for line in (tmp_path / "out" / "samples-best-of-n-n2.jsonl").read_text().splitlines()]
    assert [r["score"] for r in best if r["id"] == "huge"] == [None] * 2  # nothing to score
    rejected = [json.loads(line) for line in (tmp_path / "out" / "samples-rejection-4.jsonl").read_text().splitlines()]
    assert [(r["tries"], r["fits"]) for r in rejected if r["id"] == "huge"] == [(0, False)]  # never sampled
    auto = [json.loads(line) for line in (tmp_path / "out" / "samples-budget-auto.jsonl").read_text().splitlines()]
    runs = json.loads((tmp_path / "out" / "summary.json").read_text())["settings"]
    ran = [r["max_thinking_tokens"] for r in auto if r["id"] != "huge"]
    assert next(r["bound"] for r in runs if r["setting"] == "auto") == sum(ran) / len(ran)  # not averaged with 0
    for name in ("samples-budget-4.jsonl", "samples-budget-auto.jsonl", "samples-parallel-n2.jsonl"):
        ids = [json.loads(line)["id"] for line in (tmp_path / "out" / name).read_text().splitlines()]
        assert ids == [i.id for i in items for _ in range(2 if "n2" in name else 1)], name
    err = capsys.readouterr().err
    assert "budget: question huge could not run (prompt has" in err and "scored as unanswered" in err


def test_an_interrupted_method_keeps_every_question_that_finished(llm, tmp_path, monkeypatch):
    from benchmarks.scaling_harness import Harness
    from benchmarks.scaling_jobs import Job
    from benchmarks.scaling_methods import Method

    class Slow(Method):  # q0 generates 40 tokens, the others 1
        name = "slow"

        def settings(self):
            return ["x"]

        def plan(self, h, item, settings):
            [outputs] = yield [Job(prompt(6, int(item.id[1:])), params(40 if item.id == "q0" else 1))]
            return {"x": [{"id": item.id, "thinking_tokens": 0, "answer_tokens": len(outputs[0].token_ids)}]}

    items = [EvalItem(f"q{i}", "?", "1") for i in range(30)]
    logs = scaling.open_logs(Slow(), tmp_path)
    steps, step = [0], llm.step

    def interrupted():
        steps[0] += 1
        if steps[0] == 20:
            raise KeyboardInterrupt
        step()

    monkeypatch.setattr(llm, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scaling.run_method(Harness(llm), Slow(), logs, items)
    written = [json.loads(line)["id"] for line in (tmp_path / "samples-slow-x.jsonl").read_text().splitlines()]
    assert sorted(written, key=lambda q: int(q[1:])) == [f"q{i}" for i in range(1, 30)]  # all but the slow one
    assert not llm.has_unfinished()
    llm.core.block_manager.check_all_free()


def test_a_question_the_context_starves_answers_without_thinking_and_same_named_files_stay_apart(make_model, tmp_path,
                                                                                                 capsys):
    model = make_model("llama", seed=5, end_token=1, hf_init=True)
    first, second = tmp_path / "a" / "set.jsonl", tmp_path / "b" / "set.jsonl"
    first.parent.mkdir()
    second.parent.mkdir()
    write_eval_set([EvalItem("short", "2+2?", "4")], first)
    write_eval_set([EvalItem("near", "word " * 960, "5")], second)  # fits the 1024-token context, not 50 more
    argv = ["--model", str(model), "--data", str(first), str(second), "--device", "cpu", "--methods", "budget,rejection",
            "--budgets", "4,auto", "--max-answer-tokens", "50", "--max-tries", "2", "--output", str(tmp_path / "out")]
    assert scaling.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: 1 question(s) leave no room to think within the context (1024 tokens) under budget, rejection: near" in err
    auto = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "out" / "samples-budget-auto.jsonl").read_text().splitlines()}
    assert auto["near"]["max_thinking_tokens"] == 0 and auto["near"]["thinking_tokens"] == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["settings"][0]["accuracy_by_set"]) == {str(first), str(second)}  # one stem, two sets
