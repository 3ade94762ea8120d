"""Linear probe sweep: every hook x label of an activation file, scored against baselines.

For each hook and label a linear probe predicts the label from the layer: ridge regression
(R^2) for continuous labels, logistic regression (accuracy and AUROC, macro one-vs-rest for more
than two classes) for discrete ones. Every statistical rule is stated once in ``docs/probes.md``:

- **Repeated nested cross-validation grouped by episode.** Episodes are dealt into K outer folds
  (``probes.splits.outer_folds``; default 5, so every episode is tested once per repeat). Outer
  fold k is predicted by a probe fitted on the other folds, whose regularisation is chosen by
  leave-one-fold-out CV over those other folds (the inner folds). The score is the out-of-fold
  score over all episodes (the mean over repeats); its CI is a bootstrap over episodes of the
  out-of-fold predictions.
- **Baselines, all probed on the same folds:** ``mean`` (training-fold mean / majority class),
  ``raw_obs`` (the current observation ``/steps/obs``), ``input_matched`` (everything the network
  receives, when the file says what that is: ``ActivationFile.input_window``), ``random_weights``
  (the mean over the random-weights twins ``/acts_random*/<hook>``, spread reported), and
  ``control_task``: the same hook predicting the label of ANOTHER episode (episodes permuted,
  each keeping its time course), ``selectivity = score - control_task``.
- **Paired comparisons.** For each baseline, ``score - baseline`` with a paired bootstrap interval
  over the same episode resamples; "beats X" means the interval lies above 0.
- **Multiple comparisons.** One p-value per cell (hook x label: that the probe beats every
  baseline, the largest of the per-baseline p-values), Holm-adjusted across every cell of the
  run; ``significant`` (and the sentences, the TUI's marks) use the adjusted result.

Ridge is solved from streamed sufficient statistics (``probes.ridge``), so memory does not grow
with the file; logistic regression keeps at most ``max_logistic_rows`` rows, and at most
``MAX_LOGISTIC_BYTES`` of them, in memory (a seeded uniform subsample beyond that). The document and its records are ``probes.results``.

Run ``python -m probes.linear FILE.h5 [--json]``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from probes.activations import MAX_CLASSES, ActivationFile
from probes.errors import ProbeError
from probes.layout import PROBE_RESULTS_SUFFIX, PROBE_WEIGHTS_SUFFIX, recording_place
from probes.logistic import CS, auroc, fit_logistic, log_loss, predict_proba, standardiser
from probes.results import (
    ACCURACY,
    CONTINUOUS,
    CONTROL_TASK,
    DISCRETE,
    R2,
    SCHEMA_VERSION,
    ProbeRecord,
    ProbeResults,
    jsonable,
    write_probe_results,
)
from probes.ridge import RidgeStats, fit_ridge_all, fit_ridge_nested, r2_from_sums
from probes.scripts import ScriptParser
from probes.stats import holm
from probes.splits import (
    OuterFolds,
    bootstrap_counts,
    outer_folds,
    percentile_ci,
    unique_episodes,
)

ROWS_PER_CHUNK = 8192
MAX_LOGISTIC_ROWS = 100_000
MAX_LOGISTIC_BYTES = 48 * 1024 * 1024
"""Cap on the logistic probes' subsample in bytes (rows x dimensions x 8): a wide hook keeps fewer
rows (48 MB: 98k rows of a 64-wide hook, 12k of a 512-wide one), so that memory stays flat in the
number of rows and bounded in the width (the fits hold a few standardised copies of it)."""
MAX_FEATURE_DIM = 2048
"""Sources wider than this are probed through ``reduction`` (a seeded random projection)."""
REDUCED_DIMS = 512
REDUCTION_SEED = 2020
READ_BYTES = 64 * 1024 * 1024
"""Rows of a wide source are read (and projected) in blocks of at most this many bytes (float64)."""
INNER_TOL = 1e-5
"""Gradient tolerance of the inner (C-selecting) logistic fits; the outer fits use the solver's own."""
N_FOLDS = 5
N_REPEATS = 1
SIGNIFICANCE = 0.05
"""Level of the Holm-corrected test and of the 95% intervals."""
CORRECTION = "holm"
CONTROL = "episode_permuted_label"
"""The control task: the label of another episode (episodes permuted, time course kept)."""
RANDOM_WEIGHTS = "random_weights"
RAW_OBS = "raw_obs"
INPUT_MATCHED = "input_matched"
MEAN = "mean"
CONTROL_SEED_SALT = 0x5EED_C0DE


class Source(NamedTuple):
    """A feature source of the file: ``/<group>/<dataset>``, or the network's input window."""

    group: str  # "acts", "acts_random[_i]", "steps" or "input_window"
    dataset: str  # the hook, or "obs"

    def __str__(self) -> str:
        return f"{self.group}/{self.dataset}" if self.dataset else self.group


OBS = Source("steps", "obs")
WINDOW = Source("input_window", "")


# ---------------------------------------------------------------------------- labels
@dataclass
class LabelPlan:
    """What the sweep knows about one label after reading its column."""

    name: str
    kind: str  # "continuous" | "discrete"
    linear_in: list[str]
    description: str = ""
    kind_source: str = "attribute"
    derived_from: str | None = None
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    freq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: float = 0.0
    std: float = 0.0
    n_nan: int = 0
    skip: str | None = None

    @property
    def discrete(self) -> bool:
        return self.kind == DISCRETE

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Discrete values -> class codes ``0..K-1`` (``-1`` for NaN or a value not in ``classes``)."""
        values = np.asarray(values, dtype=np.float64)
        if len(self.classes) == 0:
            return np.full(len(values), -1)
        idx = np.clip(np.searchsorted(self.classes, values), 0, len(self.classes) - 1)
        ok = np.isfinite(values) & (self.classes[idx] == values)
        return np.where(ok, idx, -1)

    def target(self, values: np.ndarray) -> np.ndarray:
        """What the probe predicts: class codes (discrete, -1 = left out) or values (NaN = left out)."""
        return self.codes(values) if self.discrete else np.asarray(values, dtype=np.float64)


def plan_label(f: ActivationFile, name: str, values: np.ndarray, notes: list[str]) -> LabelPlan:
    """Decide how to probe one label from its whole column (``values`` [N])."""
    info = f.label_info(name)
    kind = info["kind"]
    if kind not in (CONTINUOUS, DISCRETE):
        notes.append(f"label {name!r}: unknown kind {kind!r}, probed as continuous")
        kind = CONTINUOUS
    plan = LabelPlan(name=name, kind=kind, linear_in=list(info["linear_in"]), description=str(info["description"]),
                     kind_source=str(info.get("kind_source", "attribute")), derived_from=info.get("derived_from"))
    finite = np.isfinite(values)
    plan.n_nan = int((~finite).sum())
    if plan.n_nan:
        notes.append(f"label {name!r}: {plan.n_nan} NaN value(s) were left out of its probes")
    v = values[finite]
    if len(v) == 0:
        plan.skip = "it has no finite value"
    elif plan.discrete:
        classes, counts = np.unique(v, return_counts=True)
        if len(classes) < 2:
            plan.skip = "it takes a single value"
        elif len(classes) > MAX_CLASSES:
            plan.skip = f"it has more than {MAX_CLASSES} classes (is it really discrete?)"
        else:
            plan.classes = classes.astype(np.float64)
            plan.freq = counts / counts.sum()
    else:
        plan.mean, plan.std = float(v.mean()), float(v.std())
        if plan.std <= 1e-12 * max(1.0, abs(plan.mean)):
            plan.skip = "it has no variance"
    if plan.skip:
        notes.append(f"label {name!r} was not probed: {plan.skip}")
    return plan


# ---------------------------------------------------------------------------- control task
def episode_permutation(n_episodes: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``0..n_episodes-1`` that moves every episode (a derangement)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_episodes)
    if n_episodes < 2:
        return perm
    for i in np.flatnonzero(perm == np.arange(n_episodes)):
        j = (i + 1) % n_episodes
        perm[i], perm[j] = perm[j], perm[i]
    for i in np.flatnonzero(perm == np.arange(n_episodes)):  # the swap can leave one fixed point
        j = (i - 1) % n_episodes
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def control_column(values: np.ndarray, ep_idx: np.ndarray, n_episodes: int, seed: int) -> np.ndarray:
    """The control task's target: row t of episode e gets the label of row ``t mod len(e')`` of
    episode ``e' = perm(e)``, a different episode.

    The control keeps the label's marginal distribution, its autocorrelation within an episode
    and its time course, but breaks its link with the activations of the episode it is paired
    with. A probe that decodes it reads something that is not the label of this episode: the
    time within the episode, or (with a leak across folds) the episode's identity.
    """
    perm = episode_permutation(n_episodes, seed)
    order = np.argsort(ep_idx, kind="stable")  # rows of each episode, in recording order
    starts = np.searchsorted(ep_idx[order], np.arange(n_episodes))
    lengths = np.bincount(ep_idx, minlength=n_episodes)
    pos = np.empty(len(ep_idx), dtype=np.int64)
    pos[order] = np.arange(len(ep_idx)) - np.repeat(starts, lengths)  # step within the episode
    donor = perm[ep_idx]
    src = order[starts[donor] + pos % np.maximum(lengths[donor], 1)]
    return np.asarray(values)[src]


# ---------------------------------------------------------------------------- reading features
def window_features(f: ActivationFile, spec: Mapping[str, Any], rows: slice, n_actions: int | None) -> np.ndarray:
    """The network's input window for ``rows``: the last K steps of the episode, oldest first,
    zero-padded before the episode's start, with a validity column per position.

    Fields (``spec["fields"]``): ``obs`` (the observation), ``rtg`` (``/inputs/rtg``),
    ``prev_actions`` (the actions of the window's earlier steps, one-hot when discrete; not the
    current step's, which the network has not taken yet) and ``timestep`` (``/steps/t`` of the
    current step; earlier positions' timesteps are that minus their offset).
    """
    K = int(spec["context"])
    fields = list(spec["fields"])
    lo = max(0, rows.start - (K - 1))
    block = slice(lo, rows.stop)
    eps = f.steps("episode", block)
    t = f.steps("t", block)
    cur = np.arange(rows.start, rows.stop) - lo
    cols: list[np.ndarray] = []
    obs = np.asarray(f.steps("obs", block), dtype=np.float64).reshape(len(eps), -1) if "obs" in fields else None
    rtg = np.asarray(f.read("inputs", "rtg", block), dtype=np.float64).reshape(-1) if "rtg" in fields else None
    act = None
    if "prev_actions" in fields:
        a = np.asarray(f.steps("action", block))
        a = a.reshape(len(a), -1)
        act = np.eye(n_actions)[np.clip(a[:, 0].astype(np.int64), 0, n_actions - 1)] if n_actions else a.astype(np.float64)
    for k in range(K - 1, -1, -1):
        src = cur - k
        ok = src >= 0
        s = np.clip(src, 0, None)
        ok &= (eps[s] == eps[cur]) & (t[s] == t[cur] - k)
        m = ok.astype(np.float64)[:, None]
        cols.append(m)
        if obs is not None:
            cols.append(obs[s] * m)
        if rtg is not None:
            cols.append((rtg[s] * m[:, 0])[:, None])
        if act is not None and k > 0:
            cols.append(act[s] * m)
    if "timestep" in fields:
        cols.append(np.asarray(t[cur], dtype=np.float64)[:, None])
    return np.concatenate(cols, axis=1)


def reduction(dim: int) -> dict[str, Any] | None:
    """How a source of ``dim`` dimensions is probed: None (as is) up to ``MAX_FEATURE_DIM``, else a
    fixed seeded Gaussian random projection to ``REDUCED_DIMS`` dimensions (the record's
    ``reduction``). It needs no fitting, so no held-out row shapes it, and it is the same matrix for
    a hook and its random-weights twins. Johnson-Lindenstrauss: a linear readout of the layer stays
    (approximately) linear in the projection."""
    if dim <= MAX_FEATURE_DIM:
        return None
    return {"kind": "random_projection", "dims": REDUCED_DIMS, "seed": REDUCTION_SEED, "input_dims": int(dim)}


def projection_matrix(dim: int) -> np.ndarray:
    """The ``reduction`` matrix [dim, REDUCED_DIMS]: i.i.d. N(0, 1 / REDUCED_DIMS), seeded by the width."""
    rng = np.random.default_rng([REDUCTION_SEED, dim])
    return (rng.standard_normal((dim, REDUCED_DIMS)) / math.sqrt(REDUCED_DIMS)).astype(np.float64)


class _Reader:
    """Reads one source's rows as float64 ``[n, d]`` (projected, for a source wider than
    ``MAX_FEATURE_DIM``: ``reduction``; read in blocks of at most ``READ_BYTES``)."""

    def __init__(self, f: ActivationFile, source: Source) -> None:
        self.f, self.source = f, source
        self.spec = f.input_window if source == WINDOW else None
        self.n_actions: int | None = None
        if self.spec is not None and "prev_actions" in self.spec["fields"]:
            a = np.asarray(f.steps("action"))
            if a.dtype.kind in "iub" and a.size and a.reshape(len(a), -1).shape[1] == 1 and a.max() < MAX_CLASSES:
                self.n_actions = int(a.max()) + 1
        self.raw_dim = int(self._read(slice(0, 1)).shape[1])
        self.reduction = reduction(self.raw_dim)
        self._projection: np.ndarray | None = None

    def _read(self, rows: slice) -> np.ndarray:
        if self.source == WINDOW:
            assert self.spec is not None
            return window_features(self.f, self.spec, rows, self.n_actions)
        x = self.f.read(*self.source, rows=rows)
        return np.asarray(x, dtype=np.float64).reshape(rows.stop - rows.start, -1)

    def read(self, rows: slice) -> np.ndarray:
        if self.reduction is None:
            return self._read(rows)
        if self._projection is None:
            self._projection = projection_matrix(self.raw_dim)
        step = max(1, READ_BYTES // (8 * self.raw_dim))
        parts = [self._read(slice(a, min(a + step, rows.stop))) @ self._projection
                 for a in range(rows.start, rows.stop, step)]
        return np.concatenate(parts) if parts else np.zeros((0, REDUCED_DIMS))

    def dim(self) -> int:
        return REDUCED_DIMS if self.reduction is not None else self.raw_dim

    def raw_direction(self, coef: np.ndarray | None) -> np.ndarray | None:
        """A probe direction in the source's own space: ``P @ w`` for a projected source (x.P.w = x.(P w))."""
        if coef is None or self.reduction is None:
            return coef
        assert self._projection is not None
        return np.asarray(coef) @ self._projection.T


# ---------------------------------------------------------------------------- one feature source
@dataclass
class ProbeResult:
    """Out-of-fold result of one probe (one source x one target).

    ``sums[r, e]`` are the out-of-fold sums of episode e in repeat r: ``(n, sum y, sum y^2, SSE)``
    for R^2, ``(n, correct)`` for accuracy. ``inner[r, k]`` is the inner-CV score (R^2 or
    accuracy) at the regularisation chosen for outer fold k: it never saw fold k.
    """

    metric: str
    sums: np.ndarray  # [R, E, c]
    inner: np.ndarray  # [R, K]
    reg: float  # alpha (ridge) or C (logistic) of the final direction
    n_train: int
    n_test: int
    auroc: float | None = None
    coef: np.ndarray | None = None  # final direction(s), raw space: [d] or [K, d]
    bias: np.ndarray | None = None

    @property
    def score(self) -> float:
        return float(np.mean(score_of_sums(self.metric, self.sums.sum(axis=1))))


def score_of_sums(metric: str, sums: np.ndarray) -> np.ndarray:
    """R^2 or accuracy from (possibly bootstrap-weighted) sums ``[..., c]``."""
    if metric == R2:
        return r2_from_sums(sums[..., 0], sums[..., 1], sums[..., 2], sums[..., 3])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[..., 0] > 0, sums[..., 1] / sums[..., 0], np.nan)


def bootstrap_scores(metric: str, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[B]`` scores over episode resamples (``counts`` [B, E]), averaged over repeats."""
    return np.mean(score_of_sums(metric, np.einsum("be,rec->rbc", counts, sums)), axis=0)


def _geo_median(values: np.ndarray) -> float:
    """The median in log space of positive regularisation strengths (a grid value for odd counts)."""
    return float(np.exp(np.median(np.log(np.asarray(values, dtype=np.float64).ravel()))))


def fit_source(
    f: ActivationFile,
    source: Source,
    targets: Mapping[str, tuple[LabelPlan, np.ndarray]],
    folds: OuterFolds,
    ep_idx: np.ndarray,
    *,
    seed: int,
    max_logistic_rows: int,
    notes: list[str],
) -> dict[str, ProbeResult]:
    """Nested-CV probes of every target on one feature source; two streaming passes over the file.

    ``targets`` maps a key to ``(plan, target column [N])`` (``LabelPlan.target``);
    ``ep_idx`` [N] is each row's episode index in ``folds.episodes``.
    """
    if not targets:
        return {}
    reader = _Reader(f, source)
    R, K, E = folds.n_repeats, folds.n_folds, folds.n_episodes
    fold_rows = folds.fold[:, ep_idx]  # [R, N]
    keys = list(targets)
    cont = [k for k in keys if not targets[k][0].discrete]
    disc = [k for k in keys if targets[k][0].discrete]
    # Targets without NaN share one set of statistics per repeat; the others need their own rows.
    shared = [k for k in cont if np.isfinite(targets[k][1]).all()]
    own = [k for k in cont if k not in shared]
    d = reader.dim()
    stats_shared = [RidgeStats(K, d, len(shared)) for _ in range(R)] if shared else []
    stats_own = {k: [RidgeStats(K, d, 1) for _ in range(R)] for k in own}
    y_shared = np.stack([targets[k][1] for k in shared], axis=1) if shared else None

    n_rows = f.n
    cap = max(1, min(max_logistic_rows, MAX_LOGISTIC_BYTES // (8 * max(d, 1))))
    keep_p = min(1.0, cap / max(n_rows, 1))
    if disc and keep_p < 1.0:
        why = "max_logistic_rows" if cap == max_logistic_rows else f"{MAX_LOGISTIC_BYTES >> 20} MB at {d} dimensions"
        notes.append(f"{source}: logistic probes were trained on a seeded subsample of about "
                     f"{cap} of {n_rows} rows ({why}); they are scored on every row")
    lx: list[np.ndarray] = []
    lrow: list[np.ndarray] = []
    n_bad = 0

    # ---- pass 1: sufficient statistics (ridge) and the logistic rows
    for start in range(0, n_rows, ROWS_PER_CHUNK):
        sl = slice(start, min(start + ROWS_PER_CHUNK, n_rows))
        x = reader.read(sl)
        finite = np.isfinite(x).all(axis=1)
        n_bad += int((~finite).sum())
        rows = np.arange(sl.start, sl.stop)
        for r in range(R):
            g = fold_rows[r, sl]
            if y_shared is not None:
                stats_shared[r].add(x[finite], y_shared[sl][finite], g[finite])
            for k in own:
                m = finite & np.isfinite(targets[k][1][sl])
                stats_own[k][r].add(x[m], targets[k][1][sl][m][:, None], g[m])
        if disc:
            rng = np.random.default_rng([seed, CONTROL_SEED_SALT, start])
            take = finite & (rng.random(len(x)) < keep_p)
            lx.append(x[take])
            lrow.append(rows[take])
    if n_bad:
        notes.append(f"{source}: {n_bad} row(s) with non-finite activations were left out")

    # ---- fits: per repeat and outer fold (nested), and a final direction on every row
    ridge: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]] = {}
    groups = ([(stats_shared, shared)] if shared else []) + [(stats_own[k], [k]) for k in own]
    for stats, group in groups:
        nested = [fit_ridge_nested(s, K) for s in stats]
        for j, k in enumerate(group):
            coef = np.stack([n.coef[:, :, j] for n in nested])  # [R, K, d]
            icpt = np.stack([n.intercept[:, j] for n in nested])  # [R, K]
            inner = np.stack([n.inner_r2[:, j] for n in nested])  # [R, K]
            alpha = _geo_median(np.stack([n.alpha[:, j] for n in nested]))
            fc, fi = fit_ridge_all(stats[0], K, np.full(stats[0].L, alpha))
            ridge[k] = (coef, icpt, inner, alpha, fc[:, j], np.array([fi[j]]))
    logistic: dict[str, tuple[list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]], np.ndarray, float, int]] = {}
    final_logistic: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if disc:
        X = np.concatenate(lx) if lx else np.zeros((0, d))
        rows_kept = np.concatenate(lrow) if lrow else np.zeros(0, dtype=np.int64)
        del lx, lrow
        for k in disc:
            plan, col = targets[k]
            y = col[rows_kept].astype(np.int64)
            ok = y >= 0
            per_repeat, inners, Cs = [], [], []
            for r in range(R):
                models, inner, chosen = _fit_logistic_nested(X[ok], y[ok], fold_rows[r, rows_kept[ok]], K, len(plan.classes))
                per_repeat.append(models)
                inners.append(inner)
                Cs.extend(chosen)
            C = _geo_median(np.array(Cs))
            mu, scale = standardiser(X[ok])
            w = fit_logistic((X[ok] - mu) / scale, y[ok], len(plan.classes), C)
            raw_coef = (w[:-1] / scale[:, None]).T  # [cols, d]
            raw_bias = w[-1] - (mu / scale) @ w[:-1]
            logistic[k] = (per_repeat, np.array(inners), C, int(ok.sum() * (K - 1) / K))
            final_logistic[k] = (raw_coef[0] if raw_coef.shape[0] == 1 else raw_coef, raw_bias)
        del X

    # ---- pass 2: out-of-fold predictions, summed per episode
    sums = {k: np.zeros((R, E, 4 if k in ridge else 2)) for k in keys}
    probs: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in range(R)] for k in disc}
    codes: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in range(R)] for k in disc}
    for start in range(0, n_rows, ROWS_PER_CHUNK):
        sl = slice(start, min(start + ROWS_PER_CHUNK, n_rows))
        x = reader.read(sl)
        finite = np.isfinite(x).all(axis=1)
        ep = ep_idx[sl]
        for r in range(R):
            g = fold_rows[r, sl]
            for k in keys:
                v = targets[k][1][sl]
                acc = sums[k][r]
                if k in ridge:
                    coef, icpt = ridge[k][0][r], ridge[k][1][r]  # [K, d], [K]
                    ok = finite & np.isfinite(v)
                    yhat = np.einsum("nd,nd->n", x[ok], coef[g[ok]]) + icpt[g[ok]]
                    e, vv = ep[ok], v[ok]
                    np.add.at(acc[:, 0], e, 1.0)
                    np.add.at(acc[:, 1], e, vv)
                    np.add.at(acc[:, 2], e, vv**2)
                    np.add.at(acc[:, 3], e, (vv - yhat) ** 2)
                else:
                    models = logistic[k][0][r]
                    n_classes = len(targets[k][0].classes)
                    ok = finite & (v >= 0)
                    p = np.zeros((int(ok.sum()), n_classes))
                    gk = g[ok]
                    for fold, (w, mu, scale) in enumerate(models):
                        m = gk == fold
                        if m.any():
                            p[m] = predict_proba((x[ok][m] - mu) / scale, w, n_classes)
                    vv = v[ok].astype(np.int64)
                    np.add.at(acc[:, 0], ep[ok], 1.0)
                    np.add.at(acc[:, 1], ep[ok], (np.argmax(p, axis=1) == vv).astype(np.float64))
                    probs[k][r].append(p)
                    codes[k][r].append(vv)

    out: dict[str, ProbeResult] = {}
    for k in keys:
        n_test = int(sums[k][0, :, 0].sum())
        if n_test == 0:
            continue
        if k in ridge:
            _, _, inner, alpha, fc, fi = ridge[k]
            n_train = int(round(n_test * (K - 1) / K))
            out[k] = ProbeResult(R2, sums[k], inner, alpha, n_train, n_test, coef=fc, bias=fi)
        else:
            _, inner, C, n_train = logistic[k]
            aurocs = [auroc(np.concatenate(probs[k][r]), np.concatenate(codes[k][r])) for r in range(R)]
            finite_auc = [a for a in aurocs if math.isfinite(a)]
            coef, bias = final_logistic[k]
            out[k] = ProbeResult(ACCURACY, sums[k], inner, C, n_train, n_test,
                                 auroc=float(np.mean(finite_auc)) if finite_auc else None, coef=coef, bias=bias)
    for res in out.values():  # the saved directions read the layer itself
        res.coef = reader.raw_direction(res.coef)
    return out


ProgressFn = Callable[[int, int, str], None]
PARALLEL_MIN_CELLS = 4_000_000
"""Rows x feature dimensions summed over the sources below which one process is faster than a pool."""


def _fit_source_job(path: str, allow_incomplete: bool, source: Source, targets: Mapping[str, tuple[LabelPlan, np.ndarray]],
                    folds: OuterFolds, ep_idx: np.ndarray, seed: int, max_logistic_rows: int) -> tuple[dict[str, ProbeResult], list[str]]:
    """``fit_source`` in a worker process: opens the file itself, returns the results and notes."""
    notes: list[str] = []
    with ActivationFile(path, allow_incomplete=allow_incomplete) as f:
        res = fit_source(f, source, targets, folds, ep_idx, seed=seed, max_logistic_rows=max_logistic_rows, notes=notes)
    return res, notes


def _fit_sources(
    f: ActivationFile,
    jobs: Sequence[tuple[Source, Mapping[str, tuple[LabelPlan, np.ndarray]]]],
    folds: OuterFolds,
    ep_idx: np.ndarray,
    *,
    seed: int,
    max_logistic_rows: int,
    notes: list[str],
    allow_incomplete: bool,
    workers: int | None,
    progress: ProgressFn | None,
) -> list[dict[str, ProbeResult]]:
    """``fit_source`` for every job, in order, in this process or in a pool of ``workers``."""
    if workers is None:
        cells = f.n * sum(_Reader(f, src).dim() for src, _ in jobs)
        workers = min(os.cpu_count() or 1, len(jobs)) if cells >= PARALLEL_MIN_CELLS else 1
    workers = max(1, min(workers, len(jobs)))
    results: list[dict[str, ProbeResult]] = []
    if workers == 1:
        for i, (src, targets) in enumerate(jobs):
            results.append(fit_source(f, src, targets, folds, ep_idx, seed=seed,
                                      max_logistic_rows=max_logistic_rows, notes=notes))
            if progress is not None:
                progress(i + 1, len(jobs), str(src))
        return results
    # spawn, not the forkserver: that server is one per interpreter and keeps the stderr it
    # started with, so a caller's later pool (a sweep's) would write its progress there
    ctx = multiprocessing.get_context("spawn")
    # the costliest first (logistic fits grow with width x discrete targets): the pool ends together
    cost = [_Reader(f, src).dim() * (1 + sum(plan.discrete for plan, _ in targets.values())) for src, targets in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -cost[i])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        submitted = {i: pool.submit(_fit_source_job, str(f.path), allow_incomplete, jobs[i][0], jobs[i][1], folds,
                                    ep_idx, seed, max_logistic_rows) for i in order}
        futures = [submitted[i] for i in range(len(jobs))]
        done = 0
        for fut in as_completed(futures):
            fut.result()  # a failing job fails the sweep at once
            done += 1
            if progress is not None:
                progress(done, len(jobs), "")
        for fut in futures:  # merged in job order: the results and notes do not depend on timing
            res, job_notes = fut.result()
            results.append(res)
            notes.extend(job_notes)
    return results


def _fit_logistic_nested(
    X: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, n_classes: int
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray, list[float]]:
    """Per outer fold k: C chosen by leave-one-fold-out CV over the other folds (mean held-out
    log-loss, ties to the first C), then a fit on all of them.

    The fit on "every fold but {j, k}" along the C path is validated on j for outer fold k and
    on k for outer fold j, so each pair is fitted once. Returns ``[(w, mean, scale)] * K``,
    the inner accuracy at each chosen C ``[K]`` and the chosen Cs.
    """
    losses = np.zeros((n_folds, len(CS)))
    accs = np.zeros((n_folds, len(CS)))
    votes = np.zeros(n_folds)
    if n_folds >= 3:
        for j in range(n_folds):
            for k in range(j + 1, n_folds):
                tr = (fold != j) & (fold != k)
                vals = [(fold == j, k), (fold == k, j)]  # (validation rows, the outer fold they serve)
                if not tr.any() or len(np.unique(y[tr])) < 2:
                    continue
                mu, scale = standardiser(X[tr])
                xt = (X[tr] - mu) / scale
                xtb = np.concatenate([xt, np.ones((len(xt), 1))], axis=1)
                xv = [((X[m] - mu) / scale, y[m], outer) for m, outer in vals if m.any()]
                for _, _, outer in xv:
                    votes[outer] += 1
                w = None
                state: dict = {}  # the Hessian preconditioner travels along the C path
                path = np.zeros((len(xv), len(CS), 2))  # [validation set, C, (loss, accuracy)]
                for i, C in enumerate(CS):
                    w = fit_logistic(xt, y[tr], n_classes, float(C), w0=w, xb=xtb, state=state, tol=INNER_TOL)
                    for v, (xval, yval, _) in enumerate(xv):
                        p = predict_proba(xval, w, n_classes)
                        path[v, i] = log_loss(p, yval), float(np.mean(np.argmax(p, axis=1) == yval))
                    if i >= 2 and (np.diff(path[:, i - 2:i + 1, 0], axis=1) > 0).all():
                        # two rises in a row on every validation set: larger C over-fits more;
                        # the rest of the path is taken as no better than its last point
                        path[:, i + 1:] = path[:, i:i + 1]
                        break
                for v, (_, _, outer) in enumerate(xv):
                    losses[outer] += path[v, :, 0]
                    accs[outer] += path[v, :, 1]
    models, inner, chosen = [], np.full(n_folds, np.nan), []
    for k in range(n_folds):
        C = 1.0
        if votes[k] > 0:
            best = int(np.argmin(losses[k]))
            C, inner[k] = float(CS[best]), accs[k, best] / votes[k]
        chosen.append(C)
        tr = fold != k
        mu, scale = standardiser(X[tr])
        w = fit_logistic((X[tr] - mu) / scale, y[tr], n_classes, C)
        models.append((w, mu, scale))
    return models, inner, chosen


def mean_baseline(plan: LabelPlan, target: np.ndarray, ep_idx: np.ndarray, folds: OuterFolds) -> ProbeResult:
    """The ``mean`` baseline on the same folds: each outer fold predicted by the other folds'
    mean (continuous) or majority class (discrete)."""
    R, K, E = folds.n_repeats, folds.n_folds, folds.n_episodes
    ok = target >= 0 if plan.discrete else np.isfinite(target)
    e, v = ep_idx[ok], target[ok]
    sums = np.zeros((R, E, 2 if plan.discrete else 4))
    for r in range(R):
        g = folds.fold[r, e]
        if plan.discrete:
            counts = np.zeros((K, len(plan.classes)))
            np.add.at(counts, (g, v.astype(np.int64)), 1.0)
            majority = np.argmax(counts.sum(axis=0)[None, :] - counts, axis=1)  # [K]: of the other folds
            np.add.at(sums[r, :, 0], e, 1.0)
            np.add.at(sums[r, :, 1], e, (v == majority[g]).astype(np.float64))
        else:
            n_k = np.bincount(g, minlength=K).astype(np.float64)
            s_k = np.bincount(g, weights=v, minlength=K)
            means = (s_k.sum() - s_k) / np.maximum(n_k.sum() - n_k, 1.0)
            np.add.at(sums[r, :, 0], e, 1.0)
            np.add.at(sums[r, :, 1], e, v)
            np.add.at(sums[r, :, 2], e, v**2)
            np.add.at(sums[r, :, 3], e, (v - means[g]) ** 2)
    n = int(ok.sum())
    return ProbeResult(ACCURACY if plan.discrete else R2, sums, np.full((R, K), np.nan), float("nan"),
                       int(round(n * (K - 1) / K)), n)


# ---------------------------------------------------------------------------- statistics
def paired_difference(main: np.ndarray, base: np.ndarray, difference: float, level: float = 0.95) -> dict[str, Any]:
    """``score - baseline`` with its paired bootstrap interval and p-value.

    ``main`` and ``base`` are bootstrap scores over the SAME episode resamples. The interval is
    the percentile interval of the paired differences; ``p`` tests "the probe is better" as
    ``2 * Phi(-d / se)`` (capped at 1) with the bootstrap standard error ``se``, so that
    ``p < 0.05`` goes with a 95% interval above 0; it can reach the small values that a
    correction over hundreds of cells needs, which a bootstrap count cannot.
    """
    diff = np.asarray(main) - np.asarray(base)
    diff = diff[np.isfinite(diff)]
    ci = percentile_ci(diff, level)
    if not math.isfinite(difference) or len(diff) < 2:
        return {"difference": difference, "ci": ci, "p": 1.0}
    se = float(np.std(diff, ddof=1))
    if se <= 0:
        p = 0.0 if difference > 0 else 1.0
    else:
        p = min(1.0, math.erfc(difference / se / math.sqrt(2.0)))  # = 2 * Phi(-d / se)
    return {"difference": difference, "ci": ci, "p": p}


# ---------------------------------------------------------------------------- the sweep
def _default_weights_path(path: Path, out_json: Path | None) -> Path | None:
    """Beside ``out_json``, else ``RUN/probes/<stem>.weights.npz`` for a run's recording, else None."""
    if out_json is not None:
        return out_json.with_name(out_json.name.removesuffix(PROBE_RESULTS_SUFFIX) + PROBE_WEIGHTS_SUFFIX)
    place = recording_place(path)
    return place[0].probe_weights_path(path.stem, place[1]) if place is not None else None


def _select(requested: Sequence[str] | None, available: list[str], what: str, path: Path) -> list[str]:
    if requested is None:
        return list(available)
    unknown = [r for r in requested if r not in available]
    if unknown:
        raise ProbeError(
            f"{path.name} has no {what} {unknown[0]!r} (available: {', '.join(available) or 'none'})"
        )
    return list(dict.fromkeys(requested))


def probe_file(
    path: Path | str,
    *,
    labels: Sequence[str] | None = None,
    hooks: Sequence[str] | None = None,
    seed: int = 0,
    n_folds: int = N_FOLDS,
    n_repeats: int = N_REPEATS,
    n_bootstrap: int = 200,
    out_json: Path | str | None = None,
    weights_path: Path | str | None = None,
    allow_incomplete: bool = False,
    max_logistic_rows: int = MAX_LOGISTIC_ROWS,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Probe every hook x label of one activation file; returns the JSON document.

    Parameters
    ----------
    path:
        The activation file (one checkpoint).
    labels, hooks:
        Restrict the sweep (default: all); an unknown name raises ``ProbeError``.
    seed:
        Seeds the folds, the control task, subsampling and the bootstrap.
    n_folds:
        Outer folds of the nested cross-validation (every episode is tested once per repeat).
    n_repeats:
        Repeats of the outer partition with different permutations (scores are averaged).
    n_bootstrap:
        Episode resamples for the intervals and paired tests (0: no interval, nothing significant).
    out_json:
        Also write the document there (atomically).
    weights_path:
        Where to save probe directions (``.npz``); default: beside ``out_json``, else
        ``RUN/probes/<stem>.weights.npz`` when the file sits in ``RUN/activations/``, else not saved.
    allow_incomplete:
        Read a file that was cut short (a note says so) instead of refusing it.
    max_logistic_rows:
        Cap on the rows a logistic probe holds in memory (seeded subsample beyond); a wide source
        keeps fewer (``MAX_LOGISTIC_BYTES``).
    workers:
        Processes that fit feature sources side by side (default: one per core on a file large
        enough to repay starting them, else 1). The results do not depend on it.
    progress:
        Called as ``progress(done, total, source)`` after each feature source.
    """
    if workers is not None and workers < 1:
        raise ProbeError(f"the number of workers must be at least 1, got {workers}")
    if n_folds < 2:
        raise ProbeError(f"the number of folds must be at least 2, got {n_folds}")
    if n_repeats < 1:
        raise ProbeError(f"the number of repeats must be at least 1, got {n_repeats}")
    if n_bootstrap < 0:
        raise ProbeError(f"the number of bootstrap resamples cannot be negative, got {n_bootstrap}")
    path = Path(path)
    out_path = Path(out_json) if out_json is not None else None
    notes: list[str] = []
    with ActivationFile(path, allow_incomplete=allow_incomplete) as f:
        if not f.complete:
            notes.append(f"the file is incomplete (recording cut short); only its first {f.n} steps were read")
        label_names = _select(labels, f.labels, "label", path)
        hook_names = _select(hooks, f.hooks, "hook", path)
        checkpoint = str(f.attrs.get("checkpoint", path.stem))
        step = f.attrs.get("step", f.attrs.get("timesteps"))
        doc = ProbeResults(
            file=str(path),
            run=str(f.attrs.get("run", "")),
            checkpoint=checkpoint,
            step=int(step) if isinstance(step, (int, np.integer)) else None,
            seed=seed,
            n_steps=int(f.n),
            notes=notes,
            control=CONTROL,
            correction=CORRECTION,
            significance_level=SIGNIFICANCE,
        )
        if f.attrs.get("recording_id") is not None:  # the results go stale once the recording is replaced
            doc.extra["recording_id"] = str(f.attrs["recording_id"])
        if not label_names:
            notes.append("the file has no labels: nothing to probe")
            return _finish(doc, out_path)
        try:
            folds = outer_folds(unique_episodes(f), n_folds=n_folds, n_repeats=n_repeats, seed=seed)
        except ValueError as exc:
            notes.append(f"no probe was fitted: {exc}")
            return _finish(doc, out_path)
        doc.cv = {"outer_folds": folds.n_folds, "repeats": folds.n_repeats, "n_episodes": folds.n_episodes,
                  "inner": "leave-one-fold-out over the other outer folds", "n_bootstrap": n_bootstrap}
        if not folds.nested:
            notes.append(f"only {folds.n_folds} outer folds: regularisation was not cross-validated (alpha = C = 1)")
        if folds.n_episodes < 10:
            notes.append(f"only {folds.n_episodes} episodes: intervals and tests are rough")
        if n_bootstrap == 0:
            notes.append("no bootstrap (n_bootstrap = 0): no interval, and no probe counts as significant")
        ep_idx = folds.index_of(f.episodes())
        plans, main_t, ctrl_t = [], {}, {}
        for i, name in enumerate(label_names):
            values = np.asarray(f.label(name), dtype=np.float64).reshape(f.n, -1)[:, 0]
            plan = plan_label(f, name, values, notes)
            plans.append(plan)
            if plan.skip is None:
                target = plan.target(values)
                main_t[name] = (plan, target)
                ctrl_t["control:" + name] = (plan, control_column(target, ep_idx, folds.n_episodes, seed * 7919 + i))
        common = dict(seed=seed, max_logistic_rows=max_logistic_rows, notes=notes)
        means = {name: mean_baseline(plan, t, ep_idx, folds) for name, (plan, t) in main_t.items()}

        def usable(source: Source) -> bool:
            red = _Reader(f, source).reduction
            if red is not None:
                notes.append(f"{source} has {red['input_dims']} dimensions (> {MAX_FEATURE_DIM}); it was probed through "
                             f"a seeded random projection to {red['dims']} dimensions (its records' reduction)")
            return True

        # every feature source is one job: the baselines first, then each hook and its twins
        jobs: list[tuple[Source, dict[str, tuple[LabelPlan, np.ndarray]]]] = []
        if _has(f, OBS) and usable(OBS):
            jobs.append((OBS, main_t))
        else:
            notes.append("no usable /steps/obs: the raw-observation baseline is missing")
        if f.input_window is None:
            notes.append("the file does not say what the network receives beyond the current observation "
                         "(no input_window attribute): the input-matched baseline is absent")
        elif _window_ok(f, f.input_window, notes) and usable(WINDOW):
            jobs.append((WINDOW, main_t))
        missing_random = [h for h in hook_names if not f.random_twins(h)]
        if missing_random:
            notes.append(
                "the random-weights baseline needs the run's network and was not recorded for "
                + ", ".join(missing_random) + " (no /acts_random); it is left out"
            )
        few = sorted({len(f.random_twins(h)) for h in hook_names if 0 < len(f.random_twins(h)) < 3})
        if few:
            notes.append(f"only {', '.join(map(str, few))} random-weights twin(s) recorded for some hooks "
                         "(3 or more make the twin baseline robust to one lucky initialisation)")
        probed = [h for h in hook_names if usable(Source("acts", h))]
        reductions = {h: reduction(f.hook_dim(h)) for h in probed}
        for hook in probed:
            jobs.append((Source("acts", hook), {**main_t, **ctrl_t}))
            jobs.extend((Source(g, hook), main_t) for g in f.random_twins(hook))
        results = _fit_sources(f, jobs, folds, ep_idx, allow_incomplete=allow_incomplete, workers=workers,
                               progress=progress, **common)
        by_source = {str(src): res for (src, _), res in zip(jobs, results)}
        obs_results = by_source.get(str(OBS), {})
        window_results = by_source.get(str(WINDOW), {})
        counts = bootstrap_counts(folds.n_episodes, n_bootstrap, seed + 1) if n_bootstrap > 0 else None
        stats = _Stats(counts)
        weights: dict[str, np.ndarray] = {}
        per_label: dict[str, list[tuple[ProbeRecord, ProbeResult]]] = {}
        for hook in probed:
            main = by_source[str(Source("acts", hook))]
            twins = [by_source[str(Source(g, hook))] for g in f.random_twins(hook)]
            for plan in plans:
                res = main.get(plan.name)
                if res is None:
                    continue
                baselines: dict[str, list[ProbeResult]] = {MEAN: [means[plan.name]]}
                for name, table in ((RAW_OBS, obs_results), (INPUT_MATCHED, window_results)):
                    if plan.name in table:
                        baselines[name] = [table[plan.name]]
                twin_res = [t[plan.name] for t in twins if plan.name in t]
                if twin_res:
                    baselines[RANDOM_WEIGHTS] = twin_res
                if "control:" + plan.name in main:
                    baselines[CONTROL_TASK] = [main["control:" + plan.name]]
                rec = _record(plan, hook, res, baselines, stats, checkpoint, doc.step).replace(reduction=reductions[hook])
                doc.records.append(rec)
                per_label.setdefault(plan.name, []).append((rec, res))
                _store_weights(weights, plan, hook, res)
        doc.records = _correct(doc.records)
        doc.n_tests = sum(1 for r in doc.records if r.p_value is not None)
        doc.best_hooks = {
            label: best for label, cells in per_label.items()
            if (best := _nested_best_hook(cells, folds, stats, means[label],
                                          {k: t[label] for k, t in ((RAW_OBS, obs_results), (INPUT_MATCHED, window_results)) if label in t}))
        }
        wpath = Path(weights_path) if weights_path is not None else _default_weights_path(path, out_path)
        if wpath is not None and weights:
            wpath.parent.mkdir(parents=True, exist_ok=True)
            tmp = wpath.with_name(wpath.name + ".tmp.npz")
            np.savez(tmp, **weights)
            os.replace(tmp, wpath)
            doc.weights = str(wpath)
    return _finish(doc, out_path)


def main_probe_scores(
    path: Path | str,
    *,
    hooks: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    n_folds: int = N_FOLDS,
    max_logistic_rows: int = MAX_LOGISTIC_ROWS,
) -> dict[tuple[str, str], float]:
    """The out-of-fold score of the main probe only (no baseline, control or bootstrap) per
    ``(hook, label)``, on the same folds as ``probe_file(..., n_repeats=1)``: what a comparison
    with another implementation (``tests/sklearn_reference.py``, the benchmark) times."""
    path = Path(path)
    out: dict[tuple[str, str], float] = {}
    notes: list[str] = []
    with ActivationFile(path) as f:
        folds = outer_folds(unique_episodes(f), n_folds=n_folds, n_repeats=1, seed=seed)
        ep_idx = folds.index_of(f.episodes())
        targets = {}
        for name in _select(labels, f.labels, "label", path):
            values = np.asarray(f.label(name), dtype=np.float64).reshape(f.n, -1)[:, 0]
            plan = plan_label(f, name, values, notes)
            if plan.skip is None:
                targets[name] = (plan, plan.target(values))
        for hook in _select(hooks, f.hooks, "hook", path):
            res = fit_source(f, Source("acts", hook), targets, folds, ep_idx, seed=seed,
                             max_logistic_rows=max_logistic_rows, notes=notes)
            out.update({(hook, label): r.score for label, r in res.items()})
    return out


def _window_ok(f: ActivationFile, spec: Mapping[str, Any], notes: list[str]) -> bool:
    """Whether the file has every dataset the input window needs (a note says what is missing)."""
    need = {"obs": ("steps", "obs"), "prev_actions": ("steps", "action"), "timestep": ("steps", "t")}
    for fld in spec["fields"]:
        if fld == "rtg":
            if not f.has_input("rtg"):
                notes.append("input_window lists rtg but the file has no /inputs/rtg: the input-matched baseline is absent")
                return False
        elif fld in need:
            if not _has(f, Source(*need[fld])):
                notes.append(f"input_window lists {fld} but the file has no /{'/'.join(need[fld])}: "
                             "the input-matched baseline is absent")
                return False
        else:
            notes.append(f"input_window lists an unknown field {fld!r}: the input-matched baseline is absent")
            return False
    return True


def _has(f: ActivationFile, source: Source) -> bool:
    try:
        f.read(*source, rows=slice(0, 1))
    except ProbeError:
        return False
    return True


def _finish(doc: ProbeResults, out_path: Path | None) -> dict[str, Any]:
    """The document as JSON values, written to ``out_path`` too when given."""
    if out_path is not None:
        return write_probe_results(out_path, doc)
    return jsonable(doc.to_dict())


class _Stats:
    """Bootstrap scores of results over one shared set of episode resamples (so all are paired)."""

    def __init__(self, counts: np.ndarray | None) -> None:
        self.counts = counts
        self._cache: dict[int, tuple[ProbeResult, np.ndarray]] = {}  # holds the result: its id stays unique

    def boot(self, res: ProbeResult) -> np.ndarray | None:
        if self.counts is None:
            return None
        if id(res) not in self._cache:
            self._cache[id(res)] = (res, bootstrap_scores(res.metric, res.sums, self.counts))
        return self._cache[id(res)][1]

    def boot_mean(self, results: Sequence[ProbeResult]) -> np.ndarray | None:
        boots = [self.boot(r) for r in results]
        return None if any(b is None for b in boots) else np.mean(np.stack(boots), axis=0)  # type: ignore[arg-type]

    def ci(self, boot: np.ndarray | None) -> list[float]:
        return percentile_ci(boot) if boot is not None else [float("nan"), float("nan")]


def _record(
    plan: LabelPlan,
    hook: str,
    res: ProbeResult,
    baselines: Mapping[str, Sequence[ProbeResult]],
    stats: _Stats,
    checkpoint: str,
    step: int | None,
) -> ProbeRecord:
    """One record: the score, each baseline (mean over its results), the paired differences and
    the cell's uncorrected p-value (the largest per-baseline p: the probe must beat them all)."""
    score = res.score
    boot = stats.boot(res)
    scores: dict[str, float] = {}
    paired: dict[str, dict[str, Any]] = {}
    for name, results in baselines.items():
        base = float(np.mean([r.score for r in results]))
        scores[name] = base
        base_boot = stats.boot_mean(results)
        if boot is not None and base_boot is not None:
            paired[name] = paired_difference(boot, base_boot, score - base)
    p_value = max((p["p"] for p in paired.values()), default=None) if paired else None
    twins = baselines.get(RANDOM_WEIGHTS, [])
    discrete = res.metric == ACCURACY
    auroc_baselines = None
    if discrete:
        auroc_baselines = {MEAN: 0.5}
        for name, results in baselines.items():
            if name != MEAN and all(r.auroc is not None for r in results):
                auroc_baselines[name] = float(np.mean([r.auroc for r in results]))  # type: ignore[misc]
    control = scores.get(CONTROL_TASK)
    return ProbeRecord(
        hook=hook,
        label=plan.name,
        kind=plan.kind,
        metric=res.metric,
        score=score,
        baselines=scores,
        selectivity=score - control if control is not None else None,
        beats_baselines=False,  # set by _correct: significant after correction
        ci=tuple(stats.ci(boot)),  # type: ignore[arg-type]
        checkpoint=checkpoint,
        step=step,
        linear_by_construction=hook in plan.linear_in,
        n_train=res.n_train,
        n_test=res.n_test,
        alpha=None if discrete else res.reg,
        auroc=res.auroc if discrete else None,
        auroc_baselines=auroc_baselines,
        C=res.reg if discrete else None,
        n_classes=int(len(plan.classes)) if discrete else None,
        paired=paired,
        p_value=p_value,
        control=CONTROL if control is not None else None,
        random_twins={"n": len(twins), "scores": [r.score for r in twins],
                      "std": float(np.std([r.score for r in twins], ddof=1)) if len(twins) > 1 else None}
        if twins else None,
        kind_source=plan.kind_source,
        derived_from=plan.derived_from,
    )


def _correct(records: list[ProbeRecord]) -> list[ProbeRecord]:
    """Holm over every cell with a p-value; ``significant`` = adjusted p below ``SIGNIFICANCE``
    and every paired interval above 0 (so each "beyond X" of the sentences holds on its own)."""
    tested = [i for i, r in enumerate(records) if r.p_value is not None]
    adjusted = holm([records[i].p_value for i in tested])  # type: ignore[misc]
    out = list(records)
    for i, p_adj in zip(tested, adjusted):
        r = records[i]
        above = all(p["ci"][0] is not None and math.isfinite(p["ci"][0]) and p["ci"][0] > 0 for p in r.paired.values())
        sig = bool(p_adj < SIGNIFICANCE and above)
        out[i] = r.replace(p_adjusted=p_adj, significant=sig, beats_baselines=sig)
    return out


def _nested_best_hook(
    cells: Sequence[tuple[ProbeRecord, ProbeResult]],
    folds: OuterFolds,
    stats: _Stats,
    mean: ProbeResult,
    shared: Mapping[str, ProbeResult],
) -> dict[str, Any] | None:
    """The best hook for one label, chosen inside the training folds.

    For each repeat and outer fold, the hook with the best inner-CV score (which never saw that
    fold) is chosen, and that fold's out-of-fold predictions are taken from it; the score is the
    out-of-fold score of this selection, so it carries no selection bias. Hooks where the label is
    linear by construction are left out. None when no hook has an inner-CV score.
    """
    cells = [(rec, res) for rec, res in cells if not rec.linear_by_construction]
    if not cells:
        return None
    inner = np.stack([np.where(np.isfinite(res.inner), res.inner, -np.inf) for _, res in cells])  # [H, R, K]
    if not np.isfinite(inner).any():
        return None
    choice = np.argmax(inner, axis=0)  # [R, K]
    sums = np.zeros_like(cells[0][1].sums)
    for r in range(folds.n_repeats):
        for k in range(folds.n_folds):
            eps = folds.fold[r] == k
            sums[r, eps] = cells[int(choice[r, k])][1].sums[r, eps]
    metric = cells[0][1].metric
    chosen = ProbeResult(metric, sums, np.full_like(cells[0][1].inner, np.nan), float("nan"), 0, 0)
    boot = stats.boot(chosen)
    names, n = np.unique(choice, return_counts=True)
    hooks_chosen = {cells[int(h)][0].hook: int(c) for h, c in zip(names, n)}
    paired = {}
    for name, base in ((MEAN, mean), *shared.items()):
        base_boot = stats.boot(base)
        if boot is not None and base_boot is not None:
            paired[name] = paired_difference(boot, base_boot, chosen.score - base.score)
    return {
        "hook": max(hooks_chosen, key=lambda h: hooks_chosen[h]),
        "hooks_chosen": hooks_chosen,
        "metric": metric,
        "score": chosen.score,
        "ci": stats.ci(boot),
        "n_hooks": len(cells),
        "method": "nested: chosen by inner-CV score in each outer fold's training folds",
        "paired": paired,
    }


def best_hook(doc: ProbeResults | Mapping[str, Any], label: str, hooks: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The best hook for ``label`` in one probe document, reported without selection bias.

    When ``hooks`` is None (every probed hook) and the document has a nested selection
    (``best_hooks``, written by ``probe_file``), that is returned: the hook is chosen inside the
    training folds and its score is out-of-fold (``method`` starts with ``nested``). Otherwise
    (a subset of hooks, or an older document) the result says plainly that it is the maximum over
    ``n_hooks`` hooks (``method: "max over N hooks"``): its score is optimistic, and its
    ``significant``/``p_adjusted`` are the cell's Holm-corrected values, which already cover every
    cell of the file (so they stay valid under the selection). Hooks where the label is linear
    by construction are left out. None when no record qualifies.
    """
    res = _results(doc)
    stored = res.best_hooks.get(label) if hooks is None else None
    if stored:
        return dict(stored)
    recs = [r for r in res.records if r.label == label and not r.linear_by_construction and r.score is not None
            and (hooks is None or r.hook in hooks)]
    if not recs:
        return None
    top = max(recs, key=lambda r: r.score)  # type: ignore[arg-type, return-value]
    return {
        "hook": top.hook,
        "metric": top.metric,
        "score": top.score,
        "ci": list(top.ci) if top.ci is not None else None,
        "n_hooks": len(recs),
        "method": f"max over {len(recs)} hooks (the score is optimistic; significance is Holm-corrected over the file)",
        "p_adjusted": top.p_adjusted,
        "significant": top.significant,
    }


def _store_weights(weights: dict[str, np.ndarray], plan: LabelPlan, hook: str, res: ProbeResult) -> None:
    key = f"{plan.name}@{hook}"
    assert res.coef is not None and res.bias is not None
    weights[f"{key}/coef"] = np.asarray(res.coef, dtype=np.float64)
    weights[f"{key}/bias"] = np.asarray(res.bias, dtype=np.float64)
    weights[f"{key}/label_std"] = np.array(plan.std)
    weights[f"{key}/kind"] = np.array(plan.kind)
    if plan.kind == DISCRETE:
        weights[f"{key}/classes"] = plan.classes


def load_direction(weights_path: Path | str, label: str, hook: str) -> np.ndarray:
    """Unit-norm probe direction for ``label`` in the RAW activation space of ``hook``.

    Moving an activation along it increases the probe's prediction of the label (for a binary
    label: the logit of the positive class). For a multi-class label the result is ``[K, d]``,
    one unit row per class. ``coef`` (unnormalised), ``bias`` and ``label_std`` are in the same
    ``.npz`` under ``"<label>@<hook>/..."``: the prediction is ``acts @ coef + bias``.
    """
    try:
        data = np.load(Path(weights_path))
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read probe weights {weights_path} ({exc})") from None
    key = f"{label}@{hook}/coef"
    with data:
        if key not in data.files:
            have = sorted({k.split("/")[0] for k in data.files})
            raise ProbeError(f"{weights_path} has no probe for {label}@{hook} (has: {', '.join(have) or 'none'})")
        coef = np.asarray(data[key], dtype=np.float64)
    norm = np.linalg.norm(coef, axis=-1, keepdims=True)
    return coef / np.where(norm > 0, norm, 1.0)


def probe_files(paths: Sequence[Path | str], **kwargs: Any) -> list[dict[str, Any]]:
    """``probe_file`` over several activation files (checkpoints), ordered by training step."""
    docs = [probe_file(p, **kwargs) for p in paths]
    return sorted(docs, key=lambda d: (d.get("step") is None, d.get("step") or 0, d["checkpoint"]))


# ---------------------------------------------------------------------------- output
def _fmt(v: float | None) -> str:
    return "  -  " if v is None or not math.isfinite(v) else f"{v:5.2f}"


def _f2(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}"


def _pfmt(p: float | None) -> str:
    return "  -   " if p is None else (f"{p:.4f}" if p >= 1e-4 else "<1e-4 ")


def _results(doc: ProbeResults | Mapping[str, Any]) -> ProbeResults:
    return doc if isinstance(doc, ProbeResults) else ProbeResults.from_dict(doc)


def format_table(doc: ProbeResults | Mapping[str, Any]) -> str:
    """The human table: one row per hook x label with score, baselines, selectivity and CI."""
    res = _results(doc)
    recs = res.records
    lines = [f"probes of {res.file} (run {res.run or '?'}, checkpoint {res.checkpoint})"]
    if recs:
        hw = max(len("hook"), *(len(r.hook) for r in recs))
        lw = max(len("label"), *(len(r.label) + (1 if r.linear_by_construction else 0) for r in recs))
        head = (
            f"{'hook':<{hw}}  {'label':<{lw}}  metric    score  95% CI        mean   obs    input  rand   ctrl   "
            "select  auroc  p_adj   sig"
        )
        lines += [head, "-" * len(head)]
        for r in recs:
            b = r.baselines
            name = r.label + ("*" if r.linear_by_construction else "")
            low, high = r.ci or (None, None)
            ci = f"{_fmt(low)}-{_fmt(high).strip()}"
            lines.append(
                f"{r.hook:<{hw}}  {name:<{lw}}  {r.metric:<8}  {_fmt(r.score)}  {ci:<12}  "
                f"{_fmt(b.get(MEAN))}  {_fmt(b.get(RAW_OBS))}  {_fmt(b.get(INPUT_MATCHED))}  "
                f"{_fmt(b.get(RANDOM_WEIGHTS))}  {_fmt(b.get(CONTROL_TASK))}  {_fmt(r.selectivity)}   {_fmt(r.auroc)}  "
                f"{_pfmt(r.p_adjusted)}  {'yes' if r.significant else 'no'}"
            )
    else:
        lines.append("(no probe was fitted)")
    cv = res.cv or {}
    lines.append(
        f"score: out-of-fold R^2 (continuous) or accuracy (discrete) over held-out episodes (nested CV, "
        f"{cv.get('outer_folds', '?')} outer folds x {cv.get('repeats', '?')} repeat(s)); baselines on the same folds: "
        "mean = mean/majority predictor, obs = the current observation, input = everything the network receives "
        "(its input window), rand = mean over the random-weights twins, ctrl = control task (the label of another "
        "episode: episodes permuted); select = score - ctrl; p_adj = Holm-adjusted p of beating every baseline "
        f"(paired episode bootstrap) over {res.n_tests if res.n_tests is not None else '?'} tests; sig = p_adj < "
        f"{res.significance_level or SIGNIFICANCE} and every paired interval above 0; * = linear by construction "
        "(not a discovery)"
    )
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)


def summarise(doc: ProbeResults | Mapping[str, Any]) -> list[str]:
    """Sentences in words: which labels which layers encode beyond every baseline.

    A cell counts only when it is ``significant``: its Holm-adjusted p (over every cell of the
    document) is below the level and each paired interval ``score - baseline`` lies above 0.
    Records from older documents (no ``significant``) fall back to ``beats_baselines``.
    """
    res = _results(doc)
    out: list[str] = []
    by_label: dict[str, list[ProbeRecord]] = {}
    for r in res.records:
        by_label.setdefault(r.label, []).append(r)
    tests = f"Holm-corrected over {res.n_tests} tests" if res.n_tests else "uncorrected"

    def score(r: ProbeRecord) -> float:
        return r.score if r.score is not None else -math.inf

    def significant(r: ProbeRecord) -> bool:
        return bool(r.significant) if r.significant is not None else r.beats_baselines

    words = ((RAW_OBS, "the raw observation"), (INPUT_MATCHED, "the network's input window"),
             (RANDOM_WEIGHTS, "random weights"), (CONTROL_TASK, "the control task"))
    for label, recs in by_label.items():
        found = [r for r in recs if significant(r)]
        for r in sorted(found, key=lambda r: -score(r)):
            what = "R^2" if r.metric == R2 else "accuracy"
            vs = []
            for key, text in words:
                if r.baselines.get(key) is not None:
                    diff = r.paired.get(key, {}).get("difference")
                    vs.append(f"{text} ({r.baselines[key]:.2f}" + (f", {diff:+.2f}" if diff is not None else "") + ")")
            tail = " (linear by construction, so expected, not a discovery)" if r.linear_by_construction else ""
            if r.derived_from in ("value_output", "policy_output"):
                tail += f" (a readout of the network's {r.derived_from.replace('_', ' ')}, not an emerged variable)"
            low, high = r.ci or (None, None)
            p = f", p_adj {_pfmt(r.p_adjusted).strip()}" if r.p_adjusted is not None else ""
            out.append(
                f"{label} is linearly decodable from {r.hook} ({what} {_f2(r.score)}, 95% CI "
                f"{_f2(low)}-{_f2(high)}{p}) beyond " + (", ".join(vs) or "the mean predictor")
                + f" (paired, {tests})" + tail + "."
            )
        if not found:
            best = max(recs, key=score)
            low, high = best.ci or (None, None)
            worst = None
            if best.paired:
                worst = min(best.paired.items(), key=lambda kv: (kv[1]["ci"][0] if kv[1]["ci"][0] is not None else -math.inf))
            if worst is not None:
                d = worst[1]
                why = (f"its paired difference with the {worst[0]} baseline is {_f2(d['difference'])} "
                       f"(95% CI {_f2(d['ci'][0])}-{_f2(d['ci'][1])})")
                if best.p_adjusted is not None and all((v["ci"][0] or -1) > 0 for v in best.paired.values()):
                    why = f"its Holm-adjusted p is {_pfmt(best.p_adjusted).strip()} ({tests})"
            else:
                strongest = best.best_baseline or ("mean", None)
                why = f"it does not clear the {strongest[0]} baseline ({_f2(strongest[1])}) with its whole interval"
            out.append(
                f"{label} is not decoded beyond the baselines by any probed layer: the best, {best.hook} "
                f"({_f2(best.score)}, 95% CI {_f2(low)}-{_f2(high)}), is not significant: {why}."
            )
        top = best_hook(res, label)
        if top is not None and top.get("method", "").startswith("nested") and top.get("n_hooks", 0) > 1:
            out.append(
                f"  best hook for {label}, chosen inside the training folds among {top['n_hooks']}: {top['hook']} "
                f"(out-of-fold {_f2(top['score'])}, 95% CI {_f2(top['ci'][0])}-{_f2(top['ci'][1])})."
            )
    if not out:
        out.append("no probe was fitted" + (f": {res.notes[0]}" if res.notes else "."))
    return out


def format_timeline(docs: Sequence[ProbeResults | Mapping[str, Any]]) -> str:
    """Label x layer x training step: the held-out score of each probe at each checkpoint."""
    if not docs:
        return "(no checkpoints)"
    results = [_results(d) for d in docs]
    cols = [str(d.step) if d.step is not None else d.checkpoint for d in results]
    rows: dict[tuple[str, str], dict[int, float | None]] = {}
    for i, d in enumerate(results):
        for r in d.records:
            rows.setdefault((r.label, r.hook), {})[i] = r.score
    kw = max([len("label @ hook")] + [len(f"{a} @ {b}") for a, b in rows])
    cw = max([6] + [len(c) for c in cols])
    lines = [f"{'label @ hook':<{kw}}  " + "  ".join(f"{c:>{cw}}" for c in cols)]
    for (label, hook), scores in sorted(rows.items()):
        cells = [_fmt(scores.get(i)).strip().rjust(cw) for i in range(len(docs))]
        lines.append(f"{label + ' @ ' + hook:<{kw}}  " + "  ".join(cells))
    lines.append("held-out score (R^2 or accuracy) of each probe at each checkpoint (columns: training step)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- script
def _split_list(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def stderr_progress(done: int, total: int, source: str) -> None:
    """Progress on stderr: one overwritten line on a terminal, a line per source in a log."""
    what = f" ({source})" if source else ""
    line = f"probes.linear: {done}/{total} feature sources fitted{what}"
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{line}\x1b[K" + ("\n" if done == total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m probes.linear FILE.h5 [FILE.h5 ...] [--json] ...``; returns the exit code."""
    parser = ScriptParser(prog="python -m probes.linear", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="activation file(s); several = one per checkpoint (timeline)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--labels", help="comma-separated labels to probe (default: all)")
    parser.add_argument("--hooks", help="comma-separated hooks to probe (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds, control task and bootstrap")
    parser.add_argument("--folds", type=int, default=N_FOLDS, help="outer folds of the nested CV (by episode)")
    parser.add_argument("--repeats", type=int, default=N_REPEATS, help="repeats of the outer partition")
    parser.add_argument("--bootstrap", type=int, default=200, help="episode resamples for intervals and paired tests")
    parser.add_argument("--out", help="also write the JSON document to this path")
    parser.add_argument("--weights", help="where to save probe directions (.npz)")
    parser.add_argument("--allow-incomplete", action="store_true", help="read a file that was cut short")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes fitting feature sources side by side (default: one per core on large files)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = dict(
        workers=args.workers,
        progress=None if args.quiet else stderr_progress,
        labels=_split_list(args.labels),
        hooks=_split_list(args.hooks),
        seed=args.seed,
        n_folds=args.folds,
        n_repeats=args.repeats,
        n_bootstrap=args.bootstrap,
        allow_incomplete=args.allow_incomplete,
    )
    try:
        if len(args.files) == 1:
            doc = probe_file(args.files[0], out_json=args.out, weights_path=args.weights, **kwargs)
            if args.json:
                print(json.dumps(doc))
            else:
                print(format_table(doc))
                print()
                print("\n".join(summarise(doc)))
        else:
            docs = probe_files(args.files, **kwargs)
            timeline = {"schema_version": SCHEMA_VERSION, "documents": docs}
            if args.out:
                Path(args.out).write_text(json.dumps(timeline, indent=1))
            if args.json:
                print(json.dumps(timeline))
            else:
                for d in docs:
                    print(format_table(d))
                    print()
                print(format_timeline(docs))
    except ProbeError as exc:
        print(f"probes.linear: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
