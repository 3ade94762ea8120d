"""What the recorder needs from a trained network, and the adapter for stable-baselines3 policies.

``PolicyAdapter`` is the protocol ``rl_lab.record`` rolls out and hooks; ``SB3Adapter`` implements it
for an SB3 agent (the decision transformer's lives in ``rl_lab.dt.record``). ``SB3Adapter.modules``
is the one map from a hook name to the module it names, used by steering and SAE splicing too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from rl_lab.errors import LabError
from rl_lab.runs import Run
from rl_lab.train import algo_class


@dataclass
class EpisodeForward:
    """What one batched forward pass over an episode gives."""

    acts: dict[str, np.ndarray]  # hook -> [T, d]
    values: np.ndarray  # [T]
    final_value: float  # V(s_{T+1}), used when the episode was truncated
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)  # entropy, arousal, ...


class PolicyAdapter(Protocol):
    """What the recorder needs from a trained network (an SB3 agent, a decision transformer)."""

    kind: str
    hooks: list[str]
    linear_in: dict[str, list[str]]  # label -> hooks in which it is linear by construction

    def reset(self) -> None:
        """Start a new episode (forget any history)."""

    def act(self, obs: np.ndarray) -> Any:
        """The action for one observation (may use the adapter's own history)."""

    def episode_forward(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        final_obs: np.ndarray) -> EpisodeForward:
        """Hooked activations, values and extra labels for a whole episode."""

    def random_twin(self, seed: int) -> "PolicyAdapter | None":
        """The same architecture with freshly initialised weights (random-weights baseline)."""


class SB3Adapter:
    """Hooks an SB3 policy: every Linear and activation module outside the feature extractor."""

    def __init__(self, model: Any, policy: Any | None = None, deterministic: bool = False) -> None:
        self.model = model
        self.policy = policy if policy is not None else model.policy
        self.policy.set_training_mode(False)
        self.deterministic = deterministic
        self.kind = type(model).__name__.lower()
        self.is_dqn = self.kind == "dqn"
        root = self.policy.q_net if self.is_dqn else self.policy
        prefix = "q_net." if self.is_dqn else ""
        self.modules: dict[str, nn.Module] = {}  # hook name -> module (the one address)
        for name, module in root.named_modules():
            if not name or "features_extractor" in name or list(module.children()):
                continue
            if isinstance(module, nn.Linear) or type(module).__module__ == "torch.nn.modules.activation":
                self.modules[prefix + name] = module
        self.hooks = list(self.modules)
        self.linear_in: dict[str, list[str]] = {}
        if not self.is_dqn:
            value_layers = [h for h in self.hooks if h.startswith("mlp_extractor.value_net.")]
            last = value_layers[-1:] if value_layers else []
            self.linear_in = {"value": last + ["value_net"]}
        self._captured: dict[str, np.ndarray] = {}
        self._capture = False
        for name, module in self.modules.items():
            module.register_forward_hook(self._make_hook(name))

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if self._capture:
                self._captured[name] = output.detach().cpu().numpy().reshape(output.shape[0], -1)

        return hook

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> Any:
        """The action ``model.predict`` would take (same sampling calls), without its per-call
        overhead (``predict`` re-walks every module to set eval mode on each call)."""
        if self.is_dqn:
            action, _ = self.model.predict(obs, deterministic=self.deterministic)
            return action
        with torch.no_grad():
            obs_t, _ = self.policy.obs_to_tensor(obs)
            action = self.policy.get_distribution(obs_t).get_actions(deterministic=self.deterministic)
        action = action.cpu().numpy().reshape((-1, *self.model.action_space.shape))[0]
        low = getattr(self.model.action_space, "low", None)
        if low is not None:
            action = np.clip(action, low, self.model.action_space.high)
        return action

    def _tensor(self, obs: np.ndarray) -> Any:
        return self.policy.obs_to_tensor(obs)[0]

    def episode_forward(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        final_obs: np.ndarray) -> EpisodeForward:
        extra: dict[str, np.ndarray] = {}
        with torch.no_grad():
            obs_t = self._tensor(obs)  # [T, *obs_shape]
            final_t = self._tensor(final_obs[None])  # [1, *obs_shape]
            self._captured = {}
            self._capture = True
            try:
                if self.is_dqn:
                    q = self.policy.q_net(obs_t).cpu().numpy()  # [T, n_actions]
                else:
                    act_t = torch.as_tensor(actions, device=obs_t.device)
                    values_t, _, entropy_t = self.policy.evaluate_actions(obs_t, act_t)
            finally:
                self._capture = False
            acts = dict(self._captured)
            if self.is_dqn:
                values = q.max(axis=1)
                final_value = float(self.policy.q_net(final_t).max().item())
                extra["arousal"] = q.max(axis=1) - q.min(axis=1)
            else:
                values = values_t.flatten().cpu().numpy()
                final_value = float(self.policy.predict_values(final_t).item())
                if entropy_t is not None:
                    entropy = entropy_t.flatten().cpu().numpy()
                    extra["entropy"] = entropy
                    n_actions = int(getattr(self.model.action_space, "n", 0))
                    if n_actions > 1:
                        extra["arousal"] = 1.0 - entropy / np.log(n_actions)
        return EpisodeForward(acts=acts, values=values, final_value=final_value, extra_labels=extra)

    def random_twin(self, seed: int) -> "SB3Adapter":
        torch.manual_seed(seed)
        kwargs = dict(self.model.policy_kwargs)
        twin_policy = self.model.policy_class(
            self.model.observation_space, self.model.action_space, lambda _: 0.0, **kwargs
        )
        return SB3Adapter(self.model, policy=twin_policy, deterministic=self.deterministic)


def load_sb3(run: Run, checkpoint: Path) -> Any:
    """The SB3 model of ``checkpoint``, loaded on the CPU with the run's algorithm."""
    algo = run.info.get("algo", "ppo")
    try:
        return algo_class(algo).load(checkpoint, device="cpu")
    except LabError:
        raise
    except Exception as exc:
        raise LabError(f"cannot load checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
