"""Llama / Qwen2 / Qwen3 decoder for paged inference, on a flat batch of tokens."""
import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionMetadata, paged_attention
from engine.config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; cos, sin: [T, 1, D] (half-split layout, as HF)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.input_norm = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False)
        self.qkv = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.attention_bias)
        self.q_norm = nn.Parameter(torch.empty(cfg.head_dim), requires_grad=False) if cfg.qk_norm else None
        self.k_norm = nn.Parameter(torch.empty(cfg.head_dim), requires_grad=False) if cfg.qk_norm else None
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        self.post_attention_norm = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False)
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        cfg = self.cfg
        num_tokens = x.shape[0]
        q, k, v = self.qkv(rms_norm(x, self.input_norm, cfg.rms_norm_eps)).split(self.split, dim=-1)
        q = q.view(num_tokens, cfg.num_attention_heads, cfg.head_dim)
        k = k.view(num_tokens, cfg.num_key_value_heads, cfg.head_dim)
        v = v.view(num_tokens, cfg.num_key_value_heads, cfg.head_dim)
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm, cfg.rms_norm_eps)
            k = rms_norm(k, self.k_norm, cfg.rms_norm_eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attn = paged_attention(q, k, v, k_cache, v_cache, meta)
        x = x + self.o_proj(attn.reshape(num_tokens, -1))
        gate, up = self.gate_up(rms_norm(x, self.post_attention_norm, cfg.rms_norm_eps)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # explicit cpu: the model may be built on the meta device, the rope table is computed, not loaded
        inv_freq = torch.tensor(cfg.rope_inv_freq(), dtype=torch.float64, device="cpu")
        positions = torch.arange(cfg.max_position_embeddings, dtype=torch.float64, device="cpu")
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat((angles, angles), dim=-1).float()
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Logits [len(logits_indices), vocab] for the chosen flat positions. kv_cache: [L, 2, N, bs, KV, D]."""
        x = self.embed_tokens(input_ids)
        cos = self.rope_cos[meta.positions].to(x.dtype).unsqueeze(1)
        sin = self.rope_sin[meta.positions].to(x.dtype).unsqueeze(1)
        for layer, cache in zip(self.layers, kv_cache):
            x = layer(x, cos, sin, cache[0], cache[1], meta)
        x = rms_norm(x[logits_indices], self.norm, self.cfg.rms_norm_eps)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, head).float()



def load_model(path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> DecoderModel:
    """Build the decoder on the meta device and assign the checkpoint's tensors, fused."""
    from engine.weights import load_safetensors

    with torch.device("meta"):
        model = DecoderModel(cfg)
    state = _fused_state_dict(cfg, load_safetensors(path))
    expected = model.state_dict()
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"tensor for {name} has shape {tuple(value.shape)}, the config implies {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    return model.to(device)


def _fused_state_dict(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensor names -> this decoder's fused layout; a missing tensor is an error naming it."""

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        return tensors[name]

    def cat(*names: str) -> torch.Tensor:
        return torch.cat([take(n) for n in names], dim=0)

    state = {"embed_tokens.weight": take("model.embed_tokens.weight"), "norm": take("model.norm.weight")}
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = take("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p, a, out = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"layers.{i}."
        state[out + "input_norm"] = take(p + "input_layernorm.weight")
        state[out + "post_attention_norm"] = take(p + "post_attention_layernorm.weight")
        state[out + "qkv.weight"] = cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
        if cfg.attention_bias:
            state[out + "qkv.bias"] = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
        if cfg.qk_norm:
            state[out + "q_norm"] = take(a + "q_norm.weight")
            state[out + "k_norm"] = take(a + "k_norm.weight")
        state[out + "o_proj.weight"] = take(a + "o_proj.weight")
        state[out + "gate_up.weight"] = cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        state[out + "down.weight"] = take(p + "mlp.down_proj.weight")
    return state
