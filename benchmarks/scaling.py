"""Test-time scaling evaluation, s1's methods over eval sets: python -m benchmarks.scaling --data champ --limit 20

Writes samples-<method>-<setting>.jsonl (one line per question and sample), summary.json, summary.md,
scaling.png (accuracy against average thinking tokens, one line per method) and, for parallel sampling,
parallel.png. Rerunning into the same --output resumes: finished (question, setting) pairs are not redone.
"""
import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks.evalsets import EvalItem, load_eval_set
from benchmarks.grading import grader_version, thinking_ended
from benchmarks.scaling_harness import Harness
from benchmarks.scaling_jobs import run_plans
from benchmarks.scaling_log import SampleLog, read_rows
from benchmarks.scaling_methods import (BudgetForcing, Conditional, Extension, Method, ParallelSampling,
                                        RejectionSampling)
from benchmarks.scaling_report import plot, samples_path, summarize, write_summary
from benchmarks.scaling_scorers import make_scorer
from engine import LLM
from engine.device import DTYPES, resolve_device, resolve_dtype
from engine.tokenizer import THINK_FORMATS

METHODS = ("budget", "ignore", "token", "token-forced", "step", "step-forced", "rejection", "parallel", "best-of-n")


class UsageError(ValueError):
    """A bad flag: reported as `error: ...` with exit status 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF-format model dir (default: the default model)")
    p.add_argument("--data", nargs="+", required=True, help="JSONL eval files, or champ")
    p.add_argument("--limit", type=int, help="first N questions of each set")
    p.add_argument("--output", required=True, help="output dir (rerun into it to resume)")
    p.add_argument("--think-format", choices=sorted(THINK_FORMATS), default="s1")
    p.add_argument("--methods", default="budget", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--budgets", default="500,1000,2000,4000,8000,16000,auto",
                   help="thinking caps (budget); 'auto' = context - prompt - delimiters - 100. "
                        "token, token-forced and rejection use the numeric ones")
    p.add_argument("--steps", default="8,16,32,64", help="step budgets of step and step-forced")
    p.add_argument("--num-ignore", default="1,2,4,6", help="ignore counts of the ignore method")
    p.add_argument("--ignore-str", default="Wait")
    p.add_argument("--final-answer-str", default="Final Answer:", help="spliced after a forced end of thinking")
    p.add_argument("--n", type=int, default=8, help="samples per question (parallel, best-of-n)")
    p.add_argument("--scorer", default="logprob",
                   help="best-of-n: 'logprob' (mean answer log-prob) or a reward model dir")
    p.add_argument("--max-tries", type=int, default=16, help="rejection sampling: samples per question at most")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-tokens", type=int, help="cap on each continuation (default: the context left)")
    p.add_argument("--max-answer-tokens", type=int, default=1024, help="cap on the answer after thinking")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--sample-temperature", type=float, default=1.0, help="rejection, parallel and best-of-n")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=sorted(DTYPES))
    return p.parse_args(argv)


def int_list(text: str, flag: str, allow_auto: bool = False, minimum: int = 0) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if not (v.isascii() and v.isdigit() and int(v) >= minimum) and not (allow_auto and v == "auto")]
    if not values or bad:
        kind = "integers" + (" or auto" if allow_auto else "") + f" >= {minimum}"
        raise UsageError(f"{flag} takes a comma list of {kind}, got {text!r}")
    values = tuple(v if v == "auto" else str(int(v)) for v in values)  # "08" is 8: one run, one name
    if len(set(values)) != len(values):
        raise UsageError(f"{flag} lists a value twice: {text!r}")
    return values


def build_methods(args: argparse.Namespace, device: str = "cpu") -> list[Method]:
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        raise UsageError(f"--methods: unknown {unknown or names!r}; choose from {', '.join(METHODS)}")
    minimums = {"--n": (args.n, 1), "--max-tries": (args.max_tries, 1), "--limit": (args.limit, 1),
                "--max-tokens": (args.max_tokens, 1), "--max-answer-tokens": (args.max_answer_tokens, 0)}
    for flag, (value, minimum) in minimums.items():
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")
    caps = int_list(args.budgets, "--budgets", allow_auto=True)
    numeric = tuple(int(c) for c in caps if c != "auto")
    if not numeric and {"token", "token-forced", "rejection"} & set(names):
        raise UsageError("token, token-forced and rejection need numeric --budgets")
    steps = tuple(int(s) for s in int_list(args.steps, "--steps", minimum=1))
    build = {
        "budget": lambda: BudgetForcing(caps),
        "ignore": lambda: Extension(tuple(int(k) for k in int_list(args.num_ignore, "--num-ignore", minimum=1))),
        "token": lambda: Conditional(numeric, "tokens", forced=False),
        "token-forced": lambda: Conditional(numeric, "tokens", forced=True),
        "step": lambda: Conditional(steps, "steps", forced=False),
        "step-forced": lambda: Conditional(steps, "steps", forced=True),
        "rejection": lambda: RejectionSampling(numeric, args.max_tries),
        "parallel": lambda: ParallelSampling(args.n),
        "best-of-n": lambda: ParallelSampling(args.n, make_scorer(args.scorer, device)),
    }
    return [build[name]() for name in dict.fromkeys(names)]


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    """The questions of every --data set; each item's source names its set, for the summary's accuracy by set:
    the source its rows give, else the file's stem, or the path as given when the stem is ambiguous (two files
    of one name, or a stem that is also a source)."""
    loaded = [(spec, load_eval_set(spec, limit=args.limit, seed=args.seed)) for spec in args.data]
    sources = {item.source for _, set_items in loaded for item in set_items if item.source}
    stems = Counter(Path(spec).stem for spec in args.data)

    def label(spec: str) -> str:
        stem = Path(spec).stem
        return stem if stems[stem] == 1 and stem not in sources else spec

    items = [replace(item, source=item.source or label(spec)) for spec, set_items in loaded for item in set_items]
    seen, duplicates = set(), []
    for item in items:
        if item.id in seen:
            duplicates.append(item.id)
        seen.add(item.id)
    if duplicates:
        raise UsageError(f"question ids repeat across --data ({duplicates[:5]}); give each set distinct ids")
    if not items:
        raise UsageError("--data holds no questions")
    return items


RESULT_FLAGS = ("model", "think_format", "system", "max_tokens", "max_answer_tokens",
                "final_answer_str", "ignore_str", "temperature", "top_p", "top_k", "sample_temperature", "seed",
                "max_tries", "scorer")


def question_digest(item: EvalItem) -> str:
    """What a question's samples depend on: its text and options (a corrected reference answer only regrades)."""
    return hashlib.sha256(json.dumps([item.question, item.choices]).encode()).hexdigest()


def earlier_question_digest(item: EvalItem) -> str:
    """The digest run.json kept per question before 549cdb1 (it also covered the reference answer)."""
    return hashlib.sha256(json.dumps([item.question, item.answer, item.choices]).encode()).hexdigest()


def lock_output(out: Path) -> int:
    """Create and lock the output dir for this run, before the model loads; returns the descriptor that holds
    the lock until it is closed."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as e:
        os.close(lock)
        if isinstance(e, BlockingIOError):
            raise UsageError(f"--output {out} is in use by another run; wait for it or use another dir") from None
        raise
    return lock


def check_record(args: argparse.Namespace, items: list[EvalItem], device: torch.device, dtype: torch.dtype,
                 out: Path) -> dict:
    """What run.json records of what shapes samples: the flags, the engine's device and dtype, and a digest of
    every question by id. Resuming with other flags, or with a question whose text or options changed under its
    id, would mix incomparable samples, so it is refused (before the model loads); other questions (a larger
    --limit, another file) and other methods and settings may join. Samples without a record are refused too
    (their flags are unknown). Returns the record that write_record puts in place once the run starts."""
    record = out / "run.json"
    start_over = "use another dir, or delete run.json and the samples-*.jsonl files there to start over"
    flags = {**{name: getattr(args, name) for name in RESULT_FLAGS}, "device": device.type,
             "dtype": str(dtype).removeprefix("torch.")}
    if not record.exists() and any(out.glob("samples-*.jsonl")):
        raise UsageError(f"--output {out} holds samples but no run.json, so not the flags they were made with; "
                         + start_over)
    try:
        old = json.loads(record.read_text(encoding="utf-8")) if record.exists() else {**flags, "questions": {}}
    except ValueError as e:
        raise UsageError(f"{record} is not valid JSON ({e}); {start_over}") from None
    if not isinstance(old, dict):
        raise UsageError(f"{record} is not a run record; {start_over}")
    if not isinstance(old.get("questions"), dict):  # this morning's record: one digest of the whole set
        asked = json.dumps([[i.id, i.question, i.answer, i.choices] for i in items])
        if old.get("questions_sha256") != hashlib.sha256(asked.encode()).hexdigest():
            raise UsageError(f"{record} is an older record, of one set of questions as a whole: resume once with that "
                             f"run's --data and --limit (later runs may add questions), or {start_over}")
        old["questions"] = {}
    changed = sorted(k for k in flags if old.get(k) != flags[k])
    questions = dict(old["questions"])
    edited = []
    for i in items:
        recorded = questions.setdefault(i.id, question_digest(i))
        if recorded == earlier_question_digest(i):  # recorded before the answer left the digest: the same question
            questions[i.id] = question_digest(i)
        elif recorded != question_digest(i):
            edited.append(i.id)
    if changed or edited:
        what = ("other flags: " + ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r} (now {flags[k]!r})" for k in changed)
                if changed else f"another question under the id {edited[0]!r}")
        raise UsageError(f"--output {out} holds a run made with {what}; resume with the same flags and questions "
                         "or use another dir")
    return {**flags, "questions": questions}


def write_record(out: Path, record: dict) -> None:
    tmp = out / "run.tmp"  # replaced at once: a crash leaves the old record or the new one
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "run.json")


def check_room(h: Harness, methods: list[Method], items: list[EvalItem]) -> None:
    """Refuse a run whose --max-tokens makes the "auto" thinking cap 0 for a question that fits (it would not
    think at all under the methods that use it); warn when the context itself does that (a long question),
    and when a forced cap lies above the "auto" one (thinking then ends by length, maybe before any answer)."""
    prompts = {item.id: h.prompt(item) for item in items}
    fitting = [i for i in items if h.room(prompts[i.id]) > 0]  # the rest are reported when they run
    auto = {i.id: h.auto_cap(prompts[i.id]) for i in fitting}
    users = [m.name for m in methods if m.uses_auto_cap]
    starved = [i for i in fitting if auto[i.id] == 0]
    by_flag = [i for i in starved if h.room(prompts[i.id]) < h.llm.max_model_len - len(prompts[i.id])]
    if users and by_flag:
        raise UsageError(f"--max-tokens {h.max_tokens} leaves {len(by_flag)} of {len(items)} questions no room to "
                         f"think under {', '.join(users)}: the 'auto' cap is the room less the splices and the "
                         f"answer's {h.answer_room()} tokens; raise --max-tokens or lower --max-answer-tokens")
    if users and starved:  # the context itself is the limit: those questions answer without thinking
        ids = ", ".join(i.id for i in starved[:5]) + (", ..." if len(starved) > 5 else "")
        print(f"warning: {len(starved)} question(s) leave no room to think within the context "
              f"({h.llm.max_model_len} tokens) under {', '.join(users)}: {ids}; they answer without thinking there",
              file=sys.stderr)
    for method in methods:
        over = {cap: sum(cap > auto[i.id] for i in fitting) for cap in method.forced_caps}
        over = {cap: n for cap, n in over.items() if n}
        if over:
            caps = ", ".join(f"{cap} ({n} of {len(items)})" for cap, n in over.items())
            print(f"warning: {method.name} caps above the 'auto' cap of some questions: {caps}; their thinking may "
                  "end by length, without an answer (raise --max-tokens or lower the caps)", file=sys.stderr)


def open_logs(method: Method, out: Path) -> dict[str, SampleLog]:
    return {s: SampleLog(samples_path(out, method.name, s), method.rows_per_question) for s in method.settings()}


def regrade(h: Harness, logs: list[SampleLog], items: list[EvalItem]) -> int:
    """Grade anew the rows of these questions that another grader version graded, or against a reference
    since corrected (the samples stand; only their grading changes), so that one summary never mixes
    graders. Returns how many."""
    by_id = {item.id: item for item in items}
    files = {log: read_rows(log.path) if log.path.exists() else [] for log in logs}
    stale = [(log, i) for log, rows in files.items() for i, row in enumerate(rows) if row["id"] in by_id
             and (row.get("grader") != grader_version() or row["reference"] != by_id[row["id"]].answer)]
    for log, i in tqdm(stale, desc="regrading", unit="row", disable=not stale or None):
        row, item = files[log][i], by_id[files[log][i]["id"]]
        ended = thinking_ended(row["output"], row["thinking_text"], row["finish_reason"], row["answer_tokens"])
        files[log][i] = {**row, "reference": item.answer, **h.graded(item, row["output"], ended)}
    for log in dict.fromkeys(log for log, _ in stale):
        log.rewrite(files[log])
    return len(stale)


def run_method(h: Harness, method: Method, logs: dict[str, SampleLog], items: list[EvalItem]) -> None:
    """Each question once under every setting it still lacks, many questions batched in the engine. As each
    question finishes the bar moves and its rows are appended (an interruption loses only the unfinished
    questions); once all are done each file is put in the questions' order, so a resumed run ends with the
    same files (for sampled methods, up to draws that batch-shape rounding flips: see SamplingParams)."""
    todo = [(item, [s for s, log in logs.items() if item.id not in log.done]) for item in items]
    todo = [(item, missing) for item, missing in todo if missing]  # a resume starts where the last run stopped
    start, tokens = time.perf_counter(), 0
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=method.name, unit="q") as bar:
        plans = ((item.id, method.plan(h, item, missing)) for item, missing in todo)
        for key, result, errors in run_plans(h.llm, plans):
            for error in dict.fromkeys(errors):
                bar.write(f"{method.name}: question {key} could not run ({error}); scored as unanswered", file=sys.stderr)
            for setting, rows in result.items():
                logs[setting].append(rows)
            tokens += sum(r["thinking_tokens"] + r["answer_tokens"] for rows in result.values() for r in rows)
            bar.update(1)
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} tok/s")
    for log in logs.values():
        log.order_by([item.id for item in items])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    fresh = not out.exists()
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        methods = build_methods(args, str(device))
        items = load_items(args)
        lock = lock_output(out)
    except (ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        try:
            record = check_record(args, items, device, dtype, out)
            llm = LLM(model=args.model, device=device, dtype=dtype)
            h = Harness(llm, args.think_format, args.system, args.max_tokens, args.max_answer_tokens,
                        args.final_answer_str or None, args.ignore_str, args.temperature, args.top_p, args.top_k,
                        args.sample_temperature, args.seed)
            for sampled in (False, True):  # bad sampling or budget flags fail here, not mid-run
                h.params(h.prompt(items[0]), items[0], h.budget(None, num_ignore=1), sampled=sampled)
            check_room(h, methods, items)
            write_record(out, record)
        except (ValueError, OSError, ImportError, KeyboardInterrupt) as e:
            if fresh and not any(out.iterdir()):
                out.rmdir()  # refused before anything was written: leave no empty dir behind
            if isinstance(e, KeyboardInterrupt):
                print("\ninterrupted before the run started", file=sys.stderr)
                return 130
            print(f"error: {e}", file=sys.stderr)
            return 2
        return run(args, h, methods, items, out)
    finally:
        os.close(lock)  # the dir is free for another run


def run(args: argparse.Namespace, h: Harness, methods: list[Method], items: list[EvalItem], out: Path) -> int:
    try:
        logs = {method.name: open_logs(method, out) for method in methods}
    except ValueError as e:  # a samples file with a line not written here
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        regraded = regrade(h, [log for method_logs in logs.values() for log in method_logs.values()], items)
        if regraded:
            print(f"regraded {regraded} sample rows (graded by another version of benchmarks/grading.py, or "
                  "against another reference answer)", file=sys.stderr)
        for method in methods:
            run_method(h, method, logs[method.name], items)
        header = {"model": str(args.model or "default"), "data": list(args.data), "num_questions": len(items)}
        summary = summarize(methods, out, header, {item.id: item.source for item in items})  # grades votes: slow
        write_summary(summary, out)
        paths = plot(summary, out)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume into {out}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    print(f"done in {time.perf_counter() - start:.0f} s (this invocation); wrote {out / 'summary.md'}, "
          f"{out / 'summary.json'}, " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
