"""ModelConfig: the fields of an HF config.json that the engine uses."""
import json
import math
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass(slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        """config.json, plus the EOS ids of generation_config.json when present (Qwen's <|endoftext|>)."""
        file, generation = Path(path) / "config.json", Path(path) / "generation_config.json"
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model dir {path} " + ("is a file: pass the dir that holds config.json"
                                                             if Path(path).exists() else "does not exist"))
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in model dir {path}")
        cfg = cls.from_dict(_read_json(file))
        if generation.is_file():
            more = _token_ids(_read_json(generation).get("eos_token_id"))
            cfg.eos_token_ids = tuple(dict.fromkeys(cfg.eos_token_ids + more))
        return cfg

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        archs = raw.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {arch!r}; this engine runs {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        heads = raw["num_attention_heads"]
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        rope_theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"unsupported rope scaling type {rope_type!r} (supported: default, linear, llama3)")
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),  # transformers' default for all three
            attention_bias=arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            eos_token_ids=_token_ids(raw.get("eos_token_id")),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )

    def rope_inv_freq(self) -> "list[float]":
        """Inverse frequencies of the rotary embedding, with the config's scaling applied."""
        dim = self.head_dim
        inv = [1.0 / self.rope_theta ** (2 * i / dim) for i in range(dim // 2)]
        scaling = self.rope_scaling
        if scaling is None:
            return inv
        if scaling["rope_type"] == "linear":
            return [f / scaling["factor"] for f in inv]
        return _llama3_inv_freq(inv, scaling)


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e


def _token_ids(value: int | list[int] | None) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list) else (() if value is None else (value,))


def _llama3_inv_freq(inv: list[float], s: dict) -> list[float]:
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out
