"""python -m engine.generate streams thinking and answer apart and prints a summary."""
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
