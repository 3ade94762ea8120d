"""Interventions on the world: set a latent of the environment and see which readings respond.

``intervene(run, InterveneConfig(do="predator_adjacent"))`` plays ``episodes`` episodes with the
run's policy (the recorder's adapter, ``rl_lab.record.load_adapter``: SB3 agents and decision
transformers alike); at step ``at_step`` of each it applies the env's ``do`` (``envs.do``) and
runs the network twice on that step: on the observation before the intervention and on the one
after it, with the same history. At every hook it then reads

- each linear probe of the run (``RUN/probes/<stem>.weights.npz``: ``acts @ coef + bias``),
- each latent of each SAE of the run (``RUN/saes/*``),
- the critic's value (the source run's critic for a decision transformer),

and reports how far each reading moved, in units of its natural spread: its standard deviation
over the run's recording. "Does the threat representation respond to a threat?" is then: does
the threat probe's reading rise by a sizeable fraction of its usual variation, across episodes
(bootstrap CI), when the predator is put next to the agent. The env's own latents before and
after are reported too, as the check that the intervention did what it says.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envs
from probes.activations import ActivationFile
from probes.layout import PROBE_WEIGHTS_SUFFIX
from probes.sae.model import load_sae
from rl_lab.devices import one_torch_thread, resolve_device
from rl_lab.errors import LabError
from rl_lab.record import adapter_device, load_adapter
from rl_lab.runs import Run, RunStore, checkpoint_step, now_iso, write_json_atomic
from rl_lab.steer.analysis import CI_LEVEL
from rl_lab.steer.directions import hook_stats, latest_activation_file
from rl_lab.steer.experiment import checkpoint_for
from rl_lab.train import ProgressFn, make_env

SCHEMA_VERSION = 1


@dataclass
class InterveneConfig:
    """Everything that determines an intervention experiment."""

    do: str
    """The env's ``do`` target (``envs.do_targets``), e.g. ``predator_adjacent``; ``NAME=VALUE`` sets a value."""
    value: float | None = None
    """The value for targets that take one (default: the target's own default)."""
    at_step: int = 10
    """The intervention happens on the observation of this step (0 = the first)."""
    episodes: int = 20
    """Episodes (env seeds ``seed .. seed + episodes - 1``); those that end before ``at_step`` are skipped."""
    seed: int = 0
    """Seeds the episodes, the policy's sampling and the bootstrap."""
    checkpoint: str | None = None
    """Checkpoint: a step or a file; default the one the activation file was recorded from."""
    activations: str | None = None
    """Activation file for the natural spreads; default the run's latest."""
    n_boot: int = 2000
    """Bootstrap resamples over episodes."""
    device: str = "cpu"
    """Where the network runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``rl_lab.devices.resolve_device``);
    activations come back to the CPU, where the probes and SAEs read them. The document's ``device``
    names the one used."""


def parse_do(text: str, value: float | None = None) -> tuple[str, float | None]:
    """``NAME`` or ``NAME=VALUE`` -> ``(name, value)``."""
    name, sep, raw = text.partition("=")
    if sep:
        if value is not None:
            raise LabError("give the value once: --do NAME=VALUE or --do NAME --value VALUE")
        try:
            value = float(raw)
        except ValueError:
            raise LabError(f"malformed --do {text[:60]!r}: the value after '=' must be a number") from None
        if not np.isfinite(value):
            raise LabError(f"malformed --do {text[:60]!r}: the value after '=' must be a finite number")
    if not name.strip():
        raise LabError(f"malformed --do {text!r}: expected NAME or NAME=VALUE")
    return name.strip(), value


@dataclass
class Reading:
    """One scalar read off the network at one hook: a probe, an SAE latent or the critic."""

    kind: str  # "probe" | "sae" | "value"
    name: str  # probe label (label=CLASS), "sae/latent" or "value"
    hook: str | None
    coef: np.ndarray | None = None  # [d] probe weights
    bias: float = 0.0
    mean: float = 0.0
    spread: float = 0.0  # std over the recording


def probe_readings(run: Run, act_path: Path) -> tuple[list[Reading], str | None]:
    """Every probe of the run's latest weights file, with its spread over ``act_path``."""
    files = sorted(run.probes_dir.glob(f"*{PROBE_WEIGHTS_SUFFIX}")) if run.probes_dir.is_dir() else []
    if not files:
        return [], None
    weights = max(files, key=lambda p: (checkpoint_step(Path(p.name.split(".")[0])), p.stat().st_mtime))
    readings: list[Reading] = []
    with np.load(weights) as data:
        keys = sorted({k.rsplit("/", 1)[0] for k in data.files if k.endswith("/coef")})
        with ActivationFile(act_path) as af:
            hooks = set(af.hooks)
        stats_cache: dict[str, Any] = {}
        for key in keys:
            label, _, hook = key.partition("@")
            if hook not in hooks:
                continue
            coef = np.asarray(data[f"{key}/coef"], dtype=np.float64)
            bias = np.asarray(data[f"{key}/bias"], dtype=np.float64).reshape(-1) if f"{key}/bias" in data.files \
                else np.zeros(1)
            classes = [str(c) for c in data[f"{key}/classes"]] if f"{key}/classes" in data.files else None
            if hook not in stats_cache:
                stats_cache[hook] = hook_stats(act_path, hook)
            rows = coef.reshape(-1, coef.shape[-1])
            for j, row in enumerate(rows):
                name = label if len(rows) == 1 else f"{label}={classes[j] if classes else j}"
                mu, sd = stats_cache[hook].projection(row)
                b = float(bias[j] if j < len(bias) else 0.0)
                readings.append(Reading("probe", name, hook, coef=row, bias=b, mean=mu + b, spread=sd))
    return readings, str(weights)


def sae_spreads(sae: Any, act_path: Path, hook: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every SAE latent over the recording ([d_sae] each)."""
    total = sq = None
    n = 0
    with ActivationFile(act_path) as af, torch.no_grad():
        for _, block in af.iter_chunks("acts", hook):
            z = sae.encode(torch.from_numpy(block.astype(np.float32))).double().numpy()
            total = z.sum(0) if total is None else total + z.sum(0)
            sq = (z * z).sum(0) if sq is None else sq + (z * z).sum(0)
            n += len(z)
    if total is None or sq is None:
        raise LabError(f"{act_path} has no recorded steps")
    mean = total / n
    return mean, np.sqrt(np.maximum(sq / n - mean * mean, 0.0))


def _play_to(adapter: Any, env: Any, seed: int, at_step: int) -> tuple[list[np.ndarray], list[Any], list[float],
                                                                       dict[str, Any]] | None:
    """Play until the observation of step ``at_step``; ``(obs[0..T], actions[0..T-1], rewards, info_T)``,
    or None if the episode ended first."""
    obs, info = env.reset(seed=seed)
    adapter.reset()
    observations, actions, rewards = [np.asarray(obs)], [], []
    for _ in range(at_step):
        action = adapter.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        if hasattr(adapter, "observe"):
            adapter.observe(float(reward))
        actions.append(action)
        rewards.append(float(reward))
        if terminated or truncated:
            return None
        observations.append(np.asarray(obs))
    return observations, actions, rewards, info


def _forward_last(adapter: Any, observations: list[np.ndarray], actions: list[Any], rewards: list[float]
                  ) -> tuple[dict[str, np.ndarray], float]:
    """The activations ([d] per hook) and value at the last observation, given the history before it."""
    T = len(observations)
    obs = np.stack(observations)
    acts = np.asarray(list(actions) + [actions[-1] if actions else 0])  # the last action: a placeholder
    rew = np.asarray(list(rewards) + [0.0], dtype=np.float32)
    fwd = adapter.episode_forward(obs, acts.reshape(T, *np.shape(acts[0])), rew, obs[-1])
    return {h: a[-1] for h, a in fwd.acts.items()}, float(fwd.values[-1])


def _summary(shifts: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    """Mean shift (in spreads), its bootstrap CI over episodes, and the fraction of episodes it rose."""
    b = shifts[boot].mean(-1)
    lo, hi = np.quantile(b, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    return {"shift": float(shifts.mean()), "shift_ci": [float(lo), float(hi)],
            "fraction_up": float((shifts > 0).mean()), "excludes_zero": bool(lo > 0 or hi < 0)}


def intervene(run_name: str | Path, cfg: InterveneConfig, runs_dir: Path | str | None = None,
              progress: ProgressFn | None = None, write: bool = True) -> dict[str, Any]:
    """Run the experiment; return the result document (also written to ``RUN/steer/intervene-<time>.json``).

    The network runs on ``cfg.device`` with one torch CPU thread (restored after).
    """
    device = resolve_device(cfg.device)  # before anything is created
    with one_torch_thread():
        return _intervene(run_name, cfg, device, runs_dir, progress, write)


def _intervene(run_name: str | Path, cfg: InterveneConfig, device: str, runs_dir: Path | str | None,
               progress: ProgressFn | None, write: bool) -> dict[str, Any]:
    target, value = parse_do(cfg.do, cfg.value)
    if cfg.at_step < 0:
        raise LabError("--at-step must be 0 or more")
    if cfg.episodes < 2:
        raise LabError("--episodes must be at least 2 (confidence intervals need several episodes)")
    run = RunStore(runs_dir).get(run_name)
    run_cfg = run.info.get("config", {})
    env_id = run.info.get("env_id") or run_cfg.get("env_id")
    env_kwargs = run_cfg.get("env_kwargs") or {}
    env = make_env(env_id, env_kwargs)
    try:
        targets = envs.do_targets(env)
        if target not in targets:
            have = ", ".join(targets) or "none"
            raise LabError(f"{env_id} has no do target {target!r} (has: {have}; see docs/envs.md)")
        bounds = targets[target].get("value")
        if bounds is None and value is not None:
            raise LabError(f"do target {target!r} takes no value")
        if bounds is not None and value is not None and not bounds[0] <= value <= bounds[1]:
            raise LabError(f"do target {target!r} takes a value in [{bounds[0]}, {bounds[1]}], got {value:g}")
        act_path = Path(cfg.activations) if cfg.activations else latest_activation_file(run)
        if not act_path.exists():
            raise LabError(f"no activation file {act_path}")
        ckpt = checkpoint_for(run, act_path, cfg.checkpoint)
        torch.manual_seed(cfg.seed)
        adapter = load_adapter(run, ckpt, device=device)
        probes, weights = probe_readings(run, act_path)
        saes = []
        for sae_dir in run.sae_dirs():
            try:
                sae, sae_cfg = load_sae(sae_dir)
            except Exception as exc:  # a half-written or foreign SAE: say so, keep going
                saes.append({"sae": sae_dir.name, "error": str(exc).splitlines()[0]})
                continue
            with ActivationFile(act_path) as af:
                if sae_cfg.hook_name not in af.hooks or af.hook_dim(sae_cfg.hook_name) != sae_cfg.d_in:
                    continue
            mean, sd = sae_spreads(sae, act_path, sae_cfg.hook_name)
            saes.append({"sae": sae_dir.name, "hook": sae_cfg.hook_name, "model": sae, "mean": mean, "spread": sd})
        with ActivationFile(act_path) as af:
            value_spread = float(np.std(af.label("value"))) if "value" in af.labels else None

        before_acts, after_acts, values, latents = [], [], [], []
        t0 = time.time()
        for i in range(cfg.episodes):
            played = _play_to(adapter, env, cfg.seed + i, cfg.at_step)
            if played is not None:
                observations, actions, rewards, info = played
                acts_b, v_b = _forward_last(adapter, observations, actions, rewards)
                try:
                    obs_after, info_after = envs.do(env, target, value)
                except ValueError as exc:
                    raise LabError(f"do {target!r}: {exc}") from None
                acts_a, v_a = _forward_last(adapter, observations[:-1] + [np.asarray(obs_after)], actions, rewards)
                before_acts.append(acts_b)
                after_acts.append(acts_a)
                values.append((v_b, v_a))
                latents.append((dict(info.get("latents", {})), dict(info_after.get("latents", {}))))
            if progress is not None:
                progress(i + 1, cfg.episodes)
        elapsed = time.time() - t0
    finally:
        env.close()
    n = len(values)
    if n < 2:
        raise LabError(f"only {n} of {cfg.episodes} episodes lasted to step {cfg.at_step}; choose an earlier --at-step")
    boot = np.random.default_rng([cfg.seed, 0xB007]).integers(0, n, size=(cfg.n_boot, n))

    def stack(hook: str, which: list[dict[str, np.ndarray]]) -> np.ndarray:
        return np.stack([a[hook].astype(np.float64) for a in which])  # [n, d]

    probe_rows = []
    for r in probes:
        assert r.hook is not None and r.coef is not None
        before = stack(r.hook, before_acts) @ r.coef + r.bias
        after = stack(r.hook, after_acts) @ r.coef + r.bias
        row = {"label": r.name, "hook": r.hook, "spread": r.spread, "recording_mean": r.mean,
               "before": float(before.mean()), "after": float(after.mean())}
        row.update(_summary((after - before) / r.spread, boot) if r.spread > 0 else
                   {"shift": None, "shift_ci": None, "fraction_up": None, "excludes_zero": False})
        probe_rows.append(row)
    sae_rows = []
    for s in saes:
        if "error" in s:
            sae_rows.append(s)
            continue
        with torch.no_grad():
            zb = s["model"].encode(torch.from_numpy(stack(s["hook"], before_acts).astype(np.float32))).double().numpy()
            za = s["model"].encode(torch.from_numpy(stack(s["hook"], after_acts).astype(np.float32))).double().numpy()
        rows = []
        for j in np.flatnonzero(s["spread"] > 0):
            row = {"latent": int(j), "spread": float(s["spread"][j]), "before": float(zb[:, j].mean()),
                   "after": float(za[:, j].mean())}
            row.update(_summary((za[:, j] - zb[:, j]) / s["spread"][j], boot))
            rows.append(row)
        rows.sort(key=lambda r: -abs(r["shift"]))
        sae_rows.append({"sae": s["sae"], "hook": s["hook"], "n_alive": len(rows),
                         "n_dead": int((s["spread"] <= 0).sum()), "latents": rows})
    v = np.asarray(values)  # [n, 2]
    value_doc: dict[str, Any] = {"before": float(v[:, 0].mean()), "after": float(v[:, 1].mean()),
                                 "change": float((v[:, 1] - v[:, 0]).mean()), "spread": value_spread,
                                 "note": "the critic's V(after) - V(before): the TD error the intervention causes "
                                         "with no reward (a readout of the network's output, not an emerged variable)"}
    if value_spread:
        value_doc.update(_summary((v[:, 1] - v[:, 0]) / value_spread, boot))
    latent_doc: dict[str, Any] = {}
    for key in latents[0][0]:
        b = np.asarray([float(lb.get(key, np.nan)) for lb, _ in latents])
        a = np.asarray([float(la.get(key, np.nan)) for _, la in latents])
        if np.any(a != b):
            latent_doc[key] = {"before": float(np.nanmean(b)), "after": float(np.nanmean(a)),
                               "change": float(np.nanmean(a - b)), "fraction_changed": float(np.mean(a != b))}
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "intervene",
        "created": now_iso(),
        "run": run.name,
        "algo": run.info.get("algo"),
        "checkpoint": ckpt.stem,
        "checkpoint_step": checkpoint_step(ckpt),
        "env_id": env_id,
        "do": {"target": target, "value": value if value is not None else targets[target].get("default"),
               "description": targets[target].get("description", "")},
        "at_step": cfg.at_step,
        "episodes": cfg.episodes,
        "n_used": n,
        "seed": cfg.seed,
        "device": adapter_device(adapter),
        "activations": str(act_path),
        "probe_weights": weights,
        "config": asdict(cfg),
        "shift_unit": "the reading's standard deviation over the recording (its natural spread)",
        "latents": latent_doc,
        "value": value_doc,
        "probes": probe_rows,
        "saes": sae_rows,
        "notes": ([] if probes else ["the run has no probe weights: fit them with `python -m probes.linear "
                                     "RUN/activations/<file>.h5 --out RUN/probes/<stem>.json`"]),
        "elapsed_seconds": round(elapsed, 2),
    }
    if write:
        run.steer_dir.mkdir(parents=True, exist_ok=True)
        stamp = "intervene-" + time.strftime("%Y%m%d-%H%M%S")
        path, k = run.steer_path(stamp), 1
        while path.exists():
            path, k = run.steer_path(f"{stamp}-{k}"), k + 1
        doc["path"] = str(path)
        write_json_atomic(path, doc)
    return doc


def format_intervention(doc: dict[str, Any], top: int = 10) -> str:
    """The result as text: the env's latents, the value, every probe, each SAE's top latents."""
    do = doc["do"]
    val = f"={do['value']:g}" if do["value"] is not None else ""
    lines = [f"intervene {doc['run']}  do {do['target']}{val} at step {doc['at_step']}  ({do['description']})",
             f"{doc['n_used']} of {doc['episodes']} episodes reached step {doc['at_step']}; shifts in units of each "
             f"reading's spread over the recording, mean [{int(CI_LEVEL * 100)}% bootstrap CI], fraction of episodes up",
             ""]
    if doc["latents"]:
        lines.append("the world (env latents that changed): " + ", ".join(
            f"{k} {_num(v['before'])} -> {_num(v['after'])}" for k, v in doc["latents"].items()))
    v = doc["value"]
    vline = f"value (critic): {_num(v['before'])} -> {_num(v['after'])} (change {_num(v['change'])}"
    if v.get("shift") is not None:
        vline += f" = {_num(v['shift'])} spreads [{_num(v['shift_ci'][0])}, {_num(v['shift_ci'][1])}]"
    lines += [vline + ")", ""]
    if doc["probes"]:
        width = max(len(f"{p['label']}@{p['hook']}") for p in doc["probes"])
        lines.append(f"{'probe'.ljust(width)}  {'shift':>7}  {'95% CI':>17}  {'up':>5}")
        ranked = sorted(doc["probes"], key=lambda p: -abs(p["shift"] or 0.0))
        for p in ranked[:3 * top]:
            name = f"{p['label']}@{p['hook']}".ljust(width)
            if p["shift"] is None:
                lines.append(f"{name}  {'-':>7}  (no spread in the recording)")
                continue
            mark = "*" if p["excludes_zero"] else " "
            lines.append(f"{name}  {p['shift']:+7.2f}  [{p['shift_ci'][0]:+6.2f}, {p['shift_ci'][1]:+6.2f}]{mark} "
                         f"{p['fraction_up']:5.0%}")
        if len(ranked) > 3 * top:
            lines.append(f"... {len(ranked) - 3 * top} more probes (smaller shifts) in the JSON")
        lines.append("* = the CI excludes 0")
    for s in doc["saes"]:
        if "error" in s:
            lines.append(f"SAE {s['sae']}: cannot be read ({s['error']})")
            continue
        lines.append(f"SAE {s['sae']} at {s['hook']}: the {min(top, len(s['latents']))} latents that moved most "
                     f"(of {s['n_alive']} alive)")
        for r in s["latents"][:top]:
            mark = "*" if r["excludes_zero"] else " "
            lines.append(f"  latent {r['latent']:>5}  {r['shift']:+7.2f}  [{r['shift_ci'][0]:+6.2f}, "
                         f"{r['shift_ci'][1]:+6.2f}]{mark} {r['fraction_up']:5.0%}")
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"
