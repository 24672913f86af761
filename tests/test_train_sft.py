"""train.sft end to end on tiny random models: overfitting, 1 vs 2 processes, crash + resume, export."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from engine.tokenizer import get_think_format
from tests.train_helpers import (
    read_log,
    read_weights,
    run_in_process,
    run_torchrun,
    sft_args,
    tiny,  # noqa: F401 (a fixture)
    synthetic_records,
    write_jsonl,
)
from train.checkpoint import COMPLETE_MARKER, latest_checkpoint
from train.data import collate, load_dataset, plan_epoch
from train.sft import loss_sum, parse_args, prepare

STEPS = 10  # 8 samples, global batch 4, 5 epochs
RUN = dict(epochs=5, lr=2e-2, save_every=2)



@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> Path:
    """One process, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    run_in_process(sft_args(*tiny, out, **RUN))
    return out


def assert_same_run(a: Path, b: Path) -> None:
    log_a, log_b = read_log(a), read_log(b)
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == list(range(1, STEPS + 1))
    for ra, rb in zip(log_a, log_b):
        assert (ra["epoch"], ra["lr"], ra["tokens"], ra["target_tokens"]) == (rb["epoch"], rb["lr"], rb["tokens"],
                                                                              rb["target_tokens"])
    torch.testing.assert_close([r["loss"] for r in log_a], [r["loss"] for r in log_b], rtol=2e-5, atol=0)
    weights_a, weights_b = read_weights(a / "model"), read_weights(b / "model")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:  # 10 Adam steps at lr 2e-2 grow fp32 summation-order noise to ~1e-5
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=0, atol=1e-4, msg=name)


def test_tiny_model_overfits(reference):
    losses = [r["loss"] for r in read_log(reference)]
    assert losses[0] > 10 and losses[-1] < 4.5, losses  # from uniform over 49152 ids to the data's few dozen
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in read_log(reference))


def first_step_without_fsdp(model_dir: Path, data: Path) -> tuple[float, float]:
    """Loss and gradient norm of step 1 on a plain model: the mean over ALL target tokens of the global batch."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = load_dataset(data, tokenizer, get_think_format("s1"), 128).samples
    rows = plan_epoch([len(s) for s in samples], 0, 0, 4, 128, pack=False)[0]
    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    batches = [collate([row], samples, tokenizer.pad_token_id) for row in rows]
    num_targets = sum(b.num_targets for b in batches)
    loss = sum(loss_sum(model, b) for b in batches) / num_targets
    loss.backward()
    return loss.item(), torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()


def test_two_processes_match_one(tiny, reference, tmp_path):
    run_torchrun(sft_args(*tiny, tmp_path, **RUN, micro_batch_size=2), nproc=2)  # 2 ranks x 1 micro-batch of 2
    assert_same_run(reference, tmp_path)
    # Gradients are summed over ranks and divided once by the global token count: a long sample weighs more.
    loss, grad_norm = first_step_without_fsdp(*tiny)
    first = read_log(tmp_path)[0]
    assert first["loss"] == pytest.approx(loss, rel=1e-6) and first["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny, reference, tmp_path):
    run_torchrun(sft_args(*tiny, tmp_path, **RUN, max_steps=5), nproc=2)  # checkpoints at 2 and 4, then "dies"
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000004"]
    # A crash while saving step 6 leaves a temp dir, or a renamed dir without its marker: neither may be used.
    shutil.copytree(checkpoints / "step-00000004", checkpoints / ".tmp-step-00000006")
    shutil.copytree(checkpoints / "step-00000004", checkpoints / "step-00000006")
    (checkpoints / "step-00000006" / COMPLETE_MARKER).unlink()
    assert latest_checkpoint(tmp_path) == checkpoints / "step-00000004"
    run_in_process(sft_args(*tiny, tmp_path, **RUN, resume=True))  # resharded from 2 ranks onto 1
    assert_same_run(reference, tmp_path)
    assert latest_checkpoint(tmp_path) == checkpoints / f"step-{STEPS:08d}"
    assert not (checkpoints / ".tmp-step-00000006").exists()


def test_a_used_output_dir_needs_resume_and_the_same_plan(tiny, reference):
    with pytest.raises(ValueError, match="holds checkpoint step-00000010 of an earlier run; pass --resume"):
        prepare(parse_args(sft_args(*tiny, reference, **RUN)), world_size=1)
    with pytest.raises(ValueError, match=r"cannot resume: .* was made with other lr \(0.02, now 0.001\)$"):
        prepare(parse_args(sft_args(*tiny, reference, **{**RUN, "lr": 1e-3}, resume=True)), world_size=1)
    # the optimizer's saved weight decay would silently win over a new one; a new clip norm would take over mid-run
    with pytest.raises(ValueError, match=r"other max_grad_norm \(1.0, now 50.0\), weight_decay \(0.0001, now 0.1\)$"):
        prepare(parse_args(sft_args(*tiny, reference, **RUN, weight_decay=0.1, max_grad_norm=50, resume=True)),
                world_size=1)
    model, data = tiny
    reordered = reference.parent / "reordered.jsonl"  # the same samples and tokens, in another order
    reordered.write_text("".join(reversed(data.read_text().splitlines(keepends=True))))
    with pytest.raises(ValueError, match=r"other data_sha256 \('[0-9a-f]{64}', now '[0-9a-f]{64}'\)$"):
        prepare(parse_args(sft_args(model, reordered, reference, **RUN, resume=True)), world_size=1)
    # the dtype is compared as used: float32 given is the CPU's default
    assert prepare(parse_args(sft_args(*tiny, reference, **RUN, dtype="float32", resume=True)), world_size=1)
    older = reference.parent / "older"  # a checkpoint whose signature lacks what this version records
    shutil.copytree(reference, older)
    marker = latest_checkpoint(older) / COMPLETE_MARKER
    manifest = json.loads(marker.read_text())
    del manifest["train_state"]["signature"]["data_sha256"]
    marker.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="made by an older train.sft that did not record data_sha256; resume it"):
        prepare(parse_args(sft_args(*tiny, older, **RUN, resume=True)), world_size=1)


def test_activation_checkpointing_matches(tiny, reference, tmp_path):
    run_in_process(sft_args(*tiny, tmp_path, **RUN, max_steps=2, activation_checkpointing=True))
    torch.testing.assert_close([r["loss"] for r in read_log(tmp_path)],
                               [r["loss"] for r in read_log(reference)][:2], rtol=1e-6, atol=0)


def test_packing_trains(tiny, tmp_path):
    run_in_process(sft_args(*tiny, tmp_path, **RUN, global_batch_size=1, block_size=512, pack=True, max_steps=2))
    log = read_log(tmp_path)
    assert len(log) == 2 and all(r["tokens"] > 128 for r in log)  # one row holds several samples


def trained_state(checkpoint: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a resumable DCP checkpoint: what the training process held at that step."""
    dcp_to_torch_save(checkpoint, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=False)["model"]


def logits_of(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


@pytest.mark.parametrize("arch", ["llama-tied", "qwen2-untied"])
def test_export_loads_in_transformers_and_the_engine(tiny, reference, make_model, tmp_path, arch):
    if arch == "llama-tied":
        out = reference
    else:
        out = tmp_path / "qwen2"
        run_in_process(sft_args(make_model("qwen2", hf_init=True), tiny[1], out, **RUN, max_steps=2))
    export = out / "model"
    step = max(r["step"] for r in read_log(out))
    state = trained_state(out / "checkpoints" / f"step-{step:08d}", tmp_path)
    config = AutoConfig.from_pretrained(export)
    assert config.dtype == torch.float32
    assert ("lm_head.weight" in read_weights(export)) == (not config.tie_word_embeddings)
    trained = AutoModelForCausalLM.from_config(config).float().eval()
    trained.load_state_dict(state)

    tokenizer = AutoTokenizer.from_pretrained(export)
    token_ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                              add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = logits_of(trained, token_ids)
    loaded = AutoModelForCausalLM.from_pretrained(export).eval()
    torch.testing.assert_close(logits_of(loaded, token_ids), expected, rtol=0, atol=1e-5)

    engine_logits = pytest.importorskip("tests.engine_logits").engine_logits
    torch.testing.assert_close(engine_logits(export, token_ids), expected, rtol=0, atol=1e-4)
