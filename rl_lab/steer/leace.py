"""LEACE: erase a label from a hook's activations, with a guarantee, and check the guarantee.

LEACE (least-squares concept erasure; Belrose et al. 2023, arXiv:2306.03819, the
``concept-erasure`` package) finds the smallest affine edit ``h' = h - (h - b) R^T L^T`` after
which no linear function of ``h'`` predicts the label better than a constant. Its rank is the
label's: 1 for a continuous or binary label, up to C for C classes (one-hot).

``fit_leace`` fits it on the TRAINING episodes of the activation file (``probes.splits``), and
``erasure_scores`` checks it on the HELD-OUT episodes: a ridge probe (regularisation chosen by
cross-validation over the training folds) is refitted on the erased activations; its held-out
score must fall to the baseline (R^2 0 for a continuous label, the majority class's accuracy
for a discrete one). The same probe after erasing random subspaces of the same rank (isotropic
and covariance-drawn) shows how much a random erasure of that size costs the label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from concept_erasure import LeaceFitter

from probes.activations import ActivationFile
from probes.splits import split_episodes
from rl_lab.errors import LabError

ALPHAS = np.logspace(-3, 4, 8)


@dataclass
class LeaceFit:
    """A fitted LEACE eraser at one hook, and the data it was checked on."""

    label: str
    hook: str
    kind: str  # "continuous" | "discrete"
    rank: int
    matrix: np.ndarray  # [d, d]: the erased part as a right-multiplication, R^T L^T
    bias: np.ndarray  # [d]
    x: np.ndarray  # [N, d] activations (float64)
    y: np.ndarray  # [N] label
    fold: np.ndarray  # [N] CV fold of a training row, n_folds for a test row
    n_folds: int
    classes: list[Any] = field(default_factory=list)

    def erase(self, x: np.ndarray, fraction: float = 1.0) -> np.ndarray:
        return x - fraction * (x - self.bias) @ self.matrix


def load_label(act_path: Path, label: str, hook: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Activations [N, d], label [N], episode ids [N] and the label's kind (finite rows only)."""
    with ActivationFile(act_path) as af:
        if label not in af.labels:
            raise LabError(f"unknown label {label!r} in {act_path.name} (available: {', '.join(af.labels)})")
        if hook not in af.hooks:
            raise LabError(f"unknown hook {hook!r} in {act_path.name} (available: {', '.join(af.hooks)})")
        x = af.acts(hook).astype(np.float64)
        y = af.label(label).astype(np.float64)
        episodes = np.asarray(af.steps("episode"), dtype=np.int64)
        kind = af.label_info(label)["kind"]
    ok = np.isfinite(y)
    return x[ok], y[ok], episodes[ok], kind


def _targets(y: np.ndarray, kind: str, classes: list[Any]) -> np.ndarray:
    if kind == "discrete":
        return (y[:, None] == np.asarray(classes)[None, :]).astype(np.float64)  # [N, C] one-hot
    return y[:, None]


def fit_leace(act_path: Path, label: str, hook: str, seed: int = 0) -> LeaceFit:
    """Fit LEACE for ``label`` at ``hook`` on the training episodes of ``act_path``."""
    x, y, episodes, kind = load_label(act_path, label, hook)
    try:
        split = split_episodes(np.unique(episodes), seed=seed)
    except ValueError as exc:
        raise LabError(f"{act_path.name}: {exc}") from None
    fold = split.groups_of(episodes)
    train = fold < split.n_folds
    classes = sorted(np.unique(y[train]).tolist()) if kind == "discrete" else []
    if kind == "discrete" and len(classes) < 2:
        raise LabError(f"label {label!r} takes one value on the training episodes: nothing to erase")
    if kind != "discrete" and not y[train].std() > 0:
        raise LabError(f"label {label!r} is constant on the training episodes: nothing to erase")
    z = _targets(y[train], kind, classes)
    if kind == "discrete" and len(classes) == 2:
        z = z[:, 1:]  # binary: one column
    fitter = LeaceFitter(x.shape[1], z.shape[1], dtype=torch.float64)
    fitter.update(torch.from_numpy(x[train]), torch.from_numpy(z))
    eraser = fitter.eraser
    left = eraser.proj_left.double().numpy()  # [d, k]
    right = eraser.proj_right.double().numpy()  # [k, d]
    bias = eraser.bias.double().numpy() if eraser.bias is not None else np.zeros(x.shape[1])
    rank = int(np.linalg.matrix_rank(left @ right, tol=1e-8)) if left.size else 0
    return LeaceFit(label=label, hook=hook, kind=kind, rank=max(rank, 1), matrix=right.T @ left.T, bias=bias,
                    x=x, y=y, fold=fold, n_folds=split.n_folds, classes=classes)


def probe_score(x: np.ndarray, y: np.ndarray, kind: str, fold: np.ndarray, n_folds: int,
                classes: list[Any]) -> float:
    """Held-out score of a ridge probe (R^2 or accuracy), alpha chosen by CV over the training folds."""
    train, test = fold < n_folds, fold == n_folds
    mu, sd = x[train].mean(0), x[train].std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    xs = (x - mu) / sd
    t = _targets(y, kind, classes)

    def fit(rows: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        xm, tm = xs[rows].mean(0), t[rows].mean(0)
        xc = xs[rows] - xm
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(xs.shape[1]), xc.T @ (t[rows] - tm))
        return w, tm - xm @ w

    def score(rows: np.ndarray, w: np.ndarray, b: np.ndarray, ref: np.ndarray) -> float:
        pred = xs[rows] @ w + b
        if kind == "discrete":
            return float((np.asarray(classes)[pred.argmax(1)] == y[rows]).mean())
        sst = float(((t[rows] - ref) ** 2).sum())
        return 1.0 - float(((t[rows] - pred) ** 2).sum()) / sst if sst > 0 else 0.0

    best, best_alpha = -np.inf, 1.0
    if n_folds > 1:
        for alpha in ALPHAS:
            scores = []
            for f in range(n_folds):
                tr, va = train & (fold != f), fold == f
                if va.any() and tr.any():
                    w, b = fit(tr, alpha)
                    scores.append(score(va, w, b, t[tr].mean(0)))
            if scores and np.mean(scores) > best:
                best, best_alpha = float(np.mean(scores)), float(alpha)
    w, b = fit(train, best_alpha)
    return score(test, w, b, t[train].mean(0))


def baseline_score(fit: LeaceFit) -> float:
    """What a constant achieves on the held-out episodes: R^2 0, or the training majority's accuracy."""
    if fit.kind != "discrete":
        return 0.0
    train, test = fit.fold < fit.n_folds, fit.fold == fit.n_folds
    values, counts = np.unique(fit.y[train], return_counts=True)
    return float((fit.y[test] == values[counts.argmax()]).mean())


def erasure_scores(fit: LeaceFit, subspaces: list[np.ndarray], mean: np.ndarray) -> dict[str, Any]:
    """Held-out probe scores: before erasure, after LEACE, after each random subspace erasure."""
    args = (fit.kind, fit.fold, fit.n_folds, fit.classes)
    before = probe_score(fit.x, fit.y, *args)
    after = probe_score(fit.erase(fit.x), fit.y, *args)
    randoms = [probe_score(fit.x - (fit.x - mean) @ (q @ q.T), fit.y, *args) for q in subspaces]
    base = baseline_score(fit)
    metric = "accuracy" if fit.kind == "discrete" else "r2"
    return {
        "metric": metric,
        "before": before,
        "after": after,
        "baseline": base,
        "random_after": randoms,
        "falls_to_baseline": bool(after <= base + max(0.02, 0.1 * abs(before - base))),
        "n_train_rows": int((fit.fold < fit.n_folds).sum()),
        "n_test_rows": int((fit.fold == fit.n_folds).sum()),
        "rank": fit.rank,
    }
