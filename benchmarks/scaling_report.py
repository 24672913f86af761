"""From the samples files to summary.json, summary.md and the plots. Everything is read back from the files,
so a resumed run reports exactly what an uninterrupted one does."""
import json
import math
from pathlib import Path

from benchmarks import metrics
from benchmarks.grading import equivalent
from benchmarks.scaling_log import read_rows
from benchmarks.scaling_methods import Method, ParallelSampling


CORRECT_VOTE = "\0correct"  # every correct answer's vote: they all equal the reference


def samples_path(out: Path, method: str, setting: str) -> Path:
    return out / f"samples-{method}-{setting}.jsonl"


def summarize(methods: list[Method], out: Path, header: dict, sources: dict[str, str]) -> dict:
    """The runs of `methods` over the questions asked (`sources`: id -> eval set; a samples file may hold
    more, from a run with a larger --limit), with accuracy by set when there are several, and the samples
    files in `out` that are left out (other methods or settings)."""
    runs, scores = [], {}
    for method in methods:
        method_runs = []
        for setting in method.settings():
            rows = [r for r in read_rows(samples_path(out, method.name, setting)) if r["id"] in sources]
            by_set = {}
            for r in rows:
                by_set.setdefault(sources[r["id"]], []).append(r)
            if isinstance(method, ParallelSampling):
                new = parallel_runs(method.name, rows)
                per_set = {name: parallel_runs(method.name, subset) for name, subset in by_set.items()}
                if len(by_set) > 1:
                    for i, run in enumerate(new):
                        run["accuracy_by_set"] = {name: set_runs[i]["accuracy"] for name, set_runs in per_set.items()}
                method_runs += new
            else:
                run = single_run(method, setting, rows)
                if len(by_set) > 1:
                    run["accuracy_by_set"] = {name: metrics.sample_stats(subset)["accuracy"]
                                              for name, subset in by_set.items()}
                method_runs.append(run)
        runs += method_runs
        scores[method.name] = method_metrics(method_runs)
    listed = {samples_path(out, m.name, s).name for m in methods for s in m.settings()}
    others = sorted(p.name for p in out.glob("samples-*.jsonl") if p.name not in listed)
    return {**header, "settings": runs, "methods": scores, "not_summarized": others}


def single_run(method: Method, setting: str, rows: list[dict]) -> dict:
    stats = metrics.sample_stats(rows)
    bound = method.bound(setting)
    if bound is None and setting == "auto":  # the mean cap over the questions that ran
        ran = [r["max_thinking_tokens"] for r in rows if r["finish_reason"] != "error"] or [0]
        bound = sum(ran) / len(ran)
    run = {"method": method.name, "setting": setting, "accuracy": stats["accuracy"],
           "avg_thinking_tokens": stats["thinking_tokens"]["mean"], "avg_steps": stats["steps"]["mean"],
           "num_questions": len(rows), "bound": bound, "bound_on": method.bound_on}
    if "tries" in rows[0]:
        run["avg_tries"] = sum(r["tries"] for r in rows) / len(rows)
        run["fits"] = 100.0 * sum(r["fits"] for r in rows) / len(rows)
    return run | {"stats": stats}


def parallel_runs(name: str, rows: list[dict]) -> list[dict]:
    """One run per k = 1, 2, 4, ... n: maj@k (or best@k with scores) against k samples' tokens per question."""
    questions: dict[str, list[dict]] = {}
    for row in rows:
        questions.setdefault(row["id"], []).append(row)
    groups = [sorted(g, key=lambda r: r["sample_index"]) for g in questions.values()]
    n = len(groups[0])
    correct = [[r["correct"] for r in g] for g in groups]
    answers = [vote_keys(g) for g in groups]
    thinking = sum(r["thinking_tokens"] for r in rows) / len(groups) / n
    total = sum(r["thinking_tokens"] + r["answer_tokens"] for r in rows) / len(groups) / n
    runs = []
    for k in sorted({*(2**i for i in range(n.bit_length())), n}):
        run = {"method": name, "setting": f"k={k}", "k": k, "num_questions": len(groups), "bound": None,
               "avg_thinking_tokens": k * thinking, "avg_total_tokens": k * total,
               "maj_at_k": metrics.maj_at_k(correct, answers, k),
               "pass_at_k": 100.0 * sum(metrics.pass_at_k(n, sum(c), k) for c in correct) / len(groups)}
        if name == "best-of-n":
            run["best_at_k"] = 100.0 * sum(best_of(g[:k])["correct"] for g in groups) / len(groups)
        runs.append(run | {"accuracy": run.get("best_at_k", run["maj_at_k"])})
    return runs


def vote_keys(rows: list[dict]) -> list[str | None]:
    """One question's samples as maj@k counts their answers: the correct ones as one answer (each equals
    the reference), a wrong one with the first earlier class of wrong ones it is equivalent to, every
    member ("0.75" and "\\frac{3}{4}" are one vote; equivalence is not transitive: "50\\%" equals
    both "50" and "0.5", which differ); None for no answer."""
    keys, classes = [], []
    for r in rows:
        vote = r["vote"]
        if vote is None or r["correct"]:
            keys.append(None if vote is None else CORRECT_VOTE)
            continue
        home = next((c for c in classes if all(m == vote or equivalent(m, vote) for m in c)), None)
        if home is None:
            classes.append(home := [])
        home.append(vote)
        keys.append(home[0])
    return keys


def best_of(rows: list[dict]) -> dict:
    """The highest-scoring sample (the first of equal scores); an unscored one (None) ranks last."""
    return max(rows, key=lambda r: -math.inf if r["score"] is None else r["score"])


def method_metrics(runs: list[dict]) -> dict:
    """Control (share of runs within their own bound; None when the method sets none), Scaling (over the runs
    that thought: log2 of 0 tokens is undefined), Performance."""
    xs, fs = [r["avg_thinking_tokens"] for r in runs], [r["accuracy"] for r in runs]
    bounded = [r for r in runs if r["bound"] is not None]
    control = None
    if bounded:
        within = [metrics.control([r["avg_steps" if r["bound_on"] == "steps" else "avg_thinking_tokens"]],
                                  a_max=r["bound"]) for r in bounded]
        control = sum(within) / len(within)
    thought = [(x, f) for x, f in zip(xs, fs) if x > 0]  # a run that never thought has no log2 (a cap of 0)
    try:
        scaling = metrics.scaling([x for x, _ in thought], [f for _, f in thought])
    except ValueError:  # fewer than two runs that thought, or equal compute everywhere
        scaling = None
    return {"control": control, "scaling": scaling, "performance": metrics.performance(fs)}


def write_summary(summary: dict, out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")


def markdown(summary: dict) -> str:
    lines = [f"# Test-time scaling: {summary['model']}", "", f"Data: {', '.join(summary['data'])}, "
             f"{summary['num_questions']} questions.", "",
             "| method | setting | accuracy % | avg thinking tokens | notes |", "|---|---|---:|---:|---|"]
    for r in summary["settings"]:
        lines.append(f"| {r['method']} | {r['setting']} | {r['accuracy']:.1f} | {r['avg_thinking_tokens']:.1f} "
                     f"| {notes(r)} |")
    lines += ["", "| method | Control % | Scaling | Performance % |", "|---|---:|---:|---:|"]
    for name, m in summary["methods"].items():
        lines.append(f"| {name} | {fmt(m['control'])} | {fmt(m['scaling'])} | {fmt(m['performance'])} |")
    by_set = [r for r in summary["settings"] if "accuracy_by_set" in r]
    if by_set:
        names = list(by_set[0]["accuracy_by_set"])
        lines += ["", "Accuracy % by eval set:", "", "| method | setting | " + " | ".join(names) + " |",
                  "|---|---|" + "---:|" * len(names)]
        lines += [f"| {r['method']} | {r['setting']} | " + " | ".join(f"{r['accuracy_by_set'][n]:.1f}" for n in names)
                  + " |" for r in by_set]
    if summary["not_summarized"]:
        lines += ["", "Also in this dir, from other invocations, not summarized here (rerun naming their methods and "
                  "settings to add them; finished questions are not redone): " + ", ".join(summary["not_summarized"])]
    return "\n".join(lines) + "\n"


def notes(run: dict) -> str:
    parts = []
    if run["bound"] is not None:
        parts.append(f"bound {run['bound']:.0f} {'steps' if run['bound_on'] == 'steps' else 'tokens'}")
    if run.get("stats", {}).get("num_no_answer"):
        parts.append(f"no answer {run['stats']['num_no_answer']} of {run['num_questions']}")
    if "avg_tries" in run:
        parts.append(f"tries {run['avg_tries']:.2f}, fits {run['fits']:.0f}%")
    if "k" in run:
        best = f"best@k {run['best_at_k']:.1f}, " if "best_at_k" in run else ""
        parts.append(f"{best}maj@k {run['maj_at_k']:.1f}, pass@k {run['pass_at_k']:.1f}, "
                     f"total tokens {run['avg_total_tokens']:.0f}")
    return "; ".join(parts)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def plot(summary: dict, out: Path) -> list[Path]:
    """Figure 1 (accuracy against average thinking tokens, log2 axis, one line per method) and, with parallel
    samples, maj@k / pass@k / best@k against total tokens per question."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / "scaling.png"]
    fig, ax = plt.subplots(figsize=(6, 4))
    left_out = []
    for name in summary["methods"]:
        runs = sorted((r for r in summary["settings"] if r["method"] == name and r["avg_thinking_tokens"] > 0),
                      key=lambda r: r["avg_thinking_tokens"])  # a log axis has no place for 0 tokens
        if not runs:
            left_out.append(name)
            continue
        x, y = [r["avg_thinking_tokens"] for r in runs], [r["accuracy"] for r in runs]
        ax.plot(x, y, "o-", label=name)
        for r in runs:
            ax.annotate(r["setting"], (r["avg_thinking_tokens"], r["accuracy"]), textcoords="offset points",
                        xytext=(3, 3), fontsize=7)
    ax.set_xscale("log", base=2, nonpositive="mask")
    ax.set(xlabel="average thinking tokens (log2)", ylabel="accuracy (%)",
           title=f"{summary['model']}, {summary['num_questions']} questions")
    if left_out:
        ax.text(0.01, 0.01, f"not shown (no thinking): {', '.join(left_out)}", transform=ax.transAxes, fontsize=7)
    if len(left_out) < len(summary["methods"]):
        ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], metadata={"Software": None})
    plt.close(fig)
    parallel = [r for r in summary["settings"] if "k" in r]
    (out / "parallel.png").unlink(missing_ok=True)  # an earlier invocation's, when this one has no parallel runs
    if parallel:
        paths.append(out / "parallel.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r["method"] for r in parallel):
            runs = [r for r in parallel if r["method"] == name]
            x = [r["avg_total_tokens"] for r in runs]
            curves = {"best@k": "best_at_k"} if name == "best-of-n" else {"maj@k": "maj_at_k", "pass@k": "pass_at_k"}
            for label, key in curves.items():
                ax.plot(x, [r[key] for r in runs], "o-", label=f"{name} {label}")
        ax.set_xscale("log", base=2, nonpositive="mask")
        ax.set(xlabel="total tokens per question (log2)", ylabel="accuracy (%)", title="parallel scaling")
        ax.legend()
        fig.tight_layout()
        fig.savefig(paths[1], metadata={"Software": None})
        plt.close(fig)
    return paths
