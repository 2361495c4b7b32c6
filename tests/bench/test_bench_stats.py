"""Statistics of the bench: percentiles, the median's order-statistic interval, paired ratios, round counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sleb_deploy.bench.stats import median_ci, paired_ratio, rounds_for, summarize


def _coverage(n: int, j: int, k: int) -> float:
    """P(j + 1 <= B <= k) for B ~ Binomial(n, 1/2): the chance that [x_(j), x_(k)] holds the median."""
    return sum(math.comb(n, i) for i in range(j + 1, k + 1)) / 2**n


def test_median_ci_known_ranks() -> None:
    assert median_ci(10) == (1, 8)  # x(2)..x(9) in 1-based tables, 97.9% coverage
    assert median_ci(5) == (0, 4)  # too few samples for 95%: the whole range
    assert median_ci(1) == (0, 0)
    for n in (6, 7, 20, 33, 100):
        j, k = median_ci(n)
        assert j + k == n - 1  # symmetric
        assert _coverage(n, j, k) >= 0.95 > _coverage(n, j + 1, k - 1)  # the narrowest that reaches 95%


def test_summarize_scales_and_orders() -> None:
    samples = [0.005, 0.001, 0.003, 0.002, 0.004]  # seconds, shuffled
    s = summarize(samples, scale=1e3)
    assert (s.n, s.min, s.max, s.p50, s.mean) == (5, 1.0, 5.0, 3.0, 3.0)
    assert s.p25 == 2.0 and s.p75 == 4.0
    assert s.p90 == pytest.approx(4.6) and s.p99 == pytest.approx(4.96)  # numpy's linear interpolation
    assert (s.ci95_low, s.ci95_high) == (1.0, 5.0)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert s.rel_ci == pytest.approx(2 / 3)
    one = summarize([2.0])
    assert one.std == 0.0 and one.p99 == 2.0
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratio_is_per_round() -> None:
    dense = [10.0, 20.0, 30.0, 40.0]  # the machine slows down over the rounds
    pruned = [8.0, 16.0, 24.0, 32.0]  # pruned is 0.8x of dense in every round
    r = paired_ratio(dense, pruned)
    assert r.median == pytest.approx(1.25) and r.p25 == pytest.approx(1.25) and r.n == 4
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_rounds_for_budget() -> None:
    assert rounds_for(10.0, 1.0, 3, 40) == 10
    assert rounds_for(10.0, 4.0, 5, 40) == 5  # at least min
    assert rounds_for(10.0, 0.01, 5, 40) == 40  # at most max
    assert rounds_for(10.0, 0.0, 5, 40) == 40
