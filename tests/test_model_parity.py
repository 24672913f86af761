"""The paged decoder's logits equal transformers' in fp32, for every architecture and shape."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.weights import default_model_dir
from tests.engine_logits import engine_logits

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
CASES = [
    ("llama", {}),
    ("llama", {"num_key_value_heads": 4}),  # MHA
    ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),  # MQA, tied
    ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("llama", {"vocab_size": 49171, "hidden_size": 72, "head_dim": 24, "num_attention_heads": 3, "num_key_value_heads": 3}),
    ("qwen2", {}),
    ("qwen2", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    ("qwen3", {}),
    ("qwen3", {"num_attention_heads": 8, "num_key_value_heads": 2}),  # GQA 4
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def hf_logits(path, token_ids) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]


@pytest.mark.parametrize("arch,overrides", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_tiny_model_logits_match_transformers(make_model, arch, overrides):
    path = make_model(arch, **overrides)
    token_ids = torch.randint(0, 49152, (53,), generator=torch.Generator().manual_seed(7)).tolist()
    expected = hf_logits(path, token_ids)
    assert rel_err(engine_logits(path, token_ids), expected) < 1e-4
    # prefill in chunks that straddle KV block boundaries (block size 8, chunks of 11)
    assert rel_err(engine_logits(path, token_ids, block_size=8, chunk=11), expected) < 1e-4
    assert rel_err(engine_logits(path, token_ids, vocab_major_head=False), expected) < 1e-4  # a GPU's head layout


def test_default_model_logits_match_transformers():
    path = default_model_dir()
    token_ids = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    assert rel_err(engine_logits(path, token_ids, chunk=17), hf_logits(path, token_ids)) < 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_a_half_precision_head_is_held_once(make_model, tied):
    """In half precision the [in, out] head is a view of the [out, in] one: cast (or moved to a GPU) apart,
    it would be a second copy of the largest tensor."""
    from engine.config import ModelConfig
    from engine.model import load_model

    path = make_model("qwen2", tie_word_embeddings=tied)  # an fp32 checkpoint
    model = load_model(path, ModelConfig.from_dir(path), torch.device("cpu"), torch.bfloat16)
    head = model.embed_tokens.weight if tied else model.lm_head
    assert model.lm_head_t.dtype == torch.bfloat16 and model.lm_head_t.data_ptr() == head.data_ptr()
    assert torch.equal(model.lm_head_t, head.t())
