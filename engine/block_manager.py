"""Paged KV blocks: reference counts, prefix caching by hash chain, copy-on-write.

A full block is keyed by its parent block's key plus its token ids. Blocks that no sequence holds
keep their key and stay reusable until the pool needs them (least recently freed goes first). A
sequence that must write into a block it shares gets its own copy first; a block that is rewritten
loses its key.
"""
from collections import OrderedDict, deque

from engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_keys: list[int | None] = [None] * num_blocks
        self.key_to_block: dict[int, int] = {}
        self.free_block_ids: deque[int] = deque(range(num_blocks))  # hold no cached content
        self.evictable: OrderedDict[int, None] = OrderedDict()  # unheld but cached, oldest first
        self.num_cached_prompt_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids) + len(self.evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self.key_to_block)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks to take so that `seq` can write its tokens up to `num_tokens`: the blocks to add, and a
        copy of each shared block it writes into (`prepare_write` takes those)."""
        bs, table, ref_counts = self.block_size, seq.block_table, self.ref_counts
        shared = 0
        for i in range(seq.num_cached_tokens // bs, min(len(table), -(-num_tokens // bs))):  # decode: one block
            shared += ref_counts[table[i]] > 1
        return self._blocks_to_add(seq, num_tokens) + shared

    def _blocks_to_add(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def match_prefix(self, seq: Sequence, compute_from: int | None = None) -> None:
        """Give a sequence with no blocks the cached blocks its tokens start with. Tokens from
        `compute_from` on (default: the last one, whose logits are needed) are always computed."""
        if not self.enable_prefix_caching or seq.block_table:
            return
        bs = self.block_size
        for i in range((len(seq) - 1 if compute_from is None else compute_from) // bs):
            key = self._key(seq, i)
            block = self.key_to_block.get(key)
            if block is None:
                break
            if self.ref_counts[block] == 0:
                del self.evictable[block]
            self.ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_keys.append(key)
        seq.num_cached_tokens = len(seq.block_table) * bs
        self.num_cached_prompt_tokens += min(seq.num_cached_tokens, seq.num_prompt_tokens)

    def release_match(self, seq: Sequence) -> None:
        """Give back the cached blocks match_prefix gave a sequence that has computed nothing since (they stay
        cached): a sequence that goes on waiting holds no blocks."""
        self.num_cached_prompt_tokens -= min(seq.num_cached_tokens, seq.num_prompt_tokens)
        self.free(seq)

    def allocate(self, seq: Sequence, num_tokens: int, needed: int | None = None) -> None:
        """Add the blocks `seq` needs to hold num_tokens; `needed` is blocks_needed's answer when the caller
        has just asked it."""
        needed = self.blocks_needed(seq, num_tokens) if needed is None else needed
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, {self.num_free_blocks} free")
        for _ in range(self._blocks_to_add(seq, num_tokens)):
            seq.block_table.append(self._take_block())

    def prepare_write(self, seq: Sequence, start: int, end: int) -> list[tuple[int, int]]:
        """Before tokens [start, end) of `seq` are written: copy shared blocks (returned as (src, dst)
        pairs for the runner) and drop the keys of blocks whose content changes."""
        copies = []
        for i in range(start // self.block_size, -(-end // self.block_size)):
            block = seq.block_table[i]
            if self.ref_counts[block] > 1:
                new = self._take_block()
                self.ref_counts[block] -= 1
                seq.block_table[i] = new
                copies.append((block, new))
            elif self.block_keys[block] is not None:
                del self.key_to_block[self.block_keys[block]]
                self.block_keys[block] = None
            del seq.block_keys[i:]
        return copies

    def commit(self, seq: Sequence) -> None:
        """Key the blocks that the latest forward filled, so later sequences can reuse them."""
        if not self.enable_prefix_caching:
            return
        for i in range(len(seq.block_keys), seq.num_cached_tokens // self.block_size):
            key = self._key(seq, i)
            seq.block_keys.append(key)
            block = seq.block_table[i]
            if key not in self.key_to_block and self.block_keys[block] is None:
                self.key_to_block[key] = block
                self.block_keys[block] = key

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let `child` share every block of `parent`."""
        for block in parent.block_table:
            self.ref_counts[block] += 1
        child.block_table = list(parent.block_table)
        child.block_keys = list(parent.block_keys)

    def free(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_keys[block] is None:
                    self.free_block_ids.append(block)
                else:
                    self.evictable[block] = None
        seq.block_table.clear()
        seq.block_keys.clear()
        seq.num_cached_tokens = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (a cold cache, as for timing a workload from scratch)."""
        for block in self.key_to_block.values():
            self.block_keys[block] = None
        self.key_to_block.clear()
        self.free_block_ids.extend(self.evictable)
        self.evictable.clear()

    def check_all_free(self) -> None:
        """Raise if any block is still held: after every request ends, none may be."""
        held = [i for i, n in enumerate(self.ref_counts) if n]
        if held or self.num_free_blocks != self.num_blocks:
            raise RuntimeError(f"KV block leak: {len(held)} blocks still referenced ({held[:8]}...)")

    def pending_keys(self, seq: Sequence, num_tokens: int) -> list[int]:
        """Keys of the full blocks that computing `seq` up to `num_tokens` tokens would add."""
        if not self.enable_prefix_caching:
            return []
        keys, parent = [], seq.block_keys[-1] if seq.block_keys else None
        for i in range(len(seq.block_keys), num_tokens // self.block_size):
            parent = self._key(seq, i, parent)
            keys.append(parent)
        return keys

    def _key(self, seq: Sequence, i: int, parent: int | None = None) -> int:
        if parent is None and i:
            parent = seq.block_keys[i - 1]
        return hash((parent, tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])))

    def _take_block(self) -> int:
        if self.free_block_ids:
            block = self.free_block_ids.popleft()
        else:
            block, _ = self.evictable.popitem(last=False)
            del self.key_to_block[self.block_keys[block]]
            self.block_keys[block] = None
        self.ref_counts[block] = 1
        return block
