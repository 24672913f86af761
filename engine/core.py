"""The engine core: one loop, schedule -> run -> sample -> postprocess, over requests added and aborted
by whoever drives it (the offline LLM, later a server thread). Budget forcing, stops, `n` forks and
sweep branches live here."""
from dataclasses import replace

import torch

from engine.block_manager import BlockManager
from engine.budget import BudgetState, Phase
from engine.penalties import penalize
from engine.request import Request
from engine.runner import PROMPT_LOGPROB_ROWS, ModelRunner
from engine.sampling import Sampler
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence, SequenceStatus
from engine.stops import first_stop, window_tokens
from engine.tokenizer import Tokenizer


class EngineCore:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Tokenizer,
        vocab_size: int,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_prefix_caching: bool = True,
    ):
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.sampler = Sampler(vocab_size, runner.ops.sample)
        self.requests: dict[int, Request] = {}
        self.num_computed_tokens = 0
        self._next_seq_id = 0

    def add_request(self, request: Request) -> None:
        """Queue a request whose sequences hold their prompt (and settings); a sweep's settings that
        splice at once (a zero cap) start as their own sequences."""
        self.requests[request.request_id] = request
        (seq,) = request.seqs
        seq.seq_id = self._new_seq_id()
        groups = _group_by(seq.settings, lambda s: _start_outcome(s, seq))
        for branch in [seq] + [self._branch(seq, group, shares_blocks=False) for group in groups[1:]]:
            if branch.budget is not None:
                branch.budget.start(branch.output)
                _mirror(branch)
                if branch.logprobs is not None:  # a zero cap spliced the delimiter: nothing sampled it
                    branch.logprobs.extend([None] * (branch.num_output_tokens - len(branch.logprobs)))
            first, end = branch.prompt_logit_span
            owes = first < end  # prompt logprobs are computed even when there is nothing to generate
            if not self._finish_if_at_length(branch, now=not owes) or owes:  # a zero budget can leave nothing
                self.scheduler.add(branch)

    def abort(self, request: Request) -> None:
        for seq in list(request.seqs):  # _finish adds the samples of a prompt aborted before they forked
            if not seq.is_finished:
                self._finish(seq, "abort")
        self.requests.pop(request.request_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> dict[str, int]:
        bm = self.block_manager
        return {
            "num_computed_tokens": self.num_computed_tokens,
            "num_cached_prompt_tokens": bm.num_cached_prompt_tokens,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_used_blocks": bm.num_used_blocks,
            "num_cached_blocks": bm.num_cached_blocks,
        }

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One forward over the scheduled batch; returns the sequences it touched."""
        try:
            batch, rejected = self.scheduler.schedule()
            for seq in rejected:
                seq.error = f"sequence of {len(seq)} tokens does not fit in the KV pool"
                self._finish(seq, "error")
            if batch is None:
                return rejected
            sampling = [batch.seqs[i] for i in batch.sampling]
            logits = self._take_prompt_logprobs(batch, self.runner.run(batch))
            for seq, n in zip(batch.seqs, batch.num_tokens):
                seq.num_cached_tokens += n
                self.block_manager.commit(seq)
                if seq.finish_after_prefill is not None and not seq.num_uncached_tokens:
                    self._finish(seq, seq.finish_after_prefill)
            self.num_computed_tokens += sum(batch.num_tokens)
            if sampling:
                self._sample(sampling, logits)
        except BaseException:  # an error or Ctrl-C part-way: whoever drives the engine may go on with the rest
            self.scheduler.recompute()
            for request in list(self.requests.values()):  # a finish cut short while it made the ended samples
                for seq in [s for s in request.seqs if s.is_finished and s.fork_seeds]:
                    self._end_samples(seq)
            raise
        return batch.seqs + rejected

    def _take_prompt_logprobs(self, batch: ScheduledBatch, logits: torch.Tensor) -> torch.Tensor:
        """Record the prompt logprobs that the step's logit rows owe (before the sequences count the step's
        tokens as cached); return the rows of the sequences that sample."""
        if not batch.is_prefill:  # decode: every row samples
            return logits
        sampling = set(batch.sampling)
        sample_rows, score_rows, targets, owners, row = [], [], [], [], 0
        for i, (seq, offsets) in enumerate(zip(batch.seqs, batch.logit_rows)):
            samples = i in sampling
            for j, offset in enumerate(offsets[:-1] if samples else offsets):
                score_rows.append(row + j)
                targets.append(seq.token_ids[seq.num_cached_tokens + offset + 1])
                owners.append(seq)
            if samples:
                sample_rows.append(row + len(offsets) - 1)
            row += len(offsets)
        if not score_rows:
            return logits
        for lo in range(0, len(score_rows), PROMPT_LOGPROB_ROWS):  # bounded fp32 copies of [rows, vocab]
            rows = slice(lo, lo + PROMPT_LOGPROB_ROWS)
            logprobs = torch.log_softmax(logits[score_rows[rows]].float(), dim=-1)
            entries = logprob_entries(logprobs, targets[rows], [seq.params.prompt_logprobs or 0 for seq in owners[rows]])
            for seq, entry in zip(owners[rows], entries):
                seq.prompt_logprobs.append(entry)
        return logits[sample_rows]

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Fork where sequences split before sampling (n samples; sweep settings whose masks differ),
        then sample one token per sequence, each with a number of its own random stream, and postprocess."""
        rows, expanded = [], []
        # rows a split of sweep settings may add: a prompt is let in with room for its `n` samples
        room = self.scheduler.max_num_seqs - len(seqs) - sum(len(seq.fork_seeds) for seq in seqs)
        for row, seq in enumerate(seqs):
            branches, room = self._fork_before_sampling(seq, room)
            for branch in branches:
                rows.append(row)
                expanded.append(branch)
        if rows != list(range(len(seqs))):
            logits = logits[rows]
        # logprobs of the model's raw logits (before penalties, temperature, filters and masks)
        asking = [i for i, s in enumerate(expanded) if s.params.logprobs is not None]
        logprobs = torch.log_softmax(logits[asking].float(), dim=-1) if asking else None
        tokens = self.sampler(
            penalize(logits, expanded),
            [s.params for s in expanded],
            [(s.seed, s.num_draws) for s in expanded],
            [b.masked_ids(s.num_output_tokens) if (b := s.budget) else frozenset() for s in expanded],
        )
        entries = {} if not asking else dict(zip(asking, logprob_entries(
            logprobs, [tokens[i] for i in asking], [expanded[i].params.logprobs for i in asking])))
        for i, (seq, token) in enumerate(zip(expanded, tokens)):
            self._postprocess(seq, token, entries.get(i))

    def _fork_before_sampling(self, seq: Sequence, room: int) -> tuple[list[Sequence], int]:
        """The sequences that sample in seq's row: seq, its `n` samples, and its sweep settings whose masks
        differ from its own; a split past `room` waits its turn (it draws later what it would draw now).
        Returns them and the room left."""
        branches = [seq]
        while seq.fork_seeds:  # `n` samples: the prompt is computed once, then each sample goes its own way
            branches.append(self._branch(seq, [], shares_blocks=True, sample=seq.params.n - len(seq.fork_seeds)))
        if len(seq.settings) > 1:  # sweep settings whose masks differ split here
            n = seq.num_output_tokens
            for group in _group_by(seq.settings, lambda s: s.masked_ids(n)):
                if group is None:
                    continue
                if room > 0:
                    branches.append(self._branch(seq, group, shares_blocks=True))
                    room -= 1
                else:
                    self.scheduler.add(self._branch(seq, group, shares_blocks=False))
        return branches, room

    def _postprocess(self, seq: Sequence, token: int, logprob: dict[int, float] | None) -> None:
        in_answer = seq.phase is Phase.ANSWER
        before = seq.num_output_tokens
        if len(seq.settings) > 1:
            for group in _group_by(seq.settings, lambda s: _accept_outcome(s, seq, token)):
                if group is not None:
                    branch = self._branch(seq, group, shares_blocks=True)
                    self._apply(branch, token, logprob, before)
                    self._after_token(branch, token, in_answer)
        self._apply(seq, token, logprob, before)
        self._after_token(seq, token, in_answer)

    def _apply(self, seq: Sequence, token: int, logprob: dict[int, float] | None, before: int) -> None:
        """Put the sampled token into the sequence through its budget, keeping logprobs and the cache in step."""
        if seq.budget is None:
            seq.token_ids.append(token)
            changed, kept = before, True
        else:
            changed, kept = seq.budget.accept(seq.output, token)
            _mirror(seq)
        seq.num_draws += 1  # with the token: a step that fails before this draws the same again
        seq.num_cached_tokens = min(seq.num_cached_tokens, seq.num_prompt_tokens + changed)
        if seq.token_counts is not None and seq.token_counts.counted > seq.num_prompt_tokens + changed:
            seq.token_counts = None  # the edit reached counted tokens: count them again
        if seq.logprobs is not None:
            del seq.logprobs[changed:]
            if kept:
                seq.logprobs.append(logprob)
            seq.logprobs.extend([None] * (seq.num_output_tokens - len(seq.logprobs)))

    def _after_token(self, seq: Sequence, token: int, in_answer: bool) -> None:
        if in_answer:  # stops apply to the answer only: inside thinking they would cut budget forcing short
            p = seq.params
            if token in p.stop_token_ids or (not p.ignore_eos and token in self.tokenizer.eos_token_ids):
                return self._finish(seq, "stop", stop_reason=token)
            stop = self._stop_string_hit(seq)
            if stop is not None:
                return self._finish(seq, "stop", stop_reason=stop)
        self._finish_if_at_length(seq)

    def _stop_string_hit(self, seq: Sequence) -> str | None:
        """A stop string that the newest token completes, matched on sampled answer text only."""
        stops = seq.params.stop_strings
        if not stops:
            return None
        start = seq.num_prompt_tokens + seq.answer_start
        tail = self.tokenizer.decode(seq.token_ids[max(start, len(seq) - window_tokens(stops)) :])
        hit = first_stop(tail, stops)
        return None if hit is None else hit[1]

    def _finish_if_at_length(self, seq: Sequence, now: bool = True) -> bool:
        """Finish a sequence at its answer cap or length limit (trimmed to it); with now=False (it still owes
        prompt logprobs) it is marked to finish once its prefill has run."""
        budget, p = seq.budget, seq.params
        at_answer_cap = (budget is not None and budget.phase is Phase.ANSWER and budget.budget.max_answer_tokens is not None
                         and seq.num_output_tokens - budget.answer_start >= budget.budget.max_answer_tokens)
        limit = min(seq.num_prompt_tokens + p.max_tokens, self.max_model_len)
        if not at_answer_cap and len(seq) < limit:
            return False
        if len(seq) >= limit:  # the length cuts what a splice put past it, answer cap or not
            del seq.token_ids[limit:]
            if seq.logprobs is not None:
                del seq.logprobs[limit - seq.num_prompt_tokens :]
        if now:
            self._finish(seq, "length")
        else:
            seq.finish_after_prefill = "length"
        return True

    def _finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        for state in seq.settings.values():
            state.phase = Phase.DONE
        self.scheduler.finish(seq)
        self._end_samples(seq)

    def _end_samples(self, seq: Sequence) -> None:
        """A sequence that finished before its `n` samples forked: they end alike; then its request may be done."""
        while seq.fork_seeds:
            self._branch(seq, [], shares_blocks=False, sample=seq.params.n - len(seq.fork_seeds))
        request = self.requests.get(seq.request_id)
        if request is not None and request.is_finished:
            del self.requests[seq.request_id]

    def _branch(self, parent: Sequence, settings: list[int], shares_blocks: bool, sample: int | None = None) -> Sequence:
        """A new sequence with the parent's tokens that takes over `settings` from it, continuing the
        parent's random stream; or, as `n` sample `sample`, one with a copy of every setting whose random
        stream starts at the parent's next fork seed (which it takes; if the parent has finished,
        it ends alike). It shares the parent's blocks (running beside it) or starts unscheduled. It is
        registered last, made whole: a step that fails part-way leaves no half-made sequence, nor a seed
        forked twice."""
        child = Sequence(
            self._new_seq_id(), list(parent.token_ids), parent.num_prompt_tokens, parent.params,
            parent.seed if sample is None else parent.fork_seeds[0],
            num_draws=parent.num_draws if sample is None else 0,
            request_id=parent.request_id, sample_index=parent.sample_index if sample is None else sample,
            logprobs=None if parent.logprobs is None else list(parent.logprobs),
            prompt_logprobs=None if parent.prompt_logprobs is None else list(parent.prompt_logprobs),
            prompt_logprobs_from=parent.prompt_logprobs_from,
            token_counts=None if parent.token_counts is None else parent.token_counts.copy(),
        )
        if sample is None:
            child.settings = {k: parent.settings.pop(k) for k in settings}
        else:
            child.settings = {k: replace(state) for k, state in parent.settings.items()}
            if parent.is_finished:
                child.finish_reason, child.stop_reason, child.error = parent.finish_reason, parent.stop_reason, parent.error
                child.status = SequenceStatus.FINISHED
        if shares_blocks:
            child.num_cached_tokens = parent.num_cached_tokens
            child.status = SequenceStatus.RUNNING
            self.block_manager.fork(parent, child)
            self.scheduler.running.append(child)
        self.requests[parent.request_id].seqs.append(child)
        if sample is not None:
            del parent.fork_seeds[0]
        return child

    def _new_seq_id(self) -> int:
        self._next_seq_id += 1
        return self._next_seq_id - 1


def logprob_entries(logprobs: torch.Tensor, tokens: list[int], ks: list[int]) -> list[dict[int, float]]:
    """Per row of logprobs [rows, vocab]: {token: its logprob} and the row's k most likely tokens, from one
    gather and one top-k for all rows (a GPU syncs a few times a step, not a few times a row)."""
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0].tolist()
    k = max(ks)
    top = logprobs.topk(k) if k else None
    top_ids, top_values = (top.indices.tolist(), top.values.tolist()) if k else ([[]] * len(ks), [[]] * len(ks))
    return [{token: value, **dict(zip(ids[:kk], values[:kk]))}
            for token, value, ids, values, kk in zip(tokens, chosen, top_ids, top_values, ks)]


def _mirror(seq: Sequence) -> None:
    """The settings a sequence carries made the same decision: copy the first one's counters to the rest."""
    first = seq.budget
    for state in seq.settings.values():
        state.phase, state.ignores_used = first.phase, first.ignores_used
        state.thinking_end, state.answer_start = first.thinking_end, first.answer_start


def _group_by(settings: dict[int, BudgetState], decision) -> list[list[int] | None]:
    """Split setting indices by `decision`: None for the group that stays (the first one's), then the
    index lists that must branch off."""
    groups: dict[object, list[int]] = {}
    for index, state in settings.items():
        groups.setdefault(decision(state), []).append(index)
    return [None] + list(groups.values())[1:]


def _start_outcome(state: BudgetState, seq: Sequence) -> tuple:
    """What starting does under one setting: the output edit, and whether the answer limit then ends it."""
    scratch, out = replace(state), ScratchOutput(seq.token_ids, seq.num_prompt_tokens)
    scratch.start(out)
    limit = scratch.budget.max_answer_tokens
    ends = scratch.phase is Phase.ANSWER and limit is not None and len(out) - scratch.answer_start >= limit
    return out.key(), scratch.phase, ends


def _accept_outcome(state: BudgetState, seq: Sequence, token: int) -> tuple:
    """What accepting `token` would do under one setting: the output edit, the counters, and whether the
    answer limit then ends it."""
    scratch, out = replace(state), ScratchOutput(seq.token_ids, seq.num_prompt_tokens)
    scratch.accept(out, token)
    limit = scratch.budget.max_answer_tokens
    ends = scratch.phase is Phase.ANSWER and limit is not None and len(out) - scratch.answer_start >= limit
    return out.key(), scratch.phase, scratch.ignores_used, scratch.thinking_end, scratch.answer_start, ends


class ScratchOutput:
    """A sequence's output as a budget sees it, edited without touching the sequence: the first `keep`
    output tokens, then `extra`."""

    def __init__(self, tokens: list[int], offset: int):
        self.tokens, self.offset = tokens, offset
        self.keep, self.extra = len(tokens) - offset, []

    def __len__(self) -> int:
        return self.keep + len(self.extra)

    def __getitem__(self, index: slice) -> list[int]:
        start, stop, _ = index.indices(len(self))
        base = self.tokens[self.offset + start : self.offset + min(stop, self.keep)] if start < self.keep else []
        return base + self.extra[max(0, start - self.keep) : max(0, stop - self.keep)]

    def __delitem__(self, index: slice) -> None:
        start, _, _ = index.indices(len(self))
        if start < self.keep:
            self.keep, self.extra = start, []
        else:
            del self.extra[start - self.keep :]

    def append(self, token: int) -> None:
        self.extra.append(token)

    def extend(self, tokens: list[int]) -> None:
        self.extra.extend(tokens)

    def key(self) -> tuple:
        return self.keep, tuple(self.extra)
