"""Train a decision transformer (or behaviour-cloning transformer) from an RL run's trajectories.

The run directory has the same layout as an RL run: ``run.json`` (algo ``dt``/``bc``,
``source_run``, ``model_config``, dataset statistics), ``metrics.jsonl`` (one line every
``log_every`` gradient steps: loss, accuracy, tokens/s), ``checkpoints/step_<N>.pt`` (a
``state_dict`` on CPU, loadable with ``weights_only=True``), ``tensorboard/`` (the metrics lines'
scalars as TensorBoard events, under ``train/``). Steps are gradient steps. Ctrl-C or
SIGTERM saves a checkpoint and marks the run ``interrupted``.

A tenth of the episodes is held out: ``val_loss`` on them is logged beside the training loss,
and by default training stops once it has not improved for ``patience`` metrics lines and ends
with the weights of its lowest value (``best_step`` in ``run.json``; the later checkpoints,
which only memorise more of the source policies' sampled actions, are removed).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from rl_lab.config import DT_ALGOS, imitator_name, run_agent
from rl_lab.devices import resolve_device
from rl_lab.dt.evaluate import evaluate
from rl_lab.dt.model import DecisionTransformer, DTModelConfig, loss_and_accuracy
from rl_lab.dt.trajectories import Trajectories, collect
from rl_lab.errors import LabError
from rl_lab.runs import Run, RunStore, checkpoint_step, process_identity
from rl_lab.train import ProgressFn, install_sigterm, versions


@dataclass
class DTTrainConfig:
    """Everything that determines a dt/bc training run; stored in ``run.json`` as ``config``."""

    algo: str = "dt"
    """``dt`` (conditioned on return-to-go) or ``bc`` (behaviour cloning: no return-to-go token)."""
    source_run: str = ""
    """The RL run whose checkpoints (and a random policy) generate the offline dataset."""
    steps: int = 2000
    """Gradient steps."""
    context: int = 10
    """K: timesteps per context window."""
    batch_size: int = 64
    """Windows per gradient step."""
    learning_rate: float = 1e-3
    """AdamW step size (linear warm-up, then constant)."""
    warmup_steps: int = 100
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    d_model: int = 64
    """Residual stream width."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 2
    """Attention heads per block."""
    d_mlp: int = 256
    """MLP hidden width."""
    seed: int = 0
    """Seeds the weights and the batch sampling."""
    trajectories: str = "default"
    """Name of the trajectory file under ``SOURCE/trajectories/`` (collected if missing)."""
    episodes_per_policy: int = 20
    """Episodes per source policy when the trajectory file has to be collected."""
    max_checkpoints: int | None = None
    """At most this many source checkpoints when collecting (default: all)."""
    source_checkpoints: list[str] | None = None
    """Only these source checkpoints (training steps, or ``latest``) when collecting (default: all)."""
    random_policy: bool = True
    """Add a uniformly random policy's episodes to the collected dataset (the lowest quality level);
    ``False`` imitates the source checkpoints alone."""
    checkpoint_every: int = 500
    """Save a checkpoint every this many steps (and always at the end)."""
    log_every: int = 50
    """Write a metrics line every this many steps."""
    val_fraction: float = 0.1
    """Fraction of the dataset's episodes held out (by episode) for ``val_loss``/``val_accuracy``."""
    val_windows: int = 2048
    """At most this many held-out windows scored at each metrics line."""
    restore_best: bool = True
    """End with the weights of the lowest ``val_loss`` (early stopping): they are saved as the
    checkpoint of their step, and the later, more over-fitted checkpoints are removed."""
    patience: int = 20
    """Stop after this many metrics lines without a lower ``val_loss`` (0: run every step)."""
    eval_episodes: int = 5
    """Episodes per target return in the evaluation at the end (0: no evaluation)."""
    threads: int = 1
    """torch CPU threads (1 is fastest for a model this small on a shared machine)."""
    device: str = "cpu"
    """Torch device of the model and batches: ``cpu`` or ``cuda:N`` (``auto`` is resolved before it is
    stored, by ``rl_lab.devices.resolve_device``); checkpoints are saved on CPU either way."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """The source run's environment options (filled in from it)."""
    gamma: float = 0.99
    """The source run's discount (used by the recorder's TD-error labels; filled in from it)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _save(model: DecisionTransformer, run: Run, step: int) -> Path:
    path = run.checkpoint_path(step, ".pt")
    tmp = path.with_suffix(".pt.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return path


def split_by_episode(data: Trajectories, cfg: DTTrainConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, dict[str, torch.Tensor] | None]:
    """Training rows, and a fixed batch of windows from held-out episodes (None without any).

    Whole episodes are held out (``cfg.val_fraction`` of them, at least one, never all), so
    ``val_loss`` measures how well the model predicts the source policies' actions on
    trajectories it never saw: a training loss falling while it rises is memorisation.
    """
    n_eps = len(data.ep_return)
    n_val = int(round(cfg.val_fraction * n_eps))
    if cfg.val_fraction > 0:
        n_val = min(max(1, n_val), n_eps - 1)
    if n_val <= 0:
        return np.arange(len(data)), None
    held_out = np.zeros(n_eps, dtype=bool)
    held_out[rng.choice(n_eps, size=n_val, replace=False)] = True
    val_step = held_out[data.episode]
    val_rows = np.flatnonzero(val_step)
    if len(val_rows) > cfg.val_windows:
        val_rows = np.sort(rng.choice(val_rows, size=cfg.val_windows, replace=False))
    batch = {k: torch.as_tensor(v).to(cfg.device) for k, v in data.windows(val_rows, cfg.context).items()}
    return np.flatnonzero(~val_step), batch


def validation(model: DecisionTransformer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """``val_loss`` and ``val_accuracy`` on the held-out windows (the action at their last step)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"])
        last = logits[:, -1]
        target = batch["actions"][:, -1]
        loss = torch.nn.functional.cross_entropy(last, target)
        acc = (last.argmax(-1) == target).float().mean()
    model.train(was_training)
    return {"val_loss": float(loss), "val_accuracy": float(acc)}


def model_config_for(cfg: DTTrainConfig, data: Trajectories) -> DTModelConfig:
    scale = float(max(1e-6, np.abs(data.ep_return).max()))
    return DTModelConfig(
        obs_dim=data.obs_dim, n_actions=data.n_actions, context=cfg.context, use_rtg=cfg.algo == "dt",
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp,
        max_timestep=int(data.attrs["max_t"]), rtg_scale=scale, seed=cfg.seed,
    )


def train_dt(
    cfg: DTTrainConfig,
    runs_dir: Path | str | None = None,
    name: str | None = None,
    progress: ProgressFn | None = None,
    collect_progress: ProgressFn | None = None,
) -> Run:
    """Train a dt/bc model from ``cfg.source_run``'s trajectories; returns the finished run."""
    if cfg.algo not in DT_ALGOS:
        raise LabError(f"unknown algorithm {cfg.algo!r} for a sequence model; choose dt or bc")
    if cfg.steps <= 0:
        raise LabError("--steps must be a positive number of gradient steps")
    if cfg.context <= 0:
        raise LabError("--context must be a positive number of timesteps")
    if cfg.d_model % cfg.n_heads:
        raise LabError(f"--d-model ({cfg.d_model}) must be divisible by --heads ({cfg.n_heads})")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise LabError(f"the validation fraction must be in [0, 1), got {cfg.val_fraction}")
    if not cfg.source_run:
        raise LabError(f"--algo {cfg.algo} needs --from RUN (the RL run whose trajectories it learns from)")
    cfg.device = resolve_device(cfg.device)
    store = RunStore(runs_dir)
    source = store.get(cfg.source_run)
    src_cfg = source.info.get("config", {})
    cfg.env_kwargs = dict(src_cfg.get("env_kwargs") or {})
    cfg.gamma = float(src_cfg.get("gamma", 0.99))
    traj_path = collect(source, cfg.trajectories, episodes_per_policy=cfg.episodes_per_policy, seed=0,
                        max_checkpoints=cfg.max_checkpoints, progress=collect_progress,
                        checkpoints=cfg.source_checkpoints, include_random=cfg.random_policy)
    data = Trajectories.load(traj_path)
    mcfg = model_config_for(cfg, data)
    env_id = source.info.get("env_id")
    env_tag = str(env_id).split("/")[-1].replace(":", "-")
    name = name or f"{env_tag}-{cfg.algo}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    dataset = {
        "path": str(traj_path), "steps": len(data), "episodes": int(len(data.ep_return)),
        "min_return": float(data.ep_return.min()), "max_return": float(data.ep_return.max()),
        "mean_return": float(data.ep_return.mean()), "policies": data.policy_returns(),
    }
    run = store.create(name, {
        "env_id": env_id, "algo": cfg.algo, "agent": imitator_name(cfg.algo, run_agent(source.info)),
        "seed": cfg.seed, "source_run": source.name,
        "source_run_path": str(source.path.resolve()),
        "total_timesteps": cfg.steps, "steps_done": 0, "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(), "dataset": dataset, "versions": versions(),
        "status": "running", **process_identity(), "error": None,
    })

    torch.set_num_threads(max(1, cfg.threads))
    model = DecisionTransformer(mcfg).to(cfg.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    rng = np.random.default_rng(cfg.seed)
    train_rows, val_batch = split_by_episode(data, cfg, rng)
    best: dict[str, Any] = {"val_loss": float("inf"), "step": 0, "state": None, "since": 0}
    step = 0
    writer = SummaryWriter(log_dir=str(run.tensorboard_dir))
    previous = install_sigterm()
    t_log, tokens_since, loss_acc, acc_acc, n_acc = time.time(), 0, 0.0, 0.0, 0
    try:
        while step < cfg.steps:
            ends = train_rows[rng.integers(0, len(train_rows), size=cfg.batch_size)]
            batch = {k: torch.as_tensor(v).to(cfg.device) for k, v in data.windows(ends, cfg.context).items()}
            logits = model(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"])
            loss, acc = loss_and_accuracy(logits, batch["actions"], batch["mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            tokens_since += cfg.batch_size * mcfg.n_ctx
            loss_acc += float(loss.detach())
            acc_acc += float(acc)
            n_acc += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = max(time.time() - t_log, 1e-9)
                line = {"step": step, "time": round(time.time(), 3), "loss": loss_acc / n_acc,
                        "accuracy": acc_acc / n_acc, "tokens_per_s": round(tokens_since / elapsed, 1),
                        "lr": float(sched.get_last_lr()[0])}
                if val_batch is not None:
                    line.update(validation(model, val_batch))
                    if line["val_loss"] < best["val_loss"]:
                        best.update(val_loss=line["val_loss"], step=step, since=0,
                                    state={k: v.detach().clone() for k, v in model.state_dict().items()})
                    else:
                        best["since"] += 1
                run.log_metrics(line)
                for key, value in line.items():
                    if key not in ("step", "time"):
                        writer.add_scalar(f"train/{key}", value, step)
                run.update(steps_done=step)
                t_log, tokens_since, loss_acc, acc_acc, n_acc = time.time(), 0, 0.0, 0.0, 0
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save(model, run, step)
            if progress is not None:
                progress(step, cfg.steps)
            if cfg.patience and best["since"] >= cfg.patience:
                run.update(stopped_early_at=step)
                break
        if cfg.restore_best and best["state"] is not None and best["step"] < step:
            model.load_state_dict(best["state"])
            for old in run.checkpoints():
                if checkpoint_step(old) > best["step"]:
                    old.unlink()
            ckpt = _save(model, run, best["step"])
        else:
            ckpt = _save(model, run, step)
        if best["state"] is not None:
            run.update(best_step=best["step"], best_val_loss=best["val_loss"])
        run.update(steps_done=step)
        if cfg.eval_episodes > 0:
            result = evaluate(run, ckpt, episodes=cfg.eval_episodes)
            at_best = result.get("return_at_best_target")
            if at_best is not None:
                run.log_metrics({"step": step, "time": round(time.time(), 3), "episode_return": at_best,
                                 "eval_target": result.get("dataset_best_return")})
                writer.add_scalar("eval/return_at_best_target", at_best, step)
        run.update(status="done", steps_done=step, pid=None)
    except KeyboardInterrupt:
        _save(model, run, step)
        run.update(status="interrupted", steps_done=step, pid=None)
        raise
    except Exception as exc:
        run.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0], pid=None)
        raise
    finally:
        writer.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return run
