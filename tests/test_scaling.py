"""python -m benchmarks.scaling end to end on a tiny random model: every method, every file it writes,
resume after an interruption, bad flags."""
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from benchmarks import scaling
from benchmarks.evalsets import EvalItem, write_eval_set
from benchmarks.scaling_log import SampleLog, read_rows
from benchmarks.scaling_report import parallel_runs
from benchmarks.scaling_scorers import answer_tokens, make_scorer, mean_answer_logprob
from engine import Output

QUESTIONS = [
    EvalItem("q1", "What is 2+2?", "4"),
    EvalItem("q2", "Which is a prime?", "B", choices=("4", "5", "6", "8")),
    EvalItem("q3", "Simplify 6/8.", "\\frac{3}{4}"),
]
ROW_KEYS = {"id", "question", "reference", "output", "thinking_text", "answer_text", "extracted_answer", "vote", "correct",
            "thinking_tokens", "answer_tokens", "ignores_used", "finish_reason"}
SMALL = ["--max-tokens", "32", "--max-answer-tokens", "4", "--device", "cpu", "--budgets", "4,8,auto",
         "--steps", "1,2", "--num-ignore", "1,2", "--n", "4", "--max-tries", "3",
         "--sample-temperature", "0.02"]  # hf_init logits are near-flat: a low temperature lets samples end thinking


@pytest.fixture(scope="module")
def model_dir(make_model):
    return make_model("llama", seed=5, end_token=1, hf_init=True)  # often ends s1 thinking within 20 tokens


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "eval.jsonl"
    write_eval_set(QUESTIONS, path)
    return path


def run(model_dir, data, out, *flags):
    return scaling.main(["--model", str(model_dir), "--data", str(data), "--output", str(out), *SMALL, *flags])


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_method_writes_every_file(model_dir, data, tmp_path):
    assert run(model_dir, data, tmp_path, "--methods", ",".join(scaling.METHODS), "--limit", "2") == 0
    expected = {f"samples-{m}-{s}.jsonl" for m, settings in {
        "budget": ["4", "8", "auto"], "ignore": ["1", "2"], "token": ["4", "8"], "token-forced": ["4", "8"],
        "step": ["1", "2"], "step-forced": ["1", "2"], "rejection": ["4", "8"], "parallel": ["n4"],
        "best-of-n": ["n4"]}.items() for s in settings}
    written = {p.name for p in tmp_path.iterdir()}
    assert written == expected | {"run.json", "summary.json", "summary.md", "scaling.png", "parallel.png"}
    for name in expected:
        lines = rows(tmp_path / name)
        per_question = 4 if "-n4" in name else 1
        assert [r["id"] for r in lines] == [q.id for q in QUESTIONS[:2] for _ in range(per_question)], name
        for r in lines:
            assert ROW_KEYS <= r.keys(), name
            assert r["output"].startswith(r["thinking_text"]) and r["output"].endswith(r["answer_text"])
            assert isinstance(r["correct"], bool) and r["thinking_tokens"] <= 32
    for cap in (4, 8):
        assert all(r["thinking_tokens"] <= cap for r in rows(tmp_path / f"samples-budget-{cap}.jsonl"))
        assert all(r["thinking_tokens"] <= cap for r in rows(tmp_path / f"samples-token-forced-{cap}.jsonl"))
        for r in rows(tmp_path / f"samples-rejection-{cap}.jsonl"):
            assert 1 <= r["tries"] <= 3 and (not r["fits"] or r["thinking_tokens"] <= cap)
    assert any(r["ignores_used"] == 1 for r in rows(tmp_path / "samples-ignore-1.jsonl"))
    rejected = rows(tmp_path / "samples-rejection-8.jsonl")
    assert any(r["fits"] for r in rejected) and all(r["tries"] <= 3 for r in rejected)
    for r in rows(tmp_path / "samples-budget-auto.jsonl"):  # "auto" fits thinking, the splices and the answer
        assert 0 < r["max_thinking_tokens"] <= 32 - 4 and r["thinking_tokens"] <= r["max_thinking_tokens"]  # in 32
        assert len(r["output"]) > len(r["thinking_text"])  # thinking ended: the answer phase was reached
    assert all(r["ignores_used"] <= 2 for r in rows(tmp_path / "samples-ignore-2.jsonl"))
    best = rows(tmp_path / "samples-best-of-n-n4.jsonl")
    assert [r["sample_index"] for r in best[:4]] == [0, 1, 2, 3] and all(isinstance(r["score"], float) for r in best)
    parallel = rows(tmp_path / "samples-parallel-n4.jsonl")
    assert [r["output"] for r in parallel] == [r["output"] for r in best]  # same seeds, same samples

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == set(scaling.METHODS)
    for m in summary["methods"].values():
        assert set(m) == {"control", "scaling", "performance"} and 0 <= m["performance"] <= 100
    assert summary["methods"]["budget"]["control"] == 100.0 and summary["methods"]["ignore"]["control"] is None
    runs = {(r["method"], r["setting"]): r for r in summary["settings"]}
    assert [k for m, k in runs if m == "parallel"] == ["k=1", "k=2", "k=4"]
    assert runs["parallel", "k=4"]["pass_at_k"] >= runs["parallel", "k=1"]["pass_at_k"]
    assert "best_at_k" in runs["best-of-n", "k=2"] and "avg_tries" in runs["rejection", "4"]
    budget_4 = rows(tmp_path / "samples-budget-4.jsonl")
    assert runs["budget", "4"]["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in budget_4) / 2)
    assert runs["budget", "4"]["avg_thinking_tokens"] == pytest.approx(sum(r["thinking_tokens"] for r in budget_4) / 2)
    table = (tmp_path / "summary.md").read_text()
    assert all(f"| {method} |" in table for method in scaling.METHODS) and "| budget | auto |" in table
    for png in ("scaling.png", "parallel.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")


def test_step_forcing_cuts_thinking_after_n_lines(make_model, data, tmp_path):
    newline_model = make_model("llama", seed=5, end_token=198, hf_init=True)  # 198 = "\n": many short lines
    assert run(newline_model, data, tmp_path, "--methods", "step,step-forced") == 0
    cut = 0
    for n in (1, 2):
        pairs = zip(rows(tmp_path / f"samples-step-{n}.jsonl"), rows(tmp_path / f"samples-step-forced-{n}.jsonl"))
        for free, forced in pairs:
            free_steps = [line for line in free["thinking_text"].splitlines() if line.strip()]
            forced_steps = [line for line in forced["thinking_text"].splitlines() if line.strip()]
            if len(free_steps) <= n:
                assert forced == free
                continue
            cut += 1
            assert forced_steps == free_steps[:n] and free["thinking_text"].startswith(forced["thinking_text"])
            assert forced["output"].startswith(forced["thinking_text"] + "<|im_start|>answer\nFinal Answer:")
            assert forced["output"].endswith(forced["answer_text"]) and forced["answer_tokens"] <= 4
    assert cut > 0


def test_ctrl_c_while_summarizing_says_how_to_resume(model_dir, data, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scaling, "summarize", interrupted)
    assert run(model_dir, data, tmp_path / "out", "--methods", "budget", "--budgets", "4", "--limit", "1") == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_files(model_dir, data, tmp_path, monkeypatch, capsys):
    data = Path(shutil.copy(data, tmp_path / "eval.jsonl"))  # edited in place below
    flags = ("--methods", "budget,parallel", "--n", "2")
    assert run(model_dir, data, tmp_path / "whole", *flags) == 0

    appended = []
    original = SampleLog.append

    def append_then_fail(log, new_rows):
        if len(appended) == 4:  # the first question's 3 budget settings, then the second's first
            raise KeyboardInterrupt
        appended.append((log.path.name, new_rows[0]["id"]))
        original(log, new_rows)

    monkeypatch.setattr(SampleLog, "append", append_then_fail)
    assert run(model_dir, data, tmp_path / "resumed", *flags) == 130
    with open(tmp_path / "resumed" / "samples-budget-8.jsonl", "a") as f:
        f.write('{"id": "q2", "question": "Which')  # a torn last line
    done_before = list(appended)
    monkeypatch.setattr(SampleLog, "append", lambda log, new_rows: (
        appended.append((log.path.name, new_rows[0]["id"])), original(log, new_rows)))
    assert run(model_dir, data, tmp_path / "resumed", *flags) == 0

    monkeypatch.setattr(scaling, "LLM", None)  # the refusals come before the model loads
    assert run(model_dir, data, tmp_path / "resumed", *flags, "--seed", "1") == 2  # other flags: refused
    assert "holds a run made with other flags: --seed 0 (now 1);" in capsys.readouterr().err
    assert run(model_dir, data, tmp_path / "resumed", *flags, "--dtype", "bfloat16") == 2  # another precision
    assert "other flags: --dtype 'float32' (now 'bfloat16')" in capsys.readouterr().err
    original = data.read_text()
    data.write_text(original.replace("What is 2+2?", "What is 3+3?"))  # the same file and flags, another set
    assert run(model_dir, data, tmp_path / "resumed", *flags) == 2
    assert "holds a run made with another question under the id 'q1';" in capsys.readouterr().err
    data.write_text(original)
    redone = appended[len(done_before):]
    assert not set(redone) & set(done_before)
    assert ("samples-budget-8.jsonl", "q2") in redone
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert whole == sorted(p.name for p in (tmp_path / "resumed").iterdir())
    for name in whole:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_killed_process_resumes_to_the_same_files(model_dir, data, tmp_path):
    argv = ["--model", str(model_dir), "--data", str(data), *SMALL, "--methods", "budget,parallel", "--n", "2"]
    assert scaling.main([*argv, "--output", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", *argv, "--output", str(killed)],
                            cwd=Path(__file__).parents[1], stderr=subprocess.DEVNULL)
    first = killed / "samples-budget-4.jsonl"
    deadline = time.monotonic() + 120
    while not (first.exists() and first.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert scaling.main([*argv, "--output", str(killed)]) == 0
    for path in (tmp_path / "whole").iterdir():
        assert path.read_bytes() == (killed / path.name).read_bytes(), path.name


def test_sample_log_drops_torn_lines_and_unfinished_questions(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = [{"id": "a", "x": 1}, {"id": "a", "x": 2}, {"id": "b", "x": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"id": "b", "x"')
    log = SampleLog(path, rows_per_question=2)
    assert log.done == {"a"}
    assert rows(path) == good[:2]
    log.append([{"id": "b", "x": 1}, {"id": "b", "x": 2}])
    assert SampleLog(path, rows_per_question=2).done == {"a", "b"}


def test_sample_rows_may_hold_other_line_separators(tmp_path):
    """A model's text may hold U+2028, U+2029 or U+0085 (byte-level tokens decode to them): they are
    written unescaped, and a row is read back whole, not cut at them."""
    path = tmp_path / "samples.jsonl"
    log = SampleLog(path, rows_per_question=1)
    written = [{"id": "a", "output": "step one\u2028step two"}, {"id": "b", "output": "x\x85y\u2029z\x0cw"}]
    log.append(written)
    assert read_rows(path) == written and SampleLog(path, rows_per_question=1).done == {"a", "b"}
    log.order_by(["b", "a"])
    assert read_rows(path) == written[::-1]


def test_best_of_n_with_a_reward_model(model_dir, data, tmp_path, tokenizer_dir):
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=2)
    torch.manual_seed(0)
    reward_dir = tmp_path / "reward"
    LlamaForSequenceClassification(config).save_pretrained(reward_dir)
    for f in tokenizer_dir.iterdir():
        (reward_dir / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    assert run(model_dir, data, out, "--methods", "best-of-n", "--scorer", str(reward_dir), "--limit", "2") == 0
    best = rows(out / "samples-best-of-n-n4.jsonl")
    scores = [r["score"] for r in best]
    assert all(math.isfinite(s) for s in scores) and len(set(scores)) > 1
    summary = json.loads((out / "summary.json").read_text())
    by_k = {r["setting"]: r for r in summary["settings"]}
    groups = [best[:4], best[4:]]
    expected = 100 * sum(max(g[:2], key=lambda r: r["score"])["correct"] for g in groups) / 2
    assert by_k["k=2"]["best_at_k"] == pytest.approx(expected)


def test_a_reward_model_scores_a_long_output_by_its_end(tmp_path, tokenizer_dir):
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=2,
                         max_position_embeddings=64)  # the tokenizer sets no limit: the positions do
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    for f in tokenizer_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    scorer = make_scorer(str(tmp_path))
    seen = []
    forward = scorer.model.forward
    scorer.model.forward = lambda **inputs: seen.append(inputs["input_ids"][0].tolist()) or forward(**inputs)
    answer = " so the answer is 42"
    text = "think " * 200 + answer
    output = Output(0, [5], token_ids=[], text=text, thinking_text="", answer_text="", num_thinking_tokens=0,
                    num_answer_tokens=0, num_ignores_used=0, finish_reason="stop", stop_reason=None)
    assert math.isfinite(scorer(QUESTIONS[0], [output])[0])
    full = scorer.tokenizer(scorer.text(QUESTIONS[0], output))["input_ids"]
    assert len(full) > 64 and seen == [full[-64:]]  # its last 64 tokens: the answer kept


def test_logprob_scorer_averages_the_sampled_answer_tokens():
    output = Output(0, [5], token_ids=[7, 1, 8, 9, 2], text="", thinking_text="", answer_text="",
                    num_thinking_tokens=1, num_answer_tokens=2, num_ignores_used=0, finish_reason="stop",
                    stop_reason=2, logprobs=[{7: -1.0}, None, {8: -0.5, 3: -0.1}, {9: -1.5}, {2: -0.2}])
    assert answer_tokens(output) == [2, 3]
    assert mean_answer_logprob(QUESTIONS[0], [output]) == [-1.0]


@pytest.mark.parametrize("flags, message", [
    (["--methods", "budget,nope"], "--methods"),
    (["--budgets", "8,x"], "--budgets"),
    (["--budgets", "8,08"], "lists a value twice"),  # one cap: it would run, and count, twice
    (["--budgets", "8,\u00b2"], "--budgets"),  # a digit to str.isdigit, not to int
    (["--n", "0", "--methods", "parallel"], "--n"),
    (["--methods", "token", "--budgets", "auto"], "numeric --budgets"),
    (["--methods", "best-of-n", "--scorer", "/no/such/dir"], "--scorer"),
    (["--temperature", "-1"], "temperature"),
    (["--sample-temperature", "nan"], "temperature"),
    (["--methods", "ignore", "--ignore-str", ""], "ignore_str"),
    (["--data", "/no/such.jsonl"], "such.jsonl"),
    (["--data", "DATA", "DATA"], "ids repeat"),
])
def test_bad_flags_exit_2(model_dir, data, tmp_path, capsys, flags, message):
    flags = [str(data) if flag == "DATA" else flag for flag in flags]
    argv = ["--model", str(model_dir), "--data", str(data), "--output", str(tmp_path), "--device", "cpu", *flags]
    assert scaling.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "run.json").exists()  # nothing claimed: a corrected rerun into the dir is not refused


def test_maj_at_k_counts_equivalent_wrong_answers_as_one_vote():
    def sample(i, vote, correct):
        return {"id": "q", "sample_index": i, "vote": vote, "correct": correct, "thinking_tokens": 1, "answer_tokens": 1}

    # one right answer against one wrong value written three ways: the wrong value wins the vote of 5
    rows = [sample(0, "3/4", True), sample(1, "0.5", False), sample(2, "\\frac{1}{2}", False),
            sample(3, "1/2", False), sample(4, None, False)]
    by_k = {r["setting"]: r for r in parallel_runs("parallel", rows)}
    assert by_k["k=1"]["maj_at_k"] == 100.0 and by_k["k=4"]["maj_at_k"] == 0.0 and by_k["k=5"]["maj_at_k"] == 0.0
    rows[2]["vote"] = "0.25"  # now two wrong answers of one vote each, against one right: a tie, the first seen wins
    by_k = {r["setting"]: r for r in parallel_runs("parallel", rows)}
    assert by_k["k=4"]["maj_at_k"] == 0.0  # "0.5" and "1/2" are one vote of 2
    rows[3]["vote"] = "0.3"
    assert {r["setting"]: r for r in parallel_runs("parallel", rows)}["k=4"]["maj_at_k"] == 100.0  # 1 each: first
    # "50\%" equals "50" and "0.5", which differ: a class holds answers equal to all its members
    votes = ["50\\%", "50", "0.5", "0.5", "7", "7", "7"]
    rows = [sample(i, v, v == "7") for i, v in enumerate(votes)]
    assert {r["setting"]: r for r in parallel_runs("parallel", rows)}["k=7"]["maj_at_k"] == 100.0


def test_a_multiple_choice_vote_is_the_option_letter(model_dir):
    from benchmarks.scaling_harness import Harness, Sample
    from engine import LLM

    h = Harness(LLM(model=model_dir))
    answer = "hmm\n<|im_start|>answer\nFinal Answer: "
    mc = h.row(QUESTIONS[1], Sample(answer + "The answer is (B).", "hmm\n", "", 1, 1, 0, "stop"), None)
    assert (mc["extracted_answer"], mc["vote"], mc["correct"]) == ("The answer is (B)", "B", True)
    math = h.row(QUESTIONS[2], Sample(answer + "$0.75$", "hmm\n", "", 1, 1, 0, "stop"), None)
    assert (math["extracted_answer"], math["vote"], math["correct"]) == ("0.75", "0.75", True)


def test_scaling_leaves_out_a_run_that_never_thought():
    from benchmarks.scaling_report import method_metrics

    def budget_run(tokens, accuracy):
        return {"avg_thinking_tokens": tokens, "accuracy": accuracy, "bound": max(tokens, 1), "bound_on": "tokens"}

    m = method_metrics([budget_run(0, 10.0), budget_run(8, 20.0), budget_run(32, 40.0)])  # a cap of 0, then 8 and 32
    assert m["scaling"] == pytest.approx(10.0)  # (40 - 20) / (log2 32 - log2 8), not n/a for the whole method
    assert m["performance"] == 40.0 and m["control"] == 100.0
    assert method_metrics([budget_run(0, 10.0), budget_run(8, 20.0)])["scaling"] is None  # one run thought


def test_a_resume_may_add_questions_and_the_summary_covers_the_asked_ones(model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(model_dir, data, out, "--methods", "budget", "--budgets", "4,8", "--limit", "1") == 0
    first = rows(out / "samples-budget-4.jsonl")
    assert run(model_dir, data, out, "--methods", "budget", "--budgets", "4,8", "--limit", "3") == 0  # two more
    assert rows(out / "samples-budget-4.jsonl")[:1] == first and [r["id"] for r in rows(out / "samples-budget-4.jsonl")] == ["q1", "q2", "q3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_questions"] == 3 and all(r["num_questions"] == 3 for r in summary["settings"])
    assert run(model_dir, data, out, "--methods", "budget", "--budgets", "4", "--limit", "1") == 0  # nothing to run
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["setting"], r["num_questions"]) for r in summary["settings"]] == [("4", 1)]
    assert summary["settings"][0]["accuracy"] == 100.0 * first[0]["correct"]
    assert summary["not_summarized"] == ["samples-budget-8.jsonl"]
    assert "not summarized here (rerun naming their methods and settings" in (out / "summary.md").read_text()
    capsys.readouterr()


def test_a_run_that_cannot_think_is_refused_and_caps_above_the_room_warned(model_dir, data, tmp_path, capsys):
    assert run(model_dir, data, tmp_path / "a", "--methods", "budget,ignore", "--max-answer-tokens", "100") == 2
    err = capsys.readouterr().err
    assert "--max-tokens 32 leaves 3 of 3 questions no room to think under budget, ignore" in err
    assert not (tmp_path / "a").exists()
    assert run(model_dir, data, tmp_path / "b", "--methods", "budget,token-forced", "--budgets", "4,30",
               "--limit", "1") == 0  # no method uses "auto": nothing to refuse, the cap of 30 is warned
    err = capsys.readouterr().err
    assert "warning: budget caps above the 'auto' cap of some questions: 30 (1 of 1)" in err
    assert "warning: token-forced caps above" in err


def test_thinking_that_never_ended_has_no_answer(model_dir):
    from benchmarks.scaling_harness import Harness, Sample
    h = Harness(scaling.LLM(model=model_dir))
    unended = Sample("So the answer is 4", "So the answer is 4", "", 6, 0, 0, "length")
    row = h.row(QUESTIONS[0], unended, 6)
    assert row["extracted_answer"] is None and row["vote"] is None and row["correct"] is False
    ended = Sample("Hm<|im_start|>answer\nFinal Answer: 4", "Hm", "4", 1, 1, 0, "stop")
    assert h.row(QUESTIONS[0], ended, 6)["correct"] is True
    # the length limit cut the spliced delimiter: the grader would read the thinking as a bare answer
    cut = Sample("So the answer is 4<|im_start|>", "So the answer is 4", "", 6, 0, 0, "length")
    assert h.row(QUESTIONS[0], cut, 6)["correct"] is False and not cut.ended_thinking


def test_a_locked_dir_a_corrupt_samples_line_and_a_bom_are_handled(model_dir, data, tmp_path, capsys):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())  # as editors on Windows save it
    out = tmp_path / "out"
    assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 0
    run_json = (out / "run.json").read_text()
    args = scaling.parse_args(["--data", str(bom), "--output", str(out), *SMALL, "--model", str(model_dir)])
    items = scaling.load_items(args)
    llm = scaling.LLM(model=model_dir)
    lock = scaling.lock_output(out)  # another run holds the dir
    try:
        assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 2
        assert "is in use by another run" in capsys.readouterr().err
    finally:
        os.close(lock)
    record = json.loads(run_json)
    del record["questions"]  # as the day's first version wrote it: one digest of the whole set
    items = scaling.load_items(args)[:2]
    asked = json.dumps([[i.id, i.question, i.answer, i.choices] for i in items])
    (out / "run.json").write_text(json.dumps({**record, "questions_sha256": "0" * 64}))
    assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 2
    assert "is an older record, of one set of questions as a whole" in capsys.readouterr().err
    (out / "run.json").write_text(json.dumps({**record, "questions_sha256": hashlib.sha256(asked.encode()).hexdigest()}))
    assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 0  # the same set
    assert json.loads((out / "run.json").read_text())["questions"].keys() == {"q1", "q2"}
    record = json.loads((out / "run.json").read_text())  # per-question digests as 549cdb1's parent kept them
    record["questions"] = {i.id: scaling.earlier_question_digest(i) for i in items}
    (out / "run.json").write_text(json.dumps(record))
    assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 0
    assert json.loads((out / "run.json").read_text())["questions"] == {i.id: scaling.question_digest(i) for i in items}
    (out / "run.json").unlink()  # samples whose flags are unknown
    assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 2
    assert "holds samples but no run.json" in capsys.readouterr().err
    (out / "run.json").write_text(run_json)
    path = out / "samples-budget-4.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    capsys.readouterr()
    assert run(model_dir, bom, out, "--methods", "budget", "--budgets", "4", "--limit", "2") == 2
    assert f"{path}:2 is not a sample row" in capsys.readouterr().err
    assert path.read_text().splitlines()[2] == lines[1]  # nothing after it was dropped


def test_several_eval_sets_get_accuracy_by_set(model_dir, tmp_path):
    first, second = tmp_path / "arith.jsonl", tmp_path / "choice.jsonl"
    write_eval_set([QUESTIONS[0], QUESTIONS[2]], first)
    write_eval_set([QUESTIONS[1]], second)
    out = tmp_path / "out"
    assert scaling.main(["--model", str(model_dir), "--data", str(first), str(second), "--output", str(out), *SMALL,
                         "--methods", "budget,parallel", "--budgets", "4", "--n", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    budget = next(r for r in summary["settings"] if r["method"] == "budget")
    correct = {r["id"]: r["correct"] for r in rows(out / "samples-budget-4.jsonl")}
    assert budget["accuracy_by_set"] == {"arith": 50.0 * (correct["q1"] + correct["q3"]), "choice": 100.0 * correct["q2"]}
    assert all(set(r["accuracy_by_set"]) == {"arith", "choice"} for r in summary["settings"])
    assert "| method | setting | arith | choice |" in (out / "summary.md").read_text()
    assert (out / "parallel.png").exists()
    assert scaling.main(["--model", str(model_dir), "--data", str(first), str(second), "--output", str(out), *SMALL,
                         "--methods", "budget", "--budgets", "4"]) == 0
    assert not (out / "parallel.png").exists()  # no stale plot beside a summary without parallel runs


def test_rows_graded_by_another_grader_are_regraded_on_resume(model_dir, data, tmp_path, capsys):
    flags = ("--methods", "budget,parallel", "--budgets", "auto", "--n", "2", "--limit", "2")
    assert run(model_dir, data, tmp_path, *flags) == 0
    names = ("samples-budget-auto.jsonl", "samples-parallel-n2.jsonl")
    fresh = {name: (tmp_path / name).read_bytes() for name in names}
    summary = (tmp_path / "summary.json").read_bytes()
    for name in names:  # as an older grader would have left them: other verdicts, other version
        stale = [{**r, "correct": not r["correct"], "vote": "stale", "grader": "0ld"} for r in rows(tmp_path / name)]
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in stale))
    capsys.readouterr()
    assert run(model_dir, data, tmp_path, *flags) == 0
    assert "regraded 6 sample rows (graded by another version of benchmarks/grading.py" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in names} == fresh
    assert (tmp_path / "summary.json").read_bytes() == summary
    assert run(model_dir, data, tmp_path, *flags) == 0
    assert "regraded" not in capsys.readouterr().err
    corrected = tmp_path / "corrected.jsonl"  # q1's reference fixed: the same question, regraded, not refused
    write_eval_set([replace(QUESTIONS[0], answer="5"), *QUESTIONS[1:]], corrected)
    assert scaling.main(["--model", str(model_dir), "--data", str(corrected), "--output", str(tmp_path), *SMALL, *flags]) == 0
    assert "regraded 3 sample rows" in capsys.readouterr().err  # q1 under budget auto, and its 2 parallel samples
    assert {r["reference"] for r in rows(tmp_path / "samples-budget-auto.jsonl") if r["id"] == "q1"} == {"5"}


def test_rejection_sampling_accepts_no_sample_the_auto_cap_cut(model_dir):
    from benchmarks.scaling_harness import Harness
    from benchmarks.scaling_methods import REJECTION_ROUND, RejectionSampling
    from engine import LLM

    h = Harness(LLM(model=model_dir), max_tokens=32, max_answer_tokens=4)
    auto = h.auto_cap(h.prompt(QUESTIONS[0]))
    answer = "\n<|im_start|>answer\nFinal Answer: 4"

    def output(thinking_tokens):
        return Output(request_id=0, prompt_token_ids=[], token_ids=[], text="hmm" + answer, thinking_text="hmm",
                      answer_text=" 4", num_thinking_tokens=thinking_tokens, num_answer_tokens=1, num_ignores_used=0,
                      finish_reason="stop")

    settings = ["4", str(auto), str(auto + 100)]
    plan = RejectionSampling(caps=(4, auto, auto + 100), max_tries=2 * REJECTION_ROUND).plan(h, QUESTIONS[0], settings)
    next(plan)
    plan.send([[output(auto)] * REJECTION_ROUND])  # the auto cap ended each: not a length that fits any cap
    with pytest.raises(StopIteration) as done:
        plan.send([[output(auto - 1)] + [output(auto)] * (REJECTION_ROUND - 1)])
    rows = done.value.value
    assert [(rows[s][0]["fits"], rows[s][0]["tries"]) for s in settings] == [
        (False, 2 * REJECTION_ROUND), (True, REJECTION_ROUND + 1), (True, REJECTION_ROUND + 1)]
