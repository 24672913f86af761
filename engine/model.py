"""Llama / Qwen2 / Qwen3 decoder for paged inference, on a flat batch of tokens."""
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.matmul import addmm, addmm_, mm
from kernels.ops import Ops, TorchOps


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, weight.shape, weight, eps)


def interleave_rotary_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder each head's rows from HF's half-split rotary layout to interleaved pairs (0, D/2, 1, D/2+1, ...).

    q and k get the same order, so q.k is unchanged; it lets rotary be one complex multiply.
    """
    return w.unflatten(0, (num_heads, 2, -1)).transpose(1, 2).reshape(w.shape)


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        # plain parameters, not nn.Linear submodules: a module call costs more than a small decode matmul.
        # Projections are used as x @ w with w shaped [in, out]: in fp32 a contiguous copy (a row-vector
        # times it streams faster on CPU), in half precision a view of the [out, in] tensor (see
        # _fused_state_dict); down_proj is [out, in] in every dtype (faster at every batch size measured).
        self.input_norm = _param(cfg.hidden_size)
        self.qkv_proj = _param(cfg.hidden_size, q_size + 2 * kv_size)
        self.qkv_bias = _param(q_size + 2 * kv_size) if cfg.attention_bias else None
        self.q_norm = _param(cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = _param(cfg.head_dim) if cfg.qk_norm else None
        self.o_proj = _param(q_size, cfg.hidden_size)
        self.post_attention_norm = _param(cfg.hidden_size)
        self.gate_up_proj = _param(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = _param(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, freqs, kv_cache, meta: AttentionMetadata, ops: Ops) -> torch.Tensor:
        cfg = self.cfg
        num_tokens = x.shape[0]
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        h = ops.rms_norm(x, self.input_norm, cfg.rms_norm_eps)
        qkv = mm(h, self.qkv_proj) if self.qkv_bias is None else addmm(self.qkv_bias, h, self.qkv_proj)
        qkv = qkv.view(num_tokens, heads + 2 * kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            qkv[:, :heads] = rms_norm(qkv[:, :heads], self.q_norm, cfg.rms_norm_eps)
            qkv[:, heads : heads + kv_heads] = rms_norm(qkv[:, heads : heads + kv_heads], self.k_norm, cfg.rms_norm_eps)
        ops.rotary_(qkv[:, : heads + kv_heads], freqs)  # q and k are adjacent heads: rotate both at once
        kv = qkv[:, heads:].view(num_tokens, 2, kv_heads, cfg.head_dim)
        attn = ops.attention(qkv[:, :heads], kv, kv_cache, meta)
        x, h = ops.proj_add_norm(x, attn.reshape(num_tokens, -1), self.o_proj, self.post_attention_norm, cfg.rms_norm_eps)
        # addmm folds the residual add into the matmul (fewer ops: what counts on CPU); in place into x (a
        # fresh sum, no one else's) it also spares a GPU the copy of x into a new output first
        return addmm_(x, ops.silu_and_mul(mm(h, self.gate_up_proj)), self.down_proj.t())


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.empty(cfg.hidden_size), requires_grad=False)
        # The output head in both layouts: on CPU one fp32 row streams [in, out] ~1.7x faster than [out, in];
        # from two rows up, head @ x.T (the vocab as the GEMM's long side) beats x @ either layout by
        # 1.5-3x there (vocab_major_head). A GPU takes x @ lm_head_t at any row count and writes the logits
        # row-major, where the transposed product would cost a transposing copy of [rows, vocab] fp32.
        # [out, in] is the embedding itself when tied.
        self.lm_head = None if cfg.tie_word_embeddings else _param(cfg.vocab_size, cfg.hidden_size)
        self.lm_head_t = _param(cfg.hidden_size, cfg.vocab_size)
        self.vocab_major_head = True  # load_model sets it for the device
        # explicit cpu: the model may be built on the meta device, the rope table is computed, not loaded
        inv_freq = torch.tensor(cfg.rope_inv_freq(), dtype=torch.float64, device="cpu")
        positions = torch.arange(cfg.max_position_embeddings, dtype=torch.float64, device="cpu")
        angles = torch.outer(positions, inv_freq)
        self.register_buffer("rope_freqs", torch.polar(torch.ones_like(angles), angles).to(torch.complex64), persistent=False)
        self.requires_grad_(False)
        self.ops: Ops = TorchOps()  # the runner swaps in the kernels it selected

    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Logits [len(logits_indices), vocab] for the chosen flat positions. kv_cache: [L, 2, KV, N, bs, D]."""
        x = self.embed_tokens(input_ids)
        freqs = self.rope_freqs[meta.positions].unsqueeze(1)
        for layer, cache in zip(self.layers, kv_cache):
            x = layer.forward(x, freqs, cache, meta, self.ops)
        x = self.ops.rms_norm(x[logits_indices], self.norm, self.cfg.rms_norm_eps)
        if len(x) == 1 or not self.vocab_major_head:
            return mm(x, self.lm_head_t).float()
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head
        return mm(head, x.t()).t().float()  # a transposed view: the sampler reads it as it is



def load_model(path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> DecoderModel:
    """Build the decoder on the meta device and assign the checkpoint's tensors, fused."""
    from engine.weights import load_safetensors

    tensors = load_safetensors(path)
    if cfg.tie_word_embeddings and "lm_head.weight" in tensors:  # a shipped head wins, as in transformers
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
    with torch.device("meta"):
        model = DecoderModel(cfg)
    state = _fused_state_dict(cfg, tensors, device, dtype)
    expected = model.state_dict()
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ValueError(f"tensor for {name} has shape {tuple(value.shape)}, the config implies {tuple(expected[name].shape)}")
    model.load_state_dict(state, assign=True)
    model.vocab_major_head = device.type == "cpu"
    return model.to(device)  # the rope table; the weights are there already


def _fused_state_dict(cfg: ModelConfig, tensors: dict[str, torch.Tensor], device: torch.device,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """HF tensor names -> this decoder's fused layout, on the device in the dtype; a missing tensor is an
    error naming it.

    Projections are used as x @ w with w [in, out]: in fp32 a contiguous copy (a row streams it faster
    on CPU), in half precision a transposed view of the [out, in] tensor (F.linear's layout, which
    streams faster there: 1.7x for the bf16 output head on one row). Each checkpoint tensor is moved and
    cast once, before the views are taken: a view cast or moved on its own becomes a copy (a tied bf16
    head would be held twice)."""

    def in_out(w: torch.Tensor) -> torch.Tensor:
        return w.t().contiguous() if dtype == torch.float32 else w.t()

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        return tensors[name].to(device, dtype)

    def rotary(name: str, num_heads: int) -> torch.Tensor:
        return interleave_rotary_rows(take(name), num_heads)

    def qkv(prefix: str, kind: str) -> torch.Tensor:
        q = rotary(f"{prefix}q_proj.{kind}", cfg.num_attention_heads)
        k = rotary(f"{prefix}k_proj.{kind}", cfg.num_key_value_heads)
        return torch.cat((q, k, take(f"{prefix}v_proj.{kind}")))

    embed = take("model.embed_tokens.weight")
    head = embed if cfg.tie_word_embeddings else take("lm_head.weight")
    state = {"embed_tokens.weight": embed, "norm": take("model.norm.weight"), "lm_head_t": in_out(head)}
    if not cfg.tie_word_embeddings:
        state["lm_head"] = head
    for i in range(cfg.num_hidden_layers):
        p, a, out = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"layers.{i}."
        state[out + "input_norm"] = take(p + "input_layernorm.weight")
        state[out + "post_attention_norm"] = take(p + "post_attention_layernorm.weight")
        state[out + "qkv_proj"] = in_out(qkv(a, "weight"))
        if cfg.attention_bias:
            state[out + "qkv_bias"] = qkv(a, "bias")
        if cfg.qk_norm:
            state[out + "q_norm"] = rotary(a + "q_norm.weight", 1)
            state[out + "k_norm"] = rotary(a + "k_norm.weight", 1)
        state[out + "o_proj"] = in_out(take(a + "o_proj.weight"))
        gate_up = torch.cat((take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")))
        state[out + "gate_up_proj"] = in_out(gate_up)
        state[out + "down_proj"] = take(p + "mlp.down_proj.weight")
    return state
