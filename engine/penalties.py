"""Logit adjustments a request asks for before its token is drawn, in vLLM's order: `logit_bias` (added
to its tokens' logits), then the repetition penalty of CTRL and transformers (a logit of a token in the
prompt or the output is divided by it when positive, multiplied when negative), then OpenAI's frequency
and presence penalties (subtracted: times the token's count in the output, and once if it occurs there).
The output is every token after the prompt, spliced ones included. Rows that ask for none keep their
logits; budget masks come later (the sampler's), so no bias or penalty can bring back an end of
thinking the budget forbids.

A sequence's counts live on the logits' device beside it (`TokenCounts`) and take only the tokens added
since the last step, so a step's cost does not grow with the thinking's length."""
import torch


class TokenCounts:
    """One sequence's counts for its penalties: how often each id occurs in its output, and which ids occur
    in its prompt or output; `counted` tokens of it are in them. The engine drops them (to be counted
    again) when an edit reaches counted tokens (a spelled end of thinking replaced by a splice)."""

    __slots__ = ("counted", "output", "seen", "bias")

    def __init__(self, prompt: list[int], width: int, device: torch.device):
        self.counted = len(prompt)
        self.output = torch.zeros(width, device=device)
        self.seen = torch.zeros(width, dtype=torch.bool, device=device)
        self.seen[_long(prompt, device)] = True
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None  # logit_bias as (ids, values), built once

    def copy(self) -> "TokenCounts":
        """The counts for a fork, which holds the same tokens."""
        twin = object.__new__(TokenCounts)
        twin.counted, twin.output, twin.seen, twin.bias = self.counted, self.output.clone(), self.seen.clone(), self.bias
        return twin

    def update(self, token_ids: list[int]) -> None:
        """Count the sequence's tokens past `counted`."""
        new = token_ids[self.counted:]
        if new:
            ids = _long(new, self.output.device)
            self.output.index_put_((ids,), torch.ones(len(new), device=ids.device), accumulate=True)
            self.seen[ids] = True
            self.counted = len(token_ids)


def penalize(logits: torch.Tensor, seqs: list) -> torch.Tensor:
    """logits [B, >= vocab] of the sequences (engine.sequence.Sequence: params, token_ids,
    num_prompt_tokens, token_counts), with each row's adjustments (fp32, a copy) or, when no row has any,
    the logits as they are."""
    rows = [i for i, seq in enumerate(seqs) if seq.params.penalizes]
    if not rows:
        return logits
    x = logits.to(torch.float32, copy=True)
    picked = [seqs[i] for i in rows]
    counts = [_counts(seq, x.shape[1], x.device) for seq in picked]
    params = [seq.params for seq in picked]
    sub = x[rows]
    biased = [(r, c.bias) for r, (p, c) in enumerate(zip(params, counts)) if p.logit_bias]
    if biased:
        row = torch.cat([torch.full_like(ids, r) for r, (ids, _) in biased])
        ids, values = (torch.cat(parts) for parts in zip(*(bias for _, bias in biased)))
        sub.index_put_((row, ids), values, accumulate=True)
    if any(p.repetition_penalty != 1 for p in params):
        seen = torch.stack([c.seen for c in counts])
        penalty = torch.tensor([p.repetition_penalty for p in params], device=x.device)[:, None]
        sub = torch.where(seen, torch.where(sub > 0, sub / penalty, sub * penalty), sub)  # as transformers rounds
    if any(p.frequency_penalty or p.presence_penalty for p in params):
        output = torch.stack([c.output for c in counts])
        frequency = torch.tensor([p.frequency_penalty for p in params], device=x.device)[:, None]
        presence = torch.tensor([p.presence_penalty for p in params], device=x.device)[:, None]
        sub = sub - frequency * output - presence * (output > 0)
    x[rows] = sub
    return x


def _counts(seq, width: int, device: torch.device) -> TokenCounts:
    counts = seq.token_counts
    if counts is None or counts.output.device != device or len(counts.output) != width:
        counts = seq.token_counts = TokenCounts(seq.token_ids[: seq.num_prompt_tokens], width, device)
    counts.update(seq.token_ids)
    if seq.params.logit_bias and counts.bias is None:
        bias = seq.params.logit_bias
        counts.bias = (_long(list(bias), device), torch.tensor(list(bias.values()), dtype=torch.float32).to(device))
    return counts


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)
