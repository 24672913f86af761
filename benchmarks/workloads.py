"""Throughput workloads: fixed prompts and lengths, shared by the engine and its peer in one run.

Sizes follow the spec at BENCH_SCALE=1 (the default); a smaller scale shrinks every length and
count for smoke runs (e.g. BENCH_SCALE=0.25).
"""
import os
import random
from dataclasses import dataclass

SEED = 0

# Plain English prose: prompts are windows of its tokens, so every prompt is real-looking text of an
# exact token length, and no two prompts share a prefix.
CORPUS = """\
The history of the printing press is usually told as the story of one man and one machine, but the
technology that Johannes Gutenberg assembled in Mainz around 1450 drew on many older crafts. Paper had
travelled west from China through the Islamic world; oil-based inks came from painters; the screw press
had pressed grapes and olives for centuries. What was new was the adjustable type mould, which let a
caster produce thousands of identical letters quickly, and the alloy of lead, tin and antimony that
filled it. Within fifty years presses were running in more than two hundred European towns, and the
price of a book had fallen so far that a skilled worker could own several.
The consequences were slow and uneven. Scholars could compare identical copies of a text across
cities, which made errors visible and corrections cumulative. Merchants printed price lists and
calendars, governments printed decrees, and reformers printed pamphlets faster than anyone could burn
them. Spelling began to settle, because a compositor in Venice and one in Antwerp were setting the
same words for the same readers. Yet most people still heard texts read aloud long before they read
them alone, and handwritten manuscripts remained common for letters, accounts and private notes.
A river delta forms where a slow current drops the sand and silt it has carried from the mountains.
Each flood spreads a thin layer of sediment across the plain, and over thousands of years these layers
build land out into the sea. The main channel wanders: when it becomes too long and too shallow, a
flood breaks through a bank and the river takes a shorter path, abandoning the old lobe to the waves.
Farmers have always been drawn to deltas because the soil is young and rich, but living there means
accepting that the ground itself is temporary. Dams upstream now trap much of the sediment that once
renewed the land, and many deltas are sinking faster than new material arrives.
In the kitchen, bread is a lesson in patience and temperature. Yeast feeds on the sugars released when
flour meets water, producing carbon dioxide that the stretchy gluten network traps in small bubbles. A
cool, slow rise develops more flavour than a warm, fast one, because enzymes and bacteria have time to
break starches into more complex compounds. Shaping tightens the surface so the loaf holds its form,
and a hot oven with steam lets the crust stay soft long enough for the dough to expand before it sets.
The crackle of a cooling loaf is the crust contracting as it loses heat and moisture.
Software projects fail less often from hard problems than from unclear ones. A team that cannot state
what the program must do, for whom, and how they will know it works, will build something, but rarely
the right thing. Small, frequent releases help because each one is a question put to reality: does
this change make the user's task easier or not? Tests record the answers so they are not forgotten,
and code review spreads the knowledge of why the system is shaped as it is. None of this removes the
need for judgement; it only makes mistakes cheaper to notice and to undo.
"""

MATH_QUESTIONS = [
    "A store sells pencils at 3 for $0.75 and erasers at 2 for $0.90. How much do 12 pencils and "
    "5 erasers cost in total?",
    "Find all real solutions of the equation x^2 - 5x + 6 = 0, and give their sum and product.",
    "A train leaves a station at 60 km/h. Two hours later a second train leaves the same station on "
    "the same track at 90 km/h. How long after the second train departs does it catch the first?",
    "What is the remainder when 7^100 is divided by 13?",
    "A rectangle has a perimeter of 46 cm and a diagonal of 17 cm. What is its area?",
    "How many positive integers less than 1000 are divisible by 3 or 5 but not by 15?",
    "Two fair six-sided dice are rolled. What is the probability that the sum is a prime number?",
    "The sum of three consecutive odd integers is 141. What is the product of the smallest and the "
    "largest of them?",
]


def scale() -> float:
    value = float(os.environ.get("BENCH_SCALE", "1"))
    if not value > 0:
        raise ValueError(f"BENCH_SCALE must be positive, got {value}")
    return value


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, round(n * scale()))


def rounds(default: int) -> int:
    return int(os.environ.get("BENCH_ROUNDS", default))


def warmup_rounds(default: int) -> int:
    return int(os.environ.get("BENCH_WARMUP", default))


def spread(lo: int, hi: int, n: int) -> list[int]:
    """n integers evenly spread over [lo, hi], both ends included."""
    if n == 1:
        return [hi]
    return [round(lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def text_prompts(tokenizer, lengths: list[int]) -> list[list[int]]:
    """Token-id prompts of exactly these lengths: windows of the corpus at distinct offsets (wrapping)."""
    corpus = tokenizer.encode_piece(CORPUS)
    rng = random.Random(SEED)
    prompts = []
    for n in lengths:
        start = rng.randrange(len(corpus))
        prompts.append([corpus[(start + i) % len(corpus)] for i in range(n)])
    return prompts


@dataclass(frozen=True)
class SingleWorkload:  # (a)
    prompt: list[int]
    new_tokens: int


@dataclass(frozen=True)
class BatchWorkload:  # (b)
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def useful_tokens(self) -> int:
        return sum(self.output_lens)


@dataclass(frozen=True)
class BudgetWorkload:  # (c)
    questions: list[str]
    thinking_tokens: int  # ThinkingBudget.max_tokens
    num_ignore: int
    max_tokens: int  # SamplingParams.max_tokens: thinking + delimiter + answer


@dataclass(frozen=True)
class SweepWorkload:  # (d)
    questions: list[str]
    caps: list[int]  # ThinkingBudget.max_tokens of the settings, evenly spread up to the largest
    num_ignore: int  # high, so that thinking runs on to each cap
    max_tokens: int


@dataclass(frozen=True)
class SamplesWorkload:  # (e)
    prompt: list[int]
    n: int
    new_tokens: int


@dataclass(frozen=True)
class ScoringWorkload:  # (f)
    contexts: list[list[int]]  # one per question; each choice's pair repeats it
    choices: list[list[int]]  # continuations, `per_context` for each context in turn
    per_context: int

    @property
    def pairs(self) -> list[tuple[list[int], list[int]]]:
        return [(self.contexts[i // self.per_context], c) for i, c in enumerate(self.choices)]

    @property
    def tokens(self) -> int:
        return sum(len(a) + len(b) for a, b in self.pairs)


# ---- sizes: the spec at scale 1 ----


def single_sizes() -> tuple[int, int]:
    """(prompt tokens, new tokens)"""
    return scaled(128), scaled(128)


def batch_sizes() -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(requests, (shortest, longest) prompt, (shortest, longest) output)"""
    return scaled(32, minimum=2), (scaled(32), scaled(512)), (scaled(16), scaled(256))


def budget_sizes() -> tuple[int, int, int]:
    """(questions, thinking budget, SamplingParams.max_tokens)"""
    thinking = scaled(256)
    return scaled(len(MATH_QUESTIONS)), thinking, thinking + scaled(128)


def sweep_sizes() -> tuple[int, list[int], int]:
    """(questions, the 6 thinking caps, SamplingParams.max_tokens)"""
    largest = scaled(192)
    return scaled(len(MATH_QUESTIONS)), spread(largest // 6, largest, 6), largest + scaled(64)


def samples_sizes() -> tuple[int, int, int]:
    """(prompt tokens, n, new tokens per sample)"""
    return scaled(256), 8, scaled(64)


def scoring_sizes() -> tuple[int, int, int, tuple[int, int]]:
    """(questions, choices per question, context tokens, (shortest, longest) choice)"""
    return scaled(16, minimum=2), 4, scaled(192), (scaled(4), scaled(24))


def group_names() -> dict[str, str]:
    """pytest-benchmark group per scenario, naming the sizes actually run."""
    prompt, new = single_sizes()
    n, (p_lo, p_hi), (o_lo, o_hi) = batch_sizes()
    questions, thinking, _ = budget_sizes()
    sweep_questions, caps, _ = sweep_sizes()
    sample_prompt, samples, sample_new = samples_sizes()
    questions_f, per, context, (c_lo, c_hi) = scoring_sizes()
    return {
        "a": f"a: 1 request, {prompt}-token prompt + {new} new",
        "b": f"b: {n} requests, prompts {p_lo}..{p_hi}, outputs {o_lo}..{o_hi}",
        "c": f"c: budget forcing, num_ignore=2, thinking <= {thinking}, {questions} questions",
        "d": f"d: sweep of caps {caps} over {sweep_questions} questions",
        "e": f"e: n={samples} samples of {sample_new} tokens, {sample_prompt}-token prompt",
        "f": f"f: loglikelihoods of {questions_f} x {per} choices ({c_lo}..{c_hi} tokens) after {context}-token contexts",
    }


# ---- the workloads ----


def single_workload(tokenizer) -> SingleWorkload:
    prompt, new = single_sizes()
    return SingleWorkload(text_prompts(tokenizer, [prompt])[0], new)


def batch_workload(tokenizer) -> BatchWorkload:
    n, (p_lo, p_hi), (o_lo, o_hi) = batch_sizes()
    output_lens = spread(o_lo, o_hi, n)
    random.Random(SEED).shuffle(output_lens)  # pair long and short prompts with long and short outputs
    return BatchWorkload(text_prompts(tokenizer, spread(p_lo, p_hi, n)), output_lens)


def budget_workload() -> BudgetWorkload:
    n, thinking, max_tokens = budget_sizes()
    return BudgetWorkload(MATH_QUESTIONS[:n], thinking, num_ignore=2, max_tokens=max_tokens)


def sweep_workload() -> SweepWorkload:
    n, caps, max_tokens = sweep_sizes()
    return SweepWorkload(MATH_QUESTIONS[:n], caps, num_ignore=64, max_tokens=max_tokens)


def samples_workload(tokenizer) -> SamplesWorkload:
    prompt, n, new = samples_sizes()
    return SamplesWorkload(text_prompts(tokenizer, [prompt])[0], n, new)


def scoring_workload(tokenizer) -> ScoringWorkload:
    questions, per, context, (lo, hi) = scoring_sizes()
    lengths = spread(lo, hi, questions * per)
    random.Random(SEED).shuffle(lengths)
    return ScoringWorkload(text_prompts(tokenizer, [context] * questions), text_prompts(tokenizer, lengths), per)
