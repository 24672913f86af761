"""engine.conversation: the ids SFT trains on are the ids the engine produces when it forces the same text."""
import pytest
from transformers import AutoTokenizer

from engine.conversation import conversation_ids, prompt_ids
from engine.tokenizer import Tokenizer, get_think_format

QUESTION, THINKING, ANSWER = "What is 2+2?", "Two plus two makes four.", "The answer is 4."
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


@pytest.mark.parametrize("format_name", ["s1", "r1"])
def test_what_the_engine_forces_is_what_sft_trains_on(make_model, tokenizer, format_name):
    from engine import LLM, SamplingParams, ThinkingBudget

    llm = LLM(model=make_model("llama"))
    answer = "So the answer is 4."
    budget = ThinkingBudget(max_tokens=0, final_answer_str=answer, max_answer_tokens=0)
    out = llm.chat(CHAT, SamplingParams(max_tokens=64, budget=budget, think_format=format_name), use_tqdm=False)[0]
    forced = out.prompt_token_ids + out.token_ids  # the prompt, the spliced delimiter, the answer
    ids, _ = conversation_ids(tokenizer, CHAT + [{"role": "assistant", "thinking": "", "content": answer}],
                              get_think_format(format_name))
    assert ids[: len(forced)] == forced


def test_r1_delimiter_is_the_one_the_engine_splices(tokenizer, tokenizer_dir):
    r1 = get_think_format("r1")
    spliced = Tokenizer(tokenizer_dir).encode_piece(r1.think_end)
    assert tokenizer.decode(spliced[-1:]) == "\n\n"  # one token
    in_context = tokenizer.encode(r1.render(THINKING, ANSWER), add_special_tokens=False)
    assert not contains(in_context, spliced)  # encoded in one go, the answer's text splits '\n\n' into '\n', '\n'
    input_ids, _ = conversation_ids(tokenizer, CHAT + [{"role": "assistant", "thinking": THINKING, "content": ANSWER}],
                                    r1)
    assert contains(input_ids, tokenizer.encode(THINKING, add_special_tokens=False) + spliced)


def test_later_turns_follow_the_template_and_plain_turns_have_no_thinking(tokenizer):
    s1 = get_think_format("s1")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": QUESTION}, {"role": "assistant", "thinking": THINKING, "content": ANSWER}]
    input_ids, loss_mask = conversation_ids(tokenizer, messages, s1)
    first = prompt_ids(tokenizer, messages[:1], None)
    assert input_ids[:len(first)] == first
    assert tokenizer.decode(input_ids) == tokenizer.apply_chat_template(
        [*messages[:3], {"role": "assistant", "content": s1.render(THINKING, ANSWER)}], tokenize=False)
    assert tokenizer.decode([t for t, m in zip(input_ids, loss_mask) if m]) == (
        "Hello!<|im_end|>" + THINKING + s1.think_end + ANSWER + "<|im_end|>")


def test_thinking_needs_a_think_format(tokenizer):
    with pytest.raises(ValueError, match="thinking but no think format"):
        conversation_ids(tokenizer, CHAT + [{"role": "assistant", "thinking": THINKING, "content": ANSWER}], None)


def test_a_template_that_rewrites_the_answer_is_refused(tokenizer):
    messages = CHAT + [{"role": "assistant", "content": ANSWER}]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | upper")
    with pytest.raises(ValueError, match="does not render assistant turn 2 verbatim"):
        conversation_ids(tokenizer, messages, None)


@pytest.mark.parametrize("messages, error, message", [
    ([{"role": "user"}], ValueError, r"messages\[0\] has no content"),
    ([{"role": "user", "content": None}], TypeError, r"messages\[0\].content must be a string, got NoneType"),
    ([{"role": "user", "content": "\ud800"}], ValueError, r"messages\[0\].content is not valid Unicode"),
    ([{"role": "bogus", "content": "x"}], ValueError, "has role 'bogus'; it must be one of system, user, assistant"),
    ([], ValueError, "a conversation is a non-empty list"),
    (["hi"], TypeError, r"messages\[0\] must be a dict"),
])
def test_bad_messages_are_named(tokenizer, messages, error, message):
    with pytest.raises(error, match=message):
        prompt_ids(tokenizer, messages, None)
