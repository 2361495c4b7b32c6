"""Summaries of timing samples: percentiles with their spread, and paired ratios between variants.

Why these statistics:

- **p50/p90/p99** are what a latency budget is written against. With n samples, p99 is only meaningful for
  n >= 100; below that it is (close to) the maximum, and the report says how many samples each figure rests
  on so a reader can judge.
- **The spread of the median** is a distribution-free 95% confidence interval from order statistics
  (the interval ``[x_(j), x_(k)]`` that contains the true median with probability >= 95% under the binomial
  law of how many samples fall below it). It needs no bootstrap (so no random seed) and no normality.
- **Paired ratios**: dense and pruned run alternately, so each round's pair saw the same machine state; the
  median of the per-round ratios cancels slow drift (thermal, other processes) that the ratio of two medians
  does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Summary:
    """Distribution of one timing (milliseconds unless said otherwise) over ``n`` samples."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    p25: float
    p75: float
    ci95_low: float  # 95% interval of the median (order statistics); equals min/max when n is too small
    ci95_high: float

    @property
    def rel_ci(self) -> float:
        """Half-width of the median's 95% interval relative to the median: a one-number stability figure."""
        return (self.ci95_high - self.ci95_low) / 2 / self.p50 if self.p50 > 0 else math.inf


def median_ci(n: int, level: float = 0.95) -> tuple[int, int]:
    """0-based ranks ``(j, k)`` of the sorted samples whose interval covers the median with >= ``level``.

    The number of samples below the true median is Binomial(n, 1/2); the widest symmetric pair of ranks
    whose coverage ``P(j < B <= k)`` is still >= ``level`` would be too wide, so we take the narrowest
    symmetric pair that reaches it. Below n = 6 no pair reaches 95%: the whole range ``(0, n - 1)`` is
    returned.
    """
    if n < 1:
        raise ValueError("median_ci needs at least one sample")
    cdf = [0.0] * (n + 1)  # cdf[i] = P(B <= i)
    total = 0.0
    for i in range(n + 1):
        total += math.comb(n, i) / 2**n
        cdf[i] = total
    for j in range((n - 1) // 2, -1, -1):
        k = n - 1 - j
        # the interval [x_(j), x_(k)] (0-based) covers the median iff j + 1 <= B <= k
        coverage = cdf[k] - cdf[j]
        if coverage >= level:
            return j, k
    return 0, n - 1


def summarize(samples: Sequence[float], scale: float = 1.0) -> Summary:
    """Summary of ``samples`` multiplied by ``scale`` (e.g. 1e3 for seconds -> milliseconds)."""
    if len(samples) == 0:
        raise ValueError("summarize needs at least one sample")
    x = np.sort(np.asarray(samples, dtype=np.float64) * scale)
    j, k = median_ci(len(x))
    p = np.percentile(x, [25, 50, 75, 90, 99])
    return Summary(
        n=len(x),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        min=float(x[0]),
        p50=float(p[1]),
        p90=float(p[3]),
        p99=float(p[4]),
        max=float(x[-1]),
        p25=float(p[0]),
        p75=float(p[2]),
        ci95_low=float(x[j]),
        ci95_high=float(x[k]),
    )


@dataclass
class Ratio:
    """Median of per-round ratios ``num[i] / den[i]`` with its 25-75% range."""

    median: float
    p25: float
    p75: float
    n: int


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> Ratio:
    """Per-round ratios of two variants timed in the same rounds (same length, positive denominators)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired_ratio needs two equally long, non-empty series ({len(num)} vs {len(den)})")
    r = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    p25, p50, p75 = np.percentile(r, [25, 50, 75])
    return Ratio(median=float(p50), p25=float(p25), p75=float(p75), n=len(r))


def rounds_for(budget_s: float, round_s: float, min_reps: int, max_reps: int) -> int:
    """How many interleaved rounds fit ``budget_s`` when one round takes ``round_s``, within the bounds."""
    if round_s <= 0:
        return max_reps
    return max(min_reps, min(max_reps, math.ceil(budget_s / round_s)))
