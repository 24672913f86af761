"""Every snippet in the README runs: the Python blocks on a tiny model, the commands through the CLI."""
import re
import shlex
from pathlib import Path

import pytest

import engine
from engine.generate import main

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def tiny_default_model(make_model, monkeypatch):
    """LLM() without a model dir loads a tiny model instead of the default one (same tokenizer)."""
    path = make_model("llama", seed=11, end_token=1, hf_init=True)
    monkeypatch.setattr("engine.llm.default_model_dir", lambda: path)
    return path


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippets_run(tiny_default_model, index, capsys):
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out  # each snippet prints something


def test_the_main_command_runs(tiny_default_model, capsys):
    commands = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("./run python -m engine.generate")]
    assert len(commands) == 1
    argv = shlex.split(commands[0])[4:]  # after "./run python -m engine.generate"
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "[thinking]" in out and "thinking tokens:" in err


def test_the_test_command_is_what_ci_runs():
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    command = next(line for line in blocks("bash")[0].splitlines() if "pytest" in line)
    assert command.startswith("./run python -m pytest") and command in ci.splitlines()
    assert engine.__all__  # the public API the snippets import
