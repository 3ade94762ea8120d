"""What the recorder needs from a trained network, and the adapter for stable-baselines3 policies.

``PolicyAdapter`` is the protocol ``rl_lab.record`` rolls out and hooks; ``SB3Adapter`` implements it
for an SB3 agent (the decision transformer's lives in ``rl_lab.dt.record``), ``RecurrentAdapter``
for sb3-contrib's ``RecurrentPPO``; ``make_adapter`` picks one for a loaded model.
``SB3Adapter.modules`` is the one map from a hook name to the module it names, used by steering
and SAE splicing too.

A policy may name its own hooks: if it has ``hook_modules()`` (name -> module), ``linear_in()``
and ``new_history()`` (``rl_lab.policies.TransformerActorCriticPolicy``), the adapter uses them
instead of its module discovery, and feeds the policy the history vector of the last K steps,
built from the raw observations the recorder passes.

Devices: ``load_sb3(run, checkpoint, device)`` loads the network on ``device`` (``cpu`` or
``cuda:N``, ``rl_lab.devices.resolve_device``); the adapters move each observation to the
network's device (``SB3Adapter.device``), build random twins and LSTM states there, and hand
activations, values and actions back as CPU numpy arrays.

The recurrent agent's LSTM states are hooks too: ``lstm_actor.hidden`` and ``lstm_actor.cell``
(and ``lstm_critic.hidden``, ``lstm_critic.cell`` for the critic's own LSTM), each [T, hidden]:
the LSTM's hidden and cell state after reading the observation of step t, i.e. the memory the
actor (critic) reads at step t and carries to step t + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn

from rl_lab.errors import LabError
from rl_lab.runs import Run, check_checkpoint
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
    """Hooks an SB3 policy: every Linear and activation module, the feature extractor's included
    (``features_extractor.cnn.1``, ...; SB3's default ``FlattenExtractor`` has none)."""

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
        own_hooks = getattr(self.policy, "hook_modules", None)
        if callable(own_hooks):
            self.modules = dict(own_hooks())
        else:
            for name, module in root.named_modules():
                if not name or list(module.children()):
                    continue
                if isinstance(module, nn.Linear) or type(module).__module__ == "torch.nn.modules.activation":
                    self.modules[prefix + name] = module
        self.hooks = list(self.modules)
        self.linear_in: dict[str, list[str]] = {}
        own_linear = getattr(self.policy, "linear_in", None)
        if callable(own_linear):
            self.linear_in = own_linear()
        elif not self.is_dqn:
            value_layers = [h for h in self.hooks if h.startswith("mlp_extractor.value_net.")]
            last = value_layers[-1:] if value_layers else []
            self.linear_in = {"value": last + ["value_net"]}
        new_history = getattr(self.policy, "new_history", None)
        self._new_history = new_history if callable(new_history) else None
        self.history = new_history() if callable(new_history) else None  # acting on raw observations
        self._batch_histories: dict[int, Any] = {}  # act_batch: environment slot -> its history
        self._batch_last: dict[int, Any] = {}  # act_batch: environment slot -> its last action
        self._replay = new_history() if callable(new_history) else None  # rebuilding an episode's inputs
        self._last_action: Any = None
        self._captured: dict[str, np.ndarray] = {}
        self._capture = False
        for name, module in self.modules.items():
            module.register_forward_hook(self._make_hook(name))

    @property
    def device(self) -> str:
        """The device the network runs on (``cpu``, ``cuda:0``, ...)."""
        return str(self.policy.device)

    @property
    def input_window(self) -> dict | None:
        """What the network receives at each step (the activation file's ``input_window``, the
        probes' input-matched baseline): a transformer policy reads the last K steps'
        observations, the earlier steps' actions and the timesteps (``rl_lab.policies``); an MLP
        reads the current observation only (``raw_obs`` is its input-matched baseline): None."""
        if self.history is None:
            return None
        return {"context": int(self.history.context), "fields": ["obs", "prev_actions", "timestep"]}

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if self._capture:
                self._captured[name] = output.detach().cpu().numpy().reshape(output.shape[0], -1)

        return hook

    def reset(self) -> None:
        self._last_action = None

    def act(self, obs: np.ndarray) -> Any:
        """The action ``model.predict`` would take (same sampling calls), without its per-call
        overhead (``predict`` re-walks every module to set eval mode on each call)."""
        if self.history is not None:  # the policy reads the last K steps: extend the history by obs
            first = self._last_action is None
            obs = self.history.reset(obs) if first else self.history.step(self._last_action, obs)
        if self.is_dqn:
            action, _ = self.model.predict(obs, deterministic=self.deterministic)
            self._last_action = action
            return action
        with torch.no_grad():
            obs_t, _ = self.policy.obs_to_tensor(obs)
            action = self.policy.get_distribution(obs_t).get_actions(deterministic=self.deterministic)
        action = action.cpu().numpy().reshape((-1, *self.model.action_space.shape))[0]
        low = getattr(self.model.action_space, "low", None)
        if low is not None:
            action = np.clip(action, low, self.model.action_space.high)
        self._last_action = action
        return action

    def act_batch(self, obs: np.ndarray, slots: list[int], starts: list[bool]) -> np.ndarray:
        """The actions of several environments at once, one batched forward pass.

        Parameters
        ----------
        obs:
            One observation per environment [B, *obs_shape].
        slots:
            Which environment each row is (a stable index: its history or memory lives there).
        starts:
            Whether each row is the first step of an episode (its history or memory is reset).

        Returns
        -------
        np.ndarray
            [B, *action_shape]: with deterministic actions, row i is what ``act`` takes for that
            environment's observation; sampled actions draw from the same distributions.
        """
        if self._new_history is not None:  # each environment's own last K steps
            rows = []
            for o, slot, first in zip(obs, slots, starts):
                history = self._batch_histories.get(slot)
                if history is None:
                    history = self._batch_histories[slot] = self._new_history()
                rows.append(history.reset(o) if first else history.step(self._batch_last[slot], o))
            obs = np.stack(rows)
        if self.is_dqn:
            actions, _ = self.model.predict(obs, deterministic=self.deterministic)
        elif self._categorical_actor:
            actions = self._categorical_actions(obs)
        else:
            with torch.no_grad():
                obs_t, _ = self.policy.obs_to_tensor(obs)
                actions = self.policy.get_distribution(obs_t).get_actions(deterministic=self.deterministic)
            actions = self._clip(actions.cpu().numpy().reshape((-1, *self.model.action_space.shape)))
        for slot, action in zip(slots, actions):
            self._batch_last[slot] = action
        return actions

    @property
    def _categorical_actor(self) -> bool:
        """Whether the policy is SB3's own actor-critic with a categorical action head (``act_batch``
        then computes the action from the actor's logits directly, see ``_categorical_actions``)."""
        fast = getattr(self, "_fast_categorical", None)
        if fast is None:
            from stable_baselines3.common.distributions import CategoricalDistribution
            from stable_baselines3.common.policies import ActorCriticPolicy

            policy = self.policy
            fast = self._fast_categorical = (
                type(policy).get_distribution is ActorCriticPolicy.get_distribution
                and type(getattr(policy, "action_dist", None)) is CategoricalDistribution
                and hasattr(policy, "mlp_extractor") and hasattr(policy, "action_net"))
        return fast

    def _categorical_actions(self, obs: np.ndarray) -> np.ndarray:
        """``get_distribution(obs).get_actions()`` of SB3's actor-critic with a categorical head,
        computed as ``torch.distributions.Categorical`` computes it (the logits normalised by their
        logsumexp, their softmax, its argmax or one ``torch.multinomial`` draw per row) without
        building the distribution objects, whose per-call checks cost more than the forward pass
        of a small network. The same numbers: the batched file equals the sequential one."""
        policy = self.policy
        with torch.no_grad():
            obs_t, _ = policy.obs_to_tensor(obs)
            features = policy.extract_features(obs_t, policy.pi_features_extractor)
            logits = policy.action_net(policy.mlp_extractor.forward_actor(features))
            probs = torch.softmax(logits - logits.logsumexp(dim=-1, keepdim=True), dim=-1)
            if self.deterministic:
                actions = torch.argmax(probs, dim=1)
            else:
                actions = torch.multinomial(probs, 1, True).T.reshape(-1)
        return actions.cpu().numpy()

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        low = getattr(self.model.action_space, "low", None)
        return np.clip(actions, low, self.model.action_space.high) if low is not None else actions

    def _tensor(self, obs: np.ndarray) -> Any:
        return self.policy.obs_to_tensor(obs)[0]

    def episode_forward(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        final_obs: np.ndarray) -> EpisodeForward:
        return self.episodes_forward([(obs, actions, rewards, final_obs)])[0]

    def episodes_forward(self, episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                         ) -> list[EpisodeForward]:
        """``episode_forward`` of several episodes ``(obs, actions, rewards, final_obs)`` as one
        batched pass over all their steps (the recorder's blocks), split back per episode."""
        obs_parts, act_parts, finals = [], [], []
        for obs, actions, _, final_obs in episodes:
            if self._replay is not None:  # the inputs the acting policy had: history vectors [T, size]
                obs, final_obs = self._replay.episode(obs, actions, final_obs)
            obs_parts.append(obs)
            act_parts.append(np.asarray(actions))
            finals.append(final_obs)
        bounds = np.cumsum([0] + [len(o) for o in obs_parts])
        extra: dict[str, np.ndarray] = {}
        with torch.no_grad():
            obs_t = self._tensor(np.concatenate(obs_parts))  # [sum T, *obs_shape]
            final_t = self._tensor(np.stack(finals))  # [episodes, *obs_shape]
            self._captured = {}
            self._capture = True
            try:
                if self.is_dqn:
                    q = self.policy.q_net(obs_t).cpu().numpy()  # [sum T, n_actions]
                else:
                    act_t = torch.as_tensor(np.concatenate(act_parts), device=obs_t.device)
                    values_t, _, entropy_t = self.policy.evaluate_actions(obs_t, act_t)
            finally:
                self._capture = False
            acts = dict(self._captured)
            if self.is_dqn:
                values = q.max(axis=1)
                final_values = self.policy.q_net(final_t).max(dim=1).values.cpu().numpy()
                extra["arousal"] = q.max(axis=1) - q.min(axis=1)
            else:
                values = values_t.flatten().cpu().numpy()
                final_values = self.policy.predict_values(final_t).flatten().cpu().numpy()
                if entropy_t is not None:
                    entropy = entropy_t.flatten().cpu().numpy()
                    extra["entropy"] = entropy
                    n_actions = int(getattr(self.model.action_space, "n", 0))
                    if n_actions > 1:
                        extra["arousal"] = 1.0 - entropy / np.log(n_actions)
        return [EpisodeForward(acts={k: v[a:b] for k, v in acts.items()}, values=values[a:b],
                               final_value=float(final_values[i]),
                               extra_labels={k: v[a:b] for k, v in extra.items()})
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]

    def random_twin(self, seed: int) -> "SB3Adapter":
        torch.manual_seed(seed)
        kwargs = dict(self.model.policy_kwargs)
        twin_policy = self.model.policy_class(
            self.model.observation_space, self.model.action_space, lambda _: 0.0, **kwargs
        ).to(self.policy.device)
        return SB3Adapter(self.model, policy=twin_policy, deterministic=self.deterministic)


class StateView(nn.Module):
    """Identity on an LSTM state [B, hidden]: the hook the recurrent agent's memory is read and edited at."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RecurrentAdapter(SB3Adapter):
    """Hooks sb3-contrib's ``RecurrentPPO`` (``MlpLstmPolicy``): the usual Linear and activation
    modules after the LSTM, plus its hidden and cell states as hooks (module docstring).

    The adapter steps the LSTM one observation at a time exactly as ``RecurrentPPO.predict``
    does (zero state at an episode's start), passing every new state through a ``StateView``:
    a forward hook on ``modules["lstm_actor.hidden"]`` reads — or edits, and the edit is carried
    to the next step — the actor's memory.
    """

    def __init__(self, model: Any, policy: Any | None = None, deterministic: bool = False,
                 history_window: int = 10) -> None:
        super().__init__(model, policy=policy, deterministic=deterministic)
        self.kind = "recurrent-ppo"
        self.history_window = int(history_window)
        lstms = [("lstm_actor", self.policy.lstm_actor)]
        if self.policy.lstm_critic is not None:
            lstms.append(("lstm_critic", self.policy.lstm_critic))
        self.lstms = dict(lstms)
        views = {f"{name}.{part}": StateView() for name, _ in lstms for part in ("hidden", "cell")}
        for name, view in views.items():
            view.register_forward_hook(self._make_hook(name))
        self.modules = {**views, **self.modules}
        self._extractor_hooked = any("features_extractor" in name for name in self.modules)
        self.hooks = list(self.modules)
        self._state: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def input_window(self) -> dict:
        """The LSTM receives every observation of the episode so far; its input-matched baseline
        reads the last ``history_window`` of them (the run's ``context``, the transformers' K in a
        fair comparison), each with its validity column: a linear readout cannot take an unbounded
        history, so labels that need more than K steps of memory are underestimated by it."""
        return {"context": self.history_window, "fields": ["obs"]}

    def zero_state(self, batch: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The state at an episode's start for ``batch`` parallel episodes."""
        device = self.policy.device
        return {name: (torch.zeros(lstm.num_layers, batch, lstm.hidden_size, device=device),
                       torch.zeros(lstm.num_layers, batch, lstm.hidden_size, device=device))
                for name, lstm in self.lstms.items()}

    def step(self, obs_t: torch.Tensor, state: dict[str, tuple[torch.Tensor, torch.Tensor]],
             critic: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """One step for a batch [B, ...]: the actor's latent [B, hidden], the critic's (None when
        ``critic`` is False or the critic has no LSTM) and the new state (the views' outputs)."""
        features = self.policy.extract_features(obs_t, self.policy.pi_features_extractor)  # [B, F]
        new = dict(state)
        for name, lstm in self.lstms.items():
            if name == "lstm_critic" and not critic:
                continue
            _, (h, c) = lstm(features.unsqueeze(0), state[name])  # [layers, B, H] each
            h_top = self.modules[f"{name}.hidden"](h[-1])  # [B, H]
            c_top = self.modules[f"{name}.cell"](c[-1])
            new[name] = (torch.cat([h[:-1], h_top[None]]), torch.cat([c[:-1], c_top[None]]))
        latent_pi = new["lstm_actor"][0][-1]
        if "lstm_critic" in self.lstms:
            latent_vf = new["lstm_critic"][0][-1] if critic else None
        elif critic:
            latent_vf = latent_pi.detach() if self.policy.shared_lstm else self.policy.critic(features)
        else:
            latent_vf = None
        return latent_pi, latent_vf, new

    def distribution(self, latent_pi: torch.Tensor) -> Any:
        """The SB3 action distribution from the actor's LSTM output."""
        return self.policy._get_action_dist_from_latent(self.policy.mlp_extractor.forward_actor(latent_pi))

    def value(self, latent_vf: torch.Tensor) -> torch.Tensor:
        return self.policy.value_net(self.policy.mlp_extractor.forward_critic(latent_vf))

    def reset(self) -> None:
        self._state = None

    def act_batch(self, obs: np.ndarray, slots: list[int], starts: list[bool]) -> np.ndarray:
        """``SB3Adapter.act_batch`` with one LSTM memory per environment slot (zero at a start)."""
        with torch.no_grad():
            obs_t = self._tensor(obs)
            zero = self.zero_state(1)
            state = {}
            for name in self.lstms:
                hs, cs = [], []
                for slot, first in zip(slots, starts):
                    h, c = zero[name] if first or slot not in self._batch_last else self._batch_last[slot][name]
                    hs.append(h)
                    cs.append(c)
                state[name] = (torch.cat(hs, dim=1), torch.cat(cs, dim=1))  # [layers, B, H]
            latent_pi, _, new = self.step(obs_t, state, critic=False)
            actions = self.distribution(latent_pi).get_actions(deterministic=self.deterministic)
        for i, slot in enumerate(slots):
            self._batch_last[slot] = {name: (h[:, i:i + 1], c[:, i:i + 1]) for name, (h, c) in new.items()}
        return self._clip(actions.cpu().numpy().reshape((-1, *self.model.action_space.shape)))

    def act(self, obs: np.ndarray) -> Any:
        with torch.no_grad():
            obs_t = self._tensor(obs)
            state = self._state if self._state is not None else self.zero_state(obs_t.shape[0])
            latent_pi, _, self._state = self.step(obs_t, state, critic=False)
            action = self.distribution(latent_pi).get_actions(deterministic=self.deterministic)
        action = action.cpu().numpy().reshape((-1, *self.model.action_space.shape))[0]
        low = getattr(self.model.action_space, "low", None)
        if low is not None:
            action = np.clip(action, low, self.model.action_space.high)
        return action

    def episode_forward(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        final_obs: np.ndarray) -> EpisodeForward:
        T = len(obs)
        with torch.no_grad():
            obs_t = self._tensor(np.concatenate([obs, final_obs[None]]))  # [T + 1, ...]
            state = self.zero_state(1)
            pi, vf = [], []
            memory: dict[str, list[torch.Tensor]] = {name: [] for name in self.modules if name.startswith("lstm_")}
            for t in range(T + 1):  # the memory, one step at a time, as when acting (nothing captured)
                latent_pi, latent_vf, state = self.step(obs_t[t:t + 1], state)
                pi.append(latent_pi)
                vf.append(latent_vf)
                for name, (h, c) in state.items():
                    memory[f"{name}.hidden"].append(h[-1])
                    memory[f"{name}.cell"].append(c[-1])
            latent_pi, latent_vf = torch.cat(pi), torch.cat(vf)  # [T + 1, H]
            self._captured = {}
            self._capture = True
            try:  # the states, then everything after the LSTM, as one hooked batch of the T steps
                if self._extractor_hooked:  # and the feature extractor's layers (a CNN's) before it
                    self.policy.extract_features(obs_t[:T])
                for name, rows in memory.items():
                    self.modules[name](torch.cat(rows[:T]))  # [T, H]
                dist = self.distribution(latent_pi[:T])
                values_t = self.value(latent_vf[:T])
            finally:
                self._capture = False
            acts = dict(self._captured)
            final_value = float(self.value(latent_vf[T:]).item())
            values = values_t.flatten().cpu().numpy()
            entropy = dist.entropy().flatten().cpu().numpy()
        extra = {"entropy": entropy}
        n_actions = int(getattr(self.model.action_space, "n", 0))
        if n_actions > 1:
            extra["arousal"] = 1.0 - entropy / np.log(n_actions)
        return EpisodeForward(acts=acts, values=values, final_value=final_value, extra_labels=extra)

    def episodes_forward(self, episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                         ) -> list[EpisodeForward]:
        """One ``episode_forward`` per episode (the memory is stepped through each episode)."""
        return [self.episode_forward(*episode) for episode in episodes]

    def random_twin(self, seed: int) -> "RecurrentAdapter":
        torch.manual_seed(seed)
        kwargs = dict(self.model.policy_kwargs)
        twin_policy = self.model.policy_class(
            self.model.observation_space, self.model.action_space, lambda _: 0.0, **kwargs
        ).to(self.policy.device)
        return RecurrentAdapter(self.model, policy=twin_policy, deterministic=self.deterministic,
                                history_window=self.history_window)


def make_adapter(model: Any, deterministic: bool = False, history_window: int = 10) -> SB3Adapter:
    """The adapter for a loaded SB3 model: ``RecurrentAdapter`` for an LSTM policy (its input-matched
    baseline over the last ``history_window`` observations), else ``SB3Adapter``."""
    if isinstance(model.policy, RecurrentActorCriticPolicy):
        return RecurrentAdapter(model, deterministic=deterministic, history_window=history_window)
    return SB3Adapter(model, deterministic=deterministic)


def load_sb3(run: Run, checkpoint: Path, device: str = "cpu") -> Any:
    """The SB3 model of ``checkpoint``, loaded with the run's algorithm on ``device``.

    ``device`` is a resolved device (``cpu`` or ``cuda:N``: ``rl_lab.devices.resolve_device``).
    """
    algo = run.info.get("algo", "ppo")
    check_checkpoint(run, checkpoint)  # never unpickle a file from elsewhere without --trust
    try:
        return algo_class(algo).load(checkpoint, device=device)
    except LabError:
        raise
    except Exception as exc:
        raise LabError(f"cannot load checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
