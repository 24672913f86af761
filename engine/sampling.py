"""SamplingParams and the sampler: logits -> one token per sequence."""
import math
from dataclasses import dataclass

import torch

from engine.budget import ThinkingBudget
from engine.text import check_unicode
from engine.tokenizer import THINK_FORMATS


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and stops.

    Stop strings and stop token ids apply in the answer phase only: while a budget keeps the request
    thinking they are ignored, since a stop inside thinking would cut the thinking short.

    `n` samples share the prompt's KV: sample i of a request seeded s draws the random numbers of a
    request with n=1 and seed s+i (its tokens are equal unless a draw lands within rounding of a cdf
    step: logits differ in their last bits between batch shapes). `logprobs=k` returns, per sampled token, its log-probability and the k most likely
    tokens', from the model's raw logits (before penalties, temperature, top-k/top-p and budget masks).
    `prompt_logprobs=k` returns the same for every prompt token after the first (None for the first),
    each given the tokens before it; those prompt positions are computed, not taken from the prefix cache.
    With it, `max_tokens=0` scores the prompt and generates nothing.

    `logit_bias` ({token id: bias in [-100, 100]}), `repetition_penalty` (> 0; 1 is none) and OpenAI's
    `presence_penalty` and `frequency_penalty` (in [-2, 2]) adjust the logits before temperature, top-k
    and top-p, greedy rows included (see engine.penalties); budget masks still win over them.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    budget: ThinkingBudget | None = None
    think_format: str = "s1"
    n: int = 1
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None

    def __post_init__(self):
        if not _is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise ValueError(f"logprobs must be None or a non-negative integer, got {self.logprobs!r}")
        if self.prompt_logprobs is not None and (not _is_int(self.prompt_logprobs) or self.prompt_logprobs < 0):
            raise ValueError(f"prompt_logprobs must be None or a non-negative integer, got {self.prompt_logprobs!r}")
        if not (_is_number(self.temperature) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0 and finite, got {self.temperature!r}")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):  # also false for nan
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 and an integer (0 disables it), got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= 2**64 - self.n):
            raise ValueError(f"seed must be None or an integer in [0, 2**64 - n] (sample i uses seed + i), got {self.seed!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 0:
            raise ValueError(f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")
        if self.max_tokens == 0 and self.prompt_logprobs is None:
            raise ValueError("max_tokens is 0, which only scores the prompt: it needs prompt_logprobs "
                             "(else max_tokens must be positive)")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        if self.think_format not in THINK_FORMATS:
            raise ValueError(f"unknown think format {self.think_format!r}; choose one of {sorted(THINK_FORMATS)}")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        for s in stops:
            check_unicode(s, "stop")
        if not isinstance(self.stop_token_ids, (list, tuple)):
            raise TypeError(f"stop_token_ids must be a list or tuple of token ids, got {self.stop_token_ids!r}")
        bad = [t for t in self.stop_token_ids if not (_is_int(t) and t >= 0)]
        if bad:
            raise ValueError(f"stop_token_ids must be non-negative integers, got {bad[0]!r}")
        if self.budget is not None and not isinstance(self.budget, ThinkingBudget):
            raise TypeError(f"budget must be a ThinkingBudget, got {type(self.budget).__name__}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise ValueError(f"{name} must be a number in [-2, 2], got {value!r}")
        fp32 = torch.finfo(torch.float32)  # logits are adjusted in fp32
        if not _is_number(self.repetition_penalty) or not fp32.tiny <= self.repetition_penalty <= fp32.max:
            raise ValueError(f"repetition_penalty must be a positive number in fp32's normal range (1: none), "
                             f"got {self.repetition_penalty!r}")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise TypeError(f"logit_bias must be a dict of token id -> bias, got {type(self.logit_bias).__name__}")
            bad = [(t, b) for t, b in self.logit_bias.items() if not (_is_int(t) and t >= 0 and _is_number(b) and -100 <= b <= 100)]
            if bad:
                raise ValueError(f"logit_bias maps non-negative token ids to biases in [-100, 100], got {bad[0][0]!r}: {bad[0][1]!r}")
            object.__setattr__(self, "logit_bias", dict(self.logit_bias))  # the caller's dict may change later

    @property
    def penalizes(self) -> bool:
        """Whether any logit adjustment applies (engine.penalties)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1 or self.logit_bias)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:  # nan fails every range check that uses it
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


def _mix64(z: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit ints whose outputs pass as independent."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform(seed: int, draw: int) -> float:
    """Number `draw` in [0, 1) of the random stream of `seed` (53 random bits): splitmix64 at the stream's
    mixed seed plus draw + 1 steps. Keyed by the draw's index rather than held as a generator's state, a
    sequence's draw depends only on its seed and how many tokens it has sampled: a step that fails after
    drawing, taken again, draws the same."""
    return (_mix64((_mix64(seed & _MASK64) + (draw + 1) * _GOLDEN) & _MASK64) >> 11) * 2.0**-53


class Sampler:
    """Picks one token per row through the selected ops' sampler (kernels.reference.sample's contract):
    budget masks and vocabulary padding, temperature, top-k, top-p, greedy rows. A random row's draw is
    one uniform number, `uniform(seed, draw)` of its sequence's seed and draw index, so a request's random
    stream depends only on its seed, never on the batch it ran in. The logits themselves may differ in
    their last bits between batch sizes (matmuls round by shape), which in bf16 can flip a draw that
    lands near a cdf step or a greedy near-tie."""

    def __init__(self, vocab_size: int, sample_fn):
        self.vocab_size = vocab_size  # ids at or above it are padded embedding rows, never sampled
        self.sample_fn = sample_fn

    def __call__(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        draws: list[tuple[int, int]],  # per row: (seed, index of the draw)
        masked_ids: list[frozenset[int]],
    ) -> list[int]:
        # built as Python lists, one tensor each: a tensor write per row costs more than the row's work
        width = 1 << (max(1, *map(len, masked_ids)) - 1).bit_length()  # a power of two: few kernel variants
        masked = [sorted(ids) + [-1] * (width - len(ids)) for ids in masked_ids]
        numbers = [uniform(*draw) if p.temperature > 0 else 0.0 for p, draw in zip(params, draws)]
        top_k = [min(p.top_k, self.vocab_size) for p in params]  # any k past the vocabulary keeps all of it
        host = (torch.tensor([p.temperature for p in params]), torch.tensor(top_k),
                torch.tensor([p.top_p for p in params]), torch.tensor(numbers, dtype=torch.float64),
                torch.tensor(masked, dtype=torch.long))
        temperature, top_k, top_p, numbers, masked = (t.to(logits.device, non_blocking=True) for t in host)
        return self.sample_fn(logits, self.vocab_size, temperature, top_k, top_p, numbers, masked).tolist()
