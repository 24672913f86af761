"""One command for a lent GPU: kernels vs their references, kernel bandwidth, engine decode speed.

    python -m benchmarks.gpu_check            # on a GPU, < 8 min; appends its tables to benchmarks/RESULTS.md
    python -m benchmarks.gpu_check --smoke    # the same code paths at tiny sizes, CPU, Triton interpreter

Each part (the copy bandwidth, each kernel, each model's creation, engine and transformers runs) runs in a
process of its own under one time budget, so a kernel that crashes or poisons the CUDA context, or a run
that hangs, costs its own row and no other; rows are appended to the results file as they come, so even
a run cut short leaves what it measured. Weights are random (transformers' init), shaped like
Qwen2.5-0.5B / 1.5B; the tokenizer is a made-up word-level one: nothing is downloaded. The engine decodes
through CUDA graphs (on the CPU, the smoke run replays the same static buffers eagerly) and, for
comparison, eagerly.
"""
import argparse
import datetime
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {  # transformers Qwen2Config fields
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False),
}
KERNELS = ("decode_attention", "extend_attention", "store_kv", "add_rms_norm", "rotary_", "silu_and_mul", "sample")
# (GPU, smoke) sizes
KERNEL_SIZES = {
    False: dict(seqs=32, context=4096, heads=12, kv_heads=2, head_dim=128, block_size=16, chunk=512, tokens=4096,
                hidden=1536, intermediate=8960),
    True: dict(seqs=4, context=40, heads=4, kv_heads=2, head_dim=64, block_size=16, chunk=20, tokens=8,
               hidden=96, intermediate=96),
}
SAMPLER_SIZES = {False: dict(rows=64, vocab=151936), True: dict(rows=8, vocab=5000)}
ENGINE_SIZES = {False: dict(prompt=128, new=128, batches=(1, 64), shapes=("qwen2.5-1.5b", "qwen2.5-0.5b"),
                            nano_seqs=256, nano_len=(100, 1024), max_num_seqs=256, batched_tokens=8192, repeats=1),
                True: dict(prompt=8, new=4, batches=(1, 3), shapes=("tiny",), nano_seqs=4, nano_len=(4, 12),
                           max_num_seqs=3, batched_tokens=2048, repeats=2)}
# repeats: decode timings are the best of this many runs (the smoke's milliseconds on a shared CPU once took
# a run to 4 tokens 0.12 s less than a run to 1)
BUDGET_S = {False: 450.0, True: 600.0}  # the whole check; a GPU run must end inside a lent machine's 10-minute call
MARK = "@gpu_check "  # a section's measurements on its stdout, one JSON object a line


def sections(smoke: bool) -> list[str]:
    """Every part of the check, in the order it runs (the issue's targets first)."""
    names = ["copy"] + [f"kernel:{k}" for k in KERNELS]
    for shape in ENGINE_SIZES[smoke]["shapes"]:
        names += [f"model:{shape}", f"engine-graphs:{shape}", f"transformers:{shape}", f"engine-eager:{shape}"]
    return names


# --- the sections, each run in its own process -------------------------------------------------------

def emit(**values) -> None:
    """Report measurements to the parent (stdout) and to whoever watches the log (stderr)."""
    print(MARK + json.dumps(values), flush=True)
    print("gpu_check:", ", ".join(f"{k}={v}" for k, v in values.items()), file=sys.stderr, flush=True)


def timed(fn, device: torch.device, iters: int) -> float:
    """Seconds per call. On a GPU, Triton's do_bench: the median over ~100 ms of calls, each after L2 is
    flushed (so inputs are read from memory, and the flush keeps the GPU busy while Python launches the
    call); on the CPU, the best of `iters` after a warm-up call."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def copy_section(device: torch.device, smoke: bool) -> None:
    """Bytes/s of a device-to-device copy (read + write)."""
    src = torch.randn((1 << 20) if smoke else (1 << 28), device=device)
    dst = torch.empty_like(src)
    emit(bandwidth=2 * src.numel() * 4 / timed(lambda: dst.copy_(src), device, 3),
         device=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter, smoke)")


def kernel_section(name: str, device: torch.device, dtype: torch.dtype, smoke: bool) -> None:
    """One kernel against its reference on fresh random inputs: error, then time and bytes moved."""
    from kernels import activation, decode_attention, extend_attention, reference, rms_norm, rotary, sample, store_kv

    s = KERNEL_SIZES[smoke]
    gen = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=device).to(dtype)  # noqa: E731
    elt = torch.empty((), dtype=dtype).element_size()
    bs, kvh, hd, heads = s["block_size"], s["kv_heads"], s["head_dim"], s["heads"]
    blocks_per_seq = -(-(s["context"] + s["chunk"]) // bs)
    num_blocks = s["seqs"] * blocks_per_seq
    cache = randn(2, kvh, num_blocks, bs, hd)
    tables = torch.randperm(num_blocks, device=device).view(s["seqs"], blocks_per_seq)
    decode_tables = tables[:, : -(-s["context"] // bs)]  # as wide as the context, as the engine's eager tables
    lens = torch.full((s["seqs"],), s["context"], device=device)
    ext_lens = torch.full((4,), s["context"] + s["chunk"], device=device)
    cu = torch.arange(5, device=device) * s["chunk"]
    t, hidden, inter = s["tokens"], s["hidden"], s["intermediate"]
    x, res, w = randn(t, hidden), randn(t, hidden), 1 + 0.1 * randn(hidden)
    qk, gate_up = randn(t, heads + kvh, hd), randn(t, 2 * inter)
    angles = torch.rand(t, 1, hd // 2, generator=gen, device=device) * 100
    freqs = torch.polar(torch.ones_like(angles), angles)
    kv, slots = randn(t, 2, kvh, hd), torch.randperm(num_blocks * bs, device=device)[:t]
    randq, randt = randn(s["seqs"], heads, hd), randn(4 * s["chunk"], heads, hd)
    sampler_args = sampler_inputs(SAMPLER_SIZES[smoke], device, gen)
    qk_work = qk.clone()
    cases = {  # name: (module, call, bytes moved at least)
        "decode_attention": (decode_attention, lambda m: m.decode_attention(randq, cache, decode_tables, lens),
                             s["seqs"] * s["context"] * 2 * kvh * hd * elt),
        "extend_attention": (extend_attention, lambda m: m.extend_attention(randt, cache, tables[:4], cu, ext_lens, s["chunk"]),
                             4 * (s["context"] + s["chunk"]) * 2 * kvh * hd * elt),
        "store_kv": (store_kv, lambda m: m.store_kv(kv, cache, slots), 2 * kv.numel() * elt),
        "add_rms_norm": (rms_norm, lambda m: m.add_rms_norm(x, res, w, 1e-6)[0], 4 * x.numel() * elt),
        "rotary_": (rotary, lambda m: (m.rotary_(qk_work, freqs), qk_work)[1], 2 * qk.numel() * elt),
        "silu_and_mul": (activation, lambda m: m.silu_and_mul(gate_up), 3 * t * inter * elt),
        "sample": (sample, lambda m: m.sample(*sampler_args), sampler_args[0].numel() * 4),  # fp32 logits, read once at least
    }
    module, call, nbytes = cases[name]
    if name == "store_kv":  # compare the caches it writes
        got, want = cache.clone(), cache.clone()
        store_kv.store_kv(kv, got, slots)
        reference.store_kv(kv, want, slots)
    else:
        got = call(module).clone()
        qk_work = qk.clone()
        want = call(reference)
    if name == "sample":  # tokens: equal, or (rarely) a draw landing on a step of the cdf within rounding
        error = f"{int((got != want).sum())}/{len(got)} tokens differ"
    else:
        error = f"{float((got.float() - want.float()).abs().max() / want.float().abs().max()):.1e}"
    emit(error=error)
    emit(seconds=timed(lambda: call(module), device, 1), bytes=nbytes)
    if name == "extend_attention":  # compute-bound: its rate is FLOP/s (QK^T and PV of the causal chunk over its prefix)
        c, ctx = s["chunk"], s["context"]
        emit(flops=4 * 4 * heads * hd * (c * ctx + c * (c + 1) // 2))
    if name == "decode_attention":  # the launch settings a GPU session picks from: each timed on the same inputs
        emit(variants={f"{stages} stages, {programs} programs": _variant_seconds(decode_attention, call, device, stages, programs)
                       for stages in (3, 5) for programs in (256, 1024)})


def _variant_seconds(module, call, device: torch.device, stages: int, programs: int) -> float:
    saved = module.NUM_STAGES, module.TARGET_PROGRAMS
    module.NUM_STAGES, module.TARGET_PROGRAMS = stages, programs
    try:
        return timed(lambda: call(module), device, 1)
    finally:
        module.NUM_STAGES, module.TARGET_PROGRAMS = saved


def sampler_inputs(size: dict, device: torch.device, gen: torch.Generator) -> tuple:
    """A decode batch's sampler call: a quarter greedy, a quarter plain draws, half top-k 50 + top-p 0.9;
    every other row with one budget-masked id. Logits are bf16 values in fp32, as a bf16 model's head
    gives them (the sampler then resolves 16 bits of each key, not 32)."""
    rows, vocab = size["rows"], size["vocab"]
    logits = (torch.randn(rows, vocab, generator=gen, device=device) * 4).bfloat16().float()
    quarter = torch.arange(rows, device=device) * 4 // rows
    temperature = torch.where(quarter == 0, 0.0, 0.8)
    top_k = torch.where(quarter >= 2, 50, 0)
    top_p = torch.where(quarter >= 2, 0.9, 1.0)
    uniform = torch.rand(rows, generator=gen, device=device, dtype=torch.float64)
    masked = torch.full((rows, 1), -1, device=device)
    masked[::2, 0] = logits[::2].argmax(-1)
    return logits, vocab, temperature, top_k, top_p, uniform, masked


def word_tokenizer(out: Path, size: int = 1000) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{f"w{i}": i for i in range(3, size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.save_pretrained(out)


def random_model(shape: str, out: Path, device: torch.device, dtype: torch.dtype):
    """A random model of the shape, saved as a checkpoint dir the engine and transformers both load."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, eos_token_id=2, bos_token_id=1)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    model.save_pretrained(out)
    word_tokenizer(out)
    return model


def model_section(shape: str, out: Path, device: torch.device, dtype: torch.dtype) -> None:
    model = random_model(shape, out, device, dtype)
    emit(weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))


def workload(smoke: bool) -> tuple[dict[int, list[list[int]]], list[list[int]], list[int]]:
    """The same requests for every run: decode prompts per batch size, and the nano-vllm-style run's
    prompts and output lengths (random in its range)."""
    s, rng = ENGINE_SIZES[smoke], random.Random(0)
    decode = {batch: [[rng.randrange(3, 1000) for _ in range(s["prompt"])] for _ in range(batch)] for batch in s["batches"]}
    lo, hi = s["nano_len"]
    prompts = [[rng.randrange(3, 1000) for _ in range(rng.randint(lo, hi))] for _ in range(s["nano_seqs"])]
    return decode, prompts, [rng.randint(lo, hi) for _ in prompts]


def decode_rate(generate, batch: int, new: int, device: torch.device, repeats: int) -> float:
    """Decode tokens/s with the prefill taken out: (new - 1) more tokens a sequence, over the time a run to
    `new` tokens takes beyond a run to 1 token (both from an empty prefix cache, each the best of `repeats`,
    taken in turns so that a slow spell of the machine slows both), after an untimed run to `new` tokens at
    this batch size (first-use costs of its prefill and decode shapes)."""
    generate(new)
    seconds = {new: [], 1: []}
    for _ in range(repeats):
        for n in seconds:
            seconds[n].append(wall(lambda: generate(n), device))
    extra = min(seconds[new]) - min(seconds[1])
    if extra <= 0:
        raise RuntimeError(f"a run to {new} tokens took no longer than a run to 1 ({extra:.3g} s): no decode rate")
    return batch * (new - 1) / extra


def engine_section(path: Path, device: torch.device, dtype: torch.dtype, smoke: bool, graphs: bool) -> None:
    """Engine decode tokens/s per batch size (prefill excluded), and with graphs the nano-vllm-style run."""
    from engine import LLM, SamplingParams
    from engine.graphs import replay_eagerly

    s = ENGINE_SIZES[smoke]
    llm = LLM(model=path, device=device, dtype=dtype, kernels="triton", max_num_seqs=s["max_num_seqs"],
              num_blocks=None if device.type == "cuda" else 32,  # smoke: narrow static tables, a quicker interpreter
              max_num_batched_tokens=s["batched_tokens"], cuda_graphs=graphs and device.type == "cuda")
    if graphs and device.type != "cuda":  # the CPU stand-in: the graphs' static buffers and padding, replayed eagerly
        llm.core.runner.capture_decode_graphs(s["max_num_seqs"], llm.max_model_len, capture=replay_eagerly)
    decode, nano_prompts, nano_lengths = workload(smoke)
    llm.generate(decode[s["batches"][0]][:1], SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)
    llm.reset_prefix_cache()  # the warm-up's prompt is the batch-1 run's: it must not start cached
    for batch, prompts in decode.items():
        def generate(new: int, prompts=prompts) -> None:
            llm.reset_prefix_cache()
            llm.generate(prompts, SamplingParams(max_tokens=new, ignore_eos=True), use_tqdm=False)

        emit(**{f"decode_{batch}": decode_rate(generate, batch, s["new"], device, s["repeats"])})
    if graphs:
        params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in nano_lengths]
        emit(nano=sum(nano_lengths) / wall(lambda: llm.generate(nano_prompts, params, use_tqdm=False), device))


def transformers_section(path: Path, device: torch.device, dtype: torch.dtype, smoke: bool) -> None:
    """transformers `generate` on the same requests: greedy decode per batch size, and the nano-vllm-style
    run as one left-padded batch run to the longest output (a static batch's cost; only the requested
    tokens are counted)."""
    from transformers import Qwen2ForCausalLM

    s = ENGINE_SIZES[smoke]
    hf = Qwen2ForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    decode, nano_prompts, nano_lengths = workload(smoke)
    warm = torch.tensor(decode[s["batches"][0]][:1], device=device)  # one-off CUDA/cuBLAS set-up, as the engine's warm-up
    hf.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=2, do_sample=False, pad_token_id=2)
    for batch, prompts in decode.items():
        ids = torch.tensor(prompts, device=device)

        def generate(new: int, ids=ids) -> None:
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                        do_sample=False, pad_token_id=2)

        emit(**{f"decode_{batch}": decode_rate(generate, batch, s["new"], device, s["repeats"])})
    width, longest = max(map(len, nano_prompts)), max(nano_lengths)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in nano_prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in nano_prompts], device=device)
    emit(nano=sum(nano_lengths) / wall(lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=longest,
                                                            min_new_tokens=longest, do_sample=False, pad_token_id=2), device))


def wall(fn, device: torch.device) -> float:
    """Seconds fn takes, the device's queued work included."""
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run_section(name: str, smoke: bool, work: Path) -> None:
    if smoke:
        from kernels.interpret import enable_interpreter

        enable_interpreter()  # before any kernel module is imported
        device, dtype, kernel_dtype = torch.device("cpu"), torch.float32, torch.float16  # bf16 dot is wrong there
    else:
        device, dtype, kernel_dtype = torch.device("cuda"), torch.bfloat16, torch.bfloat16
    kind, _, arg = name.partition(":")
    if kind == "copy":
        copy_section(device, smoke)
    elif kind == "kernel":
        kernel_section(arg, device, kernel_dtype, smoke)
    elif kind == "model":
        model_section(arg, work / arg, device, dtype)
    elif kind in ("engine-graphs", "engine-eager"):
        engine_section(work / arg, device, dtype, smoke, graphs=kind == "engine-graphs")
    elif kind == "transformers":
        transformers_section(work / arg, device, dtype, smoke)
    else:
        raise ValueError(f"unknown section {name!r}")


# --- the parent: runs the sections, writes the tables ---------------------------------------------

class Results:
    """Lines printed and appended to the results file as they come."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, *lines: str) -> None:
        text = "\n".join(lines)
        print(text, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(text + "\n")


def spawn(name: str, smoke: bool, work: Path, timeout: float) -> tuple[dict, str | None]:
    """Run one section in a fresh process: its measurements, and why it failed (None if it did not)."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--section", name, "--work", str(work)] + (["--smoke"] if smoke else [])
    if timeout <= 0:
        return {}, "skipped: the time budget was spent"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[1])
        out, err = proc.stdout, proc.stderr
        failure = None if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        out, err = (b.decode() if isinstance(b, bytes) else (b or "") for b in (e.stdout, e.stderr))
        failure = f"stopped after {timeout:.0f} s (time budget)"
    sys.stderr.write(err)
    values = {}
    for line in out.splitlines():
        if line.startswith(MARK):
            values.update(json.loads(line[len(MARK):]))
    if failure and proc_error(err):
        failure += ": " + proc_error(err)
    return values, failure


def proc_error(stderr: str) -> str:
    """The last line of a traceback (the exception), for the table."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("gpu_check:")]
    return lines[-1].replace("|", "/")[:200] if lines else ""


def fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under the Triton interpreter")
    parser.add_argument("--results", type=Path, help="append the tables here (default: benchmarks/RESULTS.md on a GPU)")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 450 on a GPU, 600 smoke)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # a child process runs one part
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.smoke, args.work)
        return 0
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --smoke for the CPU check")
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    deadline = time.monotonic() + (args.budget or BUDGET_S[args.smoke])
    results = args.results or (None if args.smoke else Path(__file__).with_name("RESULTS.md"))
    if results is not None:  # before any part runs: a lent GPU's time is not spent on tables that cannot be kept
        try:
            open(results, "a").close()
        except OSError as e:
            parser.error(f"--results {results}: cannot append there ({e.strerror})")
    out, failures = Results(results), []
    kernel_dtype = "fp16" if args.smoke else "bf16"  # bf16 dot is wrong under the interpreter
    with tempfile.TemporaryDirectory() as work:
        def part(section: str) -> dict:
            values, failure = spawn(section, args.smoke, Path(work), deadline - time.monotonic())
            if failure:
                failures.append(f"{section}: {failure}")
                values.setdefault("status", "skipped" if failure.startswith("skipped") else "failed")
            return values

        copy = part("copy")  # the parent itself never touches the GPU: its context would cost the engines memory
        bandwidth = copy.get("bandwidth")
        out.write("", f"## GPU check: {copy.get('device', 'unknown device')}, {datetime.date.today()}, "
                      f"`python -m benchmarks.gpu_check{' --smoke' if args.smoke else ''}`", "",
                  f"Measured device copy: {fmt(bandwidth and bandwidth / 1e9)} GB/s.", "",
                  f"| kernel | rel. error vs reference ({kernel_dtype}) | time us | GB/s | of copy | TFLOP/s |",
                  "|---|---|---|---|---|---|")
        variants = {}
        for kernel in KERNELS:
            v = part(f"kernel:{kernel}")
            rate = v["bytes"] / v["seconds"] if "seconds" in v else None
            flops = v["flops"] / v["seconds"] / 1e12 if "flops" in v and "seconds" in v else None
            out.write(f"| {kernel} | {v.get('error', v.get('status', 'failed'))} | {fmt(v.get('seconds') and v['seconds'] * 1e6)} | "
                      f"{fmt(rate and rate / 1e9)} | {fmt(rate and bandwidth and rate / bandwidth, '{:.0%}')} | "
                      f"{fmt(flops, '{:.3g}')} |")
            if kernel == "decode_attention":
                variants = {label: v["bytes"] / seconds for label, seconds in v.get("variants", {}).items()}
        if variants:
            out.write("", "decode_attention launch settings (`NUM_STAGES`, `TARGET_PROGRAMS`), same inputs: " + "; ".join(
                f"{label}: {rate / 1e9:.0f} GB/s ({fmt(bandwidth and rate / bandwidth, '{:.0%}')} of copy)"
                for label, rate in variants.items()) + ".")
        out.write("", "| engine run | engine tok/s (graphs) | engine tok/s (eager) | transformers generate tok/s | "
                      "ratio (graphs) | of weight roofline |", "|---|---|---|---|---|---|")
        s = ENGINE_SIZES[args.smoke]
        for shape in s["shapes"]:
            weight_bytes = part(f"model:{shape}").get("weight_bytes")
            graphs, hf, eager = (part(f"{kind}:{shape}") if weight_bytes else {}
                                 for kind in ("engine-graphs", "transformers", "engine-eager"))
            for key, label, batch in [(f"decode_{b}", f"decode, batch {b}", b) for b in s["batches"]] + [
                    ("nano", f"nano-vllm run, {s['nano_seqs']} seqs", None)]:
                ratio = graphs[key] / hf[key] if key in graphs and key in hf else None
                roofline = batch * bandwidth / weight_bytes if batch and bandwidth and weight_bytes else None  # weights read once a step
                share = graphs[key] / roofline if key in graphs and roofline else None
                out.write(f"| {shape} {label} | {fmt(graphs.get(key))} | {fmt(eager.get(key))} | {fmt(hf.get(key))} | "
                          f"{fmt(ratio, '{:.2f}x')} | {fmt(share, '{:.0%}')} |")
    out.write("", "Decode rows exclude the prefill: the extra tokens of a run to "
                  f"{s['new']} new tokens over the extra time it takes beyond a run to 1. The nano-vllm run's "
                  "transformers column is one left-padded batch run to the longest output, counting only the "
                  "requested tokens.",
              *(["", "Failed or skipped:", *(f"- {f}" for f in failures)] if failures else []), "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
