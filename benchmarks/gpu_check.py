"""One command for a lent GPU: kernels vs their references, kernel bandwidth, engine decode speed.

    python -m benchmarks.gpu_check            # on a GPU, < 8 min; appends a table to benchmarks/RESULTS.md
    python -m benchmarks.gpu_check --smoke    # the same code paths at tiny sizes, CPU, Triton interpreter

Weights are random (transformers' init), shaped like Qwen2.5-0.5B / 1.5B; the tokenizer is a made-up
word-level one: nothing is downloaded. The engine decodes through CUDA graphs (on the CPU, the smoke
run replays the same static buffers eagerly) and, for comparison, eagerly.
"""
import argparse
import datetime
import gc
import random
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
# (GPU, smoke) sizes
KERNEL_SIZES = {
    False: dict(seqs=32, context=4096, heads=12, kv_heads=2, head_dim=128, block_size=16, chunk=512, tokens=4096,
                hidden=1536, intermediate=8960),
    True: dict(seqs=4, context=40, heads=4, kv_heads=2, head_dim=64, block_size=16, chunk=20, tokens=8,
               hidden=96, intermediate=96),
}
SAMPLER_SIZES = {False: dict(rows=64, vocab=151936), True: dict(rows=8, vocab=5000)}
ENGINE_SIZES = {False: dict(prompt=128, new=128, batches=(1, 64), shapes=("qwen2.5-0.5b", "qwen2.5-1.5b"),
                            nano_seqs=256, nano_len=(100, 1024)),
                True: dict(prompt=8, new=4, batches=(1, 3), shapes=("tiny",), nano_seqs=4, nano_len=(4, 12))}


def timed(fn, device: torch.device, iters: int) -> float:
    """Seconds per call: the best of `iters` after a warm-up call."""
    fn()
    best = float("inf")
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth(device: torch.device, smoke: bool) -> float:
    """Bytes/s of a device-to-device copy (read + write)."""
    src = torch.randn((1 << 20) if smoke else (1 << 28), device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), device, 3 if smoke else 20)


def kernel_rows(device: torch.device, dtype: torch.dtype, smoke: bool, bandwidth: float) -> list[list[str]]:
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
    lens = torch.full((s["seqs"],), s["context"], device=device)
    ext_lens = torch.full((4,), s["context"] + s["chunk"], device=device)
    cu = torch.arange(5, device=device) * s["chunk"]
    t, hidden, inter = s["tokens"], s["hidden"], s["intermediate"]
    x, res, w = randn(t, hidden), randn(t, hidden), 1 + 0.1 * randn(hidden)
    qk, gate_up = randn(t, heads + kvh, hd), randn(t, 2 * inter)
    angles = torch.rand(t, 1, hd // 2, generator=gen, device=device) * 100
    freqs = torch.polar(torch.ones_like(angles), angles)
    kv, slots = randn(t, 2, kvh, hd), torch.randperm(num_blocks * bs, device=device)[:t]
    sampler_args = sampler_inputs(SAMPLER_SIZES[smoke], device, gen)
    cases = {  # name: (kernel call, reference call, bytes moved at least)
        "decode_attention": (lambda m: m.decode_attention(randq, cache, tables, lens), s["seqs"] * s["context"] * 2 * kvh * hd * elt),
        "extend_attention": (lambda m: m.extend_attention(randt, cache, tables[:4], cu, ext_lens, s["chunk"]),
                             4 * (s["context"] + s["chunk"]) * 2 * kvh * hd * elt),
        "store_kv": (lambda m: m.store_kv(kv, cache, slots), 2 * kv.numel() * elt),
        "add_rms_norm": (lambda m: m.add_rms_norm(x, res, w, 1e-6)[0], 4 * x.numel() * elt),
        "rotary_": (lambda m: (m.rotary_(qk_work, freqs), qk_work)[1], 2 * qk.numel() * elt),
        "silu_and_mul": (lambda m: m.silu_and_mul(gate_up), 3 * t * inter * elt),
        "sample": (lambda m: m.sample(*sampler_args), sampler_args[0].numel() * 4),  # fp32 logits, read once at least
    }
    randq, randt = randn(s["seqs"], heads, hd), randn(4 * s["chunk"], heads, hd)
    modules = {"decode_attention": decode_attention, "extend_attention": extend_attention, "store_kv": store_kv,
               "add_rms_norm": rms_norm, "rotary_": rotary, "silu_and_mul": activation, "sample": sample}
    rows = []
    for name, (call, nbytes) in cases.items():
        qk_work = qk.clone()
        got = call(modules[name])
        qk_work = qk.clone()
        want = call(reference)
        if name == "store_kv":  # compare the caches it writes
            got, want = cache.clone(), cache.clone()
            store_kv.store_kv(kv, got, slots)
            reference.store_kv(kv, want, slots)
        if name == "sample":  # tokens: equal, or (rarely) a draw landing on a step of the cdf within rounding
            err = f"{int((got != want).sum())}/{len(got)} tokens differ"
        else:
            err = f"{float((got.float() - want.float()).abs().max() / want.float().abs().max()):.1e}"
        qk_work = qk.clone()
        seconds = timed(lambda: call(modules[name]), device, 1 if smoke else 20)
        rows.append([name, err, f"{seconds * 1e6:.1f}", f"{nbytes / seconds / 1e9:.1f}",
                     f"{nbytes / seconds / bandwidth:.0%}"])
    return rows


def sampler_inputs(size: dict, device: torch.device, gen: torch.Generator) -> tuple:
    """A decode batch's sampler call: a quarter greedy, a quarter plain draws, half top-k 50 + top-p 0.9;
    every other row with one budget-masked id."""
    rows, vocab = size["rows"], size["vocab"]
    logits = torch.randn(rows, vocab, generator=gen, device=device) * 4
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
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, eos_token_id=2, bos_token_id=1)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    model.save_pretrained(out)
    word_tokenizer(out)
    return model


def engine_llm(path: Path, device, dtype, kernels: str, max_num_seqs: int, graphs: bool):
    from engine import LLM
    from engine.graphs import replay_eagerly

    llm = LLM(model=path, device=device, dtype=dtype, kernels=kernels, max_num_seqs=max_num_seqs,
              num_blocks=None if device.type == "cuda" else 32,  # smoke: narrow static tables, a quicker interpreter
              cuda_graphs=graphs and device.type == "cuda")
    if graphs and device.type != "cuda":  # the CPU stand-in: the graphs' static buffers and padding, replayed eagerly
        llm.core.runner.capture_decode_graphs(max_num_seqs, llm.max_model_len, capture=replay_eagerly)
    return llm


def engine_rows(device, dtype, smoke: bool, bandwidth: float, kernels: str, work: Path) -> list[list[str]]:
    from engine import SamplingParams

    s = ENGINE_SIZES[smoke]
    rng = random.Random(0)
    max_num_seqs = max(s["batches"]) if smoke else 256
    rows = []
    for shape in s["shapes"]:
        path = work / shape
        hf = random_model(shape, path, device, dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
        decode = {batch: [[rng.randrange(3, 1000) for _ in range(s["prompt"])] for _ in range(batch)] for batch in s["batches"]}
        lo, hi = s["nano_len"]
        nano_prompts = [[rng.randrange(3, 1000) for _ in range(rng.randint(lo, hi))] for _ in range(s["nano_seqs"])]
        nano_params = [SamplingParams(max_tokens=rng.randint(lo, hi), ignore_eos=True) for _ in nano_prompts]
        tps = {}
        for graphs in (True, False):
            llm = engine_llm(path, device, dtype, kernels, max_num_seqs, graphs)
            llm.generate(decode[s["batches"][0]][:1], SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)
            for batch, prompts in decode.items():
                params = SamplingParams(max_tokens=s["new"], ignore_eos=True)
                tps[graphs, batch] = batch * s["new"] / _wall(lambda: llm.generate(prompts, params, use_tqdm=False), device)
            if graphs:
                nano_seconds = _wall(lambda: llm.generate(nano_prompts, nano_params, use_tqdm=False), device)
            del llm
            gc.collect()  # the next engine sizes its pool from what is free: none of this one may linger
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for batch, prompts in decode.items():
            ids = torch.tensor(prompts, device=device)
            hf_seconds = _wall(lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s["new"],
                                                   min_new_tokens=s["new"], do_sample=False, pad_token_id=2), device)
            hf_tps = batch * s["new"] / hf_seconds
            roofline = batch * bandwidth / weight_bytes  # every step reads the weights once (KV ignored)
            rows.append([f"{shape} decode, batch {batch}", f"{tps[True, batch]:.1f}", f"{tps[False, batch]:.1f}",
                         f"{hf_tps:.1f}", f"{tps[True, batch] / hf_tps:.2f}x", f"{tps[True, batch] / roofline:.0%}"])
        total = sum(p.max_tokens for p in nano_params)
        hf_tps = total / _wall(lambda: hf_padded_generate(hf, nano_prompts, max(p.max_tokens for p in nano_params), device), device)
        rows.append([f"{shape} nano-vllm run, {len(nano_prompts)} seqs", f"{total / nano_seconds:.1f}", "",
                     f"{hf_tps:.1f}", f"{total / nano_seconds / hf_tps:.2f}x", ""])
        del hf
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def hf_padded_generate(hf, prompts: list[list[int]], new_tokens: int, device: torch.device) -> None:
    """transformers serving the same requests as one left-padded batch, run to the longest output (a
    static batch's cost; only the requested tokens are counted)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=2)


def _wall(fn, device: torch.device) -> float:
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under the Triton interpreter")
    parser.add_argument("--results", type=Path, help="append the tables here (default: benchmarks/RESULTS.md on a GPU)")
    args = parser.parse_args(argv)
    if args.smoke:
        from kernels.interpret import enable_interpreter

        enable_interpreter()
        device, dtype, kernel_dtype = torch.device("cpu"), torch.float32, torch.float16  # bf16 dot is wrong there
        kernels, results = "triton", args.results
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here: run with --smoke for the CPU check")
        device, dtype, kernel_dtype = torch.device("cuda"), torch.bfloat16, torch.bfloat16
        kernels, results = "triton", args.results or Path(__file__).with_name("RESULTS.md")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter, smoke)"
    bandwidth = copy_bandwidth(device, args.smoke)
    out = [f"## GPU check: {name}, {datetime.date.today()}, `python -m benchmarks.gpu_check{' --smoke' if args.smoke else ''}`",
           "", f"Measured device copy: {bandwidth / 1e9:.1f} GB/s.", ""]
    out.append(table(["kernel", f"rel. error vs reference ({str(kernel_dtype)[6:]})", "time us", "GB/s", "of copy"],
                     kernel_rows(device, kernel_dtype, args.smoke, bandwidth)))
    with tempfile.TemporaryDirectory() as work:
        rows = engine_rows(device, dtype, args.smoke, bandwidth, kernels, Path(work))
    out += ["", table(["engine run", "engine tok/s (graphs)", "engine tok/s (eager)", "transformers generate tok/s",
                       "ratio (graphs)", "of weight roofline"], rows),
            "", "Decode runs prefill + decode (tok/s over new tokens). The nano-vllm run's transformers column is one "
            "left-padded batch run to the longest output, counting only the requested tokens.", ""]
    text = "\n".join(out)
    print(text)
    if results is not None:
        with open(results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
