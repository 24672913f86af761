"""python -m engine.generate streams thinking and answer apart and prints a summary."""
import pytest

from engine.generate import main


def test_cli_streams_phases_and_summary(make_model, capsys):
    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    code = main(["--model", str(path), "--prompt", "How many r are in raspberry?", "--max-thinking-tokens", "10",
                 "--num-ignore", "1", "--final-answer-str", "Final Answer:", "--max-tokens", "30"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.index("[thinking]") < out.index("[answer]") and "Final Answer:" in out
    assert "thinking tokens: 10" in err and "tokens/s" in err


def test_cli_rejects_min_above_max(make_model, capsys):
    code = main(["--model", str(make_model("llama")), "--prompt", "hi", "--min-thinking-tokens", "9",
                 "--max-thinking-tokens", "3"])
    assert code == 2 and "error: --min-thinking-tokens (9) is above --max-thinking-tokens (3)" in capsys.readouterr().err


def test_cli_reports_a_bad_model_dir(tmp_path, capsys):
    code = main(["--model", str(tmp_path / "nowhere"), "--prompt", "hi"])
    assert code == 2 and "nowhere does not exist" in capsys.readouterr().err


def test_cli_runs_several_caps_as_one_sweep(make_model, capsys):
    from engine import LLM, SamplingParams, ThinkingBudget

    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    flags = ["--min-thinking-tokens", "3", "--num-ignore", "4", "--final-answer-str", "Final Answer:", "--max-tokens", "30"]
    code = main(["--model", str(path), "--no-chat", "--prompt", "How many r are in raspberry?",
                 "--max-thinking-tokens", "4,9,15", *flags])
    out, err = capsys.readouterr()
    assert code == 0
    budgets = [ThinkingBudget(min_tokens=3, max_tokens=c, num_ignore=4, final_answer_str="Final Answer:") for c in (4, 9, 15)]
    expected = LLM(model=path).sweep("How many r are in raspberry?", SamplingParams(max_tokens=30), budgets, use_tqdm=False)[0]
    blocks = out.split("=== --max-thinking-tokens ")[1:]
    assert [b.split("\n", 1)[0] for b in blocks] == ["4", "9", "15"]
    for block, o in zip(blocks, expected):
        assert f"[thinking]\n{o.thinking_text}\n[answer]\n{o.text[len(o.thinking_text):]}" in block
    code = main(["--model", str(path), "--no-chat", "--prompt", "How many r are in raspberry?", "--max-thinking-tokens",
                 "4,9", "--min-thinking-tokens", "3", "--num-ignore", "4", "--max-tokens", "6"])
    out = capsys.readouterr().out
    assert code == 0 and "[answer]" not in out.split("=== --max-thinking-tokens 9")[1]  # ran out while thinking
    assert [line for line in err.splitlines() if line.startswith("-- thinking")] == [
        f"-- thinking tokens: {o.num_thinking_tokens} | answer tokens: {o.num_answer_tokens} | ignores: "
        f"{o.num_ignores_used} | finish: {o.finish_reason}" for o in expected]
    assert len({o.num_thinking_tokens for o in expected}) == 3 and "3 caps" in err


def test_cli_names_a_bad_cap_list(make_model, capsys):
    path = str(make_model("llama"))
    with pytest.raises(SystemExit) as exit:
        main(["--model", path, "--prompt", "hi", "--max-thinking-tokens", "8,x"])
    assert exit.value.code == 2
    assert "comma-separated integers (32,64,128), got '8,x'" in capsys.readouterr().err
    code = main(["--model", path, "--prompt", "hi", "--min-thinking-tokens", "9", "--max-thinking-tokens", "16,3"])
    assert code == 2 and "error: --min-thinking-tokens (9) is above --max-thinking-tokens (3)" in capsys.readouterr().err
