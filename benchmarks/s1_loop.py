"""s1's whole loop on real data, offline, on this machine: curate -> fine-tune -> evaluate before and after.

    python -m benchmarks.s1_loop --output /tmp/s1-loop [--eval-size 30] [--select 20] [--train-minutes 6]

1. Split CHAMP (270 problems, from the champ-dataset package) into an eval part and a pool part by seed;
   the pool is all of CHAMP, from which curation's 8-gram decontamination removes the eval problems
   (and their near-siblings): the check is that no selected question shares an 8-gram with the eval part.
2. Curate the pool (`python -m curate.run`) with the default model as the difficulty filter.
3. Fine-tune the default model on the selection (`python -m train.sft`), time-boxed by --max-steps.
4. Run `python -m benchmarks.scaling` on the eval part before and after: budget caps and "Wait" extension.
5. Print a markdown section (funnel, training curve, both scaling tables, commands, wall times).
Every stage resumes: a rerun into the same --output skips what is finished (a rerun with other
split, curation or training flags is refused).
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.evalsets import load_eval_set, write_eval_set
from curate.decontaminate import EvalOverlap
from engine.jsonl import read_objects

LOOP_FLAGS = ("eval_size", "select", "thinking_cap", "block_size", "epochs", "train_minutes", "seed")
SFT_TOKENS_PER_S = 150  # measured for the default model on this CPU box (benchmarks/RESULTS.md: 175)


def run(cmd: list[str], log: list[str]) -> float:
    """Run one stage as its own process (as a user would), echoing the command; its wall time."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], check=True)
    seconds = time.perf_counter() - start
    log.append(f"| `python -m {' '.join(cmd)}` | {seconds / 60:.1f} min |")
    return seconds


def claim_output(out: Path, args: argparse.Namespace) -> None:
    """Record the flags that shape the split, the selection and the training in loop.json; a rerun into the
    same dir with other ones is refused (the stages it skips would mix two runs: a fine-tuned model
    trained on questions that a new split evaluates)."""
    flags = {name: getattr(args, name) for name in LOOP_FLAGS}
    record = out / "loop.json"
    old = json.loads(record.read_text()) if record.exists() else flags
    changed = sorted(k for k in flags if old.get(k) != flags[k])
    if changed:
        raise SystemExit(f"error: --output {out} holds a loop run made with other "
                         + ", ".join(f"--{k.replace('_', '-')} ({old.get(k)}, now {flags[k]})" for k in changed)
                         + "; rerun with the same flags or use another dir")
    record.write_text(json.dumps(flags, indent=2) + "\n")


def split_champ(out: Path, eval_size: int, seed: int) -> Path:
    items = load_eval_set("champ")
    chosen = random.Random(seed).sample(items, eval_size)
    path = out / "champ_eval.jsonl"
    write_eval_set(chosen, path)
    return path


def check_decontaminated(selected: Path, eval_path: Path) -> int:
    """Selected questions that overlap the eval part as decontamination defines it (must be 0)."""
    overlap = EvalOverlap(item.question for item in load_eval_set(str(eval_path)))
    return sum(overlap.hits(row["question"]) for _, row in read_objects(selected, ValueError))


def training_curve(log_path: Path) -> list[str]:
    rows = [row for _, row in read_objects(log_path, ValueError)]
    lines = ["| step | loss | lr | tokens/s |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.get('step')} | {r.get('loss', float('nan')):.4f} | {r.get('lr', 0):.2e} | "
                     f"{r.get('tokens_per_s', 0):.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.s1_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--eval-size", type=int, default=30, help="CHAMP problems held out for evaluation")
    p.add_argument("--select", type=int, default=20, help="questions curation selects")
    p.add_argument("--thinking-cap", type=int, default=64, help="difficulty filter: thinking tokens per attempt")
    p.add_argument("--block-size", type=int, default=2048, help="SFT sequence length (longer traces truncated)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-minutes", type=float, default=6.0, help="time box for fine-tuning")
    p.add_argument("--budgets", default="32,64,128,256", help="thinking caps for the scaling runs")
    p.add_argument("--num-ignore", default="1,2", help="'Wait' extensions for the scaling runs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    claim_output(out, args)
    log: list[str] = []

    eval_path = split_champ(out, args.eval_size, args.seed)
    curated = out / "curate"
    run(["curate.run", "--pool", "champ", "--eval", str(eval_path), "--models", "default", "--size",
         str(args.select), "--thinking-cap", str(args.thinking_cap), "--max-answer-tokens", "64", "--seed",
         str(args.seed), "--output", str(curated), "--no-progress"], log)
    leaks = check_decontaminated(curated / "selected.jsonl", eval_path)
    if leaks:
        raise SystemExit(f"error: {leaks} selected questions share an 8-gram with the eval part")

    sft = out / "sft"
    steps = max(1, int(args.train_minutes * 60 * SFT_TOKENS_PER_S / args.block_size))
    if not (sft / "model" / "config.json").is_file():
        run(["train.sft", "--data", str(curated / "sft_s1.jsonl"), "--output-dir", str(sft), "--block-size",
             str(args.block_size), "--epochs", str(args.epochs), "--global-batch-size", "1", "--max-steps",
             str(steps), "--lr", "1e-5", "--pack", "--resume"], log)  # --resume: a run cut short starts over

    tables = {}
    for name, model in (("before", None), ("after", sft / "model")):
        dest = out / f"scaling-{name}"
        cmd = ["benchmarks.scaling", "--data", str(eval_path), "--methods", "budget,ignore", "--budgets",
               args.budgets, "--num-ignore", args.num_ignore, "--max-answer-tokens", "64", "--max-tokens", "512",
               "--output", str(dest)]
        run(cmd + (["--model", str(model)] if model else []), log)
        tables[name] = (dest / "summary.md").read_text()

    print("## The whole loop on CHAMP (`python -m benchmarks.s1_loop " + " ".join(argv or sys.argv[1:]) + "`)\n")
    print(f"Eval part: {args.eval_size} CHAMP problems (seed {args.seed}); the pool is the rest after "
          f"curation's decontamination (0 selected questions share an 8-gram with the eval part).\n")
    print("### Curation funnel\n\n" + (curated / "report.md").read_text() + "\n")
    print(f"### Fine-tuning ({steps} steps, block {args.block_size})\n\n" + "\n".join(training_curve(sft / "train_log.jsonl")) + "\n")
    for name, table in tables.items():
        print(f"### Scaling, {name} fine-tuning\n\n{table}\n")
    print("### Commands and wall times\n\n| command | wall |\n|---|---:|\n" + "\n".join(log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
