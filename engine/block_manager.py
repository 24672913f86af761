"""Paged KV blocks: a free list, per-sequence block tables and reference counts."""
from collections import deque

from engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.free_block_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks to add so that `seq` can hold `num_tokens` tokens in total."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        needed = self.blocks_needed(seq, num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, {self.num_free_blocks} free")
        for _ in range(needed):
            block_id = self.free_block_ids.popleft()
            self.ref_counts[block_id] = 1
            seq.block_table.append(block_id)

    def share(self, src: Sequence, dst: Sequence, num_tokens: int) -> None:
        """Let `dst` reuse the full blocks holding `src`'s first `num_tokens` tokens."""
        if dst.block_table:
            raise ValueError("share() needs a destination sequence with no blocks yet")
        for block_id in src.block_table[: num_tokens // self.block_size]:
            self.ref_counts[block_id] += 1
            dst.block_table.append(block_id)

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self.free_block_ids.append(block_id)
        seq.block_table.clear()
        seq.num_cached_tokens = 0

    def check_all_free(self) -> None:
        """Raise if any block is still held: after every request ends, none may be."""
        held = [i for i, n in enumerate(self.ref_counts) if n]
        if held or len(self.free_block_ids) != self.num_blocks:
            raise RuntimeError(f"KV block leak: {len(held)} blocks still referenced ({held[:8]}...)")
