"""Live rollouts of many steering conditions side by side, with common random numbers.

Every (condition, episode) pair is one row of a batch: its own environment, reset with the seed
``seed + episode``, and its own action-noise generator seeded by ``(seed, episode)`` — the same
for every condition, so the clean policy and each edit face the same environments and the same
sampling noise (common random numbers). A step is two forward passes over the active rows: the
clean network (for the KL) and the edited one (which acts). A discrete action is drawn by
inverting the CDF with one uniform per step, a continuous one as ``loc + scale * noise``, so two
conditions whose action distributions agree take the same action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import envs
from rl_lab.steer.intervene import Edit
from rl_lab.steer.policies import SB3Policy, SteerablePolicy
from rl_lab.train import ProgressFn

__all__ = ["EpisodeMetrics", "SB3Policy", "behaviour_kinds", "metric_names", "rollout_rows"]


@dataclass
class EpisodeMetrics:
    """Per-episode metrics of every row: ``values[name]`` is an array [rows]."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


def behaviour_kinds(env_factory: Callable[[], Any], seed: int) -> tuple[dict[str, str], set[str], list[str]]:
    """The env's ``behaviour_spec``, split into event keys (integer values) and level keys (floats).

    The kind of each key is read from the ``info["behaviour"]`` of a reset (or, if the reset
    gives none, of one step with a seeded random action).
    """
    env = env_factory()
    try:
        _, info = env.reset(seed=seed)
        spec = envs.behaviour_spec(env)
        beh = info.get("behaviour") if isinstance(info, dict) else None
        if spec and not beh:
            env.action_space.seed(seed)
            _, _, _, _, info = env.step(env.action_space.sample())
            beh = info.get("behaviour") if isinstance(info, dict) else None
    finally:
        env.close()
    beh = beh or {}
    events = {k for k in spec if isinstance(beh.get(k), (bool, int, np.integer, np.bool_))}
    return spec, events, [k for k in spec if k not in events]


def metric_names(spec: dict[str, str], events: set[str], has_distribution: bool) -> tuple[list[str], dict[str, str]]:
    """The per-episode metric names, in table order, with one-line descriptions."""
    desc = {
        "return": "episode return (sum of rewards)",
        "length": "episode length (steps)",
    }
    if has_distribution:
        desc["kl"] = "mean per step of KL(clean || edited) action distribution (nats)"
    desc["action_change"] = "fraction of steps on which the edit changed the most likely action"
    for k in spec:
        if k in events:
            desc[k] = f"episode total of: {spec[k]}"
            desc[f"steps_to_{k}"] = f"step of the first {k} (episode length if none)"
        else:
            desc[k] = f"episode mean of: {spec[k]}"
    return list(desc), desc


def rollout_rows(
    policy: SteerablePolicy,
    env_factory: Callable[[], Any],
    edits: list[Edit],
    episode_index: list[int],
    seed: int,
    deterministic: bool = False,
    max_steps: int | None = None,
    batch_rows: int = 512,
    progress: ProgressFn | None = None,
) -> EpisodeMetrics:
    """Run one episode per row (edit ``edits[i]``, episode ``episode_index[i]``); per-episode metrics.

    Metrics: ``return``, ``length``, ``kl`` (mean per step of KL(clean || edited), not for DQN),
    ``action_change`` (fraction of steps whose most likely action the edit changed), and for
    each key of the env's ``behaviour_spec``: an integer (event) key's episode total and
    ``steps_to_<key>`` (step of its first occurrence, the episode length if none), a float
    key's mean per step.
    """
    n = len(edits)
    spec, events, levels = behaviour_kinds(env_factory, seed)
    names, descriptions = metric_names(spec, events, policy.has_distribution)
    metrics = EpisodeMetrics(values={name: np.zeros(n) for name in names}, descriptions=descriptions)
    out = metrics.values
    done_rows = 0
    for start in range(0, n, batch_rows):
        rows = list(range(start, min(n, start + batch_rows)))
        _run_block(policy, env_factory, edits, episode_index, rows, seed, deterministic, max_steps,
                   events, levels, out)
        done_rows += len(rows)
        if progress is not None:
            progress(done_rows, n)
    return metrics


def _run_block(policy: SteerablePolicy, env_factory: Callable[[], Any], edits: list[Edit], episode_index: list[int],
               rows: list[int], seed: int, deterministic: bool, max_steps: int | None, events: set[str],
               levels: list[str], out: dict[str, np.ndarray]) -> None:
    """Roll out the episodes of ``rows`` in lockstep, writing their metrics into ``out``."""
    B = len(rows)
    U = np.stack([edits[r].vector for r in rows]).astype(np.float32)  # [B, d]
    a = np.array([edits[r].a for r in rows])
    b = np.array([edits[r].b for r in rows])
    sae_rows = np.array([edits[r].sae_latent for r in rows], dtype=bool)
    has_matrix = any(edits[r].matrix is not None for r in rows)
    d = U.shape[1]
    M = (np.stack([edits[r].matrix if edits[r].matrix is not None else np.zeros((d, d)) for r in rows])
         .astype(np.float32) if has_matrix else None)  # [B, d, d]
    C = (np.stack([edits[r].centre if edits[r].centre is not None else np.zeros(d) for r in rows])
         .astype(np.float32) if has_matrix else None)  # [B, d]
    policy.start(B)
    env_list = [env_factory() for _ in rows]
    rngs = [np.random.default_rng([seed, episode_index[r], 0xAC7]) for r in rows]
    obs = []
    for env, r in zip(env_list, rows):
        o, _ = env.reset(seed=seed + episode_index[r])
        obs.append(o)
    active = np.ones(B, dtype=bool)
    t = np.zeros(B, dtype=np.int64)
    ret = np.zeros(B)
    kl_sum = np.zeros(B)
    change_sum = np.zeros(B)
    level_sum = {k: np.zeros(B) for k in levels}
    event_sum = {k: np.zeros(B) for k in events}
    first = {k: np.full(B, -1, dtype=np.int64) for k in events}
    noise_dim = int(np.prod(policy.action_space.shape)) if policy.action_kind == "box" else 1
    try:
        while active.any():
            idx = np.flatnonzero(active)
            batch = np.stack([obs[i] for i in idx])
            clean = policy.forward(idx, batch, steer=False)
            policy.hook.set_edits(U[idx], a[idx], b[idx], sae_rows[idx],
                                  None if M is None else M[idx], None if C is None else C[idx])
            steered = policy.forward(idx, batch, steer=True)
            kl, changed = policy.step_stats(clean, steered)
            if policy.action_kind == "discrete":
                noise = np.array([rngs[i].random() for i in idx])
            else:
                noise = np.stack([rngs[i].standard_normal(noise_dim) for i in idx])
            actions = policy.act(steered, noise, deterministic)
            if kl is not None:
                kl_sum[idx] += kl
            change_sum[idx] += changed
            rewards = np.zeros(len(idx))
            for j, i in enumerate(idx):
                action = actions[j].item() if policy.action_kind == "discrete" else actions[j]
                o, reward, terminated, truncated, info = env_list[i].step(action)
                obs[i] = o
                rewards[j] = float(reward)
                ret[i] += float(reward)
                t[i] += 1
                beh = info.get("behaviour", {}) if isinstance(info, dict) else {}
                for k in levels:
                    level_sum[k][i] += float(beh.get(k, np.nan))
                for k in events:
                    v = float(beh.get(k, 0))
                    event_sum[k][i] += v
                    if v and first[k][i] < 0:
                        first[k][i] = t[i]
                if terminated or truncated or (max_steps is not None and t[i] >= max_steps):
                    active[i] = False
            policy.advance(idx, batch, actions, rewards)
    finally:
        for env in env_list:
            env.close()
    length = np.maximum(t, 1)
    sl = np.asarray(rows)
    out["return"][sl] = ret
    out["length"][sl] = t
    out["action_change"][sl] = change_sum / length
    if "kl" in out:
        out["kl"][sl] = kl_sum / length
    for k in levels:
        out[k][sl] = level_sum[k] / length
    for k in events:
        out[k][sl] = event_sum[k]
        out[f"steps_to_{k}"][sl] = np.where(first[k] >= 0, first[k], t)
