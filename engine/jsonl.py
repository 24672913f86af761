"""JSONL files of objects, read with errors that name the file and line (training data, curation pools,
eval sets all come this way)."""
import codecs
import json
from pathlib import Path


def read_objects(path: Path, error: type[Exception]) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not UTF-8, not JSON or not an
    object raises `error` naming path:line. A leading byte-order mark (editors on Windows write one) is
    skipped."""
    objects = []
    for line_no, raw in enumerate(path.read_bytes().removeprefix(codecs.BOM_UTF8).splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{path}:{line_no}: not UTF-8 text ({e}); save the file as UTF-8") from e
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{line_no}: not valid JSON: {e}") from e
        if not isinstance(record, dict):
            raise error(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        objects.append((line_no, record))
    return objects
