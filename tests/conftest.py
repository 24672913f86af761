"""Shared fixtures: tiny random models of every architecture, saved as HF dirs with a real tokenizer."""
import os
import shutil
from pathlib import Path

# The suite is the CPU suite (exact fp32 parity with transformers, the Triton interpreter): on a machine
# with a GPU it hides the GPU, before torch first asks, so it runs the same. The GPU's own check is
# `python -m benchmarks.gpu_check`.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
if os.environ.get("PYTEST_XDIST_WORKER"):  # workers side by side: one thread each, for its subprocesses too
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers import Qwen3Config, Qwen3ForCausalLM

from engine.weights import default_model_dir

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

R1_SPELLING = (22577, 17400, 46, 1116)  # r1's end on this tokenizer: ' </', 'think', '>', '\n\n'
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The default model's tokenizer (49152 ids; <|im_start|>=1, <|im_end|>=2 is EOS)."""
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(out)
    return out


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.08 * noise)


@pytest.fixture(scope="session")
def make_model(tmp_path_factory, tokenizer_dir):
    """make_model(arch, seed=0, end_token=None, hf_init=False, **config) -> dir of a tiny random HF model.

    Weights are random with unit-ish norms and non-zero biases, or transformers' own init with hf_init.

    end_token: an id made likely by pointing its lm_head row along the mean final hidden state.
    spell: ids the model writes in a row: the first made likely like end_token, each next one the argmax
    after its predecessor (a multi-token end marker, such as r1's " </think>" on a Llama tokenizer).
    """
    cache: dict[tuple, Path] = {}

    def make(arch: str, seed: int = 0, end_token: int | None = None, hf_init: bool = False,
             spell: tuple[int, ...] = (), **overrides) -> Path:
        key = (arch, seed, end_token, hf_init, spell, repr(sorted(overrides.items())))
        if key in cache:
            return cache[key]
        config_cls, model_cls = ARCHITECTURES[arch]
        config = config_cls(**{"vocab_size": 49152, **TINY, **overrides})
        torch.manual_seed(seed)
        model = model_cls(config).float().eval()
        if not hf_init:
            randomize(model, seed)
        if spell:
            make_successors(model, spell, seed)
            point_head_at_mean_state(model, spell[0], seed)
        if end_token is not None:
            point_head_at_mean_state(model, end_token, seed)
        out = tmp_path_factory.mktemp(f"{arch}-model")
        model.save_pretrained(out)
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, out / f.name)
        cache[key] = out
        return out

    return make


def point_head_at_mean_state(model, token: int, seed: int, rate: float = 0.5) -> None:
    """Make `token` likely: its output row along the mean final hidden state, scaled so that it is the
    argmax at about `rate` of the positions of random text (likely, but not certain)."""
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, 49152, (4, 64), generator=gen)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state.reshape(-1, model.config.hidden_size)
        mean = hidden.mean(0)
        model.lm_head.weight[token] = 0
        best_other = model.lm_head(hidden).max(-1).values
        along = hidden @ mean / mean.dot(mean)  # the token's logit per unit of scale
        ratios = (best_other / along).where(along > 0, torch.tensor(float("inf")))
        scale = ratios.quantile(rate).item()  # above this scale, `rate` of the positions pick the token
        model.lm_head.weight[token] = mean / mean.dot(mean) * scale * 1.001


def make_successors(model, chain: tuple[int, ...], seed: int) -> None:
    """After each token of `chain`, make the next one the argmax: a distinct, strong embedding for the
    token, and the successor's output row along the final hidden state it produces."""
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        scale = emb.norm(dim=-1).mean() * 4 / emb.shape[1] ** 0.5
        for token in chain[:-1]:
            emb[token] = torch.randn(emb.shape[1], generator=gen) * scale
        for token, successor in zip(chain, chain[1:]):
            ids = torch.randint(3, 49152, (8, 24), generator=gen)
            ids[:, -1] = token
            hidden = model.model(ids).last_hidden_state[:, -1]
            mean = hidden.mean(0)
            model.lm_head.weight[successor] = 0
            best_other = model.lm_head(hidden).max(-1).values
            along = hidden @ mean / mean.dot(mean)
            model.lm_head.weight[successor] = mean / mean.dot(mean) * (best_other / along).max() * 1.5


@pytest.fixture(scope="module")
def s1_llm(make_model):
    """An engine on a tiny model that often ends s1 thinking (emits <|im_start|>)."""
    from engine import LLM

    return LLM(model=make_model("llama", seed=11, end_token=1, hf_init=True), block_size=8)


@pytest.fixture(scope="module")
def r1_llm(make_model):
    """An engine on a tiny model that often spells r1's end of thinking, " </think>\n\n", in four tokens."""
    from engine import LLM

    return LLM(model=make_model("llama", seed=11, hf_init=True, spell=R1_SPELLING), block_size=8)
