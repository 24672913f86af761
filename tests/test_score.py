"""LLM.score: prompt log-probabilities equal transformers' log_softmax, with and without a cached prefix."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_score_equals_transformers_log_softmax(make_model, arch):
    path = make_model(arch, seed=13)
    llm = LLM(model=path, block_size=8, max_num_batched_tokens=16)  # long inputs go in several chunks
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(3, 49152, (37,), generator=gen).tolist()
    continuations = [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (1, 5, 30)]
    scores = llm.score([context] * 3, continuations)  # the second and third reuse the cached context
    assert llm.stats()["num_cached_prompt_tokens"] >= 2 * 32 and llm.stats()["num_used_blocks"] == 0
    for continuation, got in zip(continuations, scores):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logprobs = torch.log_softmax(hf(ids).logits[0].float(), -1)
        want = [logprobs[len(context) + i - 1, t].item() for i, t in enumerate(continuation)]
        assert len(got) == len(continuation)
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4


def test_score_rejects_what_does_not_fit(make_model):
    llm = LLM(model=make_model("llama", max_position_embeddings=64), block_size=8)
    with pytest.raises(ValueError, match="the context holds 64"):
        llm.score([5] * 40, [6] * 30)
    assert len(llm.score([5] * 34, [6] * 30)[0]) == 30  # prompt + continuation filling the context exactly
    llm.core.block_manager.check_all_free()
    with pytest.raises(ValueError, match="1 prompts but 2 continuations"):
        llm.score([[5, 6]], [[7], [8]])
