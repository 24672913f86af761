"""engine.run_batch: OpenAI batch files run offline. Each request's result equals the offline API's output,
a request at fault gets its error while the others run, a bad file fails before the model loads, and a
stopped run resumes: kept results stay, the rest (and engine-side failures) run again."""
import json

import pytest

from engine import LLM, SamplingParams, ThinkingBudget
from engine import run_batch

CHAT = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "How many r in raspberry?"}]
BUDGET = {"max_tokens": 6, "num_ignore": 1, "final_answer_str": "Final Answer:"}


def line(custom_id: str, body: dict, url: str = "/v1/completions") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


LINES = [
    line("chat", {"messages": QUESTION, "max_tokens": 24, "temperature": 0, "thinking_budget": BUDGET}, CHAT),
    line("text", {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "n": 2, "seed": 3}),
    line("sweep", {"messages": QUESTION, "max_tokens": 20, "temperature": 0, "thinking_budget": [2, 5]}, CHAT),
    line("bad-field", {"prompt": "x", "top_p": 7}),
    line("stream", {"prompt": "x", "stream": True}),
    line("other-model", {"prompt": "x", "model": "gpt-4"}),
]


@pytest.fixture(scope="module")
def llm(make_model):
    return LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)


def write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def results(path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


def run(llm, monkeypatch, tmp_path, records, *flags, out="out.jsonl"):
    """Run a batch on `llm`; the lines each run submitted are returned beside the exit code."""
    write(tmp_path / "in.jsonl", records)
    monkeypatch.setattr(run_batch, "llm_from_args", lambda args: llm)
    ran, run_lines = [], run_batch.run_lines
    monkeypatch.setattr(run_batch, "run_lines", lambda llm, name, lines, window: ran.extend(
        l.custom_id for l in lines) or run_lines(llm, name, lines, window))
    code = run_batch.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / out), *flags])
    return code, ran


def test_each_result_equals_the_offline_api_and_bad_requests_get_their_errors(llm, monkeypatch, tmp_path):
    code, _ = run(llm, monkeypatch, tmp_path, LINES, "--window", "2")
    assert code == 0 and llm.stats()["num_used_blocks"] == 0
    rows = results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in rows] == [r["custom_id"] for r in LINES]  # the input's order
    assert len({r["id"] for r in rows}) == len(rows) and all(r["error"] is None for r in rows)
    status = {r["custom_id"]: r["response"]["status_code"] for r in rows}
    assert status == {"chat": 200, "text": 200, "sweep": 200, "bad-field": 400, "stream": 400, "other-model": 404}
    body = {r["custom_id"]: r["response"]["body"] for r in rows}
    assert body["bad-field"]["error"]["param"] == "top_p" and body["stream"]["error"]["param"] == "stream"

    params = SamplingParams(max_tokens=24, budget=ThinkingBudget(**BUDGET))
    alone = llm.chat(QUESTION, params, use_tqdm=False)[0]
    message = body["chat"]["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == (alone.thinking_text, alone.answer_text)
    assert body["chat"]["usage"]["completion_tokens"] == len(alone.token_ids)
    texts = [o.text for o in llm.generate("The capital of France is", SamplingParams(max_tokens=8, n=2, seed=3),
                                         use_tqdm=False)]
    assert [c["text"] for c in body["text"]["choices"]] == texts
    caps = [ThinkingBudget(max_tokens=c) for c in (2, 5)]
    sweep = llm.sweep(llm.chat_prompt(QUESTION, SamplingParams(budget=caps[0])), SamplingParams(max_tokens=20), caps,
                      use_tqdm=False)[0]
    assert [c["num_thinking_tokens"] for c in body["sweep"]["choices"]] == [o.num_thinking_tokens for o in sweep]


def test_a_stopped_run_resumes_keeping_what_it_wrote(llm, monkeypatch, tmp_path):
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:3])
    first = results(tmp_path / "out.jsonl")
    assert code == 0 and ran == ["chat", "text", "sweep"]
    # as if killed while writing its third result: two whole lines and a torn one
    raw = (tmp_path / "out.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "out.jsonl").write_text(raw[0] + raw[2] + raw[1][:40])
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:3])
    rows = results(tmp_path / "out.jsonl")
    assert code == 0 and ran == ["text"]
    assert [r["custom_id"] for r in rows] == ["chat", "text", "sweep"]
    assert rows[0] == first[0] and rows[2] == first[2] and rows[1]["id"] != first[1]["id"]
    assert rows[1]["response"]["body"]["choices"] == first[1]["response"]["body"]["choices"]  # greedy, seeded
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:3])  # all done: nothing runs, nothing changes
    assert code == 0 and ran == [] and results(tmp_path / "out.jsonl") == rows


def test_requests_the_engine_failed_get_a_500_and_run_again(llm, monkeypatch, tmp_path):
    step = llm.step
    monkeypatch.setattr(llm, "step", lambda: (_ for _ in ()).throw(RuntimeError("injected failure")))
    code, _ = run(llm, monkeypatch, tmp_path, LINES[:2])
    rows = results(tmp_path / "out.jsonl")
    assert code == 1 and [r["response"]["status_code"] for r in rows] == [500, 500]
    assert "injected failure" in rows[0]["response"]["body"]["error"]["message"]
    monkeypatch.setattr(llm, "step", step)
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:2])
    assert code == 0 and ran == ["chat", "text"] and llm.stats()["num_used_blocks"] == 0
    assert [r["response"]["status_code"] for r in results(tmp_path / "out.jsonl")] == [200, 200]


@pytest.mark.parametrize("record, error", [
    ({"method": "POST", "url": CHAT, "body": {}}, "in.jsonl:2: custom_id must be a non-empty string"),
    (line("chat", {}), "in.jsonl:2: custom_id 'chat' is also line 1's"),
    (line("x", {}, url="/v1/embeddings"), "in.jsonl:2: url must be one of"),
    ({**line("x", {}), "method": "GET"}, "in.jsonl:2: method must be POST"),
    (line("x", "hello"), "in.jsonl:2: body must be a JSON object"),
    ({**line("x", {}), "headers": {}}, "in.jsonl:2: unknown field(s) ['headers']"),
])
def test_a_bad_line_fails_the_file_before_the_model_loads(tmp_path, capsys, record, error):
    write(tmp_path / "in.jsonl", [LINES[0], record])
    code = run_batch.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                           "--model", str(tmp_path / "no-model")])
    assert code == 2 and error in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("theirs, error", [
    ('{"custom_id": "q9", "response": {"status_code": 200, "body": {}}}\n', "none of them for this input's"),
    ('{"model_type": "llama"}\n', "out.jsonl:1: not a result line"),  # one line, whole: not a torn result
    ('{"model_type": "llama"}', "out.jsonl:1: not a result line"),  # cut short, but nothing before it matched
    ("notes\n" * 3, "out.jsonl:1: not a result line"),
])
def test_a_file_that_is_not_this_batchs_output_is_refused_and_left_alone(tmp_path, capsys, theirs, error):
    write(tmp_path / "in.jsonl", LINES[:2])
    (tmp_path / "out.jsonl").write_text(theirs)
    code = run_batch.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")])
    assert code == 2 and error in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_text() == theirs


def test_the_input_is_never_the_output(tmp_path, capsys):
    write(tmp_path / "in.jsonl", LINES[:1])
    before = (tmp_path / "in.jsonl").read_text()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    for out in ("in.jsonl", "link.jsonl"):
        code = run_batch.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / out)])
        assert code == 2 and "is the input file" in capsys.readouterr().err
    assert (tmp_path / "in.jsonl").read_text() == before


def test_a_failed_start_leaves_the_output_as_it_was(tmp_path, capsys):
    write(tmp_path / "in.jsonl", LINES[:2])
    chat = run_batch.BatchLine("chat", True, LINES[0]["body"])
    setup = {"model": str((tmp_path / "no-model").resolve()), "served_model_name": "no-model", "device": "cpu",
             "dtype": "float32"}  # the run's own: its results are kept, then the model fails to load
    torn = json.dumps(run_batch.result_row(chat, {"choices": []}, setup)) + "\n" + '{"id": "batch_req_1", "cus'
    (tmp_path / "out.jsonl").write_text(torn)
    code = run_batch.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                           "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 2 and "no-model" in err and "another engine setup" not in err
    assert (tmp_path / "out.jsonl").read_text() == torn


def test_a_changed_or_renamed_request_runs_again_and_its_old_result_is_dropped(llm, monkeypatch, tmp_path, capsys):
    run(llm, monkeypatch, tmp_path, LINES[:3])
    first = results(tmp_path / "out.jsonl")
    edited = {**LINES[2], "body": {**LINES[2]["body"], "max_tokens": 12}}
    changed = [LINES[0], {**LINES[1], "custom_id": "text-v2"}, edited]
    code, ran = run(llm, monkeypatch, tmp_path, changed)
    assert code == 0 and ran == ["text-v2", "sweep"] and "dropped 2 result(s)" in capsys.readouterr().err
    rows = results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in rows] == ["chat", "text-v2", "sweep"] and rows[0] == first[0]
    assert rows[2]["response"]["body"]["usage"] != first[2]["response"]["body"]["usage"]


def test_another_batch_with_the_same_ids_is_refused(llm, monkeypatch, tmp_path, capsys):
    run(llm, monkeypatch, tmp_path, LINES[1:2])
    before = (tmp_path / "out.jsonl").read_text()
    theirs = {**LINES[1], "body": {**LINES[1]["body"], "prompt": "Dogs are"}}  # the same custom_id
    code, ran = run(llm, monkeypatch, tmp_path, [theirs])
    assert code == 2 and ran == [] and "none of them for this input's" in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_text() == before


def test_a_run_killed_while_writing_its_first_result_resumes(llm, monkeypatch, tmp_path):
    (tmp_path / "out.jsonl").write_text('{"id": "batch_req_0a1b", "custom_id": "chat", "resp')
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:2])
    assert code == 0 and ran == ["chat", "text"] and len(results(tmp_path / "out.jsonl")) == 2


def test_a_linked_output_writes_its_target(llm, monkeypatch, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "results" / "out.jsonl")
    code, _ = run(llm, monkeypatch, tmp_path, LINES[:2], out="link.jsonl")
    assert code == 0 and (tmp_path / "link.jsonl").is_symlink()
    assert [r["custom_id"] for r in results(tmp_path / "results" / "out.jsonl")] == ["chat", "text"]


@pytest.mark.parametrize("flags, changed", [
    (["--dtype", "bfloat16"], "dtype 'float32' (now 'bfloat16')"),
    (["--served-model-name", "other"], "served_model_name 'SmolLM2-135M-Instruct' (now 'other')"),
])
def test_results_another_engine_setup_made_are_refused_not_mixed_in(llm, monkeypatch, tmp_path, capsys, flags, changed):
    run(llm, monkeypatch, tmp_path, LINES[:2])
    before = (tmp_path / "out.jsonl").read_text()
    (tmp_path / "out.jsonl").write_text(before.splitlines(keepends=True)[0])  # as if stopped after one result
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:2], *flags)
    err = capsys.readouterr().err
    assert code == 2 and ran == [] and "a result of another engine setup: " + changed in err
    assert (tmp_path / "out.jsonl").read_text() == before.splitlines(keepends=True)[0]


def test_a_blank_line_in_the_output_is_skipped(llm, monkeypatch, tmp_path):
    run(llm, monkeypatch, tmp_path, LINES[:2])
    rows = results(tmp_path / "out.jsonl")
    with (tmp_path / "out.jsonl").open("a") as f:
        f.write("\n")
    code, ran = run(llm, monkeypatch, tmp_path, LINES[:2])
    assert code == 0 and ran == [] and results(tmp_path / "out.jsonl") == rows


def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, capsys):
    import os

    write(tmp_path / "in.jsonl", LINES[:1])
    os.mkfifo(tmp_path / "pipe")  # as /dev/stdout is when piped: it resolved to a name that cannot be written
    (tmp_path / "dir").mkdir()
    for out in ("pipe", "dir"):
        code = run_batch.main(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / out)])
        assert code == 2 and f"-o {tmp_path / out} is not a regular file" in capsys.readouterr().err
