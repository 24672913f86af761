"""Compile every kernel for a GPU architecture on a machine without one, and report what the cubin uses.

    python -m kernels.compile_check [--arch 90] [--dtype bfloat16] [--block-size 16]

Triton's compiler and the ptxas it ships need no GPU, so this proves the compiled path builds (bf16
tl.dot included, which the interpreter cannot run) and shows each kernel's registers, spills (local
memory) and shared memory, read back with the cuobjdump Triton ships. Shapes are the engine's on
Qwen2.5-1.5B: 12 query heads over 2 KV heads of 128 dims, 16-token blocks (or --block-size), hidden 1536, MLP 8960,
vocabulary 151936. Pointer alignment is not specialised here (a launch may get a faster variant).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ARCHS = (75, 80, 86, 89, 90, 100, 120)
SHARED_PER_BLOCK = {75: 64 << 10, 80: 163 << 10, 86: 99 << 10, 89: 99 << 10, 90: 227 << 10, 100: 227 << 10,
                    120: 99 << 10}  # the most shared memory a block may have (opted in), by compute capability
DTYPE_CODES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE, VOCAB = 12, 2, 128, 1536, 8960, 151936
ELEMENT_SIZES = {"bf16": 2, "fp16": 2, "fp32": 4}


def kernel_specs(t: str, block_size: int = 16, arch: int = 90) -> dict[str, tuple]:
    """name -> (jit function, {arg: type} for runtime args, {arg: value} for constexprs, launch options), with
    t the activations' and cache's type code; mirrors what each wrapper in this package launches."""
    from kernels import activation, decode_attention, extend_attention, rms_norm, rotary, sample, store_kv
    from kernels.paged_softmax import dot_precision, page_tile

    i32, f32 = "i32", "fp32"
    precision = dot_precision(torch.float32 if t == "fp32" else torch.bfloat16)
    group = HEADS // KV_HEADS
    block_d = triton.next_power_of_2(HEAD_DIM)
    tile = page_tile(block_size, HEAD_DIM, ELEMENT_SIZES[t], divmod(arch, 10))
    return {
        "store_kv": (store_kv._store_kv_kernel,
                     dict(kv_ptr=f"*{t}", cache_ptr=f"*{t}", slot_ptr="*i64", stride_kv_t=i32, stride_kv_c=i32,
                          stride_kv_h=i32, stride_cache_c=i32, stride_cache_h=i32),
                     dict(NUM_KV_HEADS=KV_HEADS, HEAD_DIM=HEAD_DIM, BLOCK_R=triton.next_power_of_2(2 * KV_HEADS),
                          BLOCK_D=block_d), dict(num_warps=4)),
        "decode_attention (split)": (decode_attention._decode_split_kernel,
                                     dict(q_ptr=f"*{t}", cache_ptr=f"*{t}", tables_ptr="*i64", context_lens_ptr="*i64",
                                          part_out_ptr="*fp32", part_lse_ptr="*fp32", scale=f32, stride_q_b=i32,
                                          stride_q_h=i32, stride_cache_c=i32, stride_cache_h=i32, stride_cache_n=i32,
                                          stride_table_b=i32, num_splits=i32, min_blocks_per_split=i32),
                                     dict(GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
                                          BLOCK_SIZE=block_size, TILE=tile, HEAD_DIM=HEAD_DIM, BLOCK_D=block_d,
                                          DOT_PRECISION=precision),
                                     dict(num_warps=4, num_stages=decode_attention.num_stages(tile, HEAD_DIM, ELEMENT_SIZES[t]))),
        "decode_attention (reduce)": (decode_attention._decode_reduce_kernel,
                                      dict(part_out_ptr="*fp32", part_lse_ptr="*fp32", context_lens_ptr="*i64",
                                           out_ptr=f"*{t}", stride_out_b=i32, stride_out_h=i32, num_splits=i32,
                                           min_blocks_per_split=i32),
                                      dict(BLOCK_SIZE=block_size, HEAD_DIM=HEAD_DIM, BLOCK_D=block_d,
                                           BLOCK_S=decode_attention.REDUCE_SPLITS), dict(num_warps=4)),
        "extend_attention": (extend_attention._extend_kernel,
                             dict(q_ptr=f"*{t}", cache_ptr=f"*{t}", tables_ptr="*i64", cu_seqlens_q_ptr="*i64",
                                  context_lens_ptr="*i64", out_ptr=f"*{t}", scale=f32, stride_q_t=i32, stride_q_h=i32,
                                  stride_out_t=i32, stride_out_h=i32, stride_cache_c=i32, stride_cache_h=i32,
                                  stride_cache_n=i32, stride_table_b=i32),
                             dict(GROUP=group, BLOCK_M=extend_attention.BLOCK_M, BLOCK_SIZE=block_size, TILE=tile,
                                  HEAD_DIM=HEAD_DIM, BLOCK_D=block_d, DOT_PRECISION=precision), dict(num_warps=4)),
        "add_rms_norm": (rms_norm._rms_norm_kernel,
                         dict(x_ptr=f"*{t}", residual_ptr=f"*{t}", weight_ptr=f"*{t}", out_ptr=f"*{t}",
                              summed_ptr=f"*{t}", stride_x=i32, stride_residual=i32, stride_out=i32,
                              stride_summed=i32, eps=f32),
                         dict(HIDDEN=HIDDEN, BLOCK=triton.next_power_of_2(HIDDEN), HAS_RESIDUAL=True), dict(num_warps=4)),
        "rotary_": (rotary._rotary_kernel,
                    dict(x_ptr=f"*{t}", cos_sin_ptr="*fp32", stride_x_t=i32, stride_x_h=i32, stride_cs_t=i32),
                    dict(NUM_HEADS=HEADS + KV_HEADS, HALF=HEAD_DIM // 2,
                         BLOCK_H=triton.next_power_of_2(HEADS + KV_HEADS), BLOCK_HALF=HEAD_DIM // 2), dict(num_warps=4)),
        "silu_and_mul": (activation._silu_and_mul_kernel,
                         dict(x_ptr=f"*{t}", out_ptr=f"*{t}", stride_x=i32, stride_out=i32),
                         dict(INTERMEDIATE=INTERMEDIATE, BLOCK=activation.BLOCK), dict(num_warps=4)),
        "sample": (sample._sample_kernel,
                   dict(logits_ptr="*fp32", stride_row=i32, vocab_size=i32, temperature_ptr="*fp32", top_k_ptr="*i64",
                        top_p_ptr="*fp32", uniform_ptr="*fp64", masked_ptr="*i64", out_ptr="*i64"),
                   dict(NUM_MASKED=2, BLOCK=min(sample.BLOCK, triton.next_power_of_2(VOCAB))), dict(num_warps=8)),
    }


def cuobjdump(cubin: bytes, flag: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, ... of the cubin's one function (`cuobjdump -res-usage`), and LOCAL_OPS: its
    local-memory loads and stores in the machine code (register spills go to the stack frame, through them)."""
    usage = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", cuobjdump(cubin, "-res-usage").split("Function", 1)[1])}
    return usage | {"LOCAL_OPS": len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", cuobjdump(cubin, "-sass")))}


def compile_all(arch: int, dtype: str, block_size: int = 16) -> list[dict]:
    rows = []
    for name, (fn, runtime, constexprs, options) in kernel_specs(DTYPE_CODES[dtype], block_size, arch).items():
        signature = {arg: runtime.get(arg, "constexpr") for arg in fn.arg_names}
        missing = set(fn.arg_names) - set(runtime) - set(constexprs)
        if missing:
            raise ValueError(f"{name}: the check does not describe arguments {sorted(missing)}")
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                                  options=options)
        usage = resource_usage(compiled.asm["cubin"])
        rows.append(dict(kernel=name, registers=usage["REG"], local_ops=usage["LOCAL_OPS"], stack=usage["STACK"],
                         shared=compiled.metadata.shared, num_warps=options["num_warps"],
                         num_stages=options.get("num_stages", 3)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_check", description="compile every kernel for a GPU without one")
    parser.add_argument("--arch", type=int, default=90, choices=ARCHS,
                        help="compute capability x 10 (80: A100, 89: L4/L40, 90: H100/H200, 100: B200)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_CODES), help="activations' and KV cache's dtype")
    parser.add_argument("--block-size", type=int, default=16, choices=(16, 32, 64, 128), help="KV cache block (page) size")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the check compiles, the interpreter does not")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = compile_all(args.arch, args.dtype, args.block_size)
    print(f"sm_{args.arch}, {args.dtype}, {args.block_size}-token blocks: every kernel compiled")
    print(f"{'kernel':<28}{'warps':>6}{'stages':>7}{'regs':>6}{'local ld/st':>13}{'stack B':>9}{'shared B':>10}")
    for r in rows:
        print(f"{r['kernel']:<28}{r['num_warps']:>6}{r['num_stages']:>7}{r['registers']:>6}{r['local_ops']:>13}"
              f"{r['stack']:>9}{r['shared']:>10}")
    limit = SHARED_PER_BLOCK[args.arch]
    over = [r for r in rows if r["shared"] > limit]
    for r in over:
        print(f"error: {r['kernel']} needs {r['shared']} B of shared memory a block; sm_{args.arch} allows {limit}: "
              "it cannot launch there", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
