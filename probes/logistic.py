"""L2-regularised logistic regression by batched Newton-CG, grouped-CV along a C path, and AUROC.

Objective (as scikit-learn's ``LogisticRegression(C=C)`` with lbfgs): the sum over rows of the
log-loss plus ``||W||^2 / (2C)``; the intercept is not penalised. Two classes use one logit;
more classes use the full softmax with one weight column per class (sklearn's multinomial
parametrisation). Features are expected standardised.

The solver never forms or inverts a Hessian. Newton steps are solved by conjugate gradients
with exact Hessian-vector products (two GEMMs), preconditioned in the eigenbasis of the design's
Gram matrix: the Hessian ``sum_i S_i (x) x_i x_i^T + diag(pen)`` is approximated by
``A (x) G + pen/C`` with ``A`` the mean class-covariance ``diag(p) - p p^T`` (K x K) and ``G`` the
Gram matrix, whose inverse is two small eigendecompositions (computed once per design and per
Newton step). Many problems that share rows are solved together (``P`` problems, one GEMM):
several targets, the CV folds (a fold is a 0/1 row weight) and the refit. A fold's own
standardisation is an exact reparametrisation of a common one: scaling feature ``j`` by
``s_fold / s_common`` turns into the penalty weight ``(s_fold / s_common)^2``, so every fold shares
the same design and the optimum, hence every prediction, is that of a StandardScaler fitted on the
fold. Along the regularisation path each C warm-starts from the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CS = np.logspace(-3, 2, 6)
HESSIAN_ROWS = 8192  # rows of the Hessian-vector products (all rows below 2x this)
_INTERCEPT_PENALTY = 1e-8  # keeps the softmax intercepts finite when a class is absent
PRECOND_ROWS = 2048  # rows of the preconditioner's curvature statistics
_CG_MAX = 50  # truncated Newton: a capped CG still gives a descent direction


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _Design:
    """The rows shared by a batch of problems: ``xb = [x, 1]`` and its Gram eigenbasis."""

    def __init__(self, xb: np.ndarray) -> None:
        self.xb = xb
        n = len(xb)
        self.stride = max(1, n // HESSIAN_ROWS) if n > 2 * HESSIAN_ROWS else 1
        self.xh = xb[:: self.stride]
        self.xh32 = self.xh.astype(np.float32)  # Hessian-vector products: single precision is plenty
        self.h_scale = n / len(self.xh)
        gram = self.xh.T @ self.xh * (self.h_scale / n)  # per row
        lam, self.vec = np.linalg.eigh((gram + gram.T) / 2)
        self.lam = np.clip(lam, 0.0, None)  # [d+1]
        self.pstride = max(1, len(self.xh) // PRECOND_ROWS)
        xr = self.xh[:: self.pstride] @ self.vec  # rotated rows for the preconditioner
        self.xr2 = xr * xr
        self.p_scale = len(self.xh) / len(xr)


def _design(xb: np.ndarray, state: dict | None) -> _Design:
    if state is not None:
        cached = state.get("design")
        if isinstance(cached, _Design) and cached.xb is xb:
            return cached
    design = _Design(xb)
    if state is not None:
        state["design"] = design
    return design


@dataclass
class _Batch:
    """``P`` problems on the same rows: weights ``m`` [n, P], codes ``y`` [n, P], penalties [d+1, P]."""

    m: np.ndarray
    y: np.ndarray
    pen: np.ndarray
    n_classes: int

    @property
    def cols(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes

    def target(self) -> np.ndarray:
        """One-hot targets [n, P, cols] (rows with a negative code are all zero; their weight is 0)."""
        if self.n_classes == 2:
            return (self.y == 1).astype(np.float64)[:, :, None]
        return (self.y[:, :, None] == np.arange(self.n_classes)).astype(np.float64)


def _probs(z: np.ndarray, n_classes: int) -> np.ndarray:
    return _sigmoid(z) if n_classes == 2 else _softmax(z)


def _objective(z: np.ndarray, b: _Batch, w: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Objective of the problems ``idx`` given their logits ``z`` [n, p, cols] and weights [d+1, p, cols]."""
    m, y = b.m[:, idx], b.y[:, idx]
    if b.n_classes == 2:
        z1 = z[:, :, 0]
        loss = np.logaddexp(0.0, z1) - (y == 1) * z1
    else:
        zmax = z.max(axis=2)
        lse = zmax + np.log(np.exp(z - zmax[:, :, None]).sum(axis=2))
        zy = np.take_along_axis(z, np.clip(y, 0, b.n_classes - 1)[:, :, None], axis=2)[:, :, 0]
        loss = lse - zy
    return np.einsum("np,np->p", m, loss) + 0.5 * np.einsum("jp,jpc->p", b.pen[:, idx], w * w)


def _solve(
    design: _Design,
    b: _Batch,
    C: float,
    w0: np.ndarray | None,
    tol: float,
    max_iter: int,
) -> np.ndarray:
    """Newton-CG on every problem of the batch at one C; returns weights [d+1, P, cols]."""
    xb, n_classes, cols = design.xb, b.n_classes, b.cols
    d1, P = xb.shape[1], b.m.shape[1]
    w = np.zeros((d1, P, cols)) if w0 is None else w0.copy()
    target = b.target()
    n_rows = b.m.sum(axis=0)  # [P]
    pen_bar = np.array([np.mean(b.pen[:-1, p]) if d1 > 1 else 1.0 / C for p in range(P)])
    active = np.arange(P)
    z = (xb @ w.reshape(d1, P * cols)).reshape(-1, P, cols)
    f = _objective(z, b, w, active)
    for _ in range(max_iter):
        if len(active) == 0:
            break
        a = active
        wa, za = w[:, a], z[:, a]
        ma, pa = b.m[:, a], _probs(za, n_classes)
        grad = (xb.T @ ((pa - target[:, a]) * ma[:, :, None]).reshape(len(xb), -1)).reshape(d1, len(a), cols)
        grad += b.pen[:, a, None] * wa
        gmax = np.abs(grad).max(axis=(0, 2))
        done = gmax <= tol * np.maximum(n_rows[a], 1.0)
        if done.any():
            keep = ~done
            active = a[keep]
            a, wa, za, ma, pa, grad, gmax = a[keep], wa[:, keep], za[:, keep], ma[:, keep], pa[:, keep], grad[:, keep], gmax[keep]
            if len(a) == 0:
                break
        step = _newton_step(design, b, a, ma, pa, grad, gmax, pen_bar[a], n_rows[a])
        # Backtracking (Armijo) line search, per problem.
        dz = (xb @ step.reshape(d1, -1)).reshape(-1, len(a), cols)
        decrease = np.einsum("jpc,jpc->p", grad, step)
        t = np.ones(len(a))
        f_a = f[a]
        pending = np.ones(len(a), dtype=bool)
        f_new = f_a.copy()
        while pending.any():
            i = np.flatnonzero(pending)
            w_try = wa[:, i] - t[i][None, :, None] * step[:, i]
            z_try = za[:, i] - t[i][None, :, None] * dz[:, i]
            f_try = _objective(z_try, b, w_try, a[i])
            ok = f_try <= f_a[i] - 1e-4 * t[i] * decrease[i]
            f_new[i[ok]] = f_try[ok]
            pending[i[ok]] = False
            t[i[~ok]] *= 0.5
            stuck = i[~ok][t[i[~ok]] < 1e-10]
            if len(stuck):
                t[stuck] = 0.0  # no decrease found: the problem is at its optimum to rounding
                f_new[stuck] = f_a[stuck]
                pending[stuck] = False
        w[:, a] = wa - t[None, :, None] * step
        z[:, a] = za - t[None, :, None] * dz
        f[a] = f_new
        active = a[t > 0]
    return w


def _newton_step(
    design: _Design,
    b: _Batch,
    a: np.ndarray,
    ma: np.ndarray,
    pa: np.ndarray,
    grad: np.ndarray,
    gmax: np.ndarray,
    pen_bar: np.ndarray,
    n_rows: np.ndarray,
) -> np.ndarray:
    """Solve ``H s = grad`` for every active problem by preconditioned CG (batched).

    The preconditioner works in the eigenbasis ``V`` of the design's Gram matrix: per problem and
    per eigen-direction ``j`` it keeps the class block ``sum_i m_i x'_ij^2 S_i + pen`` of the
    Hessian (``x' = x V``, ``S_i`` the row's class covariance ``diag(p) - p p^T``, or ``p(1-p)``
    for one logit) and drops the couplings between directions: tiny K x K blocks, no Hessian.
    """
    ops = _NewtonOps(design, b, a, ma, pa, pen_bar)
    rtol = np.minimum(0.5, np.sqrt(gmax / np.maximum(n_rows, 1.0)))
    return _pcg(ops, grad, rtol, _CG_MAX)


class _NewtonOps:
    """Hessian-vector products and the preconditioner of the active problems of one Newton step;
    ``select(idx)`` restricts both to a subset (CG drops the problems that have converged)."""

    def __init__(self, design: _Design, b: _Batch, a: np.ndarray, ma: np.ndarray, pa: np.ndarray, pen_bar: np.ndarray) -> None:
        self.design, self.cols, self.binary = design, b.cols, b.n_classes == 2
        s_, ps, cols = design.stride, design.pstride, b.cols
        self.d1 = design.xb.shape[1]
        mh = (ma[::s_] * design.h_scale).astype(np.float32)  # [nh, p]
        ph = pa[::s_].astype(np.float32)  # [nh, p, cols]
        self.pen_all = b.pen[:, a, None]
        xr2 = design.xr2
        if self.binary:
            self.wts_all = mh[:, :, None] * ph * (1.0 - ph)  # [nh, p, 1]
            self.diag_all = xr2.T @ (self.wts_all[::ps, :, 0].astype(np.float64) * design.p_scale) + pen_bar[None, :]
        else:
            self.ph_all, self.mh_all = ph, mh
            pp = ph[::ps].astype(np.float64)
            mp = pp * (mh[::ps, :, None] * design.p_scale)  # [np, p, K]
            outer = (mp[:, :, :, None] * pp[:, :, None, :]).reshape(len(pp), -1)
            blocks = -(xr2.T @ outer).reshape(self.d1, len(a), cols, cols)
            diag_idx = np.arange(cols)
            blocks[:, :, diag_idx, diag_idx] += (xr2.T @ mp.reshape(len(pp), -1)).reshape(self.d1, len(a), cols)
            blocks[:, :, diag_idx, diag_idx] += pen_bar[None, :, None]
            self.inv_all = np.linalg.inv(blocks)  # [d+1, p, K, K]: tiny class blocks, no Hessian
        self.select(np.arange(len(a)))

    def select(self, idx: np.ndarray) -> None:
        self.n = len(idx)
        self.pen = self.pen_all[:, idx]
        if self.binary:
            self.wts, self.diag = self.wts_all[:, idx], self.diag_all[:, idx]
        else:
            self.ph, self.mh, self.inv = self.ph_all[:, idx], self.mh_all[:, idx, None], self.inv_all[:, idx]

    def hess_vec(self, v: np.ndarray) -> np.ndarray:
        xh, d1, p_, cols = self.design.xh32, self.d1, self.n, self.cols
        u = (xh @ v.reshape(d1, -1).astype(np.float32)).reshape(-1, p_, cols)
        if self.binary:
            r = self.wts * u
        else:
            r = self.ph * (u - np.sum(self.ph * u, axis=2, keepdims=True)) * self.mh
        return (xh.T @ r.reshape(len(xh), -1)).reshape(d1, p_, cols) + self.pen * v

    def precond(self, r: np.ndarray) -> np.ndarray:
        vec, d1, p_, cols = self.design.vec, self.d1, r.shape[1], self.cols
        rr = (vec.T @ r.reshape(d1, -1)).reshape(d1, p_, cols)
        rr = rr / self.diag[:, :, None] if self.binary else np.matmul(self.inv, rr[..., None])[..., 0]
        return (vec @ rr.reshape(d1, -1)).reshape(d1, p_, cols)


def _pcg(ops: _NewtonOps, rhs: np.ndarray, rtol: np.ndarray, max_iter: int) -> np.ndarray:
    """Preconditioned conjugate gradients for ``H s = rhs``, one system per problem (axis 1);
    a problem leaves the batch when its residual is below ``rtol`` of its right-hand side."""
    s = np.zeros_like(rhs)
    r = rhs.copy()
    zr = ops.precond(r)
    p = zr.copy()
    rz = np.einsum("jpc,jpc->p", r, zr)
    stop = rtol * np.sqrt(np.einsum("jpc,jpc->p", rhs, rhs))
    act = np.arange(rhs.shape[1])
    for _ in range(max_iter):
        pa = p[:, act]
        ap = ops.hess_vec(pa)
        pap = np.einsum("jpc,jpc->p", pa, ap)
        ok = pap > 0
        alpha = np.where(ok, rz[act] / np.where(ok, pap, 1.0), 0.0)
        s[:, act] += alpha[None, :, None] * pa
        ra = r[:, act] - alpha[None, :, None] * ap
        r[:, act] = ra
        still = ok & (np.sqrt(np.einsum("jpc,jpc->p", ra, ra)) > stop[act])
        if not still.any():
            break
        if not still.all():
            act, ra, pa = act[still], ra[:, still], pa[:, still]
            ops.select(act)
        zr_a = ops.precond(ra)
        rz_new = np.einsum("jpc,jpc->p", ra, zr_a)
        p[:, act] = zr_a + (rz_new / np.where(rz[act] > 0, rz[act], 1.0))[None, :, None] * pa
        rz[act] = rz_new
    # A problem whose CG met non-positive curvature before any progress falls back to the
    # preconditioned gradient (a descent direction; the line search takes care of its length).
    empty = np.flatnonzero(~np.any(s != 0, axis=(0, 2)))
    if len(empty):
        ops.select(empty)
        s[:, empty] = ops.precond(rhs[:, empty])
    return s


def _penalty(d: int, C: float, n_problems: int, ratio: np.ndarray | None = None) -> np.ndarray:
    pen = np.full((d + 1, n_problems), 1.0 / C)
    if ratio is not None:
        pen[:-1] *= ratio
    pen[-1] = _INTERCEPT_PENALTY
    return pen


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
    max_iter:
        Newton iterations at most.
    xb:
        ``x`` with a trailing column of ones, if the caller already has it.
    state:
        A dict kept by the caller across fits on the SAME ``xb`` (e.g. along a C path): the
        eigenbasis of the design's Gram matrix (the preconditioner) is computed once and kept in it.
    """
    if xb is None:
        xb = _with_bias(x)
    d = xb.shape[1] - 1
    y = np.asarray(y, dtype=np.int64)
    b = _Batch(m=np.ones((len(y), 1)), y=y[:, None], pen=_penalty(d, C, 1), n_classes=n_classes)
    w_start = None if w0 is None else np.asarray(w0, dtype=np.float64)[:, None, :]
    w = _solve(_design(xb, state), b, C, w_start, tol, max_iter)
    return w[:, 0, :]


def standardiser(x: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the columns (constant columns keep scale 1), as StandardScaler.

    With ``weights`` [n, P] (0/1 row memberships of P row sets) the result is [P, d] each.
    """
    if weights is None:
        mu = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        var = x.var(axis=0) if len(x) else np.zeros(x.shape[1])
    else:
        cnt = np.maximum(weights.sum(axis=0), 1.0)[:, None]
        mu = (weights.T @ x) / cnt
        var = np.clip((weights.T @ (x * x)) / cnt - mu * mu, 0.0, None)
    scale = np.sqrt(var)
    tiny = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mu), 1.0) ** 2
    return mu, np.where(var <= tiny, 1.0, scale)


@dataclass
class BatchFit:
    """The solutions of a ``LogisticBatch`` at one C per problem.

    ``w[:, p]`` acts on features standardised with ``mean[p]``, ``scale[p]`` (a StandardScaler fitted
    on problem ``p``'s own rows): exactly ``fit_logistic`` on those rows, up to the tolerance.
    """

    w: np.ndarray  # [d+1, P, cols], bias row last
    mean: np.ndarray  # [P, d]
    scale: np.ndarray  # [P, d]
    C: np.ndarray  # [P]
    n_rows: np.ndarray  # [P]
    v: np.ndarray  # [d+1, P, cols]: the same on the batch's common standardisation (warm starts)

    def model(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(w [d+1, cols], mean [d], scale [d])`` of problem ``p``, for ``predict_proba``."""
        return self.w[:, p], self.mean[p], self.scale[p]

    def proba(self, p: int, x: np.ndarray) -> np.ndarray:
        """Class probabilities [n, K] of RAW features ``x`` under problem ``p``."""
        w, mu, scale = self.model(p)
        return predict_proba((x - mu) / scale, w, 2 if w.shape[1] == 1 else w.shape[1])


class LogisticBatch:
    """``P`` logistic regressions on subsets of the same rows, solved together.

    Problem ``p`` is ``StandardScaler -> LogisticRegression(C_p)`` on the rows where
    ``masks[:, p]`` is true and its class code ``y[:, p]`` is not negative. All problems share one
    design (one GEMM per product); each problem's own standardisation is an exact
    reparametrisation of the common one (its penalty weights, see the module docstring), so the
    results are those of separate fits. Typical uses: the folds of a CV (a mask per fold), the
    targets of one feature source (a code column per target), a C path (``path``).

    Parameters
    ----------
    x:
        Raw features [n, d].
    y:
        Class codes ``0..n_classes-1`` [n, P] (or [n], shared); ``-1`` = row not used.
    masks:
        Rows of each problem [n, P] (bool); None = every row for every problem.
    n_classes:
        K, the same for every problem of the batch (2 = one logit).
    own_scalers:
        Standardise each problem on its own rows (True, as a pipeline with a StandardScaler) or
        every problem with the scaler of all rows (False, as ``LogisticRegressionCV`` on
        standardised features).
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, masks: np.ndarray | None, n_classes: int, own_scalers: bool = True
    ) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        n = len(x)
        if masks is None:
            masks = np.ones((n, 1 if y.ndim == 1 else y.shape[1]), dtype=bool)
        masks = np.asarray(masks, dtype=bool)
        if y.ndim == 1:
            y = np.repeat(y[:, None], masks.shape[1], axis=1)
        if y.shape != masks.shape:
            raise ValueError(f"codes {y.shape} and masks {masks.shape} disagree")
        self.n_classes = int(n_classes)
        self.y = y
        self.m = (masks & (y >= 0)).astype(np.float64)  # [n, P]
        self.mu0, self.sc0 = standardiser(x)
        self.design = _Design(_with_bias((x - self.mu0) / self.sc0))
        if own_scalers:
            self.mean, self.scale = standardiser(x, self.m)  # [P, d]: each problem's own scaler
        else:
            P = self.m.shape[1]
            self.mean, self.scale = np.tile(self.mu0, (P, 1)), np.tile(self.sc0, (P, 1))
        self.ratio = ((self.scale / self.sc0) ** 2).T  # [d, P]
        self.n_rows = self.m.sum(axis=0)

    @property
    def n_problems(self) -> int:
        return self.m.shape[1]

    def fit(
        self, C: float | np.ndarray, warm: BatchFit | None = None, tol: float = 1e-7, max_iter: int = 100
    ) -> BatchFit:
        """Solve every problem at ``C`` (scalar or one per problem), warm-started from ``warm``."""
        P, d = self.n_problems, self.design.xb.shape[1] - 1
        cs = np.broadcast_to(np.asarray(C, dtype=np.float64), (P,)).copy()
        pen = np.empty((d + 1, P))
        pen[:-1] = self.ratio / cs[None, :]
        pen[-1] = _INTERCEPT_PENALTY
        b = _Batch(m=self.m, y=self.y, pen=pen, n_classes=self.n_classes)
        v = _solve(self.design, b, float(cs.min()), None if warm is None else warm.v, tol, max_iter)
        # From the common standardisation to each problem's own: the same logits on every row.
        ratio = (self.scale / self.sc0).T  # [d, P]
        w = np.empty_like(v)
        w[:-1] = v[:-1] * ratio[:, :, None]
        w[-1] = v[-1] + np.einsum("pd,dpc->pc", (self.mean - self.mu0) / self.sc0, v[:-1])
        return BatchFit(w=w, mean=self.mean, scale=self.scale, C=cs, n_rows=self.n_rows, v=v)

    def path(self, Cs: Sequence[float] = tuple(CS), tol: float = 1e-7, max_iter: int = 100) -> list[BatchFit]:
        """Every problem at every C of ``Cs`` (ascending), each C warm-started from the previous."""
        out: list[BatchFit] = []
        for C in Cs:
            out.append(self.fit(float(C), out[-1] if out else None, tol, max_iter))
        return out


@dataclass
class LogisticCV:
    """Grouped-CV result for one target (see ``logistic_cv``).

    ``w`` acts on features standardised with ``mean`` and ``scale`` (those of the target's own
    training rows, as a StandardScaler fitted on them): ``[d+1, cols]``, bias last.
    """

    C: float
    losses: np.ndarray  # [len(Cs)] summed held-out log-loss over folds (NaN without CV)
    w: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    n_train: int


def logistic_cv(
    x: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    n_classes: Sequence[int] | int,
    n_folds: int,
    Cs: Sequence[float] = tuple(CS),
    default_C: float = 1.0,
    tol: float = 1e-7,
    stop_after_rises: int | None = None,
    fold_scalers: bool = True,
) -> list[LogisticCV]:
    """Choose C by grouped CV and refit, for several targets on the same rows, all at once.

    For each target (column of ``Y``) this is exactly: drop rows with a negative code; for each
    fold ``k < n_folds`` fit ``StandardScaler -> LogisticRegression(C)`` on the other folds' rows
    for every C and sum the held-out log-loss of fold ``k`` (folds with no held-out or no training
    row are skipped); choose the C of least loss (ties to the first); refit on all rows.
    Targets with the same number of classes, their folds and refits are one ``LogisticBatch``,
    warm-started along ``Cs`` (ascending).

    Parameters
    ----------
    x:
        Raw features [n, d] (all training rows).
    Y:
        Class codes [n, T] (``-1``: row not used for that target) or [n].
    groups:
        CV fold of each row ``0..n_folds-1`` [n].
    n_classes:
        K per target (or one K for all).
    n_folds:
        Number of folds; below 2 there is no CV and ``default_C`` is used.
    stop_after_rises:
        Skip the rest of the C path once every target's CV loss has risen at this many
        consecutive Cs (the larger, slower fits of an over-fitting probe); the skipped Cs get an
        infinite loss. None (default) fits the whole grid, as GridSearchCV does.
    fold_scalers:
        Standardise every fold on its own training rows (default, as a pipeline in GridSearchCV)
        or all with the scaler of all rows (as ``LogisticRegressionCV`` on standardised ``x``).
    """
    x = np.asarray(x, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.int64)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, T = Y.shape
    ks = [int(n_classes)] * T if np.isscalar(n_classes) else [int(k) for k in n_classes]  # type: ignore[arg-type]
    cs = np.asarray(Cs, dtype=np.float64)
    cv = n_folds >= 2
    out: list[LogisticCV | None] = [None] * T
    for K in sorted(set(ks)):
        targets = [t for t in range(T) if ks[t] == K]
        masks, codes, owner = [], [], []  # per problem: rows, codes, (target, held-out fold or -1)
        for t in targets:
            ok = Y[:, t] >= 0
            for k in range(n_folds) if cv else []:
                tr, va = ok & (groups != k), ok & (groups == k)
                if tr.any() and va.any():
                    masks.append(tr)
                    codes.append(Y[:, t])
                    owner.append((t, k))
            masks.append(ok)
            codes.append(Y[:, t])
            owner.append((t, -1))
        batch = LogisticBatch(x, np.stack(codes, axis=1), np.stack(masks, axis=1), K, own_scalers=fold_scalers)
        grid = cs if cv else np.array([default_C])
        losses = {t: np.full(len(grid), np.inf) for t in targets}
        path: list[BatchFit] = []
        for i, C in enumerate(grid):
            fit = batch.fit(float(C), path[-1] if path else None, tol)
            path.append(fit)
            for t in targets:
                losses[t][i] = 0.0
            for p, (t, k) in enumerate(owner):
                if k >= 0:
                    va = (groups == k) & (Y[:, t] >= 0)
                    losses[t][i] += log_loss(fit.proba(p, x[va]), Y[va, t])
            if stop_after_rises and cv and all(_rising(losses[t][: i + 1], stop_after_rises) for t in targets):
                break
        for t in targets:
            best = int(np.argmin(losses[t])) if cv else 0
            p = [q for q, (tt, k) in enumerate(owner) if tt == t and k < 0][0]
            w, mu, scale = path[best].model(p)
            out[t] = LogisticCV(
                C=float(cs[best]) if cv else float(default_C),
                losses=losses[t] if cv else np.full(len(cs), np.nan),
                w=w.copy(), mean=mu, scale=scale, n_train=int(batch.n_rows[p]),
            )
    return [o for o in out if o is not None]


def _rising(losses: np.ndarray, n: int) -> bool:
    """Whether the last ``n`` steps of ``losses`` all went up."""
    return len(losses) > n and bool(np.all(np.diff(losses[-(n + 1):]) > 0))


def predict_proba(x: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities [n, K] of standardised features ``x`` [n, d]."""
    z = _with_bias(x) @ w
    if n_classes == 2:
        p1 = _sigmoid(z[:, 0])
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
