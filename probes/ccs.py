"""Contrast-consistent search (Burns et al. 2022) on RL activations, with the sanity checks of
Farquhar et al. (2023).

Contrast pairs from RL data: steps where the label is HIGH (``>= q_hi`` quantile, or ``> T``)
and steps where it is LOW (``<= q_lo``, or ``<= T``) are paired inside each episode, matched in
time (both sides sorted by ``t`` and paired in order after a seeded subsample to equal size).
Each pair is shown to CCS in a random, hidden order ``(x_a, x_b)``; the truth ``z`` says whether
``x_a`` is the high step. As in Burns et al., the ``a`` set and the ``b`` set are normalised
separately (mean 0, unit variance per set). CCS fits ``p(x) = sigmoid(w.x + b)`` minimising
``(p(a) - (1 - p(b)))^2 + min(p(a), p(b))^2``; it predicts ``z = p(a) > p(b)``. The sign of an
unsupervised direction is arbitrary: it is fixed on the training pairs (one bit of supervision).
Pairs are split by episode: every score is on held-out episodes.

Reported beside CCS, on the same pairs and held-out episodes: a supervised logistic ceiling on
``x_a - x_b``; two unsupervised baselines that CCS must beat to be worth its name (Farquhar et al.
2023), PCA (first principal component of the differences) and 2-means clustering of the
differences; CCS on the random-weights network (``/acts_random``); CCS over several random inits;
the cosine of the CCS direction with PC1 and with the supervised direction.

Checks that can fail:

- **planted distractor** (after Farquhar et al. 2023): an irrelevant binary contrast, random per
  pair and ``distractor_strength`` times as strong as the label's mean contrast, is added along a
  random direction orthogonal to it; CCS is refitted on the same pairs. If its held-out accuracy
  on the label falls to chance or its direction turns to the planted one, CCS follows whatever
  contrast is most prominent and its direction on the real data is not evidence of the label.
- **unsupervised baselines**: if PCA or 2-means does as well as CCS, CCS added nothing.
- **chance band** from an episode-level bootstrap: pairs of one episode are not independent,
  so the binomial band ``0.5 +- 1.96 * 0.5 / sqrt(n)`` is widened by the design effect measured by
  resampling whole test episodes; every accuracy also gets its episode-bootstrap interval.

The reported CCS direction is the init with the lowest CCS loss on the TRAINING pairs (never
chosen by test accuracy). CCS on shuffled pairs (condition ignored) is still reported but is no
check: shuffling breaks every method equally.

Run ``python -m probes.ccs FILE.h5 --label NAME --hook HOOK [--quantiles 0.25,0.75] [--json]``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.logistic import fit_logistic, predict_proba
from probes.scripts import ScriptParser
from probes.splits import bootstrap_counts, percentile_ci, split_episodes

MAX_PAIRS = 20_000
N_INITS = 8
DISTRACTOR_STRENGTH = 2.0
N_BOOTSTRAP = 1000


@dataclass
class Pairs:
    """Contrast pairs: row indices of the high and low step, hidden order, episode of the pair."""

    high: np.ndarray
    low: np.ndarray
    episode: np.ndarray


def form_pairs(
    label: np.ndarray, episodes: np.ndarray, t: np.ndarray, lo: float, hi: float, seed: int, strict_hi: bool = False
) -> Pairs:
    """Pair high steps (``label >= hi``, or ``> hi`` if ``strict_hi``) with low steps
    (``label <= lo``) of the same episode, matched in time order."""
    rng = np.random.default_rng(seed)
    high_mask = (label > hi) if strict_hi else (label >= hi)
    low_mask = (label <= lo) & ~high_mask
    hs, ls, es = [], [], []
    order = np.lexsort((t, episodes))
    eps_sorted = episodes[order]
    bounds = np.flatnonzero(np.diff(eps_sorted)) + 1
    for rows in np.split(order, bounds):
        h, lw = rows[high_mask[rows]], rows[low_mask[rows]]
        m = min(len(h), len(lw))
        if m == 0:
            continue
        h = np.sort(rng.choice(h, m, replace=False)) if len(h) > m else h
        lw = np.sort(rng.choice(lw, m, replace=False)) if len(lw) > m else lw
        hs.append(h[np.argsort(t[h], kind="stable")])
        ls.append(lw[np.argsort(t[lw], kind="stable")])
        es.append(np.full(m, episodes[rows[0]]))
    if not hs:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Pairs(np.concatenate(hs), np.concatenate(ls), np.concatenate(es))


def _normalise(xa: np.ndarray, xb: np.ndarray, ref: tuple | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    if ref is None:
        ref = (xa.mean(0), xa.std(0) + 1e-8, xb.mean(0), xb.std(0) + 1e-8)
    ma, sa, mb, sb = ref
    return (xa - ma) / sa, (xb - mb) / sb, ref


def fit_ccs(xa: np.ndarray, xb: np.ndarray, seed: int, steps: int = 400, lr: float = 1e-2) -> tuple[np.ndarray, float]:
    """Train one CCS probe from a random init by full-batch Adam; returns ``(w [d], b)``.

    Loss (Burns et al.): ``mean((p(a) + p(b) - 1)^2) + mean(min(p(a), p(b))^2)``.
    """
    rng = np.random.default_rng(seed)
    n, d = xa.shape
    theta = np.concatenate([rng.normal(size=d) / math.sqrt(d), [0.0]])
    m1, m2 = np.zeros(d + 1), np.zeros(d + 1)
    ab = np.concatenate([xa, np.ones((n, 1))], axis=1)
    bb = np.concatenate([xb, np.ones((n, 1))], axis=1)
    for i in range(1, steps + 1):
        pa = 1.0 / (1.0 + np.exp(-(ab @ theta)))
        pb = 1.0 / (1.0 + np.exp(-(bb @ theta)))
        common = 2.0 * (pa + pb - 1.0) / n
        ga = (common + 2.0 * pa * (pa < pb) / n) * pa * (1 - pa)
        gb = (common + 2.0 * pb * (pb <= pa) / n) * pb * (1 - pb)
        grad = ab.T @ ga + bb.T @ gb
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad**2
        theta -= lr * (m1 / (1 - 0.9**i)) / (np.sqrt(m2 / (1 - 0.999**i)) + 1e-8)
    return theta[:-1], float(theta[-1])


def ccs_loss(xa: np.ndarray, xb: np.ndarray, w: np.ndarray, b: float) -> float:
    """The CCS objective (consistency + confidence) of a probe on normalised pair members."""
    pa = 1.0 / (1.0 + np.exp(-(xa @ w + b)))
    pb = 1.0 / (1.0 + np.exp(-(xb @ w + b)))
    return float(np.mean((pa + pb - 1.0) ** 2) + np.mean(np.minimum(pa, pb) ** 2))


def kmeans_direction(diffs: np.ndarray, seed: int, n_iter: int = 50) -> np.ndarray:
    """2-means (Lloyd, k-means++ start) on contrast differences; the centroids' difference."""
    rng = np.random.default_rng(seed)
    c0 = diffs[rng.integers(len(diffs))]
    d2 = np.sum((diffs - c0) ** 2, axis=1)
    c1 = diffs[rng.choice(len(diffs), p=d2 / d2.sum())] if d2.sum() > 0 else c0 + 1e-6
    centres = np.stack([c0, c1])
    for _ in range(n_iter):
        assign = np.argmin(((diffs[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        new = np.stack([diffs[assign == k].mean(axis=0) if np.any(assign == k) else centres[k] for k in (0, 1)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[1] - centres[0]


def _acc(score_a: np.ndarray, score_b: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean((score_a > score_b) == z)) if len(z) else float("nan")


def _oriented(direction: np.ndarray, xa: np.ndarray, xb: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Flip a direction so that it is right on the training pairs more often than not."""
    return direction if _acc(xa @ direction, xb @ direction, z) >= 0.5 else -direction


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))


def _evaluate(
    x: np.ndarray, pairs: Pairs, z: np.ndarray, train: np.ndarray, seed: int, n_inits: int
) -> dict[str, Any]:
    """CCS, PCA, 2-means and the supervised ceiling on one activation matrix (rows = pair members).

    Every direction and every sign is chosen on the training pairs; ``correct`` holds, per
    method, which held-out pairs it got right (for the episode bootstrap).
    """
    n = len(z)
    idx = np.arange(n)
    a_rows = np.where(z, idx, idx + n)  # x stacks [high; low]
    b_rows = np.where(z, idx + n, idx)
    xa_all, xb_all = x[a_rows], x[b_rows]
    xa_tr, xb_tr, ref = _normalise(xa_all[train], xb_all[train])
    xa_te, xb_te, _ = _normalise(xa_all[~train], xb_all[~train], ref)
    z_tr, z_te = z[train], z[~train]
    runs = []
    for i in range(n_inits):
        w, b = fit_ccs(xa_tr, xb_tr, seed=seed * 1000 + i)
        loss = ccs_loss(xa_tr, xb_tr, w, b)
        w = _oriented(w, xa_tr, xb_tr, z_tr)
        runs.append((w, _acc(xa_te @ w, xb_te @ w, z_te), loss))
    diffs = xa_tr - xb_tr
    pc1 = np.linalg.svd(diffs - diffs.mean(0), full_matrices=False)[2][0]
    pc1 = _oriented(pc1, xa_tr, xb_tr, z_tr)
    km = _oriented(kmeans_direction(diffs, seed), xa_tr, xb_tr, z_tr)
    # Supervised ceiling: logistic on the difference predicting the hidden order.
    dm, ds = diffs.mean(0), diffs.std(0) + 1e-8
    wsup = fit_logistic((diffs - dm) / ds, z_tr.astype(np.int64), 2, 1.0)
    p_te = predict_proba(((xa_te - xb_te) - dm) / ds, wsup, 2)[:, 1]
    sup_dir = wsup[:-1, 0] / ds
    accs = np.array([r[1] for r in runs])
    chosen = int(np.argmin([r[2] for r in runs]))  # lowest CCS loss on the training pairs
    best_w = runs[chosen][0]
    cos_pairs = [_cos(runs[i][0], runs[j][0]) for i in range(len(runs)) for j in range(i + 1, len(runs))]

    def right(direction: np.ndarray) -> np.ndarray:
        return ((xa_te @ direction) > (xb_te @ direction)) == z_te

    return {
        "ccs": float(accs[chosen]),
        "ccs_inits": [float(a) for a in accs],
        "ccs_init_losses": [float(r[2]) for r in runs],
        "ccs_min_cos_between_inits": float(min(cos_pairs)) if cos_pairs else 1.0,
        "pca": _acc(xa_te @ pc1, xb_te @ pc1, z_te),
        "kmeans": _acc(xa_te @ km, xb_te @ km, z_te),
        "supervised": float(np.mean((p_te > 0.5) == z_te)),
        "cos_ccs_pc1": _cos(best_w, pc1),
        "cos_ccs_supervised": _cos(best_w, sup_dir),
        "direction": best_w,
        "raw_direction": best_w / ref[1],  # in the (un-normalised) activation space of the a set
        "correct": {"ccs": right(best_w), "pca": right(pc1), "kmeans": right(km), "supervised": (p_te > 0.5) == z_te},
    }


def plant_distractor(
    x: np.ndarray, n_pairs: int, train: np.ndarray, strength: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Add an irrelevant binary contrast to the pair members ``x`` = ``[high; low]``.

    Each pair gets a random bit ``r = +-1`` (independent of the label); its high member moves by
    ``+r * c * u / 2`` and its low member by ``-r * c * u / 2``, with ``u`` a random unit direction
    orthogonal to the label's mean contrast ``m`` (training pairs) and ``c = strength * |m|``: a
    contrast inside every pair, ``strength`` times as strong as the label's, that says nothing
    about the label (Farquhar et al.'s appended words, in activation space).
    Returns the planted activations and ``u``.
    """
    rng = np.random.default_rng(seed)
    diff = x[:n_pairs][train] - x[n_pairs:][train]
    m = diff.mean(axis=0)
    u = rng.normal(size=x.shape[1])
    norm_m = float(np.linalg.norm(m))
    if norm_m > 0:
        u -= (u @ m) / norm_m**2 * m
    u /= np.linalg.norm(u) + 1e-12
    r = rng.choice([-1.0, 1.0], size=n_pairs)
    shift = (strength * max(norm_m, 1e-12) / 2.0) * r[:, None] * u[None, :]
    return x + np.concatenate([shift, -shift]), u


def episode_bootstrap(
    correct: np.ndarray, episodes: np.ndarray, n_boot: int, seed: int
) -> tuple[list[float], float]:
    """95% interval of an accuracy resampling whole test episodes, and the design effect
    (bootstrap variance over the binomial variance of independent pairs; NaN when undefined)."""
    uniq, inv = np.unique(episodes, return_inverse=True)
    hits = np.bincount(inv, weights=correct.astype(np.float64), minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    draws = bootstrap_counts(len(uniq), n_boot, seed)
    acc = (draws @ hits) / np.maximum(draws @ counts, 1.0)
    low, high = percentile_ci(acc)
    p = float(correct.mean())
    binom = p * (1 - p) / len(correct)
    deff = float(acc.var() / binom) if binom > 0 else float("nan")
    return [low, high], deff


def run_ccs(
    path: Path | str,
    *,
    label: str,
    hook: str,
    threshold: float | None = None,
    quantiles: tuple[float, float] = (0.25, 0.75),
    seed: int = 0,
    test_fraction: float = 0.25,
    n_inits: int = N_INITS,
    max_pairs: int = MAX_PAIRS,
    allow_incomplete: bool = False,
    distractor_strength: float = DISTRACTOR_STRENGTH,
    n_bootstrap: int = N_BOOTSTRAP,
) -> dict[str, Any]:
    """CCS report for one label x hook (held-out accuracies, baselines, checks, verdict).

    Parameters
    ----------
    label, hook:
        What defines the conditions and where to search.
    threshold:
        High = label > T, low = label <= T (discrete labels: e.g. 0.5). Overrides ``quantiles``.
    quantiles:
        High = label >= the ``q_hi`` quantile, low = label <= the ``q_lo`` quantile.
    n_inits:
        CCS random initialisations; the reported direction is the one of lowest CCS loss on the
        training pairs (a held-out accuracy spread > 0.1 across inits is flagged).
    max_pairs:
        Cap on pairs (seeded subsample) so memory stays bounded.
    distractor_strength:
        Strength of the planted distractor relative to the label's mean contrast (> 0).
    n_bootstrap:
        Episode resamples for the intervals and the chance band.
    """
    if not distractor_strength > 0:
        raise ProbeError(f"distractor_strength must be > 0, got {distractor_strength}")
    if n_bootstrap < 100:
        raise ProbeError(f"n_bootstrap must be at least 100, got {n_bootstrap}")
    notes: list[str] = []
    with ActivationFile(path, allow_incomplete=allow_incomplete) as f:
        if label not in f.labels:
            raise ProbeError(f"{Path(path).name} has no label {label!r} (available: {', '.join(f.labels)})")
        if hook not in f.hooks:
            raise ProbeError(f"{Path(path).name} has no hook {hook!r} (available: {', '.join(f.hooks)})")
        y = np.asarray(f.label(label), dtype=np.float64)
        eps, t = f.episodes(), f.steps("t")
        finite = np.isfinite(y)
        if threshold is not None:
            lo = hi = float(threshold)
            strict = True
        else:
            lo, hi = (float(v) for v in np.quantile(y[finite], quantiles))
            strict = False
        y = np.where(finite, y, np.nan)
        pairs = form_pairs(y, eps, t, lo, hi, seed, strict_hi=strict)
        doc: dict[str, Any] = {
            "schema_version": 1, "file": str(path), "run": str(f.attrs.get("run", "")),
            "checkpoint": str(f.attrs.get("checkpoint", "")), "label": label, "hook": hook,
            "low": lo, "high": hi, "n_pairs": int(len(pairs.high)), "notes": notes,
        }
        if len(pairs.high) > max_pairs:
            keep = np.sort(np.random.default_rng(seed).choice(len(pairs.high), max_pairs, replace=False))
            pairs = Pairs(pairs.high[keep], pairs.low[keep], pairs.episode[keep])
            notes.append(f"a seeded subsample of {max_pairs} pairs was used")
        try:
            split = split_episodes(np.unique(pairs.episode), test_fraction=test_fraction, seed=seed)
        except ValueError:
            raise ProbeError(
                f"only {len(np.unique(pairs.episode))} episode(s) contain both conditions of {label!r}; "
                "CCS needs at least 2 (try other quantiles or a threshold)"
            ) from None
        train = split.groups_of(pairs.episode) < split.n_folds
        if train.sum() < 10 or (~train).sum() < 10:
            raise ProbeError(f"too few contrast pairs for {label!r} ({len(pairs.high)}); try wider quantiles")
        z = np.random.default_rng(seed + 7).random(len(pairs.high)) < 0.5
        rows = np.concatenate([pairs.high, pairs.low])

        uniq = np.unique(rows)

        def load(random_weights: bool) -> np.ndarray:
            """Activations of the pair rows ``[high; low]`` (only those rows are read)."""
            block = f.acts(hook, uniq, random_weights=random_weights).astype(np.float64)
            return block[np.searchsorted(uniq, rows)]

        x = load(False)
        main = _evaluate(x, pairs, z, train, seed, n_inits)
        # Shuffled pairs: ignore the condition, pair random steps (reported; breaks every method alike).
        perm = np.random.default_rng(seed + 11).permutation(2 * len(z))
        shuffled = _evaluate(x[perm], pairs, z, train, seed, max(2, n_inits // 4))
        # Planted distractor: a stronger, irrelevant binary contrast on the same pairs.
        planted, u = plant_distractor(x, len(z), train, distractor_strength, seed + 13)
        distract = _evaluate(planted, pairs, z, train, seed, n_inits)
        rand = None
        if hook in f.random_hooks:
            rand = _evaluate(load(True), pairs, z, train, seed, max(2, n_inits // 4))
        else:
            notes.append("no /acts_random for this hook: the random-network check was not run")
    n_test = int((~train).sum())
    test_eps = pairs.episode[~train]
    cis: dict[str, list[float]] = {}
    deffs = []
    for name, correct in [*main["correct"].items(), ("distractor", distract["correct"]["ccs"])]:
        cis[name], deff = episode_bootstrap(correct, test_eps, n_bootstrap, seed + 17)
        if np.isfinite(deff):
            deffs.append(deff)
    design_effect = max(1.0, float(np.median(deffs))) if deffs else 1.0
    chance_band = 0.5 + 1.96 * math.sqrt(design_effect * 0.25 / n_test)
    cos_distractor = _cos(distract["raw_direction"], u)
    spread = max(main["ccs_inits"]) - min(main["ccs_inits"])
    flags = []
    if spread > 0.1 or main["ccs_min_cos_between_inits"] < 0.8:
        flags.append("unstable: random inits disagree (accuracy spread %.2f)" % spread)
    if rand is not None and rand["ccs"] > chance_band:
        flags.append("CCS beats chance on the random-weights network: the input alone carries the label")
    if main["cos_ccs_pc1"] > 0.9 and main["cos_ccs_supervised"] < 0.5:
        flags.append("the CCS direction is the most prominent direction (PC1), not the supervised one")
    unsupervised = max(main["pca"], main["kmeans"])
    if main["ccs"] > chance_band and cis["ccs"][0] <= unsupervised:
        flags.append(
            f"CCS does no better than an unsupervised baseline on the same pairs (PCA {main['pca']:.2f}, "
            f"2-means {main['kmeans']:.2f}): its interval reaches down to them"
        )
    distracted = distract["ccs"] <= chance_band or cos_distractor > 0.5
    if main["ccs"] > chance_band and distracted:
        flags.append(
            f"planted-distractor test failed: with an irrelevant binary contrast {distractor_strength:g}x as strong "
            f"as the label's added, CCS follows it (held-out accuracy {distract['ccs']:.2f}, |cos| with the "
            f"planted direction {cos_distractor:.2f}): CCS finds the most prominent contrast, not this label as such"
        )
    if main["ccs"] <= chance_band or cis["ccs"][0] <= 0.5:
        verdict = "CCS did not recover the label: its held-out accuracy is within chance"
    elif main["ccs"] < main["supervised"] - 0.15:
        verdict = "CCS found a direction that tracks the label only partly (well below the supervised ceiling)"
    else:
        verdict = "CCS recovered a direction that tracks the label on held-out episodes"
    if flags:
        verdict += "; but " + "; ".join(flags)
    doc.update(
        {
            "n_train_pairs": int(train.sum()), "n_test_pairs": n_test,
            "n_test_episodes": int(len(np.unique(test_eps))),
            "ccs_accuracy": main["ccs"], "ccs_ci": cis["ccs"], "ccs_inits": main["ccs_inits"],
            "ccs_init_train_losses": main["ccs_init_losses"],
            "ccs_direction_chosen_by": "lowest CCS loss on the training pairs",
            "ccs_min_cos_between_inits": main["ccs_min_cos_between_inits"],
            "supervised_accuracy": main["supervised"], "supervised_ci": cis["supervised"],
            "pca_accuracy": main["pca"], "pca_ci": cis["pca"],
            "kmeans_accuracy": main["kmeans"], "kmeans_ci": cis["kmeans"],
            "shuffled_pairs_accuracy": shuffled["ccs"],
            "random_weights_accuracy": rand["ccs"] if rand else None,
            "distractor": {
                "strength": distractor_strength, "ccs_accuracy": distract["ccs"], "ccs_ci": cis["distractor"],
                "cos_ccs_distractor": cos_distractor, "pca_accuracy": distract["pca"],
                "kmeans_accuracy": distract["kmeans"], "supervised_accuracy": distract["supervised"],
                "passed": not distracted,
            },
            "cos_ccs_pc1": main["cos_ccs_pc1"], "cos_ccs_supervised": main["cos_ccs_supervised"],
            "chance_band": chance_band, "design_effect": design_effect, "flags": flags, "verdict": verdict,
        }
    )
    return _rounded(doc)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def format_report(doc: dict[str, Any]) -> str:
    """Human-readable CCS report."""
    r = doc.get("random_weights_accuracy")
    dis = doc["distractor"]

    def ci(key: str) -> str:
        low, high = doc[key]
        return f"[{low:.3f}, {high:.3f}]"

    lines = [
        f"CCS for {doc['label']} in {doc['hook']} ({doc['n_train_pairs']} train / {doc['n_test_pairs']} test pairs "
        f"in {doc['n_test_episodes']} test episodes; high >= {doc['high']:.3g}, low <= {doc['low']:.3g})",
        f"  CCS accuracy (init of least training loss) {doc['ccs_accuracy']:.3f} {ci('ccs_ci')}   "
        f"inits {min(doc['ccs_inits']):.3f}-{max(doc['ccs_inits']):.3f}",
        f"  supervised ceiling                 {doc['supervised_accuracy']:.3f} {ci('supervised_ci')}",
        f"  PCA (PC1 of differences)           {doc['pca_accuracy']:.3f} {ci('pca_ci')}",
        f"  2-means of differences             {doc['kmeans_accuracy']:.3f} {ci('kmeans_ci')}",
        f"  planted distractor ({dis['strength']:g}x): CCS     {dis['ccs_accuracy']:.3f}   |cos| with it "
        f"{dis['cos_ccs_distractor']:.2f}   -> {'passed' if dis['passed'] else 'FAILED'}",
        f"  CCS on random-weights network      " + (f"{r:.3f}" if r is not None else "  -  (not recorded)"),
        f"  CCS on shuffled pairs              {doc['shuffled_pairs_accuracy']:.3f}  (not a check: breaks every method)",
        f"  |cos| CCS vs PC1 {doc['cos_ccs_pc1']:.2f}, vs supervised {doc['cos_ccs_supervised']:.2f}",
        "accuracy of telling which member of a held-out pair is the high step; chance 0.5 "
        f"(anything below {doc['chance_band']:.3f} is within chance: binomial band widened by the "
        f"episode-bootstrap design effect {doc['design_effect']:.2f}); [..] = 95% episode-bootstrap intervals",
        "verdict: " + doc["verdict"],
    ]
    return "\n".join(lines + [f"note: {n}" for n in doc["notes"]])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m probes.ccs FILE.h5 --label NAME --hook HOOK``; returns the exit code."""
    parser = ScriptParser(prog="python -m probes.ccs", description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--label", required=True)
    parser.add_argument("--hook", required=True)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="high = label > T, low = label <= T")
    group.add_argument("--quantiles", default="0.25,0.75", help="low,high quantiles (default 0.25,0.75)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inits", type=int, default=N_INITS)
    parser.add_argument("--distractor-strength", type=float, default=DISTRACTOR_STRENGTH,
                        help="planted distractor's contrast relative to the label's (default %(default)s)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--allow-incomplete", action="store_true")
    args = parser.parse_args(argv)
    try:
        q = tuple(float(v) for v in args.quantiles.split(","))
        if len(q) != 2 or not 0 <= q[0] < q[1] <= 1:
            raise ProbeError("--quantiles takes two increasing numbers in [0, 1], e.g. 0.25,0.75")
        doc = run_ccs(args.file, label=args.label, hook=args.hook, threshold=args.threshold,
                      quantiles=q, seed=args.seed, n_inits=args.inits, allow_incomplete=args.allow_incomplete,
                      distractor_strength=args.distractor_strength)
    except (ProbeError, ValueError) as exc:
        print(f"probes.ccs: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in doc.items()}) if args.json else format_report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
