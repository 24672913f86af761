"""python -m curate.run end to end on a small pool with a tiny random model, and --dry-run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from curate.run import main

REPO = Path(__file__).resolve().parents[1]
POOL = [  # s1's column names; the first is contaminated, the second a duplicate, the third an API error
    {"question": "Find the number of ordered pairs of positive integers (a, b) with a + b = 10.", "solution": "9"},
    {"question": "How many primes are less than 30?", "solution": "10"},
    {"question": "How many  primes are less than 30 ?", "solution": "10"},
    {"question": "Compute 17 * 23.", "solution": "391", "error": "rate limited"},
    {"question": "Find all integers n with n^2 = 49.", "solution": "7, -7"},
    {"question": "In how many ways can 4 books be arranged on a shelf?", "solution": "24"},
    {"question": "Find the minimum of x^2 - 4x + 7 over the real numbers.", "solution": "3"},
]


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    pool = tmp_path / "pool.jsonl"
    with pool.open("w") as f:
        for i, record in enumerate(POOL):
            s1_columns = {"cot_type": "math", "source_type": "hand", "metadata": "{}", "cot": None,
                          "thinking_trajectories": ["think " * (5 + 7 * i)], "attempt": record["solution"]}
            f.write(json.dumps({**record, **s1_columns}) + "\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"id": "e1", "question": "Let N be the number of ordered pairs of positive "
                                 "integers (a, b) with a + b = 2024. Find N.", "answer": "2023"}) + "\n")
    return pool, evals


def test_run_writes_selection_sft_and_report(tmp_path, make_model, capsys):
    pool, evals = write_inputs(tmp_path)
    model = make_model("llama", seed=11, end_token=1, hf_init=True)
    out = tmp_path / "out"
    main(["--pool", str(pool), "--eval", str(evals), "--models", str(model), "--size", "3", "--thinking-cap", "8",
          "--max-answer-tokens", "4", "--seed", "1", "--output", str(out), "--no-progress"])
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 3
    assert {r["question"] for r in selected} <= {p["question"] for p in POOL[4:]} | {POOL[1]["question"]}
    assert all(r["thinking_trajectories"] and r["source_type"] == "hand" for r in selected)
    sft = [json.loads(line) for line in (out / "sft_s1.jsonl").read_text().splitlines()]
    assert sft[0]["messages"][1]["content"].startswith("<|im_start|>think\n")
    report = (out / "report.md").read_text()
    for row in ("| quality | 7 | 5 |", "| decontamination | 5 | 4 |", "| difficulty | 4 | 4 |", "| domain | 4 | 4 |",
                "| diversity | 4 | 3 |"):
        assert row in report
    assert (out / "domains.png").stat().st_size > 0 and (out / "trace_lengths.png").stat().st_size > 0
    assert len((out / "attempts.jsonl").read_text().splitlines()) == 4
    assert "difficulty:" in capsys.readouterr().out


def test_dry_run_describes_every_stage_and_writes_nothing(tmp_path, make_model):
    pool, evals = write_inputs(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "curate.run", "--pool", str(pool), "--eval", str(evals), "--models",
                           str(make_model("llama")), "--size", "2", "--output", str(out), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for stage in ("pool:", "quality:", "decontamination:", "difficulty:", "domain:", "diversity:", "outputs:"):
        assert stage in proc.stdout
    assert "5 of 7 kept" in proc.stdout and "4 of 4 questions to attempt" in proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--size", "0"], "--size must be at least 1"),
    (["--models", "gpt2"], "--models 'gpt2' is not a local model dir (no config.json there); nothing is downloaded"),
    (["--keep-source", "("], "--keep-source '(' is not a regular expression"),
    (["--tokenizer", "gpt2"], "--tokenizer 'gpt2' is not a local dir"),
])
def test_bad_arguments_are_rejected_with_a_message(capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["--pool", "champ", "--output", "x", *flags])
    assert message in capsys.readouterr().err


def test_bad_files_are_one_line_errors_and_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    pool, evals = write_inputs(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "columns.jsonl").write_text('{"foo": 1}\n')
    out = ["--output", str(tmp_path / "out")]
    for flags, message in [
        (["--pool", str(tmp_path / "nope.jsonl"), *out], f"error: pool file {tmp_path / 'nope.jsonl'} does not exist"),
        (["--pool", str(tmp_path / "columns.jsonl"), *out], "no record has a 'question' (the first has ['foo'])"),
        (["--pool", str(pool), "--eval", str(tmp_path / "nope.jsonl"), *out], "error: eval set"),
        (["--pool", str(pool), "--output", str(tmp_path / "afile")], "--output"),
    ]:
        try:
            code = main([*flags, "--no-progress", "--dry-run"])
        except SystemExit as e:  # argparse's error
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (flags, err)

    def interrupted(config, command):
        raise KeyboardInterrupt

    monkeypatch.setattr("curate.run.run_pipeline", interrupted)
    assert main(["--pool", str(pool), "--output", str(tmp_path / "out")]) == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().err


def test_dry_run_on_champ_before_its_pool_is_built_grades_nothing(tmp_path, monkeypatch):
    pytest.importorskip("champ_dataset")
    from curate.pipeline import CurateConfig, dry_run
    monkeypatch.setenv("S1_ENGINE_CACHE", str(tmp_path / "cache"))
    text = dry_run(CurateConfig(pool="champ", output=str(tmp_path / "out"), evals=["champ"], tokenizer="unused",
                                size=10, classify_domains=True))
    assert "champ is not built yet" in text
    assert "270 of 270 kept" in text
    assert "-> 0 of 270 kept" in text  # every CHAMP problem shares 8-grams with itself as an eval set
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_a_short_selection_is_warned_about_and_an_empty_one_is_an_error(tmp_path, tokenizer_dir, capsys):
    pool, _ = write_inputs(tmp_path)
    common = ["--tokenizer", str(tokenizer_dir), "--no-progress"]
    assert main(["--pool", str(pool), "--size", "10", "--output", str(tmp_path / "few"), *common]) == 0
    assert "warning: 5 questions selected, fewer than --size 10" in capsys.readouterr().err
    no_attempts = tmp_path / "no-attempts.jsonl"  # train.sft's {question, thinking, answer}: no attempt to keep
    no_attempts.write_text("".join(json.dumps({"question": p["question"], "thinking": "t", "answer": p["solution"]})
                                   + "\n" for p in POOL))
    assert main(["--pool", str(no_attempts), "--size", "3", "--output", str(tmp_path / "none"), *common]) == 1
    captured = capsys.readouterr()
    assert "'missing_attempt': 7" in captured.out
    assert f"error: no question was selected: the funnel above dropped every row (why: {tmp_path}/none/report.md)" in captured.err
