"""The one rule for intervals across seeds: Student-t with n - 1 degrees of freedom."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from probes.stats import t_interval


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_matches_scipy_t(n: int, confidence: float) -> None:
    x = np.random.default_rng(n).normal(3.0, 2.0, size=n)
    mean, low, high = t_interval(x, confidence)
    ref_low, ref_high = stats.t.interval(confidence, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean())
    assert low == pytest.approx(ref_low, rel=1e-12) and high == pytest.approx(ref_high, rel=1e-12)


def test_known_quantiles_not_the_normal_one() -> None:
    # Five seeds: t_{0.975, 4} = 2.7764, not 1.96 (an interval 42% too narrow).
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, low, high = t_interval(x)
    assert (high - mean) == pytest.approx(2.776445 * np.std(x, ddof=1) / math.sqrt(5), rel=1e-6)
    assert (high - mean) > 1.4 * 1.96 * np.std(x, ddof=1) / math.sqrt(5)


def test_degenerate_inputs() -> None:
    assert all(math.isnan(v) for v in t_interval([]))
    mean, low, high = t_interval([4.0])
    assert mean == 4.0 and math.isnan(low) and math.isnan(high)
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    # None and non-finite values are dropped (a failed seed is not a number)
    assert t_interval([1.0, None, float("nan"), 3.0]) == t_interval([1.0, 3.0])
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], confidence=1.0)


def test_coverage_with_three_seeds() -> None:
    """Over many draws of 3 seeds, the 95% interval covers the true mean ~95% of the time
    (a 1.96 interval would cover ~ 81%)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, 1.0, size=(4000, 3))
    covered = np.mean([lo <= 0.0 <= hi for _, lo, hi in (t_interval(d) for d in draws)])
    assert 0.935 < covered < 0.965
