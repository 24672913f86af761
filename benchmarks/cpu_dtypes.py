"""The engine's prefill and decode speed by dtype on this machine, the dtypes timed in turns.

    python -m benchmarks.cpu_dtypes [--dtypes float32,bfloat16,float16] [--prompt 256] [--batches 1,32]
                                    [--context 16] [--new 32] [--repeats 3]

Prefill: one prompt of `--prompt` random tokens, `max_tokens=1`. Decode: tokens/s at each batch size
after prompts of `--context` tokens, with the prefill taken out: (new - 1) tokens a sequence over the
time a run to `new` tokens takes beyond a run to 1. Each figure is the best of `--repeats`, the dtypes taking turns within a repeat so that a
slow spell of the machine slows each alike; the prefix cache is reset before every run.
"""
import argparse
import random

import torch

from benchmarks.gpu_check import wall
from engine import LLM, SamplingParams


def measure(dtypes: list[str], model: str | None, prompt: int, batches: list[int], context: int, new: int,
            repeats: int) -> dict[str, dict[str, float]]:
    """{dtype: {"prefill tok/s": .., "decode b tok/s": ..}} from the best of `repeats` runs each."""
    engines = {d: LLM(model=model, dtype=d, max_num_seqs=max(batches)) for d in dtypes}
    vocab = next(iter(engines.values())).config.vocab_size
    rng = random.Random(0)
    long = [rng.randrange(3, vocab) for _ in range(prompt)]
    prompts = {b: [[rng.randrange(3, vocab) for _ in range(context)] for _ in range(b)] for b in batches}

    def run(llm: LLM, prompts: list[list[int]], n: int) -> float:
        llm.reset_prefix_cache()
        return wall(lambda: llm.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True), use_tqdm=False),
                    llm.device)

    runs = [("prefill", [long], 1)] + [(b, prompts[b], n) for b in batches for n in (1, new)]
    for llm in engines.values():  # first use of every shape, untimed
        for _, p, n in runs:
            run(llm, p, n)
    best: dict[tuple, float] = {}
    for _ in range(repeats):
        for d, llm in engines.items():
            for key, p, n in runs:
                best[d, key, n] = min(best.get((d, key, n), float("inf")), run(llm, p, n))
    return {d: {"prefill tok/s": prompt / best[d, "prefill", 1],
                **{f"decode {b} tok/s": b * (new - 1) / (best[d, b, new] - best[d, b, 1]) for b in batches}}
            for d in dtypes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_dtypes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model dir (default: the default model)")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens of the prefill run")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--context", type=int, default=16, help="prompt tokens a sequence in the decode runs")
    parser.add_argument("--new", type=int, default=32, help="tokens a sequence in the decode runs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    if args.new < 2 or min(args.repeats, args.prompt, args.context, *batches) < 1:
        parser.error("--new must be at least 2; --repeats, --prompt, --context and every batch at least 1")
    results = measure(dtypes, args.model, args.prompt, batches, args.context, args.new, args.repeats)
    columns = list(next(iter(results.values())))
    print(f"| dtype | {' | '.join(columns)} |\n|---|{'---:|' * len(columns)}")
    for d, row in results.items():
        print(f"| {d} | {' | '.join(f'{row[c]:.1f}' for c in columns)} |")
    print(f"({torch.get_num_threads()} threads; CPU capability {torch.backends.cpu.get_cpu_capability()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
