import json
import threading
import time

import pytest

from benchmarks.grading import choice_letter, equivalent, extract_answer, grade

S1_ANSWER = "<|im_start|>answer\n"

# (model output, reference, equal?): bare one-line outputs are answers themselves.
MATH_PAIRS = [
    # fractions
    ("\\frac{3}{4}", "\\frac{3}{4}", True),
    ("\\frac{6}{8}", "\\frac{3}{4}", True),
    ("3/4", "\\frac{3}{4}", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\tfrac12", "\\frac{1}{2}", True),
    ("\\frac{3}{5}", "\\frac{3}{4}", False),
    ("-\\frac{1}{2}", "\\frac{1}{2}", False),
    # decimals
    ("0.5", "\\frac{1}{2}", True),
    ("2.0", "2", True),
    ("1,000", "1000", True),
    ("3.14", "3.15", False),
    ("0.333", "\\frac{1}{3}", False),
    ("10.5", "10", False),
    # radicals
    ("\\sqrt{18}", "3\\sqrt{2}", True),
    ("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\sqrt[3]{8}", "2", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}", False),
    # intervals
    ("(1, 2]", "(1,2]", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("[1, 2]", "(1,2]", False),
    ("[0, \\infty)", "(0, \\infty)", False),
    # sets
    ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("\\{1, 2\\}", "\\{1, 3\\}", False),
    ("\\{1, 2, 3\\}", "\\{1, 2\\}", False),
    # degrees
    ("30^\\circ", "30", True),
    ("30", "30^{\\circ}", True),
    ("45^\\circ", "30^\\circ", False),
    # percent
    ("50\\%", "50", True),
    ("12.5\\%", "12.5", True),
    ("25\\%", "50\\%", False),
    # an equation against its value
    ("x = 3", "3", True),
    ("3", "x = 3", True),
    ("y=-2", "-2", True),
    ("x = 4", "3", False),
    # text answers
    ("Electron", "electron", True),
    ("\\text{Monday}", "monday", True),
    ("  Even   number ", "even number", True),
    ("listen", "silent", False),
    ("odd", "even", False),
    ("yes", "no", False),
    # expressions, tuples, units, integers
    ("2^{n-1}", "2^(n-1)", True),
    ("2\\pi", "2 \\pi", True),
    ("(3, 4)", "(3,4)", True),
    ("\\$12", "12", True),
    ("12 meters", "12", True),
    ("2^{n+1}", "2^(n-1)", False),
    ("\\pi", "3.14159", False),
    ("(4, 3)", "(3,4)", False),
    ("25", "24", False),
    ("-7", "7", False),
    # expressions of one-letter symbols are math, not text; words with "a" or an apostrophe stay text
    ("p-q", "p - q", True),
    ("a-b", "a - b", True),
    ("p-q", "q-p", False),
    ("Evelyn's", "evelyn's", True),
    ("a square", "A square", True),
    # prose: the plain parse reads a text with one number only
    ("5 or 7", "7", False),
    ("x = 5, y = 7", "7", False),
    ("$5$ or $7$", "7", False),
    ("1, 2", "2", False),  # a list is not its last member
    ("1 + x", "1", False),  # an expression is not its first number (the s1 loop's fine-tuned model wrote these)
    ("1 + 1 + 1 + 1 + 1 + 1 +", "1", False),
    ("-2, 2", "2", False),
    ("x = 3 or x = 5", "5", False),
    ("$$7$$", "7", True),
]

OUTPUT_PAIRS = [
    ("Let me think.\n3*4=12.\n" + S1_ANSWER + "Final Answer: \\boxed{12}", "12", True),
    ("Let me think.\n3*4=12.\n" + S1_ANSWER + "Final Answer: \\boxed{13}", "12", False),
    ("Halve it.\n" + S1_ANSWER + "Final Answer: The final answer is $\\boxed{\\frac{1}{2}}$", "0.5", True),
    ("Maybe \\boxed{5}.\nNo.\n" + S1_ANSWER + "Final Answer: 7", "5", False),  # thinking's box is not the answer
    ("Maybe \\boxed{5}.\nNo.\n" + S1_ANSWER + "Final Answer: 7", "7", True),
    ("Thinking cut off\n\\boxed{12}\nbut", "12", True),  # no delimiter: a box still counts
    ("Thinking cut off\nat 12\nbut", "12", False),  # no delimiter, no box, no Answer: no answer
    (S1_ANSWER + "\\fbox{7}", "7", True),
    (S1_ANSWER + "So \\boxed{\\frac{\\sqrt{3}}{2}}.", "\\frac{\\sqrt3}{2}", True),
    (S1_ANSWER + "Answer:\n\n10", "10", True),
    (S1_ANSWER + "**Final Answer:** 15", "15", True),
    (S1_ANSWER + "The answer is $\\frac{3}{4}$.", "0.75", True),
    # display math on the lines after the label
    (S1_ANSWER + "Final Answer:\n$$\n\\frac{3}{4}\n$$", "\\frac{3}{4}", True),
    (S1_ANSWER + "Final Answer:\n\\[\n\\frac{3}{4}\n\\]", "0.75", True),
    (S1_ANSWER + "Final Answer: The probability is\n$$\\frac34$$", "\\frac{3}{4}", True),
    (S1_ANSWER + "Final Answer: 5\n\n$$7$$", "5", True),  # display math of a later paragraph is not the answer
    (S1_ANSWER + "Answer: 5\n$$2x+3=13$$", "5", True),  # the label's line has the answer: not the display
    (S1_ANSWER + "Answer: x = 5\n$$x^2 = 25$$", "5", True),
    # prose with other numbers than the answer's, but no alternatives
    (S1_ANSWER + "Answer: 12 cm^2", "12", True),
    (S1_ANSWER + "Final Answer: 9.8 m/s^2", "9.8", True),
    (S1_ANSWER + "Answer: the 2nd one, 17", "17", True),
    (S1_ANSWER + "Final Answer: The answer is 42 since 6 times 7 is 42", "42", True),
    (S1_ANSWER + "Answer: The answer is 7 (from 3+4).", "7", True),
    (S1_ANSWER + "So after 3 steps the final answer is 42.", "42", True),
    (S1_ANSWER + "Therefore, the maximum value of the whole expression is $\\frac{1}{2}$.", "1/2", True),
    (S1_ANSWER + "So the number of such positive integers n below the bound is 42.", "42", True),
    (S1_ANSWER + "So the number of such positive integers n below the bound is 41.", "42", False),
    # a derivation names intermediate values: the answer is the one it gives in so many words, or ends on
    (S1_ANSWER + "Final Answer: Since $f(1) = 3$, the answer is 7.", "3", False),
    (S1_ANSWER + "Final Answer: Since $f(1) = 3$, the answer is 7.", "7", True),
    (S1_ANSWER + "Final Answer: $N = 2016$, so the remainder is 16.", "2016", False),
    (S1_ANSWER + "Final Answer: When $x = 2$, the minimum value is 5.", "2", False),
    (S1_ANSWER + "Final Answer: The two numbers are 12 and 15.", "12", False),
    (S1_ANSWER + "Final Answer: The answer is 5 or 7.", "5", False),
    (S1_ANSWER + "Final Answer: Thus $m + n = 7 + 12 = 19$.", "7", False),
    (S1_ANSWER + "Final Answer: $m = 7, n = 12$, so $m + n = 19$", "19", True),
    (S1_ANSWER + "Final Answer: The expression simplifies to $\\frac{x+1}{x-1}$.", "\\frac{x+1}{x-1}", True),
    (S1_ANSWER + "Final Answer: The value is approximately 3.14.", "3.14", True),
    (S1_ANSWER + "Final Answer: The value of a that makes one root the sum of the others is a = -4.", "-4", True),
    (S1_ANSWER + "Final Answer: It factorizes to \\((x + y)(x - y)\\).", "(x+y)(x-y)", True),
    (S1_ANSWER + "Final Answer: The smallest value of the whole expression is 8, achieved when a = b = c.", "8", True),
    (S1_ANSWER + "Final Answer: The smallest value of the whole expression is 8, achieved when a = b = c.", "c", False),
    (S1_ANSWER + "**Final Answer:**\n42", "42", True),
    (S1_ANSWER + "**Final Answer:**\n\n$$42$$", "42", True),
    (S1_ANSWER + "For any composite number n, the value of (n-1)! mod n(n-1)/2 is always 0.", "0", True),
    (S1_ANSWER + "The number of involutions on the set {1, 2, 3, 4, 5, 6} is 76.", "76", True),
    (S1_ANSWER + "A minimum of 26 questions is required to determine the product of the 50 numbers.", "50", False),
    # a count stated as the whole answer; an aside after the value; digit groups split by a thin space
    (S1_ANSWER + "Final Answer: Therefore, there are 13 such numbers.", "13", True),
    (S1_ANSWER + "Final Answer: There are 13 two-digit multiples of 7.", "13", True),
    (S1_ANSWER + "Final Answer: There are 13 two-digit multiples of 7.", "7", False),
    (S1_ANSWER + "Final Answer: There are 2 cases, giving 24.", "2", False),
    (S1_ANSWER + "Final Answer: There are 2 real roots and their sum is 7", "2", False),
    (S1_ANSWER + "Final Answer: There are 5 boys and 7 girls.", "5", False),
    (S1_ANSWER + "Final Answer: The remainder is 24 (since 1024 - 1000 = 24).", "24", True),
    (S1_ANSWER + "Final Answer: The remainder is 24 (since 1024 - 1000 = 24).", "1000", False),
    (S1_ANSWER + "Final Answer: $12\\,000$", "12000", True),
    (S1_ANSWER + "Final Answer: 12\\,000", "12{,}000", True),
    (S1_ANSWER + "Final Answer: $3\\,4$", "34", False),
    # long prose that only mentions the reference is not an answer
    (S1_ANSWER + "To find the number of strings of length 6 that have adjacent digit", "6", False),
    (S1_ANSWER + "The question asks for $3^2+4^2$. I am not sure.", "25", False),
    (S1_ANSWER + "We first compute $2^{10} = 1024$ and then reduce it modulo 1000", "1000", False),
    ("Let me compute 2+2=4, then multiply by 6 to get 24, hmm but maybe", "24", False),  # thinking cut off
    (S1_ANSWER + "The integer part of the sum 1/(x_1+x_2+x_3+...+x_100+x_2+x_3+x_1", "1", False),  # cut at the cap
]


@pytest.mark.parametrize("output, reference, expected", MATH_PAIRS + OUTPUT_PAIRS)
def test_grade_pairs(output, reference, expected):
    assert grade(output, reference) is expected


def test_enough_hand_written_pairs():
    assert len(MATH_PAIRS) + len(OUTPUT_PAIRS) + len(CHOICE_PAIRS) >= 60


CHOICES = ("Photon", "Electron", "Proton", "Neutron")
CHOICE_PAIRS = [
    ("(B)", "B", True),
    ("B)", "B", True),
    ("Answer: B", "B", True),
    ("B", "B", True),
    ("b.", "B", True),
    ("\\boxed{B}", "B", True),
    ("\\boxed{\\text{B}}", "B", True),
    ("B) Electron", "B", True),
    ("The answer is (B).", "B", True),
    ("electron", "B", True),
    ("Thinking about charges.\n" + S1_ANSWER + "Final Answer: (B)", "B", True),
    ("Answer: C", "B", False),
    ("(D)", "B", False),
    ("Proton", "B", False),
    ("E", "B", False),  # not an option of four
    ("(B)", "Electron", True),  # a reference given as the option's text
    ("The answer is B", "B", True),
    ("The correct answer is B.", "B", True),
    ("Option B", "B", True),
    ("B Electron", "B", True),
    ("B, Electron", "B", True),
    ("A proton", "A", False),  # an article, not option A
    ("The answer is a proton", "A", False),
    ("The correct choice is (C), since option A ignores spin", "C", True),  # parentheses over a rejected option
    ("Not option A, but (C)", "C", True),
    ("Option A and B fail, so (D)", "D", True),
    ("The correct answer is **B**.", "B", True),
    ("[B]", "B", True),
    ("B is correct", "B", True),
    ("B is the correct answer.", "B", True),
    ("(A) and (B)", "A", False),  # two options offered: no answer
    ("(A) or (B)", "B", False),
    ("(C) since (A) and (B) ignore spin", "C", True),  # options named in prose are not a hedge
    ("C. Options (A) and (B) both ignore spin.", "C", True),
    ("C is correct; (A) and (B) ignore spin", "C", True),
    # an opening "(A)," or "(A)." may be an option being rejected: the last option in parentheses is the one given
    ("(A), (B) and (D) are incorrect; the correct answer is (C).", "C", True),
    ("(A): wrong; (B): wrong; (C): right", "C", True),
    ("(A). Wait, it is (C)", "C", True),
    ("A is right-angled, so the answer is (C)", "C", True),
    ("A is correct only for bosons; the answer is B", "B", True),
]


@pytest.mark.parametrize("output, reference, expected", CHOICE_PAIRS)
def test_grade_multiple_choice(output, reference, expected):
    assert grade(output, reference, choices=CHOICES) is expected


def test_multiple_choice_reference_must_be_an_option():
    with pytest.raises(ValueError, match="neither an option letter A..D"):
        grade("(B)", "E", choices=CHOICES)


@pytest.mark.parametrize("text, expected", [
    ("x\n" + S1_ANSWER + "\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("\\boxed{3} then \\boxed{4}", "4"),  # the last box
    ("\\boxed{3} then \\boxed{\\frac{1}{2", "3"),  # a box cut off is skipped
    ("so \\boxed 5.", "5"),
    ("so \\boxed {5}", "5"),
    ("Answer: 3\nlater Answer: 4", "4"),  # the last Answer:
    ("answer : (C)", "(C)"),
    ("thinking\n" + S1_ANSWER + "  42.  ", "42"),  # the answer text itself
    ("thinking\n" + S1_ANSWER + "$x = 3$", "x = 3"),
    ("thinking \\boxed{1}\n" + S1_ANSWER + "Answer: 2", "2"),  # only the answer part
    ("B", "B"),  # a one-line text is a bare answer
    ("many\nlines\nno answer", None),
    ("thinking\n" + S1_ANSWER, None),
    ("thinking\n" + S1_ANSWER + "Final Answer:", None),  # cut off right after the label
    ("thinking\n" + S1_ANSWER + "\\boxed{}", None),
    ("", None),
])
def test_extract_answer_s1(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_r1_format():
    text = "<think>\nwe get \\boxed{3}\n</think>\n\nThe answer is \\boxed{4}."
    assert extract_answer(text, think_format="r1") == "4"
    assert extract_answer(text, think_format="qwen3") == "4"
    assert extract_answer("<think>\nlong\nthinking\n</think>\n\n7", think_format="r1") == "7"
    assert grade("<think>\nhmm\n</think>\n\nAnswer: 42", "42", think_format="r1")


def test_unknown_think_format():
    with pytest.raises(ValueError, match="unknown think format"):
        extract_answer("x", think_format="nope")


def test_slow_comparison_counts_as_not_equal_and_worker_recovers():
    start = time.monotonic()
    assert not equivalent("(x+1)^{3000}", "(x+2)^{3000}", timeout_s=1)  # sympy needs ~30 s for this
    assert time.monotonic() - start < 10
    assert equivalent("\\frac{6}{8}", "0.75")


def test_grading_off_the_main_thread():
    results = []
    threads = [threading.Thread(target=lambda: results.append(grade("\\boxed{\\frac{6}{8}}", "0.75")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True]


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        equivalent("1", "2", timeout_s=0)


def test_ctrl_c_is_the_callers_not_the_workers():
    """A terminal's Ctrl-C reaches the grading worker too: it must neither die nor print a traceback."""
    import os
    import signal

    from benchmarks.grading import _WORKER

    assert equivalent("\\frac{6}{8}", "0.75")  # the worker runs
    worker = _WORKER._process
    os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.5)
    assert worker.poll() is None and _WORKER._process is worker
    assert equivalent("\\frac{6}{8}", "0.75") and not equivalent("\\frac{5}{8}", "0.75")


def test_grade_champ_grades_real_summaries_and_compares(tmp_path, capsys):
    pytest.importorskip("champ_dataset")
    from benchmarks import grade_champ

    out = tmp_path / "grades.json"
    assert grade_champ.main(["--limit", "2", "--out", str(out)]) == 0
    grades = json.loads(out.read_text())
    assert grades and all(len(g) == 3 and isinstance(g[2], bool) for g in grades.values())
    first = next(iter(grades))
    grades[first][2] = not grades[first][2]  # as if another grader had judged it the other way
    out.write_text(json.dumps(grades))
    assert grade_champ.main(["--limit", "2", "--compare", str(out), "--show", "1"]) == 0
    printed = capsys.readouterr().out
    assert "of 2 problems have one" in printed
    assert ("1 now correct, 0 no longer" if grades[first][2] is False else "0 now correct, 1 no longer") in printed


def test_an_option_whose_text_names_two_options_is_not_a_hedge():
    choices = ("Only (A)", "Only (B)", "Both (A) and (B)", "Neither")
    assert choice_letter("Both (A) and (B)", choices) == "C"
    assert grade(S1_ANSWER + "Final Answer: Both (A) and (B)", "Both (A) and (B)", choices=choices)
    assert grade(S1_ANSWER + "Final Answer: (C)", "C", choices=choices)
