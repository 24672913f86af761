"""Curation stages on small hand-made pools with known outcomes (no model needed)."""
import json
from collections import Counter

import pytest

from curate.decontaminate import decontaminate
from curate.diversity import select_diverse
from curate.domain import assign_domains, champ_accuracy, classify_msc
from curate.funnel import funnel_table
from curate.output import s1k_record, sft_record, write_outputs
from curate.pool import PoolError, PoolRow, read_pool_jsonl
from curate.quality import filter_quality


def row(id, question="What is 2+2?", **fields) -> PoolRow:
    values = dict(answer="4", trace="two plus two is four", attempt="The answer is 4.")
    values.update(fields)
    return PoolRow(id=id, question=question, **values)


def test_quality_drops_each_defect_for_its_reason():
    rows = [
        row("ok"),
        row("api", "Q api", error="Request timed out"),
        row("no_trace", "Q no trace", trace=None),
        row("no_answer", "Q no answer", answer="  "),
        row("asy", "Find the area. [asy] draw((0,0)--(1,1)); [/asy]", source="olympiads"),
        row("asy_aime", "Find the area. [asy] draw((0,0)--(1,1)); [/asy]", source="qq8933/AIME_1983_2024"),
        row("image", "Look at ![Image](https://x.org/a.png) and count the dots."),
        row("parts", "p1. Find x with x+1=2. p2. Find y with 2y=4."),
        row("primes", "Let p1 and p2 be distinct primes. Find p1 + p2 if p1*p2 = 6."),
        row("bold", "**1.** Compute the sum of the digits of 2^10."),
        row("marker", "Q marker", trace="thinking</think> leaked"),
        row("dup", "What is 2+2?"),
        row("dup_norm", "  what IS $2 + 2$ ?"),
        row("not_dup", "What is 2-2?"),
    ]
    result = filter_quality(rows)
    assert [r.id for r in result.kept] == ["ok", "asy_aime", "primes", "not_dup"]
    assert {r.id: r.drop_reason for r in result.dropped} == {
        "api": "api_error", "no_trace": "missing_trace", "no_answer": "missing_answer", "asy": "asy_outside_aime",
        "image": "image_link", "parts": "numbered_part_marker", "bold": "bold_digit",
        "marker": "think_marker_in_trace", "dup": "duplicate_exact", "dup_norm": "duplicate_normalised"}
    assert (result.rows_in, result.rows_out) == (14, 4)
    assert "| quality | 14 | 4 |" in funnel_table([result])


def test_decontamination_catches_one_shared_8gram_case_and_whitespace_blind():
    evals = ["Find the number of ordered pairs of positive integers (a, b) with a + b = 1000 and no zero digit.",
             "Simplify $\\frac{6}{8}$."]  # two words, as MATH-500 has them
    rows = [
        row("copied", "Let N be THE NUMBER of ordered\n pairs   of positive integers (a, b) with a+b=77."),
        row("seven", "Count the number of ordered pairs of positive reals with a product of 5."),
        row("other", "How many primes are less than 100?"),
        row("holds_short", "Problem 4. Simplify   $\\frac{6}{8}$."),
        row("holds_short_long", "Here is one more exercise for you to do: simplify $\\frac{6}{8}$. Show steps."),
        row("held", "positive integers (a, b) with"),  # shorter than 8 words, held whole by an eval question
        row("near_short", "Simplify $\\frac{6}{9}$."),
    ]
    result = decontaminate(rows, evals)
    assert [r.id for r in result.dropped] == ["copied", "holds_short", "holds_short_long", "held"]
    assert [r.id for r in result.kept] == ["seven", "other", "near_short"]  # "seven" shares 7 words only
    assert {r.drop_reason for r in result.dropped} == {"shares_8gram_with_eval"}


def ranked_pool(domains: dict[str, int]) -> list[PoolRow]:
    return [row(f"{d}{i}", f"{d} question {i}", domain=d, trace_tokens=100 * (i + 1))
            for d, n in domains.items() for i in range(n)]


def test_selection_is_reproducible_with_a_seed_and_differs_across_seeds():
    pool = ranked_pool({"A": 30, "B": 30, "C": 30})
    picks = [[r.id for r in select_diverse(ranked_pool({"A": 30, "B": 30, "C": 30}), 12, seed).kept]
             for seed in (7, 7, 8)]
    assert picks[0] == picks[1] and picks[0] != picks[2]
    assert len(set(picks[0])) == 12
    shuffled = list(reversed(pool))  # the input order does not change the selection
    assert [r.id for r in select_diverse(shuffled, 12, 7).kept] == picks[0]


def test_selection_favours_long_traces_with_weight_two_to_the_minus_rank():
    ranks = Counter(9 - int(select_diverse(ranked_pool({"A": 10}), 1, seed).kept[0].id[1:]) for seed in range(400))
    assert ranks[0] > ranks[1] > ranks[2] > ranks[4]  # rank 0 = the longest trace, chosen about half the time
    assert 0.4 < ranks[0] / 400 < 0.6 and sum(ranks[r] for r in range(5, 10)) < 0.06 * 400


def test_selection_samples_domains_uniformly_whatever_their_size():
    picks = [select_diverse(ranked_pool({"A": 10, "B": 40}), 4, seed).kept for seed in range(200)]
    domains = Counter(r.domain for chosen in picks for r in chosen)
    assert abs(domains["A"] - domains["B"]) < 0.15 * 800


def test_selection_drops_exhausted_domains_and_keeps_must_keep_sources():
    pool = ranked_pool({"A": 2, "B": 20})
    pool[5].source = "AIME 2020"
    result = select_diverse(pool, 10, seed=0, keep_sources=("aime",))
    ids = [r.id for r in result.kept]
    assert ids[0] == pool[5].id and {"A0", "A1"} <= set(ids) and len(ids) == 10
    assert len(result.dropped) == 12 and {r.drop_reason for r in result.dropped} == {"not_selected"}
    with pytest.raises(ValueError, match="must-keep"):
        select_diverse(pool, 1, seed=0, keep_sources=("aime", "^$"))
    with pytest.raises(ValueError, match="domain"):
        select_diverse([row("x")], 1, seed=0)


def test_domain_uses_the_pool_field_else_msc_keywords():
    rows = [row("own", "How many primes?", domain="Physics"),
            row("comb", "In how many ways can 5 people be seated in a row so that two friends sit together?"),
            row("nt", "Find all primes p such that p^2 + 2 is also prime."),
            row("none", "Say hello.")]
    result = assign_domains(rows)
    assert [r.domain for r in result.kept] == ["Physics", "05 Combinatorics", "11 Number theory",
                                               "00 General and overarching topics"]
    assert classify_msc("Prove that for positive reals a, b we have a^2 + b^2 >= 2ab (an inequality).") == "26"


def test_msc_keyword_classifier_accuracy_on_champ():
    champ_dataset = pytest.importorskip("champ_dataset")
    problems = [(p.text, p.category) for p in champ_dataset.load("v0").problems.values()]
    accuracy, per_category = champ_accuracy(problems)
    held_out, _ = champ_accuracy(problems[1::2])  # the rules were tuned on the even-indexed half only
    assert len(problems) == 270
    assert accuracy >= 0.84 and held_out >= 0.79, per_category  # measured 0.844 and 0.793 (see curate/domain.py)


def test_pool_reads_our_columns_and_s1s(tmp_path):
    path = tmp_path / "pool.jsonl"
    s1 = {"question": "Q1", "solution": "The answer is \\boxed{3}.", "cot_type": "math",
          "source_type": "AI-MO/NuminaMath-CoT/aops_forum", "metadata": "{'a': 1}", "cot": None,
          "thinking_trajectories": ["step one", "step two"], "attempt": "So 3."}
    ours = {"id": "q2", "question": "Q2", "answer": "5", "trace": "t", "attempt": "5", "domain": "Algebra"}
    v11 = {"question": "Q3", "solution": "7", "deepseek_thinking_trajectory": "ds", "deepseek_attempt": "7!",
           "gemini_thinking_trajectory": "gm", "gemini_attempt": "7?"}
    path.write_text("\n".join(json.dumps(r) for r in (s1, ours, v11)) + "\n\n")
    a, b, c = read_pool_jsonl(path)
    assert (a.answer, a.trace, a.attempt, a.source, a.id) == (s1["solution"], "step one\n\nstep two", "So 3.",
                                                              s1["source_type"], "pool-1")
    assert (b.id, b.answer, b.domain, b.missing_fields()) == ("q2", "5", "Algebra", [])
    assert (c.trace, c.attempt) == ("ds", "7!")
    path.write_text("[1, 2]\n")
    with pytest.raises(PoolError, match="pool.jsonl:1: expected a JSON object"):
        read_pool_jsonl(path)
    with pytest.raises(PoolError, match="does not exist"):
        read_pool_jsonl(tmp_path / "missing.jsonl")


def test_outputs_are_s1k_schema_and_sft_text_that_train_reads(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer
    from engine.tokenizer import get_think_format
    from train.data import load_dataset, read_jsonl, record_to_messages
    rows = [row("a", domain="05 Combinatorics", trace_tokens=7, source="champ"), row("b", "Q b", trace_tokens=3)]
    record = s1k_record(rows[0])
    assert list(record) == ["solution", "question", "cot_type", "source_type", "metadata", "cot",
                            "thinking_trajectories", "attempt"]
    assert json.loads(record["metadata"])["domain"] == "05 Combinatorics"
    assert sft_record(rows[0], "s1")["messages"][1]["content"] == (
        "<|im_start|>think\ntwo plus two is four<|im_start|>answer\nThe answer is 4.")
    for fmt in ("s1", "r1"):
        paths = write_outputs(rows, tmp_path / fmt, fmt)
        think_format = get_think_format(fmt)
        (_, first), _ = read_jsonl(paths["sft"])
        assistant = record_to_messages(first, think_format)[1]
        assert (assistant["thinking"], assistant["content"]) == (rows[0].trace, rows[0].attempt)
        dataset = load_dataset(paths["sft"], AutoTokenizer.from_pretrained(tokenizer_dir), think_format, 512)
        assert len(dataset.samples) == 2 and dataset.num_truncated == 0


def fake_problem(conversations: dict[str, tuple[str | None, str | None]]):
    from types import SimpleNamespace as NS
    def conversation(solution, summary):
        return NS(messages=[NS(role="System", text="sys", error=None), NS(role="User", text="Solve", error=None),
                            NS(role="Model.X", text=solution, error=None if solution else "LENGTH_CURRENT"),
                            NS(role="User", text="Summarize", error=None),
                            NS(role="Model.X", text=summary, error=None if summary else "LENGTH_PREVIOUS")])
    return NS(identifier="P_Test_1", text="Find n.", answer="42", category="Sequence", solution=None,
              conversations={k: conversation(*v) for k, v in conversations.items()},
              fws_annotations={"GPT-4|0-Shot": NS(start_idx=None), "GPT-4|5-Shot": NS(start_idx=3)})


def test_champ_trace_rule_takes_the_longest_correct_teacher_solution():
    from curate.champ_pool import pick_trace
    def grade(output, reference):
        return output.endswith(reference)
    problem = fake_problem({
        "GPT-4|0-Shot": ("short right", "so 42"),
        "GPT-4|1/3 Soln": ("a partial-solution setting, longest of all and right", "so 42"),
        "GPT-3.5|No C w/o H": ("a long wrong solution " * 5, "so 41"),
        "GPT-4 Turbo|5-Shot": ("a longer right solution", "so 42"),
        "PaLM 2 Medium|0-Shot": (None, None),  # cut off by the API
    })
    row = pick_trace(problem, grade)
    assert (row.trace, row.attempt, row.error) == ("a longer right solution", "so 42", None)
    assert row.metadata == {"teacher": "GPT-4 Turbo|5-Shot", "candidates": 3} and row.domain == "Sequence"
    verified = pick_trace(fake_problem({"GPT-4|0-Shot": ("short", "so 1"), "GPT-4|5-Shot": ("longer", "so 2")}), grade)
    assert (verified.trace, verified.error) == ("short", None)  # an annotator found no wrong step in it
    wrong = pick_trace(fake_problem({"GPT-4|No C w/o H": ("short", "so 1"), "GPT-4|5-Shot": ("longer", "so 2")}), grade)
    assert (wrong.trace, wrong.error) == ("longer", "no_correct_teacher_trace")
    assert filter_quality([wrong]).dropped[0].drop_reason == "no_correct_teacher_trace"


def test_champ_pool_reads_the_package(tmp_path):
    pytest.importorskip("champ_dataset")
    from curate.champ_pool import champ_pool
    rows = champ_pool(grade_fn=lambda output, reference: reference in output, progress=False, limit=3)
    assert [r.id for r in rows] == ["P_Combinatorics_1", "P_Combinatorics_2", "P_Combinatorics_3"]
    assert all(r.question and r.trace and r.attempt and r.domain == "Combinatorics" for r in rows)
    assert rows[0].answer == "239" and rows[0].error is None and "239" in rows[0].attempt


def test_the_champ_pool_cache_is_named_by_the_rule_and_the_grader(tmp_path, monkeypatch):
    import benchmarks.grading
    from curate.champ_pool import champ_cache_path

    monkeypatch.setenv("S1_ENGINE_CACHE", str(tmp_path))
    before = champ_cache_path()
    edited = tmp_path / "grading.py"
    edited.write_text(open(benchmarks.grading.__file__).read() + "\n# another grader\n")
    monkeypatch.setattr(benchmarks.grading, "__file__", str(edited))
    uncached = benchmarks.grading.grader_version.__wrapped__  # the version is computed once per process
    assert uncached() != benchmarks.grading.grader_version()
    monkeypatch.setattr(benchmarks.grading, "grader_version", uncached)
    assert champ_cache_path() != before and champ_cache_path().parent == before.parent
