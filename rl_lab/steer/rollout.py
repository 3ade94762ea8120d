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
import torch
from gymnasium import spaces

import envs
from rl_lab.adapters import SB3Adapter
from rl_lab.errors import LabError
from rl_lab.steer.intervene import Edit, SteeringHook
from rl_lab.train import ProgressFn


@dataclass
class EpisodeMetrics:
    """Per-episode metrics of every row: ``values[name]`` is an array [rows]."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


class SB3Policy:
    """Clean and edited action distributions of an SB3 policy, with one steering hook.

    Parameters
    ----------
    model:
        A loaded SB3 model (PPO, A2C or DQN).
    hook:
        The hook name whose output is edited (a key of ``SB3Adapter(model).modules``).
    sae, latent:
        For SAE-latent edits (see ``SteeringHook``).
    """

    def __init__(self, model: Any, hook: str, sae: Any = None, latent: int | None = None) -> None:
        adapter = SB3Adapter(model)  # its module discovery is the one map hook name -> module
        if hook not in adapter.modules:
            raise LabError(f"unknown hook {hook!r} for this {adapter.kind.upper()} policy "
                           f"(available: {', '.join(adapter.hooks)})")
        self.model = model
        self.policy = adapter.policy
        self.is_dqn = adapter.is_dqn
        self.module = adapter.modules[hook]
        self.hook = SteeringHook(self.module, sae=sae, latent=latent)
        space = model.action_space
        if isinstance(space, spaces.Discrete):
            self.action_kind = "discrete"
        elif isinstance(space, spaces.Box) and not self.is_dqn:
            self.action_kind = "box"
        else:
            raise LabError(f"steering supports Discrete or Box action spaces, not {type(space).__name__}")
        self.action_space = space
        self.has_distribution = not self.is_dqn

    def action_path_dim(self, obs: np.ndarray) -> int | None:
        """Width of the hooked module's output when the policy chooses an action for ``obs``
        ([1, ...]), or None if choosing an action does not run the module (a value-head hook:
        the policy never reads it, so editing it cannot change behaviour)."""
        seen: list[int] = []
        handle = self.module.register_forward_hook(
            lambda m, i, o: seen.append(int(np.prod(o.shape[1:]))))
        try:
            self.forward(obs[None], steer=False)
        finally:
            handle.remove()
        return seen[0] if seen else None

    def forward(self, obs: np.ndarray, steer: bool) -> Any:
        """The action distribution (torch distribution) or, for DQN, the Q-values [B, A]."""
        self.hook.enabled = steer
        try:
            with torch.no_grad():
                obs_t = self.policy.obs_to_tensor(obs)[0]
                if self.is_dqn:
                    return self.policy.q_net(obs_t)
                return self.policy.get_distribution(obs_t).distribution
        finally:
            self.hook.enabled = False

    def step_stats(self, clean: Any, steered: Any) -> tuple[np.ndarray | None, np.ndarray]:
        """Per row: KL(clean || steered) (None for DQN) and whether the most likely action changed."""
        if self.is_dqn:
            return None, (clean.argmax(-1) != steered.argmax(-1)).numpy()
        kl = torch.distributions.kl_divergence(clean, steered)
        if kl.ndim > 1:
            kl = kl.sum(-1)
        return kl.double().numpy(), (self._mode(clean) != self._mode(steered)).reshape(len(kl), -1).any(-1).numpy()

    def _mode(self, dist: Any) -> torch.Tensor:
        return dist.probs.argmax(-1) if self.action_kind == "discrete" else dist.mean

    def act(self, steered: Any, noise: np.ndarray, deterministic: bool) -> np.ndarray:
        """Actions from the edited distributions, driven by per-row ``noise``.

        ``noise`` is [B] uniforms (discrete) or [B, action_dim] standard normals (Box).
        """
        if self.is_dqn:
            return steered.argmax(-1).numpy()
        if self.action_kind == "discrete":
            probs = steered.probs.double().numpy()  # [B, A]
            if deterministic:
                return probs.argmax(-1)
            cdf = np.cumsum(probs, axis=-1)
            cdf /= cdf[:, -1:]
            return np.minimum((cdf < noise[:, None]).sum(-1), probs.shape[1] - 1)
        loc = steered.mean.double().numpy()
        if deterministic:
            action = loc
        else:
            action = loc + steered.stddev.double().numpy() * noise.reshape(loc.shape)
        return np.clip(action, self.action_space.low, self.action_space.high).astype(np.float32)


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
    policy: SB3Policy,
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


def _run_block(policy: SB3Policy, env_factory: Callable[[], Any], edits: list[Edit], episode_index: list[int],
               rows: list[int], seed: int, deterministic: bool, max_steps: int | None, events: set[str],
               levels: list[str], out: dict[str, np.ndarray]) -> None:
    """Roll out the episodes of ``rows`` in lockstep, writing their metrics into ``out``."""
    B = len(rows)
    U = np.stack([edits[r].vector for r in rows]).astype(np.float32)  # [B, d]
    a = np.array([edits[r].a for r in rows])
    b = np.array([edits[r].b for r in rows])
    sae_rows = np.array([edits[r].sae_latent for r in rows], dtype=bool)
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
            clean = policy.forward(batch, steer=False)
            policy.hook.set_edits(U[idx], a[idx], b[idx], sae_rows[idx])
            steered = policy.forward(batch, steer=True)
            kl, changed = policy.step_stats(clean, steered)
            if policy.action_kind == "discrete":
                noise = np.array([rngs[i].random() for i in idx])
            else:
                noise = np.stack([rngs[i].standard_normal(noise_dim) for i in idx])
            actions = policy.act(steered, noise, deterministic)
            if kl is not None:
                kl_sum[idx] += kl
            change_sum[idx] += changed
            for j, i in enumerate(idx):
                action = actions[j].item() if policy.action_kind == "discrete" else actions[j]
                o, reward, terminated, truncated, info = env_list[i].step(action)
                obs[i] = o
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
