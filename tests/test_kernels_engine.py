"""The whole engine with kernels="triton" (under the Triton interpreter, on the CPU) gives the tokens of
kernels="torch": greedy batches mixing plain and budget-forced requests (splices as multi-token extends),
prefix-cache hits, and forked samples sharing their prompt's blocks (also with penalties)."""
import pytest
import torch

from kernels.interpret import enable_interpreter

enable_interpreter()  # before any kernel module is imported: @triton.jit reads it then

from engine import LLM, SamplingParams, ThinkingBudget  # noqa: E402
from engine.graphs import replay_eagerly  # noqa: E402
from kernels.ops import TorchOps, TritonOps, select_ops  # noqa: E402

BUDGET = ThinkingBudget(max_tokens=8, num_ignore=1, final_answer_str="Final Answer:")


def generate_both(path, prompts, params, **engine_args):
    """{kernels: (outputs of a first generate, outputs of the same prompts again, stats)}."""
    results = {}
    for kernels in ("torch", "triton"):
        llm = LLM(model=path, kernels=kernels, **engine_args)
        first = llm.generate(prompts, params, use_tqdm=False)
        again = llm.generate(prompts, params, use_tqdm=False)  # whole prompts from the prefix cache
        results[kernels] = ([o.token_ids for o in first], [o.token_ids for o in again], llm.stats(), first)
    return results


def test_budget_forced_batch_matches_torch(make_model):
    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    shared = list(range(100, 116))  # a full 16-token block shared by the first two prompts
    prompts = [shared + [5, 6, 7], shared + [8, 9], [5, 6, 7], list(range(200, 241))]
    params = [SamplingParams(max_tokens=20, budget=BUDGET), SamplingParams(max_tokens=8),
              SamplingParams(max_tokens=20, budget=BUDGET), SamplingParams(max_tokens=16, budget=BUDGET)]
    # a chunked prefill too: 32 tokens a step split the 41-token prompt
    results = generate_both(path, prompts, params, max_num_batched_tokens=32)
    torch_first, torch_again, torch_stats, outputs = results["torch"]
    triton_first, triton_again, triton_stats, _ = results["triton"]
    assert triton_first == torch_first and triton_again == torch_again
    assert triton_stats["num_cached_prompt_tokens"] == torch_stats["num_cached_prompt_tokens"] > 0
    forced = [o for o, p in zip(outputs, params) if p.budget is not None]
    assert any(o.num_ignores_used for o in forced), "no end of thinking was replaced by a spliced 'Wait'"
    assert any("Final Answer:" in o.text for o in forced), "no cap splice happened"


@pytest.mark.parametrize("arch, adjust", [("qwen2", {}),  # qwen3: the sampler kernel on penalized fp32 logits
                                          ("qwen3", {"repetition_penalty": 1.3, "frequency_penalty": 0.5,
                                                     "logit_bias": {40: 2.0}})])
def test_forked_samples_match_torch(make_model, arch, adjust):
    path = make_model(arch, seed=12)
    params = SamplingParams(temperature=0.8, seed=5, n=2, max_tokens=8, **adjust)
    results = generate_both(path, [list(range(30, 49))], params)
    assert results["triton"][:2] == results["torch"][:2]


def test_select_ops(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(select_ops("auto", cpu), TorchOps)
    assert isinstance(select_ops("triton", cpu), TritonOps)  # the interpreter is on
    with pytest.raises(ValueError, match="kernels must be one of"):
        select_ops("cuda", cpu)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        select_ops("triton", cpu)


def test_llm_rejects_an_unknown_kernels_choice(make_model):
    with pytest.raises(ValueError, match="kernels must be one of"):
        LLM(model=make_model("llama"), kernels="cuda")
    assert LLM(model=make_model("llama"), kernels="auto").core.runner.ops.name == "torch"  # CPU tensors


def test_decode_graphs_give_the_eager_tokens(make_model):
    """Decode steps through DecodeGraphs (static buffers, batches padded up the ladder; the CPU stand-in
    replays by running the forward again) give the eager engine's tokens; splices still go eagerly
    through the extend path, and padded rows leave the cache as it was."""
    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    prompts = [[5, 6, 7], list(range(100, 119)), [8, 9], list(range(200, 230)), [11] * 5]
    params = [SamplingParams(max_tokens=20, budget=BUDGET), SamplingParams(max_tokens=12),
              SamplingParams(max_tokens=20, budget=BUDGET), SamplingParams(max_tokens=9, temperature=0.9, seed=3),
              SamplingParams(max_tokens=16, budget=BUDGET)]
    eager = LLM(model=path, kernels="triton", max_num_seqs=6, num_blocks=24)
    expected = [o.token_ids for o in eager.generate(prompts, params, use_tqdm=False)]
    graphed = LLM(model=path, kernels="triton", max_num_seqs=6, num_blocks=24)
    runner = graphed.core.runner
    runner.capture_decode_graphs(6, graphed.max_model_len, capture=replay_eagerly)
    assert runner.graphs.sizes == [1, 2, 4, 6]
    calls = []
    run = runner.graphs.run
    runner.graphs.run = lambda *args: calls.append(len(args[0])) or run(*args)
    outputs = graphed.generate(prompts, params, use_tqdm=False)
    assert [o.token_ids for o in outputs] == expected
    assert {3, 5} & set(calls), "no batch was padded up the ladder"
    assert any(o.num_ignores_used for o in outputs) and graphed.stats()["num_used_blocks"] == 0
    # the same slots written (padded rows wrote none), to rounding: a padded batch's matmuls round differently
    assert torch.equal(runner.kv_cache != 0, eager.core.runner.kv_cache != 0)
    torch.testing.assert_close(runner.kv_cache, eager.core.runner.kv_cache, atol=1e-5, rtol=1e-5)


def test_cuda_graphs_need_cuda_and_the_triton_kernels(make_model):
    path = make_model("llama")
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        LLM(model=path, cuda_graphs=True)
    for bad in ("yes", 0):
        with pytest.raises(ValueError, match="cuda_graphs must be"):
            LLM(model=path, cuda_graphs=bad)
    with pytest.raises(TypeError, match="gpu_memory_utilization must be a number"):
        LLM(model=path, gpu_memory_utilization="x")
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        LLM(model=path, gpu_memory_utilization=1.5)
    llm = LLM(model=path, kernels="torch")
    assert llm.core.runner.graphs is None  # never on the CPU
    with pytest.raises(ValueError, match="need kernels='triton'"):
        llm.core.runner.capture_decode_graphs(4, llm.max_model_len, capture=replay_eagerly)


def test_triton_kernels_need_pages_of_a_dot_tile(make_model):
    """On a GPU tl.dot refuses a page narrower than 16 keys (the interpreter would not): refused up front."""
    path = make_model("llama")
    for bad in (8, 24):
        with pytest.raises(ValueError, match=f"block_size a power of two of at least 16 .*got {bad}"):
            LLM(model=path, kernels="triton", block_size=bad)
    assert LLM(model=path, kernels="torch", block_size=8).generate([[5, 6]], SamplingParams(max_tokens=2),
                                                                  use_tqdm=False)[0].token_ids
