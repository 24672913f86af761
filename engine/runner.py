"""Owns the model and the KV cache; turns a scheduled batch into attention metadata and logits."""
import numpy as np
import torch

from engine.attention import AttentionMetadata, DecodeGroup
from engine.config import ModelConfig
from engine.graphs import DecodeGraphs, capture_cuda_graph
from engine.model import DecoderModel
from engine.sampling import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from kernels.ops import select_ops


# Decode attention pads every sequence of a group to the group's longest context; a group costs about
# as much fixed overhead per layer (gather + SDPA calls) as reading this many padded token slots.
GROUP_OVERHEAD_SLOTS = 256
PROMPT_LOGPROB_ROWS = 512  # prompt positions whose log-softmax is taken at once


class ModelRunner:
    def __init__(self, model: DecoderModel, cfg: ModelConfig, num_blocks: int, block_size: int, kernels: str = "auto"):
        self.model, self.cfg = model, cfg
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.ops = model.ops = select_ops(kernels, self.device)
        if self.ops.flat_metadata and (block_size < 16 or block_size & (block_size - 1)):
            raise ValueError(f"the Triton kernels need block_size a power of two of at least 16 (a page is a "
                             f"tl.dot operand), got {block_size}; or use kernels='torch'")
        self._block_elems = 2 * cfg.num_key_value_heads * block_size * cfg.head_dim
        self.graphs: DecodeGraphs | None = None
        self.allocate_kv_cache(num_blocks)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """A fresh pool of num_blocks blocks (zeros), replacing the current one (before any graph captures it)."""
        if self.graphs is not None:
            raise RuntimeError("the decode graphs read the current KV pool; size the pool before capturing them")
        cfg = self.cfg
        self.kv_cache = self._workspace = None  # the old pool's memory is free before the new one is taken
        # per layer: keys then values, head-major (see engine.attention)
        shape = (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, num_blocks, self.block_size, cfg.head_dim)
        self.num_blocks = num_blocks
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._workspace = self.kv_cache.new_empty(0)

    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int, capture=capture_cuda_graph) -> None:
        """Capture decode steps of up to max_num_seqs sequences (see engine.graphs); the Triton ops only."""
        if not self.ops.flat_metadata:
            raise ValueError("CUDA graphs capture the Triton kernels' decode step; they need kernels='triton' or 'auto' on CUDA")
        self.graphs = DecodeGraphs(self.model, self.kv_cache, max_num_seqs, -(-max_model_len // self.block_size), capture)

    def warm_up(self, num_tokens: int, num_seqs: int, vocab_size: int) -> None:
        """The largest step the engine takes, so the memory peak after it bounds what any step needs: a
        prefill of num_tokens tokens over up to num_seqs sequences (none longer than the model's
        positions) with logits at every position and their log-softmax, PROMPT_LOGPROB_ROWS rows at a
        time (as prompt scoring takes it), then a sampling of the sequences' rows over the engine's
        vocab_size (so the sampler's kernel is compiled for it here, not at the first request). Needs
        warm_up_blocks(num_tokens, num_seqs, block_size) blocks; it writes only the pool's blocks."""
        num_tokens = min(num_tokens, num_seqs * self.cfg.max_position_embeddings)
        num_seqs = min(num_seqs, num_tokens)
        lens = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
        seqs, next_block = [], 0
        for i, n in enumerate(lens):
            seq = Sequence(i, [0] * n, n, SamplingParams(), 0, prompt_logprobs=[])
            seq.block_table = list(range(next_block, next_block + -(-n // self.block_size)))
            next_block += len(seq.block_table)
            seqs.append(seq)
        logits = self.run(ScheduledBatch(seqs, lens, is_prefill=True))  # every position: prompt logprobs
        for lo in range(0, len(logits), PROMPT_LOGPROB_ROWS):
            torch.log_softmax(logits[lo : lo + PROMPT_LOGPROB_ROWS].float(), dim=-1)
        last = logits[torch.tensor(lens, device=self.device).cumsum(0) - 1]
        rows = len(seqs)
        self.ops.sample(last, vocab_size, torch.ones(rows, device=self.device),
                        torch.full((rows,), 50, device=self.device), torch.full((rows,), 0.9, device=self.device),
                        torch.rand(rows, dtype=torch.float64, device=self.device),
                        torch.full((rows, 1), -1, device=self.device))

    @staticmethod
    def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
        return per_token * block_size * torch.empty((), dtype=dtype).element_size()

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Forward the batch's new tokens; logits [rows, vocab] of the tokens in `batch.logit_rows`, in
        order (without prompt logprobs: one row per sequence that samples)."""
        for src, dst in batch.copies:  # copy-on-write of shared blocks, before anything writes them
            self.kv_cache[:, :, :, dst] = self.kv_cache[:, :, :, src]
        input_ids, positions, slots = [], [], []
        cu_seqlens_q, context_lens = [0], []
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = seq.num_cached_tokens
            input_ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            table = seq.block_table
            slots.extend([table[p // bs] * bs + p % bs for p in range(start, start + n)])
            cu_seqlens_q.append(cu_seqlens_q[-1] + n)
            context_lens.append(start + n)
        logits_indices = [cu_seqlens_q[i] + offset for i, offsets in enumerate(batch.logit_rows) for offset in offsets]
        if self.graphs is not None and self._replays(batch):  # a decode step: one row per sequence, all sample
            return self.graphs.run(input_ids, positions, slots, _padded_tables(batch.seqs), context_lens)
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        flat = self.ops.flat_metadata
        meta = AttentionMetadata(
            positions=self._tensor(positions),
            slot_mapping=self._tensor(slots),
            query_lens=list(batch.num_tokens),
            context_lens=context_lens,
            cu_seqlens_q=cu_seqlens_q,
            block_tables=_padded_tables(batch.seqs).to(self.device, non_blocking=True) if batch.is_prefill or flat else None,
            is_prefill=batch.is_prefill,
            workspace=self._workspace if flat else self._workspace_for(len(batch.seqs) * max_blocks),
        )
        if flat:  # the kernels read tables and lengths in place: no decode groups, no gather buffer
            meta.context_lens_tensor = self._tensor(context_lens)
            meta.cu_seqlens_q_tensor = self._tensor(cu_seqlens_q)
            meta.max_query_len = max(batch.num_tokens)
        elif not batch.is_prefill:
            meta.decode_groups = self._decode_groups(batch, meta)
            table = batch.seqs[0].block_table
            if len(batch.seqs) == 1 and table == list(range(table[0], table[0] + len(table))):
                meta.block_run = (table[0], len(table))
        return self.model(self._tensor(input_ids), meta, self.kv_cache, self._tensor(logits_indices))

    def _replays(self, batch: ScheduledBatch) -> bool:
        """A decode step (one new token per sequence) that a captured graph holds."""
        return (not batch.is_prefill and len(batch.seqs) <= self.graphs.max_batch
                and all(n == 1 for n in batch.num_tokens))

    def _workspace_for(self, num_blocks: int) -> torch.Tensor:
        """The gather buffer, grown (never shrunk) to hold num_blocks blocks of one layer."""
        if len(self._workspace) < num_blocks * self._block_elems:
            self._workspace = self.kv_cache.new_empty(num_blocks * self._block_elems)
        return self._workspace

    def _decode_groups(self, batch: ScheduledBatch, meta: AttentionMetadata) -> list[DecodeGroup]:
        """Split the batch (the scheduler orders it by length) into runs that attend together."""
        groups = []
        num_blocks = [-(-n // self.block_size) for n in meta.context_lens]
        for first, last in _split_by_length(num_blocks, GROUP_OVERHEAD_SLOTS / self.block_size):
            seqs = batch.seqs[first:last]
            q_lens, ctx_lens = meta.query_lens[first:last], meta.context_lens[first:last]
            tables = _padded_tables(seqs)
            group = DecodeGroup(
                start=meta.cu_seqlens_q[first],
                end=meta.cu_seqlens_q[last],
                block_tables=tables.to(self.device, non_blocking=True),
                attn_mask=self._decode_mask(q_lens, ctx_lens, tables.shape[1] * self.block_size),
            )
            if max(q_lens) > 1:
                group.batch_index = self._tensor([b for b, n in enumerate(q_lens) for _ in range(n)])
                group.query_index = self._tensor([i for n in q_lens for i in range(n)])
            groups.append(group)
        return groups

    def _decode_mask(self, query_lens: list[int], context_lens: list[int], max_ctx: int) -> torch.Tensor:
        q_lens, ctx_lens = torch.tensor(query_lens), torch.tensor(context_lens)
        q_pos = torch.arange(int(q_lens.max()))
        # query i of a sequence sees keys up to its own position; padded query rows see every real key
        last_key = torch.minimum(ctx_lens[:, None] - q_lens[:, None] + q_pos[None, :], ctx_lens[:, None] - 1)
        mask = torch.arange(max_ctx)[None, None, :] <= last_key[:, :, None]
        additive = torch.zeros(mask.shape, dtype=self.dtype).masked_fill_(~mask, float("-inf"))
        return additive.unsqueeze(1).to(self.device)

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)


def warm_up_blocks(num_tokens: int, num_seqs: int, block_size: int) -> int:
    """Blocks ModelRunner.warm_up needs: each sequence's tokens, rounded up to whole blocks."""
    return -(-num_tokens // block_size) + min(num_seqs, num_tokens)


def kv_pool_blocks(total: int, free: int, reserved: int, peak: int, utilization: float, block_bytes: int) -> int:
    """Blocks that fit in `utilization` of a GPU's `total` bytes, after what other processes hold
    (total - free - this process's `reserved`) and this process's `peak` (weights and the warm-up's
    activations)."""
    others = total - free - reserved
    return max(0, int(total * utilization) - others - peak) // block_bytes


def _padded_tables(seqs: list[Sequence]) -> torch.Tensor:
    """The sequences' block tables as one CPU tensor [B, widest], padded with block 0. Filled row by row
    through numpy: a nested list through torch.tensor converts every id on its own (3-4x slower at batch
    256, time a GPU waits every step)."""
    tables = np.zeros((len(seqs), max(len(seq.block_table) for seq in seqs)), dtype=np.int64)
    for row, seq in zip(tables, seqs):
        row[: len(seq.block_table)] = seq.block_table
    return torch.from_numpy(tables)


def _split_by_length(num_blocks: list[int], overhead: float) -> list[tuple[int, int]]:
    """Cut block counts, sorted ascending, into runs [first, last) that minimise the blocks read (each
    run pads to its last) plus `overhead` blocks per run: an exact O(B^2) dynamic programme."""
    best, cut = [0.0], [0]
    for last in range(1, len(num_blocks) + 1):
        width = num_blocks[last - 1]
        cost, first = min((best[f] + overhead + (last - f) * width, f) for f in range(last))
        best.append(cost)
        cut.append(first)
    runs, last = [], len(num_blocks)
    while last:
        runs.append((cut[last], last))
        last = cut[last]
    return runs[::-1]
