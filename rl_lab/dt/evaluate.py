"""Acting with a trained decision transformer, and its online evaluation (the RTG calibration curve).

A decision transformer is told the return it should achieve. ``evaluate`` rolls it out for a
range of target returns and measures the return it actually achieves; a working DT's achieved
return rises with the target (up to what its data supports). The result goes to
``RUN/eval.json``. A ``bc`` model ignores the target, so it is evaluated at one "target".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from probes.stats import t_interval
from rl_lab.config import DT_ALGOS
from rl_lab.dt.model import DecisionTransformer, DTModelConfig
from rl_lab.dt.trajectories import episode_windows
from rl_lab.errors import LabError
from rl_lab.runs import Run, checkpoint_step, write_json_atomic
from rl_lab.train import ProgressFn, make_env


def load_model(run: Run, checkpoint: Path | None = None) -> DecisionTransformer:
    """The model of a dt/bc run at ``checkpoint`` (default: the latest), in eval mode."""
    if run.info.get("algo") not in DT_ALGOS:
        raise LabError(f"run {run.name!r} is not a decision-transformer run (algo {run.info.get('algo')!r})")
    model_cfg = run.info.get("model_config")
    if not isinstance(model_cfg, dict):
        raise LabError(f"run {run.name!r} has no model_config in run.json")
    checkpoint = Path(checkpoint) if checkpoint is not None else run.latest_checkpoint()
    model = DecisionTransformer(DTModelConfig.from_dict(model_cfg))
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise LabError(f"cannot load checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model


class DTActor:
    """Acts step by step, keeping the last K timesteps of history.

    Actions are sampled from the softmax of the logits divided by ``temperature`` (below 1 is
    sharper; ``deterministic`` takes the argmax).
    The return-to-go starts at ``target_return`` and drops by each reward given to ``observe``
    (without ``observe`` it stays at the target). ``rtg_used`` lists the return-to-go the model
    was given at each step, so the same inputs can be replayed for the whole episode at once.
    """

    def __init__(self, model: DecisionTransformer, target_return: float, deterministic: bool = False,
                 generator: torch.Generator | None = None, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise LabError(f"the sampling temperature must be positive, got {temperature}")
        self.model = model
        self.target_return = float(target_return)
        self.deterministic = deterministic
        self.temperature = float(temperature)
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        self.obs: list[np.ndarray] = []
        self.actions: list[int] = []
        self.rtg_used: list[float] = []
        self._rtg = self.target_return

    def act(self, obs: np.ndarray) -> int:
        K = self.model.cfg.context
        self.obs.append(np.asarray(obs, dtype=np.float32).reshape(-1))
        self.rtg_used.append(self._rtg)
        t = len(self.obs) - 1
        lo = max(0, t + 1 - K)
        # The action slot of the current step is a placeholder: a_t's token comes after s_t.
        acts = self.actions[lo:] + [0]
        win = episode_windows(np.stack(self.obs[lo:]), np.asarray(acts), np.asarray(self.rtg_used[lo:]), K, t0=lo)
        device = next(self.model.parameters()).device
        last = {k: torch.as_tensor(v[-1:], device=device) for k, v in win.items()}
        with torch.no_grad():
            logits = self.model(last["states"], last["actions"], last["rtg"], last["timesteps"], last["mask"])[0, -1].cpu()
        if self.deterministic:
            action = int(logits.argmax())
        else:
            action = int(torch.multinomial(torch.softmax(logits / self.temperature, -1), 1, generator=self.generator))
        self.actions.append(action)
        return action

    def observe(self, reward: float) -> None:
        """The reward that followed the last action: the return still to get drops by it."""
        self._rtg -= float(reward)


def rollout_return(env: Any, actor: DTActor, seed: int) -> tuple[float, int]:
    """One episode; its return and length."""
    obs, _ = env.reset(seed=seed)
    actor.reset()
    total, steps = 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(actor.act(obs))
        actor.observe(float(reward))
        total += float(reward)
        steps += 1
    return total, steps


def default_targets(run: Run, n: int = 6) -> list[float]:
    """Targets from the dataset's worst to its best episode return (plus one beyond the best)."""
    stats = run.info.get("dataset", {})
    lo, hi = stats.get("min_return"), stats.get("max_return")
    if lo is None or hi is None:
        raise LabError(f"run {run.name!r} has no dataset statistics in run.json; pass targets explicitly")
    span = hi - lo
    if span <= 0:  # every dataset episode returned the same (e.g. a sparse-reward task never solved)
        return [float(lo)]
    return [float(x) for x in np.linspace(lo, hi, n)] + [float(hi + 0.25 * span)]


def evaluate(
    run: Run,
    checkpoint: Path | None = None,
    targets: Sequence[float] | None = None,
    episodes: int = 10,
    seed: int = 1_000_000,
    deterministic: bool = False,
    write: bool = True,
    progress: ProgressFn | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Achieved return for each target return; written to ``RUN/eval.json`` when ``write``.

    Episode i of every target resets the environment with ``seed + i`` (the same starts for
    every target). The default seed is far from the trajectory-collection seeds.
    """
    if episodes <= 0:
        raise LabError("--episodes must be positive")
    checkpoint = Path(checkpoint) if checkpoint is not None else run.latest_checkpoint()
    model = load_model(run, checkpoint)
    use_rtg = model.cfg.use_rtg
    if targets is None:
        targets = default_targets(run) if use_rtg else [float(run.info.get("dataset", {}).get("max_return", 0.0))]
    targets = [float(x) for x in targets]
    if not use_rtg:
        targets = targets[:1]
    cfg = run.info.get("config", {})
    env = make_env(run.info["env_id"], cfg.get("env_kwargs") or {})
    gen = torch.Generator().manual_seed(seed)
    rows = []
    t0 = time.time()
    try:
        for j, target in enumerate(targets):
            actor = DTActor(model, target, deterministic=deterministic, generator=gen, temperature=temperature)
            returns, lengths = [], []
            for i in range(episodes):
                ret, length = rollout_return(env, actor, seed + i)
                returns.append(ret)
                lengths.append(length)
            r = np.asarray(returns)
            mean, low, high = t_interval(r)  # t with len(r) - 1 degrees of freedom; one episode: no width
            rows.append({"target": target, "mean_return": mean, "std_return": float(r.std()),
                         "ci": [low, high] if len(r) > 1 else [mean, mean],
                         "mean_length": float(np.mean(lengths)), "returns": [float(x) for x in r]})
            if progress is not None:
                progress(j + 1, len(targets))
    finally:
        env.close()
    dataset = run.info.get("dataset", {})
    best = dataset.get("max_return")
    result: dict[str, Any] = {
        "schema_version": 1,
        "run": run.name,
        "algo": run.info.get("algo"),
        "checkpoint": checkpoint.stem,
        "checkpoint_step": checkpoint_step(checkpoint),
        "episodes": episodes,
        "seed": seed,
        "deterministic": deterministic,
        "temperature": temperature,
        "dataset_best_return": best,
        "dataset_mean_return": dataset.get("mean_return"),
        "rows": rows,
        "seconds": round(time.time() - t0, 2),
    }
    x = np.asarray([row["target"] for row in rows])
    if use_rtg and len(rows) > 1 and np.ptp(x) > 0:  # a slope needs at least two distinct targets
        y = np.asarray([row["mean_return"] for row in rows])
        result["calibration_slope"] = float(np.polyfit(x, y, 1)[0])
        result["calibration_corr"] = float(np.corrcoef(x, y)[0, 1]) if y.std() > 0 else 0.0
    if best is not None:
        # The criterion: conditioned on the dataset's best return, reach >= 80% of it.
        at_best = min(rows, key=lambda row: abs(row["target"] - best))
        result["return_at_best_target"] = at_best["mean_return"]
        # As a ratio only when the best return is positive; the normalised score (0 = the
        # dataset's worst episode, 1 = its best) is meaningful whatever the sign.
        result["fraction_of_best"] = at_best["mean_return"] / best if best > 0 else None
        worst = dataset.get("min_return")
        if worst is not None and best > worst:
            result["normalised_score"] = (at_best["mean_return"] - worst) / (best - worst)
        # The best single episode is the top of a noisy distribution; the best source policy's
        # mean return is what a perfect imitation of the dataset's best quality level achieves.
        policies = {k: v for k, v in (dataset.get("policies") or {}).items() if k != "random"}
        if policies:
            name, stats = max(policies.items(), key=lambda kv: kv[1]["mean"])
            result["best_policy"] = name
            result["best_policy_mean_return"] = stats["mean"]
            result["fraction_of_best_policy_mean"] = (at_best["mean_return"] / stats["mean"]
                                                      if stats["mean"] > 0 else None)
    if write:
        write_json_atomic(run.eval_path, result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The calibration curve as a plain-text table, with one summary line."""
    lines = [f"{'target':>10}  {'achieved':>10}  {'95% CI':>21}  {'length':>7}"]
    for row in result["rows"]:
        lo, hi = row["ci"]
        lines.append(f"{row['target']:>10.3f}  {row['mean_return']:>10.3f}  [{lo:>8.3f}, {hi:>8.3f}]  "
                     f"{row['mean_length']:>7.1f}")
    best = result.get("dataset_best_return")
    if best is not None and result.get("return_at_best_target") is not None:
        frac, score = result.get("fraction_of_best"), result.get("normalised_score")
        frac_txt = f" ({100 * frac:.0f}% of it)" if frac is not None else ""
        if score is not None:
            frac_txt += f"; normalised score {score:.2f} (0 = worst, 1 = best dataset episode)"
        lines.append(f"best return in the dataset {best:.3f}; achieved {result['return_at_best_target']:.3f} "
                     f"when conditioned on it{frac_txt}")
    if result.get("best_policy") is not None:
        frac = result.get("fraction_of_best_policy_mean")
        lines.append(f"best source policy {result['best_policy']}: mean return {result['best_policy_mean_return']:.3f}"
                     + (f"; achieved {100 * frac:.0f}% of it" if frac is not None else ""))
    if "calibration_slope" in result:
        lines.append(f"calibration: slope {result['calibration_slope']:.3f}, "
                     f"correlation {result['calibration_corr']:.3f} (achieved vs target)")
    return "\n".join(lines)
