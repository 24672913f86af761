"""Decode steps replayed as CUDA graphs, one per batch size of a ladder.

Under the Triton ops a decode step (one new token per sequence) reads nothing but tensors: token ids,
positions, cache slots, block tables and context lengths. Each graph captures the model's forward on
static copies of them, sized for its batch; a step of n sequences replays the smallest graph that holds
n, its extra rows padded: they store no KV (slot -1), attend to one key of whatever block their table
row names, and are cut from the logits. Prefill, chunked prefill and budget-forcing splices (more than
one new token for a sequence) run eagerly through the extend path; the sampler runs after the replay.
"""
from collections.abc import Callable

import torch

from engine.attention import AttentionMetadata
from engine.model import DecoderModel

BATCH_LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

Replay = Callable[[], torch.Tensor]


def capture_cuda_graph(forward: Callable[[], torch.Tensor], pool) -> Replay:
    """Run forward once (compiling its kernels), capture it into a CUDA graph; replaying it returns the
    graph's static output."""
    forward()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = forward()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def replay_eagerly(forward: Callable[[], torch.Tensor], pool) -> Replay:
    """The CPU stand-in for capture_cuda_graph: replaying runs forward again on the same static buffers,
    so the padding and the static metadata are exercised where no GPU is (tests, gpu_check --smoke)."""
    return forward


def batch_sizes(max_num_seqs: int) -> list[int]:
    """The ladder up to max_num_seqs, which is always on it."""
    return [n for n in BATCH_LADDER if n < max_num_seqs] + [max_num_seqs]


class DecodeGraphs:
    def __init__(self, model: DecoderModel, kv_cache: torch.Tensor, max_num_seqs: int, max_blocks_per_seq: int,
                 capture: Callable = capture_cuda_graph):
        device = kv_cache.device
        self.sizes = batch_sizes(max_num_seqs)
        n = self.sizes[-1]
        # token ids, positions, cache slots and context lengths: rows of one buffer, filled by one copy a step
        self.step_inputs = torch.tensor([[0] * n, [0] * n, [-1] * n, [1] * n], dtype=torch.long, device=device)
        self.input_ids, self.positions, self.slot_mapping, self.context_lens = self.step_inputs
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.long, device=device)
        rows = torch.arange(n + 1, device=device)
        # one logits buffer for every graph: each copies its output into the first rows, so no graph keeps
        # an output of its own alive in the pool
        self.logits = torch.empty(n, model.cfg.vocab_size, dtype=torch.float32, device=device)
        self.num_replays = 0
        self._replays: dict[int, Replay] = {}
        pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
        for size in reversed(self.sizes):  # the largest first: the smaller ones reuse its memory pool
            meta = AttentionMetadata(
                positions=self.positions[:size], slot_mapping=self.slot_mapping[:size], query_lens=[1] * size,
                context_lens=[], cu_seqlens_q=list(range(size + 1)), block_tables=self.block_tables[:size],
                is_prefill=False, workspace=kv_cache.new_empty(0), context_lens_tensor=self.context_lens[:size],
                cu_seqlens_q_tensor=rows[: size + 1], max_query_len=1)
            forward = _bind(model, self.input_ids[:size], meta, kv_cache, rows[:size], self.logits[:size])
            self._replays[size] = capture(forward, pool)

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def run(self, input_ids: list[int], positions: list[int], slots: list[int], tables: torch.Tensor,
            context_lens: list[int]) -> torch.Tensor:
        """Logits [len(input_ids), vocab] of one decode step, from the smallest graph that holds it; tables
        is a CPU tensor [n, widest]."""
        n = len(input_ids)
        size = next(s for s in self.sizes if s >= n)
        pad = self.sizes[-1] - n  # padded rows: no KV written (slot -1), one key read; the whole buffer is one
        host = torch.tensor([input_ids + [0] * pad, positions + [0] * pad, slots + [-1] * pad, context_lens + [1] * pad],
                            dtype=torch.long)  # contiguous copy (a slice of its rows is not contiguous)
        self.step_inputs.copy_(host, non_blocking=True)
        self.block_tables[:n, : tables.shape[1]].copy_(tables, non_blocking=True)
        self.num_replays += 1
        return self._replays[size]()[:n]


def _bind(model: DecoderModel, input_ids, meta: AttentionMetadata, kv_cache, logits_indices,
          out: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: out.copy_(model(input_ids, meta, kv_cache, logits_indices))
