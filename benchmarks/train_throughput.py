"""SFT throughput of train.sft on s1-style data: python -m benchmarks.train_throughput [--steps 10 ...]

Writes a synthetic s1K-shaped JSONL (math questions, long thinking, short answers), trains on it for a few
steps in this process (one rank, FSDP2 over a 1-process group) and prints tokens/s from the step log. Step 1
(warm-up: allocation, first optimizer state) is left out of the steady-state figure.
"""
import argparse
import json
import math
import random
import statistics
import tempfile
from pathlib import Path

from safetensors import safe_open
from transformers import AutoConfig

from engine.weights import default_model_dir
from train.sft import flops_per_token
from train.sft import main as sft_main

SENTENCES = [
    "Let n be the number of positive integers below {a} that are divisible by {b}.",
    "Then n = floor({a} / {b}) = {q}, since {b} * {q} = {p} is the largest multiple below {a}.",
    "Wait, we must also exclude the multiples of {c}, because the problem counts them separately.",
    "By inclusion-exclusion the count is {q} + {r} - {s}, which gives {t}.",
    "Let me double check with a smaller case: for {b} and {c} below 30 the formula gives the right answer.",
    "Alternatively, consider the residues modulo {b}; each residue class has about {q} members.",
    "So the sum of the first {q} terms of the arithmetic progression is {q} * ({b} + {p}) / 2.",
    "Hmm, that does not match the earlier estimate, so let me recompute the product {b} * {q} carefully.",
]


def synthetic_s1_records(num: int, seed: int) -> list[dict]:
    """Records shaped like curated s1K data: a question, a long chain of thought, a short answer."""
    rng = random.Random(seed)
    records = []
    for _ in range(num):
        a, b, c = rng.randint(100, 9999), rng.randint(2, 19), rng.randint(2, 19)
        q = a // b
        fields = dict(a=a, b=b, c=c, q=q, p=b * q, r=a // c, s=a // (b * c), t=q + a // c - a // (b * c))
        thinking = " ".join(rng.choice(SENTENCES).format(**fields) for _ in range(rng.randint(6, 20)))
        records.append({
            "question": f"How many positive integers below {a} are divisible by {b} or by {c}? Explain briefly.",
            "thinking": thinking,
            "answer": f"There are $\\boxed{{{fields['t']}}}$ such integers.",
        })
    return records


def count_params(model_dir: Path) -> int:
    """Parameters of an HF dir from its safetensors headers (tied embeddings count once)."""
    total = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF-format model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--global-batch-size", type=int, default=4)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--pack", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default: train.sft's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "s1_synthetic.jsonl"
        records = synthetic_s1_records(args.steps * args.global_batch_size * 4, args.seed)
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        out = Path(tmp) / "out"
        argv = ["--data", str(data), "--output-dir", str(out), "--block-size", str(args.block_size),
                "--global-batch-size", str(args.global_batch_size), "--micro-batch-size", str(args.micro_batch_size),
                "--max-steps", str(args.steps), "--seed", str(args.seed), "--epochs", "1"]
        argv += ["--model", args.model] if args.model else []
        argv += ["--dtype", args.dtype] if args.dtype else []
        argv += ["--pack"] if args.pack else []
        argv += ["--activation-checkpointing"] if args.activation_checkpointing else []
        if sft_main(argv) != 0:
            raise SystemExit("train.sft failed")
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]

    steady = log[1:] or log
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in steady)
    tokens = sum(r["tokens"] for r in steady)
    print(f"steps {len(log)} (steady state: steps 2-{len(log)}), block size {args.block_size}, "
          f"global batch {args.global_batch_size}, micro-batch {args.micro_batch_size}, pack {args.pack}")
    assistant = statistics.mean(r["target_tokens"] for r in steady)
    print(f"tokens/step {tokens / len(steady):.0f} (assistant {assistant:.0f}), s/step {seconds / len(steady):.2f}")
    print(f"tokens/s {tokens / seconds:.1f}")
    model_dir = Path(args.model) if args.model else default_model_dir()
    mean_len = tokens / len(steady) / args.global_batch_size
    flops = flops_per_token(AutoConfig.from_pretrained(model_dir), count_params(model_dir), mean_len)
    print(f"achieved {flops * tokens / seconds / 1e9:.1f} GFLOP/s ({flops / 1e9:.2f} GFLOP per token)")
    if "mfu" in steady[0]:
        print(f"MFU {statistics.mean(r['mfu'] for r in steady):.1%}")


if __name__ == "__main__":
    main()
