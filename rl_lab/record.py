"""Roll a trained policy out and record its activations and emotion labels to HDF5.

The rollout acts exactly as an un-recorded one would (one ``predict`` per step). Activations
are computed per finished episode by one batched forward pass over the episode's observations
with forward hooks on every Linear and activation module — the network is deterministic, so
these are the activations the acting network had — and labels (``rl_lab.labels``) are computed
from the same pass. The file is written episode by episode and marked ``complete`` last.
Value-derived labels use one critic, named in the file's ``reference_critic`` attribute (the
network's own by default, another run's with ``--reference-critic``); hope and fear are
standardised with the mean and std of V on a few calibration episodes rolled out first with
seeds disjoint from the recorded ones and not stored (``value_calibration_*`` attributes).
What the recorder needs from a network is ``rl_lab.adapters.PolicyAdapter``; ``load_adapter``
picks the SB3 or the decision-transformer adapter for a run.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import envs
from probes.activations import ActivationWriter
from probes.layout import TMP_MARK
from rl_lab.adapters import EpisodeForward, PolicyAdapter, load_sb3, make_adapter
from rl_lab.config import DT_ALGOS
from rl_lab.dt.record import load_dt_adapter
from rl_lab.errors import LabError
from rl_lab.labels import (
    CALIBRATION_EPISODES,
    REFERENCE_CRITIC,
    VALUE_OUTPUT,
    ValueScale,
    episode_labels,
    hope_fear,
    label_meta,
    latent_label_name,
)
from rl_lab.runs import Run, RunStore, check_checkpoint, checkpoint_step, is_no_space
from rl_lab.train import ProgressFn, make_env


def load_adapter(run: Run, checkpoint: Path, deterministic: bool = False) -> PolicyAdapter:
    """The adapter for a run's checkpoint, whatever trained it."""
    if run.info.get("algo") in DT_ALGOS:
        return load_dt_adapter(run, checkpoint, deterministic=deterministic)
    return make_adapter(load_sb3(run, checkpoint), deterministic=deterministic)


# --------------------------------------------------------------------------- labels: whose V, which scale
CALIBRATION_SEED_OFFSET = 1_000_000
"""Calibration episode i resets the env with ``seed + CALIBRATION_SEED_OFFSET + i``: never a recorded seed."""


@dataclass
class ReferenceCritic:
    """The critic whose V gives every value-derived label of a recording (``--reference-critic``).

    ``adapter`` is None for the recorded network's own critic (a decision transformer's own is its
    source run's critic); otherwise the named run's latest checkpoint, evaluated on the recorded
    observations (and, for a critic with memory, the episode so far).
    """

    run: str
    checkpoint: str = ""
    adapter: PolicyAdapter | None = None


def load_reference_critic(name: str, run: Run, runs_dir: Path | str | None = None) -> ReferenceCritic:
    """The reference critic named ``name`` for recordings of ``run`` (validated, loaded once)."""
    store = RunStore(runs_dir)
    ref = run if name == run.name else store.get(name)
    algo = ref.info.get("algo")
    if algo in DT_ALGOS:
        hint = f"; name its source run {ref.info['source_run']!r}" if ref.info.get("source_run") else ""
        raise LabError(f"run {ref.name!r} is a {algo} run and has no critic of its own "
                       f"to be the reference critic{hint}")
    if ref.name == run.name:
        return ReferenceCritic(run.name)
    cfg, ref_cfg = run.info.get("config") or {}, ref.info.get("config") or {}
    env_id = run.info.get("env_id") or cfg.get("env_id")
    ref_env = ref.info.get("env_id") or ref_cfg.get("env_id")
    if env_id != ref_env:
        raise LabError(f"the reference critic {ref.name!r} was trained on {ref_env}, run {run.name!r} on {env_id}; "
                       "a reference critic must see the same observations")
    if (cfg.get("env_kwargs") or {}) != (ref_cfg.get("env_kwargs") or {}):
        raise LabError(f"the reference critic {ref.name!r} was trained with env settings "
                       f"{ref_cfg.get('env_kwargs') or {}}, run {run.name!r} with {cfg.get('env_kwargs') or {}}; "
                       "a reference critic must see the same observations")
    ckpt = ref.latest_checkpoint()
    return ReferenceCritic(ref.name, Path(ckpt).stem, load_adapter(ref, Path(ckpt), deterministic=True))


def calibration_seeds(seed: int, episodes: int, n: int) -> list[int]:
    """The env seeds of the calibration episodes: disjoint from the recorded ``seed .. seed+episodes-1``."""
    if episodes > CALIBRATION_SEED_OFFSET:
        raise LabError(f"--episodes must be at most {CALIBRATION_SEED_OFFSET} (the calibration episodes' seeds follow)")
    return [seed + CALIBRATION_SEED_OFFSET + i for i in range(n)]


def _critic_values(reference: ReferenceCritic | None, fwd: EpisodeForward, obs: np.ndarray, actions: np.ndarray,
                   rewards: np.ndarray, final_obs: np.ndarray) -> tuple[np.ndarray, float]:
    """V of every step and of the observation after the last, from the reference critic."""
    if reference is None or reference.adapter is None:
        return fwd.values, fwd.final_value
    ref = reference.adapter.episode_forward(obs, actions, rewards, final_obs)
    return ref.values, ref.final_value


def calibrate_value(env: Any, adapter: PolicyAdapter, reference: ReferenceCritic | None,
                    seeds: list[int]) -> ValueScale:
    """Roll the policy out on ``seeds`` (nothing stored) and measure the mean and std of V there."""
    observe = getattr(adapter, "observe", None)
    values = []
    for s in seeds:
        obs, _ = env.reset(seed=s)
        adapter.reset()
        buf_obs, buf_act, buf_rew = [], [], []
        terminated = truncated = False
        while not (terminated or truncated):
            action = adapter.act(obs)
            buf_obs.append(obs)
            buf_act.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            if observe is not None:
                observe(float(reward))
            buf_rew.append(reward)
        obs_arr, act_arr = np.asarray(buf_obs, dtype=np.float32), np.asarray(buf_act)
        rew_arr, final = np.asarray(buf_rew, dtype=np.float64), np.asarray(obs, dtype=np.float32)
        if reference is None or reference.adapter is None:
            values.append(adapter.episode_forward(obs_arr, act_arr, rew_arr, final).values)
        else:
            values.append(reference.adapter.episode_forward(obs_arr, act_arr, rew_arr, final).values)
    return ValueScale.fit(values, seeds)


# --------------------------------------------------------------------------- recording
def resolve_checkpoints(run: Run, which: str | None) -> list[Path]:
    """``None``/``latest`` -> the last checkpoint; ``all``; a step number; or a file path."""
    ckpts = run.checkpoints()
    if not ckpts:
        raise LabError(f"run {run.name!r} has no checkpoint to record")
    if which in (None, "latest"):
        return [ckpts[-1]]
    if which == "all":
        return ckpts
    if which.isdigit():
        match = [c for c in ckpts if checkpoint_step(c) == int(which)]
        if not match:
            steps = ", ".join(str(checkpoint_step(c)) for c in ckpts)
            raise LabError(f"run {run.name!r} has no checkpoint at step {which} (has: {steps})")
        return match
    path = Path(which)
    if not path.is_file():
        raise LabError(f"no checkpoint {which!r} (use latest, all, a step number or a file)")
    return [check_checkpoint(run, path)]


def record(
    run: Run,
    checkpoint: Path,
    episodes: int = 20,
    seed: int = 0,
    deterministic: bool = False,
    out: Path | None = None,
    overwrite: bool = False,
    random_baseline: bool = True,
    adapter: PolicyAdapter | None = None,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
    flush_rows: int = 4096,
    reference: ReferenceCritic | None = None,
    calibration_episodes: int = CALIBRATION_EPISODES,
) -> Path:
    """Record ``episodes`` episodes of ``checkpoint`` into ``RUN/activations/<ckpt>.h5``.

    Parameters
    ----------
    run:
        The run whose network is recorded.
    checkpoint:
        The checkpoint file (``Run.checkpoints()``).
    episodes:
        Number of whole episodes to roll out.
    seed:
        Seeds the environment resets (episode i uses ``seed + i``) and the policy's sampling.
    deterministic:
        Take the policy's most likely action instead of sampling.
    out:
        Output file (default ``RUN/activations/<checkpoint stem>.h5``).
    overwrite:
        Replace an existing recording instead of refusing.
    random_baseline:
        Also record the same architecture with random weights on the same observations
        (``RANDOM_TWINS`` initialisations: ``/acts_random``, ``/acts_random_1``, ...), the
        baseline that probes need the network for.
    adapter:
        An already loaded adapter for ``checkpoint`` (default: load it).
    progress:
        Called as ``progress(episodes_done, episodes)``.
    max_steps:
        Optional cap on the total number of steps (the episode under way is finished first).
    flush_rows:
        Buffered rows before a block is written to the file (bounds memory and what a crash loses).
    reference:
        The critic that gives every value-derived label (``load_reference_critic``); default: the
        network's own (a decision transformer's: its source run's critic).
    calibration_episodes:
        Episodes rolled out first, with seeds disjoint from the recorded ones and not stored, whose
        values give the mean and std that standardise hope and fear.
    """
    if episodes <= 0:
        raise LabError("--episodes must be positive")
    if calibration_episodes <= 0:
        raise LabError("--calibration-episodes must be positive")
    calib_seeds = calibration_seeds(seed, episodes, calibration_episodes)
    out = Path(out) if out else run.activation_path(Path(checkpoint).stem)
    replacing = out.exists()
    if replacing and not overwrite:
        raise LabError(f"{out} already exists; pass --overwrite to record it again")
    # Written under a temporary name and renamed over ``out`` when complete: a kill or a full disk
    # leaves the previous recording as it was (probe results of a replaced one read as stale).
    tmp = out.with_name(f"{out.name}{TMP_MARK}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    # One sample at a time: a second intra-op thread only adds synchronisation (measured 10x slower
    # on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _record(run, checkpoint, episodes, seed, deterministic, tmp, random_baseline, adapter,
                progress, max_steps, flush_rows, reference, calib_seeds)
        os.replace(tmp, out)
    except BaseException as exc:
        if replacing or not tmp.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, out)  # a first recording keeps its whole episodes, marked incomplete
        if is_no_space(exc):
            raise LabError(f"out of disk space while recording {out.name}; "
                           + ("the previous recording is unchanged" if replacing else "nothing complete was written")
                           ) from None
        raise
    finally:
        torch.set_num_threads(threads)
    return out


RANDOM_TWINS = 3
"""Random-weights twins recorded per hook (``/acts_random``, ``/acts_random_1``, ...): the baseline is
their mean, so one lucky initialisation does not decide a verdict. Twin i is initialised with
``seed + 10_007 + 7_919 * i`` (twin 0 as before there were several)."""


def _record(run: Run, checkpoint: Path, episodes: int, seed: int, deterministic: bool, out: Path,
            random_baseline: bool, adapter: PolicyAdapter | None, progress: ProgressFn | None,
            max_steps: int | None, flush_rows: int, reference: ReferenceCritic | None = None,
            calib_seeds: list[int] | None = None) -> Path:
    if adapter is None:
        adapter = load_adapter(run, Path(checkpoint), deterministic=deterministic)
    twins = [adapter.random_twin(seed + 10_007 + 7_919 * i) for i in range(RANDOM_TWINS)] if random_baseline else []
    torch.manual_seed(seed)  # after the twin's initialisation: the rollout's sampling depends on seed only
    cfg = run.info.get("config", {})
    env_id = run.info.get("env_id") or cfg.get("env_id")
    env = make_env(env_id, cfg.get("env_kwargs") or {}, render_mode="ansi")
    if getattr(env, "render_mode", None) != "ansi":
        env.close()
        env = make_env(env_id, cfg.get("env_kwargs") or {})
    spec = envs.latent_spec(env)
    gamma = float(cfg.get("gamma", 0.99))
    # Whose V gives the value-derived labels: the reference critic, the network's own, or (for a
    # decision transformer, which has none) its source run's critic.
    if reference is not None and reference.adapter is None:
        reference = None  # the run named itself: its own critic
    if reference is not None:
        critic_run, critic_ckpt, value_from = reference.run, reference.checkpoint, REFERENCE_CRITIC
    elif getattr(adapter, "critic_run", None):
        critic_run, critic_ckpt, value_from = adapter.critic_run, adapter.critic_checkpoint, REFERENCE_CRITIC
    else:
        critic_run, critic_ckpt, value_from = run.name, Path(checkpoint).stem, VALUE_OUTPUT
    # An adapter that computes a label the lab does not define, or computes one from another output
    # (a DQN's arousal from its Q-values), says so: label -> derived_from.
    sources = dict(getattr(adapter, "label_sources", {}))
    if getattr(adapter, "is_dqn", False):
        sources.setdefault("arousal", VALUE_OUTPUT)  # max Q - min Q
    meta = label_meta(spec, adapter.linear_in, value_from=value_from, derived_from=sources)
    try:
        seeds = calib_seeds or calibration_seeds(seed, episodes, CALIBRATION_EPISODES)
        scale = calibrate_value(env, adapter, reference, seeds)
    except BaseException:
        env.close()
        raise
    torch.manual_seed(seed)  # the recorded rollouts sample as if no calibration had run
    attrs = {
        "run": run.name,
        "checkpoint": Path(checkpoint).stem,
        "checkpoint_step": checkpoint_step(Path(checkpoint)),
        "env_id": env_id,
        "env_kwargs": cfg.get("env_kwargs") or {},
        "policy_kind": run.info.get("algo", adapter.kind),
        "gamma": gamma,
        "seed": seed,
        "deterministic": deterministic,
        "hooks": adapter.hooks,
        "reference_critic": critic_run,
        "reference_critic_checkpoint": critic_ckpt,
        **scale.attrs(),
    }
    if getattr(adapter, "input_window", None):
        attrs["input_window"] = adapter.input_window  # what the network receives (probes' input-matched baseline)
    writer = ActivationWriter(out, attrs, meta)
    renders = getattr(env, "render_mode", None) == "ansi"
    observe = getattr(adapter, "observe", None)
    total = pending_rows = 0
    # Episodes are written in blocks of about ``flush_rows`` rows: HDF5 appends cost per call,
    # and a crash loses at most one block (the file is then left without ``complete``).
    pending: list[tuple[dict, dict, dict, list[dict], dict]] = []
    try:
        for ep in range(episodes):
            obs, info = env.reset(seed=seed + ep)
            adapter.reset()
            buf_obs, buf_act, buf_rew, buf_text, buf_lat = [], [], [], [], []
            terminated = truncated = False
            while not (terminated or truncated):
                if renders:
                    buf_text.append(env.render())
                buf_lat.append(info.get("latents", {}))
                action = adapter.act(obs)
                buf_obs.append(obs)
                buf_act.append(action)
                obs, reward, terminated, truncated, info = env.step(action)
                if observe is not None:
                    observe(float(reward))  # e.g. a decision transformer lowers its return-to-go
                buf_rew.append(reward)
            T = len(buf_rew)
            obs_arr = np.asarray(buf_obs, dtype=np.float32)
            act_arr = np.asarray(buf_act)
            rew_arr = np.asarray(buf_rew, dtype=np.float64)
            fwd = adapter.episode_forward(obs_arr, act_arr, rew_arr, np.asarray(obs, dtype=np.float32))
            final_obs = np.asarray(obs, dtype=np.float32)
            values, final_value = _critic_values(reference, fwd, obs_arr, act_arr, rew_arr, final_obs)
            labels = episode_labels(values, rew_arr, bool(terminated), final_value, gamma)
            labels.update(hope_fear(values, scale))
            labels.update(fwd.extra_labels)
            labels["action"] = act_arr.reshape(T, -1)[:, 0].astype(np.int64) if act_arr.dtype.kind in "iu" \
                else act_arr.reshape(T, -1)[:, 0]
            for key in spec:
                labels[latent_label_name(key)] = np.asarray([lat.get(key, np.nan) for lat in buf_lat])
            done = np.zeros(T, dtype=bool)
            done[-1] = True
            steps: dict[str, Any] = {
                "obs": obs_arr,
                "action": act_arr,
                "reward": rew_arr.astype(np.float32),
                "done": done,
                "episode": np.full(T, ep, dtype=np.int64),
                "t": np.arange(T, dtype=np.int64),
            }
            if renders:
                steps["text"] = buf_text
            acts_random = [twin.episode_forward(obs_arr, act_arr, rew_arr, obs_arr[-1]).acts for twin in twins]
            inputs = adapter.episode_inputs(rew_arr) if hasattr(adapter, "episode_inputs") else {}
            pending.append((steps, labels, fwd.acts, acts_random, inputs))
            pending_rows += T
            total += T
            if pending_rows >= flush_rows:
                _flush(writer, pending)
                pending_rows = 0
            if progress is not None:
                progress(ep + 1, episodes)
            if max_steps is not None and total >= max_steps:
                break
        _flush(writer, pending)
    except BaseException:
        try:
            _flush(writer, pending)  # keep the whole episodes recorded so far
        finally:
            writer.close(complete=False)
        env.close()
        raise
    writer.close(complete=True)
    env.close()
    return out


def _flush(writer: Any, pending: list[tuple[dict, dict, dict, list[dict], dict]]) -> None:
    """Write the buffered episodes as one block and empty the buffer."""
    if not pending:
        return

    def cat(parts: list[dict]) -> dict:
        out = {}
        for key in parts[0]:
            values = [p[key] for p in parts]
            out[key] = sum(values, []) if isinstance(values[0], list) else np.concatenate(values)
        return out

    steps, labels, acts, inputs = (cat([p[i] for p in pending]) for i in (0, 1, 2, 4))
    twins = [cat([p[3][i] for p in pending]) for i in range(len(pending[0][3]))]
    writer.append(steps, labels, acts, twins or None, inputs or None)
    writer.flush()
    pending.clear()


def record_run(
    run_name: str,
    runs_dir: Path | str | None = None,
    checkpoint: str | None = None,
    episodes: int = 20,
    seed: int = 0,
    deterministic: bool = False,
    overwrite: bool = False,
    progress_factory: Callable[[str], tuple[ProgressFn, Callable[[], None]]] | None = None,
    reference_critic: str | None = None,
    calibration_episodes: int = CALIBRATION_EPISODES,
) -> list[Path]:
    """Record one or several checkpoints of a run (``checkpoint``: latest, all, a step, a file).

    ``reference_critic``: the run whose critic gives every value-derived label (default: the run's
    own; a dt/bc run's source run).
    """
    run = RunStore(runs_dir).get(run_name)
    paths = []
    ckpts = resolve_checkpoints(run, checkpoint)
    if calibration_episodes <= 0:
        raise LabError("--calibration-episodes must be positive")
    reference = load_reference_critic(reference_critic, run, runs_dir) if reference_critic else None
    for ckpt in ckpts:
        target = run.activation_path(ckpt.stem)
        if checkpoint == "all" and target.exists() and not overwrite:
            paths.append(target)
            continue
        progress, close = progress_factory(f"record {ckpt.stem}") if progress_factory else (None, lambda: None)
        try:
            paths.append(record(run, ckpt, episodes=episodes, seed=seed, deterministic=deterministic,
                                overwrite=overwrite, progress=progress, reference=reference,
                                calibration_episodes=calibration_episodes))
        finally:
            close()
    return paths
