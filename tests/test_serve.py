"""The OpenAI-compatible server: responses equal the offline API's outputs, streams add up to them,
bad requests get a clear error while the server goes on, concurrent requests batch, a client that
hangs up has its request aborted, and no KV block is left held."""
import http.client
import json
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from benchmarks import serve_load
from engine import LLM, SamplingParams, ThinkingBudget
from engine.openai_protocol import parse_request
from engine.serve import Job, OpenAIServer, in_background, main, tls_context
from tests.lm_eval_tasks import MULTIPLE_CHOICE, generate_until, write_task

BUDGET = {"max_tokens": 10, "num_ignore": 1, "final_answer_str": "Final Answer:"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many r in raspberry?"}]


@pytest.fixture(scope="module")
def server(make_model):
    llm = LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as srv:
        yield srv


def request(srv, method: str, path: str, body=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=120)
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    if r.getheader("Content-Type") == "text/event-stream":
        events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        return r.status, [json.loads(e) for e in events[:-1]]
    return r.status, json.loads(text)


def post(srv, path: str, body: dict):
    return request(srv, "POST", path, body)


def idle(srv) -> dict:
    deadline = time.time() + 30
    while srv.llm.has_unfinished() and time.time() < deadline:
        time.sleep(0.05)
    return srv.llm.stats()


def test_completions_equal_generate_with_budget_forcing(server, s1_llm):
    prompts = [[5, 6, 7], "Count the letters:"]
    status, body = post(server, "/v1/completions", {"prompt": prompts, "temperature": 0, "max_tokens": 30,
                                                     "thinking_budget": BUDGET})
    assert status == 200 and body["object"] == "text_completion"
    expected = s1_llm.generate(prompts, SamplingParams(max_tokens=30, budget=ThinkingBudget(**BUDGET)), use_tqdm=False)
    assert [c["text"] for c in body["choices"]] == [o.text for o in expected]
    assert [c["finish_reason"] for c in body["choices"]] == [o.finish_reason for o in expected]
    assert any("Final Answer:" in o.text for o in expected)  # the budget bit
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in expected)
    assert usage["completion_tokens"] == sum(len(o.token_ids) for o in expected)
    assert usage["completion_tokens_details"]["reasoning_tokens"] == sum(o.num_thinking_tokens for o in expected) > 0
    assert idle(server)["num_used_blocks"] == 0


def test_chat_puts_thinking_in_reasoning_content_and_the_answer_in_content(server, s1_llm):
    status, body = post(server, "/v1/chat/completions", {"messages": MESSAGES, "temperature": 0, "max_tokens": 40,
                                                         "thinking_budget": BUDGET})
    expected = s1_llm.chat(MESSAGES, SamplingParams(max_tokens=40, budget=ThinkingBudget(**BUDGET)), use_tqdm=False)[0]
    assert status == 200 and body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert expected.thinking_text and expected.answer_text  # both parts are exercised
    assert message == {"role": "assistant", "content": expected.answer_text, "reasoning_content": expected.thinking_text,
                       "reasoning": expected.thinking_text}
    status, plain = post(server, "/v1/chat/completions", {"messages": MESSAGES, "temperature": 0, "max_tokens": 12})
    no_budget = s1_llm.chat(MESSAGES, SamplingParams(max_tokens=12), use_tqdm=False)[0]
    assert plain["choices"][0]["message"]["content"] == no_budget.text
    assert plain["choices"][0]["message"]["reasoning_content"] is None


SWEEP = [{"max_tokens": 4, "final_answer_str": "Final Answer:"}, {"max_tokens": 12, "num_ignore": 1}, BUDGET]


@pytest.mark.parametrize("chat,sweep", [(False, False), (True, False), (False, True), (True, True)])
def test_streams_add_up_to_the_whole_response(server, chat, sweep):
    body = {"temperature": 0.9, "seed": 7, "max_tokens": 30, "logprobs": 2}
    body |= {"thinking_budget": SWEEP} if sweep else {"thinking_budget": BUDGET, "n": 2}
    if chat:
        body |= {"messages": MESSAGES, "logprobs": True, "top_logprobs": 2}
        path = "/v1/chat/completions"
    else:
        body |= {"prompt": [[5, 6, 7], "Count the letters:"]}
        path = "/v1/completions"
    status, whole = post(server, path, body)
    assert status == 200
    status, chunks = post(server, path, body | {"stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    for choice in whole["choices"]:
        parts = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == choice["index"]]
        assert [p["finish_reason"] for p in parts][-1] == choice["finish_reason"]
        for key in ("stop_reason", "num_thinking_tokens", "num_ignores_used"):
            assert parts[-1][key] == choice[key]
        assert all(p["finish_reason"] is None for p in parts[:-1])
        if chat:
            message = choice["message"]
            assert parts[0]["delta"] == {"role": "assistant", "content": ""}
            for name in ("reasoning_content", "reasoning"):
                assert "".join(p["delta"].get(name, "") for p in parts) == message[name]
            assert "".join(p["delta"].get("content", "") for p in parts) == message["content"]
            for part in ("content", "reasoning"):
                streamed = [e for p in parts if p["logprobs"] for e in p["logprobs"][part]]
                assert same_numbers(streamed, choice["logprobs"][part])
            answer_tokens = "".join(e["token"] for e in choice["logprobs"]["content"])
            assert answer_tokens.startswith(message["content"]) and choice["logprobs"]["reasoning"]
        else:
            assert "".join(p["text"] for p in parts) == choice["text"]
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                assert same_numbers([x for p in parts if p["logprobs"] for x in p["logprobs"][key]], choice["logprobs"][key])
    assert len({c["message"]["content"] if chat else c["text"] for c in whole["choices"]}) > 1  # samples differ


def same_numbers(a, b) -> bool:
    """Equal structures, floats within 1e-4 (a prefix-cache hit computes the same logits in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) < 1e-4
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_numbers(x, y) for x, y in zip(a, b))
    return a == b


def test_logprobs_are_the_engines(server, s1_llm):
    status, body = post(server, "/v1/completions", {"prompt": [5, 6, 7], "temperature": 0, "max_tokens": 20,
                                                     "logprobs": 3, "thinking_budget": BUDGET})
    out = s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=20, logprobs=3, budget=ThinkingBudget(**BUDGET)),
                          use_tqdm=False)[0]
    lp = body["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == pytest.approx([None if e is None else e[t] for t, e in zip(out.token_ids, out.logprobs)])
    assert None in lp["token_logprobs"]  # spliced tokens have none
    for entry, top in zip(out.logprobs, lp["top_logprobs"]):
        if entry is not None:
            assert sorted(top.values(), reverse=True) == pytest.approx(sorted(entry.values(), reverse=True)[:3])
    assert "".join(lp["tokens"]) == body["choices"][0]["text"]
    assert lp["text_offset"][-1] == len(body["choices"][0]["text"]) - len(lp["tokens"][-1])


BAD = [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", {"prompt": "hi", "temprature": 0}, 400, "unknown field 'temprature'"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
    ("/v1/completions", {"prompt": "hi", "thinking_budget": {"min_tokens": 9, "max_tokens": 3}}, 400,
     "min_tokens (9) is above max_tokens (3)"),
    ("/v1/completions", {"prompt": "hi", "thinking_budget": {"max_token": 3}}, 400,
     "thinking_budget has no field 'max_token'"),
    ("/v1/completions", {"prompt": "hi", "thinking_budget": "long"}, 400, "thinking_budget must be an integer"),
    ("/v1/completions", {"prompt": [5] * 1000, "max_tokens": 100}, 400, "leave 24 of the context's 1024"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 5000}, 400, "of the context's 1024"),
    ("/v1/completions", {"prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty must be a number in [-2, 2]"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"x": 1}}, 400, "logit_bias keys must be token ids"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"60000": 1}}, 400, "logit_bias token ids [60000] are outside"),
    ("/v1/completions", {"prompt": "hi", "tools": [{"type": "function"}]}, 400, "is not supported by this server"),
    ("/v1/completions", {"prompt": [5] * 2000}, 400, "the context holds 1024"),
    ("/v1/completions", {"prompt": [5] * 2000, "stream": True}, 400, "the context holds 1024"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens must be an integer"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens must be positive (0 only with echo"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 0}, 400, "max_completion_tokens must be positive"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature must be a number >= 0"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs must be between 0 and 20"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "needs stream=true"),
    ("/v1/completions", {"prompt": []}, 400, "prompt must be"),
    ("/v1/completions", {"prompt": [[5]], "n": 300}, 400, "is more than 256 in one request"),
    ("/v1/completions", {"prompt": [[5], [6]], "thinking_budget": [1] * 200}, 400, "2 prompts x 200 choices each"),
    ("/v1/completions", {"prompt": [[5], []]}, 400, "prompt is empty"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "role is one of"),
    ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, 400, "top_logprobs needs logprobs=true"),
    ("/v1/chat/completions", {"messages": MESSAGES, "think_format": "xml"}, 400, "unknown think format"),
    ("/v1/embeddings", {"input": "hi"}, 404, "no route POST /v1/embeddings"),
]


@pytest.mark.parametrize("path, body, status, message", BAD, ids=[m for *_, m in BAD])
def test_a_bad_request_gets_a_clear_error_and_the_server_goes_on(server, path, body, status, message):
    got, answer = request(server, "POST", path, raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert got == status and message in answer["error"]["message"], answer
    assert post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 3})[0] == 200
    assert idle(server)["num_used_blocks"] == 0


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "thinking_budget": {"min_tokens": 9, "max_tokens": 3}}, "thinking_budget"),
    ({"prompt": [5] * 2000}, "prompt"),
    ({"prompt": [5] * 1000, "max_tokens": 100}, "max_tokens"),
    ({"prompt": "hi", "frequency_penalty": "high"}, "frequency_penalty"),
    ({"prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "hi", "logit_bias": {"5": 200}}, "logit_bias"),
    ({"prompt": "hi", "logit_bias": {"60000": 1}}, "logit_bias"),
    ({"prompt": "hi", "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"prompt": "a\ud800"}, "prompt"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -5}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "a\udc00"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5000}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi " * 1500}]}, "messages"),  # longer than the context
])
def test_errors_name_the_field(server, body, param):
    status, answer = post(server, "/v1/chat/completions" if "messages" in body else "/v1/completions", body)
    assert status == 400 and answer["error"]["param"] == param


def test_models_and_health(server):
    assert request(server, "GET", "/health") == (200, {"status": "ok"})
    assert request(server, "GET", "/health?probe=1") == (200, {"status": "ok"})  # a query string is ignored
    status, models = request(server, "GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == server.model_name == server.llm.model_dir.name
    assert request(server, "GET", f"/v1/models/{server.model_name}") == (200, models["data"][0])
    status, body = request(server, "GET", "/v1/models/gpt-4")
    assert status == 404 and body["error"]["param"] == "model" and "'gpt-4' does not exist" in body["error"]["message"]
    assert post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "model": server.model_name})[0] == 200
    assert post(server, "/v1/completions?api-version=1", {"prompt": "hi", "max_tokens": 2})[0] == 200
    assert request(server, "GET", "/v1/nothing")[0] == 404
    encoded = "".join(f"%{b:02X}" for b in server.model_name.encode())
    assert request(server, "GET", f"/v1/models/{encoded}")[0] == 200  # percent-decoded
    for path, status, allow in (("/health", 200, None), ("/v1/models", 200, None), (f"/v1/models/{server.model_name}", 200, None),
                                ("/v1/models/gpt-4", 404, None), ("/v1/completions", 405, "POST"), ("/v1/nothing", 404, None)):
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        conn.request("HEAD", path)
        r = conn.getresponse()
        assert (r.status, r.read(), r.getheader("Allow")) == (status, b"", allow), path
        conn.close()


def test_a_stop_string_that_is_not_unicode_fails_its_request_alone(server):
    """A lone surrogate ("\\ud800" in JSON) in one request's stop strings once failed the engine step, and with
    it every request running beside it."""
    with ThreadPoolExecutor(2) as pool:
        victim = pool.submit(post, server, "/v1/completions", {"prompt": "hi", "max_tokens": 40, "ignore_eos": True})
        time.sleep(0.2)
        status, body = post(server, "/v1/completions", {"prompt": "abc", "max_tokens": 2, "stop": "\ud800"})
        assert status == 400 and body["error"]["param"] == "stop" and "lone surrogate" in body["error"]["message"]
        status, body = victim.result()
    assert status == 200 and body["usage"]["completion_tokens"] == 40
    status, body = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a\udc00"}]})
    assert status == 400 and "messages[0].content is not valid Unicode" in body["error"]["message"]
    assert idle(server)["num_used_blocks"] == 0


def test_concurrent_requests_batch_and_each_equals_its_run_alone(server, s1_llm):
    prompts = [[5 + i, 6, 7 + 2 * i] for i in range(8)]
    before = server.llm.stats()["num_computed_tokens"]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda p: post(server, "/v1/completions", {"prompt": p, "temperature": 0,
                                                                          "max_tokens": 25, "thinking_budget": BUDGET}),
                                prompts))
    for prompt, (status, body) in zip(prompts, replies):
        alone = s1_llm.generate(prompt, SamplingParams(max_tokens=25, budget=ThinkingBudget(**BUDGET)), use_tqdm=False)
        assert status == 200 and body["choices"][0]["text"] == alone[0].text
    assert server.llm.stats()["num_computed_tokens"] > before
    assert idle(server)["num_used_blocks"] == 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_has_its_request_aborted(server, stream, monkeypatch):
    step = server.llm.core.step

    def slow_step():  # 1000 tokens take 10 s or more whatever the load, so the bound below is about the abort
        time.sleep(0.01)
        return step()

    monkeypatch.setattr(server.llm.core, "step", slow_step)
    before = server.llm.stats()["num_computed_tokens"]
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": [5, 6, 7], "max_tokens": 1000, "ignore_eos": True,
                                                        "stream": stream}))
    if stream:
        r = conn.getresponse()
        assert r.status == 200 and r.fp.readline()  # the first chunk arrived
        r.close()
    else:
        time.sleep(0.2)  # the request is running
    conn.sock.close()
    stats = idle(server)
    assert stats["num_used_blocks"] == 0
    assert stats["num_computed_tokens"] - before < 500  # stopped well before its 1000 tokens


def test_the_cli_serves_until_sigterm(make_model):
    proc = subprocess.Popen([sys.executable, "-m", "engine.serve", "--model", str(make_model("llama", seed=11)),
                             "--port", "0", "--quiet"], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    try:
        line = proc.stderr.readline()
        port = int(re.search(r"http://127.0.0.1:(\d+)/v1", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 3}))
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0 and "stopping" in proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()


def test_cli_reports_a_bad_model_dir_and_bad_flags(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["--gpu-memory-utilization", "1.5", "--port", "0"]) == 2
    assert "gpu_memory_utilization must be in (0, 1]" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--port", str(taken.getsockname()[1])]) == 2  # before any model loads
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    for flags in (["--port", "99999"], ["--served-model-name", " "]):
        with pytest.raises(SystemExit):
            main(flags)
        assert "error: --" in capsys.readouterr().err


def test_a_failed_engine_step_fails_its_requests_and_the_server_goes_on(server, monkeypatch):
    step = server.llm.core.step
    calls = []

    def failing_step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated device fault")
        return step()

    monkeypatch.setattr(server.llm.core, "step", failing_step)
    status, body = post(server, "/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 20, "ignore_eos": True})
    assert status == 500 and "simulated device fault" in body["error"]["message"]
    assert idle(server)["num_used_blocks"] == 0
    status, body = post(server, "/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 20, "ignore_eos": True})
    assert status == 200 and body["usage"]["completion_tokens"] == 20


def test_the_openai_client_reads_every_kind_of_reply(server, s1_llm, capsys):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```py\n(.*?)```", readme, flags=re.S) if "OpenAI(" in b)
    exec(snippet.replace("http://127.0.0.1:8000/v1", str(client.base_url)).replace("SmolLM2-135M-Instruct", server.model_name),
         {"__name__": "readme"})
    assert capsys.readouterr().out
    params = SamplingParams(max_tokens=40, budget=ThinkingBudget(**BUDGET))
    expected = s1_llm.chat(MESSAGES, params, use_tqdm=False)[0]
    stream = client.chat.completions.create(model=server.model_name, messages=MESSAGES, temperature=0, max_tokens=40,
                                            stream=True, extra_body={"thinking_budget": BUDGET})
    deltas = [c.choices[0].delta for c in stream]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == expected.thinking_text
    assert "".join(d.content or "" for d in deltas) == expected.answer_text
    done = client.completions.create(model=server.model_name, prompt=[5, 6, 7], temperature=0, max_tokens=40,
                                     logprobs=2, extra_body={"thinking_budget": BUDGET})
    assert done.choices[0].text == s1_llm.generate([5, 6, 7], params, use_tqdm=False)[0].text
    assert done.usage.completion_tokens_details.reasoning_tokens > 0
    with pytest.raises(openai.BadRequestError, match="min_tokens .9. is above max_tokens .3."):
        client.completions.create(model=server.model_name, prompt="hi",
                                  extra_body={"thinking_budget": {"min_tokens": 9, "max_tokens": 3}})
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="hi")


def test_the_load_benchmark_runs(make_model, capsys):
    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    assert serve_load.main(["--model", str(path), "--requests", "3", "--concurrency", "1,3", "--prompt-tokens", "8",
                            "--max-tokens", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| server")]
    assert len(rows) == 2
    with pytest.raises(SystemExit, match="--prompt-tokens 100000 \\+ --max-tokens 4 pass the context of"):
        serve_load.main(["--model", str(path), "--requests", "1", "--prompt-tokens", "100000", "--max-tokens", "4"])


def test_bookkeeping_fields_the_developer_role_and_edge_values_are_taken(server, s1_llm):
    developer = [{"role": "developer", "content": "Be brief."}, MESSAGES[1]]
    status, body = post(server, "/v1/chat/completions", {"messages": developer, "temperature": 0, "max_tokens": 12,
                                                         "user": "u1", "store": False, "metadata": {"k": "v"}})
    assert status == 200  # the developer message is the system message
    assert body["choices"][0]["message"]["content"] == s1_llm.chat(MESSAGES, SamplingParams(max_tokens=12),
                                                                   use_tqdm=False)[0].text
    sampled = {"prompt": [5, 6, 7], "temperature": 0.8, "seed": 1, "max_tokens": 8}
    assert (post(server, "/v1/completions", sampled | {"top_k": 10**20})[1]["choices"][0]["text"]
            == post(server, "/v1/completions", sampled)[1]["choices"][0]["text"])  # k past the vocabulary keeps all
    negative = post(server, "/v1/completions", sampled | {"seed": -1, "n": 2})[1]["choices"]  # signed, as OpenAI's
    assert [c["text"] for c in negative] == [o.text for o in s1_llm.generate(
        [5, 6, 7], SamplingParams(temperature=0.8, seed=2**63 - 1, max_tokens=8, n=2), use_tqdm=False)]
    assert post(server, "/v1/completions", sampled | {"seed": -2**63 - 1})[1]["error"]["param"] == "seed"
    status, body = post(server, "/v1/completions", {"prompt": [5, 6, 7], "thinking_budget": 0, "think_format": "r1",
                                                     "logprobs": 1, "max_tokens": 10, "temperature": 0})
    out = s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=10, logprobs=1, think_format="r1",
                                                    budget=ThinkingBudget(max_tokens=0)), use_tqdm=False)[0]
    token_logprobs = body["choices"][0]["logprobs"]["token_logprobs"]
    assert status == 200 and token_logprobs[0] is None and token_logprobs[-1] is not None  # spliced, then sampled
    assert same_numbers(token_logprobs, [None if e is None else e[t] for t, e in zip(out.token_ids, out.logprobs)])


def test_a_request_whose_own_work_fails_fails_alone(server, monkeypatch):
    pump = Job.pump

    def pump_failing_for_13_tokens(job, llm):
        if job.api.params.max_tokens == 13:
            raise RuntimeError("simulated bug in one reply")
        return pump(job, llm)

    monkeypatch.setattr(Job, "pump", pump_failing_for_13_tokens)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(post, server, "/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 150, "ignore_eos": True})
        time.sleep(0.2)
        status, body = post(server, "/v1/completions", {"prompt": [8, 9], "max_tokens": 13})
        assert status == 500 and "simulated bug in one reply" in body["error"]["message"]
        status, body = long.result()
    assert status == 200 and body["usage"]["completion_tokens"] == 150
    assert idle(server)["num_used_blocks"] == 0


def test_a_stopped_engine_thread_is_reported_not_waited_on(make_model):
    llm = LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as srv:
        assert request(srv, "GET", "/health")[0] == 200
        running, gate = threading.Event(), threading.Event()
        srv.loop.inbox.put(("call", (lambda llm: running.set() or gate.wait(), queue.Queue())))
        running.wait()  # the engine thread is inside the call: the stop and the job behind it queue together
        srv.loop.inbox.put(("stop", None))
        queued = Job(parse_request({"prompt": "hi"}, False, srv.model_name, 1024), srv.model_name)
        srv.loop.submit(queued)
        gate.set()
        srv.loop.thread.join(timeout=30)
        assert queued.events.get(timeout=5)[1].status == 503  # a job queued behind the stop is answered
        with pytest.raises(RuntimeError, match="the engine thread has stopped"):
            srv.loop.call(lambda llm: None)
        assert request(srv, "GET", "/health")[0] == 503
        status, body = post(srv, "/v1/completions", {"prompt": "hi", "max_tokens": 3})
        assert status == 503 and "engine thread has stopped" in body["error"]["message"]


def test_a_route_named_with_the_wrong_method_answers_405(server):
    status, body = request(server, "GET", "/v1/completions")
    assert status == 405 and "takes POST" in body["error"]["message"]
    assert post(server, "/v1/models", {})[0] == 405
    status, body = request(server, "DELETE", "/v1/models")
    assert status == 405 and body["error"]["message"] == "/v1/models takes GET, not DELETE"
    status, body = request(server, "PUT", "/v1/chat/completions", {})
    assert status == 405 and "takes POST, not PUT" in body["error"]["message"]
    assert request(server, "PATCH", "/v1/nothing")[0] == 404
    status, body = request(server, "OPTIONS", "/v1/models")  # http.server's own errors are JSON too
    assert status == 501 and body["error"]["message"] == "Unsupported method ('OPTIONS')"
    with socket.create_connection(server.server_address[:2], timeout=30) as raw:
        raw.sendall(b"NONSENSE\r\n\r\n")
        reply = raw.makefile("rb").read().decode()
    assert json.loads(reply)["error"]["message"] == "Bad request syntax ('NONSENSE')"  # an HTTP/0.9 reply: no headers


@pytest.mark.parametrize("chat", [False, True])
def test_a_thinking_budget_list_is_a_sweep_equal_to_llm_sweep(server, s1_llm, chat):
    settings = [{"max_tokens": 4, "final_answer_str": "Final Answer:"}, {"max_tokens": 12, "num_ignore": 1},
                {"min_tokens": 6, "max_tokens": 20, "final_answer_str": "Final Answer:"}]
    budgets = [ThinkingBudget(**b) for b in settings]
    params = SamplingParams(max_tokens=40, temperature=0.8, seed=5)
    body = {"thinking_budget": settings, "max_tokens": 40, "temperature": 0.8, "seed": 5}
    if chat:
        status, reply = post(server, "/v1/chat/completions", body | {"messages": MESSAGES})
        prompts = [s1_llm.chat_prompt(MESSAGES, SamplingParams(budget=budgets[0]))]
    else:
        prompts = [[5, 6, 7], "Count the letters:"]
        status, reply = post(server, "/v1/completions", body | {"prompt": prompts})
    assert status == 200
    expected = [o for row in s1_llm.sweep(prompts, params, budgets, use_tqdm=False) for o in row]
    assert len(reply["choices"]) == len(expected) == len(prompts) * len(settings)
    for choice, out in zip(reply["choices"], expected):
        got = (choice["message"]["reasoning_content"], choice["message"]["content"]) if chat else choice["text"]
        assert got == ((out.thinking_text, out.answer_text) if chat else out.text)
        assert choice["num_thinking_tokens"] == out.num_thinking_tokens
    assert len({c["num_thinking_tokens"] for c in reply["choices"]}) > 1  # the settings differ
    assert idle(server)["num_used_blocks"] == 0
    status, answer = post(server, "/v1/completions", body | {"prompt": [5, 6, 7], "n": 2})
    assert status == 400 and "a sweep" in answer["error"]["message"]


def test_lm_eval_local_completions_runs_a_budget_forced_task_through_the_server(server, s1_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the task reads a local JSON file
    import lm_eval.models  # noqa: F401  registers local-completions (lm_eval skips it once s1engine is registered)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    questions = [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3")]
    budget = '  thinking_budget: {max_tokens: 12, num_ignore: 1, final_answer_str: "Final Answer:"}\n'
    write_task(tmp_path, "serve_gen", [{"question": q, "answer": a} for q, a in questions], generate_until(budget))
    results = simple_evaluate(
        model="local-completions", tasks=["serve_gen"], log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        model_args={"base_url": f"http://127.0.0.1:{server.server_address[1]}/v1/completions",
                    "model": server.model_name, "tokenized_requests": False, "tokenizer_backend": None,
                    "num_concurrent": 1, "max_retries": 1})
    params = SamplingParams(max_tokens=40, stop=["Question:"], seed=1234,
                            budget=ThinkingBudget(max_tokens=12, num_ignore=1, final_answer_str="Final Answer:"))
    for sample in results["samples"]["serve_gen"]:
        prompt = sample["arguments"][0][0]
        assert sample["resps"] == [[s1_llm.generate(prompt, params, use_tqdm=False)[0].text]]
        assert "Final Answer:" in sample["resps"][0][0] or "<|im_start|>answer" in sample["resps"][0][0]


def test_echo_puts_the_prompt_and_its_logprobs_first_streamed_or_not(server, s1_llm):
    prompt = [5, 6, 7, 8, 9]
    body = {"prompt": prompt, "temperature": 0, "max_tokens": 6, "logprobs": 2, "echo": True}
    status, whole = post(server, "/v1/completions", body)
    assert status == 200
    out = s1_llm.generate(prompt, SamplingParams(max_tokens=6, logprobs=2, prompt_logprobs=2), use_tqdm=False)[0]
    choice, prompt_text = whole["choices"][0], s1_llm.tokenizer.decode(prompt)
    assert choice["text"] == prompt_text + out.text
    lp = choice["logprobs"]
    entries = out.prompt_logprobs + out.logprobs
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx([e[t] for t, e in zip(prompt[1:] + out.token_ids, entries[1:])], abs=1e-4)
    assert all(len(top) <= 2 and max(top.values()) >= value - 1e-6
               for top, value in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:]))
    assert len(lp["tokens"]) == len(prompt) + len(out.token_ids) and lp["text_offset"][0] == 0
    status, chunks = post(server, "/v1/completions", body | {"stream": True})
    parts = [c["choices"][0] for c in chunks]
    assert parts[0]["text"] == prompt_text and len(parts[0]["logprobs"]["tokens"]) == len(prompt)
    assert "".join(p["text"] for p in parts) == choice["text"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert same_numbers([x for p in parts if p["logprobs"] for x in p["logprobs"][key]], lp[key])
    status, plain = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 3, "echo": True, "temperature": 0})
    assert plain["choices"][0]["text"].startswith(prompt_text) and plain["choices"][0]["logprobs"] is None
    text = " Count  the letters:"  # a string is echoed as sent, even where its ids decode otherwise
    for stream in (False, True):
        status, body = post(server, "/v1/completions", {"prompt": text, "max_tokens": 2, "echo": True, "stream": stream})
        first = body[0]["choices"][0] if stream else body["choices"][0]
        assert status == 200 and first["text"].startswith(text)
    status, scored = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0})
    choice = scored["choices"][0]  # OpenAI's legacy scoring call: the prompt's logprobs, nothing generated
    assert status == 200 and choice["text"] == prompt_text and scored["usage"]["completion_tokens"] == 0
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(lp["token_logprobs"][: len(prompt)], abs=1e-4)
    for stream in (False, True):  # no logprobs asked for: none given, streamed or not
        status, bare = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "stream": stream})
        choices = [c["choices"][0] for c in bare] if stream else bare["choices"]
        assert status == 200 and "".join(c["text"] for c in choices) == prompt_text
        assert all(c["logprobs"] is None for c in choices)
    status, answer = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 0})
    assert status == 400 and answer["error"]["param"] == "max_tokens" and "echo" in answer["error"]["message"]
    status, answer = post(server, "/v1/chat/completions", {"messages": MESSAGES, "echo": True})
    assert status == 400 and answer["error"]["param"] == "echo"
    assert idle(server)["num_used_blocks"] == 0


def test_lm_eval_local_completions_scores_a_multiple_choice_task_through_the_server(server, s1_llm, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import lm_eval.models  # noqa: F401  registers local-completions
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    lm = LocalCompletionsAPI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1/completions",
                             model=server.model_name, num_concurrent=1, max_retries=1, batch_size=4)
    assert type(lm.tokenizer).__name__ == "RemoteTokenizer"  # found /tokenizer_info and /tokenize: no tokenizer to name
    context = "Question: Pick the next word.\nAnswer:"
    ctx_ids = lm.tok_encode(context)
    greedy_ids = s1_llm.generate(ctx_ids, SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)[0].token_ids
    greedy = s1_llm.tokenizer.decode(greedy_ids)
    docs = [{"question": "Pick the next word.", "choices": [" cat", greedy, " dog"], "label": 1},
            {"question": "What is 2 + 3?", "choices": [" 4", " 5", " six"], "label": 1}]
    write_task(tmp_path, "serve_mc", docs, MULTIPLE_CHOICE)
    results = simple_evaluate(model=lm, tasks=["serve_mc"], log_samples=True, bootstrap_iters=0,
                              task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    seen_greedy = []
    for sample in results["samples"]["serve_mc"]:
        for (ctx, cont), ((logprob, is_greedy),) in zip(sample["arguments"], sample["resps"]):
            ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
            assert logprob == pytest.approx(sum(s1_llm.score(ctx_ids, cont_ids)[0]), abs=1e-4)
            greedy_out = s1_llm.generate(ctx_ids, SamplingParams(max_tokens=len(cont_ids), ignore_eos=True),
                                         use_tqdm=False)[0]
            assert is_greedy == (greedy_out.token_ids == cont_ids)
            seen_greedy.append(is_greedy)
    assert seen_greedy.count(True) == 1  # the greedy choice, and only it
    assert idle(server)["num_used_blocks"] == 0


def test_tokenize_detokenize_and_tokenizer_info_are_the_engines(server, s1_llm):
    tok = s1_llm.tokenizer
    status, body = post(server, "/tokenize", {"prompt": "How many r in raspberry?"})
    assert status == 200 and body["tokens"] == tok.encode("How many r in raspberry?") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == s1_llm.max_model_len
    status, body = post(server, "/tokenize", {"prompt": "Hi there", "add_special_tokens": False})
    assert body["tokens"] == tok.encode_piece("Hi there")
    status, body = post(server, "/tokenize", {"messages": MESSAGES})
    assert body["tokens"] == s1_llm.chat_prompt(MESSAGES, SamplingParams())
    status, body = post(server, "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and body["prompt"] == tok.decode(s1_llm.chat_prompt(MESSAGES, SamplingParams()))
    status, info = request(server, "GET", "/tokenizer_info")
    assert status == 200 and info["eos_token"] == tok.hf.eos_token and info["chat_template"]
    assert info["model_max_length"] == s1_llm.max_model_len
    for path, bad, param in [("/tokenize", {"prompt": "x", "messages": MESSAGES}, "prompt"),
                             ("/tokenize", {"text": "x"}, "text"),
                             ("/detokenize", {"tokens": [10**9]}, "tokens"),
                             ("/detokenize", {"tokens": "abc"}, "tokens"),
                             ("/tokenize", {"messages": [{"role": "user", "content": 5}]}, "messages")]:
        status, answer = post(server, path, bad)
        assert status == 400 and answer["error"]["param"] == param
    assert request(server, "GET", "/tokenize")[0] == 405 and post(server, "/tokenizer_info", {})[0] == 405


def test_metrics_count_tokens_requests_and_blocks(server):
    def metrics() -> dict[str, float]:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/plain")
        text = r.read().decode()
        conn.close()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}

    before = metrics()
    status, body = post(server, "/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 4, "n": 2, "temperature": 0})
    idle(server)
    after = metrics()
    assert after["s1engine_prompt_tokens_total"] - before["s1engine_prompt_tokens_total"] == body["usage"]["prompt_tokens"]
    assert (after["s1engine_generation_tokens_total"] - before["s1engine_generation_tokens_total"]
            == body["usage"]["completion_tokens"] == 8)
    assert after["s1engine_computed_tokens_total"] > before["s1engine_computed_tokens_total"]
    assert after["s1engine_kv_blocks_used"] == 0 and after["s1engine_kv_blocks_total"] == server.llm.core.block_manager.num_blocks
    assert after["s1engine_sequences_running"] == after["s1engine_sequences_waiting"] == 0
    key = 's1engine_http_requests_total{route="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    model = request(server, "GET", "/v1/models")[1]["data"][0]["id"]
    assert request(server, "GET", f"/v1/models/{model}")[0] == 200 and request(server, "GET", "/v1/models/nope")[0] == 404
    assert request(server, "GET", "/nope")[0] == 404
    last = metrics()  # one model's route is counted as such, not with the unknown routes
    for route, status in (("/v1/models/{model}", 200), ("/v1/models/{model}", 404), ("other", 404)):
        key = f's1engine_http_requests_total{{route="{route}",status="{status}"}}'
        assert last[key] == after.get(key, 0) + 1, key


def test_an_api_key_guards_every_route_but_health_and_metrics(make_model, monkeypatch):
    from openai import AuthenticationError, OpenAI

    llm = LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)
    with in_background(OpenAIServer(llm, port=0, quiet=True, api_key="sekrit")) as srv:
        status, answer = post(srv, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 401 and "Authorization: Bearer KEY" in answer["error"]["message"]
        assert request(srv, "GET", "/v1/models")[0] == 401 and post(srv, "/tokenize", {"prompt": "x"})[0] == 401
        assert request(srv, "GET", "/health")[0] == 200
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi"}), {"Authorization": "bearer  sekrit "})
        accepted = conn.getresponse()
        assert accepted.status == 200 and accepted.read()  # the scheme in any case, the key trimmed
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi"}), {"Authorization": "Bearer wrong"})
        refused = conn.getresponse()
        assert refused.status == 401 and refused.getheader("Connection") == "close"  # its body was not read
        conn.close()
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=base, api_key="wrong", max_retries=0).completions.create(model=srv.model_name, prompt="hi",
                                                                                     max_tokens=2)
        reply = OpenAI(base_url=base, api_key="sekrit", max_retries=0).completions.create(
            model=srv.model_name, prompt="hi", max_tokens=2, temperature=0)
        assert reply.choices[0].text == llm.generate("hi", SamplingParams(max_tokens=2), use_tqdm=False)[0].text
    monkeypatch.setenv("S1_API_KEY", "from-env")
    from engine.serve import parse_args

    assert parse_args([]).api_key == "from-env" and parse_args(["--api-key", "flag"]).api_key == "flag"
    monkeypatch.setenv("S1_API_KEY", "")
    assert parse_args([]).api_key is None


def test_closing_ends_the_handlers_of_kept_alive_connections(make_model):
    llm = LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as srv:
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
        conn.request("GET", "/health")
        assert conn.getresponse().read() and len(srv.handlers) == 1  # kept alive: its handler waits for more
        (handler,) = srv.handlers
        start = time.perf_counter()
    assert time.perf_counter() - start < 5 and not handler.thread.is_alive()
    conn.close()


def test_a_call_that_lands_after_the_engine_thread_took_its_stop_is_answered(make_model, monkeypatch):
    llm = LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as srv:
        entered, release, errors = threading.Event(), threading.Event(), queue.Queue()
        shut_down = srv.loop._shut_down

        def slow_shut_down(unread, why):
            entered.set()
            release.wait()
            shut_down(unread, why)

        monkeypatch.setattr(srv.loop, "_shut_down", slow_shut_down)
        srv.loop.inbox.put(("stop", None))
        entered.wait(timeout=30)  # the thread has drained its inbox: nothing reads a call put now

        def call():
            try:
                srv.loop.call(lambda llm: None)
            except RuntimeError as e:
                errors.put(e)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.2)
        release.set()
        caller.join(timeout=10)
        assert not caller.is_alive() and "stopped" in str(errors.get(timeout=1))
        status, body = post(srv, "/tokenize", {"prompt": "hi"})
        assert status == 503


def test_penalties_and_logit_bias_are_the_engines(server, s1_llm):
    body = {"prompt": [5, 6, 7], "max_tokens": 12, "temperature": 0, "presence_penalty": 0.5, "frequency_penalty": 1,
            "repetition_penalty": 1.3, "logit_bias": {"100": 4, "200": -3.5}}
    status, answer = post(server, "/v1/completions", body)
    params = SamplingParams(max_tokens=12, presence_penalty=0.5, frequency_penalty=1, repetition_penalty=1.3,
                            logit_bias={100: 4, 200: -3.5})
    out = s1_llm.generate([5, 6, 7], params, use_tqdm=False)[0]
    assert status == 200 and answer["choices"][0]["text"] == out.text
    assert out.token_ids != s1_llm.generate([5, 6, 7], SamplingParams(max_tokens=12), use_tqdm=False)[0].token_ids
    chat = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0, "frequency_penalty": 2}
    status, answer = post(server, "/v1/chat/completions", chat)
    expected = s1_llm.chat(MESSAGES, SamplingParams(max_tokens=12, frequency_penalty=2), use_tqdm=False)[0]
    assert status == 200 and answer["choices"][0]["message"]["content"] == expected.text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_a_certificate_and_clear_errors_for_bad_ones(server, tmp_path, capsys):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.create_default_context(cafile=str(cert))
    with in_background(OpenAIServer(server.llm, port=0, quiet=True, ssl_context=tls_context(str(cert), str(key)))) as srv:
        host, port = srv.server_address[:2]
        with socket.create_connection((host, port), timeout=30) as plain:  # plain HTTP to the TLS port: ended
            plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(100).startswith(b"HTTP/")  # its handshake fails; the server goes on
        conn = http.client.HTTPSConnection(host, port, timeout=120, context=context)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 5, "temperature": 0}),
                     {"Content-Type": "application/json"})
        reply = conn.getresponse()
        body = json.loads(reply.read())
        conn.request("GET", "/health")  # the same kept-alive TLS connection
        assert (conn.getresponse().status, reply.status) == (200, 200)
        conn.close()
        alone = server.llm.generate("hi", SamplingParams(max_tokens=5), use_tqdm=False)[0]
        assert body["choices"][0]["text"] == alone.text
    with pytest.raises(SystemExit) as usage:
        main(["--ssl-certfile", str(cert)])
    assert usage.value.code == 2 and "--ssl-certfile and --ssl-keyfile go together" in capsys.readouterr().err
    assert main(["--port", "0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "none.pem")]) == 2
    assert f"cannot load --ssl-certfile {cert} with --ssl-keyfile {tmp_path / 'none.pem'}" in capsys.readouterr().err


def test_out_of_memory_fails_the_step_and_a_broken_gpu_stops_the_engine(make_model, monkeypatch):
    """An OOM fails the running requests and the server goes on; a sticky CUDA error ends the engine thread,
    so /health answers 503 (a supervisor restarts the server) and new requests get a 503."""
    llm = LLM(model=make_model("llama"), block_size=8)
    step, faults = llm.core.step, [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered")]

    def faulty_step():
        if llm.core.scheduler.running and faults:
            raise faults.pop(0)
        return step()

    monkeypatch.setattr(llm.core, "step", faulty_step)
    body = {"prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": True}
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as srv:
        status, reply = post(srv, "/v1/completions", body)
        assert status == 500 and "out of memory" in reply["error"]["message"]
        assert request(srv, "GET", "/health")[0] == 200
        status, reply = post(srv, "/v1/completions", body)  # the illegal address
        assert status == 500 and "illegal memory access" in reply["error"]["message"]
        deadline = time.time() + 10
        while request(srv, "GET", "/health")[0] != 503 and time.time() < deadline:
            time.sleep(0.05)
        assert request(srv, "GET", "/health")[0] == 503
        status, reply = post(srv, "/v1/completions", body)
        assert status == 503 and "restart the server" in reply["error"]["message"]


@pytest.mark.parametrize("error,broken", [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"), True),  # Triton's launcher
    (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`"), True),
    (torch.AcceleratorError("CUDA error: unspecified launch failure"), True),
    (torch.AcceleratorError("CUDA error: out of memory"), False),  # recoverable, whatever its class
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (ValueError("a bug of the engine's own"), False),
])
def test_which_errors_leave_the_gpu_broken(error, broken):
    from engine.serve import device_broken

    assert device_broken(error, torch.device("cpu")) is broken


def test_a_burst_of_new_connections_is_served_not_reset(server):
    """Clients connecting at once queue in the listen backlog (socketserver's default of 5 reset most of a
    burst of 64 while the accept loop shared the GIL with the engine)."""
    results, barrier = [], threading.Barrier(64)

    def client(i: int) -> None:
        barrier.wait()
        try:
            results.append(post(server, "/v1/completions", {"prompt": [5 + i % 7, 6], "max_tokens": 2, "temperature": 0})[0])
        except OSError as e:  # a reset connection
            results.append(type(e).__name__)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 64
    assert idle(server)["num_used_blocks"] == 0
