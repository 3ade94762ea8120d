"""L2-regularised logistic regression by Newton's method, and AUROC.

Objective (as scikit-learn's ``LogisticRegression(C=C)`` with lbfgs): the sum over rows of the
log-loss plus ``||W||^2 / (2C)``; the intercept is not penalised. Two classes use one logit;
more classes use the full softmax with one weight column per class (sklearn's multinomial
parametrisation). Features are expected standardised. Newton steps with backtracking converge
in a handful of iterations (the Hessian is estimated on at most ~2 x ``HESSIAN_ROWS`` rows,
the gradient is exact), and warm starts along the C path make each further C cost 2-3.
"""

from __future__ import annotations

import numpy as np

CS = np.logspace(-3, 2, 6)
HESSIAN_ROWS = 8192  # rows used to estimate the Newton Hessian (all rows below 2x this)
_INTERCEPT_PENALTY = 1e-8  # keeps the softmax intercepts finite when a class is absent


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _penalty(d: int, C: float, n_cols: int) -> np.ndarray:
    pen = np.full((d + 1, n_cols), 1.0 / C)
    pen[-1] = _INTERCEPT_PENALTY
    return pen


def _objective(xb: np.ndarray, y: np.ndarray, w: np.ndarray, pen: np.ndarray, n_classes: int) -> float:
    z = xb @ w
    if n_classes == 2:
        z = z[:, 0]
        loss = np.sum(np.logaddexp(0.0, z) - (y == 1) * z)
    else:
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
        loss = np.sum(lse - z[np.arange(len(y)), y])
    return float(loss + 0.5 * np.sum(pen * w * w))


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float,
    w0: np.ndarray | None = None,
    tol: float = 1e-7,
    max_iter: int = 100,
) -> np.ndarray:
    """Fit one logistic regression; returns weights ``[d+1, 1]`` (binary) or ``[d+1, K]``.

    Parameters
    ----------
    x:
        Standardised features [n, d].
    y:
        Class codes ``0..n_classes-1`` [n].
    n_classes:
        Number of classes K (2 = binary, one logit).
    C:
        Inverse regularisation strength, as in scikit-learn.
    w0:
        Warm start (e.g. the solution at the previous C).
    tol:
        Stop when the largest gradient entry, relative to the number of rows, is below this.
    """
    n, d = x.shape
    xb = _with_bias(x)
    cols = 1 if n_classes == 2 else n_classes
    pen = _penalty(d, C, cols)
    w = np.zeros((d + 1, cols)) if w0 is None else w0.copy()
    onehot = None if n_classes == 2 else np.eye(n_classes)[y]
    # Subsampled Newton: the Hessian (O(n d^2), the dominant cost) is estimated from a fixed
    # strided subset of rows; the gradient stays exact, so the fixed point is the exact optimum.
    stride = max(1, n // HESSIAN_ROWS)
    xh = xb[::stride]
    h_scale = n / len(xh)
    f = _objective(xb, y, w, pen, n_classes)
    for _ in range(max_iter):
        z = xb @ w
        if n_classes == 2:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            grad = (xb.T @ (p - (y == 1)))[:, None] + pen * w
            s = (p * (1.0 - p))[::stride] * h_scale
            hess = (xh * s[:, None]).T @ xh + np.diag(pen[:, 0])
        else:
            p = _softmax(z)
            assert onehot is not None
            grad = xb.T @ (p - onehot) + pen * w
            k_ = n_classes
            hess = np.zeros((k_, d + 1, k_, d + 1))
            for a in range(k_):
                for b in range(a, k_):
                    s = (p[::stride, a] * ((a == b) - p[::stride, b])) * h_scale
                    block = (xh * s[:, None]).T @ xh
                    hess[a, :, b, :] = block
                    if b != a:
                        hess[b, :, a, :] = block.T
            hess = hess.reshape(k_ * (d + 1), k_ * (d + 1))
            hess[np.diag_indices_from(hess)] += pen.T.ravel()
        if np.max(np.abs(grad)) <= tol * n:
            break
        g_flat = grad.T.ravel()
        try:
            step = np.linalg.solve(hess, g_flat)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, g_flat, rcond=None)[0]
        step = step.reshape(cols, d + 1).T
        t = 1.0
        decrease = float(np.sum(grad * step))
        while t > 1e-8:
            w_new = w - t * step
            f_new = _objective(xb, y, w_new, pen, n_classes)
            if f_new <= f - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:
            break
        w, f = w_new, f_new
    return w


def predict_proba(x: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities [n, K] of standardised features ``x`` [n, d]."""
    z = _with_bias(x) @ w
    if n_classes == 2:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    return _softmax(z)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of class codes ``y`` under probabilities ``p`` (clipped)."""
    eps = np.finfo(p.dtype).eps
    py = np.clip(p[np.arange(len(y)), y], eps, 1 - eps)
    return float(-np.mean(np.log(py)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def auroc_binary(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    """AUROC: binary from the positive-class probability, else macro one-vs-rest."""
    if p.shape[1] == 2:
        return auroc_binary(p[:, 1], y == 1)
    per_class = [auroc_binary(p[:, k], y == k) for k in range(p.shape[1])]
    finite = [a for a in per_class if np.isfinite(a)]
    return float(np.mean(finite)) if finite else float("nan")
