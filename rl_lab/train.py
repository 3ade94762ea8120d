"""Train a stable-baselines3 agent into a run directory.

The run directory fills as training goes: ``run.json`` (status, pid, progress), one line of
``metrics.jsonl`` per update (its losses, and the returns of the rollout it learned from),
``checkpoints/step_<N>.zip`` every ``checkpoint_every`` steps; SB3's own files for the usual
tools: ``tensorboard/`` (event files), ``progress.csv`` (SB3's logger) and ``<i>.monitor.csv``
(SB3 ``Monitor``, one per parallel environment). Ctrl-C or SIGTERM saves a checkpoint and marks
the run ``interrupted``; ``resume`` continues from the last checkpoint and appends to all of them.
"""

from __future__ import annotations

import importlib.metadata
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
import tensorboard  # noqa: F401  torch.utils.tensorboard writes through it: a declared dependency
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
import rl_lab
from rl_lab.config import SB3_ALGOS, TrainConfig
from rl_lab.devices import resolve_device
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
    """The SB3 policy for a configuration: a name SB3 knows, or the transformer policy class
    (``cnn``: SB3's ``CnnPolicy`` with the lab's ``GridCNN`` extractor, set by ``algo_kwargs``)."""
    if cfg.policy == "transformer":
        return TransformerActorCriticPolicy
    if cfg.policy == "cnn":
        return "CnnPolicy"
    return "MlpLstmPolicy" if cfg.algo == "recurrent-ppo" else "MlpPolicy"


def make_policy_env(config: dict[str, Any], render_mode: str | None = None) -> Any:
    """One environment as a run's policy sees it (``config``: the run's ``run.json`` config): the
    history vector for a transformer policy (``rl_lab.policies``), the raw observation otherwise.
    Live rollouts on the SB3 policy itself (steering, SAE splicing) make their environments here."""
    env = make_env(config["env_id"], config.get("env_kwargs") or {}, render_mode=render_mode)
    return wrap_for_policy(env, str(config.get("policy") or "mlp"), int(config.get("context") or 10))


def make_vec_env(cfg: TrainConfig, run: Run | None = None) -> Any:
    """The training environments; with ``run``, each one's ``Monitor`` writes ``RUN/<i>.monitor.csv``
    (appended to when it exists: a resumed run keeps its episode log)."""
    n = 1 if cfg.algo == "dqn" else cfg.n_envs

    def monitored(i: int) -> Any:
        env = make_env(cfg.env_id, cfg.env_kwargs)
        if run is None:
            return Monitor(env)
        path = run.monitor_csv(i)
        return Monitor(env, filename=str(path), override_existing=not path.exists())

    def factory(i: int) -> Callable[[], Any]:
        def _make() -> Any:
            env = wrap_for_policy(monitored(i), cfg.policy, cfg.context)
            env.reset(seed=cfg.seed * 1000 + i)
            return env

        return _make

    vec = DummyVecEnv([factory(i) for i in range(n)])
    vec.seed(cfg.seed)
    return vec


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; else ``platform.processor()``, else the architecture).

    Float results of the same seed can differ between processors (different vector instructions in
    torch's and numpy's kernels), so a run names the one it trained on."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """What decides a run's numbers besides its config: the libraries that compute them, and the CPU."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "stable_baselines3": sb3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "gymnasium": gymnasium.__version__,
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "rl_lab": rl_lab.__version__,
        "cpu": cpu_model(),
    }


STEP_KEY = "time/total_timesteps"
"""The column of ``progress.csv`` that holds a row's environment step."""


class ResumableCSV(CSVOutputFormat):
    """SB3's CSV output that continues ``progress.csv`` on ``--resume``: the rows past the resumed
    checkpoint (``keep_until``) are dropped, as ``metrics.jsonl`` drops its lines, and new rows append."""

    def __init__(self, path: Path, keep_until: int | None = None) -> None:
        if keep_until is None or not path.exists():
            super().__init__(str(path))
            return
        import csv

        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        header = rows[0] if rows else []
        col = header.index(STEP_KEY) if STEP_KEY in header else None

        def kept(row: list[str]) -> bool:
            try:
                return col is None or col >= len(row) or not row[col] or float(row[col]) <= keep_until
            except ValueError:
                return True

        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([header] + [r for r in rows[1:] if kept(r)] if header else [])
        write_bytes_atomic(path, text.getvalue().encode())
        self.file = open(path, "r+")
        self.file.seek(0, io.SEEK_END)
        self.keys = list(header)
        self.separator = ","
        self.quotechar = '"'


class ResumableTensorBoard(TensorBoardOutputFormat):
    """SB3's TensorBoard output; on ``--resume`` TensorBoard discards the older events at or past
    the resumed step (``purge_step``), so a curve shows each step once."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # Events from step ``purge_step + 1`` on are superseded: the resumed checkpoint's own step stays.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=None if purge_step is None else purge_step + 1)
        self._is_closed = False


class UpdateLogger(Logger):
    """SB3's logger whose dump after a rollout waits for the update that follows it (``flush_update``).

    SB3's on-policy ``learn`` dumps the rollout's statistics before ``train()``, so the ``train/``
    losses in a row are the previous update's (and the last update's are never written). Held back
    until ``train()`` has recorded its losses, one row (``progress.csv``, TensorBoard) holds a
    rollout's returns and the losses of the update made from it, at the rollout's last step.
    """

    def __init__(self, folder: str, output_formats: list[Any], defer: bool) -> None:
        super().__init__(folder, output_formats)
        self.defer = defer
        self.pending_step: int | None = None

    def dump(self, step: int = 0) -> None:
        if self.defer:
            self.pending_step = step
            return
        super().dump(step)

    def flush_update(self, step: int) -> None:
        """Write what was held back (and the update's losses) at ``step``."""
        self.record(STEP_KEY, step, exclude="tensorboard")
        self.pending_step = None
        super().dump(step)


def make_logger(run: Run, cfg: TrainConfig, resumed_at: int | None) -> UpdateLogger:
    """SB3's logger for ``run``: ``progress.csv`` and ``tensorboard/``, continued on resume."""
    formats = [ResumableCSV(run.progress_csv, resumed_at), ResumableTensorBoard(run.tensorboard_dir, resumed_at)]
    return UpdateLogger(str(run.path), formats, defer=cfg.algo != "dqn")


class LabCallback(BaseCallback):
    """Logs one metrics line per update, saves periodic checkpoints, updates run.json.

    On-policy algorithms (PPO, A2C, recurrent PPO) log when the next rollout starts and when
    training ends: both come right after ``train()``, so the line carries that update's losses.
    DQN logs every 1000 steps (its updates come every few steps) and when training ends.
    """

    def __init__(self, run: Run, cfg: TrainConfig, progress: ProgressFn | None = None) -> None:
        super().__init__()
        self.run = run
        self.cfg = cfg
        self.progress = progress
        self._t0 = time.time()
        self._steps0 = 0
        self._next_ckpt = 0
        self._last_log = 0
        self._update_pending = False

    def _on_training_start(self) -> None:
        self._t0 = time.time()
        self._steps0 = self.num_timesteps
        self._last_log = self.num_timesteps  # a resumed run logged its checkpoint's step already
        every = self.cfg.checkpoint_every
        self._next_ckpt = (self.num_timesteps // every + 1) * every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_ckpt:
            save_checkpoint(self.model, self.run, self.cfg)
            self._next_ckpt += self.cfg.checkpoint_every
        if self.cfg.algo == "dqn" and self.num_timesteps - self._last_log >= 1000:
            self._log()
        if self.progress is not None:
            self.progress(self.num_timesteps, self.cfg.total_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        self._update_pending = self.cfg.algo != "dqn"

    def _on_rollout_start(self) -> None:
        if self._update_pending:  # the update after the previous rollout has just run
            self._log_update()

    def _on_training_end(self) -> None:
        if self._update_pending:
            self._log_update()
        elif self.cfg.algo == "dqn" and self.num_timesteps > self._last_log:
            self._log()
            self.model.logger.dump(step=self.num_timesteps)

    def _log_update(self) -> None:
        self._update_pending = False
        self._log()
        if isinstance(self.model.logger, UpdateLogger):
            self.model.logger.flush_update(self.num_timesteps)

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


def save_checkpoint(model: Any, run: Run, cfg: TrainConfig | None = None) -> Path:
    """Save ``checkpoints/step_<N>.zip`` atomically: a kill mid-save leaves the previous checkpoints intact.

    With ``cfg.save_replay_buffer`` (DQN), the replay buffer goes first to
    ``checkpoints/step_<N>.replay.pkl`` and the older buffers are removed: only the newest
    checkpoint keeps one (a buffer is as large as its capacity in observations).
    """
    path = run.checkpoint_path(model.num_timesteps, ".zip")
    if cfg is not None and cfg.save_replay_buffer and hasattr(model, "save_replay_buffer"):
        replay = run.replay_buffer_path(path)
        data = io.BytesIO()
        model.save_replay_buffer(data)
        write_bytes_atomic(replay, data.getvalue())
        for old in run.checkpoints_dir.glob(f"*{replay.name[len(path.stem):]}"):
            if old != replay and not old.name.startswith("."):
                old.unlink(missing_ok=True)
    buffer = io.BytesIO()
    model.save(buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def load_replay_buffer(model: Any, run: Run, ckpt: Path) -> int | None:
    """Load the replay buffer saved beside ``ckpt`` into ``model``; its size, or None when there is none."""
    replay = run.replay_buffer_path(ckpt)
    if not hasattr(model, "load_replay_buffer") or not replay.exists():
        return None
    try:
        model.load_replay_buffer(str(replay))
    except Exception as exc:
        raise LabError(f"cannot load the replay buffer {replay}: {str(exc).splitlines()[0][:200]}") from None
    return int(model.replay_buffer.size())


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
    if cfg.target_kl is not None and finite("--target-kl", cfg.target_kl) <= 0:
        raise LabError(f"--target-kl must be positive, got {cfg.target_kl}")
    if not cfg.net_arch or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in cfg.net_arch):
        raise LabError(f"the hidden layer sizes must be positive whole numbers, got {cfg.net_arch!r}")
    if cfg.save_replay_buffer and cfg.algo != "dqn":
        raise LabError(f"--save-replay-buffer is for --algo dqn (the only replay-buffer algorithm), not {cfg.algo}")
    cfg.device = resolve_device(cfg.device)


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
        Name of an existing run to continue from its last checkpoint (``cfg.device`` and
        ``cfg.save_replay_buffer`` then apply too: a run can move to another device).
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
            # Holding the lock, a run.json written on another host (liveness unknown) is resumable:
            # its process would hold the lock were it still training (the lock must work on the
            # shared runs directory, as flock does on NFSv4 and most cluster file systems).
            if run.status == "running" and run.liveness == "alive":
                raise LabError(f"run {run.name!r} is still running (pid {run.info.get('pid')})")
            try:
                saved = TrainConfig.from_dict(run.info.get("config", {}))
            except TypeError:
                raise LabError(f"run {run.name!r} has an unreadable config in {run.run_json}") from None
            # The run keeps its own target unless --steps gave one (total_timesteps 0: not given).
            if cfg.total_timesteps and cfg.total_timesteps != saved.total_timesteps:
                saved.total_timesteps = cfg.total_timesteps
            saved.device = cfg.device
            saved.save_replay_buffer = saved.save_replay_buffer or cfg.save_replay_buffer
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
        probe_env = make_env(cfg.env_id, cfg.env_kwargs)  # validate the env id and kwargs
        try:
            cfg.check_observations(probe_env.observation_space)  # e.g. --policy cnn needs images
        finally:
            probe_env.close()
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
    vec = make_vec_env(cfg, run)
    resumed_at: int | None = None
    if ckpt is not None:
        try:
            model = cls.load(ckpt, env=vec, device=cfg.device)
            replay_size = load_replay_buffer(model, run, ckpt)
        except Exception as exc:
            vec.close()
            if isinstance(exc, LabError):
                raise
            raise LabError(f"cannot load checkpoint {ckpt}: {str(exc).splitlines()[0][:200]}") from None
        # The steps after the checkpoint are trained again: their old metrics lines are superseded.
        resumed_at = int(model.num_timesteps)
        cut = run.cut_metrics(resumed_at)
        resumes = run.info.get("resumes") if isinstance(run.info.get("resumes"), list) else []
        entry = {"from_step": resumed_at, "metrics_lines_cut": cut, "time": now_iso(), "device": cfg.device}
        if cfg.algo == "dqn":
            entry["replay_buffer_size"] = replay_size  # None: resumed with an empty buffer
        run.update(status="running", **process_identity(), error=None, total_timesteps=cfg.total_timesteps,
                   steps_done=resumed_at, config=cfg.to_dict(), resumes=resumes + [entry])
    else:
        model = cls(policy_class(cfg), vec, **cfg.algo_kwargs())
    logger = make_logger(run, cfg, resumed_at)
    model.set_logger(logger)
    remaining = cfg.total_timesteps - int(model.num_timesteps)
    previous = install_sigterm()
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=LabCallback(run, cfg, progress),
                reset_num_timesteps=ckpt is None,
                # on-policy: one logger row per rollout, like metrics.jsonl (A2C's own default is 100);
                # DQN counts episodes here: SB3's default
                **({} if cfg.algo == "dqn" else {"log_interval": 1}),
            )
        save_checkpoint(model, run, cfg)
        run.update(status="done", steps_done=int(model.num_timesteps), pid=None, pid_start=None)
    except KeyboardInterrupt:
        try:
            ckpt_path = save_checkpoint(model, run, cfg)
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
        logger.close()
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
