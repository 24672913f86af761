"""Answer extraction and equivalence, shared by curate (difficulty) and benchmarks (accuracy).

Extraction follows s1's eval tasks: keep the text after the think format's answer delimiter, then take
the last `\\boxed{}` / `\\fbox{}`, else the text after the last `Answer:`, else that answer text itself.
Equivalence is Hugging Face's math-verify, plus what it lacks: text answers compare case- and
space-insensitively, and multiple-choice outputs resolve to an option letter.

s1 asked gpt-4o-mini to judge non-integer answers; this module uses no remote judge, so free-form
references (some CHAMP answers are sentences) can be marked wrong where a judge would accept them.

Each comparison runs in a worker process under a wall-clock limit: math-verify's own timeouts use
SIGALRM, which works only on the main thread (and nests badly), and a sympy call cannot be interrupted
otherwise. A comparison that overruns kills the worker (the next one starts a new worker) and counts
as not equal.
"""
import atexit
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from benchmarks.evalsets import LETTERS

DEFAULT_TIMEOUT_S = 5.0


@functools.cache
def grader_version() -> str:
    """A digest of this module's source and math-verify's version: what was graded by another version (sample
    rows, cached pools) is graded again rather than mixed with this one's."""
    source = Path(__file__).read_bytes() + importlib.metadata.version("math-verify").encode()
    return hashlib.sha256(source).hexdigest()[:16]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_LABEL = re.compile(r"answer\s*:", re.IGNORECASE)
_TEXT_COMMAND = re.compile(r"^\\(?:text|textbf|mathrm|mbox)(?=\{)")
_WORDS = re.compile(r"[A-Za-z][A-Za-z '\-]*[A-Za-z]")
# a letter standing alone, as in "p - q" (symbols, not words); "a" and "I" may be words
_LONE_SYMBOL = re.compile(r"(?<![A-Za-z'])[B-HJ-Zb-z](?![A-Za-z])")
_STATED_LETTER = re.compile(r"(?i:\b(?:answer|option|choice)(?:\s+is)?)\s*:?\s*\(?([A-Z])\b")
_LETTER_THEN_TEXT = re.compile(r"^\(?([A-Z])\)?[,:.]?\s+(.+)$")
_LONE_LETTER = re.compile(r"^[(\[]?([A-Z])[)\]]?[.:]?$", re.IGNORECASE)  # "B", "(B)", "[B]", "b."
_LETTER_IS = re.compile(r"^\(?([A-Z])\)?\s+is\s+(?:the\s+)?(?:correct|right)(?:\s+(?:answer|option|choice))?\s*(?:[.!;,]|$)")
_HEDGE = re.compile(r"^(?:both|either)?\s*\(([A-Z])\)\s*(?:,|or|and|/)\s*\(([A-Z])\)\.?$", re.IGNORECASE)  # "(A) and (B)"
_LEADING_LETTER = re.compile(r"^\(?([A-Z])[).:]\s")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]", re.DOTALL)
# numbers offered as alternatives: "5 or 7", "$5$ and $7$", "x = 5, y = 7", a list "1, 2"
_CHOICES = re.compile(r"\d[^\d\n]{0,12}?\b(?:or|and)\b[^\d\n]{0,12}?\d|\d\$?\s*,\s+\$?[-+]?\d")
_ALTERNATIVES = re.compile(_CHOICES.pattern + r"|=[^=]*,[^=]*=")
_MATH_SPAN = re.compile(r"(?<!\\)\$[^$]*\$|\\\(.*?\\\)")
# what a text gives as its answer in so many words: "the answer is 42", or a sentence that ends on it ("the
# number of strings of length 6 on 1, 2 and 3 is 239.", "the value is approximately 3.14.")
_FILLER = r"(?:(?:only|exactly|precisely|always|therefore|thus|just|then|approximately|about|roughly|equal to|given by)\s+){0,2}"
_VALUE = r"(\$[^$]+\$|\\\(.+?\\\)|\d{1,3}(?:,\d{3})+(?![\d,])|[^\s,;$]+)"  # math, 2,001,000, or a word
_ANSWER_IS = re.compile(r"\banswer is\s*:?\s*" + _FILLER + _VALUE + r"(?!\s*(?:,|\bor\b|\band\b)\s*\$?[-+]?\d)",
                        re.IGNORECASE)  # not "the answer is 5 or 7"
_FINAL_MATH = re.compile(r"(?:(?<!\\)\$([^$]+)\$|\\\((.+?)\\\))\s*[.!]?\s*$")  # a text that ends on a math span
_CONDITION = r"(?:,\s*(?:which|when|where|achieved|attained|occurring|reached)\b[^.]*)?"  # ", which occurs when a = b"
_ASIDE = r"(?:\s*\([^()]*\))?"  # "... is 24 (since 1024 - 1000 = 24)."
_FINAL_STATEMENT = re.compile(r"\b(?:is|are|equals)\s+" + _FILLER + r"(?:[A-Za-z]\w*\s*=\s*)?" + _VALUE + _CONDITION
                              + _ASIDE + r"\s*[.!]?\s*$", re.IGNORECASE)  # "... is 239.", "... is a = -4."
# a count stated as the whole answer: "Therefore, there are 13 such numbers." (not "There are 2 cases, so 24.")
_THERE_ARE = re.compile(r"^(?:(?:therefore|thus|so|hence|in total|in all|altogether),?\s+)?there (?:are|is|were|was)\s+"
                        + _FILLER + r"(\d[\d,]*(?:\.\d+)?|\$[^$]+\$)"
                        + r"(?:[ \t]+(?:(?!\b(?:and|but|so|is|are|was|were|while|whereas|plus|with)\b)[^.,;:!?()\n])*)?[.!]?\s*$",
                        re.IGNORECASE)  # the words after the count add no clause: not "There are 5 boys and 7 girls"
_GROUPED_DIGITS = re.compile(r"(?<=\d)\\[,;: ](?=\d{3}(?!\d))")  # "12\,000": a thin space between digit groups
_PROSE_WORD = re.compile(r"\(?[A-Za-z]{2,}[.,;:!?)]?")
BOXED_PROSE_WORDS = 1  # words besides its math that an answer read as LaTeX may have ("12 meters")
PLAIN_PROSE_WORDS = 3  # ... that one read by math-verify's plain parse may have ("the 2nd one, 17")
_MATH_ON_LINE = re.compile(r"[\d$\\=^]")
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")  # a "$" that opens math, not an escaped dollar sign


def extract_answer(text: str, think_format: str = "s1") -> str | None:
    """The answer a model output gives, or None when it gives none.

    Without the answer delimiter (thinking cut off, or a non-thinking output) only a box or an
    `Answer:` counts, except that a one-line text is taken as a bare answer.
    """
    from engine.tokenizer import get_think_format  # here, so the grading worker does not load torch

    delimiter = get_think_format(think_format).think_end.strip()
    has_delimiter = delimiter in text
    region = text.rpartition(delimiter)[2] if has_delimiter else text
    if (boxed := _last_boxed(region)) is not None:
        answer = boxed
    elif labels := list(_ANSWER_LABEL.finditer(region)):
        answer = _labelled(region[labels[-1].end():])
    elif has_delimiter or "\n" not in region.strip():
        answer = region
    else:
        return None
    return _clean(answer) or None


def _labelled(after: str) -> str:
    """The answer after an `Answer:` label: its line, unless that line holds no math of its own ("", "The
    probability is"): then the first display-math block of its paragraph (`$$...$$` or `\\[...\\]`)."""
    paragraph = after.strip().lstrip("*_").strip().split("\n\n")[0]  # "**Final Answer:**\n42": the label's bold
    line = paragraph.splitlines()[0] if paragraph else ""
    display = _DISPLAY_MATH.search(paragraph)
    if display and (line.startswith(("$$", "\\[")) or not _MATH_ON_LINE.search(line)):
        return next(group for group in display.groups() if group is not None)
    return line


def grade(output_text: str, reference: str, *, choices: Sequence[str] | None = None, think_format: str = "s1",
          timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the output's answer equals `reference`. With `choices`, `reference` is the correct
    option's letter (or its text) and the output may answer with a letter or the option's text."""
    answer = extract_answer(output_text, think_format)
    if answer is None:
        return False
    if choices:
        return choice_letter(answer, choices) == _reference_letter(reference, choices)
    return equivalent(answer, reference, timeout_s=timeout_s)


def thinking_ended(text: str, thinking_text: str, finish_reason: str | None, answer_tokens: int) -> bool:
    """Whether a sample's thinking ended and its answer began. A length limit that stopped it before any
    answer token (inside a spliced delimiter, "...</think", or right after it) left thinking and splices
    only: no answer, however the text reads."""
    return len(text) > len(thinking_text) and not (finish_reason == "length" and answer_tokens == 0)


def verdict(output_text: str, reference: str, *, choices: Sequence[str] | None = None, think_format: str = "s1",
            ended_thinking: bool = True) -> dict:
    """A sample's grading, as its row keeps it: the extracted answer, what a majority vote counts (the option
    letter of a multiple-choice answer), whether it is correct, and this grader's version. A sample whose
    thinking never ended (cut by length, or never run) has no answer: its text is thinking."""
    extracted = extract_answer(output_text, think_format) if ended_thinking else None
    return {
        "extracted_answer": extracted,
        "vote": choice_letter(extracted, choices) if choices and extracted is not None else extracted,
        "correct": ended_thinking and grade(output_text, reference, choices=choices, think_format=think_format),
        "grader": grader_version(),
    }


def equivalent(answer: str, reference: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether two extracted answers mean the same (math-verify, or text compared case-insensitively)."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    answer, reference = _clean(answer), _clean(reference)
    if answer.split() == reference.split():
        return True
    if _is_text(answer) and _is_text(reference):
        # math-verify would read words as products of symbols, so "listen" would equal "silent"
        return _normalized_text(answer) == _normalized_text(reference)
    try:
        return _WORKER.compare(answer, reference, timeout_s)
    except TimeoutError:
        return False


def _last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (braces nest), or of `\\boxed 5`."""
    starts = sorted(m.start() for command in _BOX_COMMANDS for m in re.finditer(re.escape(command), text))
    for start in reversed(starts):
        rest = text[start:]
        after = rest[len(next(c for c in _BOX_COMMANDS if rest.startswith(c))):]
        content = after.lstrip()
        if content.startswith("{"):
            inner = _braced(content)
            if inner is not None:
                return inner
        elif after[:1].isspace() and content:
            return content.split()[0].strip("$.")
    return None


def _braced(text: str) -> str | None:
    depth = 0
    for i, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[1:i]
    return None  # cut off before the closing brace


def _clean(answer: str) -> str:
    """Without the decoration around an answer: bold marks, a final period, `$...$`, `\\text{...}`."""
    answer = answer.strip().strip("*").strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) > 1 and answer.startswith("$") and answer.endswith("$") and "$" not in answer.strip("$"):
        answer = answer.strip("$").strip()  # one math span, not "$5$ or $7$"
    while (inner := _text_command_content(answer)) is not None:
        answer = inner.strip()
    return answer


def _text_command_content(answer: str) -> str | None:
    """`x` when the whole answer is `\\text{x}` (or \\textbf, \\mathrm, \\mbox), else None."""
    command = _TEXT_COMMAND.match(answer)
    if command and _braced(answer[command.end():]) == answer[command.end() + 1:-1]:
        return answer[command.end() + 1:-1]
    return None


def _normalized_text(answer: str) -> str:
    return " ".join(answer.casefold().split())


def _is_text(answer: str) -> bool:
    """Words, as in "Evelyn" or "even number"; not an expression of one-letter symbols such as "p-q"."""
    return _WORDS.fullmatch(answer) is not None and _LONE_SYMBOL.search(answer) is None


def choice_letter(answer: str, choices: Sequence[str]) -> str | None:
    """The option letter an extracted answer gives (a letter in any of its usual dresses, or an option's
    text), or None."""
    valid = LETTERS[: len(choices)]
    answer = answer.replace("**", "")  # "The correct answer is **B**."
    if (match := _LONE_LETTER.match(answer)) and match.group(1).upper() in valid:
        return match.group(1).upper()
    by_text = {_normalized_text(_clean(choice)): LETTERS[i] for i, choice in enumerate(choices)}
    if _normalized_text(answer) in by_text:
        return by_text[_normalized_text(answer)]
    if (hedge := _HEDGE.match(answer)) and hedge.group(1) != hedge.group(2):  # two options offered: none given
        return None
    for pattern in (_LEADING_LETTER, _LETTER_IS):
        match = pattern.match(answer)
        if match and match.group(1).upper() in valid:
            return match.group(1).upper()
    # "B Electron", "B, Electron": a letter, then that option's own text (else "A proton" would read as A)
    if (match := _LETTER_THEN_TEXT.match(answer)) and by_text.get(_normalized_text(_clean(match.group(2)))) == match.group(1):
        return match.group(1)
    in_parens = [letter for letter in _PAREN_LETTER.findall(answer) if letter in valid]
    if in_parens:  # "(C), since option A ignores spin": the letter in parentheses is the one given
        return in_parens[-1]
    stated = [letter for letter in _STATED_LETTER.findall(answer) if letter in valid]  # "The answer is B", "Option B"
    return stated[-1] if stated else None


def _reference_letter(reference: str, choices: Sequence[str]) -> str:
    letter = choice_letter(_clean(reference), choices)
    if letter is None:
        raise ValueError(f"reference {reference!r} is neither an option letter A..{LETTERS[len(choices) - 1]} "
                         f"nor the text of one of the {len(choices)} choices")
    return letter


def _math_verify(answer: str, reference: str) -> bool:
    from math_verify import parse, verify

    # The worker's wall-clock limit replaces math-verify's own SIGALRM limits (None turns them off).
    gold = parse(_as_latex(_GROUPED_DIGITS.sub("", reference)), parsing_timeout=None)
    return any(verify(gold, parse(prediction, parsing_timeout=None), timeout_seconds=None)
               for prediction in _predictions(_GROUPED_DIGITS.sub("", answer)))


def _predictions(answer: str) -> list[str]:
    """What math-verify reads an answer as. Bare LaTeX in a box ("\\frac{3}{4}", "12 meters": at most
    BOXED_PROSE_WORDS words besides its math); the text itself, whose plain parse takes the last number or
    math span it finds ("12 cm^2", "the 2nd one, 17": at most PLAIN_PROSE_WORDS words), unless it offers
    alternatives ("5 or 7", "1, 2") or is an expression ("1 + x" is not 1). In any answer, the value it
    gives in so many words ("the answer is 42", a sentence that ends "... is 239."), else the math it
    ends on ("so $m + n = 19$": after its last "="). Other prose (a restated question, thinking cut off,
    a derivation naming intermediate values) is no answer: the numbers it mentions are not the answer's."""
    prose = sum(bool(_PROSE_WORD.fullmatch(word)) for word in _MATH_SPAN.sub(" ", answer).split())
    predictions = []
    if prose <= BOXED_PROSE_WORDS and not _MATH_DOLLAR.search(answer):
        predictions.append(_as_latex(answer))
    if prose <= PLAIN_PROSE_WORDS and not _ALTERNATIVES.search(answer) and not re.search("[+=]", answer):
        predictions.append(answer)  # not for an expression: the plain parse reads "1 + x" as 1
    stated = [m.group(1) for m in (_ANSWER_IS.search(answer), _FINAL_STATEMENT.search(answer),
                                   _THERE_ARE.match(answer.strip().strip("*"))) if m]
    if not stated and not _CHOICES.search(answer) and (math := _FINAL_MATH.search(answer)):
        # "$m = 7, n = 12$, so $m + n = 19$": its last right-hand side; not "$5$ or $7$"
        stated.append((math.group(1) or math.group(2)).rsplit("=", 1)[-1])
    return predictions + [_as_latex(_clean(v.rstrip(".,;:"))) for v in dict.fromkeys(stated)]


def _as_latex(answer: str) -> str:
    return answer if _MATH_DOLLAR.search(answer) else f"\\boxed{{{answer}}}"


class _Worker:
    """A child process that runs `_math_verify`, one request at a time, as JSON lines over its stdin and
    stdout; a request that overruns its limit is killed with the process. A plain subprocess rather
    than multiprocessing, which would re-import the caller's __main__ (unguarded scripts fail)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def compare(self, answer: str, reference: str, timeout_s: float) -> bool:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            try:
                self._process.stdin.write(json.dumps([answer, reference]) + "\n")
                self._process.stdin.flush()
            except BrokenPipeError:
                self._stop()
                raise RuntimeError("the grading worker exited unexpectedly; see its error output above") from None
            if not select.select([self._process.stdout], [], [], timeout_s)[0]:
                self._stop()
                raise TimeoutError(f"comparing {answer!r} with {reference!r} took longer than {timeout_s} s")
            return json.loads(self._read_line())

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                self._stop()

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from benchmarks.grading import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        if self._read_line() != "ready":  # startup (imports) does not count against the first limit
            raise RuntimeError("the grading worker did not start; see its error output above")

    def _read_line(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            self._stop()
            raise RuntimeError("the grading worker exited unexpectedly; see its error output above")
        return line.strip()

    def _stop(self) -> None:
        self._process.kill()
        self._process.wait()
        self._process.stdin.close()
        self._process.stdout.close()
        self._process = None


def _serve() -> None:
    """The worker's loop: reads [answer, reference] lines, writes true/false lines."""
    import math_verify  # noqa: F401  (loaded before "ready", so the first limit does not pay for it)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends the worker

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeouts are off
    replies, sys.stdout = sys.stdout, sys.stderr  # stray prints from libraries must not garble the replies
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        print(json.dumps(_math_verify(*json.loads(line))), file=replies, flush=True)


_WORKER = _Worker()
atexit.register(_WORKER.close)
