"""Per-op time of the engine's decode and prefill steps, with torch.profiler.

    python -m kernels.profile [--model DIR | --shape qwen2.5-0.5b] [--batch 32] [--context 256] [--trace t.json]

CPU today (the torch path); on CUDA it profiles the Triton kernels ("auto"), launched eagerly so each
shows (--cuda-graphs profiles the replayed decode step instead). Prints, per step kind, the ops by self
time with their share of the step's wall time; what no op accounts for is Python/dispatch (on a GPU,
where kernel time is counted, the GPU's idle gaps between launches).
"""
import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

CATEGORIES = (  # (category, substrings of op names), first match wins
    ("attention", ("scaled_dot_product", "attention", "index_select", "index_copy", "_store_kv", "_decode", "_extend")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::matmul", "aten::bmm", "gemm", "nvjet", "cutlass")),  # cuBLAS kernels
    ("norm", ("rms_norm", "_rms_norm")),
    ("rotary", ("complex", "_rotary")),
    ("activation", ("silu",)),
    ("sampling", ("_sample", "softmax", "sort", "topk", "argmax", "cumsum", "searchsorted", "index_put")),
)


# the engine's ops, each profiled as a range whose name gives its category: the aten ops inside count with it
# (the rotary's complex mul_, the norm's pow and mean), and so does the Python between them
RANGES = {"attention": "_attention", "rms_norm": "_rms_norm", "proj_add_norm": "_proj_add_rms_norm",
          "rotary_": "_rotary_", "silu_and_mul": "_silu_and_mul"}


@contextlib.contextmanager
def ranged_ops(ops):
    originals = {method: getattr(ops, method) for method in RANGES}

    def ranged(fn, label):
        def call(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)
        return call

    for method, fn in originals.items():
        setattr(ops, method, ranged(fn, RANGES[method]))
    try:
        yield
    finally:
        for method, fn in originals.items():
            setattr(ops, method, fn)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def category(name: str) -> str:
    return next((cat for cat, keys in CATEGORIES if any(k in name for k in keys)), "other ops")


def category_times(events, device_time: bool) -> dict[str, float]:
    """Self time (us) by category, of the profile's events. On the CPU an op that its name leaves in "other
    ops" counts with its nearest enclosing op that has a category (F.rms_norm runs as pow, mean, add, rsqrt
    and mul inside aten::rms_norm: all of them are the norm's)."""
    by_cat: dict[str, float] = {}
    for e in events:
        if not counted(e, device_time):
            continue
        cat, node = "other ops", e
        while cat == "other ops" and node is not None:
            cat, node = category(node.key), None if device_time else node.cpu_parent
        by_cat[cat] = by_cat.get(cat, 0.0) + self_time(e, device_time)
    return by_cat


def counted(event, device_time: bool) -> bool:
    """Whether an event's self time is op time: on the CPU, the aten ops and the engine's own (Triton
    references); on a GPU, the kernels themselves (an aten op's device time is its kernels' again)."""
    if device_time:
        return event.device_type == DeviceType.CUDA
    return event.device_type == DeviceType.CPU and event.key.startswith(("aten::", "_"))


def self_time(event, device_time: bool) -> float:
    return event.self_device_time_total if device_time else event.self_cpu_time_total


def op_times(events, device_time: bool) -> dict[str, float]:
    """Self time (us) by op name, of averaged events."""
    return {e.key: self_time(e, device_time) for e in events if counted(e, device_time)}


def trace_path(trace: Path, label: str) -> Path:
    """t.json -> t-decode.json; t.json.gz -> t-decode.json.gz (torch writes gzip for .gz); t -> t-decode.json."""
    suffix = next((s for s in (".json.gz", ".json") if trace.name.endswith(s)), trace.suffix or ".json")
    return trace.with_name(f"{trace.name.removesuffix(suffix)}-{label}{suffix}")


def profiled_steps(llm, steps: int, trace: Path | None, label: str) -> None:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if llm.device.type == "cuda" else [])
    with ranged_ops(llm.core.runner.ops), profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            llm.core.step()
        if llm.device.type == "cuda":
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    if trace is not None:
        prof.export_chrome_trace(str(trace_path(trace, label)))
    device_time = llm.device.type == "cuda"
    self_us = op_times(prof.key_averages(), device_time)
    by_cat = category_times(prof.events(), device_time)
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

    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="HF model dir (default: the default model)")
    source.add_argument("--shape", choices=sorted(SHAPES), help="random weights of a named shape instead")
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
    from engine.device import resolve_device

    if args.trace is not None:
        if args.trace.is_dir():
            parser.error(f"--trace {args.trace} is a dir; give a file name (t.json writes t-prefill.json, t-decode.json)")
        if not args.trace.parent.is_dir():
            parser.error(f"--trace {args.trace}: no dir {args.trace.parent} to write the traces into")
        for label in ("prefill", "decode"):  # torch's exporter only logs a failure: find it now
            path = trace_path(args.trace, label)
            existed = path.exists()
            try:
                open(path, "a").close()
            except OSError as e:
                parser.error(f"--trace {args.trace}: cannot write {path} ({e.strerror})")
            if not existed:
                path.unlink()

    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if args.shape is not None:
            try:
                device = resolve_device(args.device)
            except (ValueError, TypeError) as e:
                parser.error(str(e))
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
