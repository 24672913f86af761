"""Tokenizer wrapper and the think formats (data, not code paths)."""
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.budget import BudgetTokens, ThinkingBudget
from engine.text import check_unicode


@dataclass(frozen=True)
class ThinkFormat:
    """How thinking is delimited inside an assistant turn.

    The assistant turn's content is `think_start + thinking + think_end + answer`. Thinking ends when
    the model emits `end_marker` (the start of `think_end`) or EOS.
    """

    name: str
    think_start: str
    think_end: str
    end_marker: str

    def render(self, thinking: str, answer: str) -> str:
        return f"{self.think_start}{thinking}{self.think_end}{answer}"


THINK_FORMATS = {
    "s1": ThinkFormat("s1", think_start="<|im_start|>think\n", think_end="<|im_start|>answer\n", end_marker="<|im_start|>"),
    "r1": ThinkFormat("r1", think_start="<think>\n", think_end="</think>\n\n", end_marker="</think>"),
}
THINK_FORMATS["qwen3"] = THINK_FORMATS["r1"]


def get_think_format(name: str) -> ThinkFormat:
    if name not in THINK_FORMATS:
        raise ValueError(f"unknown think format {name!r}; choose one of {sorted(THINK_FORMATS)}")
    return THINK_FORMATS[name]


CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Tokenizer:
    """The model's tokenizer plus what the engine needs from it: EOS ids, the real vocab size, chat."""

    def __init__(self, path: str | Path, extra_eos_ids: tuple[int, ...] = ()):
        try:
            self.hf: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:  # transformers raises many kinds; the user needs the path
            raise ValueError(f"cannot load a tokenizer from {path}: {e}") from e
        eos = {i for i in extra_eos_ids if i is not None}
        if self.hf.eos_token_id is not None:
            eos.add(self.hf.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self.vocab_size = len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        check_unicode(text, "the text to tokenize")
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def encode_piece(self, text: str) -> list[int]:
        """Tokens of a piece spliced mid-sequence (no BOS)."""
        return self.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=False)

    def decode_token(self, token_id: int) -> str:
        return self.hf.decode([token_id], skip_special_tokens=False)

    def budget_tokens(self, think_format: str, budget: ThinkingBudget, ignore_eos: bool) -> BudgetTokens:
        """The ids budget forcing uses: one-token end ids (the marker when it is one added token, EOS unless
        ignored) or the marker's text, the delimiter, the final-answer and ignore splices."""
        fmt = get_think_format(think_format)
        marker_ids = self.encode_piece(fmt.end_marker)
        one_token = len(marker_ids) == 1 and marker_ids[0] in self.hf.added_tokens_decoder
        end_ids = set() if ignore_eos else set(self.eos_token_ids)
        if one_token:
            end_ids.add(marker_ids[0])
        return BudgetTokens(
            end_ids=frozenset(end_ids),
            marker=None if one_token else fmt.end_marker,
            delimiter=tuple(self.encode_piece(fmt.think_end)),
            delimiter_text=fmt.think_end,
            final_answer=tuple(self.encode_piece(budget.final_answer_str or "")),
            ignore=tuple(self.encode_piece(budget.ignore_str)),
            decode=self.decode,
            encode=self.encode_piece,
        )
