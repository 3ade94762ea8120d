"""Ridge regression from streamed sufficient statistics.

The file is read once; for every episode group (each CV fold of the training episodes and
the test set) we accumulate ``n``, ``sum x``, ``X^T X``, ``sum y``, ``X^T Y`` and ``sum y^2``
for all labels at once. A CV fold's training statistics are then a difference of sums, and
one eigendecomposition of the standardised Gram matrix solves ridge for every alpha and every
label. Memory is ``O(groups * d^2)``, independent of the number of steps.

The estimator matches ``StandardScaler() -> Ridge(alpha)`` of scikit-learn: features are
standardised with the training rows' mean and population standard deviation (constant
features are left unscaled) and the intercept is not penalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = np.logspace(-3, 5, 17)


class RidgeStats:
    """Per-group sufficient statistics of features ``X`` (d columns) and targets ``Y`` (L columns).

    Parameters
    ----------
    n_groups:
        Number of row groups (CV folds plus the test set).
    d:
        Feature dimension.
    n_targets:
        Number of target columns accumulated together.
    """

    def __init__(self, n_groups: int, d: int, n_targets: int) -> None:
        self.d, self.L = d, n_targets
        self.n = np.zeros(n_groups)
        self.sx = np.zeros((n_groups, d))
        self.sxx = np.zeros((n_groups, d, d))
        self.sy = np.zeros((n_groups, n_targets))
        self.sxy = np.zeros((n_groups, d, n_targets))
        self.syy = np.zeros((n_groups, n_targets))
        self.shift_x: np.ndarray | None = None
        self.shift_y: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray, group: np.ndarray) -> None:
        """Accumulate rows ``x`` [n, d], targets ``y`` [n, L] with group ids ``group`` [n]."""
        if len(x) == 0:
            return
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(len(x), self.L)
        if self.shift_x is None:
            # Centre on the first block's mean so the sums do not cancel catastrophically.
            self.shift_x = x.mean(axis=0)
            self.shift_y = y.mean(axis=0)
        x = x - self.shift_x
        y = y - self.shift_y
        for g in np.unique(group):
            m = group == g
            xg, yg = x[m], y[m]
            self.n[g] += len(xg)
            self.sx[g] += xg.sum(axis=0)
            self.sxx[g] += xg.T @ xg
            self.sy[g] += yg.sum(axis=0)
            self.sxy[g] += xg.T @ yg
            self.syy[g] += np.einsum("nl,nl->l", yg, yg)

    def pooled(self, groups: list[int]) -> "_Pooled":
        idx = np.asarray(groups)
        return _Pooled(
            n=float(self.n[idx].sum()),
            sx=self.sx[idx].sum(axis=0),
            sxx=self.sxx[idx].sum(axis=0),
            sy=self.sy[idx].sum(axis=0),
            sxy=self.sxy[idx].sum(axis=0),
            syy=self.syy[idx].sum(axis=0),
        )


@dataclass
class _Pooled:
    n: float
    sx: np.ndarray
    sxx: np.ndarray
    sy: np.ndarray
    sxy: np.ndarray
    syy: np.ndarray


@dataclass
class RidgeFit:
    """A ridge solution in the RAW (unstandardised, unshifted) feature space."""

    coef: np.ndarray  # [d, L]
    intercept: np.ndarray  # [L]
    alpha: np.ndarray  # [L] chosen alpha per target
    cv_r2: np.ndarray  # [n_alphas, L] mean CV R^2 (NaN when no CV)


class _Solver:
    """Standardise with one pooled set of rows and solve ridge for many alphas at once."""

    def __init__(self, p: _Pooled) -> None:
        n = max(p.n, 1.0)
        self.mu = p.sx / n
        self.ybar = p.sy / n
        cov = p.sxx / n - np.outer(self.mu, self.mu)
        var = np.clip(np.diag(cov), 0.0, None)
        scale = np.sqrt(var)
        # As StandardScaler: (near-)constant features keep scale 1.
        tiny = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.mu), 1.0) ** 2
        scale[var <= tiny] = 1.0
        self.scale = scale
        gram = n * cov / np.outer(scale, scale)
        self.lam, self.vec = np.linalg.eigh((gram + gram.T) / 2)
        self.lam = np.clip(self.lam, 0.0, None)
        c = (p.sxy - np.outer(p.sx, p.sy) / n) / scale[:, None]
        self.proj = self.vec.T @ c  # [d, L]

    def coef(self, alpha: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw-space coefficients [d, L] and intercepts [L] (in the shifted space)."""
        alpha = np.asarray(alpha, dtype=np.float64)
        w = self.vec @ (self.proj / (self.lam[:, None] + alpha))
        beta = w / self.scale[:, None]
        return beta, self.ybar - self.mu @ beta


def _sse(p: _Pooled, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum of squared errors of ``y ~ x @ beta + b`` on pooled rows, per target."""
    quad = np.einsum("dl,de,el->l", beta, p.sxx, beta)
    cross = b * p.sy + np.einsum("dl,dl->l", beta, p.sxy)
    return p.syy - 2 * cross + p.n * b**2 + 2 * b * (p.sx @ beta) + quad


def _sst(p: _Pooled) -> np.ndarray:
    return p.syy - p.sy**2 / max(p.n, 1.0)


def fit_ridge_cv(stats: RidgeStats, n_folds: int, alphas: np.ndarray = ALPHAS, default_alpha: float = 1.0) -> RidgeFit:
    """Choose alpha per target by grouped CV (mean fold R^2) and refit on all training groups.

    Parameters
    ----------
    stats:
        Statistics whose groups ``0..n_folds-1`` are the training folds.
    n_folds:
        Number of CV folds; with 1 there is no CV and ``default_alpha`` is used.
    alphas:
        Candidate regularisation strengths (ties go to the first, as in GridSearchCV).
    """
    train = list(range(n_folds))
    cv = np.full((len(alphas), stats.L), np.nan)
    if n_folds >= 2:
        scores = np.zeros((len(alphas), stats.L))
        for k in train:
            solver = _Solver(stats.pooled([g for g in train if g != k]))
            val = stats.pooled([k])
            sst = _sst(val)
            for i, a in enumerate(alphas):
                beta, b = solver.coef(a)
                with np.errstate(divide="ignore", invalid="ignore"):
                    scores[i] += 1.0 - _sse(val, beta, b) / sst
        cv = scores / n_folds
        filled = np.where(np.isfinite(cv), cv, -np.inf)
        chosen = np.asarray(alphas)[np.argmax(filled, axis=0)]
    else:
        chosen = np.full(stats.L, default_alpha)
    solver = _Solver(stats.pooled(train))
    beta, b = solver.coef(chosen)
    assert stats.shift_x is not None and stats.shift_y is not None
    intercept = b + stats.shift_y - stats.shift_x @ beta
    return RidgeFit(coef=beta, intercept=intercept, alpha=chosen, cv_r2=cv)


def r2_from_sums(n: np.ndarray, sy: np.ndarray, syy: np.ndarray, sse: np.ndarray) -> np.ndarray:
    """R^2 = 1 - SSE / SST from (possibly bootstrap-weighted) sums; NaN where SST is 0."""
    sst = syy - sy**2 / np.maximum(n, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - sse / sst
    return np.where(sst > 0, out, np.nan)


@dataclass
class NestedRidge:
    """Ridge fits for nested cross-validation: one per outer fold, each in RAW feature space.

    Outer fold k is predicted by ``coef[k]``, ``intercept[k]``, fitted on every other outer fold
    with the alpha (per target) that won leave-one-fold-out CV over those other folds.
    """

    coef: np.ndarray  # [K, d, L]
    intercept: np.ndarray  # [K, L]
    alpha: np.ndarray  # [K, L] alpha chosen in the inner folds of each outer fold
    inner_r2: np.ndarray  # [K, L] the inner-CV R^2 at that alpha (NaN without inner CV)


def fit_ridge_nested(
    stats: RidgeStats, n_folds: int, alphas: np.ndarray = ALPHAS, default_alpha: float = 1.0
) -> NestedRidge:
    """Nested CV over the groups ``0..n_folds-1`` of ``stats`` (the outer folds).

    For outer fold k the inner folds are the other outer folds: alpha is chosen by the mean
    R^2 over them (each scored by a fit on the remaining ones; ties to the first alpha), then
    the probe is refitted on all of them. With fewer than 3 outer folds there is no inner CV
    and ``default_alpha`` is used. The solver on "every group but {j, k}" serves both outer
    fold k (validated on j) and outer fold j (validated on k), so it is built once.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    groups = list(range(n_folds))
    cache: dict[frozenset[int], _Solver] = {}

    def solver(excluded: frozenset[int]) -> _Solver:
        if excluded not in cache:
            cache[excluded] = _Solver(stats.pooled([g for g in groups if g not in excluded]))
        return cache[excluded]

    assert stats.shift_x is not None and stats.shift_y is not None
    coef = np.zeros((n_folds, stats.d, stats.L))
    intercept = np.zeros((n_folds, stats.L))
    chosen = np.full((n_folds, stats.L), float(default_alpha))
    inner = np.full((n_folds, stats.L), np.nan)
    for k in groups:
        others = [g for g in groups if g != k]
        if len(others) >= 2:
            scores = np.full((len(others), len(alphas), stats.L), np.nan)
            for a, j in enumerate(others):
                s = solver(frozenset((k, j)))
                val = stats.pooled([j])
                sst = _sst(val)
                for i, alpha in enumerate(alphas):
                    beta, b = s.coef(alpha)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        scores[a, i] = np.where(sst > 0, 1.0 - _sse(val, beta, b) / sst, np.nan)
            finite = np.isfinite(scores)
            count = finite.sum(axis=0)
            mean = np.where(finite, scores, 0.0).sum(axis=0) / np.maximum(count, 1)
            mean = np.where(count > 0, mean, np.nan)  # a fold with no variance does not vote
            filled = np.where(np.isfinite(mean), mean, -np.inf)
            best = np.argmax(filled, axis=0)
            chosen[k] = alphas[best]
            inner[k] = mean[best, np.arange(stats.L)]
        beta, b = solver(frozenset((k,))).coef(chosen[k])
        coef[k] = beta
        intercept[k] = b + stats.shift_y - stats.shift_x @ beta
    return NestedRidge(coef=coef, intercept=intercept, alpha=chosen, inner_r2=inner)


def fit_ridge_all(stats: RidgeStats, n_folds: int, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw-space ``(coef [d, L], intercept [L])`` fitted on every group ``0..n_folds-1`` with ``alpha`` [L]."""
    beta, b = _Solver(stats.pooled(list(range(n_folds)))).coef(np.asarray(alpha, dtype=np.float64))
    assert stats.shift_x is not None and stats.shift_y is not None
    return beta, b + stats.shift_y - stats.shift_x @ beta
