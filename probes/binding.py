"""Conjunction probes: is a conjunction *bound* at a layer, or only a bag of features?

For a recording of ``lab/Binding-v0`` (two colours, two shapes; every scene holds the four
conjunctions: target, colour lure, shape lure, foil) this fits, for every layer:

- **single-feature probes** (the bag view): ridge regressions from the layer onto the colour
  map (for each colour and each object cell: is that colour there?), the shape map and the
  goal's colour and shape. Their outputs are the layer's *bag readings*;
- **conjunction probes**: multinomial logistic probes from the layer onto the cell of the
  target, of the colour lure, of the shape lure and of the foil;
- **bag probes** for the same four targets, built only from the bag readings by the rule a
  bag of features allows, binding by location: ``bag_and`` scores each cell by the predicted
  chance that it holds the role's colour times the chance that it holds the role's shape (goal
  colour AND goal shape for the target) and picks the best cell; ``bag_and_fit`` is a
  multinomial logistic probe on those scores (every role's, every cell's). A probe on the raw
  readings is not a bag probe: readings are linear projections of the layer, and enough of
  them span whatever the layer holds, conjunctions included.

A conjunction is **bound** at a layer when its probe beats the best bag probe on held-out
episodes: the held-out accuracy difference (conjunction probe minus the better bag probe) is
above 0 by an episode bootstrap (one-sided p-value), after Holm's correction over every
(layer, role) test of the file (``p_holm < 0.05``; ``bound_uncorrected`` keeps the uncorrected
reading: the 95% interval above 0). A layer that only holds a bag of features gives bag
readings from which the conjunction follows as well as from the layer itself; a bound layer
holds the conjunction where its bag readings do not.

Splits are the lab's episode split (``probes.splits``): held-out episodes for the scores, CV
folds of the training episodes for the regularisation; bag readings of training rows are
cross-fitted (each fold read by probes trained on the other folds), so the bag probes train on
readings as noisy as the held-out ones. Choosing the better bag probe on the held-out rows
favours the bag (a conservative test for binding).

Ground truth comes from the labels ``<role>_row``, ``<role>_col`` (``target``,
``colour_lure``, ``shape_lure``, ``foil``), ``target_colour`` and ``target_shape``.

Script: ``python -m probes.binding FILE.h5 [--hooks A,B] [--json]``. See ``docs/probes.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.logistic import logistic_cv, predict_proba
from probes.scripts import ScriptParser
from probes.splits import bootstrap_counts, percentile_ci, split_episodes
from probes.stats import holm

ROLES = ("target", "colour_lure", "shape_lure", "foil")
"""The four objects of a Binding scene, by their relation to the goal."""
ROLE_MATCH = {"target": (True, True), "colour_lure": (True, False), "shape_lure": (False, True), "foil": (False, False)}
"""Whether each role has the goal's (colour, shape)."""
INPUT_SOURCE = "obs"
"""Name of the observation as a source (the network's input) beside the hooks."""
ALPHAS = np.logspace(-2, 4, 7)
"""Ridge penalties tried for the single-feature probes (on standardised activations)."""
CS = (0.03, 0.3, 3.0)
"""Inverse penalties tried for the logistic probes (on standardised features)."""
N_BOOTSTRAP = 10_000
"""Episode bootstrap draws for the interval and p-value of the accuracy difference."""
SIGNIFICANCE = 0.05
"""Family-wise error rate of the file's tests (Holm)."""


@dataclass
class Scenes:
    """The ground truth of every row: where each role is and what colour/shape sits where."""

    cells: np.ndarray
    """``[C, 2]`` the distinct (row, col) object cells of the file."""
    role_cell: dict[str, np.ndarray]
    """Role -> ``[n]`` index into ``cells`` of that object."""
    colour_map: np.ndarray
    """``[n, 2, C]``: 1 where the cell holds an object of colour 0 / 1."""
    shape_map: np.ndarray
    """``[n, 2, C]``: 1 where the cell holds an object of shape 0 / 1."""
    goal_colour: np.ndarray
    """``[n]`` 0 or 1."""
    goal_shape: np.ndarray
    """``[n]`` 0 or 1."""


def read_scenes(f: ActivationFile) -> Scenes:
    """Ground truth from the labels of a Binding-v0 recording (two colours, two shapes)."""
    needed = [f"{r}_{a}" for r in ROLES for a in ("row", "col")] + ["target_colour", "target_shape"]
    missing = [name for name in needed if name not in f.labels]
    if missing:
        raise ProbeError(f"{f.path.name} is not a Binding-v0 recording: no label(s) {', '.join(missing)}")
    gc = f.label("target_colour").astype(np.int64)
    gs = f.label("target_shape").astype(np.int64)
    if gc.min() < 0 or gc.max() > 1 or gs.min() < 0 or gs.max() > 1:
        raise ProbeError("conjunction probes need Binding-v0 with n_colours=2 and n_shapes=2")
    rc = {r: np.stack([f.label(f"{r}_row"), f.label(f"{r}_col")], axis=1).astype(np.int64) for r in ROLES}
    cells, inverse = np.unique(np.concatenate(list(rc.values())), axis=0, return_inverse=True)
    n = len(gc)
    role_cell = {r: inverse.reshape(-1)[i * n : (i + 1) * n] for i, r in enumerate(ROLES)}
    colour_map = np.zeros((n, 2, len(cells)), np.float64)
    shape_map = np.zeros((n, 2, len(cells)), np.float64)
    rows = np.arange(n)
    for r in ROLES:
        same_colour, same_shape = ROLE_MATCH[r]
        colour_map[rows, np.where(same_colour, gc, 1 - gc), role_cell[r]] = 1.0
        shape_map[rows, np.where(same_shape, gs, 1 - gs), role_cell[r]] = 1.0
    return Scenes(cells, role_cell, colour_map, shape_map, gc, gs)


ACTION_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""Binding-v0's actions: up, right, down, left as (drow, dcol)."""


def reach_rates(f: ActivationFile) -> dict[str, Any] | None:
    """Which object each recorded episode ended on: the fraction of episodes that reached the
    target, each lure, the foil, or none (truncated), from the last step's position, action and
    the objects' places. None when the file lacks ``agent_row``/``agent_col``."""
    if not {"agent_row", "agent_col", *(f"{r}_{a}" for r in ROLES for a in ("row", "col"))} <= set(f.labels):
        return None
    episodes = f.episodes()
    last = np.flatnonzero(np.r_[episodes[1:] != episodes[:-1], True])  # last row of each episode
    move = np.array(ACTION_MOVES)[f.steps("action", last).astype(np.int64) % 4]
    pos = np.stack([f.label("agent_row", last), f.label("agent_col", last)], axis=1).astype(np.int64) + move
    out: dict[str, Any] = {"episodes": int(len(last))}
    hit_any = np.zeros(len(last), bool)
    for r in ROLES:
        at = np.stack([f.label(f"{r}_row", last), f.label(f"{r}_col", last)], axis=1).astype(np.int64)
        hit = (pos == at).all(axis=1) & f.steps("done", last).astype(bool)
        out[r] = float(hit.mean())
        hit_any |= hit
    out["none"] = float((~hit_any).mean())
    return out


def bag_targets(s: Scenes) -> np.ndarray:
    """``[n, 4C + 4]`` the single features: colour map, shape map, goal colour and shape one-hots."""
    n = len(s.goal_colour)
    eye = np.eye(2)
    return np.concatenate([s.colour_map.reshape(n, -1), s.shape_map.reshape(n, -1),
                           eye[s.goal_colour], eye[s.goal_shape]], axis=1)


SELECTIVE_MIN_RATE = 0.3
"""A conjunction-selective latent fires on at least this fraction of the rows with its pair."""
SELECTIVE_MAX_RATIO = 0.25
"""... and on at most this fraction of that rate on rows that share only one of its features."""


def conjunction_pairs(s: Scenes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The colour x shape pairs of every row: the goal's and, for each object cell, the object's
    there (``"goal"``, ``"cell_<row>_<col>"`` -> (colour [n], shape [n]); -1 where no object)."""
    pairs = {"goal": (s.goal_colour, s.goal_shape)}
    for u, (r, c) in enumerate(s.cells):
        has = s.colour_map[:, :, u].sum(1) > 0
        pairs[f"cell_{r}_{c}"] = (np.where(has, s.colour_map[:, 1, u], -1).astype(np.int64),
                                 np.where(has, s.shape_map[:, 1, u], -1).astype(np.int64))
    return pairs


def conjunction_selective(fires: np.ndarray, colour: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """``[L]`` bool: latents (columns of ``fires`` [n, L], bool) that fire for one colour x shape
    pair and not for either feature alone: rate on the pair >= ``SELECTIVE_MIN_RATE`` and the
    rate on each pair sharing only the colour or only the shape <= ``SELECTIVE_MAX_RATIO`` times
    it. ``colour``/``shape`` are 0/1 per row (-1: not counted)."""
    out = np.zeros(fires.shape[1], dtype=bool)
    for c in (0, 1):
        for sh in (0, 1):
            rows = [(colour == a) & (shape == b) for a, b in ((c, sh), (c, 1 - sh), (1 - c, sh))]
            if not all(r.any() for r in rows):
                continue
            pair, same_colour, same_shape = (fires[r].mean(axis=0) for r in rows)
            out |= (pair >= SELECTIVE_MIN_RATE) & (np.maximum(same_colour, same_shape) <= SELECTIVE_MAX_RATIO * pair)
    return out


# --------------------------------------------------------------------------- probes
def _standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu = x[train].mean(axis=0)
    sd = x[train].std(axis=0)
    return (x - mu) / np.where(sd > 1e-8, sd, 1.0)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge weights ``[d+1, T]`` (intercept last, unpenalised) on centred data."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return np.vstack([w, my - mx @ w])


def _apply(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def bag_readings(x: np.ndarray, y: np.ndarray, train: np.ndarray, groups: np.ndarray, n_folds: int) -> tuple[np.ndarray, float]:
    """The layer's single-feature readings of every row, and the chosen ridge penalty.

    Training rows are read by probes fitted on the other CV folds (cross-fitting); held-out
    rows by the probe fitted on all training rows. The penalty minimises the CV error.
    """
    xt, yt, gt = x[train], y[train], groups[train]
    folds = [k for k in range(n_folds) if (gt == k).any() and (gt != k).any()]
    best_alpha, best_err = float(ALPHAS[len(ALPHAS) // 2]), np.inf
    if folds:
        for alpha in ALPHAS:
            err = sum(float(((_apply(xt[gt == k], _ridge(xt[gt != k], yt[gt != k], alpha)) - yt[gt == k]) ** 2).sum())
                      for k in folds)
            if err < best_err:
                best_alpha, best_err = float(alpha), err
    out = _apply(x, _ridge(xt, yt, best_alpha))
    idx = np.flatnonzero(train)
    for k in folds:
        rows = idx[gt == k]
        out[rows] = _apply(x[rows], _ridge(xt[gt != k], yt[gt != k], best_alpha))
    return out, best_alpha


def and_reader(readings: np.ndarray, n_cells: int, role: str) -> np.ndarray:
    """``[n, C]`` scores of the bag reader that binds by location: for each cell, the predicted
    chance that it holds the role's colour times the chance that it holds the role's shape."""
    n = len(readings)
    p = np.clip(readings, 0.0, 1.0)
    colour = p[:, : 2 * n_cells].reshape(n, 2, n_cells)
    shape = p[:, 2 * n_cells : 4 * n_cells].reshape(n, 2, n_cells)
    goal = p[:, 4 * n_cells :] + 1e-9
    gc = goal[:, :2] / goal[:, :2].sum(1, keepdims=True)
    gs = goal[:, 2:] / goal[:, 2:].sum(1, keepdims=True)
    same_colour, same_shape = ROLE_MATCH[role]
    wc = gc if same_colour else gc[:, ::-1]
    ws = gs if same_shape else gs[:, ::-1]
    return np.einsum("nc,ncu->nu", wc, colour) * np.einsum("ns,nsu->nu", ws, shape)


def _logistic_correct(feats: np.ndarray, codes: np.ndarray, train: np.ndarray, test: np.ndarray,
                      groups: np.ndarray, n_folds: int, n_classes: int) -> list[np.ndarray]:
    """Per target (columns of ``codes``): whether the held-out rows are classified right."""
    fits = logistic_cv(feats[train], codes[train], groups[train], n_classes, n_folds, Cs=CS,
                      stop_after_rises=1)
    out = []
    for t, fit in enumerate(fits):
        p = predict_proba((feats[test] - fit.mean) / fit.scale, fit.w, n_classes)
        out.append(p.argmax(axis=1) == codes[test, t])
    return out


def difference_test(diff: np.ndarray, episode_index: np.ndarray, n_episodes: int, seed: int
                    ) -> tuple[list[float], float]:
    """Episode bootstrap of the mean of per-row ``diff`` (rows grouped by episode): its 95%
    interval and the one-sided p-value of "the mean is above 0", ``(1 + #draws <= 0) / (B + 1)``."""
    sums = np.bincount(episode_index, weights=diff, minlength=n_episodes)
    counts = np.bincount(episode_index, minlength=n_episodes).astype(np.float64)
    draws = bootstrap_counts(n_episodes, N_BOOTSTRAP, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws @ sums) / (draws @ counts)
    means = means[np.isfinite(means)]
    p = float((1 + np.count_nonzero(means <= 0)) / (len(means) + 1))
    return percentile_ci(means), p


def probe_layer(x: np.ndarray, scenes: Scenes, train: np.ndarray, test: np.ndarray, groups: np.ndarray,
                n_folds: int, test_episode_index: np.ndarray, n_test_episodes: int, seed: int = 0) -> dict[str, Any]:
    """Single-feature, conjunction and bag probes of one layer ``x`` [n, d]; see the module doc."""
    x = _standardise(np.asarray(x, dtype=np.float64), train)
    n_cells = len(scenes.cells)
    y_bag = bag_targets(scenes)
    readings, alpha = bag_readings(x, y_bag, train, groups, n_folds)
    pt, yt = readings[test], y_bag[test]
    maps = 4 * n_cells
    features = {
        "colour_map_accuracy": float(((pt[:, : 2 * n_cells] > 0.5) == (yt[:, : 2 * n_cells] > 0.5)).mean()),
        "shape_map_accuracy": float(((pt[:, 2 * n_cells : maps] > 0.5) == (yt[:, 2 * n_cells : maps] > 0.5)).mean()),
        "goal_colour_accuracy": float((pt[:, maps : maps + 2].argmax(1) == scenes.goal_colour[test]).mean()),
        "goal_shape_accuracy": float((pt[:, maps + 2 :].argmax(1) == scenes.goal_shape[test]).mean()),
        "ridge_alpha": alpha,
    }
    codes = np.stack([scenes.role_cell[r] for r in ROLES], axis=1)
    conj = _logistic_correct(x, codes, train, test, groups, n_folds, n_cells)
    scores = {role: and_reader(readings, n_cells, role) for role in ROLES}  # [n, C] each
    and_feats = np.log(np.concatenate(list(scores.values()), axis=1) + 1e-3)
    bag_fit = _logistic_correct(and_feats, codes, train, test, groups, n_folds, n_cells)
    out: dict[str, Any] = {"features": features, "conjunctions": {}}
    for i, role in enumerate(ROLES):
        bag_and = scores[role][test].argmax(axis=1) == codes[test, i]
        bags = {"bag_and": bag_and, "bag_and_fit": bag_fit[i]}
        best = max(bags, key=lambda name: float(bags[name].mean()))
        diff = conj[i].astype(np.float64) - bags[best].astype(np.float64)
        ci, p = difference_test(diff, test_episode_index, n_test_episodes, seed)
        counts = np.bincount(codes[test, i], minlength=n_cells)
        out["conjunctions"][role] = {
            "probe": float(conj[i].mean()),
            "bag_and": float(bag_and.mean()),
            "bag_and_fit": float(bag_fit[i].mean()),
            "best_bag": best,
            "chance": float(counts.max() / counts.sum()),
            "difference": float(diff.mean()),
            "difference_ci": ci,
            "p_value": p,
            "bound_uncorrected": bool(ci[0] > 0),
        }
    return out


def correct_for_many_tests(layers: dict[str, dict[str, Any]]) -> int:
    """Holm's correction over every (layer, role) test of a file: each test's ``p_holm`` and
    ``bound`` (``p_holm < SIGNIFICANCE``), each layer's ``bound`` roles. Returns the number of tests."""
    tests = [(layer, role) for layer, res in layers.items() for role in res["conjunctions"]]
    adjusted = holm([layers[layer]["conjunctions"][role]["p_value"] for layer, role in tests])
    for (layer, role), p_holm in zip(tests, adjusted):
        c = layers[layer]["conjunctions"][role]
        c["p_holm"] = p_holm
        c["bound"] = bool(p_holm < SIGNIFICANCE)
    for res in layers.values():
        res["bound"] = [r for r in ROLES if res["conjunctions"][r]["bound"]]
    return len(tests)


def probe_file(path: Path | str, hooks: Sequence[str] | None = None, *, test_fraction: float = 0.25,
               seed: int = 0, with_input: bool = True, progress: bool = False) -> dict[str, Any]:
    """Run the conjunction-vs-bag test on every hook (and the observation) of a recording.

    Parameters
    ----------
    path:
        A Binding-v0 activation file.
    hooks:
        Hook names (default: every ``/acts`` hook).
    test_fraction, seed:
        The episode split (``probes.splits.split_episodes``).
    with_input:
        Also test the observation (source ``obs``): where the network starts from.
    progress:
        One line per layer on stderr.
    """
    with ActivationFile(path) as f:
        available = f.hooks
        chosen = list(hooks) if hooks else available
        unknown = [h for h in chosen if h not in available]
        if unknown:
            raise ProbeError(f"no hook(s) {', '.join(unknown)} in {Path(path).name} (has {', '.join(available)})")
        scenes = read_scenes(f)
        episodes = f.episodes()
        try:
            split = split_episodes(np.unique(episodes), test_fraction=test_fraction, seed=seed)
        except ValueError as exc:
            raise ProbeError(str(exc)) from None
        group = split.groups_of(episodes)
        test = group == split.test_group
        train = ~test
        test_ep_index = split.test_index_of(episodes[test])
        n_test_eps = len(split.test_episodes)
        sources = ([INPUT_SOURCE] if with_input else []) + chosen
        result: dict[str, Any] = {
            "file": str(Path(path).resolve()), "env_id": f.attrs.get("env_id"), "cells": scenes.cells.tolist(),
            "train_episodes": len(split.train_episodes), "test_episodes": n_test_eps,
            "test_rows": int(test.sum()), "reach": reach_rates(f), "layers": {},
        }
        for src in sources:
            x = f.steps("obs") if src == INPUT_SOURCE else f.acts(src)
            x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
            layer = probe_layer(x, scenes, train, test, group, split.n_folds, test_ep_index, n_test_eps, seed)
            result["layers"][src] = layer
            if progress:
                raw = [r for r in ROLES if layer["conjunctions"][r]["bound_uncorrected"]]
                print(f"{src}: above the bag before correction: {', '.join(raw) or 'none'}", file=sys.stderr)
        result["n_tests"] = correct_for_many_tests(result["layers"])
        result["correction"] = "holm"
    return result


def format_table(result: dict[str, Any]) -> str:
    """One line per layer and role: probe vs bag accuracy, the interval and the verdict."""
    lines = [f"{'layer':<34} {'role':<12} {'probe':>6} {'bag_and':>7} {'and_fit':>7}  {'diff [95% CI]':<24} "
             f"{'p':>7} {'p_holm':>7} verdict"]
    for layer, res in result["layers"].items():
        for role, c in res["conjunctions"].items():
            lo, hi = c["difference_ci"]
            lines.append(f"{layer:<34} {role:<12} {c['probe']:>6.3f} {c['bag_and']:>7.3f} {c['bag_and_fit']:>7.3f}  "
                         f"{c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]{'':<3} {c['p_value']:>7.4f} {c['p_holm']:>7.4f} "
                         f"{'bound' if c['bound'] else 'bag'}")
    lines.append(f"bound = the conjunction probe beats the best bag probe, p_holm < {SIGNIFICANCE} "
                 f"(Holm over the file's {result.get('n_tests', 0)} tests)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ScriptParser(prog="python -m probes.binding",
                          description="Conjunction probes vs bag-of-features probes on a Binding-v0 recording.")
    parser.add_argument("file", type=Path, help="activation file (.h5) of lab/Binding-v0")
    parser.add_argument("--hooks", default=None, help="comma-separated hook names (default: all)")
    parser.add_argument("--no-input", action="store_true", help="skip the observation (source 'obs')")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="held-out episodes (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode split (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args(argv)
    try:
        if not 0.0 < args.test_fraction < 1.0:
            raise ProbeError(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
        if not args.file.exists():
            raise ProbeError(f"no such activation file: {args.file}")
        hooks = [h for h in args.hooks.split(",") if h] if args.hooks else None
        result = probe_file(args.file, hooks, test_fraction=args.test_fraction, seed=args.seed,
                            with_input=not args.no_input, progress=True)
    except ProbeError as exc:
        print(f"probes.binding: error: {exc}", file=sys.stderr)
        return 2
    reach = result["reach"]
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_table(result))
        if reach:
            print(f"reached over {reach['episodes']} episodes: " + ", ".join(f"{r} {reach[r]:.1%}" for r in (*ROLES, "none")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
