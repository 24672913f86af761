"""benchmarks/gpu_check.py --smoke: the GPU check's code paths at tiny sizes, on the CPU under the Triton
interpreter, so the script cannot rot while no GPU is lent; and a part that fails or runs out of time
costs only its own rows."""
import pytest

from benchmarks import gpu_check


def table_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_smoke_prints_and_appends_the_tables(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    assert gpu_check.main(["--smoke", "--results", str(results)]) == 0
    text = results.read_text()
    assert text.startswith("# results\n") and "## GPU check: CPU (Triton interpreter, smoke)" in text
    assert "Failed or skipped" not in text
    rows = table_rows(text)
    errors = [float(rows[k][0]) for k in gpu_check.KERNELS if k != "sample"]
    assert len(errors) == 6 and max(errors) < 2e-3  # fp16 under the interpreter
    assert rows["sample"][0] == "0/8 tokens differ"
    assert all(float(rows[k][1]) > 0 for k in gpu_check.KERNELS)  # every kernel timed
    assert float(rows["extend_attention"][4]) > 0 and rows["decode_attention"][4] == "-"  # TFLOP/s: extend only
    settings = text.split("decode_attention launch settings", 1)[1].split("\n", 1)[0]
    assert all(f"{s} stages, {p} programs: " in settings for s in (3, 5) for p in (256, 1024))
    for run in ("tiny decode, batch 1", "tiny decode, batch 3"):
        graphs, eager, hf, ratio, roofline = rows[run]
        assert float(graphs) > 0 and float(eager) > 0 and float(hf) > 0 and ratio.endswith("x") and roofline.endswith("%")
    graphs, eager, hf, ratio, _ = rows["tiny nano-vllm run, 4 seqs"]
    assert float(graphs) > 0 and eager == "-" and float(hf) > 0
    assert "GPU check" in capsys.readouterr().out


def test_a_failing_part_costs_only_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "KERNELS", ("store_kv", "no_such_kernel", "silu_and_mul"))
    monkeypatch.setitem(gpu_check.ENGINE_SIZES, True, {**gpu_check.ENGINE_SIZES[True], "shapes": ()})
    results = tmp_path / "RESULTS.md"
    assert gpu_check.main(["--smoke", "--results", str(results)]) == 1
    text = results.read_text()
    rows = table_rows(text)
    assert rows["no_such_kernel"][0] == "failed" and rows["no_such_kernel"][1] == "-"
    assert float(rows["store_kv"][1]) > 0 and float(rows["silu_and_mul"][1]) > 0  # the parts after it ran
    assert "- kernel:no_such_kernel: failed (exit 1): KeyError: 'no_such_kernel'" in text


def test_a_results_file_that_cannot_be_written_is_refused_before_any_part_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "spawn", None)  # nothing may run
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--smoke", "--results", str(tmp_path / "no-dir" / "RESULTS.md")])
    assert exit_info.value.code == 2
    assert "--results " + str(tmp_path / "no-dir" / "RESULTS.md") + ": cannot append there" in capsys.readouterr().err


def test_the_time_budget_stops_a_part_and_skips_the_rest(tmp_path):
    results = tmp_path / "RESULTS.md"
    assert gpu_check.main(["--smoke", "--budget", "0.5", "--results", str(results)]) == 1
    text = results.read_text()
    assert "- copy: stopped after 0 s (time budget)" in text or "- copy: skipped" in text
    assert "- kernel:decode_attention: skipped: the time budget was spent" in text
    assert "| decode_attention | skipped | - |" in text  # not "failed"
    assert "- transformers:tiny: skipped: the time budget was spent" not in text  # no model, so no runs on it
    assert "| tiny decode, batch 1 | - | - | - | - | - |" in text
