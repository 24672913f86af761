"""python -m kernels.compile_check: every kernel builds with Triton's real compiler for an H100 (sm_90),
in bf16 and fp16, with no register spills; no GPU needed. Run in a subprocess: this test session has
the interpreter on."""
import os
import subprocess
import sys

import pytest


# fp32 with 128-token pages: decode attention's pipelined page loop would need 278 KB of shared memory
# there (an H100 block has 227 KB), so large pages keep the default depth
@pytest.mark.parametrize("dtype,block_size", (("bfloat16", 16), ("float16", 16), ("float32", 128)))
def test_every_kernel_compiles_for_sm90_without_spills(dtype, block_size):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch", "90", "--dtype", dtype,
                          "--block-size", str(block_size)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0] == f"sm_90, {dtype}, {block_size}-token blocks: every kernel compiled"
    rows = {line[:28].strip(): line[28:].split() for line in lines[2:]}
    assert set(rows) == {"store_kv", "decode_attention (split)", "decode_attention (reduce)", "extend_attention",
                         "add_rms_norm", "rotary_", "silu_and_mul", "sample"}
    for name, (warps, stages, regs, spilled, stack, shared) in rows.items():
        assert int(spilled) == 0, f"{name} spills {spilled} bytes"
        assert 0 < int(regs) <= 255 and int(shared) <= 227 * 1024, name  # an H100 block's shared memory


def test_the_check_refuses_to_run_under_the_interpreter():
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check"], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=120)
    assert run.returncode == 2 and "unset TRITON_INTERPRET" in run.stderr


def test_an_unknown_arch_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch", "900"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 2 and "invalid choice: 900" in run.stderr and "Traceback" not in run.stderr
