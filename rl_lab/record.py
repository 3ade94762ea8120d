"""Roll a trained policy out and record its activations and emotion labels to HDF5.

The rollout acts exactly as an un-recorded one would (one ``predict`` per step). Activations
are computed per finished episode by one batched forward pass over the episode's observations
with forward hooks on every Linear and activation module — the network is deterministic, so
these are the activations the acting network had — and labels (``rl_lab.labels``) are computed
from the same pass. The file is written episode by episode and marked ``complete`` last.
What the recorder needs from a network is ``rl_lab.adapters.PolicyAdapter``; ``load_adapter``
picks the SB3 or the decision-transformer adapter for a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import envs
from probes.activations import ActivationWriter
from rl_lab.adapters import PolicyAdapter, SB3Adapter, load_sb3
from rl_lab.config import DT_ALGOS
from rl_lab.dt.record import load_dt_adapter
from rl_lab.errors import LabError
from rl_lab.labels import episode_labels, label_meta, latent_label_name, standardised_value
from rl_lab.runs import Run, RunStore, checkpoint_step
from rl_lab.train import ProgressFn, make_env


def load_adapter(run: Run, checkpoint: Path, deterministic: bool = False) -> PolicyAdapter:
    """The adapter for a run's checkpoint, whatever trained it."""
    if run.info.get("algo") in DT_ALGOS:
        return load_dt_adapter(run, checkpoint, deterministic=deterministic)
    return SB3Adapter(load_sb3(run, checkpoint), deterministic=deterministic)


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
    if not path.exists():
        raise LabError(f"no checkpoint {which!r} (use latest, all, a step number or a file)")
    return [path]


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
        (``/acts_random``), the baseline that probes need the network for.
    adapter:
        An already loaded adapter for ``checkpoint`` (default: load it).
    progress:
        Called as ``progress(episodes_done, episodes)``.
    max_steps:
        Optional cap on the total number of steps (the episode under way is finished first).
    flush_rows:
        Buffered rows before a block is written to the file (bounds memory and what a crash loses).
    """
    if episodes <= 0:
        raise LabError("--episodes must be positive")
    out = Path(out) if out else run.activation_path(Path(checkpoint).stem)
    if out.exists():
        if not overwrite:
            raise LabError(f"{out} already exists; pass --overwrite to record it again")
        out.unlink()
    # One sample at a time: a second intra-op thread only adds synchronisation (measured 10x slower
    # on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _record(run, checkpoint, episodes, seed, deterministic, out, random_baseline, adapter,
                       progress, max_steps, flush_rows)
    finally:
        torch.set_num_threads(threads)


def _record(run: Run, checkpoint: Path, episodes: int, seed: int, deterministic: bool, out: Path,
            random_baseline: bool, adapter: PolicyAdapter | None, progress: ProgressFn | None,
            max_steps: int | None, flush_rows: int) -> Path:
    if adapter is None:
        adapter = load_adapter(run, Path(checkpoint), deterministic=deterministic)
    twin = adapter.random_twin(seed + 10_007) if random_baseline else None
    torch.manual_seed(seed)  # after the twin's initialisation: the rollout's sampling depends on seed only
    cfg = run.info.get("config", {})
    env_id = run.info.get("env_id") or cfg.get("env_id")
    env = make_env(env_id, cfg.get("env_kwargs") or {}, render_mode="ansi")
    if getattr(env, "render_mode", None) != "ansi":
        env.close()
        env = make_env(env_id, cfg.get("env_kwargs") or {})
    spec = envs.latent_spec(env)
    gamma = float(cfg.get("gamma", 0.99))
    meta = label_meta(spec, adapter.linear_in)
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
    }
    writer = ActivationWriter(out, attrs, meta)
    renders = getattr(env, "render_mode", None) == "ansi"
    observe = getattr(adapter, "observe", None)
    total = pending_rows = 0
    # Episodes are written in blocks of about ``flush_rows`` rows: HDF5 appends cost per call,
    # and a crash loses at most one block (the file is then left without ``complete``).
    pending: list[tuple[dict, dict, dict, dict]] = []
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
            labels = episode_labels(fwd.values, rew_arr, bool(terminated), fwd.final_value, gamma)
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
            acts_random = twin.episode_forward(obs_arr, act_arr, rew_arr, obs_arr[-1]).acts if twin else {}
            pending.append((steps, labels, fwd.acts, acts_random))
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
        _write_standardised_value(writer)
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


def _flush(writer: Any, pending: list[tuple[dict, dict, dict, dict]]) -> None:
    """Write the buffered episodes as one block and empty the buffer."""
    if not pending:
        return

    def cat(parts: list[dict]) -> dict:
        out = {}
        for key in parts[0]:
            values = [p[key] for p in parts]
            out[key] = sum(values, []) if isinstance(values[0], list) else np.concatenate(values)
        return out

    steps, labels, acts, acts_random = (cat([p[i] for p in pending]) for i in range(4))
    writer.append(steps, labels, acts, acts_random or None)
    writer.flush()
    pending.clear()


def _write_standardised_value(writer: ActivationWriter) -> None:
    """Hope and fear need the value's mean and std over the whole recording: written last."""
    for name, arr in standardised_value(writer.read_label("value")).items():
        writer.add_label(name, arr)


def record_run(
    run_name: str,
    runs_dir: Path | str | None = None,
    checkpoint: str | None = None,
    episodes: int = 20,
    seed: int = 0,
    deterministic: bool = False,
    overwrite: bool = False,
    progress_factory: Callable[[str], tuple[ProgressFn, Callable[[], None]]] | None = None,
) -> list[Path]:
    """Record one or several checkpoints of a run (``checkpoint``: latest, all, a step, a file)."""
    run = RunStore(runs_dir).get(run_name)
    paths = []
    ckpts = resolve_checkpoints(run, checkpoint)
    for ckpt in ckpts:
        target = run.activation_path(ckpt.stem)
        if checkpoint == "all" and target.exists() and not overwrite:
            paths.append(target)
            continue
        progress, close = progress_factory(f"record {ckpt.stem}") if progress_factory else (None, lambda: None)
        try:
            paths.append(record(run, ckpt, episodes=episodes, seed=seed, deterministic=deterministic,
                                overwrite=overwrite, progress=progress))
        finally:
            close()
    return paths
