"""Continuous batching: chunked prefill under a token budget, batched decode, preemption by recompute."""
from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence]
    num_tokens: list[int]  # new tokens each sequence forwards this step
    is_prefill: bool
    copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) blocks to copy before the forward
    # per sequence, the offsets among its new tokens whose logits the step keeps: those that still owe a
    # prompt logprob, then the last one when the sequence samples (set from the sequences' state at creation)
    logit_rows: list[list[int]] = field(init=False)

    def __post_init__(self):
        if not self.is_prefill:  # decode: every sequence samples, and none owes prompt logprobs any more
            self.logit_rows = [[n - 1] for n in self.num_tokens]
            return
        self.logit_rows = []
        for seq, n in zip(self.seqs, self.num_tokens):
            start = seq.num_cached_tokens
            first, end = seq.prompt_logit_span
            offsets = list(range(max(first, start) - start, min(end, start + n) - start))
            if _samples(seq, n):
                offsets.append(n - 1)
            self.logit_rows.append(offsets)

    @property
    def sampling(self) -> list[int]:
        """Indices of the sequences whose every token is computed after this step: they sample."""
        return [i for i, (s, n) in enumerate(zip(self.seqs, self.num_tokens)) if _samples(s, n)]


def _samples(seq: Sequence, num_tokens: int) -> bool:
    return seq.num_uncached_tokens == num_tokens and seq.finish_after_prefill is None


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[ScheduledBatch | None, list[Sequence]]:
        """The next batch, and the sequences that can never fit in the KV pool (to be failed)."""
        while len(self.running) > self.max_num_seqs:  # forks (`n` samples, sweep branches) join the running
            self._preempt(self.running[-1])  # set as they split off: past the limit the newest wait their turn
        batch, rejected = self._schedule_prefill()
        if batch is None and self.running:
            batch = self._schedule_decode()
        return batch, rejected

    def _schedule_prefill(self) -> tuple[ScheduledBatch | None, list[Sequence]]:
        seqs, num_tokens, rejected, copies, computing = [], [], [], [], set()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        i = 0  # the waiting sequence looked at: those that wait for a block this batch computes are passed over
        taken = len(self.running)  # sequences running after this step, forks included
        while i < len(self.waiting) and budget > 0 and taken < self.max_num_seqs:
            seq = self.waiting[i]
            if len(seq) > bm.num_blocks * bm.block_size:
                rejected.append(seq)
                del self.waiting[i]
                continue
            width = 1 + len(seq.fork_seeds)  # its `n` samples fork at its first sample and run beside it
            if taken and taken + width > self.max_num_seqs:
                break  # it waits for room (alone it is let in even past the limit: n above max_num_seqs)
            first, end = seq.prompt_logit_span
            compute_from = first if first < end else len(seq) - 1  # owed prompt logits are computed, not matched
            bm.match_prefix(seq, compute_from=compute_from)
            next_block_end = (len(seq.block_keys) + 1) * bm.block_size
            if computing and set(bm.pending_keys(seq, min(compute_from, next_block_end))) & computing:
                bm.release_match(seq)  # a sequence in this batch computes its next block: this one takes it from
                i += 1  # the cache next step, and holds nothing meanwhile (only waiting[0] may hold blocks)
                continue
            n = min(seq.num_uncached_tokens, budget)
            if not bm.can_allocate(seq, seq.num_cached_tokens + n):
                if i:
                    bm.release_match(seq)
                break
            bm.allocate(seq, seq.num_cached_tokens + n)
            copies += bm.prepare_write(seq, seq.num_cached_tokens, seq.num_cached_tokens + n)
            computing.update(bm.pending_keys(seq, seq.num_cached_tokens + n))
            seqs.append(seq)
            num_tokens.append(n)
            taken += width
            budget -= n
            del self.waiting[i]
            if n < seq.num_uncached_tokens:  # the rest of this prompt goes in the next chunk, first in line: it
                self.waiting.appendleft(seq)  # holds blocks, and must finish to free them
                break
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        if not seqs:
            return None, rejected
        return ScheduledBatch(seqs, num_tokens, is_prefill=True, copies=copies), rejected

    def _schedule_decode(self) -> ScheduledBatch | None:
        bm = self.block_manager
        scheduled, copies = [], []
        candidates = deque(self.running)
        free = bm.num_free_blocks
        while candidates:
            seq = candidates.popleft()
            end = len(seq)
            needed = bm.blocks_needed(seq, end)  # once a sequence a step: this loop runs over the whole batch
            while needed > free and candidates:
                self._preempt(candidates.pop())  # the newest gives way
                needed, free = bm.blocks_needed(seq, end), bm.num_free_blocks  # it may have shared a block
            if needed > free:
                self._preempt(seq)
                free = bm.num_free_blocks
                continue
            bm.allocate(seq, end, needed)
            copies += bm.prepare_write(seq, seq.num_cached_tokens, end)
            free -= needed  # what allocate and prepare_write took: blocks_needed counts both
            scheduled.append(seq)
        if not scheduled:
            return None
        scheduled.sort(key=len)  # by context length: the runner groups similar lengths for attention
        return ScheduledBatch(scheduled, [s.num_uncached_tokens for s in scheduled], is_prefill=False, copies=copies)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        # behind a prompt that is mid-prefill: it holds blocks, and it must finish to free them
        mid_prefill = bool(self.waiting) and self.waiting[0].num_cached_tokens > 0
        self.waiting.insert(1 if mid_prefill else 0, seq)
        self.num_preemptions += 1

    def recompute(self) -> None:
        """After a step that failed part-way (in scheduling, the forward or sampling), the KV of the unfinished
        sequences is in doubt (a copy-on-write planned but never made; tokens counted as computed that
        nothing was sampled from): each gives its blocks up, in its place in line, and is computed again
        from its tokens (cached prompt blocks are matched again)."""
        for seq in self.waiting:  # a prompt mid-prefill holds blocks
            self.block_manager.free(seq)
        while self.running:  # the last first, each to the front of the line: they keep their order
            self._preempt(self.running[-1])

    def finish(self, seq: Sequence) -> None:
        """Release a sequence wherever it is (running, waiting, or mid-prefill)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
