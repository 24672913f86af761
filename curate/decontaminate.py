"""Decontamination: a question that shares one word 8-gram with an eval question is dropped; so is one that
holds a shorter eval question whole (MATH-500 has questions of two words), or is held whole by one."""
from collections.abc import Iterable

from tqdm import tqdm

from curate.funnel import StageResult, drop
from curate.pool import PoolRow

NGRAM = 8


def word_ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class EvalOverlap:
    """The eval questions' word n-grams (lowercased, split on any whitespace), and whole short questions."""

    def __init__(self, questions: Iterable[str], n: int = NGRAM):
        self.n = n
        self.questions = [words for q in questions if (words := q.lower().split())]
        self.grams = set().union(*(word_ngrams(w, n) for w in self.questions))
        self.short = {tuple(w) for w in self.questions if len(w) < n}
        self._grams_by_length: dict[int, set[tuple[str, ...]]] = {n: self.grams}

    def hits(self, question: str) -> bool:
        """Whether the question shares an n-gram with an eval question, or one of the two holds the other
        whole when it is shorter than n words."""
        words = question.lower().split()
        if not words:
            return False
        if len(words) < self.n and tuple(words) in self._grams_of_length(len(words)):  # held whole by one
            return True
        if word_ngrams(words, self.n) & self.grams:
            return True
        return any(gram in self.short for m in {len(s) for s in self.short} for gram in word_ngrams(words, m))

    def _grams_of_length(self, m: int) -> set[tuple[str, ...]]:
        if m not in self._grams_by_length:
            self._grams_by_length[m] = set().union(*(word_ngrams(w, m) for w in self.questions))
        return self._grams_by_length[m]

    def __len__(self) -> int:
        return len(self.grams) + len(self.short)


def decontaminate(rows: list[PoolRow], eval_questions: list[str], n: int = NGRAM,
                  progress: bool = False) -> StageResult:
    overlap = EvalOverlap(eval_questions, n)
    kept, dropped = [], []
    for row in tqdm(rows, desc="decontaminating", unit="q", disable=not progress):
        if overlap.hits(row.question):
            dropped.append(drop(row, f"shares_{n}gram_with_eval"))
        else:
            kept.append(row)
    return StageResult("decontamination", kept, dropped,
                      note=f"{len(eval_questions)} eval questions, {len(overlap.grams)} distinct {n}-grams, "
                           f"{len(overlap.short)} shorter questions matched whole")
