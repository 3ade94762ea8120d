"""A steering experiment: one direction at one hook, a sweep of scales, random controls, statistics.

``steer(run, SteerConfig(direction="diff:threat@mlp_extractor.policy_net.1"))`` rolls the run's
policy out under every condition (clean; the direction at each scale; each random control at
each scale), summarises every behaviour metric with bootstrap CIs, and writes
``RUN/steer/<time>.json``. The schema is in ``docs/steer.md``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_lab.devices import one_torch_thread, resolve_device
from rl_lab.errors import LabError
from rl_lab.record import resolve_checkpoints
from rl_lab.runs import Run, RunStore, checkpoint_step, now_iso, write_json_atomic
from rl_lab.steer.analysis import (
    Bootstrap,
    control_rank,
    dose_statistic,
    expect_verdict,
    parse_expect,
    summarise_metric,
    summary_sentence,
)
from rl_lab.steer.directions import Direction, control_directions, parse_direction, random_subspaces, resolve_direction
from rl_lab.steer.intervene import MODES, Edit, make_edit, subspace_edit
from rl_lab.steer.leace import erasure_scores, fit_leace
from rl_lab.steer.policies import load_policy
from rl_lab.steer.rollout import behaviour_kinds, metric_names, rollout_rows
from rl_lab.train import ProgressFn, make_policy_env

SCHEMA_VERSION = 2
DEFAULT_SCALES: dict[str, list[float]] = {
    "add": [-4.0, -2.0, 0.0, 2.0, 4.0],
    "erase": [0.0, 0.5, 1.0],
    "clamp": [-4.0, -2.0, 0.0, 2.0, 4.0],
    "leace": [0.0, 0.5, 1.0],
}
DEFAULT_CONTROLS = 20


@dataclass
class SteerConfig:
    """Everything that determines a steering experiment."""

    direction: str
    """``probe:LABEL@HOOK``, ``sae:SAE_NAME/LATENT`` or ``diff:LABEL@HOOK``."""
    mode: str = "add"
    """``add`` (scale x unit along the direction), ``erase`` (move the coordinate a fraction
    ``scale`` of the way to 0, or to its mean for an SAE latent) or ``clamp`` (set the coordinate to
    ``mean + scale x std``) or ``leace`` (erase the direction's LABEL at its hook with LEACE, a fraction
    ``scale`` of the way; controls are random subspaces of the same rank)."""
    scales: list[float] | None = None
    """The dose sweep; default per mode (``DEFAULT_SCALES``)."""
    episodes: int = 20
    """Episodes per condition (the same seeds for every condition)."""
    controls: int = DEFAULT_CONTROLS
    """Random directions of the same norm (alternately isotropic and drawn from the activation
    covariance), each run at every scale; in ``leace`` mode random subspaces of the same rank."""
    seed: int = 0
    """Episode i uses env seed ``seed + i``; also seeds the action noise, controls and bootstrap."""
    expect: str | None = None
    """Optional prediction ``"METRIC up|down"`` checked against the dose-response slope."""
    deterministic: bool = False
    """Take each distribution's most likely action instead of sampling."""
    checkpoint: str | None = None
    """Checkpoint to steer: a step or a file; default the one the activation file was recorded from."""
    activations: str | None = None
    """Activation file for the statistics (and diff directions); default the run's latest."""
    n_boot: int = 2000
    """Bootstrap resamples."""
    max_steps: int | None = None
    """Optional cap on each episode's length (the env's own limit applies anyway)."""
    device: str = "cpu"
    """Where the network (and an SAE direction's SAE) runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (``rl_lab.devices.resolve_device``); the document's ``device`` names the one used."""

    def resolved_scales(self) -> list[float]:
        scales = list(self.scales) if self.scales is not None else list(DEFAULT_SCALES.get(self.mode, []))
        if not scales:
            raise LabError("--scales needs at least one value")
        return scales


def checkpoint_for(run: Run, act_path: Path, which: str | None) -> Path:
    """``which`` if given, else the checkpoint the activation file was recorded from, else the latest."""
    if which:
        return resolve_checkpoints(run, which)[0]
    recorded = [c for c in run.checkpoints() if c.stem == act_path.stem]
    return recorded[0] if recorded else resolve_checkpoints(run, "latest")[0]


def _scale_unit(direction: Direction, mode: str) -> str:
    coord = "the SAE latent's activation" if direction.spec.kind == "sae" else "the projection onto the unit direction"
    if mode == "add":
        return (f"1 = one standard deviation of {coord} over the recording ({direction.std:.4g}); "
                f"added vector norm = |scale| x {direction.std * float(np.linalg.norm(direction.vector)):.4g}")
    if mode == "leace":
        return (f"fraction of the LEACE erasure of {direction.spec.label!r} applied: 0 = clean, 1 = fully erased "
                "(no linear probe can then beat a constant)")
    if mode == "erase":
        target = "its mean (mean-ablation)" if direction.spec.kind == "sae" else "0 (projected out)"
        return f"fraction of the way {coord} is moved to {target}: 0 = clean, 1 = fully erased"
    return (f"{coord} clamped to mean + scale x std = {direction.mean:.4g} + scale x {direction.std:.4g}")


def build_edits(direction: Direction, mode: str, scales: list[float], controls: np.ndarray
                ) -> tuple[list[Edit], list[list[Edit]]]:
    """The direction's edit at each scale, and each control's ([K][S]).

    Controls are unit random vectors; in ``add`` mode each is added with the same norm as the
    direction at that scale. In ``erase`` and ``clamp`` each uses its own projection's mean and
    std (the same rule as the direction, applied along the random vector).
    """
    sae = direction.spec.kind == "sae"
    vec = direction.vector
    vec_norm = float(np.linalg.norm(vec))
    centre = direction.mean if sae else 0.0
    dir_edits = [make_edit(mode, vec, s, add_norm=direction.std, mean=direction.mean, std=direction.std,
                           centre=centre, sae_latent=sae) for s in scales]
    ctl_edits: list[list[Edit]] = []
    assert direction.stats is not None
    for r in controls:
        mu, sd = direction.stats.projection(r)
        ctl_edits.append([
            make_edit(mode, r, s, add_norm=direction.std * vec_norm, mean=mu, std=sd,
                      centre=mu if sae else 0.0) for s in scales
        ])
    return dir_edits, ctl_edits


def steer(run_name: str | Path, cfg: SteerConfig, runs_dir: Path | str | None = None,
          progress: ProgressFn | None = None, write: bool = True) -> dict[str, Any]:
    """Run the experiment and return the result document (also written to ``RUN/steer/<time>.json``).

    The network runs on ``cfg.device`` with one torch CPU thread (the lab's default: its networks
    are small and the environments want the other cores); the thread count is restored after.
    """
    device = resolve_device(cfg.device)  # before anything is created
    with one_torch_thread():
        return _steer(run_name, cfg, device, runs_dir, progress, write)


def _steer(run_name: str | Path, cfg: SteerConfig, device: str, runs_dir: Path | str | None,
           progress: ProgressFn | None, write: bool) -> dict[str, Any]:
    if cfg.mode not in MODES:
        raise LabError(f"unknown --mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
    if cfg.episodes < 2:
        raise LabError("--episodes must be at least 2 (confidence intervals need several episodes)")
    if cfg.controls < 0:
        raise LabError("--controls must be 0 or more")
    scales = cfg.resolved_scales()
    spec = parse_direction(cfg.direction)
    if cfg.mode == "leace" and spec.kind == "sae":
        raise LabError("--mode leace erases a label: use --direction probe:LABEL@HOOK or diff:LABEL@HOOK")
    expect = parse_expect(cfg.expect) if cfg.expect else None
    run = RunStore(runs_dir).get(run_name)
    act_path = Path(cfg.activations) if cfg.activations else None
    if act_path is not None and not act_path.exists():
        raise LabError(f"no activation file {act_path}")
    direction = resolve_direction(spec, run, act_path)
    ckpt = checkpoint_for(run, direction.activations, cfg.checkpoint)

    run_cfg = run.info.get("config", {})
    env_id = run.info.get("env_id") or run_cfg.get("env_id")
    env_kwargs = run_cfg.get("env_kwargs") or {}

    def env_factory() -> Any:  # as the policy sees it (a transformer policy reads a history vector)
        return make_policy_env({**run_cfg, "env_id": env_id, "env_kwargs": env_kwargs})

    torch.manual_seed(cfg.seed)
    sae = direction.sae.to(device) if direction.sae is not None else None  # SAE-latent edits run beside the network
    policy = load_policy(run, ckpt, direction.hook, sae=sae, latent=direction.spec.latent, device=device)
    spec_b, events, _ = behaviour_kinds(env_factory, cfg.seed)
    names, _ = metric_names(spec_b, events, policy.has_distribution)
    if expect is not None and expect[0] not in names:
        raise LabError(f"--expect names unknown metric {expect[0]!r} (metrics: {', '.join(names)})")
    d = direction.vector.shape[0]
    note = policy.action_path_note(env_factory, cfg.seed, direction.hook, d)  # type: ignore[attr-defined]
    notes: list[str] = [note] if note else []
    if cfg.controls < DEFAULT_CONTROLS:
        notes.append(f"only {cfg.controls} random controls: a control percentile from fewer than "
                     f"{DEFAULT_CONTROLS} is coarse (the smallest p-value possible is 1/{cfg.controls + 1})")

    assert direction.stats is not None
    erasure: dict[str, Any] | None = None
    if cfg.mode == "leace":
        fit = fit_leace(direction.activations, spec.label or "", direction.hook, seed=cfg.seed)
        bases, kinds = random_subspaces(direction.stats, fit.rank, cfg.controls, cfg.seed)
        dir_edits = [subspace_edit(fit.matrix, fit.bias, s) for s in scales]
        ctl_edits = [[subspace_edit(q @ q.T, direction.stats.mean, s) for s in scales] for q in bases]
        erasure = erasure_scores(fit, bases, direction.stats.mean)
        erasure["label"] = fit.label
        erasure["random_kinds"] = kinds
        control_info = [{"index": k, "kind": kinds[k], "rank": fit.rank,
                         "direction_in_subspace": float(np.linalg.norm(q.T @ direction.vector)),
                         "probe_score_after": erasure["random_after"][k]} for k, q in enumerate(bases)]
    else:
        control_vecs, kinds = control_directions(direction.stats, cfg.controls, cfg.seed)
        dir_edits, ctl_edits = build_edits(direction, cfg.mode, scales, control_vecs)
        unit = direction.vector / np.linalg.norm(direction.vector)
        control_info = []
        for k, c in enumerate(control_vecs):
            mu, sd = direction.stats.projection(c)
            control_info.append({"index": k, "kind": kinds[k], "cosine_with_direction": float(c @ unit),
                                 "coordinate_mean": mu, "coordinate_std": sd})
    E, S, K = cfg.episodes, len(scales), cfg.controls
    conditions: list[Edit] = [Edit.clean(d)] + dir_edits + [e for row in ctl_edits for e in row]
    edits = [c for c in conditions for _ in range(E)]
    episode_index = [e for _ in conditions for e in range(E)]
    t0 = time.time()
    metrics = rollout_rows(policy, env_factory, edits, episode_index, cfg.seed, deterministic=cfg.deterministic,
                           max_steps=cfg.max_steps, progress=progress)
    elapsed = time.time() - t0

    boot = Bootstrap.make(E, cfg.n_boot, cfg.seed)
    if cfg.mode in ("add", "erase", "leace") and 0.0 not in scales:
        # Scale 0 of add and erase is the clean policy: it anchors the dose-response line.
        xs_list: list[float] = [0.0] + scales
        rows: list[int | None] = [None] + list(range(S))
    else:
        xs_list, rows = list(scales), list(range(S))
    slope_ok = len(set(xs_list)) >= 2
    predicted = dict([expect]) if expect is not None else {}
    effects: dict[str, Any] = {}
    for name, values in metrics.values.items():
        blocks = values.reshape(1 + S + K * S, E)
        eff = summarise_metric(
            boot, blocks[0], blocks[1:1 + S], blocks[1 + S:].reshape(K, S, E), scales,
            np.asarray(xs_list) if slope_ok else None, rows if slope_ok else None,
        )
        eff["description"] = metrics.descriptions.get(name, "")
        stat_name, d_stat, c_stats = dose_statistic(name, eff, scales)
        eff["statistic"] = {"name": stat_name, "value": d_stat, "controls": c_stats}
        sign = predicted.get(name)
        eff.update(control_rank(d_stat, c_stats, sign))
        effects[name] = eff

    for k, info in enumerate(control_info):
        info["metrics"] = {n: {"means": [p["means"][k] for p in eff["controls"]],
                               "slope": eff["slope"]["controls"][k] if eff["slope"] else None,
                               "statistic": eff["statistic"]["controls"][k]}
                           for n, eff in effects.items()}
    primary = expect[0] if expect is not None else ("kl" if "kl" in effects else "action_change")
    results = [{"scale": s, "metrics": {n: eff["direction"][i] for n, eff in effects.items()}}
               for i, s in enumerate(scales)]
    by_scale = [{"scale": s, "metrics": {n: eff["controls"][i] for n, eff in effects.items()}}
                for i, s in enumerate(scales)]
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": now_iso(),
        "run": run.name,
        "algo": run.info.get("algo"),
        "checkpoint": ckpt.stem,
        "checkpoint_step": checkpoint_step(ckpt),
        "env_id": env_id,
        "direction": direction.describe(),
        "hook": direction.hook,
        "mode": cfg.mode,
        "scales": scales,
        "scale_unit": _scale_unit(direction, cfg.mode),
        "episodes": E,
        "n_controls": K,
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "device": device,
        "config": asdict(cfg),
        "metrics": {n: eff["description"] for n, eff in effects.items()},
        "clean": {n: eff["clean"] for n, eff in effects.items()},
        "results": results,
        "controls": control_info,
        "controls_by_scale": by_scale,
        "control_directions": {
            "n": K,
            "seed": cfg.seed,
            "kinds": {kind: kinds.count(kind) for kind in ("isotropic", "covariance")},
            "added_norm_per_unit_scale": (direction.std * float(np.linalg.norm(direction.vector))
                                          if cfg.mode != "leace" else None),
        },
        "effects": effects,
        "primary_metric": primary,
        "control_percentile": effects[primary]["control_percentile"],
        "control_p_value": effects[primary]["control_p_value"],
        "notes": notes,
        "elapsed_seconds": round(elapsed, 2),
    }
    if erasure is not None:
        doc["erasure"] = erasure
        if not erasure["falls_to_baseline"]:
            notes.append(f"after LEACE the probe still scores {erasure['after']:.3g} (baseline "
                         f"{erasure['baseline']:.3g}): the erasure did not generalise to the held-out episodes")
    doc["summary"] = summary_sentence(effects, scales, K, cfg.mode)
    if expect is not None:
        metric, sign = expect
        doc["expect"] = expect_verdict(metric, sign, effects[metric], K)
    if write:
        doc["path"] = str(_write(run, doc))
    return doc


def _write(run: Run, doc: dict[str, Any]) -> Path:
    run.steer_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = run.steer_path(stamp)
    i = 1
    while path.exists():
        path = run.steer_path(f"{stamp}-{i}")
        i += 1
    doc["path"] = str(path)
    write_json_atomic(path, doc)
    return path
