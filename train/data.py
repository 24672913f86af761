"""SFT data: JSONL records -> token ids + loss mask (assistant tokens only) -> packed rows -> micro-batches."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from engine.conversation import conversation_ids
from engine.jsonl import read_objects
from engine.tokenizer import THINK_FORMATS, ThinkFormat


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Sample:
    input_ids: list[int]
    loss_mask: list[bool]  # True on the targets: assistant thinking, delimiter, answer and end-of-turn

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, slots=True)
class Dataset:
    samples: list[Sample]
    num_truncated: int


@dataclass(frozen=True, slots=True)
class Batch:
    input_ids: torch.Tensor  # [B, T], right-padded
    position_ids: torch.Tensor  # [B, T], restarting at 0 for each packed sample
    loss_mask: torch.Tensor  # [B, T] bool, False on padding
    sample_ids: torch.Tensor  # [B, T], which packed sample of its row a token belongs to; -1 on padding
    packed: bool  # some row holds several samples, which must not attend to each other
    num_tokens: int  # real (non-padding) tokens

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.position_ids.to(device), self.loss_mask.to(device),
                     self.sample_ids.to(device), self.packed, self.num_tokens)


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} " + ("is a directory; give a JSONL file" if path.is_dir()
                                                            else "does not exist"))
    records = read_objects(path, DataError)
    if not records:
        raise DataError(f"{path}: no records; the training set is empty")
    return records


def record_to_messages(record: dict, think_format: ThinkFormat) -> list[dict]:
    """Chat messages of a `messages` record, a {question, thinking, answer} record or an s1K record (question,
    thinking_trajectories, attempt: curate.run's selected.jsonl); an assistant message holds its thinking apart
    from its answer, even when the record has it rendered into the content."""
    if "messages" in record:
        messages = record["messages"]  # any role the chat template takes (tool turns too); only the assistant's train
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise DataError("'messages' must be a non-empty list of {role, content} objects")
        if messages[0].get("role") == "assistant":
            raise DataError("'messages' opens with the assistant's turn: nothing prompts it")
    elif {"question", "thinking", "answer"} <= record.keys():
        messages = [{"role": "user", "content": record["question"]},
                    {"role": "assistant", "thinking": record["thinking"], "content": record["answer"]}]
    elif {"question", "thinking_trajectories", "attempt"} <= record.keys():
        trajectories = record["thinking_trajectories"]
        if not isinstance(trajectories, list) or not trajectories:
            raise DataError(f"'thinking_trajectories' must be a non-empty list of strings, got {trajectories!r:.200}")
        messages = [{"role": "user", "content": record["question"]},
                    {"role": "assistant", "thinking": trajectories[0], "content": record["attempt"]}]
    else:
        raise DataError(f"unknown record shape with keys {sorted(record)}; expected 'messages', 'text', "
                        "'question' + 'thinking' + 'answer', or s1K's 'question' + 'thinking_trajectories' + 'attempt'")
    return [_checked_message(m, think_format) for m in messages]


def _checked_message(message: dict, think_format: ThinkFormat) -> dict:
    if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
        raise DataError(f"each message needs string 'role' and 'content', got {message!r:.200}")
    role, content = message["role"], message["content"]
    if role != "assistant":
        return {"role": role, "content": content}
    if "thinking" in message:
        if not isinstance(message["thinking"], str):
            raise DataError(f"'thinking' must be a string, got {message['thinking']!r:.200}")
        return {"role": role, "thinking": message["thinking"], "content": content}
    start, end = think_format.think_start, think_format.think_end
    if content.startswith(start) and end in content:  # rendered in the think format: take the thinking apart
        thinking, answer = content[len(start):].split(end, 1)
        return {"role": role, "thinking": thinking, "content": answer}
    for name, other in THINK_FORMATS.items():  # rendered in another: it would train as a plain answer
        if content.startswith(other.think_start) and other.think_end in content:
            raise DataError(f"an assistant turn is rendered in the {name} think format ({other.think_start!r} ... "
                            f"{other.think_end!r}), not {think_format.name}'s; pass --think-format {name}")
    return {"role": role, "content": content}


def tokenize_chat(messages: list[dict], tokenizer: PreTrainedTokenizerBase, think_format: ThinkFormat) -> Sample:
    """Token ids as the engine would produce them (see engine.conversation); the targets are the assistant's."""
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant turn, so nothing to train on")
    return Sample(*conversation_ids(tokenizer, messages, think_format))


def tokenize_text(text: str, tokenizer: PreTrainedTokenizerBase) -> Sample:
    input_ids = tokenizer(text)["input_ids"]
    return Sample(list(input_ids), [False] + [True] * (len(input_ids) - 1))


def tokenize_record(record: dict, tokenizer: PreTrainedTokenizerBase, think_format: ThinkFormat) -> Sample:
    if "text" in record and "messages" not in record:
        if not isinstance(record["text"], str) or not record["text"]:
            raise DataError("'text' must be a non-empty string")
        return tokenize_text(record["text"], tokenizer)
    return tokenize_chat(record_to_messages(record, think_format), tokenizer, think_format)


def load_dataset(path: str | Path, tokenizer: PreTrainedTokenizerBase, think_format: ThinkFormat,
                 block_size: int) -> Dataset:
    """Tokenize every record, truncating to `block_size`; any bad record raises before training starts."""
    samples, num_truncated = [], 0
    for line_no, record in read_jsonl(path):
        try:
            sample = tokenize_record(record, tokenizer, think_format)
        except ValueError as e:  # DataError, or a chat template that hides the assistant's tokens
            raise DataError(f"{path}:{line_no}: {e}") from e
        if not any(sample.loss_mask):
            raise DataError(f"{path}:{line_no}: the sample has no token to train on")
        if len(sample) > block_size:
            if not any(sample.loss_mask[:block_size]):
                raise DataError(f"{path}:{line_no}: its prompt is {sample.loss_mask.index(True)} tokens, so block "
                                f"size {block_size} cuts off every assistant token; raise --block-size")
            num_truncated += 1
            sample = Sample(sample.input_ids[:block_size], sample.loss_mask[:block_size])
        samples.append(sample)
    return Dataset(samples, num_truncated)


def pack_rows(order: list[int], lengths: list[int], block_size: int) -> list[list[int]]:
    """Greedy packing in the given order: a sample joins the current row if it fits, else starts a new row."""
    rows: list[list[int]] = []
    row_len = block_size
    for i in order:
        if row_len + lengths[i] > block_size:
            rows.append([])
            row_len = 0
        rows[-1].append(i)
        row_len += lengths[i]
    return rows


def plan_epoch(lengths: list[int], epoch: int, seed: int, global_batch_size: int, block_size: int,
               pack: bool) -> list[list[list[int]]]:
    """The epoch's global batches (rows of sample indices), a function of seed and epoch only, never of the
    world size; a last partial batch is dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths)).tolist()
    rows = pack_rows(order, lengths, block_size) if pack else [[i] for i in order]
    return [rows[b:b + global_batch_size] for b in range(0, len(rows) - global_batch_size + 1, global_batch_size)]


def micro_batches_of_rank(rows: list[list[int]], rank: int, world_size: int,
                          micro_batch_size: int) -> list[list[list[int]]]:
    per_rank = len(rows) // world_size
    mine = rows[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]


def collate(rows: list[list[int]], samples: list[Sample], pad_id: int) -> Batch:
    """Right-pad rows to the longest; positions restart per packed sample and run on through the padding."""
    ids, positions, masks, sample_ids = [], [], [], []
    for row in rows:
        ids.append([t for i in row for t in samples[i].input_ids])
        positions.append([p for i in row for p in range(len(samples[i]))])
        masks.append([m for i in row for m in samples[i].loss_mask])
        sample_ids.append([k for k, i in enumerate(row) for _ in range(len(samples[i]))])
    width = max(map(len, ids))
    num_tokens = sum(map(len, ids))
    for row_ids, row_pos, row_mask, row_samples in zip(ids, positions, masks, sample_ids):
        pad = width - len(row_ids)
        row_ids += [pad_id] * pad
        row_pos += range(row_pos[-1] + 1, row_pos[-1] + 1 + pad)
        row_mask += [False] * pad
        row_samples += [-1] * pad
    return Batch(torch.tensor(ids), torch.tensor(positions), torch.tensor(masks), torch.tensor(sample_ids),
                 any(len(row) > 1 for row in rows), num_tokens)
