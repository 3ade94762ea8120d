"""Steerable networks: what a live rollout needs from a policy, and the implementations.

``SteerablePolicy`` is the protocol ``rl_lab.steer.rollout`` drives. A network becomes steerable
by exposing its activations by hook name (the names of ``/acts/<hook>`` in its activation file)
and answering four calls per step over a batch of rows (one row = one condition x episode):

- ``start(n)``: forget every row's memory (a new block of ``n`` episodes);
- ``forward(rows, obs, steer)``: the action distribution of the given rows on ``obs``, with the
  steering hook on or off; it must not change any memory (it is called twice per step: clean for
  the KL, edited to act);
- ``advance(rows, obs, actions, rewards)``: the rows took ``actions`` on ``obs`` and got
  ``rewards`` (a sequence model appends them to its history, a recurrent one commits its state);
- ``step_stats`` / ``act``: KL and mode change between two distributions; actions from noise.

Which class serves a run is chosen by ``load_policy`` from the registry ``POLICY_LOADERS``
(algo name -> loader): ``dt``/``bc`` -> ``DTPolicy``, ``recurrent-ppo`` -> ``RecurrentPolicy``,
anything else -> ``SB3Policy``. A new kind
of network (a recurrent policy, say) registers a loader there.

Hook names:

- SB3 policies: ``rl_lab.adapters.make_adapter(model).modules`` (``mlp_extractor.policy_net.1``,
  ...; a policy's own ``hook_modules()`` when it has one, as the PPO-transformer does with its
  TransformerLens names; the LSTM states of a recurrent policy). A ``[B, P, d]`` output is edited
  at every position.
- decision transformer / behaviour cloning: TransformerLens names (``blocks.0.hook_resid_post``);
  the edit is applied at every state token of the context window, where the recording reads it.

Devices: a loader puts the network on ``device`` (``cpu`` or ``cuda:N``, resolved by
``rl_lab.devices.resolve_device``); observations are moved to it, distributions stay there and
every number handed back (KL, actions) is a CPU numpy array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rl_lab.adapters import RecurrentAdapter, load_sb3, make_adapter
from rl_lab.dt.evaluate import load_model
from rl_lab.dt.model import DecisionTransformer
from rl_lab.dt.record import record_target
from rl_lab.dt.trajectories import episode_windows
from rl_lab.errors import LabError
from rl_lab.runs import Run
from rl_lab.steer.intervene import SteeringHook


class SteerablePolicy(Protocol):
    """What ``rl_lab.steer.rollout`` needs from a network (see the module docstring)."""

    hook: SteeringHook
    module: nn.Module
    action_kind: str  # "discrete" | "box"
    action_space: Any
    has_distribution: bool

    def start(self, n: int) -> None: ...

    def forward(self, rows: np.ndarray, obs: np.ndarray, steer: bool) -> Any: ...

    def advance(self, rows: np.ndarray, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None: ...

    def step_stats(self, clean: Any, steered: Any) -> tuple[np.ndarray | None, np.ndarray]: ...

    def act(self, steered: Any, noise: np.ndarray, deterministic: bool) -> np.ndarray: ...


def unknown_hook(hook: str, kind: str, available: list[str]) -> LabError:
    return LabError(f"unknown hook {hook!r} for this {kind} policy (available: {', '.join(available)})")


class DistributionMixin:
    """KL, mode change and noise-driven actions for torch distributions (and DQN Q-values)."""

    action_kind: str
    action_space: Any
    is_dqn: bool = False

    def step_stats(self, clean: Any, steered: Any) -> tuple[np.ndarray | None, np.ndarray]:
        """Per row: KL(clean || steered) (None for DQN) and whether the most likely action changed."""
        if self.is_dqn:
            return None, (clean.argmax(-1) != steered.argmax(-1)).cpu().numpy()
        kl = torch.distributions.kl_divergence(clean, steered)
        if kl.ndim > 1:
            kl = kl.sum(-1)
        changed = (self._mode(clean) != self._mode(steered)).reshape(len(kl), -1).any(-1)
        return kl.double().cpu().numpy(), changed.cpu().numpy()

    def _mode(self, dist: Any) -> torch.Tensor:
        return dist.probs.argmax(-1) if self.action_kind == "discrete" else dist.mean

    def act(self, steered: Any, noise: np.ndarray, deterministic: bool) -> np.ndarray:
        """Actions from the edited distributions, driven by per-row ``noise``.

        ``noise`` is [B] uniforms (discrete: inverts the CDF) or [B, action_dim] standard normals (Box).
        """
        if self.is_dqn:
            return steered.argmax(-1).cpu().numpy()
        if self.action_kind == "discrete":
            probs = steered.probs.double().cpu().numpy()  # [B, A]
            if deterministic:
                return probs.argmax(-1)
            cdf = np.cumsum(probs, axis=-1)
            cdf /= cdf[:, -1:]
            return np.minimum((cdf < noise[:, None]).sum(-1), probs.shape[1] - 1)
        loc = steered.mean.double().cpu().numpy()
        action = loc if deterministic else loc + steered.stddev.double().cpu().numpy() * noise.reshape(loc.shape)
        return np.clip(action, self.action_space.low, self.action_space.high).astype(np.float32)

    def action_path_dim(self, obs: np.ndarray) -> int | None:
        """Width (last axis) of the hooked module's output when the policy acts on ``obs``, or None
        if acting does not run it (a value-head hook: editing it cannot change behaviour)."""
        seen: list[int] = []
        module: nn.Module = getattr(self, "module")
        handle = module.register_forward_hook(lambda m, i, o: seen.append(
            int(o.shape[-1]) if o.ndim == 3 else int(np.prod(o.shape[1:]))))
        try:
            self.start(1)  # type: ignore[attr-defined]
            self.forward(np.zeros(1, dtype=np.int64), obs[None], steer=False)  # type: ignore[attr-defined]
        finally:
            handle.remove()
        return seen[0] if seen else None

    def action_path_note(self, env_factory: Any, seed: int, hook: str, dim: int) -> str | None:
        """Check that an edit at ``hook`` (``dim`` wide) can change the action, on the first
        observation of ``env_factory()`` reset with ``seed``: None when it can; a note when acting
        never runs the hook (a value-head hook: a sanity check); LabError when the widths differ."""
        env = env_factory()
        try:
            obs0, _ = env.reset(seed=seed)
        finally:
            env.close()
        seen = self.action_path_dim(np.asarray(obs0))
        if seen is None:
            return (f"{hook} is not on the action path: choosing an action never runs it, so no edit there can "
                    "change behaviour (a sanity check, e.g. for a value-head hook)")
        if seen != dim:
            raise LabError(f"hook {hook!r} outputs {seen} values but the direction has {dim}")
        return None


class SB3Policy(DistributionMixin):
    """Clean and edited action distributions of an SB3 policy, with one steering hook.

    Hook names and modules are those of ``rl_lab.adapters.make_adapter`` (the recorder's), so
    every name in the run's activation file can be steered. Each step is one forward pass on the
    observation; a policy that reads the last K steps (the PPO-transformer) gets them from its
    environment (``rl_lab.train.make_policy_env`` wraps it to give the history vector), so it is
    stateless here too. A recurrent policy is ``RecurrentPolicy``.

    Parameters
    ----------
    model:
        A loaded SB3 model.
    hook:
        The hook name whose output is edited.
    sae, latent:
        For SAE-latent edits (see ``SteeringHook``).
    """

    def __init__(self, model: Any, hook: str, sae: Any = None, latent: int | None = None) -> None:
        self.adapter = make_adapter(model)
        self.kind = self.adapter.kind
        if hook not in self.adapter.modules:
            raise unknown_hook(hook, self.kind.upper(), list(self.adapter.modules))
        self.model = model
        self.policy = self.adapter.policy
        self.is_dqn = self.adapter.is_dqn
        self.module = self.adapter.modules[hook]
        self.hook = SteeringHook(self.module, sae=sae, latent=latent)
        space = model.action_space
        if isinstance(space, spaces.Discrete):
            self.action_kind = "discrete"
        elif isinstance(space, spaces.Box) and not self.is_dqn:
            self.action_kind = "box"
        else:
            raise LabError(f"steering supports Discrete or Box action spaces, not {type(space).__name__}")
        self.action_space = space
        self.has_distribution = not self.is_dqn
        self.start(0)

    def start(self, n: int) -> None:
        pass

    def advance(self, rows: np.ndarray, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        pass

    # ------------------------------------------------------------------ passes
    def forward(self, rows: np.ndarray, obs: np.ndarray, steer: bool) -> Any:
        """The action distribution (torch distribution) or, for DQN, the Q-values [B, A]."""
        rows = np.asarray(rows)
        self.hook.enabled = steer
        try:
            with torch.no_grad():
                obs_t = self.policy.obs_to_tensor(obs)[0]
                if self.is_dqn:
                    return self.policy.q_net(obs_t)
                return self.policy.get_distribution(obs_t).distribution
        finally:
            self.hook.enabled = False


class DTPolicy(DistributionMixin):
    """A decision transformer or behaviour-cloning model acting on each row's own history.

    Each row keeps the last K timesteps (observations, actions, return-to-go); the return-to-go
    starts at ``target_return`` and drops by each reward, as in ``rl_lab.dt.evaluate.DTActor``.
    Actions are drawn from the softmax of the logits (the same sampling as ``DTActor`` at
    temperature 1). The edit acts at every state token of the window.
    """

    def __init__(self, model: DecisionTransformer, hook: str, target_return: float, sae: Any = None,
                 latent: int | None = None, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.kind = "dt" if model.cfg.use_rtg else "bc"
        hook_dict = self.model.transformer.hook_dict
        if hook not in hook_dict:
            raise unknown_hook(hook, self.kind.upper(), [h for h in hook_dict if ".hook_" in h or h.startswith("hook_")])
        self.module = hook_dict[hook]
        self.hook = SteeringHook(self.module, sae=sae, latent=latent, positions=model.state_positions())
        self.target_return = float(target_return)
        self.action_kind = "discrete"
        self.action_space = spaces.Discrete(model.cfg.n_actions)
        self.has_distribution = True
        self.start(0)

    def start(self, n: int) -> None:
        self._obs: list[list[np.ndarray]] = [[] for _ in range(n)]  # the last K-1 steps of each row
        self._acts: list[list[int]] = [[] for _ in range(n)]
        self._rtg: list[list[float]] = [[] for _ in range(n)]
        self._t = np.zeros(n, dtype=np.int64)  # steps taken
        self._togo = np.full(n, self.target_return)

    def _windows(self, rows: np.ndarray, obs: np.ndarray) -> dict[str, torch.Tensor]:
        K = self.model.cfg.context
        parts: dict[str, list[np.ndarray]] = {}
        for j, r in enumerate(rows):
            n_hist = len(self._obs[r])
            states = np.stack(self._obs[r] + [np.asarray(obs[j], dtype=np.float32).reshape(-1)])
            acts = np.asarray(self._acts[r] + [0])  # a_t's token comes after s_t: a placeholder
            rtg = np.asarray(self._rtg[r] + [float(self._togo[r])], dtype=np.float32)
            win = episode_windows(states, acts, rtg, K, t0=int(self._t[r]) - n_hist)
            for k, v in win.items():
                parts.setdefault(k, []).append(v[-1])
        return {k: torch.as_tensor(np.stack(v)).to(self.device) for k, v in parts.items()}

    def forward(self, rows: np.ndarray, obs: np.ndarray, steer: bool) -> Any:
        win = self._windows(np.asarray(rows), obs)
        self.hook.enabled = steer
        try:
            with torch.no_grad():
                logits = self.model(win["states"], win["actions"], win["rtg"], win["timesteps"], win["mask"])[:, -1]
        finally:
            self.hook.enabled = False
        return torch.distributions.Categorical(logits=logits)

    def advance(self, rows: np.ndarray, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        keep = self.model.cfg.context - 1
        for j, r in enumerate(rows):
            self._obs[r].append(np.asarray(obs[j], dtype=np.float32).reshape(-1))
            self._acts[r].append(int(actions[j]))
            self._rtg[r].append(float(self._togo[r]))
            self._togo[r] -= float(rewards[j])
            self._t[r] += 1
            if keep <= 0:
                self._obs[r], self._acts[r], self._rtg[r] = [], [], []
            elif len(self._obs[r]) > keep:
                del self._obs[r][:-keep], self._acts[r][:-keep], self._rtg[r][:-keep]


class RecurrentPolicy(DistributionMixin):
    """sb3-contrib's ``RecurrentPPO``: each row carries its own LSTM state.

    The hooks are ``rl_lab.adapters.RecurrentAdapter.modules``: the LSTM states
    (``lstm_actor.hidden``, ``lstm_actor.cell``, ...) and the modules after the LSTM. An edit of a
    state is carried to the next step with it (the edited network's memory is the one that acts):
    ``forward(steer=True)`` computes the edited state, ``advance`` commits it.
    """

    def __init__(self, model: Any, hook: str, sae: Any = None, latent: int | None = None) -> None:
        self.adapter = RecurrentAdapter(model)
        self.kind = "recurrent-ppo"
        if hook not in self.adapter.modules:
            raise unknown_hook(hook, "recurrent PPO", self.adapter.hooks)
        self.module = self.adapter.modules[hook]
        self.hook = SteeringHook(self.module, sae=sae, latent=latent)
        if not isinstance(model.action_space, (spaces.Discrete, spaces.Box)):
            raise LabError(f"steering supports Discrete or Box action spaces, not {type(model.action_space).__name__}")
        self.action_kind = "discrete" if isinstance(model.action_space, spaces.Discrete) else "box"
        self.action_space = model.action_space
        self.has_distribution = True
        self.start(0)

    def start(self, n: int) -> None:
        self._state = self.adapter.zero_state(n)  # name -> (h, c), each [layers, n, hidden]
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, rows: np.ndarray, obs: np.ndarray, steer: bool) -> Any:
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.adapter.policy.device)
        state = {name: (h[:, idx], c[:, idx]) for name, (h, c) in self._state.items()}
        self.hook.enabled = steer
        try:
            with torch.no_grad():
                obs_t = self.adapter.policy.obs_to_tensor(obs)[0]
                latent_pi, _, new = self.adapter.step(obs_t, state, critic=False)
                dist = self.adapter.distribution(latent_pi).distribution
        finally:
            self.hook.enabled = False
        if steer:
            self._pending = new
        return dist

    def advance(self, rows: np.ndarray, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        if self._pending is None:
            return
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.adapter.policy.device)
        for name, (h, c) in self._pending.items():
            self._state[name][0][:, idx] = h
            self._state[name][1][:, idx] = c
        self._pending = None


# --------------------------------------------------------------------------- registry
PolicyLoader = Callable[[Run, Path, str, Any, "int | None", str], SteerablePolicy]
"""``loader(run, checkpoint, hook, sae, latent, device)``: the network on ``device`` (``cpu``, ``cuda:N``)."""


def _load_recurrent_policy(run: Run, checkpoint: Path, hook: str, sae: Any, latent: int | None,
                           device: str) -> SteerablePolicy:
    return RecurrentPolicy(load_sb3(run, checkpoint, device=device), hook, sae=sae, latent=latent)


def _load_sb3_policy(run: Run, checkpoint: Path, hook: str, sae: Any, latent: int | None,
                     device: str) -> SteerablePolicy:
    return SB3Policy(load_sb3(run, checkpoint, device=device), hook, sae=sae, latent=latent)


def _load_dt_policy(run: Run, checkpoint: Path, hook: str, sae: Any, latent: int | None,
                    device: str) -> SteerablePolicy:
    return DTPolicy(load_model(run, checkpoint), hook, record_target(run), sae=sae, latent=latent, device=device)


POLICY_LOADERS: dict[str, PolicyLoader] = {"dt": _load_dt_policy, "bc": _load_dt_policy,
                                           "recurrent-ppo": _load_recurrent_policy}
"""algo -> loader; algos not listed are SB3 models (``_load_sb3_policy``)."""


def load_policy(run: Run, checkpoint: Path, hook: str, sae: Any = None, latent: int | None = None,
                device: str = "cpu") -> SteerablePolicy:
    """The steerable policy of ``run`` at ``checkpoint``, hooked at ``hook``, on ``device``.

    ``device`` is a resolved device (``rl_lab.devices.resolve_device``); ``sae`` (for SAE-latent
    edits) must be on it too.
    """
    loader = POLICY_LOADERS.get(str(run.info.get("algo")), _load_sb3_policy)
    return loader(run, checkpoint, hook, sae, latent, device)
