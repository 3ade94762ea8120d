"""Train a stable-baselines3 agent into a run directory.

The run directory fills as training goes: ``run.json`` (status, pid, progress), one line of
``metrics.jsonl`` per rollout, ``checkpoints/step_<N>.zip`` every ``checkpoint_every`` steps.
Ctrl-C or SIGTERM saves a checkpoint and marks the run ``interrupted``; ``resume`` continues
from the last checkpoint.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
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
from rl_lab.runs import Run, RunStore

ProgressFn = Callable[[int, int], None]


def algo_class(algo: str) -> Any:
    """The SB3 class for an algorithm name."""
    classes = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}
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


def make_vec_env(cfg: TrainConfig) -> Any:
    n = 1 if cfg.algo == "dqn" else cfg.n_envs

    def factory(i: int) -> Callable[[], Any]:
        def _make() -> Any:
            env = Monitor(make_env(cfg.env_id, cfg.env_kwargs))
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
    path = run.checkpoint_path(model.num_timesteps, ".zip")
    model.save(path)
    return path


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
    if resume:
        run = store.get(resume)
        if run.status == "running":
            raise LabError(f"run {run.name!r} is still running (pid {run.info.get('pid')})")
        saved = TrainConfig.from_dict(run.info.get("config", {}))
        if cfg.total_timesteps and cfg.total_timesteps != saved.total_timesteps:
            saved.total_timesteps = cfg.total_timesteps
        cfg = saved
        ckpt = run.latest_checkpoint()
    else:
        algo_class(cfg.algo)  # validate before creating anything
        if cfg.total_timesteps <= 0:
            raise LabError("--steps must be a positive number of environment steps")
        make_env(cfg.env_id, cfg.env_kwargs).close()  # validate the env id and kwargs
        env_tag = cfg.env_id.split("/")[-1].replace(":", "-")
        name = name or f"{env_tag}-{cfg.algo}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = store.create(
            name,
            {
                "env_id": cfg.env_id,
                "algo": cfg.algo,
                "seed": cfg.seed,
                "total_timesteps": cfg.total_timesteps,
                "steps_done": 0,
                "config": cfg.to_dict(),
                "versions": versions(),
                "status": "running",
                "pid": os.getpid(),
                "error": None,
            },
        )
        ckpt = None

    torch.set_num_threads(max(1, cfg.torch_threads))
    cls = algo_class(cfg.algo)
    vec = make_vec_env(cfg)
    if ckpt is not None:
        model = cls.load(ckpt, env=vec, device="cpu")
        run.update(status="running", pid=os.getpid(), error=None, total_timesteps=cfg.total_timesteps,
                   config=cfg.to_dict())
    else:
        model = cls("MlpPolicy", vec, **cfg.algo_kwargs())
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
        run.update(status="done", steps_done=int(model.num_timesteps), pid=None)
    except KeyboardInterrupt:
        save_checkpoint(model, run)
        run.update(status="interrupted", steps_done=int(model.num_timesteps), pid=None)
        raise
    except Exception as exc:
        run.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0], pid=None)
        raise
    finally:
        vec.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return run


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
