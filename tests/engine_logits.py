"""Logits of a token sequence computed by the engine's paged decoder (one prefill through the KV cache)."""
from pathlib import Path

import torch

from engine.block_manager import BlockManager
from engine.config import ModelConfig
from engine.model import load_model
from engine.runner import ModelRunner
from engine.sampling import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


def engine_logits(model_dir: str | Path, token_ids: list[int], block_size: int = 16, chunk: int | None = None,
                  vocab_major_head: bool = True) -> torch.Tensor:
    """[len(token_ids), vocab] fp32 logits; `chunk` splits the prompt into extends of that many tokens;
    vocab_major_head=False computes the output head as a GPU does (x @ head.T at every row count)."""
    cfg = ModelConfig.from_dir(model_dir)
    model = load_model(model_dir, cfg, torch.device("cpu"), torch.float32)
    model.vocab_major_head = vocab_major_head
    num_blocks = -(-len(token_ids) // block_size) + 1
    runner = ModelRunner(model, cfg, num_blocks, block_size)
    blocks = BlockManager(num_blocks, block_size)
    seq = Sequence(0, list(token_ids), len(token_ids), SamplingParams(), 0, prompt_logprobs=[])
    rows = []
    step = chunk or len(token_ids)
    for start in range(0, len(token_ids), step):
        n = min(step, len(token_ids) - start)
        blocks.allocate(seq, start + n)
        with torch.inference_mode():
            rows.append(runner.run(ScheduledBatch([seq], [n], is_prefill=True)))  # every position: prompt logprobs
        seq.num_cached_tokens += n
    blocks.free(seq)
    return torch.cat(rows)
