"""python -m kernels.profile on the CPU: per-category times of decode and prefill steps, and traces."""
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from kernels import profile


def test_profile_prints_categories_and_writes_traces(make_model, tmp_path, capsys):
    path = make_model("qwen2", seed=3)
    profile.main(["--model", str(path), "--batch", "3", "--context", "20", "--steps", "2",
                  "--trace", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    prefill, decode = out.split("\nprefill: ")[1].split("\ndecode: ")
    for section in (prefill, decode):
        for cat in ("matmul", "attention", "norm", "sampling", "Python/dispatch"):
            assert f"  {cat} " in section, (cat, section)
    assert decode.startswith("2 step(s)")
    assert (tmp_path / "t-prefill.json").stat().st_size > 0 and (tmp_path / "t-decode.json").stat().st_size > 0


@pytest.mark.parametrize("args,message", ((["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
                                          (["--batch", "0"], "must be a positive integer"),
                                          (["--shape", "nope"], "invalid choice"),
                                          (["--kernels", "triton"], "TRITON_INTERPRET=1"),
                                          (["--context", "100000"], "is past the model's context"),
                                          (["--trace", "/no/such/dir/t.json"], "no dir /no/such/dir to write"),
                                          (["--trace", "/proc/t.json"], "cannot write /proc/t-prefill.json"),
                                          (["--trace", "/tmp"], "--trace /tmp is a dir; give a file name"),
                                          (["--model", "/no/such/model"], "model dir /no/such/model does not exist")))
def test_bad_arguments_are_one_line_errors(make_model, capsys, monkeypatch, args, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        profile.main(["--model", str(make_model("llama")), "--steps", "1", *args])  # a later --model wins
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", ((["--shape", "tiny", "--model", "/x"], "not allowed with argument"),
                                          (["--shape", "tiny", "--device", "foo"], "invalid device 'foo'")))
def test_a_named_shape_takes_no_model_and_a_bad_device_is_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        profile.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_ops_inside_a_categorized_op_count_with_it():
    """F.rms_norm's pow runs inside aten::rms_norm; the rotary's complex mul_ inside the engine's _rotary_ range."""
    event = lambda key, parent=None: SimpleNamespace(key=key, device_type=DeviceType.CPU, self_cpu_time_total=1.0,  # noqa: E731
                                                     cpu_parent=parent)
    norm, rotary = event("aten::rms_norm"), event("_rotary_")
    events = [norm, event("aten::pow", norm), event("aten::mean", event("aten::other", norm)), rotary,
              event("aten::mul_", rotary), event("aten::mul_"), event("cudaLaunchKernel")]
    assert profile.category_times(events, device_time=False) == {"norm": 3.0, "rotary": 2.0, "other ops": 1.0}
    assert profile.trace_path(Path("t.json.gz"), "decode") == Path("t-decode.json.gz")
    assert profile.trace_path(Path("d/t"), "prefill") == Path("d/t-prefill.json")


def test_gpu_time_counts_each_kernel_once():
    """On a GPU an aten op's self device time is its kernels' time again: only device events count."""
    event = lambda key, device, cpu, gpu: SimpleNamespace(key=key, device_type=device, self_cpu_time_total=cpu,  # noqa: E731
                                                          self_device_time_total=gpu)
    events = [event("aten::mm", DeviceType.CPU, 9.0, 40.0), event("nvjet_tst_128x64", DeviceType.CUDA, 0.0, 40.0),
              event("_decode_split_kernel", DeviceType.CUDA, 0.0, 7.0), event("aten::add", DeviceType.CPU, 3.0, 2.0),
              event("void at::native::vectorized_elementwise_kernel", DeviceType.CUDA, 0.0, 2.0),
              event("cudaLaunchKernel", DeviceType.CPU, 5.0, 0.0)]
    gpu = profile.op_times(events, device_time=True)
    assert sum(gpu.values()) == 49.0 and {profile.category(k) for k in gpu} == {"matmul", "attention", "other ops"}
    assert profile.op_times(events, device_time=False) == {"aten::mm": 9.0, "aten::add": 3.0}


def test_step_overhead_times_the_engines_host_work(capsys):
    from benchmarks import step_overhead

    assert step_overhead.main(["--batches", "1,3", "--steps", "12", "--temperature", "0.8"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "ms a step" in line]
    assert [line.split(":")[0].split()[-1] for line in lines] == ["1", "3"]
    assert all(float(line.split(":")[1].split("ms")[0]) > 0 for line in lines)
    for bad, message in ((["--batches", "0"], "batch sizes must be positive"), (["--steps", "1"], "at least 2"),
                         (["--temperature", "nan"], "--temperature must be a number >= 0")):
        with pytest.raises(SystemExit):
            step_overhead.main(bad)
        assert message in capsys.readouterr().err


def test_the_report_names_a_file_it_cannot_read(tmp_path, capsys):
    from benchmarks import report

    with pytest.raises(SystemExit):
        report.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m benchmarks.report ")  # as it is run, not report.py

    (tmp_path / "b.json").write_text("{not json")
    for path in (tmp_path / "b.json", tmp_path / "missing.json"):
        with pytest.raises(SystemExit):
            report.main([str(path)])
        assert f"{path}: not a readable pytest-benchmark JSON file" in capsys.readouterr().err
