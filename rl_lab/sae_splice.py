"""The RL analogue of "loss recovered": an SAE spliced into the live agent at its hook.

Three conditions play the same episodes (same env seeds, same action-sampling noise):

- ``clean``: the agent as trained;
- ``spliced``: the hooked module's output h is replaced by the SAE's reconstruction SAE(h);
- ``mean_ablated``: h is replaced by its mean over the recording (the information at this hook
  removed, its average kept).

``return_recovered = (R_spliced − R_ablated) / (R_clean − R_ablated)``: 1 means the SAE keeps
everything the policy needs from this layer, 0 means it is no better than deleting the layer's
information. It is undefined (None, with a note) when ablation does not hurt (|R_clean −
R_ablated| is within the episodes' standard error). ``kl_spliced`` / ``kl_mean_ablated`` are the
mean per-step KL(clean ‖ condition) of the action distributions on the condition's own
trajectory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from probes.activations import ActivationFile
from probes.sae.model import load_sae, read_metrics
from rl_lab.adapters import RecurrentAdapter, load_sb3, make_adapter
from rl_lab.config import SB3_ALGOS
from rl_lab.devices import one_torch_thread
from rl_lab.errors import LabError
from rl_lab.runs import Run
from rl_lab.train import make_policy_env

ProgressFn = Callable[[int, int], None]


def hook_mean(h5: Path, hook: str) -> np.ndarray:
    """The mean of ``/acts/<hook>`` over a recording, streamed in chunks."""
    total, n = None, 0
    with ActivationFile(h5) as f:
        for _, block in f.iter_chunks("acts", hook):
            s = block.astype(np.float64).sum(axis=0)
            total = s if total is None else total + s
            n += len(block)
    if not n:
        raise LabError(f"{h5} has no rows for hook {hook!r}")
    return (total / n).astype(np.float32)


def splice_metrics(
    run: Run,
    sae_dir: Path,
    h5: Path,
    episodes: int = 10,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` episodes clean, SAE-spliced and mean-ablated; return the live metrics."""
    if run.info.get("algo") not in SB3_ALGOS:
        raise LabError(f"the live splice needs an SB3 agent ({', '.join(SB3_ALGOS)})")
    sae, cfg = load_sae(sae_dir)
    hook = cfg.hook_name
    model = load_sb3(run, run.latest_checkpoint())
    adapter = make_adapter(model)
    if hook not in adapter.modules:
        raise LabError(f"the SAE's hook {hook!r} is not a module of this policy")
    module = adapter.modules[hook]
    mean = torch.as_tensor(hook_mean(h5, hook))
    mode = {"value": "clean"}

    def replace(_module: Any, _inputs: Any, output: Any) -> Any:
        if mode["value"] == "spliced":
            with torch.no_grad():
                return sae(output.reshape(output.shape[0], -1).float()).reshape(output.shape)
        if mode["value"] == "mean_ablated":
            return mean.expand(output.shape[0], -1).reshape(output.shape).clone()
        return output

    handle = module.register_forward_hook(replace)
    cfg_run = run.info.get("config", {})
    env = make_policy_env({**cfg_run, "env_id": run.info["env_id"]})  # a transformer reads a history vector
    policy = adapter.policy
    memory: dict[str, Any] = {"state": None}  # a recurrent agent's LSTM state, along the condition's own path

    def distribution(obs_t: Any, commit: bool) -> Any:
        if isinstance(adapter, RecurrentAdapter):
            state = memory["state"] if memory["state"] is not None else adapter.zero_state(1)
            latent, _, new = adapter.step(obs_t, state, critic=False)
            if commit:
                memory["state"] = new
            return adapter.distribution(latent).distribution
        return _distribution(policy, adapter.is_dqn, obs_t)
    with one_torch_thread():
        results: dict[str, dict[str, list[float]]] = {}
        try:
            conditions = ("clean", "spliced", "mean_ablated")
            for ci, condition in enumerate(conditions):
                returns, kls = [], []
                for ep in range(episodes):
                    rng = np.random.default_rng([seed, ep])
                    obs, _ = env.reset(seed=seed + ep)
                    memory["state"] = None
                    done, ret, ep_kl = False, 0.0, []
                    while not done:
                        with torch.no_grad():
                            obs_t = policy.obs_to_tensor(obs)[0]
                            mode["value"] = "clean"
                            clean = distribution(obs_t, commit=False)
                            mode["value"] = condition
                            dist = distribution(obs_t, commit=True)
                            mode["value"] = "clean"
                        action = _sample(dist, adapter.is_dqn, rng)
                        if not adapter.is_dqn:
                            ep_kl.append(float(torch.distributions.kl_divergence(clean, dist).sum()))
                        obs, reward, terminated, truncated, _ = env.step(action)
                        ret += float(reward)
                        done = terminated or truncated
                    returns.append(ret)
                    kls.append(float(np.mean(ep_kl)) if ep_kl else 0.0)
                    if progress is not None:
                        progress(ci * episodes + ep + 1, len(conditions) * episodes)
                results[condition] = {"return": returns, "kl": kls}
        finally:
            handle.remove()
            env.close()

    r = {c: np.asarray(v["return"]) for c, v in results.items()}
    out: dict[str, Any] = {
        "return_clean": float(r["clean"].mean()),
        "return_spliced": float(r["spliced"].mean()),
        "return_mean_ablated": float(r["mean_ablated"].mean()),
        "kl_spliced": float(np.mean(results["spliced"]["kl"])) if not adapter.is_dqn else None,
        "kl_mean_ablated": float(np.mean(results["mean_ablated"]["kl"])) if not adapter.is_dqn else None,
        "live_episodes": episodes,
    }
    gap = out["return_clean"] - out["return_mean_ablated"]
    se = float(np.sqrt(r["clean"].var(ddof=1) / episodes + r["mean_ablated"].var(ddof=1) / episodes)) \
        if episodes > 1 else 0.0
    if abs(gap) <= se or gap == 0:
        out["return_recovered"] = None
        out["live_note"] = (f"return_recovered undefined: mean-ablating {hook} changes the return by "
                            f"{gap:+.3f}, within its standard error {se:.3f}; see kl_* instead")
    else:
        out["return_recovered"] = float((out["return_spliced"] - out["return_mean_ablated"]) / gap)
    return out


def _distribution(policy: Any, is_dqn: bool, obs_t: Any) -> Any:
    if is_dqn:
        return policy.q_net(obs_t)
    return policy.get_distribution(obs_t).distribution


def _sample(dist: Any, is_dqn: bool, rng: np.random.Generator) -> Any:
    """The action: greedy for DQN; else the inverse-CDF draw with this episode's noise, so that
    conditions with equal action distributions take equal actions (common random numbers)."""
    if is_dqn:
        return int(dist.argmax(-1)[0])
    probs = getattr(dist, "probs", None)
    if probs is not None:
        cdf = np.cumsum(probs[0].double().numpy())
        return int(min(np.searchsorted(cdf / cdf[-1], rng.random(), side="right"), len(cdf) - 1))
    loc, scale = dist.mean[0].numpy(), dist.stddev[0].numpy()
    return (loc + scale * rng.standard_normal(loc.shape)).astype(np.float32)


# --------------------------------------------------------------------------- feature views
# What the features screen shows beside ``features.json``: computed here because it needs the
# SAE and the run's network (torch), stored in ``metrics.json`` under ``views`` (the app reads
# it without torch). See docs/sae.md, "What the features screen reads".

RECON_ROWS = 600
"""Held-out rows kept for the per-step reconstruction-error-against-L0 plot."""
HELDOUT_CAP = 20_000
"""Held-out rows read for the per-step statistics (evenly spaced when there are more)."""


def action_names(run: Run) -> list[str] | None:
    """The env's action names: ``unwrapped.action_names``, MiniGrid's ``actions`` enum, or the
    env module's ``ACTION_NAMES`` (lab/Forage-v0); None when the env names none."""
    import sys

    from rl_lab.train import make_env

    try:
        env = make_env(run.info["env_id"], run.info.get("config", {}).get("env_kwargs") or {})
    except Exception:  # noqa: BLE001 - names are a nicety; the views work without them
        return None
    try:
        u = env.unwrapped
        names = getattr(u, "action_names", None)
        if names is None and hasattr(u, "actions"):
            try:
                names = [a.name for a in u.actions]
            except TypeError:
                names = None
        if names is None:
            names = getattr(sys.modules.get(type(u).__module__), "ACTION_NAMES", None)
        n = getattr(env.action_space, "n", None)
        if names is not None and n is not None and len(names) >= int(n):
            return [str(x) for x in list(names)[: int(n)]]
        return None
    finally:
        env.close()


def heldout_rows(h5: Path, test_fraction: float, seed: int, cap: int = HELDOUT_CAP) -> np.ndarray:
    """Sorted indices of the held-out rows of the SAE's episode split (at most ``cap``, evenly spaced)."""
    from probes.sae.data import split_rows

    with ActivationFile(h5) as f:
        _, test, _ = split_rows(f.episodes(), test_fraction, seed)
    rows = np.flatnonzero(test)
    if len(rows) > cap:
        rows = rows[np.linspace(0, len(rows) - 1, cap).astype(int)]
    return rows


def sb3_logit_effects(run: Run, sae_dir: Path, h5: Path, scales: np.ndarray, rows: np.ndarray,
                      latents_per_batch: int = 32) -> tuple[np.ndarray | None, str]:
    """[d_sae, A] mean change of the action logits (Q-values for DQN) when latent i's decoder
    direction times ``scales[i]`` is added to the hook's output, pushed through the rest of the
    policy network and its action head, over the observations of ``rows``; or (None, why)."""
    sae, cfg = load_sae(sae_dir)
    model = load_sb3(run, run.latest_checkpoint())
    adapter = make_adapter(model)
    if isinstance(adapter, RecurrentAdapter):
        return None, "not computed for a recurrent policy (the effect depends on the LSTM state)"
    if cfg.hook_name not in adapter.modules:
        return None, f"{cfg.hook_name} is not a module of this policy"
    with ActivationFile(h5) as f:
        obs = f.steps("obs", rows)
    policy = adapter.policy
    shape = policy.observation_space.shape
    if shape is None or int(np.prod(shape)) != int(np.prod(obs.shape[1:])):
        return None, "the recording's observations are not the policy's input (a history-reading policy)"
    obs = obs.reshape(len(obs), *shape)
    extra: dict[str, Any] = {"add": None}

    def add(_module: Any, _inputs: Any, output: Any) -> Any:
        if extra["add"] is None:
            return output
        return output + extra["add"].reshape(output.shape).to(output.dtype)

    def logits(o: np.ndarray) -> torch.Tensor:
        obs_t = policy.obs_to_tensor(o)[0]
        dist = _distribution(policy, adapter.is_dqn, obs_t)
        if adapter.is_dqn:
            return dist
        return dist.logits if getattr(dist, "logits", None) is not None else dist.mean

    handle = adapter.modules[cfg.hook_name].register_forward_hook(add)
    try:
        with torch.no_grad():
            base = logits(obs)  # [S, A]
            S = len(base)
            dirs = sae.W_dec.detach() * torch.as_tensor(scales, dtype=sae.W_dec.dtype)[:, None]
            out = np.zeros((cfg.d_sae, base.shape[-1]), dtype=np.float32)
            for lo in range(0, cfg.d_sae, latents_per_batch):
                d = dirs[lo:lo + latents_per_batch]
                m = len(d)
                extra["add"] = d.repeat_interleave(S, dim=0)
                try:
                    shifted = logits(np.concatenate([obs] * m))
                finally:
                    extra["add"] = None
                out[lo:lo + m] = (shifted.view(m, S, -1) - base.unsqueeze(0)).mean(dim=1).numpy()
    finally:
        handle.remove()
    return out, "added at the hook, through the rest of the policy network and its action head"


def feature_views(run: Run | None, sae_dir: Path, h5: Path, effect_rows: int = 32) -> dict[str, Any]:
    """What the features screen shows beyond ``features.json``.

    - ``recon``: per held-out step, the SAE's L0 and reconstruction MSE (``RECON_ROWS`` steps);
    - ``scales``: each latent's mean activation when it fires on held-out steps (1 where silent),
      the size of the push in ``logit_effects``;
    - ``logit_effects`` [d_sae][A], ``logit_effect_path`` and ``action_names``: the mean change
      of the action logits when a latent's decoder direction times its scale is added at the hook
      (a DT: at the state token, through the later blocks and the unembedding; an SB3 agent:
      through the rest of the policy net and ``action_net``), over ``effect_rows`` held-out steps;
    - ``label_sources``: each label's ``derived_from`` (env latents say ``env``);
    - ``attention`` (dt/bc runs): ``rl_lab.dt.sae_eval.attention_view``.
    """
    from rl_lab.config import DT_ALGOS

    sae, cfg = load_sae(sae_dir)
    rows = heldout_rows(h5, cfg.test_fraction, cfg.seed)
    with ActivationFile(h5) as f:
        x = torch.as_tensor(f.read("acts", cfg.hook_name, rows))
        sources = {name: f.label_info(name).get("derived_from") for name in f.labels}
    with torch.no_grad():
        z = sae.encode(x)
        err = (sae.decode(z) - x).pow(2).mean(dim=1)
    l0 = (z > 0).sum(dim=1)
    fires = (z > 0).sum(dim=0)
    scales = torch.where(fires > 0, z.sum(dim=0) / fires.clamp_min(1), torch.ones_like(fires, dtype=z.dtype)).numpy()
    pick = np.linspace(0, len(rows) - 1, min(RECON_ROWS, len(rows))).astype(int)
    views: dict[str, Any] = {
        "recon": {"l0": [int(v) for v in l0[pick]], "mse": [float(f"{v:.5g}") for v in err[pick].tolist()],
                  "rows": [int(r) for r in rows[pick]]},
        "scales": [float(f"{v:.4g}") for v in scales],
        "label_sources": sources,
    }
    if run is None:
        return views
    effect_at = rows[np.linspace(0, len(rows) - 1, min(effect_rows, len(rows))).astype(int)]
    if run.info.get("algo") in DT_ALGOS:
        from rl_lab.dt.sae_eval import attention_view, logit_effects

        effects = logit_effects(run, sae_dir, h5, scales, rows=effect_rows)
        path = "added at the state token, through the later blocks, the final LayerNorm and the unembedding"
        views["attention"] = attention_view(run, h5, cfg.test_fraction, cfg.seed)
    elif run.info.get("algo") in SB3_ALGOS:
        effects, path = sb3_logit_effects(run, sae_dir, h5, scales, effect_at)
    else:
        effects, path = None, f"not computed for algo {run.info.get('algo')!r}"
    views["logit_effect_path"] = path
    if effects is not None:
        views["logit_effects"] = [[float(f"{v:.4g}") for v in row] for row in effects]
        views["action_names"] = action_names(run)
    return views


def evaluate_in_run(run: Run, sae_dir: Path, h5: Path, live_episodes: int = 10, seed: int = 0,
                    views: bool = True) -> dict[str, Any]:
    """Everything ``rl-lab sae`` measures with the run's network after training an SAE on ``h5``,
    merged into the SAE's ``metrics.json`` (atomically; returned).

    - an SB3 agent: ``splice_metrics`` (``live_episodes`` per condition; 0 skips it);
    - a dt/bc run: the held-out loss recovered (``rl_lab.dt.sae_eval.loss_metrics``) and, with
      ``live_episodes``, the return recovered (``live_metrics``);
    - both: ``feature_views`` under ``views``.
    """
    import sys

    from probes.sae.model import update_metrics
    from rl_lab.config import DT_ALGOS
    from rl_lab.train import tqdm_progress

    sae_dir, h5 = Path(sae_dir), Path(h5)
    algo = run.info.get("algo")
    extra: dict[str, Any] = {}
    if algo in DT_ALGOS:
        from probes.sae.model import load_sae as _load
        from rl_lab.dt.sae_eval import live_metrics, loss_metrics

        hook = _load(sae_dir)[1].hook_name
        if hook.endswith("hook_pattern"):
            raise LabError(f"{hook} holds attention patterns, not a [tokens, d] activation to splice")
        mean = hook_mean(h5, hook)
        print("splicing the SAE into the transformer: held-out action-prediction loss", file=sys.stderr)
        extra.update(loss_metrics(run, sae_dir, h5, mean))
        if live_episodes > 0:
            print(f"splicing the SAE into the acting transformer ({live_episodes} episodes per condition)",
                  file=sys.stderr)
            progress, close = tqdm_progress("splice")
            try:
                extra.update(live_metrics(run, sae_dir, h5, mean, episodes=live_episodes, seed=seed,
                                          progress=progress))
            finally:
                close()
    elif algo in SB3_ALGOS and live_episodes > 0:
        print(f"splicing the SAE into the live agent ({live_episodes} episodes per condition)", file=sys.stderr)
        progress, close = tqdm_progress("splice")
        try:
            extra.update(splice_metrics(run, sae_dir, h5, episodes=live_episodes, seed=seed, progress=progress))
        finally:
            close()
    if views:
        extra["views"] = feature_views(run, sae_dir, h5)
    return update_metrics(sae_dir, **extra) if extra else dict(read_metrics(sae_dir))


def format_run_metrics(metrics: dict[str, Any]) -> list[str]:
    """The lines ``rl-lab sae`` prints about the SAE inside the run's network."""
    lines = []
    if metrics.get("loss_clean") is not None:
        def rec(v: Any) -> str:
            return f"{v:.3f}" if v is not None else "undefined"
        lines.append(
            f"  action loss (held-out, {metrics['loss_rows']} steps): clean {metrics['loss_clean']:.4f}, spliced "
            f"{metrics['loss_spliced']:.4f}, zero-ablated {metrics['loss_zero_ablated']:.4f}, mean-ablated "
            f"{metrics['loss_mean_ablated']:.4f}; loss recovered {rec(metrics.get('loss_recovered'))} (zero-ablation "
            f"baseline), {rec(metrics.get('loss_recovered_mean_ablation'))} (mean-ablation baseline)")
        if metrics.get("loss_note"):
            lines.append(f"  note: {metrics['loss_note']}")
    if "return_clean" in metrics:
        r = metrics.get("return_recovered")
        text = (f"  live agent: return clean {metrics['return_clean']:.3f}, spliced {metrics['return_spliced']:.3f}, "
                f"mean-ablated {metrics['return_mean_ablated']:.3f}")
        if metrics.get("return_zero_ablated") is not None:
            text += f", zero-ablated {metrics['return_zero_ablated']:.3f}"
        text += "; return recovered " + (f"{r:.2f}" if r is not None else "undefined")
        if metrics.get("kl_spliced") is not None:
            text += f"; policy KL spliced {metrics['kl_spliced']:.4f} vs mean-ablated {metrics['kl_mean_ablated']:.4f}"
        lines.append(text)
        if metrics.get("live_note"):
            lines.append(f"  note: {metrics['live_note']}")
    return lines
