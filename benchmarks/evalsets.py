"""Eval sets: one schema (JSONL `id, question, answer` + optional `domain, choices, source`) and
adapters for the layouts users already have. Nothing is downloaded: CHAMP ships inside the
`champ-dataset` package, the other sets are files the user brings.

Spec: "champ", or a JSONL path in our schema or in the MATH-500 / AIME 2024 / GPQA Diamond layout
(told apart by their columns).
"""
import functools
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.jsonl import read_objects

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    answer: str  # for multiple choice: the letter of the correct option ("A".."D")
    domain: str | None = None
    choices: tuple[str, ...] | None = None  # options in display order, shown as "A) ...", "B) ..."
    source: str | None = None


def prompt_text(item: EvalItem) -> str:
    if not item.choices:
        return item.question
    options = "\n".join(f"{LETTERS[i]}) {choice}" for i, choice in enumerate(item.choices))
    return f"{item.question}\n\n{options}"


def load_eval_set(spec: str, limit: int | None = None, seed: int = 0) -> list[EvalItem]:
    """Items of `spec` in file order; `limit` keeps the first `limit`. `seed` fixes GPQA's option order."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    items = list(_load_champ()) if spec == "champ" else _load_jsonl(Path(spec), seed)
    return items if limit is None else items[:limit]


def write_eval_set(items: Iterable[EvalItem], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            record = {k: v for k, v in asdict(item).items() if v is not None}
            if item.choices is not None:
                record["choices"] = list(item.choices)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


@functools.cache  # parsing CHAMP's JSON takes seconds; the items are immutable
def _load_champ() -> tuple[EvalItem, ...]:
    try:
        import champ_dataset
    except ImportError as e:
        raise ImportError("spec 'champ' needs the champ-dataset package: pip install champ-dataset") from e
    problems = champ_dataset.load("v0").problems.values()
    return tuple(EvalItem(p.identifier, p.text, p.answer, domain=p.category, source="champ") for p in problems)


def _load_jsonl(path: Path, seed: int) -> list[EvalItem]:
    if not path.is_file():
        raise FileNotFoundError(f"eval set {str(path)!r} is neither 'champ' nor an existing JSONL file")
    items, first_line_of = [], {}
    for line_no, record in read_objects(path, ValueError):
        where = f"{path}:{line_no}"
        item = _adapter_for(record, where)(record, where, seed)
        if item.id in first_line_of:
            raise ValueError(f"{where}: id {item.id!r} already used on line {first_line_of[item.id]}; ids must be "
                             "unique (results are keyed by them)")
        first_line_of[item.id] = line_no
        items.append(item)
    return items


def _ours(r: dict, where: str, seed: int) -> EvalItem:
    choices = r.get("choices")
    if choices is not None and (not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS)):
        raise ValueError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} option texts")
    for field in ("domain", "source"):  # labels that summaries group by
        if r.get(field) is not None and not isinstance(r[field], str):
            raise ValueError(f"{where}: '{field}' must be a string, got {type(r[field]).__name__}")
    item = EvalItem(
        id=_text(r, "id", where), question=_text(r, "question", where), answer=_text(r, "answer", where),
        domain=r.get("domain"), choices=tuple(map(str, choices)) if choices else None, source=r.get("source"),
    )
    if item.choices and item.answer not in LETTERS[: len(item.choices)]:
        last = LETTERS[len(item.choices) - 1]
        raise ValueError(f"{where}: with 'choices', 'answer' must be an option letter A..{last}, got {item.answer!r}")
    return item


def _math500(r: dict, where: str, seed: int) -> EvalItem:
    return EvalItem(_text(r, "unique_id", where), _text(r, "problem", where), _text(r, "answer", where),
                    domain=r.get("subject"), source="math500")


def _aime24(r: dict, where: str, seed: int) -> EvalItem:
    return EvalItem(_text(r, "ID", where), _text(r, "Problem", where), _text(r, "Answer", where), source="aime24")


def _gpqa(r: dict, where: str, seed: int) -> EvalItem:
    record_id = _text(r, "Record ID", where)
    correct = _text(r, "Correct Answer", where)
    options = [correct] + [_text(r, f"Incorrect Answer {i}", where) for i in (1, 2, 3)]
    # A string seed hashes the same in every process (unlike hash()), so the order is reproducible.
    random.Random(f"{seed}:{record_id}").shuffle(options)
    return EvalItem(record_id, _text(r, "Question", where), LETTERS[options.index(correct)],
                    domain=r.get("High-level domain"), choices=tuple(options), source="gpqa_diamond")


_ADAPTERS: dict[str, tuple[frozenset[str], Callable[[dict, str, int], EvalItem]]] = {
    "our schema": (frozenset({"id", "question", "answer"}), _ours),
    "MATH-500": (frozenset({"problem", "answer", "unique_id"}), _math500),
    "AIME 2024": (frozenset({"ID", "Problem", "Answer"}), _aime24),
    "GPQA Diamond": (frozenset({"Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                "Incorrect Answer 3", "Record ID"}), _gpqa),
}


def _adapter_for(record: dict, where: str) -> Callable[[dict, str, int], EvalItem]:
    for required, adapter in _ADAPTERS.values():
        if required <= record.keys():
            return adapter
    layouts = "; ".join(f"{name}: {', '.join(sorted(cols))}" for name, (cols, _) in _ADAPTERS.items())
    raise ValueError(f"{where}: unknown layout with columns {sorted(record)}; expected the columns of one of {layouts}")


def _text(record: dict, key: str, where: str) -> str:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: {key!r} must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} is {value} (a JSON NaN or Infinity), not an answer or a text")
    text = str(int(value) if isinstance(value, float) and value.is_integer() else value).strip()  # 1e3: "1000"
    if not text:
        raise ValueError(f"{where}: {key!r} is empty")
    return text
