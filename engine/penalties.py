"""Logit adjustments a request asks for before its token is drawn, in vLLM's order: `logit_bias` (added
to its tokens' logits), then the repetition penalty of CTRL and transformers (a logit of a token in the
prompt or the output is divided by it when positive, multiplied when not), then OpenAI's frequency and
presence penalties (subtracted: times the token's count in the output, and once if it occurs there).
The output is every token after the prompt, spliced ones included. Rows that ask for none keep their
logits; budget masks come later (the sampler's), so no bias or penalty can bring back an end of
thinking the budget forbids."""
from itertools import chain

import torch

from engine.sampling import SamplingParams


def penalize(logits: torch.Tensor, params: list[SamplingParams], histories: list[tuple[list[int], int]]) -> torch.Tensor:
    """logits [B, >= vocab] with each row's adjustments (fp32, a copy) or, when no row has any, the logits
    as they are. histories[i]: row i's tokens (prompt + output) and its number of prompt tokens."""
    rows = [i for i, p in enumerate(params) if p.penalizes]
    if not rows:
        return logits
    x = logits.to(torch.float32, copy=True)
    device, width = x.device, x.shape[1]
    picked = [params[i] for i in rows]
    sub = x[rows]
    bias = [(r, token, value) for r, p in enumerate(picked) for token, value in (p.logit_bias or {}).items()]
    if bias:
        r, token, value = zip(*bias)
        sub.index_put_((_long(r, device), _long(token, device)), torch.tensor(value, dtype=torch.float32, device=device), accumulate=True)
    if any(p.repetition_penalty != 1 for p in picked):
        seen = _hits([histories[i][0] for i in rows], width, device) > 0  # prompt and output
        penalty = torch.tensor([p.repetition_penalty for p in picked], device=device)[:, None]
        sub = torch.where(seen, torch.where(sub > 0, sub / penalty, sub * penalty), sub)
    if any(p.frequency_penalty or p.presence_penalty for p in picked):
        counts = _hits([histories[i][0][histories[i][1]:] for i in rows], width, device)
        frequency = torch.tensor([p.frequency_penalty for p in picked], device=device)[:, None]
        presence = torch.tensor([p.presence_penalty for p in picked], device=device)[:, None]
        sub = sub - frequency * counts - presence * (counts > 0)
    x[rows] = sub
    return x


def _hits(token_lists: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    """[len(token_lists), width] fp32: how often each id occurs in each list."""
    counts = torch.zeros(len(token_lists), width, device=device)
    lengths = torch.tensor([len(tokens) for tokens in token_lists])
    row = torch.repeat_interleave(torch.arange(len(token_lists)), lengths).to(device)
    ids = _long(list(chain.from_iterable(token_lists)), device)
    return counts.index_put_((row, ids), torch.ones(len(ids), device=device), accumulate=True)


def _long(values, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)
