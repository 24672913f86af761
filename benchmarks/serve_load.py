"""Load on the OpenAI-compatible server against the engine's offline API, in one run on one LLM.

python -m benchmarks.serve_load [--model DIR] [--requests 32] [--concurrency 1,8,32] [--prompt-tokens 128]
[--max-tokens 64] [--dtype ...]

The same token-id prompts (ignore_eos, so every request makes exactly --max-tokens tokens) go once
through `LLM.generate` (all at once) and then through HTTP at each concurrency (that many clients,
each sending its next request when the last one returns). Reported: output tokens/s, its ratio to
the offline run, and mean request latency. The prefix cache is reset before each run.
"""
import argparse
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.workloads import text_prompts
from engine import LLM, SamplingParams
from engine.serve import OpenAIServer, in_background


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF-format model dir (default: the default model)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency takes comma-separated integers, got {args.concurrency!r}")
    if min([args.requests, args.prompt_tokens, args.max_tokens, *args.concurrency]) < 1:
        p.error("--requests, --concurrency, --prompt-tokens and --max-tokens must be positive")
    return args


def post(port: int, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    reply = conn.getresponse()
    data = json.loads(reply.read())
    conn.close()
    if reply.status != 200:
        raise RuntimeError(f"the server answered {reply.status}: {data}")
    return data


def serve_run(port: int, prompts: list[list[int]], max_tokens: int, concurrency: int) -> tuple[float, int, float]:
    """(seconds, output tokens, mean latency) of every prompt sent by `concurrency` clients."""
    latencies = []

    def one(prompt: list[int]) -> int:
        start = time.perf_counter()
        reply = post(port, {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
        latencies.append(time.perf_counter() - start)
        return reply["usage"]["completion_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, prompts))
    return time.perf_counter() - start, tokens, sum(latencies) / len(latencies)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        llm = LLM(model=args.model, dtype=args.dtype, max_num_seqs=max(args.concurrency))
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.prompt_tokens + args.max_tokens > llm.max_model_len:
        raise SystemExit(f"error: --prompt-tokens {args.prompt_tokens} + --max-tokens {args.max_tokens} pass the "
                         f"context of {llm.max_model_len}")
    prompts = text_prompts(llm.tokenizer, [args.prompt_tokens] * args.requests)
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    offline = sum(len(o.token_ids) for o in outputs) / (time.perf_counter() - start)
    rows = [("offline LLM.generate", offline, 1.0, None)]
    with in_background(OpenAIServer(llm, port=0, quiet=True)) as server:
        for concurrency in args.concurrency:
            server.loop.call(LLM.reset_prefix_cache)  # between the engine thread's steps
            seconds, tokens, latency = serve_run(server.server_address[1], prompts, args.max_tokens, concurrency)
            rows.append((f"server, {concurrency} clients", tokens / seconds, tokens / seconds / offline, latency))
    print(f"{args.requests} requests x ({args.prompt_tokens} prompt + {args.max_tokens} output tokens), "
          f"model {llm.model_dir.name}, {llm.dtype}, {llm.device}")
    print("| run | output tok/s | vs offline | mean latency (s) |\n|---|---|---|---|")
    for name, rate, ratio, latency in rows:
        print(f"| {name} | {rate:.1f} | {ratio:.2f}x | {'-' if latency is None else f'{latency:.2f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
