"""Lean FSDP2 supervised fine-tuning with s1's recipe; loss on the assistant's tokens only.

    torchrun --nproc-per-node 8 -m train.sft --data s1k.jsonl --output-dir out   (python -m train.sft: 1 process)

Writes <output-dir>/model (HF format), <output-dir>/train_log.jsonl, and <output-dir>/checkpoints/step-N.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from engine.tokenizer import THINK_FORMATS, get_think_format
from engine.weights import default_model_dir
from train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    print_to_stderr,
    read_train_state,
    save_checkpoint,
    save_hf_model,
)
from train.data import Batch, DataError, Dataset, collate, load_dataset, micro_batches_of_rank, plan_epoch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Plan = list[tuple[int, list[list[int]]]]  # per optimizer step: (epoch, rows of sample indices)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


# ---- config -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TrainConfig:
    data: str
    output_dir: str
    model: str | None = None  # default: SmolLM2-135M-Instruct
    think_format: str = "s1"
    block_size: int = 4096
    epochs: int = 5
    global_batch_size: int = 16
    micro_batch_size: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 0  # steps between resumable checkpoints; 0: none
    keep_last: int = 2  # resumable checkpoints kept
    resume: bool = False
    pack: bool = False
    activation_checkpointing: bool = False
    max_steps: int | None = None
    dtype: str | None = None  # compute dtype; default bfloat16 on GPU, float32 on CPU


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="torchrun -m train.sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF-format model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data", required=True, help="JSONL: {messages}, {text}, or {question, thinking, answer}")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--think-format", choices=sorted(THINK_FORMATS), default="s1")
    p.add_argument("--block-size", type=int, default=4096, help="tokens per sequence; longer samples are truncated")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--global-batch-size", type=int, default=16, help="sequences (packed rows) per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=1, help="sequences per forward on each rank")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=0, help="steps between resumable checkpoints (0: none)")
    p.add_argument("--keep-last", type=int, default=2, help="resumable checkpoints kept; older ones are deleted")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--pack", action="store_true", help="pack short samples into rows of --block-size")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each layer in backward")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (the schedule is unchanged)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="compute dtype (default: bfloat16 on GPU)")
    return TrainConfig(**vars(p.parse_args(argv)))


def check_config(cfg: TrainConfig, world_size: int) -> None:
    def flag(name: str) -> str:
        return f"--{name.replace('_', '-')} {getattr(cfg, name)}"

    for name in ("block_size", "epochs", "global_batch_size", "micro_batch_size", "keep_last"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{flag(name)}: must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"{flag('max_steps')}: must be at least 1 (leave it out to run every step)")
    for name in ("save_every", "seed"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{flag(name)}: must not be negative")
    for name in ("lr", "max_grad_norm"):
        if not 0 < getattr(cfg, name) < math.inf:
            raise ValueError(f"{flag(name)}: must be a positive number")
    if not 0 <= cfg.weight_decay < math.inf:
        raise ValueError(f"{flag('weight_decay')}: must be a non-negative number")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"{flag('warmup_ratio')}: must be in [0, 1)")
    if cfg.global_batch_size % (world_size * cfg.micro_batch_size):
        raise ValueError(f"--global-batch-size {cfg.global_batch_size} is not a multiple of world size {world_size} "
                         f"x --micro-batch-size {cfg.micro_batch_size}")


# ---- distributed ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        """To stderr, once: on rank 0."""
        if self.is_main:
            print_to_stderr(message)


def init_distributed() -> DistEnv:
    """NCCL on GPU, gloo on CPU; without torchrun, a 1-process group so that FSDP2 stays the code path."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistEnv(dist.get_rank(), dist.get_world_size(), device)


# ---- model and optimizer -------------------------------------------------------------------------------------

def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing of each layer; transformers renamed the method (5.17 and the 4.x line have
    only gradient_checkpointing_enable, which later 5.x keep as a deprecated alias)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_model(path: str | Path, env: DistEnv, compute_dtype: torch.dtype,
                activation_checkpointing: bool) -> PreTrainedModel:
    """fp32 master weights, sharded per decoder layer; the root group holds embeddings, final norm and the head,
    so tied embeddings and lm_head stay one parameter in one group."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.config.architectures = [type(model).__name__]  # FSDP renames the class; the export needs the real name
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Sum, don't average, over ranks: the loss is already divided by the global target-token count.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-multiplied sum
    model.train()
    return model


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); as in HF's Trainer, biases and norm weights get no weight decay."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warmup over the first warmup_ratio of the steps, then cosine to 0: a pure function of the step."""
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def block_causal_mask(sample_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] sample ids -> [B, 1, T, T] additive mask: a token attends to the earlier tokens of its own sample."""
    causal = torch.ones(sample_ids.shape[1], sample_ids.shape[1], dtype=torch.bool, device=sample_ids.device).tril()
    allowed = (sample_ids[:, :, None] == sample_ids[:, None, :]) & causal
    return torch.zeros(allowed.shape, device=sample_ids.device).masked_fill(~allowed, -math.inf).unsqueeze(1)


def forward_logits(model: torch.nn.Module, batch: Batch, keep: torch.Tensor | int = 0) -> torch.Tensor:
    """Logits at the positions `keep` (0: all). Packed rows get an explicit block-diagonal mask: position_ids
    alone do not keep samples apart on every transformers version."""
    mask = block_causal_mask(batch.sample_ids) if batch.packed else None
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask,
                 logits_to_keep=keep, use_cache=False).logits


def loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over the target tokens; logits only at positions that predict a target."""
    target_mask = batch.loss_mask[:, 1:]
    keep = target_mask.any(0).nonzero().squeeze(1)
    logits = forward_logits(model, batch, keep)
    targets = batch.input_ids[:, keep + 1]
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return losses[target_mask[:, keep].flatten()].sum()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch],
               max_grad_norm: float) -> tuple[float, float, int, int]:
    """One optimizer step over this rank's micro-batches: (global mean loss, grad norm, target tokens, tokens)."""
    device = batches[0].input_ids.device
    counts = torch.tensor([sum(b.num_targets for b in batches), sum(b.num_tokens for b in batches)], device=device)
    dist.all_reduce(counts)  # divide by the global count, so that every target token weighs the same on every rank
    num_targets, num_tokens = counts.tolist()
    total_loss = torch.zeros((), device=device)
    for batch in batches:
        loss = loss_sum(model, batch) / num_targets
        loss.backward()
        total_loss += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    dist.all_reduce(total_loss)
    return total_loss.item(), grad_norm.item(), num_targets, num_tokens


def flops_per_token(config: PretrainedConfig, num_params: int, seq_len: float) -> float:
    """Training FLOPs per token: 6 per parameter plus causal attention (QK^T and AV, forward and backward)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 6 * num_params + 6 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# ---- training ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Setup:
    tokenizer: PreTrainedTokenizerBase
    dataset: Dataset
    plan: Plan
    signature: dict
    checkpoint: Path | None  # where --resume continues from


def prepare(cfg: TrainConfig, world_size: int, log: Callable[[str], None] = print_to_stderr) -> Setup:
    """Everything that can reject the input, done before the model loads or a step runs."""
    check_config(cfg, world_size)
    output_dir = Path(cfg.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file; give a directory (new or an earlier run's)")
    model_path = model_dir(cfg)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model dir {model_path}")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    dataset = load_dataset(cfg.data, tokenizer, get_think_format(cfg.think_format), cfg.block_size)
    plan, signature = build_plan(dataset, cfg), plan_signature(cfg, dataset)
    checkpoint = latest_checkpoint(output_dir, log)
    if checkpoint is None:  # a new run: it writes train_log.jsonl and model/ anew
        earlier = [name for name in ("model", "train_log.jsonl") if (output_dir / name).exists()
                   and (name == "model" or not cfg.resume)]  # --resume restarts a run cut short before a checkpoint
        if earlier:
            restart = "" if "model" in earlier else "pass --resume to start it over there, or "
            raise ValueError(f"{cfg.output_dir} holds an earlier run ({', '.join(earlier)}) and no checkpoint to "
                             f"resume from; {restart}choose another --output-dir (or delete them to start over there)")
    else:
        if not cfg.resume:
            raise ValueError(f"{cfg.output_dir} holds checkpoint {checkpoint.name} of an earlier run; pass --resume "
                             "to continue it or choose another --output-dir")
        saved = read_train_state(checkpoint)["signature"]
        unrecorded = sorted(signature.keys() - saved.keys())
        if unrecorded:
            raise ValueError(f"cannot resume: {checkpoint} was made by an older train.sft that did not record "
                             f"{', '.join(unrecorded)}; resume it with that version or start over in another dir")
        changed = sorted(k for k in saved if saved[k] != signature.get(k))
        if changed:
            raise ValueError(f"cannot resume: {checkpoint} was made with other "
                             + ", ".join(f"{k} ({saved.get(k)!r}, now {signature.get(k)!r})" for k in changed))
    return Setup(tokenizer, dataset, plan, signature, checkpoint)


def train(cfg: TrainConfig, env: DistEnv, setup: Setup) -> None:
    output_dir, samples, plan = Path(cfg.output_dir), setup.dataset.samples, setup.plan
    total_steps = len(plan)
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps
    tokenizer = setup.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    left_out = len(samples) * cfg.epochs - sum(len(row) for _, rows in plan for row in rows)
    env.log(f"{len(samples)} samples ({setup.dataset.num_truncated} truncated to {cfg.block_size} tokens), "
            f"{total_steps} steps of {cfg.global_batch_size} sequences on {env.world_size} rank(s)"
            + (f"; each epoch's last partial batch is left out, reshuffled every epoch ({left_out} sample passes "
               f"of {len(samples) * cfg.epochs})" if left_out else ""))
    if not env.is_main:
        hf_logging.disable_progress_bar()

    torch.manual_seed(cfg.seed)
    compute_dtype = DTYPES[compute_dtype_name(cfg)]
    model = build_model(model_dir(cfg), env, compute_dtype, cfg.activation_checkpointing)
    optimizer = build_optimizer(model, cfg)
    num_params = sum(p.numel() for p in model.parameters())
    peak = peak_flops(env.device)
    start_step = 0
    if setup.checkpoint is not None:
        load_checkpoint(setup.checkpoint, model, optimizer)
        start_step = read_train_state(setup.checkpoint)["step"]
        env.log(f"resuming from {setup.checkpoint} at step {start_step}")
    elif cfg.resume:
        env.log(f"no complete checkpoint in {output_dir}; starting at step 0")

    log_path = output_dir / "train_log.jsonl"
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(log_path, start_step)
    bar = tqdm(total=last_step, initial=start_step, disable=not env.is_main, dynamic_ncols=True)
    for step in range(start_step, last_step):
        started = time.perf_counter()
        epoch, rows = plan[step]
        lr = lr_at(step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [collate(mb, samples, pad_id).to(env.device)
                   for mb in micro_batches_of_rank(rows, env.rank, env.world_size, cfg.micro_batch_size)]
        loss, grad_norm, num_targets, num_tokens = train_step(model, optimizer, batches, cfg.max_grad_norm)
        tokens_per_s = num_tokens / (time.perf_counter() - started)
        record = {"step": step + 1, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens": num_tokens, "target_tokens": num_targets, "tokens_per_s": tokens_per_s}
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_s:.0f}"}
        if peak is not None:
            mean_len = num_tokens / len(rows)
            record["mfu"] = tokens_per_s * flops_per_token(model.config, num_params, mean_len) / (peak * env.world_size)
            postfix["mfu"] = f"{record['mfu']:.1%}"
        if env.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        bar.set_postfix(postfix)
        bar.update()
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_checkpoint(output_dir, step + 1, model, optimizer, {"step": step + 1, "signature": setup.signature},
                            cfg.keep_last)
    bar.close()
    save_hf_model(model, tokenizer, output_dir / "model")
    env.log(f"saved {output_dir / 'model'}")


def model_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.model) if cfg.model else default_model_dir()


def build_plan(dataset: Dataset, cfg: TrainConfig) -> Plan:
    lengths = [len(s) for s in dataset.samples]
    plan = [(epoch, rows) for epoch in range(cfg.epochs)
            for rows in plan_epoch(lengths, epoch, cfg.seed, cfg.global_batch_size, cfg.block_size, cfg.pack)]
    if not plan:
        raise DataError(f"{cfg.data}: {len(lengths)} samples do not fill one global batch of "
                        f"{cfg.global_batch_size} sequences; lower --global-batch-size")
    return plan


def compute_dtype_name(cfg: TrainConfig) -> str:
    """--dtype, or the device's default: bfloat16 where training runs on CUDA (init_distributed's choice), else float32."""
    return cfg.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")


def plan_signature(cfg: TrainConfig, dataset: Dataset) -> dict:
    """What fixes the model, the data and its order, the schedule and the update; a checkpoint resumes only a
    run with the same (a resumed optimizer would keep its saved weight decay whatever the flags say)."""
    keys = ("think_format", "block_size", "epochs", "global_batch_size", "lr", "weight_decay", "warmup_ratio",
            "max_grad_norm", "seed", "pack")
    digest = hashlib.sha256()
    for sample in dataset.samples:
        digest.update(json.dumps([sample.input_ids, sample.loss_mask]).encode())
    return {**{k: asdict(cfg)[k] for k in keys}, "dtype": compute_dtype_name(cfg), "model": str(model_dir(cfg).resolve()),
            "num_samples": len(dataset.samples), "num_tokens": sum(len(s) for s in dataset.samples),
            "data_sha256": digest.hexdigest()}


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the log entries up to the resumed step, so that the log reads as one uninterrupted run. A torn last
    line (a crash mid-write) is dropped."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line_no, line in enumerate(lines, 1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError) as e:
            if line_no == len(lines):
                break
            raise ValueError(f"{path}:{line_no}: not a log entry ({e}); delete the line to resume") from e
        if step <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    env = init_distributed()
    try:
        try:
            setup = prepare(cfg, env.world_size, env.log)
        except (ValueError, OSError) as e:
            env.log(f"error: {e}")
            return 2
        train(cfg, env, setup)
    except KeyboardInterrupt:  # on every rank; rank 0 says it once, with no traceback per rank
        saved = latest_checkpoint(Path(cfg.output_dir), env.log)
        env.log(f"\ninterrupted: rerun with --resume to continue from {saved}" if saved else
                "\ninterrupted before the first checkpoint (--save-every sets how often they are written)")
        return 130  # 128 + SIGINT, as a shell reports it
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
