"""How often a seeded sample of an `n` request parts from the n=1 request with its seed.

    python -m benchmarks.seed_stability [--prompts 16] [--n 3] [--tokens 48] [--model DIR] [--dtype float32]

Sample i of a request seeded s draws the random numbers of the n=1 request seeded s+i; their tokens part
only where a draw lands within rounding of a cdf step, since the logits of a batch of different shape
differ in their last bits. Prints how many samples parted, and at which token.
"""
import argparse
import sys

from benchmarks.workloads import text_prompts
from engine import LLM, SamplingParams


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seed_stability", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--prompt-tokens", type=int, default=40)
    p.add_argument("--model")
    p.add_argument("--dtype")
    args = p.parse_args(argv)
    if min(args.prompts, args.n, args.tokens, args.prompt_tokens) < 1:
        p.error("--prompts, --n, --tokens and --prompt-tokens must be positive")
    try:
        llm = LLM(model=args.model, dtype=args.dtype)
    except (ValueError, TypeError, OSError) as e:
        p.error(str(e))
    if args.prompt_tokens + args.tokens > llm.max_model_len:
        p.error(f"--prompt-tokens {args.prompt_tokens} + --tokens {args.tokens} pass the context of {llm.max_model_len}")
    prompts = text_prompts(llm.tokenizer, [args.prompt_tokens] * args.prompts)
    sampled = dict(temperature=1.0, max_tokens=args.tokens, ignore_eos=True)
    forked = llm.generate(prompts, SamplingParams(n=args.n, seed=100, **sampled), use_tqdm=False)
    alone = llm.generate([q for q in prompts for _ in range(args.n)],
                         [SamplingParams(seed=100 + i, **sampled) for _ in prompts for i in range(args.n)], use_tqdm=False)
    failed = [o.error for o in forked + alone if o.finish_reason == "error"]
    if failed:  # an error output has no tokens to compare: it would count as agreeing
        print(f"error: {len(failed)} requests failed: {failed[0]}", file=sys.stderr)
        return 1
    parted = [next((t for t, (x, y) in enumerate(zip(f.token_ids, a.token_ids)) if x != y), None)
              for f, a in zip(forked, alone)]
    at = sorted(t for t in parted if t is not None)
    print(f"{llm.model_dir.name}, {llm.dtype}: {len(at)}/{len(parted)} samples of n={args.n} parted from their n=1 "
          f"runs within {args.tokens} tokens" + (f", at tokens {at}" if at else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
