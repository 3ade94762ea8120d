"""Linear probe sweep: every hook x label of an activation file, scored against baselines.

For each hook and label a linear probe is fitted on training episodes and scored on held-out
episodes: ridge regression (R^2) for continuous labels, logistic regression (accuracy and
AUROC, macro one-vs-rest for more than two classes) for discrete ones. Regularisation is chosen
by cross-validation grouped by episode. Beside each score the same probe is run on baselines:

``mean``           predict the training mean / majority class;
``raw_obs``        the probe on the observation ``/steps/obs``;
``random_weights`` the probe on ``/acts_random/<hook>`` (same network, random weights);
``control_task``   Hewitt & Liang (2019): every distinct observation gets a random fixed output
                   drawn from the label's training distribution; the probe is trained on that.
                   ``selectivity = score - control_task``.

Ridge is solved from streamed sufficient statistics (``probes.ridge``), so memory does not grow
with the file; logistic regression keeps at most ``max_logistic_rows`` training rows in memory
(a seeded uniform subsample beyond that). The document and its records are ``probes.results``
(``ProbeResults``, ``ProbeRecord``); ``docs/probes.md`` gives the JSON schema.

Run ``python -m probes.linear FILE.h5 [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.layout import PROBE_RESULTS_SUFFIX, PROBE_WEIGHTS_SUFFIX, run_of_file
from probes.logistic import CS, auroc, fit_logistic, log_loss, predict_proba
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
from probes.ridge import RidgeStats, fit_ridge_cv, r2_from_sums
from probes.splits import EpisodeSplit, bootstrap_counts, percentile_ci, split_episodes, unique_episodes

ROWS_PER_CHUNK = 8192
MAX_LOGISTIC_ROWS = 100_000
MAX_FEATURE_DIM = 2048
MAX_CLASSES = 20
CONTROL_SEED_SALT = 0x5EED_C0DE


class Source(NamedTuple):
    """A feature source of the file: ``/<group>/<dataset>``."""

    group: str  # "acts", "acts_random" or "steps"
    dataset: str  # the hook, or "obs"

    def __str__(self) -> str:
        return f"{self.group}/{self.dataset}"


OBS = Source("steps", "obs")


# ---------------------------------------------------------------------------- labels
@dataclass
class LabelPlan:
    """What the sweep knows about one label after a scan of its column."""

    name: str
    kind: str  # "continuous" | "discrete"
    linear_in: list[str]
    description: str = ""
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    train_freq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: float = 0.0
    std: float = 0.0
    n_nan: int = 0
    skip: str | None = None

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Discrete values -> class codes ``0..K-1`` (``-1`` for NaN or unseen in training)."""
        values = np.asarray(values, dtype=np.float64)
        idx = np.clip(np.searchsorted(self.classes, values), 0, max(len(self.classes) - 1, 0))
        ok = np.isfinite(values) & (len(self.classes) > 0)
        ok &= self.classes[idx] == values if len(self.classes) else ok
        return np.where(ok, idx, -1)


def scan_labels(f: ActivationFile, names: Sequence[str], split: EpisodeSplit, notes: list[str]) -> list[LabelPlan]:
    plans = []
    for name in names:
        info = f.label_info(name)
        kind = info["kind"] if info["kind"] in (CONTINUOUS, DISCRETE) else CONTINUOUS
        plan = LabelPlan(name=name, kind=kind, linear_in=list(info["linear_in"]), description=str(info["description"]))
        n = s = ss = 0.0
        n_nan = 0
        counts: dict[float, int] = {}
        for (sl, values), (_, eps) in zip(
            f.iter_chunks("labels", name, ROWS_PER_CHUNK), f.iter_chunks("steps", "episode", ROWS_PER_CHUNK)
        ):
            values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)[:, 0]
            train = split.groups_of(eps) < split.n_folds
            finite = np.isfinite(values)
            n_nan += int((~finite).sum())
            v = values[train & finite]
            n += len(v)
            s += float(v.sum())
            ss += float((v * v).sum())
            if kind == DISCRETE:
                u, c = np.unique(v, return_counts=True)
                for key, cnt in zip(u.tolist(), c.tolist()):
                    counts[key] = counts.get(key, 0) + cnt
                    if len(counts) > 10 * MAX_CLASSES:
                        break
        plan.n_nan = n_nan
        if n_nan:
            notes.append(f"label {name!r}: {n_nan} NaN value(s) were left out of its probes")
        if n == 0:
            plan.skip = "it has no finite value in the training episodes"
        elif kind == CONTINUOUS:
            plan.mean = s / n
            plan.std = math.sqrt(max(ss / n - plan.mean**2, 0.0))
            if plan.std <= 1e-12 * max(1.0, abs(plan.mean)):
                plan.skip = "it has no variance in the training episodes"
        else:
            if len(counts) < 2:
                plan.skip = "it takes a single value in the training episodes"
            elif len(counts) > MAX_CLASSES:
                plan.skip = f"it has more than {MAX_CLASSES} classes (is it really discrete?)"
            else:
                plan.classes = np.array(sorted(counts), dtype=np.float64)
                freq = np.array([counts[c] for c in sorted(counts)], dtype=np.float64)
                plan.train_freq = freq / freq.sum()
                plan.mean = s / n
                plan.std = math.sqrt(max(ss / n - plan.mean**2, 0.0))
        if plan.skip:
            notes.append(f"label {name!r} was not probed: {plan.skip}")
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------------- control task
def _splitmix(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def observation_types(obs: np.ndarray) -> np.ndarray:
    """A 64-bit hash per observation row: equal observations get equal ids."""
    flat = np.ascontiguousarray(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1) + np.float32(0.0))
    words = flat.view(np.uint32).astype(np.uint64)
    mult = _multipliers(words.shape[1])
    with np.errstate(over="ignore"):
        return _splitmix((words * mult).sum(axis=1, dtype=np.uint64))


_MULT_CACHE: dict[int, np.ndarray] = {}


def _multipliers(n: int) -> np.ndarray:
    if n not in _MULT_CACHE:
        rng = np.random.default_rng(CONTROL_SEED_SALT)
        _MULT_CACHE[n] = rng.integers(1, 2**62, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return _MULT_CACHE[n]


def _uniform(types: np.ndarray, label_index: int, seed: int) -> np.ndarray:
    key = np.uint64((seed * 1_000_003 + label_index * 7919 + 1) % (2**63))
    with np.errstate(over="ignore"):
        z = _splitmix(types ^ _splitmix(np.array([key], dtype=np.uint64))[0])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def control_targets(plan: LabelPlan, types: np.ndarray, label_index: int, seed: int) -> np.ndarray:
    """Hewitt & Liang control task: a random fixed output per observation type.

    Continuous labels get a value uniform with the label's training mean and std; discrete
    labels get a class code drawn with the label's training class frequencies.
    """
    u = _uniform(types, label_index, seed)
    if plan.kind == CONTINUOUS:
        return plan.mean + plan.std * math.sqrt(12.0) * (u - 0.5)
    return np.minimum(np.searchsorted(np.cumsum(plan.train_freq), u, side="right"), len(plan.classes) - 1)


# ---------------------------------------------------------------------------- targets
@dataclass
class _Target:
    """One column to probe: a real label or its control task."""

    plan: LabelPlan
    index: int
    control: bool

    @property
    def key(self) -> str:
        return ("control:" if self.control else "") + self.plan.name

    @property
    def discrete(self) -> bool:
        return self.plan.kind == DISCRETE


def _target_values(t: _Target, raw: dict[str, np.ndarray], types: np.ndarray | None, seed: int) -> np.ndarray:
    values = raw[t.plan.name]
    if not t.control:
        return t.plan.codes(values) if t.discrete else values
    assert types is not None
    out = control_targets(t.plan, types, t.index, seed)
    bad = ~np.isfinite(values)
    if t.discrete:
        return np.where(bad, -1, out)
    return np.where(bad, np.nan, out)


# ---------------------------------------------------------------------------- one feature source
@dataclass
class _Chunk:
    rows: slice
    x: np.ndarray
    groups: np.ndarray
    episodes: np.ndarray
    raw: dict[str, np.ndarray]
    types: np.ndarray | None


def _chunks(
    f: ActivationFile, source: Source, plans: Sequence[LabelPlan], split: EpisodeSplit, need_types: bool
) -> Iterable[_Chunk]:
    for start in range(0, f.n, ROWS_PER_CHUNK):
        sl = slice(start, min(start + ROWS_PER_CHUNK, f.n))
        x = np.asarray(f.read(*source, rows=sl), dtype=np.float64).reshape(sl.stop - sl.start, -1)
        eps = f.steps("episode", sl)
        raw = {p.name: np.asarray(f.label(p.name, sl), dtype=np.float64).reshape(len(x), -1)[:, 0] for p in plans}
        types = None
        if need_types:
            types = observation_types(x if source == OBS else f.steps("obs", sl))
        yield _Chunk(sl, x, split.groups_of(eps), eps, raw, types)


class RidgeFit(NamedTuple):
    """A ridge probe fitted on the training episodes (acts on raw features)."""

    coef: np.ndarray  # [d]
    intercept: float
    alpha: float
    n_train: int


class LogisticFit(NamedTuple):
    """A logistic probe fitted on the training episodes; ``w`` acts on standardised features."""

    w: np.ndarray  # [d + 1, cols]: weights, then the bias row
    mean: np.ndarray  # [d] standardisation
    scale: np.ndarray  # [d]
    C: float
    n_train: int


@dataclass
class ProbeResult:
    """Held-out result of one probe (one source x one target)."""

    metric: str
    score: float
    ci: list[float]
    n_train: int
    n_test: int
    reg: float  # alpha (ridge) or C (logistic)
    mean_baseline: float
    auroc: float | None = None
    coef: np.ndarray | None = None  # raw-space direction(s): [d] or [K, d]
    bias: np.ndarray | None = None


def fit_source(
    f: ActivationFile,
    source: Source,
    plans: Sequence[LabelPlan],
    split: EpisodeSplit,
    *,
    with_control: bool,
    seed: int,
    n_bootstrap: int,
    max_logistic_rows: int,
    notes: list[str],
) -> dict[str, ProbeResult]:
    """Fit every target on one feature source; two streaming passes over the file."""
    active = [p for p in plans if p.skip is None]
    targets: list[_Target] = []
    for i, p in enumerate(plans):
        if p.skip is None:
            targets.append(_Target(p, i, False))
            if with_control:
                targets.append(_Target(p, i, True))
    if not targets:
        return {}
    cont = [t for t in targets if not t.discrete]
    disc = [t for t in targets if t.discrete]
    # Targets with NaNs need their own statistics (different rows); the rest share one set.
    shared = [t for t in cont if t.plan.n_nan == 0]
    own = [t for t in cont if t.plan.n_nan > 0]
    d = int(np.prod(f.read(*source, rows=slice(0, 1)).shape[1:]))
    n_groups = split.n_folds + 1
    stats_shared = RidgeStats(n_groups, d, len(shared)) if shared else None
    stats_own = {t.key: RidgeStats(n_groups, d, 1) for t in own}

    # Logistic training rows: a seeded uniform subsample of at most max_logistic_rows.
    n_train_rows = 0
    if disc:
        for _, eps in f.iter_chunks("steps", "episode", ROWS_PER_CHUNK):
            n_train_rows += int((split.groups_of(eps) < split.n_folds).sum())
    keep_p = min(1.0, max_logistic_rows / max(n_train_rows, 1))
    if disc and keep_p < 1.0:
        notes.append(
            f"{source}: logistic probes were trained on a seeded subsample of "
            f"{max_logistic_rows} of {n_train_rows} training rows (max_logistic_rows)"
        )
    lx: list[np.ndarray] = []
    ly: list[np.ndarray] = []
    lg: list[np.ndarray] = []
    n_bad_rows = 0

    # ---- pass 1: sufficient statistics (ridge) and the training subsample (logistic)
    for ch in _chunks(f, source, active, split, need_types=with_control):
        finite = np.isfinite(ch.x).all(axis=1)
        n_bad_rows += int((~finite).sum())
        vals = {t.key: _target_values(t, ch.raw, ch.types, seed) for t in targets}
        train = finite & (ch.groups < split.n_folds)
        if stats_shared is not None:
            y = np.stack([vals[t.key] for t in shared], axis=1)
            stats_shared.add(ch.x[train], y[train], ch.groups[train])
        for t in own:
            m = train & np.isfinite(vals[t.key])
            stats_own[t.key].add(ch.x[m], vals[t.key][m][:, None], ch.groups[m])
        if disc:
            rng = np.random.default_rng([seed, ch.rows.start])
            take = train & (rng.random(len(ch.x)) < keep_p)
            lx.append(ch.x[take])
            ly.append(np.stack([vals[t.key] for t in disc], axis=1)[take])
            lg.append(ch.groups[take])
    if n_bad_rows:
        notes.append(f"{source}: {n_bad_rows} row(s) with non-finite activations were left out")

    fits: dict[str, RidgeFit | LogisticFit] = {}
    for stats, group in ([(stats_shared, shared)] if stats_shared is not None else []) + [
        (stats_own[t.key], [t]) for t in own
    ]:
        fit = fit_ridge_cv(stats, split.n_folds)
        n_train = int(stats.pooled(list(range(split.n_folds))).n)
        for j, t in enumerate(group):
            fits[t.key] = RidgeFit(fit.coef[:, j], fit.intercept[j], float(fit.alpha[j]), n_train)
    if disc:
        X = np.concatenate(lx) if lx else np.zeros((0, d))
        Y = np.concatenate(ly) if ly else np.zeros((0, len(disc)), dtype=np.int64)
        G = np.concatenate(lg) if lg else np.zeros(0, dtype=np.int64)
        del lx, ly, lg
        for j, t in enumerate(disc):
            fits[t.key] = _fit_logistic_cv(X, Y[:, j].astype(np.int64), G, len(t.plan.classes), split.n_folds)
        del X, Y, G

    # ---- pass 2: held-out predictions, summed per test episode
    e_test = len(split.test_episodes)
    per_ep = {t.key: np.zeros((e_test, 4)) for t in targets}  # n, sum y | correct, sum y^2, sse
    mean_sse = {t.key: np.zeros(e_test) for t in cont}
    probs: dict[str, list[np.ndarray]] = {t.key: [] for t in disc}
    codes: dict[str, list[np.ndarray]] = {t.key: [] for t in disc}
    for ch in _chunks(f, source, active, split, need_types=with_control):
        test = (ch.groups == split.test_group) & np.isfinite(ch.x).all(axis=1)
        if not test.any():
            continue
        x = ch.x[test]
        ep = split.test_index_of(ch.episodes[test])
        for t in targets:
            v = _target_values(t, ch.raw, ch.types, seed)[test]
            acc = per_ep[t.key]
            fit = fits[t.key]
            if isinstance(fit, LogisticFit):
                p = predict_proba((x - fit.mean) / fit.scale, fit.w, len(t.plan.classes))
                ok = v >= -1  # every row counts; codes of -1 (unseen class) are errors
                pred = np.argmax(p, axis=1)
                np.add.at(acc[:, 0], ep[ok], 1.0)
                np.add.at(acc[:, 1], ep[ok], (pred == v)[ok].astype(np.float64))
                probs[t.key].append(p)
                codes[t.key].append(v)
            else:
                ok = np.isfinite(v)
                yhat = x[ok] @ fit.coef + fit.intercept
                e = ep[ok]
                np.add.at(acc[:, 0], e, 1.0)
                np.add.at(acc[:, 1], e, v[ok])
                np.add.at(acc[:, 2], e, v[ok] ** 2)
                np.add.at(acc[:, 3], e, (v[ok] - yhat) ** 2)
                np.add.at(mean_sse[t.key], e, (v[ok] - t.plan.mean) ** 2)

    counts = bootstrap_counts(e_test, n_bootstrap, seed + 1) if n_bootstrap > 0 else np.zeros((0, e_test))
    out: dict[str, ProbeResult] = {}
    for t in targets:
        acc = per_ep[t.key]
        fit = fits[t.key]
        n_test = int(acc[:, 0].sum())
        if n_test == 0:
            continue
        if isinstance(fit, LogisticFit):
            w, mu, scale = fit.w, fit.mean, fit.scale
            score = float(acc[:, 1].sum() / n_test)
            boot = (counts @ acc[:, 1]) / np.maximum(counts @ acc[:, 0], 1)
            p_all = np.concatenate(probs[t.key])
            y_all = np.concatenate(codes[t.key])
            majority = int(np.argmax(t.plan.train_freq))
            raw_coef = (w[:-1] / scale[:, None]).T  # [cols, d]
            raw_bias = w[-1] - (mu / scale) @ w[:-1]
            out[t.key] = ProbeResult(
                metric=ACCURACY,
                score=score,
                ci=percentile_ci(boot),
                n_train=fit.n_train,
                n_test=n_test,
                reg=float(fit.C),
                mean_baseline=float(np.mean(y_all == majority)),
                auroc=auroc(p_all, y_all),
                coef=raw_coef[0] if raw_coef.shape[0] == 1 else raw_coef,
                bias=raw_bias,
            )
        else:
            sums = acc.sum(axis=0)
            score = float(r2_from_sums(sums[0], sums[1], sums[2], sums[3]))
            b = counts @ acc
            boot = r2_from_sums(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
            out[t.key] = ProbeResult(
                metric=R2,
                score=score,
                ci=percentile_ci(boot),
                n_train=fit.n_train,
                n_test=n_test,
                reg=fit.alpha,
                mean_baseline=float(r2_from_sums(sums[0], sums[1], sums[2], mean_sse[t.key].sum())),
                coef=fit.coef,
                bias=np.array([fit.intercept]),
            )
    return out


def _fit_logistic_cv(X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, n_folds: int) -> LogisticFit:
    """Choose C by grouped CV (mean held-out log-loss, ties to the first) and refit on all rows."""
    ok = y >= 0
    X, y, groups = X[ok], y[ok], groups[ok]
    best_C = 1.0
    if n_folds >= 2:
        losses = np.zeros(len(CS))
        for k in range(n_folds):
            tr, va = groups != k, groups == k
            if not va.any() or not tr.any():
                continue
            mu, scale = _standardiser(X[tr])
            xt, xv = (X[tr] - mu) / scale, (X[va] - mu) / scale
            xtb = np.concatenate([xt, np.ones((len(xt), 1))], axis=1)
            w = None
            state: dict = {}  # the Hessian preconditioner travels along the C path
            for i, C in enumerate(CS):
                w = fit_logistic(xt, y[tr], n_classes, float(C), w0=w, xb=xtb, state=state)
                losses[i] += log_loss(predict_proba(xv, w, n_classes), y[va])
        best_C = float(CS[int(np.argmin(losses))])
    mu, scale = _standardiser(X)
    w = fit_logistic((X - mu) / scale, y, n_classes, best_C)
    return LogisticFit(w, mu, scale, best_C, int(len(y)))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the columns (constant columns keep scale 1), as StandardScaler."""
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    scale = np.sqrt(var)
    tiny = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mu), 1.0) ** 2
    scale[var <= tiny] = 1.0
    return mu, scale


# ---------------------------------------------------------------------------- the sweep
def _default_weights_path(path: Path, out_json: Path | None) -> Path | None:
    """Beside ``out_json``, else ``RUN/probes/<stem>.weights.npz`` for a run's recording, else None."""
    if out_json is not None:
        return out_json.with_name(out_json.name.removesuffix(PROBE_RESULTS_SUFFIX) + PROBE_WEIGHTS_SUFFIX)
    run = run_of_file(path)
    return run.probe_weights_path(path.stem) if run is not None else None


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
    test_fraction: float = 0.25,
    n_bootstrap: int = 200,
    out_json: Path | str | None = None,
    weights_path: Path | str | None = None,
    allow_incomplete: bool = False,
    max_logistic_rows: int = MAX_LOGISTIC_ROWS,
) -> dict[str, Any]:
    """Probe every hook x label of one activation file; returns the JSON document.

    Parameters
    ----------
    path:
        The activation file (one checkpoint).
    labels, hooks:
        Restrict the sweep (default: all); an unknown name raises ``ProbeError``.
    seed:
        Seeds the episode split, the control task, subsampling and the bootstrap.
    test_fraction:
        Fraction of episodes held out for scoring.
    n_bootstrap:
        Number of episode resamples for the confidence intervals (0: no CI).
    out_json:
        Also write the document there (atomically).
    weights_path:
        Where to save probe directions (``.npz``); default: beside ``out_json``, else
        ``RUN/probes/<stem>.weights.npz`` when the file sits in ``RUN/activations/``, else not saved.
    allow_incomplete:
        Read a file that was cut short (a note says so) instead of refusing it.
    max_logistic_rows:
        Cap on the training rows a logistic probe holds in memory (seeded subsample beyond).
    """
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
        )
        if not label_names:
            notes.append("the file has no labels: nothing to probe")
            return _finish(doc, out_path)
        episodes = unique_episodes(f)
        try:
            split = split_episodes(episodes, test_fraction=test_fraction, seed=seed)
        except ValueError as exc:
            notes.append(f"no probe was fitted: {exc}")
            return _finish(doc, out_path)
        doc.n_train_episodes = int(len(split.train_episodes))
        doc.n_test_episodes = int(len(split.test_episodes))
        if split.n_folds < 2:
            notes.append(
                "only one training episode: regularisation was not cross-validated (alpha = C = 1)"
            )
        if len(split.test_episodes) < 5:
            notes.append(f"only {len(split.test_episodes)} test episode(s): confidence intervals are rough")
        plans = scan_labels(f, label_names, split, notes)
        common = dict(seed=seed, n_bootstrap=n_bootstrap, max_logistic_rows=max_logistic_rows, notes=notes)

        def too_wide(source: Source) -> bool:
            dim = int(np.prod(f.read(*source, rows=slice(0, 1)).shape[1:]))
            if dim > MAX_FEATURE_DIM:
                notes.append(f"{source} has {dim} dimensions (> {MAX_FEATURE_DIM}); it was not probed")
                return True
            return False

        obs_results: dict[str, ProbeResult] = {}
        if _has(f, OBS) and not too_wide(OBS):
            obs_results = fit_source(f, OBS, plans, split, with_control=False, **common)
        else:
            notes.append("no usable /steps/obs: the raw-observation baseline is missing")
        missing_random = [h for h in hook_names if h not in f.random_hooks]
        if missing_random:
            notes.append(
                "the random-weights baseline needs the run's network and was not recorded for "
                + ", ".join(missing_random)
                + " (no /acts_random); it is left out"
            )
        weights: dict[str, np.ndarray] = {}
        for hook in hook_names:
            if too_wide(Source("acts", hook)):
                continue
            main = fit_source(f, Source("acts", hook), plans, split, with_control=True, **common)
            rand = (
                fit_source(f, Source("acts_random", hook), plans, split, with_control=False, **common)
                if hook in f.random_hooks
                else {}
            )
            for plan in plans:
                res = main.get(plan.name)
                if res is None:
                    continue
                doc.records.append(_record(plan, hook, res, main, obs_results, rand, checkpoint, doc.step))
                _store_weights(weights, plan, hook, res)
        wpath = Path(weights_path) if weights_path is not None else _default_weights_path(path, out_path)
        if wpath is not None and weights:
            wpath.parent.mkdir(parents=True, exist_ok=True)
            tmp = wpath.with_name(wpath.name + ".tmp.npz")
            np.savez(tmp, **weights)
            os.replace(tmp, wpath)
            doc.weights = str(wpath)
    return _finish(doc, out_path)


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


def _record(
    plan: LabelPlan,
    hook: str,
    res: ProbeResult,
    main: dict[str, ProbeResult],
    obs: dict[str, ProbeResult],
    rand: dict[str, ProbeResult],
    checkpoint: str,
    step: int | None,
) -> ProbeRecord:
    baselines: dict[str, float] = {"mean": res.mean_baseline}
    auroc_baselines: dict[str, float] = {"mean": 0.5}
    for name, table in (("raw_obs", obs), ("random_weights", rand)):
        if plan.name in table:
            baselines[name] = table[plan.name].score
            if table[plan.name].auroc is not None:
                auroc_baselines[name] = table[plan.name].auroc  # type: ignore[assignment]
    control = main.get("control:" + plan.name)
    if control is not None:
        baselines[CONTROL_TASK] = control.score
        if control.auroc is not None:
            auroc_baselines[CONTROL_TASK] = control.auroc
    discrete = res.metric == ACCURACY
    return ProbeRecord(
        hook=hook,
        label=plan.name,
        kind=plan.kind,
        metric=res.metric,
        score=res.score,
        baselines=baselines,
        selectivity=res.score - control.score if control is not None else None,
        beats_baselines=bool(res.ci[0] > max(v for v in baselines.values() if v is not None and math.isfinite(v)))
        if math.isfinite(res.ci[0])
        else False,
        ci=(res.ci[0], res.ci[1]),
        checkpoint=checkpoint,
        step=step,
        linear_by_construction=hook in plan.linear_in,
        n_train=res.n_train,
        n_test=res.n_test,
        alpha=None if discrete else res.reg,
        auroc=res.auroc if discrete else None,
        auroc_baselines=auroc_baselines if discrete else None,
        C=res.reg if discrete else None,
        n_classes=int(len(plan.classes)) if discrete else None,
    )


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
            f"{'hook':<{hw}}  {'label':<{lw}}  metric    score  95% CI        mean   obs    rand   ctrl   select  auroc"
        )
        lines += [head, "-" * len(head)]
        for r in recs:
            b = r.baselines
            name = r.label + ("*" if r.linear_by_construction else "")
            low, high = r.ci or (None, None)
            ci = f"{_fmt(low)}-{_fmt(high).strip()}"
            lines.append(
                f"{r.hook:<{hw}}  {name:<{lw}}  {r.metric:<8}  {_fmt(r.score)}  {ci:<12}  "
                f"{_fmt(b.get('mean'))}  {_fmt(b.get('raw_obs'))}  {_fmt(b.get('random_weights'))}  "
                f"{_fmt(b.get(CONTROL_TASK))}  {_fmt(r.selectivity)}   {_fmt(r.auroc)}"
            )
    else:
        lines.append("(no probe was fitted)")
    lines.append(
        "score: R^2 (continuous) or accuracy (discrete) on held-out episodes; baselines: mean = mean/majority "
        "predictor, obs = same probe on the raw observation, rand = on the random-weights network, ctrl = "
        "control task (random output per observation); select = score - ctrl; * = linear by construction "
        "(not a discovery)"
    )
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)


def summarise(doc: ProbeResults | Mapping[str, Any]) -> list[str]:
    """Sentences in words: which labels which layers encode beyond every baseline."""
    res = _results(doc)
    out: list[str] = []
    by_label: dict[str, list[ProbeRecord]] = {}
    for r in res.records:
        by_label.setdefault(r.label, []).append(r)

    def score(r: ProbeRecord) -> float:
        return r.score if r.score is not None else -math.inf

    for label, recs in by_label.items():
        found = [r for r in recs if r.beats_baselines]
        for r in sorted(found, key=lambda r: -score(r)):
            what = "R^2" if r.metric == R2 else "accuracy"
            vs = []
            for key, words in (("raw_obs", "the raw observation"), ("random_weights", "random weights"), (CONTROL_TASK, "the control task")):
                if r.baselines.get(key) is not None:
                    vs.append(f"{words} ({r.baselines[key]:.2f})")
            tail = " (linear by construction, so expected, not a discovery)" if r.linear_by_construction else ""
            low, high = r.ci or (None, None)
            out.append(
                f"{label} is linearly decodable from {r.hook} ({what} {_f2(r.score)}, 95% CI "
                f"{_f2(low)}-{_f2(high)}) beyond " + (", ".join(vs) or "the mean predictor") + tail + "."
            )
        if not found:
            best = max(recs, key=score)
            strongest = best.best_baseline or ("mean", None)
            low, high = best.ci or (None, None)
            out.append(
                f"{label} is not decoded beyond the baselines by any probed layer: the best, {best.hook} "
                f"({_f2(best.score)}, 95% CI {_f2(low)}-{_f2(high)}), does not clear the "
                f"{strongest[0]} baseline ({_f2(strongest[1])}) with its whole interval."
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m probes.linear FILE.h5 [FILE.h5 ...] [--json] ...``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m probes.linear", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="activation file(s); several = one per checkpoint (timeline)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--labels", help="comma-separated labels to probe (default: all)")
    parser.add_argument("--hooks", help="comma-separated hooks to probe (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, control task and bootstrap")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="fraction of episodes held out")
    parser.add_argument("--bootstrap", type=int, default=200, help="episode resamples for the CI")
    parser.add_argument("--out", help="also write the JSON document to this path")
    parser.add_argument("--weights", help="where to save probe directions (.npz)")
    parser.add_argument("--allow-incomplete", action="store_true", help="read a file that was cut short")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = dict(
        labels=_split_list(args.labels),
        hooks=_split_list(args.hooks),
        seed=args.seed,
        test_fraction=args.test_fraction,
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
