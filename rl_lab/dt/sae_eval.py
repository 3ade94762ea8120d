"""An SAE inside a decision transformer (or BC transformer): the loss recovered, the return
recovered, the decoder directions' effect on the action logits and the attention patterns.

The SAE was trained on ``/acts/<hook>`` of a dt/bc recording: the hook's activation at the
*state token* of each step (the token the action is predicted from). Splicing replaces the
hook's output at **every state token of the context window** (padding excluded) by the SAE's
reconstruction; the return-to-go and action tokens, which the SAE never saw, stay as they are.
The two ablations replace the same positions by zeros (``zero_ablation``) or by the hook's mean
over the recording (``mean_ablation``).

Held-out loss (the episodes ``probes.sae.data.split_rows`` held out when the SAE was trained,
with the file's own inputs: observations, previous actions, timesteps, return-to-go):

- ``loss_clean``, ``loss_spliced``, ``loss_zero_ablated``, ``loss_mean_ablated``: the mean
  cross-entropy of the DT's action logits at step t against the recorded action a_t;
- ``loss_recovered = (L_zero − L_spliced) / (L_zero − L_clean)`` (``loss_recovered_baseline``
  says ``zero_ablation``, as SAELens's "CE loss recovered"), and
  ``loss_recovered_mean_ablation`` with ``L_mean`` in place of ``L_zero``. 1: the reconstruction
  loses nothing the action prediction uses; 0: as bad as deleting the layer. Undefined (None)
  when the ablation does not raise the loss.

Live (``live_metrics``): the DT acts in the environment conditioned on its recording target,
clean, spliced, zero- and mean-ablated (same env seeds and sampling noise per episode);
``return_recovered`` is relative to mean ablation, as for SB3 agents (``rl_lab.sae_splice``),
``return_recovered_zero_ablation`` relative to zero ablation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from probes.activations import ActivationFile
from probes.sae.data import split_rows
from probes.sae.model import SparseAutoencoder, load_sae
from rl_lab.dt.evaluate import DTActor, load_model, rollout_return
from rl_lab.dt.model import DecisionTransformer
from rl_lab.dt.trajectories import episode_windows
from rl_lab.errors import LabError
from rl_lab.runs import Run

ProgressFn = Callable[[int, int], None]
CONDITIONS = ("clean", "spliced", "zero_ablated", "mean_ablated")
BATCH = 256


def checkpoint_of_file(run: Run, h5: Path) -> Path:
    """The run's checkpoint a recording was made with (its ``checkpoint`` attribute), else the latest."""
    with ActivationFile(h5) as af:
        stem = af.attrs.get("checkpoint")
    for ckpt in run.checkpoints():
        if stem and ckpt.stem == str(stem):
            return ckpt
    return run.latest_checkpoint()


class Splice:
    """A forward hook on one TransformerLens hook point that, by ``mode``, leaves the output
    alone or replaces it at the state tokens (``positions`` [n_ctx] bool, padding excluded per
    row by ``token_mask``) by the SAE's reconstruction, zeros or ``mean``; ``add`` instead adds
    a per-row vector [B, d] at the last state token (the logit-effect probe)."""

    def __init__(self, model: DecisionTransformer, hook: str, sae: SparseAutoencoder | None,
                 mean: torch.Tensor | None = None) -> None:
        points = model.transformer.hook_dict
        if hook not in points:
            raise LabError(f"{hook!r} is not a hook of this transformer")
        self.model, self.sae, self.mean = model, sae, mean
        self.mode = "clean"
        self.add: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None
        state = torch.zeros(model.cfg.n_ctx, dtype=torch.bool)
        state[model.state_positions()] = True
        self.state = state
        self.last = int(model.state_positions()[-1])
        self._handle = points[hook].register_forward_hook(self._hook)

    def _hook(self, _module: Any, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        if self.mode == "clean" and self.add is None:
            return out
        if out.dim() != 3:
            raise LabError(f"the hook's output has shape {tuple(out.shape)}; splicing needs [batch, tokens, d]")
        out = out.clone()
        if self.add is not None:
            out[:, self.last] += self.add.to(out.dtype)
            return out
        where = self.state.unsqueeze(0).expand(out.shape[0], -1)  # [B, n_ctx]
        if self.token_mask is not None:
            where = where & self.token_mask
        if self.mode == "spliced":
            assert self.sae is not None
            out[where] = self.sae(out[where].float()).to(out.dtype)
        elif self.mode == "zero_ablated":
            out[where] = 0.0
        elif self.mode == "mean_ablated":
            assert self.mean is not None
            out[where] = self.mean.to(out.dtype)
        return out

    def logits(self, win: dict[str, torch.Tensor], mode: str = "clean") -> torch.Tensor:
        """The action logits at the last state token [B, A] under ``mode``."""
        self.mode = mode
        self.token_mask = win["mask"].repeat_interleave(self.model.cfg.tokens_per_step, dim=1)
        try:
            with torch.no_grad():
                return self.model(win["states"], win["actions"], win["rtg"], win["timesteps"], win["mask"])[:, -1]
        finally:
            self.mode, self.token_mask = "clean", None

    def remove(self) -> None:
        self._handle.remove()


def _episode_inputs(af: ActivationFile, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Observations [T, obs_dim], actions [T], return-to-go [T] and the first step of one episode's rows."""
    obs = af.steps("obs", rows).reshape(len(rows), -1)
    actions = af.steps("action", rows).reshape(len(rows)).astype(np.int64)
    rtg = af.read("inputs", "rtg", rows) if af.has_input("rtg") else np.zeros(len(rows), np.float32)
    t0 = int(af.steps("t", rows[:1])[0])
    return obs, actions, rtg, t0


def heldout_windows(h5: Path, context: int, test_fraction: float, seed: int,
                    max_rows: int | None = None) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
    """``(rows, window, actions)`` batches over the held-out episodes of ``split_rows``: each
    row's left-padded window of ``context`` steps and the action recorded at it."""
    with ActivationFile(h5) as af:
        episodes = af.episodes()
        _, test, _ = split_rows(episodes, test_fraction, seed)
        done = 0
        for ep in np.unique(episodes[test]):
            rows = np.flatnonzero((episodes == ep) & test)
            if max_rows is not None:
                rows = rows[: max(0, max_rows - done)]
            if not len(rows):
                break
            obs, actions, rtg, t0 = _episode_inputs(af, rows)
            win = episode_windows(obs, actions, rtg, context, t0=t0)
            for lo in range(0, len(rows), BATCH):
                chunk = {k: torch.as_tensor(v[lo:lo + BATCH]) for k, v in win.items()}
                yield rows[lo:lo + BATCH], chunk, torch.as_tensor(actions[lo:lo + BATCH])
            done += len(rows)


def _recovered(ablated: float, spliced: float, clean: float) -> float | None:
    gap = ablated - clean
    if not np.isfinite(gap) or gap <= 1e-9:
        return None
    return float((ablated - spliced) / gap)


def loss_metrics(run: Run, sae_dir: Path, h5: Path, mean: np.ndarray,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Held-out action-prediction losses under the four conditions and the loss recovered."""
    sae, cfg = load_sae(sae_dir)
    model = load_model(run, checkpoint_of_file(run, h5))
    splice = Splice(model, cfg.hook_name, sae, torch.as_tensor(mean))
    sums = dict.fromkeys(CONDITIONS, 0.0)
    n = 0
    try:
        for _, win, actions in heldout_windows(h5, model.cfg.context, cfg.test_fraction, cfg.seed):
            for c in CONDITIONS:
                logits = splice.logits(win, c)
                sums[c] += float(torch.nn.functional.cross_entropy(logits, actions, reduction="sum"))
            n += len(actions)
    finally:
        splice.remove()
    if not n:
        raise LabError(f"{h5.name} has no held-out rows to measure the loss on")
    loss = {c: sums[c] / n for c in CONDITIONS}
    out: dict[str, Any] = {f"loss_{c}": loss[c] for c in CONDITIONS}
    out.update(
        loss_recovered=_recovered(loss["zero_ablated"], loss["spliced"], loss["clean"]),
        loss_recovered_baseline="zero_ablation",
        loss_recovered_mean_ablation=_recovered(loss["mean_ablated"], loss["spliced"], loss["clean"]),
        loss_rows=n,
        splice_positions="every state token of the context window",
    )
    notes = []
    for key, base in (("loss_recovered", "zero"), ("loss_recovered_mean_ablation", "mean")):
        if out[key] is None:
            notes.append(f"{key} undefined: {base}-ablating {cfg.hook_name} does not raise the held-out loss "
                         f"({loss[base + '_ablated']:.4f} vs clean {loss['clean']:.4f})")
    if notes:
        out["loss_note"] = "; ".join(notes)
    return out


def live_metrics(run: Run, sae_dir: Path, h5: Path, mean: np.ndarray, episodes: int = 5, seed: int = 0,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Returns of the DT acting clean, spliced, zero- and mean-ablated, and the return recovered."""
    from rl_lab.dt.record import record_target
    from rl_lab.train import make_env

    sae, cfg = load_sae(sae_dir)
    model = load_model(run, checkpoint_of_file(run, h5))
    splice = Splice(model, cfg.hook_name, sae, torch.as_tensor(mean))
    conf = run.info.get("config", {})
    env = make_env(run.info["env_id"], conf.get("env_kwargs") or {})
    target = record_target(run)
    returns: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    K = model.cfg.tokens_per_step

    def mask_hook(_m: Any, args: tuple, kwargs: dict) -> None:  # the acting model's padding mask
        splice.token_mask = args[4].repeat_interleave(K, dim=1) if len(args) > 4 else kwargs["mask"].repeat_interleave(K, dim=1)

    pre = model.register_forward_pre_hook(mask_hook, with_kwargs=True)
    try:
        for ci, c in enumerate(CONDITIONS):
            for ep in range(episodes):
                splice.mode = c
                actor = DTActor(model, target, generator=torch.Generator().manual_seed(seed * 100_003 + ep))
                ret, _ = rollout_return(env, actor, seed + ep)
                returns[c].append(ret)
                if progress is not None:
                    progress(ci * episodes + ep + 1, len(CONDITIONS) * episodes)
    finally:
        splice.mode = "clean"
        pre.remove()
        splice.remove()
        env.close()
    r = {c: np.asarray(v) for c, v in returns.items()}
    out: dict[str, Any] = {f"return_{c}": float(r[c].mean()) for c in CONDITIONS}
    out["live_episodes"] = episodes
    out["live_target_return"] = target
    for key, base in (("return_recovered", "mean_ablated"), ("return_recovered_zero_ablation", "zero_ablated")):
        gap = out["return_clean"] - out[f"return_{base}"]
        se = float(np.sqrt(r["clean"].var(ddof=1) / episodes + r[base].var(ddof=1) / episodes)) if episodes > 1 else 0.0
        if abs(gap) <= se or gap == 0:
            out[key] = None
            note = (f"{key} undefined: {base.replace('_', '-')} changes the return by {gap:+.3f}, within its "
                    f"standard error {se:.3f}")
            out["live_note"] = (out["live_note"] + "; " + note) if out.get("live_note") else note
        else:
            out[key] = float((out["return_spliced"] - out[f"return_{base}"]) / gap)
    return out


# --------------------------------------------------------------------------- feature views
def logit_effects(run: Run, sae_dir: Path, h5: Path, scales: np.ndarray, rows: int = 32,
                  latents_per_batch: int = 16) -> np.ndarray:
    """[d_sae, A]: the mean change of the action logits at step t when latent i's decoder
    direction, times ``scales[i]``, is added to the hook's output at the state token of t and
    pushed through the rest of the transformer (later blocks, final LayerNorm, unembedding),
    over ``rows`` held-out windows."""
    sae, cfg = load_sae(sae_dir)
    model = load_model(run, checkpoint_of_file(run, h5))
    splice = Splice(model, cfg.hook_name, None)
    try:
        batches = list(heldout_windows(h5, model.cfg.context, cfg.test_fraction, cfg.seed, max_rows=rows))
        win = {k: torch.cat([b[1][k] for b in batches]) for k in batches[0][1]}
        base = splice.logits(win)  # [S, A]
        S = len(base)
        dirs = sae.W_dec.detach() * torch.as_tensor(scales, dtype=sae.W_dec.dtype)[:, None]  # [d_sae, d]
        out = np.zeros((cfg.d_sae, model.cfg.n_actions), dtype=np.float32)
        for lo in range(0, cfg.d_sae, latents_per_batch):
            d = dirs[lo:lo + latents_per_batch]  # [m, d]
            m = len(d)
            rep = {k: v.repeat(m, *([1] * (v.dim() - 1))) for k, v in win.items()}
            splice.add = d.repeat_interleave(S, dim=0)  # [m*S, d]
            try:
                logits = splice.logits(rep)
            finally:
                splice.add = None
            out[lo:lo + m] = (logits.view(m, S, -1) - base.unsqueeze(0)).mean(dim=1).numpy()
    finally:
        splice.remove()
    return out


def attention_view(run: Run, h5: Path, test_fraction: float, seed: int, n_steps: int = 3,
                   n_targets: int = 4) -> dict[str, Any] | None:
    """Each head's attention from the state token of a few held-out steps over the context
    tokens, at several return-to-go targets (the recording's target and others over the
    dataset's range; the return-to-go of step j is the target minus the rewards before j).

    Returns ``{"tokens": [...], "targets": [...], "record_target", "layers", "heads",
    "steps": [{"row", "episode", "t", "patterns": [target][layer][head][n_ctx]}]}`` (None for a
    model without a return-to-go token, where only one target exists: then ``targets`` is [None]).
    """
    from rl_lab.dt.record import record_target

    model = load_model(run, checkpoint_of_file(run, h5))
    cfg = model.cfg
    K = cfg.context
    names = ["R", "s", "a"] if cfg.use_rtg else ["s", "a"]
    tokens = [f"{n}{j - (K - 1)}" if j < K - 1 else n for j in range(K) for n in names]  # R-9 s-9 a-9 … R s a
    rec = record_target(run)
    if cfg.use_rtg:
        ds = run.info.get("dataset", {})
        lo, hi = float(ds.get("min_return", 0.0)), float(ds.get("max_return", rec))
        targets = sorted({round(v, 4) for v in np.linspace(lo, max(hi, rec), n_targets - 1)} | {round(rec, 4)})
    else:
        targets = [None]
    with ActivationFile(h5) as af:
        episodes = af.episodes()
        _, test, _ = split_rows(episodes, test_fraction, seed)
        t_all = af.steps("t")
        candidates = np.flatnonzero(test & (t_all >= K - 1)) if (test & (t_all >= K - 1)).any() else np.flatnonzero(test)
        picks = candidates[np.linspace(0, len(candidates) - 1, min(n_steps, len(candidates))).astype(int)]
        steps = []
        for row in picks:
            ep = episodes[row]
            ep_rows = np.flatnonzero(episodes == ep)
            upto = ep_rows[ep_rows <= row]
            obs, actions, _, t0 = _episode_inputs(af, upto)
            rewards = af.steps("reward", upto).astype(np.float64)
            before = np.concatenate([[0.0], np.cumsum(rewards)[:-1]])
            per_target = []
            for target in targets:
                rtg = (float(target) - before).astype(np.float32) if target is not None else np.zeros(len(upto), np.float32)
                win = episode_windows(obs, actions, rtg, K, t0=t0)
                last = {k: torch.as_tensor(v[-1:]) for k, v in win.items()}
                with torch.no_grad():
                    _, cache = model.run_with_cache(last["states"], last["actions"], last["rtg"], last["timesteps"],
                                                    last["mask"], names_filter=lambda n: n.endswith("attn.hook_pattern"))
                state_tok = int(model.state_positions()[-1])
                per_target.append([[[round(float(v), 4) for v in cache[f"blocks.{i}.attn.hook_pattern"][0, h, state_tok]]
                                    for h in range(cfg.n_heads)] for i in range(cfg.n_layers)])
            steps.append({"row": int(row), "episode": int(ep), "t": int(t_all[row]), "patterns": per_target})
    return {"tokens": tokens, "targets": targets, "record_target": rec, "layers": cfg.n_layers,
            "heads": cfg.n_heads, "steps": steps}
