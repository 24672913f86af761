"""Atomic checkpoints: resumable DCP snapshots (sharded) and the final HF-format model dir (rank 0)."""
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
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

COMPLETE_MARKER = "complete.json"  # the manifest, written last: train state and file sizes; no manifest, no checkpoint
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def latest_checkpoint(output_dir: Path, log: Callable[[str], None] = print_to_stderr) -> Path | None:
    """The newest checkpoint whose files are all there in full. Temp dirs and dirs without the manifest (a crash
    mid-save) are skipped; so is a dir with a missing or truncated file, saying so."""
    for _, path in sorted(_step_dirs(output_dir).items(), reverse=True):
        if not (path / COMPLETE_MARKER).is_file():
            continue
        damage = _damage(path)
        if damage is None:
            return path
        log(f"falling back from checkpoint {path}: {damage}")
    return None


@contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) while a checkpoint or the model is written takes effect, as a KeyboardInterrupt, once
    the write is done: a write cut short is no use to anyone (it is ignored on resume) and its C++ errors
    read like corruption. A second Ctrl-C interrupts at once (a rank can wait on one that already left);
    SIGTERM is not deferred (torchrun's agent sends it to end its workers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def defer(number, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(number)

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@interrupts_deferred()
def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    train_state: dict, keep_last: int) -> Path:
    """Collective: every rank writes its shards into a temp dir; rank 0 writes the manifest, renames the dir into
    place and only then prunes the older checkpoints down to `keep_last`."""
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
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        _write_durably(tmp / COMPLETE_MARKER, json.dumps({"train_state": train_state, "files": files}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        _rename_durably(tmp, final)
        prune_checkpoints(output_dir, step, keep_last)
    dist.barrier()
    return final


def prune_checkpoints(output_dir: Path, newest_step: int, keep_last: int) -> None:
    """Delete every checkpoint but the newest one and the keep_last - 1 complete ones before it. Later steps are
    left over from a run that this one replaced (they were damaged, or it would have resumed from them)."""
    dirs = _step_dirs(output_dir)
    earlier = [path for step, path in sorted(dirs.items(), reverse=True)
               if step < newest_step and (path / COMPLETE_MARKER).is_file()]
    keep = {dirs[newest_step], *earlier[:keep_last - 1]}
    for path in dirs.values():
        if path not in keep:
            (path / COMPLETE_MARKER).unlink(missing_ok=True)  # first, so that a half-deleted dir never counts
            shutil.rmtree(path)


def read_train_state(path: Path) -> dict:
    return read_manifest(path)["train_state"]


def read_manifest(path: Path) -> dict:
    file = path / COMPLETE_MARKER
    try:
        manifest = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"checkpoint manifest {file} is corrupt ({e}); delete {path} to resume from the "
                         "checkpoint before it") from e
    if not isinstance(manifest, dict) or not {"train_state", "files"} <= manifest.keys():
        raise ValueError(f"checkpoint manifest {file} lacks 'train_state' or 'files'; delete {path} to resume "
                         "from the checkpoint before it")
    return manifest


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer shards (any world size) and this rank's RNG state."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=True))


@interrupts_deferred()
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


def _step_dirs(output_dir: Path) -> dict[int, Path]:
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return {}
    return {int(d.name.removeprefix(STEP_PREFIX)): d for d in root.iterdir()
            if d.name.startswith(STEP_PREFIX) and d.name.removeprefix(STEP_PREFIX).isdecimal()}


def _damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded (a file missing or not of its manifest size), or None."""
    for name, size in read_manifest(path)["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, not the {size} its manifest lists"
    return None


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
