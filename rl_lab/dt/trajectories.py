"""The offline dataset: trajectories of a trained SB3 agent at several quality levels, in HDF5.

``collect`` rolls out every checkpoint of a source run (early checkpoints act badly, late ones
well) plus a uniformly random policy, and writes ``SOURCE_RUN/trajectories/<name>.h5``. Each
checkpoint acts through its recording adapter (``rl_lab.adapters.make_adapter``), so a
PPO-transformer reads its K-step history and recurrent PPO carries its LSTM memory through the
episode, exactly as when it was trained and recorded::

    /                 attrs: source_run, env_id, env_kwargs, gamma, seed, obs_dim, n_actions,
                             max_t, policies (JSON list of policy names), complete
    /steps/obs           (N, obs_dim) float32
    /steps/action        (N,) int64
    /steps/reward        (N,) float32
    /steps/episode       (N,) int64    global episode index
    /steps/t             (N,) int64    step within the episode
    /steps/return_to_go  (N,) float32  undiscounted sum of rewards from this step on
    /steps/policy        (N,) int64    index into the ``policies`` attribute
    /episodes/start, /episodes/length (E,) int64; /episodes/return (E,) float32;
    /episodes/policy (E,) int64; /episodes/terminated (E,) bool

The file is written once and reused by every model trained from the run (dt, bc, any seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch

from rl_lab.adapters import load_sb3, make_adapter
from rl_lab.config import DT_ALGOS
from rl_lab.errors import LabError
from rl_lab.runs import Run, checkpoint_step
from rl_lab.train import ProgressFn, make_env

RANDOM_POLICY = "random"


class _RandomPolicy:
    """Uniformly random actions from its own generator (the lowest quality level)."""

    def __init__(self, n_actions: int, seed: int) -> None:
        self.n_actions = n_actions
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return int(self.rng.integers(self.n_actions))


def _rollout(env: Any, policy: Any, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """One episode of ``policy`` (``reset()`` at the start, then ``act(obs)`` per step)."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    act: Callable[[np.ndarray], Any] = policy.act
    buf_obs, buf_act, buf_rew = [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = int(act(obs))
        buf_obs.append(np.asarray(obs, dtype=np.float32).reshape(-1))
        buf_act.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        buf_rew.append(float(reward))
    return (np.asarray(buf_obs, dtype=np.float32), np.asarray(buf_act, dtype=np.int64),
            np.asarray(buf_rew, dtype=np.float32), bool(terminated))


def parse_checkpoint_steps(text: str) -> list[str]:
    """``"latest,800000"`` -> ``["latest", "800000"]``: source checkpoints named by training step or
    ``latest``; each once, in the order given."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise LabError("--source-checkpoints names no checkpoint: give training steps such as 800000,1600000 "
                       "or latest")
    for part in parts:
        if part != "latest" and not (part.isascii() and part.isdigit()):
            raise LabError(f"--source-checkpoints: {part!r} is not a training step (a whole number) or latest")
    return list(dict.fromkeys(parts))


def select_checkpoints(source: Run, steps: Sequence[str]) -> list[Path]:
    """The source run's checkpoint files at ``steps`` (training steps, or ``latest``), oldest first."""
    ckpts = source.checkpoints()
    if not ckpts:
        raise LabError(f"run {source.name!r} has no checkpoint; train it first (rl-lab train)")
    by_step = {checkpoint_step(c): c for c in ckpts}
    chosen: dict[int, Path] = {}
    for spec in steps:
        step = checkpoint_step(ckpts[-1]) if spec == "latest" else int(spec)
        if step not in by_step:
            known = ", ".join(str(s) for s in sorted(by_step))
            raise LabError(f"run {source.name!r} has no checkpoint at step {step} (its checkpoints: {known})")
        chosen[step] = by_step[step]
    return [chosen[s] for s in sorted(chosen)]


def collect(
    source: Run,
    name: str = "default",
    episodes_per_policy: int = 20,
    seed: int = 0,
    include_random: bool = True,
    max_checkpoints: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    checkpoints: Sequence[str] | None = None,
) -> Path:
    """Roll out the source run's checkpoints (+ a random policy) into an HDF5 trajectory file.

    Parameters
    ----------
    source:
        An SB3 run (ppo or a2c with any policy, dqn, recurrent-ppo) with at least one checkpoint.
    name:
        File stem under ``SOURCE/trajectories/``.
    episodes_per_policy:
        Episodes rolled out by each checkpoint and by the random policy.
    seed:
        Episode i of policy p resets the environment with ``seed + 10_000 p + i``; the policies
        sample their actions (as SB3's ``predict(deterministic=False)``), seeded from ``seed``.
    include_random:
        Add a uniformly random policy (the lowest quality level). An existing file of that name must
        hold the random policy's episodes if and only if this is set.
    max_checkpoints:
        Use at most this many checkpoints, evenly spread from first to last (default: all).
    overwrite:
        Replace an existing file instead of returning it unchanged.
    progress:
        Called as ``progress(policies_done, policies)``.
    checkpoints:
        Only these checkpoints (training steps, or ``latest``) instead of every one; an existing
        file of that name must have been collected from exactly them (and the random policy, if
        ``include_random``).
    """
    out = source.trajectories_path(name)
    algo = source.info.get("algo")
    if algo in DT_ALGOS:
        raise LabError(f"run {source.name!r} is a {algo} run; collect trajectories from an RL "
                       "(ppo/a2c/dqn/recurrent-ppo) run")
    if checkpoints is not None:
        ckpts = select_checkpoints(source, checkpoints)
        if out.exists() and not overwrite:
            _check_policies(out, source, [c.stem for c in ckpts] + ([RANDOM_POLICY] if include_random else []))
            return out
    elif out.exists() and not overwrite:
        _check_policies(out, source, None, include_random)
        return out
    else:
        ckpts = source.checkpoints()
    if not ckpts:
        raise LabError(f"run {source.name!r} has no checkpoint; train it first (rl-lab train)")
    if max_checkpoints is not None and len(ckpts) > max_checkpoints:
        idx = np.unique(np.linspace(0, len(ckpts) - 1, max_checkpoints).round().astype(int))
        ckpts = [ckpts[i] for i in idx]
    if episodes_per_policy <= 0:
        raise LabError("episodes per policy must be positive")
    cfg = source.info.get("config", {})
    env_id = source.info.get("env_id") or cfg.get("env_id")
    env_kwargs = cfg.get("env_kwargs") or {}
    env = make_env(env_id, env_kwargs)
    if not hasattr(env.action_space, "n"):
        env.close()
        raise LabError(f"{env_id} has a continuous action space; the decision transformer needs discrete actions")
    n_actions = int(env.action_space.n)

    policies: list[tuple[str, Any]] = []  # (name, a policy with reset() and act(obs))
    for ckpt in ckpts:  # SB3Adapter.act samples as model.predict(deterministic=False) does
        policies.append((ckpt.stem, make_adapter(load_sb3(source, ckpt))))
    if include_random:
        policies.append((RANDOM_POLICY, _RandomPolicy(n_actions, seed)))

    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "episode", "t",
                                                            "return_to_go", "policy")}
    episodes: dict[str, list[Any]] = {k: [] for k in ("start", "length", "return", "policy", "terminated")}
    start = 0
    torch.manual_seed(seed)
    try:
        for p, (_, policy) in enumerate(policies):
            for i in range(episodes_per_policy):
                obs, actions, rewards, terminated = _rollout(env, policy, seed + 10_000 * p + i)
                T = len(rewards)
                ep = len(episodes["start"])
                columns["obs"].append(obs)
                columns["action"].append(actions)
                columns["reward"].append(rewards)
                columns["episode"].append(np.full(T, ep, dtype=np.int64))
                columns["t"].append(np.arange(T, dtype=np.int64))
                columns["return_to_go"].append(np.cumsum(rewards[::-1], dtype=np.float64)[::-1].astype(np.float32))
                columns["policy"].append(np.full(T, p, dtype=np.int64))
                episodes["start"].append(start)
                episodes["length"].append(T)
                episodes["return"].append(float(rewards.sum(dtype=np.float64)))
                episodes["policy"].append(p)
                episodes["terminated"].append(terminated)
                start += T
            if progress is not None:
                progress(p + 1, len(policies))
    finally:
        env.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".h5.tmp")
    try:
        _write_file(tmp, source, env_id, env_kwargs, cfg, seed, columns, episodes, policies, n_actions,
                    episodes_per_policy)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, kill) leaves any previous file as it was
        raise
    return out


def _check_policies(out: Path, source: Run, expected: list[str] | None, include_random: bool = True) -> None:
    """An existing trajectory file must hold the policies asked for: exactly ``expected``, or
    (``None``) any checkpoints with the random policy if and only if ``include_random``. Reusing
    another file silently would train on other data than the command says."""
    with h5py.File(out, "r") as f:
        found = json.loads(f.attrs.get("policies", "[]"))
    if expected is None:
        if (RANDOM_POLICY in found) == include_random:
            return
        expected = [p for p in found if p != RANDOM_POLICY] + ([RANDOM_POLICY] if include_random else [])
    if found != expected:
        raise LabError(f"trajectory file {out.name} of run {source.name!r} was collected from "
                       f"{', '.join(found) or 'no policy'}, not {', '.join(expected) or 'no policy'}: choose "
                       "another --trajectories name")


def _write_file(tmp: Path, source: Run, env_id: str, env_kwargs: dict[str, Any], cfg: dict[str, Any], seed: int,
                columns: dict[str, list[np.ndarray]], episodes: dict[str, list[Any]],
                policies: list[tuple[str, Any]], n_actions: int, episodes_per_policy: int) -> None:
    """Write the collected trajectories to ``tmp`` (``complete`` set last)."""
    with h5py.File(tmp, "w") as h5:
        h5.attrs.update({
            "source_run": source.name, "env_id": env_id, "env_kwargs": json.dumps(env_kwargs),
            "gamma": float(cfg.get("gamma", 0.99)), "seed": seed, "obs_dim": int(columns["obs"][0].shape[1]),
            "n_actions": n_actions, "max_t": int(max(episodes["length"])) - 1,
            "policies": json.dumps([name for name, _ in policies]), "episodes_per_policy": episodes_per_policy,
        })
        steps = h5.create_group("steps")
        for key, parts in columns.items():
            steps.create_dataset(key, data=np.concatenate(parts))
        group = h5.create_group("episodes")
        dtypes = {"start": np.int64, "length": np.int64, "return": np.float32, "policy": np.int64,
                  "terminated": bool}
        for key, values in episodes.items():
            group.create_dataset(key, data=np.asarray(values, dtype=dtypes[key]))
        h5.attrs["complete"] = True


@dataclass
class Trajectories:
    """A trajectory file loaded into memory (the offline datasets here are a few MB)."""

    path: Path
    attrs: dict[str, Any]
    obs: np.ndarray  # [N, obs_dim]
    action: np.ndarray  # [N]
    reward: np.ndarray  # [N]
    t: np.ndarray  # [N]
    return_to_go: np.ndarray  # [N]
    episode: np.ndarray  # [N]
    ep_start: np.ndarray  # [E]
    ep_length: np.ndarray  # [E]
    ep_return: np.ndarray  # [E]
    ep_policy: np.ndarray  # [E]

    @classmethod
    def load(cls, path: Path | str) -> "Trajectories":
        path = Path(path)
        if not path.exists():
            raise LabError(f"no trajectory file {path}")
        with h5py.File(path, "r") as h5:
            if not h5.attrs.get("complete", False):
                raise LabError(f"trajectory file {path} is incomplete; collect it again")
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}
            for key in ("env_kwargs", "policies"):
                attrs[key] = json.loads(attrs[key])
            s, e = h5["steps"], h5["episodes"]
            return cls(path=path, attrs=attrs, obs=s["obs"][:], action=s["action"][:], reward=s["reward"][:],
                       t=s["t"][:], return_to_go=s["return_to_go"][:], episode=s["episode"][:],
                       ep_start=e["start"][:], ep_length=e["length"][:], ep_return=e["return"][:],
                       ep_policy=e["policy"][:])

    def __len__(self) -> int:
        return len(self.action)

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def n_actions(self) -> int:
        return int(self.attrs["n_actions"])

    def policy_returns(self) -> dict[str, dict[str, float]]:
        """Mean, max and episode count of the return of each source policy."""
        out = {}
        for p, name in enumerate(self.attrs["policies"]):
            r = self.ep_return[self.ep_policy == p]
            if len(r):
                out[name] = {"mean": float(r.mean()), "max": float(r.max()), "episodes": int(len(r))}
        return out

    def windows(self, ends: np.ndarray, context: int) -> dict[str, np.ndarray]:
        """Left-padded windows of ``context`` steps ending at the rows ``ends`` (inclusive).

        Returns ``states`` [B, K, obs_dim], ``actions`` [B, K], ``rtg`` [B, K], ``timesteps``
        [B, K] and ``mask`` [B, K] (False on padding, which is zero-filled).
        """
        ends = np.asarray(ends, dtype=np.int64)
        ep_first = self.ep_start[self.episode[ends]]  # [B]
        offsets = np.arange(context - 1, -1, -1)  # [K]: K-1 ... 0
        rows = ends[:, None] - offsets[None, :]  # [B, K]
        mask = rows >= ep_first[:, None]
        rows = np.where(mask, rows, ends[:, None])
        m = mask.astype(np.float32)
        return {
            "states": self.obs[rows] * m[..., None],
            "actions": np.where(mask, self.action[rows], 0),
            "rtg": self.return_to_go[rows] * m,
            "timesteps": np.where(mask, self.t[rows], 0),
            "mask": mask,
        }


def episode_windows(obs: np.ndarray, actions: np.ndarray, rtg: np.ndarray, context: int,
                    t0: int = 0) -> dict[str, np.ndarray]:
    """For one episode of T steps: the left-padded window ending at every step [T, K, ...].

    ``obs`` [T, obs_dim], ``actions`` [T], ``rtg`` [T] (the return-to-go the model was given at
    each step); ``t0`` is the episode step of row 0. Same layout as ``Trajectories.windows``.
    """
    T = len(obs)
    offsets = np.arange(context - 1, -1, -1)  # [K]
    rows = np.arange(T)[:, None] - offsets[None, :]  # [T, K]
    mask = rows >= 0
    rows = np.where(mask, rows, 0)
    m = mask.astype(np.float32)
    obs = np.asarray(obs, dtype=np.float32).reshape(T, -1)
    return {
        "states": obs[rows] * m[..., None],
        "actions": np.where(mask, np.asarray(actions, dtype=np.int64).reshape(T)[rows], 0),
        "rtg": np.asarray(rtg, dtype=np.float32)[rows] * m,
        "timesteps": np.where(mask, rows + t0, 0),
        "mask": mask,
    }
