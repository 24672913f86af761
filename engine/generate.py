"""CLI: python -m engine.generate --prompt "..." [budget flags]. Streams thinking and answer apart."""
import argparse
import sys
import time

from engine import SamplingParams, ThinkingBudget
from engine.device import resolve_device, resolve_dtype
from engine.engine_args import add_engine_args, llm_from_args
from engine.tokenizer import THINK_FORMATS

DIM, RESET = "\033[2m", "\033[0m"
BUDGET_FLAGS = ("min_thinking_tokens", "max_thinking_tokens", "num_ignore", "ignore_str", "final_answer_str",
                "max_answer_tokens", "suppress")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.generate", description=__doc__)
    p.add_argument("--prompt", help="the question (default: read stdin)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="apply the chat template")
    p.add_argument("--system", help="system message (chat mode)")
    p.add_argument("--think-format", choices=sorted(THINK_FORMATS), default="s1")
    p.add_argument("--no-budget", action="store_true", help="plain generation: no thinking phase")
    p.add_argument("--min-thinking-tokens", type=int, default=0)
    p.add_argument("--max-thinking-tokens", type=int, default=None)
    p.add_argument("--num-ignore", type=int, default=0, help="times to replace end-of-thinking with --ignore-str")
    p.add_argument("--ignore-str", default="Wait")
    p.add_argument("--final-answer-str", default=None, help='spliced after the delimiter at the cap, e.g. "Final Answer:"')
    p.add_argument("--max-answer-tokens", type=int, default=None)
    p.add_argument("--suppress", action="store_true", help="mask end-of-thinking until --min-thinking-tokens")
    p.add_argument("--max-tokens", type=int, default=1024, help="cap on the whole continuation")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="keep the most likely tokens holding this mass (1: all)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide positive logits of tokens already in the prompt or output by it (1: none)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="subtract from tokens the output holds")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="subtract per occurrence in the output")
    p.add_argument("--seed", type=int, default=None, help="seed of the request's random stream (default: fresh)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    add_engine_args(p)
    args = p.parse_args(argv)
    if args.max_tokens < 1:
        p.error(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.no_budget:
        given = [f"--{dest.replace('_', '-')}" for dest in BUDGET_FLAGS if getattr(args, dest) != p.get_default(dest)]
        if given:
            p.error(f"--no-budget turns budget forcing off; drop {', '.join(given)} or --no-budget")
    return args


def build_params(args: argparse.Namespace) -> SamplingParams:
    budget = None
    if not args.no_budget:
        budget = ThinkingBudget(
            min_tokens=args.min_thinking_tokens,
            max_tokens=args.max_thinking_tokens,
            num_ignore=args.num_ignore,
            ignore_str=args.ignore_str,
            final_answer_str=args.final_answer_str,
            max_answer_tokens=args.max_answer_tokens,
            suppress=args.suppress,
        )
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=args.stop,
        budget=budget,
        think_format=args.think_format,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return generate(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


def generate(args: argparse.Namespace) -> int:
    try:
        params = build_params(args)
        resolve_dtype(args.dtype, resolve_device(args.device))  # before stdin is read
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    question = args.prompt if args.prompt is not None else sys.stdin.read().strip()
    if not question:
        print("error: the prompt is empty", file=sys.stderr)
        return 2
    try:
        llm = llm_from_args(args)
    except (ValueError, TypeError, OSError) as e:  # bad path, unknown architecture, corrupt weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": question}
        ]
        prompt = llm.chat_prompt(messages, params)
    else:
        prompt = question
    color = sys.stdout.isatty()
    phase, start = None, time.perf_counter()
    try:
        for delta in llm.stream(prompt, params):
            if delta.phase != phase and (delta.text or delta.output is not None):  # an empty answer still gets its header
                phase = delta.phase
                print(f"\n[{phase}]", flush=True)
            if delta.text:
                dim = color and delta.phase == "thinking"
                print(f"{DIM if dim else ''}{delta.text}{RESET if dim else ''}", end="", flush=True)
            output = delta.output
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(
        f"\n\n-- thinking tokens: {output.num_thinking_tokens} | answer tokens: {output.num_answer_tokens}"
        f" | ignores: {output.num_ignores_used} | finish: {output.finish_reason}"
        f" | {len(output.token_ids)} tokens in {seconds:.1f} s, prefill included: {len(output.token_ids) / seconds:.1f} tokens/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
