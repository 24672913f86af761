"""CHAMP as a pool: 270 problems, each with 4 teacher models x 18 prompt settings of solution texts.

The trace rule: a problem's candidates are its teachers' solutions (the model message that answers the problem;
the one-sentence summary that follows is the attempt), leaving out
  - solutions cut off by the API (CHAMP marks them LENGTH_CURRENT; their summary is missing), and
  - the partial-solution settings, whose solution continues a given partial solution and so does not stand
    alone as a trace for the bare question.
The trace is the longest (in characters) correct candidate; ties go to the first in CHAMP's order. Correct means
its summary grades correct against CHAMP's answer (benchmarks.grading, which cannot judge sentence answers such
as "No such values"), or a CHAMP annotator found no wrong step in the solution (CHAMP's first-wrong-step
annotations cover two solutions per problem). A problem with no correct candidate keeps its longest
candidate but carries the error "no_correct_teacher_trace", so the quality stage drops it and the funnel counts it.

Grading runs longest first and stops at the first correct one; the built pool is cached as JSONL under the
engine's cache dir (a few minutes to build, instant after).
"""
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from tqdm import tqdm

from curate.pool import PoolRow
from engine.jsonl import read_objects

EXCLUDED_SETTINGS = frozenset({"1/3 Soln", "2/3 Soln"})
NO_CORRECT_TRACE = "no_correct_teacher_trace"


def teacher_candidates(problem) -> list[tuple[str, str, str]]:
    """(conversation key, solution, summary) for each usable teacher conversation of a CHAMP problem."""
    candidates = []
    for key, conversation in problem.conversations.items():
        if key.split("|")[1] in EXCLUDED_SETTINGS:
            continue
        solution, summary = [m for m in conversation.messages if m.role.startswith("Model.")][-2:]
        if solution.error or summary.error or not solution.text or not summary.text:
            continue
        candidates.append((key, solution.text.strip(), summary.text.strip()))
    return candidates


def pick_trace(problem, grade_fn: Callable) -> PoolRow:
    """The problem as a pool row with its trace picked by the rule above."""
    candidates = sorted(teacher_candidates(problem), key=lambda c: -len(c[1]))  # stable: ties keep CHAMP's order
    verified = {key for key, a in (problem.fws_annotations or {}).items() if a.start_idx is None}
    correct = next((c for c in candidates if c[0] in verified or grade_fn(c[2], problem.answer)), None)
    key, trace, attempt = correct or (candidates[0] if candidates else (None, None, None))
    return PoolRow(id=problem.identifier, question=problem.text, answer=problem.answer, trace=trace, attempt=attempt,
                   source="champ", domain=problem.category, solution=_reference_solution(problem),
                   error=None if correct else NO_CORRECT_TRACE,
                   metadata={"teacher": key, "candidates": len(candidates)})


def _reference_solution(problem) -> str:
    steps = problem.solution.steps if problem.solution and problem.solution.steps else []
    return "\n".join(step.text for step in steps) or problem.answer


GRADE_TIMEOUT_S = 2.0  # some symbolic answers ("(2n)!/(2^n*n!)") take sympy longer; those count as not equal


def champ_cache_path() -> Path:
    """Named by a digest of the rule's source and the grader's version, so that a pool built by another
    version of either is never reused."""
    from benchmarks.grading import grader_version
    from engine.weights import cache_dir

    digest = hashlib.sha256(Path(__file__).read_bytes() + grader_version().encode())
    return cache_dir() / "curate" / f"champ_pool_{digest.hexdigest()[:16]}.jsonl"


def champ_pool(grade_fn: Callable | None = None, progress: bool = True, limit: int | None = None,
               cache_path: Path | None = None) -> list[PoolRow]:
    """CHAMP's problems as pool rows; the full pool (limit None, the shared grader) is cached."""
    import champ_dataset
    use_cache = grade_fn is None and limit is None
    cache_path = cache_path or champ_cache_path()
    if use_cache and cache_path.is_file():
        return [PoolRow(**row) for _, row in read_objects(cache_path, ValueError)]
    if grade_fn is None:
        from benchmarks.grading import grade
        grade_fn = partial(grade, timeout_s=GRADE_TIMEOUT_S)
    problems = list(champ_dataset.load("v0").problems.values())[:limit]
    rows = [pick_trace(p, grade_fn) for p in tqdm(problems, desc="CHAMP traces", unit="problem", disable=not progress)]
    if use_cache:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(cache_path)
    return rows
