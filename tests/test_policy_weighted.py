"""Tests for proxy.policy.weighted."""

import math
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.weighted import WeightedPicker

N = 100_000


def within_four_sigma(counts: Counter[int], weights: tuple[int, ...]) -> bool:
    """Whether every index's count is within 4 binomial standard deviations of N * p."""
    total = sum(weights)
    for index, weight in enumerate(weights):
        p = weight / total
        if abs(counts[index] - N * p) > 4 * math.sqrt(N * p * (1 - p)):
            return False
    return True


def pick_counts(weights: tuple[int, ...], seed: int = 20240601) -> Counter[int]:
    """Counts of N picks from a seeded picker."""
    picker = WeightedPicker(weights, random.Random(seed))
    return Counter(picker.pick() for _ in range(N))


@pytest.mark.parametrize(
    "weights", [(50, 50), (99, 1), (90, 0, 10), (1, 2, 3, 4, 90), (0, 0, 100, 0), (33, 33, 34)]
)
def test_picks_follow_weights_within_four_sigma(weights: tuple[int, ...]) -> None:
    """Over 100k picks each index's count lies within 4 binomial standard deviations."""
    assert within_four_sigma(pick_counts(weights), weights)


def test_the_bound_detects_a_one_percent_bias() -> None:
    """The check is a real bound: 51/49 picks are rejected as a 50/50 split."""
    assert not within_four_sigma(pick_counts((51, 49)), (50, 50))


@given(
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=10).filter(any),
    seed=st.integers(0, 2**32),
)
def test_never_picks_a_zero_weight(weights: list[int], seed: int) -> None:
    """Picks are valid indices with a non-zero weight."""
    picker = WeightedPicker(tuple(weights), random.Random(seed))
    for _ in range(50):
        index = picker.pick()
        assert 0 <= index < len(weights)
        assert weights[index] > 0


def test_single_nonzero_weight_does_not_use_rng() -> None:
    """With one non-zero weight the picker answers without consuming randomness."""
    rng = random.Random(1)
    state = rng.getstate()
    picker = WeightedPicker((0, 100, 0), rng)
    assert {picker.pick() for _ in range(10)} == {1}
    assert rng.getstate() == state


@pytest.mark.parametrize("weights", [(), (0, 0), (10, -1)])
def test_rejects_invalid_weights(weights: tuple[int, ...]) -> None:
    """Empty, all-zero or negative weights are refused at construction."""
    with pytest.raises(ValueError):
        WeightedPicker(weights, random.Random(0))
