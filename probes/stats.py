"""The one rule for intervals across independent repeats (seeds, runs, evaluation episodes).

A mean over a handful of independent values (2-5 seeds, 5-30 evaluation episodes) gets a
Student-t interval with ``n - 1`` degrees of freedom: ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``
with ``s`` the sample standard deviation (``ddof=1``). A percentile bootstrap of so few values
is too narrow (it cannot see beyond the values it has), and ``1.96`` is the normal quantile,
too narrow below ~30 values (``t_{0.975, 4} = 2.78``). Every interval across seeds in the lab
(``rl_lab.compare``, ``rl_lab.sweep.stats``, ``rl_lab.dt.evaluate``) comes from ``t_interval``.
Intervals over the episodes of ONE recording are a different question (episode bootstrap,
``probes.splits``). Many tests at once are corrected by Holm's step-down rule (``holm``), wherever
the lab reports a family of tests (comparisons, probe significance, the binding test).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp

CONFIDENCE = 0.95


def finite_values(values: Iterable[float | None]) -> np.ndarray:
    """The finite numbers among ``values`` (``None``, NaN and infinities dropped) as float64."""
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)


def t_interval(values: Iterable[float | None], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of independent values.

    Non-finite values and ``None`` are dropped. With no value all three are NaN; with a single
    value there is no interval (``low`` and ``high`` are NaN); identical values give a zero-width one.

    Parameters
    ----------
    values:
        Independent repeats (one number per seed, run or episode).
    confidence:
        Coverage in (0, 1), 0.95 by default.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = finite_values(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = float(student_t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_t(differences: Iterable[float | None], confidence: float = CONFIDENCE) -> dict[str, float | int | None]:
    """Paired test of ``A - B`` over matched repeats (one difference per seed): the mean difference,
    its Student-t interval and the two-sided p-value of the one-sample t-test against 0.

    Returns ``{"mean", "low", "high", "p", "n"}``; ``p`` is None with fewer than two differences,
    and 1.0 (no evidence) when every difference is 0.
    """
    x = finite_values(differences)
    mean, low, high = t_interval(x, confidence)
    if x.size < 2:
        p = None
    elif np.all(x == x[0]):
        p = 1.0 if x[0] == 0 else 0.0
    else:
        p = float(ttest_1samp(x, 0.0).pvalue)
    return {"mean": mean, "low": low, "high": high, "p": p, "n": int(x.size)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out.tolist()
