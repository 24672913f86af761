"""benchmarks/gpu_check.py --smoke: the GPU check's code paths at tiny sizes, on the CPU under the Triton
interpreter, so the script cannot rot while no GPU is lent."""
from kernels.interpret import enable_interpreter

enable_interpreter()  # before any kernel module is imported

from benchmarks import gpu_check  # noqa: E402


def test_smoke_prints_and_appends_the_tables(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    assert gpu_check.main(["--smoke", "--results", str(results)]) == 0
    text = results.read_text()
    assert text.startswith("# results\n") and "## GPU check: CPU (Triton interpreter, smoke)" in text
    for row in ("decode_attention", "extend_attention", "store_kv", "add_rms_norm", "rotary_", "silu_and_mul", "sample",
                "tiny decode, batch 1", "tiny decode, batch 3", "tiny nano-vllm run"):
        assert f"| {row}" in text
    errors = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| ") and "_" in line.split("|")[1]
              and line.split("|")[2].strip()[0].isdigit()]
    assert len(errors) == 6 and max(errors) < 2e-3  # fp16 under the interpreter
    assert "| sample | 0/8 tokens differ |" in text
    assert "GPU check" in capsys.readouterr().out
