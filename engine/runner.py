"""Owns the model and the KV cache; turns a scheduled batch into attention metadata and logits."""
import torch

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.model import DecoderModel
from engine.scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: DecoderModel, cfg: ModelConfig, num_blocks: int, block_size: int):
        self.model = model
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        shape = (cfg.num_hidden_layers, num_blocks, block_size, 2, cfg.num_key_value_heads, cfg.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    @staticmethod
    def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
        return per_token * block_size * torch.empty((), dtype=dtype).element_size()

    def run(self, batch: ScheduledBatch, all_positions: bool = False) -> torch.Tensor:
        """Forward the batch's new tokens; logits [len(batch.sampling), vocab] for the sequences that sample,
        or for every new token with `all_positions` (scoring)."""
        input_ids, positions, slots = [], [], []
        cu_seqlens_q, context_lens = [0], []
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = seq.num_cached_tokens
            input_ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            cu_seqlens_q.append(cu_seqlens_q[-1] + n)
            context_lens.append(start + n)
        if all_positions:
            logits_indices = list(range(cu_seqlens_q[-1]))
        else:
            logits_indices = [cu_seqlens_q[i + 1] - 1 for i in batch.sampling]
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in batch.seqs]
        query_lens = list(batch.num_tokens)
        meta = AttentionMetadata(
            positions=self._tensor(positions),
            slot_mapping=self._tensor(slots),
            query_lens=query_lens,
            context_lens=context_lens,
            cu_seqlens_q=cu_seqlens_q,
            block_tables=self._tensor(tables),
            is_prefill=batch.is_prefill,
        )
        if not batch.is_prefill:
            self._add_decode_layout(meta, max_blocks * bs)
            table = batch.seqs[0].block_table
            if len(batch.seqs) == 1 and table == list(range(table[0], table[0] + len(table))):
                meta.block_run = (table[0], len(table))
        return self.model(self._tensor(input_ids), meta, self.kv_cache, self._tensor(logits_indices))

    def _add_decode_layout(self, meta: AttentionMetadata, max_ctx: int) -> None:
        q_lens = torch.tensor(meta.query_lens)
        ctx_lens = torch.tensor(meta.context_lens)
        max_q = int(q_lens.max())
        q_pos = torch.arange(max_q)
        # query i of a sequence sees keys up to its own position; padded query rows see every real key
        last_key = torch.minimum(ctx_lens[:, None] - q_lens[:, None] + q_pos[None, :], ctx_lens[:, None] - 1)
        mask = torch.arange(max_ctx)[None, None, :] <= last_key[:, :, None]
        additive = torch.zeros(mask.shape, dtype=self.dtype).masked_fill_(~mask, float("-inf"))
        meta.attn_mask = additive.unsqueeze(1).to(self.device)
        if max_q > 1:
            meta.batch_index = self._tensor([b for b, n in enumerate(meta.query_lens) for _ in range(n)])
            meta.query_index = self._tensor([i for n in meta.query_lens for i in range(n)])

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)
