"""Atomic checkpoints: resumable DCP snapshots (sharded) and the final HF-format model dir (rank 0)."""
import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase

COMPLETE_MARKER = "complete.json"  # written last, holding the train state; a dir without it never counts
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; temp dirs and dirs without the marker (a crash mid-save) are skipped."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return None
    complete = [
        d for d in root.iterdir()
        if d.name.startswith(STEP_PREFIX) and d.name[len(STEP_PREFIX):].isdigit() and (d / COMPLETE_MARKER).is_file()
    ]
    return max(complete, key=lambda d: int(d.name[len(STEP_PREFIX):]), default=None)


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    train_state: dict) -> Path:
    """Collective: every rank writes its shards into a temp dir; rank 0 marks it complete and renames it."""
    root = checkpoints_dir(output_dir)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    torch.save(_rng_state(), tmp / f"rng-rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        _write_durably(tmp / COMPLETE_MARKER, json.dumps(train_state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        _rename_durably(tmp, final)
    dist.barrier()
    return final


def read_train_state(path: Path) -> dict:
    return json.loads((path / COMPLETE_MARKER).read_text())


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer shards (any world size) and this rank's RNG state."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=True))


def save_hf_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Collective: gather the full fp32 state dict to rank 0, which writes an HF dir and renames it into place."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as the embeddings; HF re-ties it on load
        tmp = out.parent / f"{TMP_PREFIX}{out.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        model.config.dtype = torch.float32  # the weights are the fp32 master copy, whatever the source was
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        old = out.parent / f"{TMP_PREFIX}old-{out.name}"
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        _rename_durably(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_files(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _rename_durably(src: Path, dst: Path) -> None:
    _fsync_files(src)
    os.rename(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
