"""Train a stable-baselines3 agent into a run directory.

The run directory fills as training goes: ``run.json`` (status, pid, progress), one line of
``metrics.jsonl`` per rollout, ``checkpoints/step_<N>.zip`` every ``checkpoint_every`` steps.
Ctrl-C or SIGTERM saves a checkpoint and marks the run ``interrupted``; ``resume`` continues
from the last checkpoint.
"""

from __future__ import annotations

import io
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
import sb3_contrib
import stable_baselines3 as sb3
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

import envs
import rl_lab
from rl_lab.config import SB3_ALGOS, TrainConfig
from rl_lab.errors import LabError
from rl_lab.policies import TransformerActorCriticPolicy, wrap_for_policy
from rl_lab.runs import (
    Run,
    RunLock,
    RunStore,
    check_run_name,
    is_no_space,
    now_iso,
    process_identity,
    write_bytes_atomic,
)

ProgressFn = Callable[[int, int], None]


def algo_class(algo: str) -> Any:
    """The SB3 class for an algorithm name."""
    classes = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN, "recurrent-ppo": sb3_contrib.RecurrentPPO}
    if algo not in classes:
        raise LabError(f"unknown algorithm {algo!r}; choose one of {', '.join(SB3_ALGOS)}")
    return classes[algo]


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, render_mode: str | None = None) -> Any:
    """Make one environment through ``envs.make``, turning configuration errors into LabError."""
    try:
        return envs.make(env_id, render_mode=render_mode, **(env_kwargs or {}))
    except (ValueError, TypeError) as exc:
        raise LabError(f"cannot make environment {env_id!r}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # gymnasium raises its own error types for unknown ids
        if type(exc).__module__.startswith("gymnasium"):
            raise LabError(f"cannot make environment {env_id!r}: {str(exc).splitlines()[0]}") from None
        raise


def policy_class(cfg: TrainConfig) -> Any:
    """The SB3 policy for a configuration: a name SB3 knows, or the transformer policy class."""
    if cfg.policy == "transformer":
        return TransformerActorCriticPolicy
    return "MlpLstmPolicy" if cfg.algo == "recurrent-ppo" else "MlpPolicy"


def make_policy_env(config: dict[str, Any], render_mode: str | None = None) -> Any:
    """One environment as a run's policy sees it (``config``: the run's ``run.json`` config): the
    history vector for a transformer policy (``rl_lab.policies``), the raw observation otherwise.
    Live rollouts on the SB3 policy itself (steering, SAE splicing) make their environments here."""
    env = make_env(config["env_id"], config.get("env_kwargs") or {}, render_mode=render_mode)
    return wrap_for_policy(env, str(config.get("policy") or "mlp"), int(config.get("context") or 10))


def make_vec_env(cfg: TrainConfig) -> Any:
    n = 1 if cfg.algo == "dqn" else cfg.n_envs

    def factory(i: int) -> Callable[[], Any]:
        def _make() -> Any:
            env = wrap_for_policy(Monitor(make_env(cfg.env_id, cfg.env_kwargs)), cfg.policy, cfg.context)
            env.reset(seed=cfg.seed * 1000 + i)
            return env

        return _make

    vec = DummyVecEnv([factory(i) for i in range(n)])
    vec.seed(cfg.seed)
    return vec


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": sb3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "gymnasium": gymnasium.__version__,
        "rl_lab": rl_lab.__version__,
    }


class LabCallback(BaseCallback):
    """Logs one metrics line per rollout, saves periodic checkpoints, updates run.json."""

    def __init__(self, run: Run, cfg: TrainConfig, progress: ProgressFn | None = None) -> None:
        super().__init__()
        self.run = run
        self.cfg = cfg
        self.progress = progress
        self._t0 = time.time()
        self._steps0 = 0
        self._next_ckpt = 0
        self._last_log = 0

    def _on_training_start(self) -> None:
        self._t0 = time.time()
        self._steps0 = self.num_timesteps
        every = self.cfg.checkpoint_every
        self._next_ckpt = (self.num_timesteps // every + 1) * every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_ckpt:
            save_checkpoint(self.model, self.run)
            self._next_ckpt += self.cfg.checkpoint_every
        if self.cfg.algo == "dqn" and self.num_timesteps - self._last_log >= 1000:
            self._log()
        if self.progress is not None:
            self.progress(self.num_timesteps, self.cfg.total_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        if self.cfg.algo != "dqn":
            self._log()

    def _log(self) -> None:
        self._last_log = self.num_timesteps
        elapsed = max(time.time() - self._t0, 1e-9)
        record: dict[str, Any] = {
            "step": int(self.num_timesteps),
            "time": round(time.time(), 3),
            "fps": round((self.num_timesteps - self._steps0) / elapsed, 1),
        }
        buf = self.model.ep_info_buffer
        if buf:
            record["episode_return"] = float(np.mean([e["r"] for e in buf]))
            record["episode_length"] = float(np.mean([e["l"] for e in buf]))
            record["episodes"] = len(buf)
        for key, value in self.model.logger.name_to_value.items():
            if key.startswith("train/"):
                record[key.split("/", 1)[1]] = float(value)
        self.run.log_metrics(record)
        self.run.update(steps_done=int(self.num_timesteps))


def save_checkpoint(model: Any, run: Run) -> Path:
    """Save ``checkpoints/step_<N>.zip`` atomically: a kill mid-save leaves the previous checkpoints intact."""
    path = run.checkpoint_path(model.num_timesteps, ".zip")
    buffer = io.BytesIO()
    model.save(buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return path


SEED_MAX = 2**31 - 1
"""Largest seed: numpy's legacy seeding takes 32 bits and environment ``i`` is seeded ``seed * 1000 + i``
only through ``SeedSequence``, so 31 bits keep every seed valid everywhere."""


def check_config(cfg: TrainConfig) -> None:
    """Raise ``LabError`` for any option no training can run with, before anything is created."""

    def finite(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LabError(f"{name} must be a finite number, got {value!r}")
        return float(value)

    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed <= SEED_MAX:
        raise LabError(f"--seed must be a whole number from 0 to {SEED_MAX}, got {cfg.seed!r}")
    if cfg.learning_rate is not None and finite("--lr", cfg.learning_rate) <= 0:
        raise LabError(f"--lr must be positive, got {cfg.learning_rate}")
    if not 0.0 < finite("--gamma", cfg.gamma) <= 1.0:
        raise LabError(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if finite("the entropy coefficient", cfg.ent_coef) < 0:
        raise LabError(f"the entropy coefficient must be >= 0, got {cfg.ent_coef}")
    for name, value in (("--steps", cfg.total_timesteps), ("--n-envs", cfg.n_envs),
                        ("--checkpoint-every", cfg.checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LabError(f"{name} must be a positive whole number, got {value!r}")
    if cfg.n_epochs is not None and (isinstance(cfg.n_epochs, bool) or not isinstance(cfg.n_epochs, int)
                                     or cfg.n_epochs <= 0):
        raise LabError(f"--epochs must be a positive whole number, got {cfg.n_epochs!r}")
    if not cfg.net_arch or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in cfg.net_arch):
        raise LabError(f"the hidden layer sizes must be positive whole numbers, got {cfg.net_arch!r}")


def install_sigterm() -> Any:
    """Make SIGTERM behave like Ctrl-C (checkpoint, mark interrupted); returns the old handler."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return None


def train(
    cfg: TrainConfig,
    runs_dir: Path | str | None = None,
    name: str | None = None,
    resume: str | None = None,
    progress: ProgressFn | None = None,
) -> Run:
    """Train (or resume) an SB3 agent; returns the finished run.

    Parameters
    ----------
    cfg:
        The configuration (ignored except for ``total_timesteps`` when resuming: the run's own
        configuration is used).
    runs_dir:
        The runs directory (default ``$RL_LAB_RUNS`` or ``./runs``).
    name:
        The new run's name (default ``<env>-<algo>-s<seed>-<time>``).
    resume:
        Name of an existing run to continue from its last checkpoint.
    progress:
        Called as ``progress(steps_done, total_steps)`` after every environment step.
    """
    store = RunStore(runs_dir)
    lock: RunLock | None = None
    if resume is not None:
        run = store.get(resume)
        run.check_sound()
        lock = run.lock().acquire()  # a second train or resume of this run refuses here
        try:
            run.reload()
            run.check_sound()
            if run.status == "running":
                raise LabError(f"run {run.name!r} is still running (pid {run.info.get('pid')})")
            try:
                saved = TrainConfig.from_dict(run.info.get("config", {}))
            except TypeError:
                raise LabError(f"run {run.name!r} has an unreadable config in {run.run_json}") from None
            # The run keeps its own target unless --steps gave one (total_timesteps 0: not given).
            if cfg.total_timesteps and cfg.total_timesteps != saved.total_timesteps:
                saved.total_timesteps = cfg.total_timesteps
            cfg = saved
            check_config(cfg)
            ckpt = run.latest_checkpoint()
        except BaseException:
            lock.release()
            raise
    else:
        algo_class(cfg.algo)  # validate before creating anything
        cfg.check_policy()
        if name is not None:
            check_run_name(name)
        if cfg.total_timesteps <= 0:
            raise LabError("--steps must be a positive number of environment steps")
        check_config(cfg)
        make_env(cfg.env_id, cfg.env_kwargs).close()  # validate the env id and kwargs
        env_tag = cfg.env_id.split("/")[-1].replace(":", "-")
        if name is None:
            name = f"{env_tag}-{cfg.agent()}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = store.create(
            name,
            {
                "env_id": cfg.env_id,
                "algo": cfg.algo,
                "agent": cfg.agent(),
                "seed": cfg.seed,
                "total_timesteps": cfg.total_timesteps,
                "steps_done": 0,
                "config": cfg.to_dict(),
                "versions": versions(),
                "status": "running",
                **process_identity(),
                "error": None,
            },
        )
        lock = run.lock().acquire()
        ckpt = None

    try:
        return _train(run, cfg, ckpt, progress)
    finally:
        lock.release()


def _train(run: Run, cfg: TrainConfig, ckpt: Path | None, progress: ProgressFn | None) -> Run:
    """Train ``run`` (holding its lock) from scratch or from ``ckpt``."""
    torch.set_num_threads(max(1, cfg.torch_threads))
    cls = algo_class(cfg.algo)
    vec = make_vec_env(cfg)
    if ckpt is not None:
        try:
            model = cls.load(ckpt, env=vec, device="cpu")
        except Exception as exc:
            vec.close()
            raise LabError(f"cannot load checkpoint {ckpt}: {str(exc).splitlines()[0][:200]}") from None
        # The steps after the checkpoint are trained again: their old metrics lines are superseded.
        resumed_at = int(model.num_timesteps)
        cut = run.cut_metrics(resumed_at)
        resumes = run.info.get("resumes") if isinstance(run.info.get("resumes"), list) else []
        run.update(status="running", **process_identity(), error=None, total_timesteps=cfg.total_timesteps,
                   steps_done=resumed_at, config=cfg.to_dict(),
                   resumes=resumes + [{"from_step": resumed_at, "metrics_lines_cut": cut, "time": now_iso()}])
    else:
        model = cls(policy_class(cfg), vec, **cfg.algo_kwargs())
    remaining = cfg.total_timesteps - int(model.num_timesteps)
    previous = install_sigterm()
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=LabCallback(run, cfg, progress),
                reset_num_timesteps=ckpt is None,
            )
        save_checkpoint(model, run)
        run.update(status="done", steps_done=int(model.num_timesteps), pid=None, pid_start=None)
    except KeyboardInterrupt:
        try:
            ckpt_path = save_checkpoint(model, run)
            steps = int(model.num_timesteps)
        except OSError:  # disk full: the last periodic checkpoint is the resumable state
            ckpt_path, steps = None, None
        _best_effort_update(run, status="interrupted", pid=None, pid_start=None,
                            **({"steps_done": steps} if ckpt_path is not None else {}))
        raise
    except Exception as exc:
        if is_no_space(exc):
            _best_effort_update(run, status="interrupted", pid=None, pid_start=None,
                                error="out of disk space; free some and continue with --resume")
            raise LabError(f"out of disk space while training run {run.name!r}; free some space and "
                           f"continue it with `rl-lab train --resume {run.name}`") from None
        _best_effort_update(run, status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                            pid=None, pid_start=None)
        raise
    finally:
        vec.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return run


def _best_effort_update(run: Run, **changes: Any) -> None:
    """``run.update`` that cannot fail (the disk may be full): run.json keeps its last good version."""
    try:
        run.update(**changes)
    except OSError:
        pass


def tqdm_progress(desc: str) -> tuple[ProgressFn, Callable[[], None]]:
    """A progress callback drawing a tqdm bar on stderr, and a function that closes it."""
    bar = tqdm(total=0, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get("RL_LAB_PROGRESS") != "1")

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        if done % 256 == 0 or done >= total:
            bar.refresh()

    return update, bar.close
