"""Threads sharing one LLM: calls interleave a step at a time under LLM.lock, every request's tokens equal
its run alone, and nothing leaks. (Without the lock, three threads calling generate got wrong tokens,
IndexErrors and shape mismatches.)"""
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest

from engine import LLM, SamplingParams, ThinkingBudget
from engine.serve import OpenAIServer, in_background
from tests.test_serve import post

BUDGET = ThinkingBudget(max_tokens=6, num_ignore=1, final_answer_str="Final Answer:")


@pytest.fixture(scope="module")
def llm(make_model):
    return LLM(model=make_model("qwen2", seed=3, end_token=1, hf_init=True), block_size=8)


def jobs(thread: int) -> list[tuple[list[int], SamplingParams]]:
    return [([5 + thread, 6 + i, 7, 8 + 3 * thread], SamplingParams(max_tokens=20 + i, temperature=0.8 * (i % 2),
                                                                     seed=10 * thread + i, budget=BUDGET if i else None))
            for i in range(3)]


def test_threads_calling_generate_and_stream_at_once_get_their_runs_alone(llm):
    expected = {t: [llm.generate(p, sp, use_tqdm=False)[0].token_ids for p, sp in jobs(t)] for t in range(4)}
    start = threading.Barrier(4)

    def generate(t):
        start.wait()
        return [llm.generate(p, sp, use_tqdm=False)[0].token_ids for p, sp in jobs(t)]

    def stream(t):
        start.wait()
        got = []
        for p, sp in jobs(t):
            deltas = list(llm.stream(p, sp))
            assert [i for d in deltas for i in d.token_ids] == deltas[-1].output.token_ids
            got.append(deltas[-1].output.token_ids)
        return got

    with ThreadPoolExecutor(4) as pool:
        futures = {t: pool.submit(stream if t == 3 else generate, t) for t in range(4)}
        assert {t: f.result() for t, f in futures.items()} == expected
    assert llm.stats()["num_used_blocks"] == 0


def test_an_app_thread_generates_while_the_server_serves_the_same_llm(llm):
    prompt, params = [9, 8, 7, 6], SamplingParams(max_tokens=24, budget=BUDGET)
    alone = llm.generate(prompt, params, use_tqdm=False)[0].text
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as srv, ThreadPoolExecutor(3) as pool:
        body = {"prompt": prompt, "temperature": 0, "max_tokens": 24, "thinking_budget": asdict(BUDGET)}
        replies = [pool.submit(post, srv, "/v1/completions", body) for _ in range(3)]
        mine = [llm.generate(prompt, params, use_tqdm=False)[0].text for _ in range(3)]
        assert [(r.result()[0], r.result()[1]["choices"][0]["text"]) for r in replies] == [(200, alone)] * 3
    assert mine == [alone] * 3 and llm.stats()["num_used_blocks"] == 0
