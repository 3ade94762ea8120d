"""The recorder's adapter for decision-transformer (``dt``) and behaviour-cloning (``bc``) runs.

``rl_lab.record.load_adapter`` calls ``load_dt_adapter`` for runs whose algo is dt or bc; the
adapter follows ``rl_lab.adapters.PolicyAdapter``:

- ``act`` runs the model step by step on its own history (the last K timesteps), conditioned
  on the run's recording target return (``run.json`` ``record_target``, default: the best
  episode return in its dataset), decremented by each reward passed to ``observe``.
- ``episode_forward`` replays the whole episode in one batch — for each step t, the window of
  K steps ending at t, with the return-to-go the acting model was given — through
  ``run_with_cache`` and keeps, at the state token of step t, every stored hook:
  ``blocks.0.hook_resid_pre`` (the embedded input), and per block ``hook_resid_mid``,
  ``hook_resid_post``, ``mlp.hook_post`` and ``attn.hook_pattern`` (the state token's
  attention row, [n_heads * n_ctx], left-padded windows aligned so the last columns are the
  current step).
- The DT has no critic. ``value`` (and so the TD error, joy, distress, surprise, their ``prev_``
  versions, mood, hope and fear labels) comes from the SOURCE run's critic at its latest
  checkpoint, evaluated on the same observations, so that these labels mean the same thing on
  the RL agent and on the DT trained from it; the adapter names it (``critic_run``,
  ``critic_checkpoint``) and the recorder writes it as the file's ``reference_critic``, its
  labels ``derived_from="reference_critic"`` (``rl-lab record --reference-critic`` picks another).
  ``entropy``, ``arousal`` and ``action`` are the DT's own (``derived_from="policy_output"``).
- ``random_twin`` is the same architecture with freshly initialised weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probes.layout import RunsDirLayout
from rl_lab.adapters import EpisodeForward, SB3Adapter, load_sb3
from rl_lab.dt.evaluate import DTActor, load_model
from rl_lab.dt.model import DecisionTransformer, DTModelConfig, stored_hooks
from rl_lab.dt.trajectories import episode_windows
from rl_lab.errors import LabError
from rl_lab.runs import Run, RunStore


def source_run(run: Run) -> Run:
    """The RL run a dt/bc run was trained from (its critic gives the value labels)."""
    source_name = run.info.get("source_run")
    if not source_name:
        raise LabError(f"run {run.name!r} has no source_run in run.json")
    where = run.info.get("source_run_path") or str(RunsDirLayout(run.path.parent).run_dir(source_name))
    try:
        source = RunStore(run.path.parent).get(where)
    except LabError:
        raise LabError(f"the source run {source_name!r} of {run.name!r} is not at {where}; "
                       "its critic gives the value labels") from None
    return source


def source_critic(run: Run) -> SB3Adapter:
    """An adapter on the source run's latest checkpoint, used for its value estimates."""
    source = source_run(run)
    return SB3Adapter(load_sb3(source, source.latest_checkpoint()), deterministic=True)


class DTAdapter:
    """Hooks a decision transformer for ``rl_lab.record`` (see the module docstring)."""

    linear_in: dict[str, list[str]] = {}

    def __init__(self, model: DecisionTransformer, critic: SB3Adapter, target_return: float,
                 kind: str, deterministic: bool = False, batch: int = 256, critic_run: str = "",
                 critic_checkpoint: str = "") -> None:
        self.model = model.eval()
        self.critic = critic
        # The run and checkpoint of ``critic``: the recorder names them as the file's reference critic.
        self.critic_run = critic_run
        self.critic_checkpoint = critic_checkpoint
        self.target_return = float(target_return)
        self.kind = kind
        self.deterministic = deterministic
        self.batch = batch
        self.hooks = stored_hooks(model.cfg)
        self.linear_in = {}
        self._actor = DTActor(model, self.target_return, deterministic=deterministic)
        self._observed = False

    @property
    def device(self) -> str:
        """The device the transformer runs on (``rl_lab.record.adapter_device``)."""
        return str(next(self.model.parameters()).device)

    def reset(self) -> None:
        self._actor.reset()

    def act(self, obs: np.ndarray) -> int:
        return self._actor.act(obs)

    def observe(self, reward: float) -> None:
        """The reward that followed the last action (lowers the return-to-go)."""
        self._actor.observe(reward)

    @property
    def input_window(self) -> dict:
        """What the model receives at each step (the activation file's ``input_window`` attribute):
        the last K steps' observations, the actions of the earlier steps, timesteps and, for a
        DT, the return-to-go (``/inputs/rtg``, from ``episode_inputs``). See docs/design.md."""
        fields = ["obs", "prev_actions", "timestep"] + (["rtg"] if self.model.cfg.use_rtg else [])
        return {"context": int(self.model.cfg.context), "fields": fields}

    def episode_inputs(self, rewards: np.ndarray) -> dict[str, np.ndarray]:
        """Per-step inputs the file does not hold in ``/steps``: the return-to-go the model was given."""
        return {"rtg": self._rtg(np.asarray(rewards))} if self.model.cfg.use_rtg else {}

    def _rtg(self, rewards: np.ndarray) -> np.ndarray:
        """The return-to-go the acting model was given at each step of the episode."""
        T = len(rewards)
        used = self._actor.rtg_used
        if len(used) == T:
            return np.asarray(used, dtype=np.float32)
        before = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)[:-1]])
        return (self.target_return - before).astype(np.float32)

    def episode_forward(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        final_obs: np.ndarray) -> EpisodeForward:
        cfg = self.model.cfg
        T = len(rewards)
        win = episode_windows(obs, np.asarray(actions).reshape(T), self._rtg(np.asarray(rewards)), cfg.context)
        state_pos = self.model.state_positions()  # [K]
        last = int(state_pos[-1])
        wanted = set(self.hooks)
        device = next(self.model.parameters()).device
        parts: dict[str, list[np.ndarray]] = {h: [] for h in self.hooks}
        logits_parts = []
        with torch.no_grad():
            for lo in range(0, T, self.batch):
                chunk = {k: torch.as_tensor(v[lo:lo + self.batch], device=device) for k, v in win.items()}
                logits, cache = self.model.run_with_cache(
                    chunk["states"], chunk["actions"], chunk["rtg"], chunk["timesteps"], chunk["mask"],
                    names_filter=lambda name: name in wanted)
                logits_parts.append(logits[:, -1].cpu())  # [b, A]: the prediction at step t
                for hook in self.hooks:
                    act = cache[hook]
                    if hook.endswith("hook_pattern"):
                        row = act[:, :, last, :]  # [b, n_heads, n_ctx]: the state token's attention
                        parts[hook].append(row.reshape(row.shape[0], -1).cpu().numpy())
                    else:
                        parts[hook].append(act[:, last, :].cpu().numpy())  # [b, d]
        acts = {h: np.concatenate(v).astype(np.float32) for h, v in parts.items()}
        logits = torch.cat(logits_parts)  # [T, A]
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1).numpy()
        extra = {"entropy": entropy}
        if cfg.n_actions > 1:
            extra["arousal"] = 1.0 - entropy / np.log(cfg.n_actions)
        critic = self.critic.episode_forward(obs, actions, rewards, final_obs)
        return EpisodeForward(acts=acts, values=critic.values, final_value=critic.final_value, extra_labels=extra)

    def random_twin(self, seed: int) -> "DTAdapter":
        twin_cfg = DTModelConfig.from_dict({**self.model.cfg.to_dict(), "seed": int(seed)})
        twin = DTAdapter(DecisionTransformer(twin_cfg).to(self.device), self.critic, self.target_return, self.kind,
                         deterministic=self.deterministic, batch=self.batch, critic_run=self.critic_run,
                         critic_checkpoint=self.critic_checkpoint)
        twin._actor = self._actor  # the twin replays the acting model's inputs
        return twin


def record_target(run: Run) -> float:
    """The target return a recording conditions on: ``record_target``, else the dataset's best."""
    target = run.info.get("record_target")
    if target is None:
        target = run.info.get("dataset", {}).get("max_return")
    if target is None:
        raise LabError(f"run {run.name!r} has neither record_target nor dataset statistics in run.json")
    return float(target)


def load_dt_adapter(run: Run, checkpoint: Path, deterministic: bool = False, device: str = "cpu") -> DTAdapter:
    """The recorder's adapter for a dt/bc run's checkpoint, the transformer and its source critic
    on ``device`` (a resolved device, ``rl_lab.devices.resolve_device``)."""
    model = load_model(run, Path(checkpoint)).to(device)
    source = source_run(run)
    ckpt = source.latest_checkpoint()
    critic = SB3Adapter(load_sb3(source, ckpt, device=device), deterministic=True)
    return DTAdapter(model, critic, record_target(run), kind=str(run.info.get("algo")),
                     deterministic=deterministic, critic_run=source.name, critic_checkpoint=ckpt.stem)

