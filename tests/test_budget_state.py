"""The budget state machine on hand-made token streams (cases a model rarely produces)."""
import pytest

from engine.budget import BudgetState, BudgetTokens, Phase, ThinkingBudget
from engine.tokenizer import Tokenizer

TOKENS = BudgetTokens(end_ids=frozenset({90, 2}), marker=None, delimiter=(90, 91, 92), delimiter_text="",
                      final_answer=(70, 71), ignore=(50,), decode=None, encode=None)


def run(budget: ThinkingBudget, sampled: list[int], tokens: BudgetTokens = TOKENS) -> tuple[list[int], BudgetState]:
    state = BudgetState(budget, tokens)
    out: list[int] = []
    state.start(out)
    for token in sampled:
        if state.phase is not Phase.THINKING:
            break
        state.accept(out, token)
    return out, state


def test_zero_cap_ends_thinking_at_once():
    out, state = run(ThinkingBudget(max_tokens=0, final_answer_str="x"), [])
    assert out == [90, 91, 92, 70, 71] and state.phase is Phase.ANSWER and state.count(len(out)) == 0
    assert (state.thinking_end, state.answer_start) == (0, 5)


def test_cap_after_partly_emitted_delimiter_splices_only_the_rest():
    # the model wrote 90 91 as text through an ignore splice that ends like the delimiter
    tokens = BudgetTokens(end_ids=frozenset({90}), marker=None, delimiter=(90, 91, 92), delimiter_text="",
                          final_answer=(), ignore=(90, 91), decode=None, encode=None)
    state = BudgetState(ThinkingBudget(max_tokens=3, num_ignore=1), tokens)
    out = [5]
    state.accept(out, 90)  # dropped, ignore (90, 91) spliced: count 3 hits the cap
    assert out == [5, 90, 91, 92]
    assert state.phase is Phase.ANSWER and state.thinking_end == 1 and state.count(len(out)) == 1


def test_ignores_then_end_and_counts():
    out, state = run(ThinkingBudget(num_ignore=2), [10, 90, 11, 2, 12, 90, 13])
    assert out == [10, 50, 11, 50, 12, 90, 91, 92]
    assert state.ignores_used == 2 and state.count(len(out)) == 5 and state.phase is Phase.ANSWER


def test_min_tokens_forces_ignores_and_suppress_masks():
    out, state = run(ThinkingBudget(min_tokens=4), [90, 90, 10, 90, 11, 90])
    assert out == [50, 50, 10, 50, 11, 90, 91, 92] and state.ignores_used == 3
    state = BudgetState(ThinkingBudget(min_tokens=2, suppress=True), TOKENS)
    assert state.masked_ids(0) == TOKENS.end_ids
    assert state.masked_ids(2) == frozenset()


def test_cap_counts_spliced_ignore_tokens():
    out, state = run(ThinkingBudget(max_tokens=3, num_ignore=5, final_answer_str="F"), [10, 11, 90, 12])
    assert out == [10, 11, 50, 90, 91, 92, 70, 71] and state.count(len(out)) == 3


def test_the_cap_wins_over_an_ignore_that_would_overshoot_it():
    tokens = BudgetTokens(end_ids=frozenset({90}), marker=None, delimiter=(90, 91, 92), delimiter_text="",
                          final_answer=(70,), ignore=(50, 51, 52), decode=None, encode=None)
    out, state = run(ThinkingBudget(max_tokens=4, num_ignore=3), [10, 11, 90, 12], tokens)
    assert out == [10, 11, 90, 91, 92, 70]  # 2 + 3 ignore tokens > 4: the delimiter and final answer instead
    assert state.count(len(out)) == 2 and state.ignores_used == 0 and state.answer_start == 6


@pytest.mark.parametrize("budget", [dict(min_tokens=5), dict(num_ignore=1)])
def test_an_empty_ignore_string_is_rejected_when_an_ignore_can_happen(budget):
    with pytest.raises(ValueError, match="ignore_str must be a non-empty string"):
        ThinkingBudget(ignore_str="", **budget)
    ThinkingBudget(ignore_str="", max_tokens=5)  # no ignore can happen: fine
    with pytest.raises(ValueError, match=r"ignore_str must be a string, got None$"):  # not "when an end..."
        ThinkingBudget(ignore_str=None, max_tokens=5)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer(tokenizer_dir, (2,))


def test_end_ids_per_format_and_ignore_eos(tokenizer):
    s1 = tokenizer.budget_tokens("s1", ThinkingBudget(), ignore_eos=False)
    assert s1.end_ids == {1, 2} and s1.marker is None  # <|im_start|> is one special token
    assert tokenizer.budget_tokens("s1", ThinkingBudget(), ignore_eos=True).end_ids == {1}
    r1 = tokenizer.budget_tokens("r1", ThinkingBudget(), ignore_eos=True)
    assert r1.end_ids == frozenset() and r1.marker == "</think>"  # no </think> token in this vocabulary


def spelled(tokenizer, pieces: list[str]) -> list[int]:
    ids = [tokenizer.encode_piece(p) for p in pieces]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


@pytest.mark.parametrize("pieces", [[" </", "think", ">"], ["</", "think", ">."], ["</", "think", ">", "\n\n"]])
def test_a_spelled_marker_ends_thinking_whatever_its_tokenization(tokenizer, pieces):
    tokens = tokenizer.budget_tokens("r1", ThinkingBudget(), ignore_eos=False)
    thinking = tokenizer.encode_piece("3 apples")
    out, state = run(ThinkingBudget(), thinking + spelled(tokenizer, pieces), tokens)
    assert state.phase is Phase.ANSWER and state.thinking_end == len(thinking)
    marker_tokens = 3  # the answer starts after the token that completes the marker
    assert out == thinking + spelled(tokenizer, pieces)[:marker_tokens] and state.answer_start == len(out)


def test_a_spelled_marker_is_replaced_by_the_ignore_string(tokenizer):
    tokens = tokenizer.budget_tokens("r1", ThinkingBudget(num_ignore=1), ignore_eos=False)
    thinking = tokenizer.encode_piece("3 apples")
    out, state = run(ThinkingBudget(num_ignore=1), thinking + spelled(tokenizer, [" </", "think", ">", "5"]), tokens)
    assert out == thinking + list(tokens.ignore) + tokenizer.encode_piece("5")
    assert state.phase is Phase.THINKING and state.ignores_used == 1


def test_other_text_with_the_markers_first_token_does_not_end_thinking(tokenizer):
    tokens = tokenizer.budget_tokens("r1", ThinkingBudget(), ignore_eos=False)
    text = tokenizer.encode_piece("a </b> and </div> then </thinking")
    out, state = run(ThinkingBudget(), text, tokens)
    assert state.phase is Phase.THINKING and out == text


def test_cap_mid_marker_splices_the_rest_as_text(tokenizer):
    tokens = tokenizer.budget_tokens("r1", ThinkingBudget(max_tokens=3), ignore_eos=False)
    sampled = tokenizer.encode_piece("3") + spelled(tokenizer, [" </", "think"])
    out, state = run(ThinkingBudget(max_tokens=3), sampled, tokens)
    assert tokenizer.decode(out) == "3 </think>\n\n" and state.thinking_end == 1
    assert out[:3] == sampled  # the model's own tokens stay; only the rest is spliced


@pytest.mark.parametrize("num_ignore", (0, 1))
def test_a_marker_starting_inside_a_token_keeps_the_text_before_it(tokenizer, num_ignore):
    """".<" is one token in this vocabulary: ending on ".</think>" must keep the "." in thinking."""
    budget = ThinkingBudget(num_ignore=num_ignore)
    tokens = tokenizer.budget_tokens("r1", budget, ignore_eos=False)
    thinking, marker = tokenizer.encode_piece("3 apples"), spelled(tokenizer, [".<", "/", "think", ">"])
    state, out = BudgetState(budget, tokens), []
    changed = [state.accept(out, token) for token in thinking + marker][-1]
    split = len(thinking)  # the ".<" token, re-encoded as "." and "<"
    assert changed == (split, False)  # the cache recomputes from the split token; no sampled token kept as is
    if num_ignore:
        assert tokenizer.decode(out) == "3 apples.Wait" and state.phase is Phase.THINKING
    else:
        assert tokenizer.decode(out[: state.thinking_end]) == "3 apples."
        assert tokenizer.decode(out[state.thinking_end :]) == "</think>" and state.answer_start == len(out)


def test_cap_on_a_token_ending_in_the_markers_first_character(tokenizer):
    tokens = tokenizer.budget_tokens("r1", ThinkingBudget(max_tokens=2), ignore_eos=False)
    out, state = run(ThinkingBudget(max_tokens=2), tokenizer.encode_piece("3") + spelled(tokenizer, [".<"]), tokens)
    assert tokenizer.decode(out[: state.thinking_end]) == "3." and tokenizer.decode(out) == "3.</think>\n\n"


# a made-up vocabulary: "ab<" is one token, "ab" is two; "▁." decodes to " ." after a word, "." alone
PIECES = {10: "ab<", 11: "a", 12: "b", 13: "<", 14: "/", 15: "think", 16: ">", 17: "\n\n", 20: "x", 21: ".<", 22: "z",
          23: "▁.", 24: "."}


def piece_tokens(budget: ThinkingBudget, metaspace: bool = False) -> BudgetTokens:
    """Greedy longest-match encoding that never makes "ab<" or ".<" (as a tokenizer re-encoding their
    parts would not); with metaspace, "." encodes as "▁." (a SentencePiece habit)."""
    ids = {v: k for k, v in PIECES.items() if v not in ("ab<", ".<", "▁.")}

    def decode(tokens):
        text = "".join(PIECES[t] for t in tokens)
        return text.replace("▁", " ").removeprefix(" ")

    def encode(text):
        out = []
        while text:
            if metaspace and text.startswith("."):
                out, text = out + [23], text[1:]
                continue
            n = next(n for n in range(len(text), 0, -1) if text[:n] in ids)
            out, text = out + [ids[text[:n]]], text[n:]
        return out

    return BudgetTokens(end_ids=frozenset({2}), marker="</think>", delimiter=tuple(encode("</think>\n\n")),
                        delimiter_text="</think>\n\n", final_answer=(), ignore=(20,), decode=decode, encode=encode)


def test_a_split_never_takes_thinking_past_the_cap():
    budget = ThinkingBudget(max_tokens=3)
    out, state = run(budget, [20, 20, 10], piece_tokens(budget))  # "xxab<": "ab" would be 2 tokens, 4 > 3
    assert state.count(len(out)) <= 3 and state.phase is Phase.ANSWER


def test_no_split_when_the_parts_read_differently_in_context():
    budget = ThinkingBudget()
    tokens = piece_tokens(budget, metaspace=True)  # "." alone decodes as ".", but after "z" as "z ."
    out, state = run(budget, [20, 22, 21, 14, 15, 16], tokens)
    assert tokens.decode(out) == "xz.</think>" and out == [20, 22, 21, 14, 15, 16]
    plain = piece_tokens(budget)  # without the habit the same stream splits and keeps "xz." in thinking
    out, state = run(budget, [20, 22, 21, 14, 15, 16], plain)
    assert out == [20, 22, 24, 13, 14, 15, 16] and plain.decode(out[: state.thinking_end]) == "xz."
