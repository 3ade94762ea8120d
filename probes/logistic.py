"""L2-regularised logistic regression by Newton's method, and AUROC.

Objective (as scikit-learn's ``LogisticRegression(C=C)`` with lbfgs): the sum over rows of the
log-loss plus ``||W||^2 / (2C)``; the intercept is not penalised. Two classes use one logit;
more classes use the full softmax with one weight column per class (sklearn's multinomial
parametrisation). Features are expected standardised. Newton-CG with backtracking: the
gradient is exact, the Newton system is solved by conjugate gradients with Hessian-vector
products (on at most ~2 x ``HESSIAN_ROWS`` rows), preconditioned by an explicit Hessian
estimate (``PRECOND_ROWS`` rows) that a caller can carry along the C path (``state``); it is
rebuilt only when CG needs more than ``_CG_FRESH`` iterations.
"""

from __future__ import annotations

import numpy as np

CS = np.logspace(-3, 2, 6)
HESSIAN_ROWS = 8192  # rows of the Hessian-vector products (all rows below 2x this)
PRECOND_ROWS = 1024  # rows of the explicit Hessian estimate used only as CG preconditioner
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


def _objective_z(z: np.ndarray, y: np.ndarray, w: np.ndarray, pen: np.ndarray, n_classes: int) -> float:
    """The objective given the logits ``z = xb @ w``."""
    if n_classes == 2:
        z = z[:, 0]
        loss = np.sum(np.logaddexp(0.0, z) - (y == 1) * z)
    else:
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
        loss = np.sum(lse - z[np.arange(len(y)), y])
    return float(loss + 0.5 * np.sum(pen * w * w))


def _data_hessian(xh: np.ndarray, ph: np.ndarray, h_scale: float, n_classes: int) -> np.ndarray:
    """Unpenalised Hessian of the log-loss on rows ``xh`` at probabilities ``ph`` (class-major)."""
    xh = xh.astype(np.float32)  # a preconditioner: single precision is plenty
    ph = ph.astype(np.float32)
    if n_classes == 2:
        s = (ph[:, 0] * (1.0 - ph[:, 0])) * np.float32(h_scale)
        return ((xh * s[:, None]).T @ xh).astype(np.float64)
    k_, d1 = n_classes, xh.shape[1]
    hess = np.zeros((k_, d1, k_, d1), dtype=np.float32)
    for a in range(k_):
        for b in range(a, k_):
            s = (ph[:, a] * ((a == b) - ph[:, b])) * np.float32(h_scale)
            block = (xh * s[:, None]).T @ xh
            hess[a, :, b, :] = block
            if b != a:
                hess[b, :, a, :] = block.T
    return hess.reshape(k_ * d1, k_ * d1).astype(np.float64)


class _Preconditioner:
    """Inverse of a (possibly stale, subsampled) Hessian estimate plus the current penalty."""

    def __init__(self, hdata: np.ndarray, pen: np.ndarray) -> None:
        self.hdata = hdata
        h = hdata.copy()
        h[np.diag_indices_from(h)] += pen.T.ravel()
        try:
            self.inv = np.linalg.inv(h)
        except np.linalg.LinAlgError:
            self.inv = np.linalg.pinv(h, hermitian=True)
        self.inv = (self.inv + self.inv.T) / 2
        self.shape = pen.shape

    def __call__(self, r: np.ndarray) -> np.ndarray:
        cols, d1 = self.shape[1], self.shape[0]
        return (self.inv @ r.T.ravel()).reshape(cols, d1).T


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    C: float,
    w0: np.ndarray | None = None,
    tol: float = 1e-7,
    max_iter: int = 100,
    xb: np.ndarray | None = None,
    state: dict | None = None,
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
    xb:
        ``x`` with a trailing column of ones, if the caller already has it.
    state:
        A dict kept by the caller across fits on the SAME rows and labels (e.g. along a C
        path): the Hessian estimate is carried over in it and rebuilt only when it has gone stale.
    """
    n, d = x.shape
    if xb is None:
        xb = _with_bias(x)
    cols = 1 if n_classes == 2 else n_classes
    pen = _penalty(d, C, cols)
    w = np.zeros((d + 1, cols)) if w0 is None else w0.copy()
    target = (y == 1).astype(np.float64)[:, None] if n_classes == 2 else np.eye(n_classes)[y]
    # Newton-CG with a stale-Hessian preconditioner: the Newton system H s = g is solved by
    # conjugate gradients with exact Hessian-vector products (two thin GEMMs on the Hessian
    # rows); the preconditioner is the Cholesky factor of an explicit Hessian estimate that is
    # only rebuilt (O(n d^2 K^2)) when CG stops converging quickly, i.e. about once per C path
    # instead of once per Newton iteration. The gradient is exact: the fixed point is the optimum.
    stride = max(1, n // HESSIAN_ROWS)
    xh = xb[::stride]
    h_scale = n / len(xh)
    state = {} if state is None else state
    hdata = state.get("hdata")
    if hdata is not None and hdata.shape != (cols * (d + 1),) * 2:
        hdata = None
    precond = _Preconditioner(hdata, pen) if hdata is not None else None
    z = xb @ w
    f = _objective_z(z, y, w, pen, n_classes)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-z)) if n_classes == 2 else _softmax(z)
        grad = xb.T @ (p - target) + pen * w
        gmax = float(np.max(np.abs(grad)))
        if gmax <= tol * n:
            break
        ph = p[::stride]
        if n_classes == 2:
            sh = ph * (1.0 - ph) * h_scale

            def hess_vec(v: np.ndarray) -> np.ndarray:
                return xh.T @ (sh * (xh @ v)) + pen * v

        else:

            def hess_vec(v: np.ndarray) -> np.ndarray:
                u = xh @ v
                r = ph * (u - np.sum(ph * u, axis=1, keepdims=True))
                return h_scale * (xh.T @ r) + pen * v

        rtol = min(0.5, float(np.sqrt(gmax / n)))
        step = None
        if precond is not None:
            step = _pcg(hess_vec, grad, precond, rtol, max_iter=_CG_FRESH)
        if step is None:
            pstride = max(1, len(xh) // PRECOND_ROWS)
            hdata = _data_hessian(xh[::pstride], ph[::pstride], h_scale * len(xh) / len(xh[::pstride]), n_classes)
            precond = _Preconditioner(hdata, pen)
            state["hdata"] = precond.hdata
            step = _pcg(hess_vec, grad, precond, rtol, max_iter=_CG_MAX)
            if step is None:
                step = precond(grad)
        t = 1.0
        decrease = float(np.sum(grad * step))
        dz = xb @ step
        while t > 1e-10:
            w_new = w - t * step
            z_new = z - t * dz
            f_new = _objective_z(z_new, y, w_new, pen, n_classes)
            if f_new <= f - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:
            break
        w, f, z = w_new, f_new, z_new
    return w


_CG_FRESH = 8  # CG iterations allowed before the Hessian preconditioner counts as stale
_CG_MAX = 200


def _pcg(matvec, b: np.ndarray, precond, rtol: float, max_iter: int) -> np.ndarray | None:
    """Preconditioned conjugate gradients for ``A s = b``; None if not within ``max_iter``."""
    s = np.zeros_like(b)
    r = b.copy()
    zr = precond(r)
    p = zr.copy()
    rz = float(np.sum(r * zr))
    stop = rtol * float(np.linalg.norm(b))
    for _ in range(max_iter):
        ap = matvec(p)
        pap = float(np.sum(p * ap))
        if not pap > 0:
            return None
        alpha = rz / pap
        s += alpha * p
        r -= alpha * ap
        if float(np.linalg.norm(r)) <= stop:
            return s
        zr = precond(r)
        rz_new = float(np.sum(r * zr))
        p = zr + (rz_new / rz) * p
        rz = rz_new
    return None


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
