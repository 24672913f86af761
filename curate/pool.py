"""The pool: rows of question + reference + reasoning trace, read from JSONL (ours or s1's column names) or CHAMP."""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from engine.jsonl import read_objects

# Column names accepted for each field, first present wins; s1's 59K / s1K / s1K-1.1 names included.
TRACE_COLUMNS = ("trace", "thinking", "thinking_trajectories", "thinking_trajectory",
                 "deepseek_thinking_trajectory", "gemini_thinking_trajectory")
ATTEMPT_FOR_TRACE = {"deepseek_thinking_trajectory": "deepseek_attempt", "gemini_thinking_trajectory": "gemini_attempt"}
SOURCE_COLUMNS = ("source", "source_type")
REQUIRED = ("question", "answer", "trace", "attempt")


class PoolError(ValueError):
    """A pool that cannot be read; the message names the file and line."""


@dataclass(slots=True)
class PoolRow:
    id: str
    question: str | None
    answer: str | None  # the reference: a final answer, or a full solution (s1's `solution`)
    trace: str | None  # the thinking
    attempt: str | None  # the final text after the thinking
    source: str = ""
    domain: str | None = None
    error: str | None = None
    solution: str | None = None  # the full reference solution when the pool has one (s1K's `solution`)
    cot_type: str = "math"
    metadata: dict = field(default_factory=dict)  # carried through to selected.jsonl
    trace_tokens: int | None = None  # set by the difficulty stage
    drop_reason: str | None = None  # set by the stage that drops the row

    @property
    def question_hash(self) -> str:
        return question_hash(self.question or "")

    def missing_fields(self) -> list[str]:
        return [name for name in REQUIRED if not (isinstance(getattr(self, name), str) and getattr(self, name).strip())]


def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def _text(value) -> str | None:
    """A string field; s1's trajectories come as a list of strings (one per trajectory, joined here)."""
    if value is None:
        return None
    if isinstance(value, list):
        return "\n\n".join(str(v) for v in value) if value else None
    return value if isinstance(value, str) else str(value)


def row_from_record(record: dict, default_id: str) -> PoolRow:
    trace_column = next((c for c in TRACE_COLUMNS if record.get(c) not in (None, "", [])), None)
    trace = _text(record.get(trace_column)) if trace_column else None
    attempt_column = ATTEMPT_FOR_TRACE.get(trace_column, "attempt")
    solution = _text(record.get("solution"))
    answer = _text(record.get("answer")) or solution
    metadata = record.get("metadata")
    if isinstance(metadata, str):  # s1 stores metadata as the str() of a dict
        metadata = {"original": metadata}
    return PoolRow(
        id=str(record.get("id", default_id)),
        question=_text(record.get("question")),
        answer=answer,
        trace=trace,
        attempt=_text(record.get(attempt_column)),
        source=_text(next((record[c] for c in SOURCE_COLUMNS if record.get(c)), "")) or "",
        domain=_text(record.get("domain")) or None,
        error=_text(record.get("error")) or None,
        solution=solution,
        cot_type=_text(record.get("cot_type")) or "math",
        metadata=dict(metadata or {}),
    )


def read_pool_jsonl(path: str | Path) -> list[PoolRow]:
    path = Path(path)
    if not path.is_file():
        raise PoolError(f"pool file {path} does not exist; pass a JSONL file or 'champ'")
    records = list(read_objects(path, PoolError))
    if not records:
        raise PoolError(f"{path}: no records; the pool is empty")
    if not any(record.get("question") for _, record in records):
        raise PoolError(f"{path}: no record has a 'question' (the first has {sorted(records[0][1])}); "
                        "see curate/README.md for the pool's columns")
    return [row_from_record(record, default_id=f"{path.stem}-{line_no}") for line_no, record in records]


def load_pool(name_or_path: str, progress: bool = True) -> list[PoolRow]:
    if name_or_path == "champ":
        from curate.champ_pool import champ_pool
        return champ_pool(progress=progress)
    return read_pool_jsonl(name_or_path)
