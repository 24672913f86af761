"""python -m curate.run: pick a small, hard, diverse reasoning set from a pool (s1's three stages)."""
import argparse
import re
import shlex
import sys
from pathlib import Path

from curate.pipeline import CurateConfig, dry_run, run_pipeline


def parse_args(argv: list[str] | None = None) -> tuple[CurateConfig, bool]:
    p = argparse.ArgumentParser(prog="python -m curate.run", description=__doc__)
    p.add_argument("--pool", required=True, help="'champ' or a JSONL pool (our columns or s1's)")
    p.add_argument("--eval", nargs="*", default=[], dest="evals", metavar="SPEC",
                   help="eval sets to decontaminate against: 'champ' or JSONL files (benchmarks.evalsets layouts)")
    p.add_argument("--models", nargs="*", default=[], metavar="DIR",
                   help="HF model dirs that attempt each question ('default' = the engine's default model)")
    p.add_argument("--size", type=int, default=1000, help="target number of selected questions")
    p.add_argument("--think-format", default="s1", choices=["s1", "r1", "qwen3"])
    p.add_argument("--thinking-cap", type=int, default=1024, help="thinking tokens allowed per attempt")
    p.add_argument("--max-answer-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--tokenizer", help="tokenizer dir that counts trace tokens (default: the first model's)")
    p.add_argument("--cache", help="attempts cache JSONL (default: OUTPUT/attempts.jsonl)")
    p.add_argument("--batch-size", type=int, default=32, help="questions per engine call (and per cache write)")
    p.add_argument("--keep-source", nargs="*", default=[], dest="keep_sources", metavar="REGEX",
                   help="sources whose questions are selected first")
    p.add_argument("--classify-domains", action="store_true", help="ignore the pool's domain field")
    p.add_argument("--limit", type=int, help="use only the first N pool rows")
    p.add_argument("--dry-run", action="store_true",
                   help="print what each stage would do; load no model, write nothing")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for spec in args.models:  # a name that is no dir would send transformers to a model hub
        if spec != "default" and not (Path(spec) / "config.json").is_file():
            p.error(f"--models {spec!r} is not a local model dir (no config.json there); nothing is downloaded")
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        p.error(f"--tokenizer {args.tokenizer!r} is not a local dir; nothing is downloaded")
    for pattern in args.keep_sources:
        try:
            re.compile(pattern)
        except re.error as e:
            p.error(f"--keep-source {pattern!r} is not a regular expression: {e}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        p.error(f"--output {args.output} is a file, not a dir")
    for name in ("size", "thinking_cap", "max_answer_tokens", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    config = CurateConfig(**{k: v for k, v in vars(args).items() if k not in ("dry_run", "no_progress")})
    config.progress = not args.no_progress
    return config, args.dry_run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config, is_dry_run = parse_args(argv)
    try:
        if is_dry_run:
            print(dry_run(config))
            return 0
        results, paths = run_pipeline(config, command="python -m curate.run " + shlex.join(argv))
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume (the attempts made so far are cached in "
              f"{config.cache or Path(config.output) / 'attempts.jsonl'})", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except (ValueError, OSError) as e:  # a bad pool or eval file, a model dir that does not load
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.stage:>16}: {r.rows_in:>6} -> {r.rows_out:<6} {dict(r.reasons())}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    selected = results[-1].rows_out
    if not selected:
        print(f"error: no question was selected: the funnel above dropped every row (why: {paths['report']})",
              file=sys.stderr)
        return 1
    if selected < config.size:
        print(f"warning: {selected} questions selected, fewer than --size {config.size}: no more came through "
              "the funnel", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
