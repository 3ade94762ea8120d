"""The batched logistic solver against scikit-learn and against fitting each problem alone."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from probes.logistic import LogisticBatch, fit_logistic, logistic_cv, predict_proba, standardiser


def data(n: int = 600, d: int = 12, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5.0, size=d) + rng.normal(size=d)
    logits = x @ rng.normal(size=(d, k)) * 0.5
    y = np.argmax(logits + rng.gumbel(size=(n, k)), axis=1)
    return x, y


@pytest.mark.parametrize("k", [2, 4])
def test_batch_matches_sklearn_per_problem(k: int) -> None:
    """Each problem (its own rows, its own StandardScaler, its own C) equals sklearn's fit."""
    x, y = data(k=k)
    rng = np.random.default_rng(1)
    masks = np.stack([rng.random(len(x)) < f for f in (0.5, 0.8, 1.0)], axis=1)
    codes = np.stack([y, y, np.where(rng.random(len(x)) < 0.1, -1, y)], axis=1)  # -1: row unused
    Cs = np.array([0.01, 1.0, 100.0])
    fit = LogisticBatch(x, codes, masks, k).fit(Cs)
    for p in range(3):
        rows = masks[:, p] & (codes[:, p] >= 0)
        scaler = StandardScaler().fit(x[rows])
        ref = LogisticRegression(C=Cs[p], tol=1e-10, max_iter=5000).fit(scaler.transform(x[rows]), codes[rows, p])
        ours = fit.proba(p, x)
        assert np.allclose(ours, ref.predict_proba(scaler.transform(x)), atol=2e-5)
        assert fit.n_rows[p] == rows.sum()


def test_fit_logistic_warm_start_and_path() -> None:
    x, y = data(k=3)
    mu, sc = standardiser(x)
    xs = (x - mu) / sc
    state: dict = {}
    w = None
    for C in (0.01, 1.0, 100.0):
        w = fit_logistic(xs, y, 3, C, w0=w, state=state)
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(xs, y)
        assert np.allclose(predict_proba(xs, w, 3), ref.predict_proba(xs), atol=2e-5)
    assert "design" in state  # the preconditioner's eigenbasis is kept along the path


def test_logistic_cv_equals_separate_fits() -> None:
    x, y = data(n=500, k=3, seed=2)
    rng = np.random.default_rng(3)
    fold = rng.integers(0, 4, len(x))
    Y = np.stack([y, (y == 0).astype(np.int64)], axis=1)
    cv = logistic_cv(x, Y, fold, [3, 2], 4)
    for t, K in enumerate((3, 2)):
        losses = np.zeros(6)
        for i, C in enumerate(np.logspace(-3, 2, 6)):
            for k in range(4):
                tr, va = fold != k, fold == k
                mu, sc = standardiser(x[tr])
                w = fit_logistic((x[tr] - mu) / sc, Y[tr, t], K, C)
                p = predict_proba((x[va] - mu) / sc, w, K)
                losses[i] -= np.mean(np.log(np.clip(p[np.arange(va.sum()), Y[va, t]], 1e-15, 1)))
        assert np.allclose(cv[t].losses, losses, rtol=1e-5)
        assert cv[t].C == np.logspace(-3, 2, 6)[np.argmin(losses)]
