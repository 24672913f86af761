"""Throughput: the engine beside a peer on the same model (the default, CPU, fp32 unless BENCH_DTYPE) and
prompts, in one run.

(a) one request, 128-token prompt, 128 new tokens: `LLM.generate` vs transformers `generate`.
(b) 32 requests, prompts 32..512 tokens, outputs 16..256 tokens: the engine with all 32 submitted at
    once (continuous batching) vs one left-padded transformers `generate` batch, which runs every row
    to the batch's longest output. Both count only the useful tokens (the requested output lengths).
(c) budget forcing (num_ignore=2, s1 think format) on 8 math questions: the engine with all 8 at once
    vs s1's re-prefill loop over transformers, one question at a time. The engine's tokens must equal
    the loop's (the correctness oracle).
(d) a sweep of 6 thinking caps over 8 questions: `LLM.sweep` (one sequence per question, forked at each
    cap) vs the 6 settings run one by one through the engine. Equal outputs; computed tokens and time.
(e) n=8 samples of one prompt vs 8 separate requests with prefix caching off. Equal outputs (seeds).
(f) loglikelihood scoring as in a multiple-choice eval (4 choices per context): `LLM.score` over all the
    pairs vs transformers' forward over right-padded batches of 16 pairs (BENCH_HF_SCORE_BATCH), log-softmax
    at the choices' positions. tokens = context + choice tokens of every pair; the logprobs must agree.

Not part of the test suite (pyproject's testpaths is tests/); run explicitly:
    python -m pytest benchmarks/test_throughput.py --benchmark-json=/tmp/bench.json
    python -m benchmarks.report /tmp/bench.json
Env: BENCH_SCALE (default 1) shrinks every length and count for smoke runs; BENCH_ROUNDS and
BENCH_WARMUP override the rounds; BENCH_HF_BATCH splits (b)'s transformers batch (default: one batch);
BENCH_THREADS sets torch's thread count for both sides (default: torch's own, one per core);
BENCH_DTYPE=bfloat16 or float16 runs both sides in that dtype (default float32; the sides' tokens then agree less).
On a machine whose cores other jobs share, multi-threaded CPU torch can slow down many times over while
they run (threads wait on a descheduled sibling at every op): compare rounds, watch loadavg_1m in
extra_info, or use BENCH_THREADS=1.
"""
import os
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from benchmarks import workloads
from benchmarks.s1_reference import s1_budget_forcing
from engine import LLM, SamplingParams, ThinkingBudget
from engine.weights import default_model_dir

pytestmark = pytest.mark.filterwarnings("ignore")
if os.environ.get("BENCH_THREADS"):  # both sides share it; 1 is steadier on a machine shared with other jobs
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
GROUPS = workloads.group_names()
BENCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
if os.environ.get("BENCH_DTYPE", "float32") not in BENCH_DTYPES:
    raise ValueError(f"BENCH_DTYPE must be one of {sorted(BENCH_DTYPES)}, got {os.environ['BENCH_DTYPE']!r}")
DTYPE = BENCH_DTYPES[os.environ.get("BENCH_DTYPE", "float32")]


# ---- shared state: one model of each kind per session ----


@pytest.fixture(scope="session")
def model_dir():
    return default_model_dir()


@pytest.fixture(scope="session")
def llm(model_dir):
    return LLM(model=model_dir, device="cpu", dtype=DTYPE)


@pytest.fixture(scope="session")
def cold_cache(llm):
    """Before every round: an empty prefix cache, so no round reuses an earlier round's prompts."""
    return llm.reset_prefix_cache


@pytest.fixture(scope="session")
def hf_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE).eval()


@pytest.fixture(scope="session")
def outputs():
    """Token ids each side produced, by scenario and side, for the cross-checks."""
    return {}


def record(benchmark, scenario: str, role: str, tokens: int, **extra) -> None:
    """tokens_per_s uses the median round; tokens_per_s_best the fastest (robust to a noisy neighbour).
    loadavg_1m is the machine's load when the test ended: well above `threads` means other jobs ran."""
    stats = benchmark.stats.stats
    benchmark.extra_info.update(
        scenario=scenario,
        role=role,
        tokens=tokens,
        tokens_per_s=tokens / stats.median,
        tokens_per_s_best=tokens / stats.min,
        scale=workloads.scale(),
        threads=torch.get_num_threads(),
        dtype=str(DTYPE)[6:],
        loadavg_1m=round(os.getloadavg()[0], 2),
        **extra,
    )


def agreement(engine: list[list[int]], peer: list[list[int]]) -> dict:
    """How far the two sides' greedy tokens agree (fp32 kernels differ, so near-ties may flip late)."""
    prefixes = []
    for a, b in zip(engine, peer):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefixes.append(n / max(len(a), len(b), 1))
    return {
        "identical_requests": sum(a == b for a, b in zip(engine, peer)),
        "mean_common_prefix": sum(prefixes) / len(prefixes),
    }


def cross_check(benchmark, outputs, scenario: str) -> None:
    sides = outputs.get(scenario, {})
    if "engine" in sides and "peer" in sides:
        benchmark.extra_info.update(agreement(sides["engine"], sides["peer"]))


def hf_greedy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Exactly `new_tokens` greedy tokens per row: no EOS stop and no EOS masking (as ignore_eos)."""
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[:, input_ids.shape[1] :]


# ---- (a) one request ----

GROUP_A = GROUPS["a"]


@pytest.fixture(scope="session")
def single(llm):
    return workloads.single_workload(llm.tokenizer)


@pytest.mark.benchmark(group=GROUP_A)
def test_a_single_engine(benchmark, llm, single, outputs, cold_cache):
    params = SamplingParams(max_tokens=single.new_tokens, ignore_eos=True)
    out = benchmark.pedantic(
        lambda: llm.generate([single.prompt], params, use_tqdm=False),
        rounds=workloads.rounds(3), warmup_rounds=workloads.warmup_rounds(1), iterations=1, setup=cold_cache,
    )
    assert [len(o.token_ids) for o in out] == [single.new_tokens]
    llm.core.block_manager.check_all_free()
    outputs.setdefault("a", {})["engine"] = [o.token_ids for o in out]
    record(benchmark, "a", "engine", single.new_tokens)
    cross_check(benchmark, outputs, "a")


@pytest.mark.benchmark(group=GROUP_A)
def test_a_single_transformers(benchmark, hf_model, single, outputs):
    ids = torch.tensor([single.prompt])
    mask = torch.ones_like(ids)
    new = benchmark.pedantic(
        lambda: hf_greedy(hf_model, ids, mask, single.new_tokens),
        rounds=workloads.rounds(3), warmup_rounds=workloads.warmup_rounds(1), iterations=1,
    )
    assert new.shape == (1, single.new_tokens)
    outputs.setdefault("a", {})["peer"] = new.tolist()
    record(benchmark, "a", "peer", single.new_tokens, peer="transformers generate")
    cross_check(benchmark, outputs, "a")


# ---- (b) many requests, mixed lengths ----

GROUP_B = GROUPS["b"]


@pytest.fixture(scope="session")
def batch(llm):
    return workloads.batch_workload(llm.tokenizer)


@pytest.mark.benchmark(group=GROUP_B)
def test_b_batch_engine(benchmark, llm, batch, outputs, cold_cache):
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in batch.output_lens]
    out = benchmark.pedantic(
        lambda: llm.generate(batch.prompts, params, use_tqdm=False),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1, setup=cold_cache,
    )
    assert [len(o.token_ids) for o in out] == batch.output_lens
    llm.core.block_manager.check_all_free()
    outputs.setdefault("b", {})["engine"] = [o.token_ids for o in out]
    record(
        benchmark, "b", "engine", batch.useful_tokens,
        requests=len(batch.prompts), preemptions=llm.core.scheduler.num_preemptions,
    )
    cross_check(benchmark, outputs, "b")


def hf_batched(model, prompts: list[list[int]], output_lens: list[int], batch_size: int) -> list[list[int]]:
    """Left-padded batches; each runs to its longest output; rows are cut to their own length."""
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk, lens = prompts[start : start + batch_size], output_lens[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        new = hf_greedy(model, ids, mask, max(lens))
        results += [row[:n] for row, n in zip(new.tolist(), lens)]
    return results


@pytest.mark.benchmark(group=GROUP_B)
def test_b_batch_transformers(benchmark, hf_model, batch, outputs):
    batch_size = int(os.environ.get("BENCH_HF_BATCH", len(batch.prompts)))
    new = benchmark.pedantic(
        lambda: hf_batched(hf_model, batch.prompts, batch.output_lens, batch_size),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1,
    )
    assert [len(t) for t in new] == batch.output_lens
    outputs.setdefault("b", {})["peer"] = new
    generated = sum(
        len(batch.prompts[s : s + batch_size]) * max(batch.output_lens[s : s + batch_size])
        for s in range(0, len(batch.prompts), batch_size)
    )
    record(
        benchmark, "b", "peer", batch.useful_tokens,
        requests=len(batch.prompts), peer=f"transformers generate, left-padded batches of {batch_size}",
        tokens_generated_incl_waste=generated,
    )
    cross_check(benchmark, outputs, "b")


# ---- (c) budget forcing ----

GROUP_C = GROUPS["c"]


@pytest.fixture(scope="session")
def budget_case(llm):
    w = workloads.budget_workload()
    params = SamplingParams(
        max_tokens=w.max_tokens,
        budget=ThinkingBudget(max_tokens=w.thinking_tokens, num_ignore=w.num_ignore, final_answer_str="Final Answer:"),
        think_format="s1",
    )
    prompts = [llm.chat_prompt([{"role": "user", "content": q}], params) for q in w.questions]
    return params, prompts


@pytest.fixture(scope="session")
def s1_loop(llm, hf_model, budget_case):
    params, _ = budget_case
    tokenizer, eos = llm.tokenizer.hf, llm.tokenizer.eos_token_ids

    def run(prompts):
        return [s1_budget_forcing(hf_model, tokenizer, p, params.budget, params.think_format, eos, params.max_tokens)
                for p in prompts]

    return run


@pytest.mark.benchmark(group=GROUP_C)
def test_c_budget_engine(benchmark, llm, budget_case, outputs, cold_cache):
    params, prompts = budget_case
    out = benchmark.pedantic(
        lambda: llm.generate(prompts, params, use_tqdm=False),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1, setup=cold_cache,
    )
    assert all(o.finish_reason in ("stop", "length") for o in out), [o.error for o in out]
    llm.core.block_manager.check_all_free()
    outputs.setdefault("c", {})["engine"] = [o.token_ids for o in out]
    record(
        benchmark, "c", "engine", sum(len(o.token_ids) for o in out),
        requests=len(prompts),
        ignores_used=sum(o.num_ignores_used for o in out),
        caps_hit=sum(o.num_thinking_tokens >= params.budget.max_tokens for o in out),
        thinking_tokens=sum(o.num_thinking_tokens for o in out),
    )
    if "peer" in outputs["c"]:
        assert outputs["c"]["engine"] == outputs["c"]["peer"]


@pytest.mark.benchmark(group=GROUP_C)
def test_c_budget_s1_loop(benchmark, llm, budget_case, s1_loop, outputs):
    params, prompts = budget_case
    expected = benchmark.pedantic(
        lambda: s1_loop(prompts),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1,
    )
    outputs.setdefault("c", {})["peer"] = expected
    record(
        benchmark, "c", "peer", sum(len(t) for t in expected),
        requests=len(prompts), peer="s1 re-prefill loop over transformers, one question at a time",
    )
    engine = outputs["c"].get("engine")
    if engine is None:  # the engine test did not run (e.g. -k): one untimed engine pass for the oracle
        engine = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    for i, (got, want) in enumerate(zip(engine, expected)):
        assert got == want, f"question {i}: engine tokens differ from s1's re-prefill loop"


# ---- (d) a budget sweep by forking ----

GROUP_D = GROUPS["d"]


@pytest.fixture(scope="session")
def sweep_case(llm):
    w = workloads.sweep_workload()
    settings = [ThinkingBudget(max_tokens=c, num_ignore=w.num_ignore, final_answer_str="Final Answer:") for c in w.caps]
    params = SamplingParams(max_tokens=w.max_tokens)
    prompts = [llm.chat_prompt([{"role": "user", "content": q}], replace(params, budget=settings[0]))
               for q in w.questions]
    return params, settings, prompts


def computed_tokens(llm, fn):
    before = llm.stats()["num_computed_tokens"]
    result = fn()
    return result, llm.stats()["num_computed_tokens"] - before


@pytest.mark.benchmark(group=GROUP_D)
def test_d_sweep_engine(benchmark, llm, sweep_case, outputs, cold_cache):
    params, settings, prompts = sweep_case
    out, computed = benchmark.pedantic(
        lambda: computed_tokens(llm, lambda: llm.sweep(prompts, params, settings, use_tqdm=False)),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1, setup=cold_cache,
    )
    assert llm.stats()["num_used_blocks"] == 0
    tokens = [[o.token_ids for o in row] for row in out]
    outputs.setdefault("d", {})["engine"] = (tokens, computed)
    record(benchmark, "d", "engine", sum(len(t) for row in tokens for t in row), computed_tokens=computed,
           caps_hit=sum(o.num_thinking_tokens == s.max_tokens for row in out for o, s in zip(row, settings)))
    check_sweep(benchmark, outputs)


@pytest.mark.benchmark(group=GROUP_D)
def test_d_sweep_one_by_one(benchmark, llm, sweep_case, outputs, cold_cache):
    params, settings, prompts = sweep_case

    def one_by_one():  # each setting from scratch, as separate runs would be: the cache reset before each
        return [(llm.reset_prefix_cache(), llm.generate(prompts, replace(params, budget=s), use_tqdm=False))[1]
                for s in settings]

    out, computed = benchmark.pedantic(
        lambda: computed_tokens(llm, one_by_one),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1, setup=cold_cache,
    )
    tokens = [[out[k][i].token_ids for k in range(len(settings))] for i in range(len(prompts))]
    outputs.setdefault("d", {})["peer"] = (tokens, computed)
    record(benchmark, "d", "peer", sum(len(t) for row in tokens for t in row), computed_tokens=computed,
           peer="the same 6 settings, one generate call each (all questions batched), cache reset between")
    check_sweep(benchmark, outputs)


def check_sweep(benchmark, outputs) -> None:
    sides = outputs["d"]
    if "engine" in sides and "peer" in sides:
        assert sides["engine"][0] == sides["peer"][0], "a sweep output differs from its setting run alone"
        benchmark.extra_info["computed_token_ratio"] = sides["peer"][1] / sides["engine"][1]


# ---- (e) n samples ----

GROUP_E = GROUPS["e"]


@pytest.fixture(scope="session")
def samples_case(llm):
    w = workloads.samples_workload(llm.tokenizer)
    return w, SamplingParams(temperature=0.8, seed=0, max_tokens=w.new_tokens, ignore_eos=True, n=w.n)


@pytest.fixture(scope="session")
def llm_no_cache(model_dir):
    return LLM(model=model_dir, device="cpu", dtype=DTYPE, enable_prefix_caching=False)


@pytest.mark.benchmark(group=GROUP_E)
def test_e_samples_engine(benchmark, llm, samples_case, outputs, cold_cache):
    w, params = samples_case
    out, computed = benchmark.pedantic(
        lambda: computed_tokens(llm, lambda: llm.generate([w.prompt], params, use_tqdm=False)),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1, setup=cold_cache,
    )
    assert computed == len(w.prompt) + w.n * (w.new_tokens - 1), "the prompt is computed once"
    outputs.setdefault("e", {})["engine"] = [o.token_ids for o in out]
    record(benchmark, "e", "engine", sum(len(o.token_ids) for o in out), computed_tokens=computed)
    cross_check(benchmark, outputs, "e")


@pytest.mark.benchmark(group=GROUP_E)
def test_e_separate_requests(benchmark, llm_no_cache, samples_case, outputs):
    w, params = samples_case
    separate = [replace(params, n=1, seed=params.seed + i) for i in range(w.n)]
    out, computed = benchmark.pedantic(
        lambda: computed_tokens(llm_no_cache, lambda: llm_no_cache.generate([w.prompt] * w.n, separate, use_tqdm=False)),
        rounds=workloads.rounds(2), warmup_rounds=workloads.warmup_rounds(0), iterations=1,
    )
    outputs.setdefault("e", {})["peer"] = [o.token_ids for o in out]
    record(benchmark, "e", "peer", sum(len(o.token_ids) for o in out), computed_tokens=computed,
           peer="8 separate requests (seeds s..s+7), prefix caching off")
    cross_check(benchmark, outputs, "e")
    assert outputs["e"].get("engine", outputs["e"]["peer"]) == outputs["e"]["peer"]


# ---- (f) loglikelihood scoring ----

GROUP_F = GROUPS["f"]


@pytest.fixture(scope="session")
def scoring_case(llm):
    return workloads.scoring_workload(llm.tokenizer)


@pytest.mark.benchmark(group=GROUP_F)
def test_f_scoring_engine(benchmark, llm, scoring_case, outputs, cold_cache):
    w = scoring_case
    pairs = w.pairs
    scores = benchmark.pedantic(
        lambda: llm.score([a for a, _ in pairs], [b for _, b in pairs]),
        rounds=workloads.rounds(3), warmup_rounds=workloads.warmup_rounds(1), iterations=1, setup=cold_cache,
    )
    assert [len(s) for s in scores] == [len(b) for _, b in pairs]
    llm.core.block_manager.check_all_free()
    outputs.setdefault("f", {})["engine"] = scores
    record(benchmark, "f", "engine", w.tokens, pairs=len(pairs))
    check_scores(outputs)


def hf_scores(model, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> list[list[float]]:
    """Each pair's continuation logprobs from one forward over right-padded batches."""
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = [a + b for a, b in chunk]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for i, (a, b) in enumerate(chunk):
            positions = torch.arange(len(a) - 1, len(a) + len(b) - 1)
            logprobs = torch.log_softmax(logits[i, positions].float(), -1)
            results.append(logprobs.gather(1, torch.tensor(b)[:, None])[:, 0].tolist())
    return results


@pytest.mark.benchmark(group=GROUP_F)
def test_f_scoring_transformers(benchmark, hf_model, scoring_case, outputs):
    w = scoring_case
    batch_size = int(os.environ.get("BENCH_HF_SCORE_BATCH", 16))
    scores = benchmark.pedantic(
        lambda: hf_scores(hf_model, w.pairs, batch_size),
        rounds=workloads.rounds(3), warmup_rounds=workloads.warmup_rounds(1), iterations=1,
    )
    outputs.setdefault("f", {})["peer"] = scores
    record(benchmark, "f", "peer", w.tokens, pairs=len(w.pairs),
           peer=f"transformers forward, right-padded batches of {batch_size}")
    check_scores(outputs)


def check_scores(outputs) -> None:
    sides = outputs["f"]
    if "engine" in sides and "peer" in sides:
        gap = max(abs(x - y) for a, b in zip(sides["engine"], sides["peer"]) for x, y in zip(a, b))
        assert gap < (1e-3 if DTYPE == torch.float32 else 0.5), f"the sides' logprobs differ by {gap}"
