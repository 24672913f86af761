"""The decode batch's split into attention groups is the cheapest one."""
import itertools
import random

from engine.runner import _split_by_length


def partitions(n: int):
    """Every way to cut range(n) into consecutive runs, as [(first, last), ...]."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        yield list(zip(bounds, bounds[1:]))


def cost(blocks, runs, overhead):
    return sum(overhead + (last - first) * blocks[last - 1] for first, last in runs)


def test_split_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        blocks = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 9)))
        overhead = rng.choice([0, 1, 4, 16, 1000])
        runs = _split_by_length(blocks, overhead)
        assert [i for r in runs for i in range(*r)] == list(range(len(blocks)))  # covers each once, in order
        best = min(cost(blocks, p, overhead) for p in partitions(len(blocks)))
        assert cost(blocks, runs, overhead) == best


def test_split_extremes():
    assert _split_by_length([3, 3, 3], 0) == [(0, 3)]
    assert _split_by_length([1, 2, 50, 51], 1000) == [(0, 4)]
    assert _split_by_length([1, 2, 50, 51], 0) == [(0, 1), (1, 2), (2, 3), (3, 4)]
