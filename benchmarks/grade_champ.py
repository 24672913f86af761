"""The grader on real answers: every CHAMP teacher summary (a model's one-sentence final answer) graded
against its problem's answer, as curation's CHAMP pool grades them.

    python -m benchmarks.grade_champ [--out grades.json] [--compare other.json] [--limit N]

Prints how many summaries and how many problems grade correct; --out writes each grade (to compare two
versions of benchmarks/grading.py: run one in a git worktree of the other commit), --compare lists what
changed against such a file.
"""
import argparse
import json
import random
import sys

from tqdm import tqdm

from benchmarks.grading import grade
from curate.champ_pool import teacher_candidates


def grade_all(limit: int | None = None, progress: bool = True) -> dict[str, list]:
    """{problem id|conversation key: [summary, answer, correct]} over the first `limit` problems (None: all)."""
    import champ_dataset

    problems = list(champ_dataset.load("v0").problems.values())[:limit]
    grades = {}
    for problem in tqdm(problems, desc="grading", unit="problem", disable=not progress):
        for key, _, summary in teacher_candidates(problem):
            grades[f"{problem.identifier}|{key}"] = [summary, problem.answer, grade(summary, problem.answer)]
    return grades


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grade_champ", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write every grade to this JSON file")
    p.add_argument("--compare", help="a file --out wrote (another grader): count and show what changed")
    p.add_argument("--show", type=int, default=10, help="changed summaries to print each way")
    p.add_argument("--limit", type=int, help="the first N problems only")
    args = p.parse_args(argv)
    grades = grade_all(args.limit)
    correct = [k for k, (_, _, ok) in grades.items() if ok]
    print(f"{len(correct)} of {len(grades)} summaries graded correct; "
          f"{len({k.split('|')[0] for k in correct})} of {len({k.split('|')[0] for k in grades})} problems have one")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(grades, f)
    if args.compare:
        with open(args.compare) as f:
            other = json.load(f)
        lost = [k for k in grades if k in other and other[k][2] and not grades[k][2]]
        gained = [k for k in grades if k in other and grades[k][2] and not other[k][2]]
        print(f"against {args.compare}: {len(gained)} now correct, {len(lost)} no longer")
        sample = random.Random(0)
        for name, keys in (("now correct", gained), ("no longer", lost)):
            for k in sample.sample(keys, min(args.show, len(keys))):
                print(f"  {name}: {grades[k][0][:150]!r} | answer {grades[k][1][:40]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
