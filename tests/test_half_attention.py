"""The torch path's half-precision decode attention (grouped matmuls, fp32 softmax) against SDPA in fp32,
and the engine in bf16 on the CPU against transformers in bf16."""
import pytest
import torch
import torch.nn.functional as F

from engine import LLM, SamplingParams
from engine.attention import _grouped_attention


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("group,num_q", ((1, 1), (3, 1), (4, 3)))
def test_grouped_attention_matches_sdpa(dtype, group, num_q):
    gen = torch.Generator().manual_seed(group * 10 + num_q)
    n, num_kv, ctx, head_dim = 5, 2, 40, 64
    q = torch.randn(n, num_kv * group, num_q, head_dim, generator=gen).to(dtype)
    keys, values = (torch.randn(n, num_kv, ctx, head_dim, generator=gen).to(dtype) for _ in range(2))
    # each sequence sees its own context length; query i sees up to its own position (as the runner masks)
    lens = torch.randint(num_q, ctx + 1, (n,), generator=gen)
    last = lens[:, None] - num_q + torch.arange(num_q)[None, :]
    allowed = torch.arange(ctx)[None, None, :] <= last[:, :, None]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf")).unsqueeze(1)
    expected = F.scaled_dot_product_attention(q.float(), keys.float(), values.float(), attn_mask=mask.float(),
                                              enable_gqa=True)
    actual = _grouped_attention(q, keys, values, mask)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected, atol=2e-2, rtol=2e-2)


def test_bf16_engine_follows_transformers_bf16(make_model):
    """Greedy bf16 tokens may part from transformers' late (different kernels round differently); the
    first ones agree, on a batch that decodes through the grouped path."""
    from transformers import AutoModelForCausalLM

    path = make_model("qwen2", seed=21)
    prompts = [list(range(10, 30)), list(range(50, 57))]
    outs = LLM(model=path, dtype="bfloat16").generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True),
                                                       use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids[:3] == ref[:3]


@pytest.mark.parametrize("arch", ("llama", "qwen2"))  # untied and tied heads in the tiny models
def test_half_precision_weights_are_views_of_the_checkpoint_layout(make_model, arch):
    path = make_model(arch, seed=6)
    fp32, bf16 = (LLM(model=path, dtype=d).core.runner.model for d in ("float32", "bfloat16"))
    for name in ("qkv_proj", "o_proj", "gate_up_proj"):
        w32, w16 = getattr(fp32.layers[1], name), getattr(bf16.layers[1], name)
        assert w32.is_contiguous() and not w16.is_contiguous() and w16.t().is_contiguous()
        torch.testing.assert_close(w16.float(), w32, atol=0, rtol=1e-2)
    head = bf16.embed_tokens.weight if bf16.lm_head is None else bf16.lm_head
    assert torch.equal(bf16.lm_head_t, head.t())
    x = torch.randn(3, fp32.cfg.hidden_size)
    torch.testing.assert_close((x.bfloat16() @ bf16.layers[0].qkv_proj).float(), x @ fp32.layers[0].qkv_proj,
                               atol=5e-2, rtol=5e-2)
