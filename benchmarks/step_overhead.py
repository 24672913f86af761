"""The host's share of a decode step: the engine's Python (scheduling, block accounting, the runner's
metadata, the sampler's inputs, postprocessing) with the model and the sampler replaced by no-ops.

    python -m benchmarks.step_overhead [--batches 1,64,256] [--steps 100] [--temperature 0.8]

On a GPU this time is spent while the GPU waits (a step's sampled tokens are read back before the next
is scheduled), so it bounds decode speed however fast the kernels are: at batch 1 it is the part of a
1.5B model's ~1 ms step that no kernel can win back. The runner builds the Triton path's metadata
(block tables, lengths), as it does on CUDA; no kernel runs, so the CPU measures it.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

VOCAB = 49152


class NoMathOps:
    """The Triton path's interface as the runner sees it (flat metadata); the forward never calls the
    layer ops, and sampling returns one token per row."""

    name = "none"
    flat_metadata = True

    @staticmethod
    def sample(logits, *args) -> torch.Tensor:
        return torch.full((len(logits),), 100, dtype=torch.long)


def tiny_model(out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.weights import default_model_dir

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=4096)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(out)
    return out


def no_math_llm(path: Path, max_num_seqs: int):
    import engine.runner
    from engine import LLM

    select = engine.runner.select_ops
    engine.runner.select_ops = lambda kernels, device: NoMathOps()
    try:
        llm = LLM(model=path, max_num_seqs=max_num_seqs, num_blocks=max_num_seqs * 32)
    finally:
        engine.runner.select_ops = select
    llm.core.runner.model.forward = lambda input_ids, meta, kv_cache, logits_indices: torch.empty(len(logits_indices), VOCAB)
    return llm


def step_ms(llm, batch: int, steps: int, temperature: float) -> float:
    """Milliseconds a decode step: a run to `steps` tokens less a run to 1 (admission and the prefill step),
    over the steps - 1 decode steps between them; each run the best of 3 after a warm-up."""
    from engine import SamplingParams

    prompts = [[5 + i, 6, 7] for i in range(batch)]

    def best_run(tokens: int) -> float:
        params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=temperature, seed=0)
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            best = min(best, time.perf_counter() - start)
        return best

    return (best_run(steps) - best_run(1)) / (steps - 1) * 1e3


def _batches(text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=_batches, default=[1, 64, 256])
    parser.add_argument("--steps", type=int, default=100, help="decode steps timed per batch (best of 3 runs)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy rows; above 0 each row draws")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (a decode step after the prefill), got {args.steps}")
    if not 0 <= args.temperature < float("inf"):
        parser.error(f"--temperature must be a number >= 0, got {args.temperature}")
    with tempfile.TemporaryDirectory() as work:
        llm = no_math_llm(tiny_model(Path(work)), max(args.batches))
        print(f"engine host time per decode step, no model math (temperature {args.temperature}):")
        for batch in args.batches:
            ms = step_ms(llm, batch, args.steps, args.temperature)
            print(f"  batch {batch:>4}: {ms:7.3f} ms a step, {ms / batch * 1e3:6.1f} us a sequence")
    return 0


if __name__ == "__main__":
    sys.exit(main())
