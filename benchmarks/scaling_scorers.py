"""Best-of-N scorers: a score per sample of one question, higher is better."""
import math
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.evalsets import EvalItem, prompt_text
from engine import Output

Scorer = Callable[[EvalItem, list[Output]], list[float]]


def answer_tokens(output: Output) -> list[int]:
    """Indices in `token_ids` of the sampled answer: the last `num_answer_tokens` before any final stop id."""
    end = len(output.token_ids) - isinstance(output.stop_reason, int)
    return list(range(end - output.num_answer_tokens, end))


def mean_answer_logprob(item: EvalItem, outputs: list[Output]) -> list[float]:
    """Mean log-probability of each sample's answer tokens (-inf for an empty answer); needs logprobs=0."""
    scores = []
    for output in outputs:
        if output.logprobs is None:
            raise ValueError("the logprob scorer needs outputs generated with SamplingParams(logprobs=0)")
        picked = [output.logprobs[i][output.token_ids[i]] for i in answer_tokens(output)]
        scores.append(sum(picked) / len(picked) if picked else -math.inf)
    return scores


class RewardModel:
    """Any dir that transformers loads as AutoModelForSequenceClassification: the first logit of
    (question, the sample's full output) as a chat, or as plain text when the tokenizer has no chat template.
    A text longer than the model takes (its tokenizer's or its positions' limit) loses its start, not the
    answer at its end."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a reward model from {path}: {e}") from e
        self.device = device
        # a tokenizer may leave its limit unset (transformers then says 1e30): the positions bound it
        limits = [n for n in (self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 1 << 32]
        self.max_length = min(limits) if limits else None
        self.tokenizer.truncation_side = "left"

    def text(self, item: EvalItem, output: Output) -> str:
        messages = [{"role": "user", "content": prompt_text(item)}, {"role": "assistant", "content": output.text}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{messages[0]['content']}\n\n{output.text}"

    @torch.no_grad()
    def __call__(self, item: EvalItem, outputs: list[Output]) -> list[float]:
        scores = []
        for output in outputs:
            inputs = self.tokenizer(self.text(item, output), return_tensors="pt", truncation=True,
                                    max_length=self.max_length).to(self.device)
            scores.append(self.model(**inputs).logits[0, 0].float().item())
        return scores


def make_scorer(spec: str, device: str = "cpu") -> Scorer:
    """"logprob" (the built-in) or a reward model dir."""
    if spec == "logprob":
        return mean_answer_logprob
    if not Path(spec).is_dir():
        raise ValueError(f"--scorer must be 'logprob' or a reward model dir; {spec!r} is neither")
    return RewardModel(spec, device)
