"""train.sft under bad arguments, bad files and damaged checkpoints: clear errors, or a safe fallback."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train.checkpoint
from tests.train_helpers import REPO_ROOT, read_log, run_in_process, sft_args, synthetic_records, tiny, write_jsonl  # noqa: F401 (fixture)
from train.checkpoint import COMPLETE_MARKER, latest_checkpoint
from train.data import DataError
from train.sft import main, parse_args, prepare

RUN = dict(epochs=2, lr=2e-2, save_every=1)  # 8 samples, global batch 4: 4 steps, a checkpoint after each



@pytest.fixture(scope="module")
def crashed(tiny, tmp_path_factory) -> Path:
    """A run that stopped after step 3, keeping the default 2 checkpoints."""
    out = tmp_path_factory.mktemp("crashed")
    run_in_process(sft_args(*tiny, out, **RUN, max_steps=3))
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(run, tmp_path / "out")


def checkpoint_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


@pytest.mark.parametrize("flag, value, message", [
    ("lr", -1, "--lr -1.0: must be a positive number"),
    ("lr", "nan", "--lr nan: must be a positive number"),
    ("max_steps", 0, "--max-steps 0: must be at least 1"),
    ("max_steps", -5, "--max-steps -5: must be at least 1"),
    ("warmup_ratio", -0.1, "--warmup-ratio -0.1: must be in [0, 1)"),
    ("weight_decay", -1, "--weight-decay -1.0: must be a non-negative number"),
    ("max_grad_norm", 0, "--max-grad-norm 0.0: must be a positive number"),
    ("save_every", -2, "--save-every -2: must not be negative"),
    ("seed", -1, "--seed -1: must not be negative"),
    ("keep_last", 0, "--keep-last 0: must be at least 1"),
])
def test_bad_arguments_are_rejected_before_anything_loads(tmp_path, capsys, flag, value, message):
    # Neither the model nor the data exists: the arguments are checked first.
    code = main(sft_args(tmp_path / "no-model", tmp_path / "no-data.jsonl", tmp_path / "out", **{flag: value}))
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_data_that_is_not_utf8_names_the_file_and_line(tiny, tmp_path):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text"):
        prepare(parse_args(sft_args(tiny[0], data, tmp_path / "out")), world_size=1)


def test_an_earlier_run_without_checkpoints_is_not_overwritten(tiny, tmp_path):
    out = tmp_path / "out"
    run_in_process(sft_args(*tiny, out, max_steps=1))  # no --save-every: model/ and the log, no checkpoint
    log = (out / "train_log.jsonl").read_text()
    for resume, earlier in (({}, "model, train_log.jsonl"), ({"resume": True}, "model")):  # nothing to resume:
        with pytest.raises(ValueError, match=fr"holds an earlier run \({earlier}\) and no checkpoint to resume from"):
            prepare(parse_args(sft_args(*tiny, out, max_steps=1, **resume)), world_size=1)  # it would start over
    assert (out / "train_log.jsonl").read_text() == log
    shutil.rmtree(out / "model")  # as a run cut short before its first checkpoint leaves it
    with pytest.raises(ValueError, match=r"holds an earlier run \(train_log.jsonl\) and no checkpoint to resume from; pass --resume to start it over"):
        prepare(parse_args(sft_args(*tiny, out, max_steps=1)), world_size=1)
    assert prepare(parse_args(sft_args(*tiny, out, max_steps=1, resume=True)), world_size=1).checkpoint is None
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="a-file is a file; give a directory"):
        prepare(parse_args(sft_args(*tiny, tmp_path / "a-file")), world_size=1)


def test_old_checkpoints_are_pruned_to_keep_last(crashed):
    assert checkpoint_names(crashed) == ["step-00000002", "step-00000003"]


def test_pruning_waits_for_the_new_checkpoint_to_be_complete(tiny, tmp_path, monkeypatch):
    save = train.checkpoint.dcp.save
    calls = []

    def save_then_fail_on_the_third(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise OSError("disk full")
        return save(*args, **kwargs)

    monkeypatch.setattr(train.checkpoint.dcp, "save", save_then_fail_on_the_third)
    with pytest.raises(OSError, match="disk full"):
        main(sft_args(*tiny, tmp_path, **RUN, keep_last=1))
    assert checkpoint_names(tmp_path) == [".tmp-step-00000003", "step-00000002"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000002"


def test_resume_drops_a_torn_last_log_line(tiny, crashed, tmp_path):
    out = copy_of(crashed, tmp_path)
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "epoch": 1, "lo')  # the crash came mid-write
    run_in_process(sft_args(*tiny, out, **RUN, resume=True))
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]


def test_a_truncated_shard_falls_back_to_the_checkpoint_before(tiny, crashed, tmp_path, capsys):
    out = copy_of(crashed, tmp_path)
    shard = max((out / "checkpoints" / "step-00000003").glob("*.distcp"), key=lambda p: p.stat().st_size)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    run_in_process(sft_args(*tiny, out, **RUN, resume=True))
    err = capsys.readouterr().err
    assert (f"falling back from checkpoint {out}/checkpoints/step-00000003: {shard.name} is {size // 2} bytes, "
            f"not the {size} its manifest lists") in err
    assert f"resuming from {out}/checkpoints/step-00000002 at step 2" in err
    assert "4 steps of 4 sequences on 1 rank(s)\n" in err  # every sample in every epoch: nothing left out to say
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    assert checkpoint_names(out) == ["step-00000003", "step-00000004"]  # step 3 written afresh


def test_a_corrupt_manifest_is_an_error_naming_it(tiny, crashed, tmp_path):
    out = copy_of(crashed, tmp_path)
    (out / "checkpoints" / "step-00000003" / COMPLETE_MARKER).write_text('{"train_state": {"st')
    with pytest.raises(ValueError, match=f"checkpoint manifest {out}/checkpoints/step-00000003/{COMPLETE_MARKER} "
                                         "is corrupt"):
        prepare(parse_args(sft_args(*tiny, out, **RUN, resume=True)), world_size=1)


def test_ctrl_c_under_torchrun_says_how_to_resume_without_a_traceback_per_rank(tiny, tmp_path):
    """Ctrl-C reaches every process of the group (torchrun's agent and both ranks), as a terminal sends it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train.sft",
           *sft_args(*tiny, tmp_path, epochs=200, save_every=1)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints").is_dir() or not any((tmp_path / "checkpoints").glob("step-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert "interrupted: rerun with --resume to continue from" in err, err[-3000:]
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err, err[-3000:]
    assert "enforce fail" not in err  # no write was cut short


def test_a_ctrl_c_during_a_write_waits_for_it_and_a_second_one_does_not():
    from train.checkpoint import interrupts_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("write finished")
    assert steps == ["write finished"]
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)  # the second one: out at once
            time.sleep(0.05)
            steps.append("not reached")
    assert steps == ["write finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_activation_checkpointing_on_transformers_without_the_new_name():
    """transformers 5.17 (the lent GPU machines') and 4.x name it gradient_checkpointing_enable only."""
    from types import SimpleNamespace

    from train.sft import enable_activation_checkpointing

    calls = []
    old = SimpleNamespace(gradient_checkpointing_enable=lambda **kwargs: calls.append(("old", kwargs)))
    new = SimpleNamespace(activation_checkpointing_enable=lambda **kwargs: calls.append(("new", kwargs)),
                          gradient_checkpointing_enable=old.gradient_checkpointing_enable)
    enable_activation_checkpointing(old)
    enable_activation_checkpointing(new)
    assert calls == [("old", {"gradient_checkpointing_kwargs": {"use_reentrant": False}}),
                     ("new", {"activation_checkpointing_kwargs": {"use_reentrant": False}})]


def test_each_epochs_left_out_partial_batch_is_said(tiny, tmp_path, capsys):
    """8 samples in global batches of 3: each epoch trains 6 (a different 6, reshuffled), and the plan says so."""
    run_in_process(sft_args(*tiny, tmp_path, epochs=2, global_batch_size=3, max_steps=1))
    assert ("8 samples (0 truncated to 128 tokens), 4 steps of 3 sequences on 1 rank(s); each epoch's last partial "
            "batch is left out, reshuffled every epoch (4 sample passes of 16)") in capsys.readouterr().err
