"""CLI: python -m engine.generate --prompt "..." [budget flags]. Streams thinking and answer apart; several
--max-thinking-tokens caps (32,64,128) run as one budget sweep, each cap's result printed in turn."""
import argparse
import os
import re
import sys
import time
from dataclasses import replace

from engine import SamplingParams, ThinkingBudget
from engine.device import resolve_device, resolve_dtype
from engine.engine_args import add_engine_args, llm_from_args
from engine.tokenizer import THINK_FORMATS

DIM, RESET = "\033[2m", "\033[0m"
BUDGET_FIELD_FLAGS = {"min_tokens": "--min-thinking-tokens", "max_tokens": "--max-thinking-tokens", "num_ignore": "--num-ignore",
                      "ignore_str": "--ignore-str", "final_answer_str": "--final-answer-str",
                      "max_answer_tokens": "--max-answer-tokens", "suppress": "--suppress"}
# the flags --no-budget refuses: the budget's, and the think format that only shapes a budget's thinking
BUDGET_FLAGS = tuple(flag[2:].replace("-", "_") for flag in BUDGET_FIELD_FLAGS.values()) + ("think_format",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.generate", description=__doc__)
    p.add_argument("--prompt", help="the question (default: read stdin)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="apply the chat template")
    p.add_argument("--system", help="system message (chat mode)")
    p.add_argument("--think-format", choices=sorted(THINK_FORMATS), default="s1",
                   help="how thinking is delimited: s1's <|im_start|>think ... <|im_start|>answer, r1/qwen3's "
                        "<think> ... </think> (default: s1)")
    p.add_argument("--no-budget", action="store_true", help="plain generation: no thinking phase")
    p.add_argument("--min-thinking-tokens", type=int, default=0,
                   help="an end of thinking before this many tokens is replaced by --ignore-str (default: 0)")
    p.add_argument("--max-thinking-tokens", type=_caps, default=None,
                   help="cap: at this many thinking tokens the end delimiter is spliced (default: none); "
                        "several, comma-separated (32,64,128), run as one budget sweep: the thinking they share "
                        "is computed once")
    p.add_argument("--num-ignore", type=int, default=0, help="times to replace end-of-thinking with --ignore-str")
    p.add_argument("--ignore-str", default="Wait", help="spliced in place of an ignored end (default: Wait)")
    p.add_argument("--final-answer-str", default=None, help='spliced after the delimiter at the cap, e.g. "Final Answer:"')
    p.add_argument("--max-answer-tokens", type=int, default=None, help="cap on sampled answer tokens (default: none)")
    p.add_argument("--suppress", action="store_true", help="mask end-of-thinking until --min-thinking-tokens")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="cap on the whole continuation: thinking, splices and answer (default: 1024)")
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
    if args.system is not None and not args.chat:
        p.error("--system is a chat message: drop it or --no-chat")
    return args


def _caps(text: str) -> list[int]:
    try:
        return [int(cap) for cap in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer or comma-separated integers (32,64,128), got {text!r}") from None


def build_budgets(args: argparse.Namespace) -> list[ThinkingBudget]:
    """One budget per --max-thinking-tokens cap (one without a cap when none is given); none with --no-budget."""
    if args.no_budget:
        return []
    return [ThinkingBudget(min_tokens=args.min_thinking_tokens, max_tokens=cap, num_ignore=args.num_ignore,
                           ignore_str=args.ignore_str, final_answer_str=args.final_answer_str,
                           max_answer_tokens=args.max_answer_tokens, suppress=args.suppress)
            for cap in args.max_thinking_tokens or [None]]


def build_params(args: argparse.Namespace, budget: ThinkingBudget | None) -> SamplingParams:
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
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not raise again
        return 141  # 128 + SIGPIPE
    except OSError as e:  # the output could not be written (a full disk): one line, as other errors
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"error: {e}", file=sys.stderr)
        return 1


def _as_flags(message: str) -> str:
    """A ThinkingBudget error in the CLI's words: its fields named by their flags."""
    if not message.startswith("ThinkingBudget."):
        return message
    message = re.sub(r"ThinkingBudget\.(\w+)", lambda m: BUDGET_FIELD_FLAGS[m.group(1)], message)
    return message.replace("above max_tokens", "above --max-thinking-tokens")


def _not_utf8(text: str) -> str | None:
    """Bytes that were not UTF-8 reach Python as lone surrogates (surrogateescape): name the first."""
    bad = next((i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:
        return f"is not valid UTF-8: byte 0x{ord(text[bad]) - 0xDC00:02x} at character {bad}"
    return None


def generate(args: argparse.Namespace) -> int:
    try:
        budgets = build_budgets(args)
        params = build_params(args, budgets[0] if budgets else None)
        resolve_dtype(args.dtype, resolve_device(args.device))  # before stdin is read
    except ValueError as e:
        print(f"error: {_as_flags(str(e))}", file=sys.stderr)
        return 2
    if args.prompt is None and sys.stdin.isatty():
        print("reading the prompt from stdin (end it with Ctrl-D)...", file=sys.stderr)
    # stdin as bytes: a strict UTF-8 locale would raise on a bad byte before it could be named
    question = (args.prompt if args.prompt is not None
                else sys.stdin.buffer.read().decode("utf-8", "surrogateescape").strip())  # a piped file's last newline
    problem = "is empty" if not question.strip() else _not_utf8(question)
    if problem:
        print(f"error: the prompt {problem}", file=sys.stderr)
        return 2
    try:
        llm = llm_from_args(args)
    except (ValueError, TypeError, OSError) as e:  # bad path, unknown architecture, corrupt weights, no download
        print(f"error: {e}", file=sys.stderr)
        return 2
    color = sys.stdout.isatty()
    phase, start = None, time.perf_counter()
    try:
        if args.chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": question}
            ]
            prompt = llm.chat_prompt(messages, params)
        else:
            prompt = question
        if budgets:
            _warn_when_thinking_fills_the_room(llm, prompt, params, budgets, args.max_tokens)
        if len(budgets) > 1:
            return _print_sweep(llm.sweep(prompt, params, budgets, use_tqdm=False)[0], budgets, start, color)
        for delta in llm.stream(prompt, params):
            if delta.phase != phase and (delta.text or delta.output is not None):  # an empty answer still gets its header
                phase = delta.phase
                print(f"\n[{phase}]", flush=True)
            if delta.text:
                dim = color and delta.phase == "thinking"
                print(f"{DIM if dim else ''}{delta.text}{RESET if dim else ''}", end="", flush=True)
            output = delta.output
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"\n\n-- {_summary(output)} | {len(output.token_ids)} tokens in {seconds:.1f} s, prefill included: "
          f"{len(output.token_ids) / seconds:.1f} tokens/s", file=sys.stderr)
    return 0


def _warn_when_thinking_fills_the_room(llm, prompt, params: SamplingParams, budgets: list[ThinkingBudget],
                                       max_tokens: int) -> None:
    """Thinking that may run to the room the continuation has (--max-tokens, or the context the prompt
    leaves when less), with the splices that follow it, leaves no answer."""
    budget = max(budgets, key=lambda b: max(b.min_tokens, b.max_tokens or 0))
    thinking = max(budget.min_tokens, budget.max_tokens or 0)
    spliced = llm.budget_tokens(replace(params, budget=budget))
    splices = len(spliced.delimiter) + len(spliced.final_answer)
    left = llm.max_model_len - len(prompt if isinstance(prompt, list) else llm.tokenizer.encode(prompt))
    room = f"--max-tokens {max_tokens}" if max_tokens <= left else f"the {left} tokens the context leaves after the prompt"
    cap = "no --max-thinking-tokens" if budget.max_tokens is None else f"--max-thinking-tokens {budget.max_tokens}"
    if thinking and thinking + splices >= min(max_tokens, left):
        print(f"warning: thinking may use all of {room} (--min-thinking-tokens {budget.min_tokens}, {cap}, then "
              f"{splices} tokens spliced): the answer may never start", file=sys.stderr)


def _summary(output) -> str:
    return (f"thinking tokens: {output.num_thinking_tokens} | answer tokens: {output.num_answer_tokens}"
            f" | ignores: {output.num_ignores_used} | finish: {output.finish_reason}")


def _print_sweep(outputs: list, budgets: list[ThinkingBudget], start: float, color: bool) -> int:
    """Each cap's thinking and answer in turn, with its summary; then the sweep's tokens and time."""
    for budget, output in zip(budgets, outputs):
        if output.error is not None:
            print(f"error: {output.error}", file=sys.stderr)
            return 2
        thinking = f"{DIM}{output.thinking_text}{RESET}" if color else output.thinking_text
        answer = output.text[len(output.thinking_text):]  # empty when the cap's run ended while thinking
        print(f"\n=== --max-thinking-tokens {budget.max_tokens}" + (f"\n[thinking]\n{thinking}" if thinking else "")
              + (f"\n[answer]\n{answer}" if answer else ""), flush=True)
        print(f"-- {_summary(output)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outputs)
    print(f"\n-- {len(outputs)} caps, {tokens} tokens between them in {seconds:.1f} s (their shared thinking "
          "computed once)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
