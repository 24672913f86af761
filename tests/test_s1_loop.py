"""The whole-loop driver refuses to resume a loop made with other split, curation or training flags."""
import json

import pytest

from benchmarks import s1_loop


def test_a_rerun_with_another_split_is_refused_before_any_stage_runs(tmp_path, monkeypatch):
    stages = []
    monkeypatch.setattr(s1_loop, "run", lambda cmd, log: stages.append(cmd[0]) or 0.0)
    monkeypatch.setattr(s1_loop, "split_champ", lambda out, size, seed: out / "champ_eval.jsonl")
    monkeypatch.setattr(s1_loop, "check_decontaminated", lambda selected, eval_path: 1)  # stops after curation
    with pytest.raises(SystemExit, match="1 selected questions"):
        s1_loop.main(["--output", str(tmp_path), "--seed", "0", "--eval-size", "5"])
    assert json.loads((tmp_path / "loop.json").read_text())["seed"] == 0
    stages.clear()
    with pytest.raises(SystemExit, match=r"holds a loop run made with other --eval-size \(5, now 30\), "
                                         r"--seed \(0, now 1\); rerun with the same flags"):
        s1_loop.main(["--output", str(tmp_path), "--seed", "1"])
    assert stages == []  # refused before the split was rewritten or anything ran
    with pytest.raises(SystemExit, match="1 selected questions"):  # the same flags resume
        s1_loop.main(["--output", str(tmp_path), "--seed", "0", "--eval-size", "5"])
    assert stages == ["curate.run"]


def test_check_decontaminated_counts_what_curation_would_drop(tmp_path):
    from benchmarks.evalsets import EvalItem, write_eval_set

    eval_path = tmp_path / "eval.jsonl"
    write_eval_set([EvalItem("e1", "Simplify $\\frac{6}{8}$.", "3/4")], eval_path)
    selected = tmp_path / "selected.jsonl"
    selected.write_text("".join(json.dumps({"question": q}) + "\n" for q in
                                ["Problem 4. Simplify $\\frac{6}{8}$.", "How many primes are below 10?"]))
    assert s1_loop.check_decontaminated(selected, eval_path) == 1
