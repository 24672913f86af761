"""train.data: the loss mask covers exactly the assistant's tokens; packing; data order; bad input."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.conversation import prompt_ids
from engine.tokenizer import get_think_format
from tests.train_helpers import sft_args, synthetic_records, write_jsonl
from train.data import (
    Sample,
    collate,
    load_dataset,
    micro_batches_of_rank,
    pack_rows,
    plan_epoch,
    tokenize_record,
)
from train.sft import forward_logits, loss_sum, main, parse_args, prepare

QUESTION, THINKING, ANSWER = "What is 2+2?", "Two plus two makes four.", "The answer is 4."


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def masked_and_unmasked(sample: Sample) -> tuple[list[int], list[int]]:
    masked = [t for t, m in zip(sample.input_ids, sample.loss_mask) if m]
    unmasked = [t for t, m in zip(sample.input_ids, sample.loss_mask) if not m]
    return masked, unmasked


@pytest.mark.parametrize("format_name", ["s1", "r1"])
def test_loss_mask_is_exactly_what_the_assistant_writes(tokenizer, format_name):
    think_format = get_think_format(format_name)
    records = [
        {"question": QUESTION, "thinking": THINKING, "answer": ANSWER},
        {"messages": [{"role": "user", "content": QUESTION},
                      {"role": "assistant", "thinking": THINKING, "content": ANSWER}]},
        {"messages": [{"role": "user", "content": QUESTION},
                      {"role": "assistant", "content": think_format.render(THINKING, ANSWER)}]},
    ]
    samples = [tokenize_record(r, tokenizer, think_format) for r in records]
    assert samples[0] == samples[1] == samples[2]
    masked, unmasked = masked_and_unmasked(samples[0])
    assert tokenizer.decode(masked) == THINKING + think_format.think_end + ANSWER + "<|im_end|>"
    prompt = tokenizer.decode(unmasked)  # the template's header, the think start, and the newline after the turn
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n{think_format.think_start}\n")
    assert tokenizer.decode(samples[0].input_ids).endswith(ANSWER + "<|im_end|>\n")


@pytest.mark.parametrize("format_name", ["s1", "r1"])
def test_sft_ids_are_the_engine_prompt_then_each_segment_as_the_engine_encodes_it(tokenizer, format_name):
    think_format = get_think_format(format_name)
    sample = tokenize_record({"question": QUESTION, "thinking": THINKING, "answer": ANSWER}, tokenizer, think_format)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    prompt = prompt_ids(tokenizer, [{"role": "user", "content": QUESTION}], think_format)
    delimiter = encode(think_format.think_end)  # what the engine splices: r1's ends in one '\n\n' token
    written = encode(THINKING) + delimiter + encode(ANSWER) + [tokenizer.eos_token_id]
    assert sample.input_ids == prompt + written + encode("\n")  # the template's newline after the turn ends it
    assert sample.loss_mask == [False] * len(prompt) + [True] * len(written) + [False]


def test_every_assistant_turn_is_masked_in_and_nothing_else(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "tool", "content": "Tool output 42"},  # any role the template takes; only the assistant trains
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "thinking": THINKING, "content": ANSWER},
    ]
    sample = tokenize_record({"messages": messages}, tokenizer, get_think_format("s1"))
    masked, _ = masked_and_unmasked(sample)
    expected = "Hello!<|im_end|>" + THINKING + get_think_format("s1").think_end + ANSWER + "<|im_end|>"
    assert tokenizer.decode(masked) == expected
    assert not any(text in tokenizer.decode(masked) for text in ("Be brief", "Hi", "Tool output"))


def test_an_s1k_record_trains_as_its_question_thinking_and_answer(tokenizer):
    """curate.run's selected.jsonl (s1K's columns) trains as the same {question, thinking, answer} record."""
    think_format = get_think_format("s1")
    s1k = {"question": QUESTION, "thinking_trajectories": [THINKING], "attempt": ANSWER, "solution": "4",
           "cot_type": "math", "source_type": "champ", "metadata": "{}", "cot": None}
    plain = {"question": QUESTION, "thinking": THINKING, "answer": ANSWER}
    assert tokenize_record(s1k, tokenizer, think_format) == tokenize_record(plain, tokenizer, think_format)


def test_text_record_trains_on_every_token_but_the_first(tokenizer):
    sample = tokenize_record({"text": "plain language modelling text"}, tokenizer, get_think_format("s1"))
    assert sample.loss_mask == [False] + [True] * (len(sample) - 1)


def test_truncation_is_counted(tokenizer, tmp_path):
    records = synthetic_records(6)
    lengths = [len(tokenize_record(r, tokenizer, get_think_format("s1"))) for r in records]
    block_size = sorted(lengths)[3]
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", records), tokenizer, get_think_format("s1"), block_size)
    assert dataset.num_truncated == sum(n > block_size for n in lengths) > 0
    assert max(len(s) for s in dataset.samples) == block_size


def test_packed_loss_equals_unpacked(make_model, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(make_model("llama", seed=3, tie_word_embeddings=True)).float()
    samples = load_dataset(write_jsonl(tmp_path / "d.jsonl", synthetic_records(5)), tokenizer,
                           get_think_format("s1"), 1024).samples
    rows = pack_rows(list(range(5)), [len(s) for s in samples], block_size=1024)
    assert rows == [[0, 1, 2, 3, 4]]
    packed = collate(rows, samples, tokenizer.pad_token_id)
    assert packed.position_ids[0].tolist() == [p for s in samples for p in range(len(s))]
    with torch.no_grad():
        packed_loss = loss_sum(model, packed)
        separate = sum(loss_sum(model, collate([[i]], samples, tokenizer.pad_token_id)) for i in range(5))
        padded = loss_sum(model, collate([[0], [1, 2], [3]], samples, tokenizer.pad_token_id))  # padding, 2 rows
        separate_first4 = sum(loss_sum(model, collate([[i]], samples, tokenizer.pad_token_id)) for i in range(4))
    torch.testing.assert_close(packed_loss, separate, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded, separate_first4, rtol=1e-5, atol=1e-4)
    assert packed.num_targets == sum(sum(s.loss_mask) for s in samples)


def test_packed_row_logits_equal_each_sample_alone(make_model, tokenizer, tmp_path, monkeypatch):
    # Some transformers versions mask by position_ids resets, others ignore them: take that away here.
    masking_utils = pytest.importorskip("transformers.masking_utils")
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None, raising=False)
    model = AutoModelForCausalLM.from_pretrained(make_model("qwen2", seed=4)).float()
    samples = load_dataset(write_jsonl(tmp_path / "d.jsonl", synthetic_records(3)), tokenizer,
                           get_think_format("s1"), 1024).samples
    rows = [[0, 1, 2], [2], [1, 0]]  # packed rows and a padded row
    with torch.no_grad():
        packed = forward_logits(model, collate(rows, samples, tokenizer.pad_token_id))
        alone = [forward_logits(model, collate([[i]], samples, tokenizer.pad_token_id))[0] for i in range(3)]
    for row, row_logits in zip(rows, packed):
        expected = torch.cat([alone[i] for i in row])
        torch.testing.assert_close(row_logits[:len(expected)], expected, rtol=1e-4, atol=1e-4)


def test_data_order_depends_on_seed_and_epoch_only():
    lengths = [10] * 20
    plan = plan_epoch(lengths, epoch=1, seed=7, global_batch_size=8, block_size=64, pack=False)
    assert plan == plan_epoch(lengths, epoch=1, seed=7, global_batch_size=8, block_size=64, pack=False)
    assert plan != plan_epoch(lengths, epoch=2, seed=7, global_batch_size=8, block_size=64, pack=False)
    assert len(plan) == 2  # 20 rows make two full batches of 8; the rest is dropped
    for rows in plan:
        for world_size, micro in [(1, 8), (2, 2), (4, 1), (8, 1)]:
            shards = [micro_batches_of_rank(rows, r, world_size, micro) for r in range(world_size)]
            assert [row for shard in shards for mb in shard for row in mb] == rows
            assert len({len(shard) for shard in shards}) == 1  # every rank runs the same number of micro-batches
    packed = plan_epoch(lengths, epoch=0, seed=7, global_batch_size=2, block_size=35, pack=True)
    assert all(len(row) == 3 for rows in packed for row in rows)


@pytest.mark.parametrize("case, message", [
    ("missing", "training data .*d.jsonl does not exist"),
    ("directory", "training data .*d.jsonl is a directory; give a JSONL file"),
    ("not_messages", r"d.jsonl:1: 'messages' must be a non-empty list of \{role, content\} objects"),
    ("assistant_first", r"d.jsonl:1: 'messages' opens with the assistant's turn: nothing prompts it"),
    ("other_think_format", r"d.jsonl:1: an assistant turn is rendered in the r1 think format .*; pass --think-format r1"),
    ("bad_trajectories", r"d.jsonl:1: 'thinking_trajectories' must be a non-empty list of strings"),
    ("nothing_to_train", r"d.jsonl:1: the sample has no token to train on"),
    ("empty", "the training set is empty"),
    ("no_assistant", r"d.jsonl:3: the conversation has no assistant turn"),
    ("bad_json", "d.jsonl:2: not valid JSON"),
    ("unknown_shape", r"d.jsonl:1: unknown record shape"),
    ("prompt_too_long", r"d.jsonl:1: its prompt is \d+ tokens, so block size 20 cuts off every assistant token"),
    ("too_few_samples", "do not fill one global batch of 64"),
    ("batch_not_divisible", "--global-batch-size 4 is not a multiple of world size 1 x --micro-batch-size 3"),
])
def test_bad_input_is_rejected_before_training(make_model, tmp_path, case, message):
    model = make_model("llama", tie_word_embeddings=True)
    good = {"question": "q?", "thinking": "t", "answer": "a"}
    lines = {
        "empty": "\n",
        "no_assistant": json.dumps(good) + '\n\n{"messages": [{"role": "user", "content": "hi"}]}\n',
        "bad_json": '{"text": "ok"}\n{"text": \n',
        "nothing_to_train": '{"text": "hi"}\n',
        "unknown_shape": '{"prompt": "hi", "completion": "there"}\n',
        "not_messages": json.dumps({"messages": []}) + "\n",
        "assistant_first": json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}) + "\n",
        "other_think_format": json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content":
                                          get_think_format("r1").render("t", "a")}]}) + "\n",  # read as s1
        "bad_trajectories": json.dumps({"question": "q", "thinking_trajectories": [], "attempt": "a"}) + "\n",
        "prompt_too_long": '{"question": "' + "long " * 40 + '", "thinking": "t", "answer": "a"}\n',
    }
    data = tmp_path / "d.jsonl"
    if case in lines:
        data.write_text(lines[case])
    elif case == "directory":
        data.mkdir()
    elif case != "missing":
        write_jsonl(data, [good] * 8)
    flags = {"block_size": 20 if case == "prompt_too_long" else 128,
             "global_batch_size": 64 if case == "too_few_samples" else 4,
             "micro_batch_size": 3 if case == "batch_not_divisible" else 1}
    args = sft_args(model, data, tmp_path / "out", **flags)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare(parse_args(args), world_size=1)


def test_cli_reports_bad_input_and_trains_nothing(make_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    code = main(sft_args(make_model("llama", tie_word_embeddings=True), data, tmp_path / "out"))
    assert code == 2
    assert "d.jsonl:1: the conversation has no assistant turn" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(sft_args(tmp_path / "no-model", data, tmp_path / "out"))
    assert code == 2 and "no config.json in model dir" in capsys.readouterr().err
