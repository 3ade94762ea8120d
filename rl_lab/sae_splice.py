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
from probes.sae.model import load_sae
from rl_lab.adapters import RecurrentAdapter, load_sb3, make_adapter
from rl_lab.config import SB3_ALGOS
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
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
        torch.set_num_threads(threads)

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
