import json
from pathlib import Path

import pytest

from benchmarks.evalsets import EvalItem, load_eval_set, prompt_text, write_eval_set

FORMATS = Path("/work/shared/eval-formats")


def test_champ_has_270_problems_with_answers_and_categories():
    items = load_eval_set("champ")
    assert len(items) == 270
    assert len({item.id for item in items}) == 270
    assert all(item.question.strip() and item.answer.strip() for item in items)
    assert {item.domain for item in items} == {"Combinatorics", "Inequality", "Number-Theory", "Polynomial", "Sequence"}
    assert all(item.source == "champ" and item.choices is None for item in items)
    assert load_eval_set("champ", limit=5) == items[:5]


def test_math500_layout():
    items = load_eval_set(str(FORMATS / "math500.jsonl"))
    assert [item.answer for item in items] == ["25", "\\frac{3}{4}", "\\sqrt{2}"]
    first = items[0]
    assert (first.id, first.domain, first.source) == ("test/algebra/9001.json", "Algebra", "math500")
    assert first.question == "What is the value of $3^2 + 4^2$?"


def test_aime24_layout_reads_integer_answers_as_text():
    items = load_eval_set(str(FORMATS / "aime24.jsonl"))
    expected = [("2024-I-99", "24"), ("2024-II-98", "24"), ("2024-II-97", "13")]
    assert [(item.id, item.answer) for item in items] == expected
    assert items[0].question == "Find the number of positive divisors of $360$."
    assert all(item.source == "aime24" for item in items)


def test_gpqa_layout_shuffles_options_with_a_fixed_seed():
    path = str(FORMATS / "gpqa_diamond.jsonl")
    records = [json.loads(line) for line in open(path)]
    items = load_eval_set(path)
    for record, item in zip(records, items):
        options = [record["Correct Answer"]] + [record[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
        assert sorted(item.choices) == sorted(options)
        assert item.choices["ABCD".index(item.answer)] == record["Correct Answer"]
        assert (item.id, item.domain, item.source) == (record["Record ID"], record["High-level domain"], "gpqa_diamond")
    assert load_eval_set(path) == items  # same seed, same order
    orders = {tuple(item.choices for item in load_eval_set(path, seed=seed)) for seed in range(10)}
    assert len(orders) > 1  # the seed matters


def test_prompt_text_appends_lettered_options():
    item = EvalItem("q", "Which is prime?", "B", choices=("4", "5", "6"))
    assert prompt_text(item) == "Which is prime?\n\nA) 4\nB) 5\nC) 6"
    assert prompt_text(EvalItem("q", "What is 2+2?", "4")) == "What is 2+2?"


def test_write_then_load_round_trips(tmp_path):
    items = [
        EvalItem("a", "What is 2+2?", "4", domain="arithmetic", source="hand"),
        EvalItem("b", "Which is prime?", "B", choices=("4", "5", "6", "8")),
        EvalItem("c", "Simplify 6/8.", "\\frac{3}{4}"),
    ]
    path = tmp_path / "split.jsonl"
    write_eval_set(items, path)
    assert load_eval_set(str(path)) == items
    assert json.loads(path.read_text().splitlines()[1]) == {"id": "b", "question": "Which is prime?", "answer": "B",
                                                            "choices": ["4", "5", "6", "8"]}
    assert load_eval_set(str(path), limit=2) == items[:2]


def _write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_errors_name_the_file_and_line(tmp_path):
    good = '{"id": "a", "question": "q", "answer": "1"}'
    with pytest.raises(ValueError, match=r"set\.jsonl:2: not valid JSON"):
        load_eval_set(_write(tmp_path, good, "{oops"))
    with pytest.raises(ValueError, match=r"set\.jsonl:1: unknown layout with columns \['prompt'\].*MATH-500"):
        load_eval_set(_write(tmp_path, '{"prompt": "q"}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:2: 'answer' is empty"):
        load_eval_set(_write(tmp_path, good, '{"id": "b", "question": "q", "answer": " "}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:1: with 'choices', 'answer' must be an option letter A\.\.C"):
        load_eval_set(_write(tmp_path, '{"id": "b", "question": "q", "answer": "5", "choices": ["4", "5", "6"]}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:3: id 'a' already used on line 1"):
        load_eval_set(_write(tmp_path, good, '{"id": "b", "question": "q", "answer": "1"}', good))
    with pytest.raises(ValueError, match=r"set\.jsonl:1: expected a JSON object"):
        load_eval_set(_write(tmp_path, "[1, 2]"))
    with pytest.raises(ValueError, match=r"set\.jsonl:1: 'question' must be a string or a number, got list"):
        load_eval_set(_write(tmp_path, '{"id": "a", "question": ["q"], "answer": "1"}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:2: 'source' must be a string, got list"):  # summaries group by it
        load_eval_set(_write(tmp_path, good, '{"id": "b", "question": "q", "answer": "1", "source": ["x"]}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:1: 'domain' must be a string, got int"):
        load_eval_set(_write(tmp_path, '{"id": "b", "question": "q", "answer": "1", "domain": 5}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:1: 'answer' is nan \(a JSON NaN or Infinity\)"):
        load_eval_set(_write(tmp_path, '{"id": "b", "question": "q", "answer": NaN}'))
    with pytest.raises(ValueError, match=r"set\.jsonl:2: 'unique_id' must be a string or a number, got NoneType"):
        load_eval_set(_write(tmp_path, '{"problem": "p", "answer": "1", "unique_id": "x"}',
                             '{"problem": "p", "answer": "1", "unique_id": null}'))
    assert load_eval_set(_write(tmp_path, '{"id": 7, "question": "q", "answer": 1e3}'))[0].answer == "1000"


def test_unknown_spec_and_bad_limit(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'champ' nor an existing JSONL file"):
        load_eval_set(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        load_eval_set("champ", limit=-1)
