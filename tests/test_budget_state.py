"""The budget state machine on hand-made token streams (cases a model rarely produces)."""
from engine.budget import BudgetState, BudgetTokens, Phase, ThinkingBudget

TOKENS = BudgetTokens(end_ids=frozenset({90, 2}), delimiter=(90, 91, 92), final_answer=(70, 71), ignore=(50,))


def run(budget: ThinkingBudget, sampled: list[int]) -> tuple[list[int], BudgetState]:
    state = BudgetState(budget, TOKENS)
    out = state.start([])
    for token in sampled:
        if state.phase is not Phase.THINKING:
            break
        out += state.accept(token, out)
    return out, state


def test_zero_cap_ends_thinking_at_once():
    out, state = run(ThinkingBudget(max_tokens=0, final_answer_str="x"), [])
    assert out == [90, 91, 92, 70, 71] and state.phase is Phase.ANSWER and state.count == 0
    assert (state.thinking_end, state.answer_start) == (0, 3)


def test_cap_after_partly_emitted_delimiter_splices_only_the_rest():
    # the model wrote 90 91 as text through an ignore splice that ends like the delimiter
    tokens = BudgetTokens(end_ids=frozenset({90}), delimiter=(90, 91, 92), final_answer=(), ignore=(90, 91))
    state = BudgetState(ThinkingBudget(max_tokens=3, num_ignore=1), tokens)
    out = [5]
    state.count = 1
    out += state.accept(90, out)  # dropped, ignore (90, 91) spliced: count 3 hits the cap
    assert out == [5, 90, 91, 92]
    assert state.phase is Phase.ANSWER and state.thinking_end == 1 and state.count == 1


def test_ignores_then_end_and_counts():
    out, state = run(ThinkingBudget(num_ignore=2), [10, 90, 11, 2, 12, 90, 13])
    assert out == [10, 50, 11, 50, 12, 90, 91, 92]
    assert state.ignores_used == 2 and state.count == 5 and state.phase is Phase.ANSWER


def test_min_tokens_forces_ignores_and_suppress_masks():
    out, state = run(ThinkingBudget(min_tokens=4), [90, 90, 10, 90, 11, 90])
    assert out == [50, 50, 10, 50, 11, 90, 91, 92] and state.ignores_used == 3
    state = BudgetState(ThinkingBudget(min_tokens=2, suppress=True), TOKENS)
    assert state.masked_ids() == TOKENS.end_ids
    state.accept(10, [])
    state.accept(11, [10])
    assert state.masked_ids() == frozenset()


def test_cap_counts_spliced_ignore_tokens():
    out, state = run(ThinkingBudget(max_tokens=3, num_ignore=5, final_answer_str="F"), [10, 11, 90, 12])
    assert out == [10, 11, 50, 90, 91, 92, 70, 71] and state.count == 3
