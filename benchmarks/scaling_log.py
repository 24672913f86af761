"""A samples file that survives interruption: whole questions are appended and flushed; on reopening, a
half-written last line, or a question whose rows were not all written, is dropped (the file is rewritten
without it) so that the question runs again. A whole line that is not JSON was not written here: it is
reported, never dropped with the rows after it."""
import json
import os
from pathlib import Path

from engine.jsonl import read_objects


class SampleLog:
    def __init__(self, path: Path, rows_per_question: int):
        self.path = path
        self.rows_per_question = rows_per_question
        rows = self._complete_rows()
        self.done = {row["id"] for row in rows}

    def _complete_rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        rows = []
        for line_no, line in enumerate(raw.split(b"\n")[:-1], 1):  # a last piece without its newline is torn
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) and "id" in row else "not an object with an id"
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                problem = str(e)
            if problem is not None:
                raise ValueError(f"{self.path}:{line_no} is not a sample row ({problem}); fix or delete that line "
                                 "(its question then runs again)")
            rows.append(row)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["id"]] = counts.get(row["id"], 0) + 1
        kept = [row for row in rows if counts[row["id"]] == self.rows_per_question]
        if len(kept) < len(rows) or not raw.endswith(b"\n") and raw:
            self.rewrite(kept)
        return kept

    def order_by(self, ids: list[str]) -> None:
        """Put the rows in the order of `ids` (questions not among them last, as they are)."""
        rank = {question: i for i, question in enumerate(ids)}
        rows = read_rows(self.path) if self.path.exists() else []
        ordered = sorted(rows, key=lambda row: rank.get(row["id"], len(rank)))  # stable: samples keep their order
        if ordered != rows:
            self.rewrite(ordered)

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the file's rows at once (a crash leaves the old file or the new one)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())
        self.done.update(row["id"] for row in rows)


def read_rows(path: Path) -> list[dict]:
    """The file's rows, split at newlines only: a row's text may hold other line separators (U+2028, U+0085)."""
    return [row for _, row in read_objects(path, ValueError)]
