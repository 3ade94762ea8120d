"""Steering the target-cell (conjunction) direction of a ``lab/Binding-v0`` agent.

The conjunction probe of ``probes.binding`` reads, from one layer, the cell of the *target* (the
object with the goal's colour AND shape). With ``layout="corners"`` that is one of four classes,
the four corners. This experiment asks whether the agent *uses* that reading: adding the probe's
direction for corner ``j`` ("the target is at corner j") should send the agent to whatever object
sits at corner ``j`` — the object of the steered conjunction — and not to an object sharing only
its colour or only its shape.

1. On the training episodes of the lab's episode split (``probes.splits.split_episodes``, test
   fraction 0.25, seed 0: the split of ``python -m probes.binding``) a multinomial logistic probe
   (``probes.logistic.logistic_cv``, the Cs of ``probes.binding``) is fitted from ``HOOK`` onto the
   target's corner; its accuracy on the held-out episodes is recorded. Its weights are mapped back
   to raw activations (the probe reads standardised ones); corner ``j``'s direction is the class
   weight ``w_j`` minus the mean class weight, normalised (a contrast: adding it raises logit
   ``j`` against the others). One unit of scale is the standard deviation of the projection onto
   it over the recording (``rl_lab.steer.directions.hook_stats``), as in ``rl-lab steer``.
2. Live rollouts with the lab's machinery (``rl_lab.steer.rollout.rollout_rows``, common random
   numbers): the clean policy, and for each corner its direction at each scale and each of
   ``K`` random control directions (``control_directions``, the same ``K`` for every corner) added
   with the same norm. Episode ``e`` of every condition uses env seed ``seed + e``; its layout
   (which role sits in which corner) is read from the reset of an environment made the same way.
3. Each episode's end is classified by the reached object's relation to the steered one (the
   object at corner ``j``): ``steered``, ``colour_only`` (shares only its colour), ``shape_only``,
   ``neither`` (shares no feature) or ``none`` (no object reached: truncated); and by its role
   (``target``, ``colour_lure``, ``shape_lure``, ``foil``, ``none``).
4. Per scale: the steered-object rate of the direction against the controls' (control percentile
   and empirical p = (1 + #controls >= direction) / (K + 1)) with a 95% episode-bootstrap interval,
   per corner and pooled over the four corners (the headline).

Script: ``python -m rl_lab.steer.binding RUN --hook HOOK [--runs-dir DIR] [--episodes N]
[--controls K] [--scales 0,2,4,8] [--seed S] [--activations FILE] [--json]``; the document goes
to ``RUN/steer/binding-<time>.json``. See ``docs/steer.md`` ("Binding: steering the target cell").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from probes.activations import ActivationFile
from probes.binding import CS, ROLE_MATCH, ROLES, read_scenes
from probes.errors import ProbeError
from probes.logistic import logistic_cv, predict_proba
from probes.scripts import ScriptParser
from probes.splits import split_episodes
from rl_lab.devices import one_torch_thread
from rl_lab.errors import LabError
from rl_lab.runs import Run, RunStore, checkpoint_step, json_default, now_iso, write_json_atomic
from rl_lab.steer.analysis import Bootstrap, ci, control_rank
from rl_lab.steer.directions import (
    Direction,
    DirectionSpec,
    HookStats,
    control_directions,
    hook_stats,
    latest_activation_file,
)
from rl_lab.steer.experiment import build_edits, checkpoint_for
from rl_lab.steer.intervene import Edit
from rl_lab.steer.policies import load_policy
from rl_lab.steer.rollout import rollout_rows
from rl_lab.train import ProgressFn, make_policy_env

SCHEMA_VERSION = 1
KIND = "binding_steer"
"""The document's ``kind`` (beside ``rl-lab steer``'s and ``rl-lab intervene``'s in ``RUN/steer/``)."""
DEFAULT_SCALES = [0.0, 2.0, 4.0, 8.0]
DEFAULT_EPISODES = 40
DEFAULT_CONTROLS = 20
TEST_FRACTION = 0.25
SPLIT_SEED = 0
"""The episode split of ``python -m probes.binding`` (its defaults)."""
OUTCOMES = ("steered", "colour_only", "shape_only", "neither", "none")
"""How an episode ended, relative to the steered object (the one at the steered corner)."""
ROLE_OUTCOMES = (*ROLES, "none")
"""How an episode ended, by the reached object's role (relative to the goal)."""
OUTPUT_PREFIX = "binding-"
"""Stem prefix of the document in ``RUN/steer/``."""


@dataclass
class BindingSteerConfig:
    """Everything that determines a target-cell steering experiment."""

    hook: str
    """Where the probe reads and the edit is applied (a hook of the activation file)."""
    episodes: int = DEFAULT_EPISODES
    """Episodes per condition (the same env seeds and action noise for every condition)."""
    controls: int = DEFAULT_CONTROLS
    """Random directions (alternately isotropic and covariance-drawn), each at every scale and
    corner with the norm of that corner's direction."""
    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))
    """Doses in standard deviations of the projection onto the direction (0 = clean)."""
    seed: int = 0
    """Episode ``e`` uses env seed ``seed + e``; also seeds the action noise, controls and bootstrap."""
    activations: str | None = None
    """Activation file for the probe and the units; default the run's latest."""
    n_boot: int = 2000
    """Bootstrap resamples of the episodes."""


# --------------------------------------------------------------------------- outcomes
def relation(reached_role: int, steered_role: int) -> int:
    """Index into ``OUTCOMES`` of an episode that reached role ``reached_role`` (index into
    ``ROLES``, -1: none) when the steered object is role ``steered_role``."""
    if reached_role < 0:
        return OUTCOMES.index("none")
    if reached_role == steered_role:
        return OUTCOMES.index("steered")
    rc, rs = ROLE_MATCH[ROLES[reached_role]]
    sc, ss = ROLE_MATCH[ROLES[steered_role]]
    # Two colours and two shapes: two objects share a colour iff both match the goal's or neither does.
    if rc == sc:
        return OUTCOMES.index("colour_only")
    if rs == ss:
        return OUTCOMES.index("shape_only")
    return OUTCOMES.index("neither")


def classify(role_at_corner: np.ndarray, corner: int, reached: np.ndarray) -> np.ndarray:
    """``[E]`` outcome codes (indices into ``OUTCOMES``) of episodes steered towards ``corner``.

    ``role_at_corner`` [E, 4]: the role (index into ``ROLES``) at each corner of each episode;
    ``reached`` [E]: the role reached (-1: none).
    """
    steered = role_at_corner[:, corner]
    return np.array([relation(int(r), int(s)) for r, s in zip(reached, steered)], dtype=np.int64)


def rates(codes: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Fraction of the episodes with each code (``names[i]`` for code ``i``; -1 is the last name)."""
    codes = np.where(codes < 0, len(names) - 1, codes)
    counts = np.bincount(codes, minlength=len(names))
    return {name: float(counts[i] / max(len(codes), 1)) for i, name in enumerate(names)}


def reached_roles(values: dict[str, np.ndarray]) -> np.ndarray:
    """Per rollout row, the role reached (index into ``ROLES``; -1 none) from the episode totals
    of the env's ``reached_<role>`` behaviour events."""
    hits = np.stack([values[f"reached_{r}"] for r in ROLES], axis=1) > 0  # [N, 4]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1).astype(np.int64)


CONFLICT_OUTCOMES = ("steered", "target", "other", "none")
"""Where an episode ended when the steered corner does not hold the target (the steered object
against the goal's own)."""


def conflict_rates(role_at_corner: np.ndarray, corners: Sequence[int], reached: Sequence[np.ndarray]) -> dict[str, Any]:
    """Outcome rates over the (episode, corner) pairs whose steered corner holds another object
    than the target: the steered object, the target, another object or none (``CONFLICT_OUTCOMES``).

    ``reached[i]`` [E] are the roles reached when steering ``corners[i]``; ``episodes`` counts the pairs.
    """
    target = ROLES.index("target")
    counts = dict.fromkeys(CONFLICT_OUTCOMES, 0)
    n = 0
    for j, r in zip(corners, reached):
        mask = role_at_corner[:, j] != target
        r, steered = np.asarray(r)[mask], role_at_corner[mask, j]
        counts["steered"] += int((r == steered).sum())
        counts["target"] += int((r == target).sum())
        counts["none"] += int((r < 0).sum())
        counts["other"] += int(((r >= 0) & (r != steered) & (r != target)).sum())
        n += int(mask.sum())
    return {"episodes": n, **{k: (v / n if n else None) for k, v in counts.items()}}


# --------------------------------------------------------------------------- the probe
@dataclass
class TargetCellProbe:
    """The multinomial probe of the target's corner at one hook, and its contrast directions."""

    cells: np.ndarray
    """``[4, 2]`` the corners (row, col), in class order."""
    directions: np.ndarray
    """``[4, d]`` unit contrast direction of each class (in raw activation space)."""
    raw_norms: np.ndarray
    """``[4]`` norm of each contrast before normalisation."""
    accuracy: float
    """Held-out accuracy (test episodes of the split)."""
    chance: float
    """Frequency of the commonest corner among the held-out rows."""
    C: float
    train_episodes: int
    test_episodes: int
    test_rows: int


def corner_name(cell: Sequence[int]) -> str:
    """``top-left``, ``top-right``, ``bottom-left`` or ``bottom-right`` for a corner cell."""
    return f"{'top' if int(cell[0]) == 0 else 'bottom'}-{'left' if int(cell[1]) == 0 else 'right'}"


def fit_target_cell_probe(act_path: Path, hook: str) -> TargetCellProbe:
    """Fit the target-cell probe at ``hook`` on the training episodes of ``act_path``.

    Raises ``LabError`` for a file that is not a corners-layout Binding-v0 recording (no
    ``target_row`` labels, not four object cells) or has no such hook.
    """
    with ActivationFile(act_path) as f:
        if "target_row" not in f.labels or "target_col" not in f.labels:
            raise LabError(f"{act_path.name} has no target_row/target_col labels: it is not a "
                           "lab/Binding-v0 recording")
        if hook not in f.hooks:
            raise LabError(f"unknown hook {hook!r} in {act_path.name} (available: {', '.join(f.hooks)})")
        try:
            scenes = read_scenes(f)
        except ProbeError as exc:
            raise LabError(str(exc)) from None
        if len(scenes.cells) != 4:
            raise LabError(f"{act_path.name} has objects on {len(scenes.cells)} cells; the target-cell "
                           "steering needs layout='corners' (four objects in the four corners)")
        episodes = f.episodes()
        x = np.asarray(f.acts(hook), dtype=np.float64).reshape(len(episodes), -1)
    try:
        split = split_episodes(np.unique(episodes), test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    group = split.groups_of(episodes)
    test = group == split.test_group
    train = ~test
    codes = scenes.role_cell["target"].astype(np.int64)
    missing = sorted(set(range(4)) - set(codes[train].tolist()))
    if missing:
        raise LabError(f"the target is never at {', '.join(corner_name(scenes.cells[m]) for m in missing)} "
                       f"on the training episodes of {act_path.name}: record more episodes")
    fit = logistic_cv(x[train], codes[train], group[train], 4, split.n_folds, Cs=CS, stop_after_rises=1)[0]
    p = predict_proba((x[test] - fit.mean) / fit.scale, fit.w, 4)
    accuracy = float((p.argmax(axis=1) == codes[test]).mean()) if test.any() else float("nan")
    counts = np.bincount(codes[test], minlength=4)
    w_raw = fit.w[:-1] / fit.scale[:, None]  # [d, 4]: the logits' weights on raw activations
    contrast = (w_raw - w_raw.mean(axis=1, keepdims=True)).T  # [4, d]
    norms = np.linalg.norm(contrast, axis=1)
    if not np.all(norms > 0):
        raise LabError(f"the target-cell probe at {hook!r} has a zero direction (the layer does not vary)")
    return TargetCellProbe(cells=scenes.cells.astype(np.int64), directions=contrast / norms[:, None],
                           raw_norms=norms, accuracy=accuracy,
                           chance=float(counts.max() / max(counts.sum(), 1)), C=float(fit.C),
                           train_episodes=len(split.train_episodes), test_episodes=len(split.test_episodes),
                           test_rows=int(test.sum()))


def corner_direction(probe: TargetCellProbe, j: int, hook: str, stats: HookStats, act_path: Path) -> Direction:
    """Corner ``j``'s contrast direction as a ``Direction`` (its projection's mean and s.d. as units)."""
    name = corner_name(probe.cells[j])
    u = probe.directions[j]
    mu, sd = stats.projection(u)
    if not sd > 0:
        raise LabError(f"the projection onto the {name} direction never varies at {hook!r}")
    spec = DirectionSpec(kind="probe", text=f"probe:target_cell={name}@{hook}", label="target_cell",
                         label_class=name, hook=hook)
    return Direction(spec=spec, hook=hook, vector=u, raw_norm=float(probe.raw_norms[j]), mean=mu, std=sd,
                     activations=act_path, source=str(act_path), stats=stats)


def episode_layouts(env_factory: Callable[[], Any], seed: int, episodes: int, cells: np.ndarray) -> np.ndarray:
    """``[E, 4]`` the role (index into ``ROLES``) at each corner (class order of ``cells``) of
    episode ``e`` = the env reset with seed ``seed + e``, as ``rollout_rows`` resets it."""
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(cells)}
    out = np.full((episodes, 4), -1, dtype=np.int64)
    env = env_factory()
    try:
        for e in range(episodes):
            _, info = env.reset(seed=seed + e)
            latents = info.get("latents") if isinstance(info, dict) else None
            if not latents or "target_row" not in latents:
                raise LabError("the environment's reset gives no Binding latents (target_row, ...): "
                               "is this a lab/Binding-v0 run?")
            for k, role in enumerate(ROLES):
                cell = (int(latents[f"{role}_row"]), int(latents[f"{role}_col"]))
                if cell not in index:
                    raise LabError(f"the {role} of episode {e} is at {cell}, not a corner of the recording")
                out[e, index[cell]] = k
    finally:
        env.close()
    if (out < 0).any():
        raise LabError("a corner holds no object in some episode: the run's env is not layout='corners'")
    return out


# --------------------------------------------------------------------------- the experiment
def check_scales(scales: Sequence[float]) -> list[float]:
    """The scales if they are usable (finite, >= 0, at least one above 0), else ``LabError``."""
    values = [float(s) for s in scales]
    if not values:
        raise LabError("--scales needs at least one value")
    if not all(math.isfinite(s) and s >= 0 for s in values):
        raise LabError(f"--scales must be finite numbers >= 0 (standard deviations towards the corner), got {values}")
    if not any(s > 0 for s in values):
        raise LabError("--scales needs at least one scale above 0")
    if len(set(values)) != len(values):
        raise LabError(f"--scales repeats a value: {values}")
    return values


def steer_binding(run_name: str | Path, cfg: BindingSteerConfig, runs_dir: Path | str | None = None,
                  progress: ProgressFn | None = None, write: bool = True,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the experiment and return its document (also written to ``RUN/steer/binding-<time>.json``).

    Every input is checked before anything is written. ``log`` receives a few progress lines.
    """
    with one_torch_thread():
        return _steer_binding(run_name, cfg, runs_dir, progress, write, log or (lambda _: None))


def _steer_binding(run_name: str | Path, cfg: BindingSteerConfig, runs_dir: Path | str | None,
                   progress: ProgressFn | None, write: bool, log: Callable[[str], None]) -> dict[str, Any]:
    if cfg.episodes < 2:
        raise LabError("--episodes must be at least 2 (confidence intervals need several episodes)")
    if cfg.controls < 0:
        raise LabError("--controls must be 0 or more")
    scales = check_scales(cfg.scales)
    run = RunStore(runs_dir).get(run_name)
    if cfg.activations:
        act_path = Path(cfg.activations)
        if not act_path.is_file():
            raise LabError(f"no activation file {act_path}")
    else:
        act_path = latest_activation_file(run)
    hook = cfg.hook
    probe = fit_target_cell_probe(act_path, hook)
    log(f"target-cell probe at {hook}: held-out accuracy {probe.accuracy:.3f} (chance {probe.chance:.3f}, "
        f"{probe.test_episodes} test episodes)")
    stats = hook_stats(act_path, hook)
    dirs = [corner_direction(probe, j, hook, stats, act_path) for j in range(4)]
    ckpt = checkpoint_for(run, act_path, None)

    run_cfg = run.info.get("config", {})
    env_id = run.info.get("env_id") or run_cfg.get("env_id")
    env_kwargs = run_cfg.get("env_kwargs") or {}

    def env_factory() -> Any:  # as the policy sees it (a transformer policy reads a history vector)
        return make_policy_env({**run_cfg, "env_id": env_id, "env_kwargs": env_kwargs})

    E, S, K = cfg.episodes, len(scales), cfg.controls
    layouts = episode_layouts(env_factory, cfg.seed, E, probe.cells)
    torch.manual_seed(cfg.seed)
    policy = load_policy(run, ckpt, hook, device="cpu")
    d = stats.dim
    note = policy.action_path_note(env_factory, cfg.seed, hook, d)  # type: ignore[attr-defined]
    notes: list[str] = [note] if note else []
    if K < DEFAULT_CONTROLS:
        notes.append(f"only {K} random controls: a control percentile from fewer than {DEFAULT_CONTROLS} is "
                     f"coarse (the smallest p-value possible is 1/{K + 1})")

    control_vecs, kinds = control_directions(stats, K, cfg.seed)
    # Conditions: clean, then per corner its S direction edits and K x S control edits.
    conditions: list[Edit] = [Edit.clean(d)]
    for direction in dirs:
        dir_edits, ctl_edits = build_edits(direction, "add", scales, control_vecs)
        conditions += dir_edits + [e for row in ctl_edits for e in row]
    per_corner = S + K * S
    edits = [c for c in conditions for _ in range(E)]
    episode_index = [e for _ in conditions for e in range(E)]
    log(f"rolling out {len(conditions)} conditions x {E} episodes = {len(edits)} episodes")
    t0 = time.time()
    metrics = rollout_rows(policy, env_factory, edits, episode_index, cfg.seed, progress=progress)
    elapsed = time.time() - t0
    if "reached_target" not in metrics.values:
        raise LabError("the environment reports no reached_target behaviour: is this a lab/Binding-v0 run?")
    reached = reached_roles(metrics.values).reshape(len(conditions), E)  # [C, E]

    def block(j: int, k: int | None, s: int) -> np.ndarray:  # reached roles [E] of one condition
        base = 1 + j * per_corner
        return reached[base + s] if k is None else reached[base + S + k * S + s]

    boot = Bootstrap.make(E, cfg.n_boot, cfg.seed)
    steered_code = OUTCOMES.index("steered")

    def summary(codes: list[np.ndarray], roles: list[np.ndarray]) -> dict[str, Any]:
        """Rates pooled over the given corners' episodes (each corner weighs the same)."""
        return {"rates": {o: float(np.mean([rates(c, OUTCOMES)[o] for c in codes])) for o in OUTCOMES},
                "role_rates": {r: float(np.mean([rates(x, ROLE_OUTCOMES)[r] for x in roles])) for r in ROLE_OUTCOMES}}

    def conflict(corners: list[int], roles: list[np.ndarray]) -> dict[str, Any]:
        """Over the (episode, corner) pairs whose steered corner does not hold the target: where the
        agent went (the steered object, the target, another object, none)."""
        return conflict_rates(layouts, corners, roles)

    def steered_of(codes: list[np.ndarray]) -> np.ndarray:  # [E] per episode, mean over corners
        return np.mean([c == steered_code for c in codes], axis=0)

    def scale_block(corners: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        clean_codes = [classify(layouts, j, reached[0]) for j in corners]
        clean_roles = [reached[0] for _ in corners]
        clean_steered = steered_of(clean_codes)
        clean = {**summary(clean_codes, clean_roles), "steered": float(clean_steered.mean()),
                 "steered_ci": ci(boot.means(clean_steered)), "conflict": conflict(corners, clean_roles)}
        results = []
        for s, scale in enumerate(scales):
            d_codes = [classify(layouts, j, block(j, None, s)) for j in corners]
            d_roles = [block(j, None, s) for j in corners]
            d_steered = steered_of(d_codes)
            c_codes = [[classify(layouts, j, block(j, k, s)) for j in corners] for k in range(K)]
            c_roles = [[block(j, k, s) for j in corners] for k in range(K)]
            c_means = [float(steered_of(cc).mean()) for cc in c_codes]
            mean = float(d_steered.mean())
            interval = ci(boot.means(d_steered))
            rank = control_rank(mean, c_means, "up")
            results.append({
                "scale": scale,
                **summary(d_codes, d_roles),
                "steered": mean,
                "steered_ci": interval,
                "effect": mean - clean["steered"],
                "effect_ci": ci(boot.means(d_steered - clean_steered)),
                "conflict": conflict(corners, d_roles),
                "ci_excludes_clean": bool(interval[0] > clean["steered"] or interval[1] < clean["steered"]),
                "controls": {
                    "steered_means": c_means,
                    "mean": float(np.mean(c_means)) if K else None,
                    "max": float(np.max(c_means)) if K else None,
                    "per_control": [summary(cc, cr) for cc, cr in zip(c_codes, c_roles)],
                },
                "beats_every_control": bool(K > 0 and mean > max(c_means)),
                "control_percentile": rank["control_percentile"],
                "control_p_value": rank["control_p_value"],
            })
        return clean, results

    corners_doc = []
    for j, direction in enumerate(dirs):
        clean_j, results_j = scale_block([j])
        corners_doc.append({"corner": j, "cell": probe.cells[j].tolist(), "name": corner_name(probe.cells[j]),
                            "direction": direction.describe(), "clean": clean_j, "results": results_j})
    clean_all, results_all = scale_block([0, 1, 2, 3])
    verdict = _verdict(results_all, clean_all, scales, K)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "created": now_iso(),
        "run": run.name,
        "algo": run.info.get("algo"),
        "checkpoint": ckpt.stem,
        "checkpoint_step": checkpoint_step(ckpt),
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "hook": hook,
        "activations": str(act_path),
        "scales": scales,
        "scale_unit": "1 = one standard deviation of the projection onto the corner's unit direction over the "
                      "recording (each corner's own); controls are added with the same norm",
        "episodes": E,
        "n_controls": K,
        "seed": cfg.seed,
        "device": "cpu",
        "config": asdict(cfg),
        "probe": {
            "label": "target cell (target_row, target_col)",
            "classes": [corner_name(c) for c in probe.cells],
            "cells": probe.cells.tolist(),
            "held_out_accuracy": probe.accuracy,
            "chance": probe.chance,
            "C": probe.C,
            "split": {"test_fraction": TEST_FRACTION, "seed": SPLIT_SEED, "train_episodes": probe.train_episodes,
                      "test_episodes": probe.test_episodes, "test_rows": probe.test_rows},
            "direction_rule": "class weight minus the mean class weight (raw activation space), normalised",
            "cosines": (probe.directions @ probe.directions.T).round(6).tolist(),
        },
        "outcomes": list(OUTCOMES),
        "roles": list(ROLE_OUTCOMES),
        "layouts": [[ROLES[r] for r in row] for row in layouts],
        "controls": [{"index": k, "kind": kinds[k],
                      "cosine_with_directions": [float(c @ u) for u in probe.directions]}
                     for k, c in enumerate(control_vecs)],
        "pooled": {"clean": clean_all, "results": results_all},
        "corners": corners_doc,
        "verdict": verdict,
        "summary": verdict["sentence"],
        "notes": notes,
        "elapsed_seconds": round(elapsed, 2),
    }
    if write:
        doc["path"] = str(_write(run, doc))
    return doc


def _verdict(results: list[dict[str, Any]], clean: dict[str, Any], scales: list[float], K: int) -> dict[str, Any]:
    """The headline: at the largest scale, does the pooled steered-object rate beat every control
    with an interval that excludes the clean rate; and where do the misses go."""
    top = results[int(np.argmax(scales))]
    moves = bool(top["beats_every_control"] and top["steered_ci"][0] > clean["steered"])
    r = top["rates"]
    single = r["colour_only"] + r["shape_only"]
    misses = single + r["neither"] + r["none"]
    sharers_more = bool(single / 2 > r["neither"])
    head = ("steering the target-cell direction moves the agent to the steered object" if moves else
            "steering the target-cell direction does not move the agent to the steered object beyond the controls")
    sentence = (f"{head}: at scale {top['scale']:g} the steered object is reached in {top['steered']:.1%} "
                f"[{top['steered_ci'][0]:.1%}, {top['steered_ci'][1]:.1%}] of episodes (clean {clean['steered']:.1%}; "
                f"best of {K} controls {top['controls']['max']:.1%}, p = {top['control_p_value']:.3g})"
                if K else
                f"{head}: at scale {top['scale']:g} the steered object is reached in {top['steered']:.1%} "
                f"[{top['steered_ci'][0]:.1%}, {top['steered_ci'][1]:.1%}] of episodes (clean {clean['steered']:.1%}; "
                "no controls)")
    sentence += (f". Misses: {single:.1%} to the two single-feature sharers ({r['colour_only']:.1%} colour, "
                 f"{r['shape_only']:.1%} shape), {r['neither']:.1%} to the object sharing neither feature, "
                 f"{r['none']:.1%} to no object (timeout); ")
    if single + r["neither"] > 0:
        sentence += (f"per object the misses go {'more' if sharers_more else 'no more'} to a single-feature sharer "
                     f"({single / 2:.1%} each) than to the neither-sharer ({r['neither']:.1%}).")
    else:
        sentence += "no miss reached another object."
    c = top["conflict"]
    if c["episodes"]:
        sentence += (f" Where the steered corner holds another object than the target ({c['episodes']} episode-corner "
                     f"pairs) the agent reached that object in {c['steered']:.1%} and the target in "
                     f"{c['target']:.1%} (clean: {clean['conflict']['steered']:.1%} and "
                     f"{clean['conflict']['target']:.1%}).")
    return {"scale": top["scale"], "moves_to_steered_object": moves, "steered": top["steered"],
            "conflict": c, "clean_conflict": clean["conflict"],
            "steered_ci": top["steered_ci"], "clean_steered": clean["steered"],
            "controls_max": top["controls"]["max"], "control_p_value": top["control_p_value"],
            "misses": {"total": misses, "single_feature": single, "colour_only": r["colour_only"],
                       "shape_only": r["shape_only"], "neither": r["neither"], "none": r["none"]},
            "misses_favour_single_feature_sharers": sharers_more, "sentence": sentence}


def _write(run: Run, doc: dict[str, Any]) -> Path:
    run.steer_dir.mkdir(parents=True, exist_ok=True)
    stamp = OUTPUT_PREFIX + time.strftime("%Y%m%d-%H%M%S")
    path, i = run.steer_path(stamp), 1
    while path.exists():
        path, i = run.steer_path(f"{stamp}-{i}"), i + 1
    doc["path"] = str(path)
    write_json_atomic(path, doc)
    return path


# --------------------------------------------------------------------------- text
def format_table(doc: dict[str, Any]) -> str:
    """Per scale: the pooled outcome rates of the direction, its steered-object rate against the
    controls, then one line per corner; the verdict last."""
    p = doc["probe"]
    lines = [f"binding steer {doc['run']}  hook {doc['hook']}  checkpoint {doc['checkpoint']}",
             f"target-cell probe: held-out accuracy {p['held_out_accuracy']:.3f} (chance {p['chance']:.3f}); "
             f"{doc['episodes']} episodes per condition, {doc['n_controls']} controls",
             "",
             f"{'':<14}{'scale':>6}  {'steered [95% CI]':<24}{'colour':>7}{'shape':>7}{'neither':>8}{'none':>6}"
             f"  {'ctrl mean':>9}{'ctrl max':>9}{'pct':>6}{'p':>7}"]

    def row(label: str, res: dict[str, Any], clean: bool = False) -> str:
        r = res["rates"]
        lo, hi = res["steered_ci"]
        cell = f"{res['steered']:.1%} [{lo:.1%}, {hi:.1%}]"
        head = f"{label:<14}{'clean' if clean else format(res['scale'], 'g'):>6}  {cell:<24}"
        tail = ""
        if not clean and res["controls"]["mean"] is not None:
            tail = (f"  {res['controls']['mean']:>9.1%}{res['controls']['max']:>9.1%}"
                    f"{res['control_percentile']:>6.0f}{res['control_p_value']:>7.3f}")
        return (f"{head}{r['colour_only']:>7.1%}{r['shape_only']:>7.1%}{r['neither']:>8.1%}{r['none']:>6.1%}"
                + tail + (" *" if not clean and res["beats_every_control"] else ""))

    lines.append(row("pooled", doc["pooled"]["clean"], clean=True))
    for res in doc["pooled"]["results"]:
        lines.append(row("pooled", res))
    for c in doc["corners"]:
        for res in c["results"]:
            lines.append(row(c["name"], res))
    lines += ["", "(* beats every control; rates: the object reached relative to the one at the steered corner)",
              "roles reached, pooled: " + "; ".join(
                  f"scale {res['scale']:g}: " + ", ".join(f"{k} {v:.0%}" for k, v in res["role_rates"].items())
                  for res in doc["pooled"]["results"]),
              "steered corner not the target's: " + "; ".join(
                  f"scale {res['scale']:g}: steered {_pct(res['conflict']['steered'])}, target "
                  f"{_pct(res['conflict']['target'])}" for res in doc["pooled"]["results"]),
              "", doc["summary"]]
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


# --------------------------------------------------------------------------- script
PROG = "python -m rl_lab.steer.binding"


def _scales_arg(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text[:60]!r}") from None
    try:
        return check_scales(values)
    except LabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    from rl_lab.cli import USER_ERRORS, error_line
    from rl_lab.cli.options import accept_negative_numbers, nonnegative_int, positive_int, seed
    from rl_lab.train import tqdm_progress

    parser = ScriptParser(prog=PROG, description="Steer a Binding-v0 agent along the target-cell probe "
                                                 "direction of each corner; reach rates per object vs random controls.")
    accept_negative_numbers(parser)  # "--scales -2,4" reaches _scales_arg, which refuses it in one line
    parser.add_argument("run", metavar="RUN", help="run name (or path to a run directory)")
    parser.add_argument("--hook", required=True, help="hook of the probe and the edit, e.g. mlp_extractor.policy_net.3")
    parser.add_argument("--runs-dir", type=Path, default=None, help="directory holding the runs "
                                                                    "(default: $RL_LAB_RUNS, else ./runs)")
    parser.add_argument("--episodes", type=positive_int, default=DEFAULT_EPISODES,
                        help=f"episodes per condition (default: {DEFAULT_EPISODES})")
    parser.add_argument("--controls", type=nonnegative_int, default=DEFAULT_CONTROLS,
                        help=f"random control directions of equal norm (default: {DEFAULT_CONTROLS})")
    parser.add_argument("--scales", type=_scales_arg, default=list(DEFAULT_SCALES),
                        help="comma-separated doses >= 0 in standard deviations of the projection (default: 0,2,4,8)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of episodes, controls and bootstrap (default: 0)")
    parser.add_argument("--activations", default=None, help="activation file (default: the run's latest)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    args = parser.parse_args(argv)
    cfg = BindingSteerConfig(hook=args.hook, episodes=args.episodes, controls=args.controls, scales=args.scales,
                             seed=args.seed, activations=args.activations)
    progress, close = tqdm_progress("binding steer episodes")
    try:
        doc = steer_binding(args.run, cfg, args.runs_dir, progress=progress,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    except USER_ERRORS as exc:
        if isinstance(exc, KeyboardInterrupt):
            sys.stderr.write(f"{PROG}: interrupted\n")
            return 130
        sys.stderr.write(f"{PROG}: error: {error_line(exc)}\n")
        return 2
    finally:
        close()
    if args.json:
        json.dump(doc, sys.stdout, default=json_default)
        sys.stdout.write("\n")
    else:
        print(format_table(doc))
        print(f"written: {doc['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
