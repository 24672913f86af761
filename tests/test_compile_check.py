"""python -m kernels.compile_check: every kernel builds with Triton's real compiler for an H100 (sm_90),
in bf16 and fp16, with no register spills; no GPU needed. Run in a subprocess: this test session has
the interpreter on."""
import os
import subprocess
import sys

import pytest


# fp32 with 128-token pages: read in 64-token tiles (whole, they spilled thousands of local loads and stores in
# both attention kernels), too large for decode attention's pipelined page loop: they keep the default depth
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
    for name, (warps, stages, regs, local_ops, stack, shared) in rows.items():
        # the sampler keeps a few values in its stack frame at sm_90 (7 local stores and 7 loads in bf16)
        assert int(local_ops) <= (16 if name == "sample" else 0), f"{name}: {local_ops} local loads/stores (spills)"
        assert 0 < int(regs) <= 255 and int(shared) <= 227 * 1024, name  # an H100 block's shared memory


def test_a_kernel_past_the_archs_shared_memory_is_an_error():
    """Page tiles keep every configuration the engine offers within its arch's limit (fp32 128-token pages
    took 144 KB a block before them, past sm_86's 99 KB; fp16 ones 72 KB at sm_75, past its 64 KB), so the
    check runs with sm_86's limit lowered under the attention kernels' 8.5 KB."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = ("import sys; from kernels import compile_check as c; c.SHARED_PER_BLOCK[86] = 8192; "
              "sys.exit(c.main(['--arch', '86', '--dtype', 'bfloat16']))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 1 and "error: extend_attention needs" in run.stderr and "sm_86 allows 8192" in run.stderr
    assert "store_kv" not in run.stderr  # only the kernels past it


def test_the_check_refuses_to_run_under_the_interpreter():
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check"], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=120)
    assert run.returncode == 2 and "unset TRITON_INTERPRET" in run.stderr


def test_an_unknown_arch_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch", "900"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 2 and "invalid choice: 900" in run.stderr and "Traceback" not in run.stderr
