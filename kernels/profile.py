"""Per-op time of the engine's decode and prefill steps, with torch.profiler.

    python -m kernels.profile [--model DIR | --shape qwen2.5-0.5b] [--batch 32] [--context 256] [--trace t.json]

CPU today (the torch path); on CUDA it profiles the Triton kernels ("auto"), launched eagerly so each
shows (--cuda-graphs profiles the replayed decode step instead). Prints, per step kind, the ops by self
time with their share of the step's wall time; what no op accounts for is Python/dispatch (on a GPU,
where kernel time is counted, the GPU's idle gaps between launches).
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

CATEGORIES = (  # (category, substrings of op names), first match wins
    ("attention", ("scaled_dot_product", "attention", "index_select", "index_copy", "_store_kv", "_decode", "_extend")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::matmul", "aten::bmm", "gemm", "nvjet", "cutlass")),  # cuBLAS kernels
    ("norm", ("rms_norm", "_rms_norm")),
    ("rotary", ("complex", "_rotary")),
    ("activation", ("silu",)),
    ("sampling", ("_sample", "softmax", "sort", "topk", "argmax", "cumsum", "searchsorted", "index_put")),
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def category(name: str) -> str:
    return next((cat for cat, keys in CATEGORIES if any(k in name for k in keys)), "other ops")


def op_times(events, device_time: bool) -> dict[str, float]:
    """Self time (us) by op: on the CPU, the aten ops and the engine's own (Triton references); on a GPU,
    the kernels themselves (an aten op's device time is its kernels' again, so only device events count)."""
    if device_time:
        return {e.key: e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA}
    return {e.key: e.self_cpu_time_total for e in events
            if e.device_type == DeviceType.CPU and e.key.startswith(("aten::", "_"))}


def profiled_steps(llm, steps: int, trace: Path | None, label: str) -> None:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if llm.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            llm.core.step()
        if llm.device.type == "cuda":
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    if trace is not None:
        prof.export_chrome_trace(str(trace.with_name(f"{trace.stem}-{label}{trace.suffix or '.json'}")))
    device_time = llm.device.type == "cuda"
    self_us = op_times(prof.key_averages(), device_time)
    by_cat: dict[str, float] = {}
    for name, us in self_us.items():
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + us
    print(f"\n{label}: {steps} step(s), {wall_us / steps / 1e3:.2f} ms per step")
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:<24} {us / steps / 1e3:8.3f} ms  {us / wall_us:6.1%}")
    rest = wall_us - sum(by_cat.values())
    label = "GPU idle (launch gaps)" if device_time else "Python/dispatch"
    print(f"  {label:<24} {rest / steps / 1e3:8.3f} ms  {rest / wall_us:6.1%}")
    print("  top ops:")
    for name, us in sorted(self_us.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {name[:48]:<48} {us / steps / 1e3:8.3f} ms  {us / wall_us:6.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kernels.profile", description="profile the engine's decode and prefill steps")
    from benchmarks.gpu_check import SHAPES, random_model

    parser.add_argument("--model", type=Path, help="HF model dir (default: the default model)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random weights of a named shape instead")
    parser.add_argument("--batch", type=_positive, default=1)
    parser.add_argument("--context", type=_positive, default=256, help="prompt tokens per sequence")
    parser.add_argument("--steps", type=_positive, default=10, help="decode steps profiled")
    parser.add_argument("--kernels", default="auto", choices=("auto", "triton", "torch"))
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the engine's for the device")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay decode steps as CUDA graphs (CUDA only; "
                        "default: eager, so each kernel shows)")
    parser.add_argument("--trace", type=Path, help="write Chrome traces: t.json gives t-prefill.json and t-decode.json")
    args = parser.parse_args(argv)
    if args.cuda_graphs and (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0] != "cuda":
        parser.error("--cuda-graphs needs a CUDA device")
    from engine import LLM, SamplingParams

    if args.trace is not None and not args.trace.parent.is_dir():
        parser.error(f"--trace {args.trace}: no dir {args.trace.parent} to write the traces into")

    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if args.shape is not None:
            device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
            model = Path(work) / args.shape
            random_model(args.shape, model, device, getattr(torch, dtype))
        try:
            llm = LLM(model=model, device=args.device, dtype=args.dtype, kernels=args.kernels, max_num_seqs=args.batch,
                      max_num_batched_tokens=max(2048, args.batch * args.context), cuda_graphs=args.cuda_graphs)
        except (ValueError, TypeError, OSError) as e:  # a bad model dir too
            parser.error(str(e))
        if args.context + args.steps + 1 > llm.max_model_len:  # every profiled step must decode every sequence
            parser.error(f"--context {args.context} + --steps {args.steps} + 1 is past the model's context "
                         f"({llm.max_model_len} tokens)")
        params = SamplingParams(max_tokens=args.steps + 3, ignore_eos=True)
        for i in range(args.batch):
            llm.add_request([3 + (i * 7 + j) % 900 for j in range(args.context)], params)
        print(f"model {model or 'default'}, {llm.device}, {llm.dtype}, kernels={llm.core.runner.ops.name}, "
              f"batch {args.batch}, context {args.context}")
        profiled_steps(llm, 1, args.trace, "prefill")
        llm.core.step()  # the first decode step outside the profile: one-off allocations
        profiled_steps(llm, args.steps, args.trace, "decode")


if __name__ == "__main__":
    main()
