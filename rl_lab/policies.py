"""A transformer actor-critic for stable-baselines3 whose trunk is the behaviour-cloning transformer.

``rl-lab train --algo ppo --policy transformer`` (or ``a2c``) trains
``TransformerActorCriticPolicy``: the trunk is ``rl_lab.dt.model.DecisionTransformer`` with
``use_rtg=False`` — the very network BC trains (``boot_native`` TransformerLens bridge, tokens
(s_t, a_t) per timestep plus a timestep embedding, context K, left padding masked out of
attention) — read at the state token of the current step, after the model's final LayerNorm,
by two linear heads: SB3's ``action_net`` (the actor) and ``value_net`` (the critic). By default
actor and critic share the trunk; with ``separate_critic=True`` the critic reads a second
transformer of the same shape (as SB3's MLP policy has separate actor and critic networks), so the
actor's trunk is trained by the policy gradient alone; with ``mlp_critic=True`` the critic is
instead SB3's MLP critic (``net_arch`` Tanh layers, as PPO-MLP's) over the current step's
observation, recorded as ``critic.value_net.<i>``. Either way the actor's trunk is BC's network:
PPO-transformer and BC differ only in their training signal.

The K-step history SB3 must store in its rollout buffer is part of the observation:
``HistoryObservation`` wraps every training environment, and ``HistoryStack`` builds the same
vector when the recorder replays an episode. The vector (float32, length ``K * (obs_dim + 3)``)::

    [ states: K * obs_dim | actions: K | timesteps: K | mask: K ]

Slot ``K - 1`` is the current step t, slot ``K - 1 - j`` is step ``t - j``. ``actions`` holds the
action taken at that step (0 at the current step, whose action is not chosen yet — its token
comes after the state token, so it could not influence the choice anyway), ``timesteps`` the step
within the episode, ``mask`` 1 for real steps and 0 for the left padding before the episode's
first step (padding slots are all zero).

Hooks: ``hook_modules()`` maps each TransformerLens hook name a DT/BC recording keeps
(``rl_lab.dt.model.stored_hooks``: ``blocks.0.hook_resid_pre``, ``blocks.i.hook_resid_mid``,
``blocks.i.hook_resid_post``, ``blocks.i.mlp.hook_post``, ``blocks.i.attn.hook_pattern``) to a
``StepView``: an identity module fed the current step's slice of that hook ([B, d_model]; for
a pattern, the current state token's attention row [B, n_heads * n_ctx]) whose output is written
back into the network. A forward hook on the view reads or edits exactly what the DT adapter
records, so the recorder, steering and SAE splicing address the transformer policy by the same
names, through ``rl_lab.adapters.SB3Adapter``, with no special case. A separate critic's trunk
is recorded under the same names prefixed ``critic.`` (``critic.blocks.0.hook_resid_post``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from rl_lab.dt.model import DecisionTransformer, DTModelConfig, stored_hooks


def history_size(obs_dim: int, context: int) -> int:
    """Length of the history vector for ``obs_dim``-long observations and ``context`` steps."""
    return context * (obs_dim + 3)


class HistoryStack:
    """The last ``context`` observations and actions of one episode, as the history vector."""

    def __init__(self, obs_dim: int, context: int) -> None:
        self.obs_dim = obs_dim
        self.context = context
        self.states = np.zeros((context, obs_dim), dtype=np.float32)
        self.actions = np.zeros(context, dtype=np.float32)
        self.timesteps = np.zeros(context, dtype=np.float32)
        self.mask = np.zeros(context, dtype=np.float32)
        self.t = 0

    def reset(self, obs: np.ndarray) -> np.ndarray:
        """Start an episode at ``obs``; returns the history vector of its first step."""
        for arr in (self.states, self.actions, self.timesteps, self.mask):
            arr[...] = 0
        self.t = 0
        return self._push(obs)

    def step(self, action: Any, obs: np.ndarray) -> np.ndarray:
        """``action`` was taken at the current step and led to ``obs``; returns the new vector."""
        self.actions[-1] = float(np.asarray(action).reshape(-1)[0])
        self.t += 1
        return self._push(obs)

    def _push(self, obs: np.ndarray) -> np.ndarray:
        for arr in (self.states, self.actions, self.timesteps, self.mask):
            arr[:-1] = arr[1:].copy()
        self.states[-1] = np.asarray(obs, dtype=np.float32).reshape(-1)
        self.actions[-1] = 0.0
        self.timesteps[-1] = self.t
        self.mask[-1] = 1.0
        return self.vector()

    def vector(self) -> np.ndarray:
        return np.concatenate([self.states.reshape(-1), self.actions, self.timesteps, self.mask])

    def episode(self, obs: np.ndarray, actions: np.ndarray, final_obs: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """The vectors an acting policy saw at every step of an episode [T, size], and the one
        of ``final_obs`` (the observation after the last action) or None."""
        T = len(obs)
        out = np.zeros((T, history_size(self.obs_dim, self.context)), dtype=np.float32)
        out[0] = self.reset(obs[0])
        for t in range(1, T):
            out[t] = self.step(actions[t - 1], obs[t])
        final = self.step(actions[T - 1], final_obs) if final_obs is not None else None
        return out, final


def split_history(x: torch.Tensor, obs_dim: int, context: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Undo the history vector [B, size]: states [B, K, obs_dim], actions [B, K] long,
    timesteps [B, K] long, mask [B, K] bool."""
    B, K = x.shape[0], context
    n = K * obs_dim
    states = x[:, :n].reshape(B, K, obs_dim)
    actions = x[:, n:n + K].round().long()
    timesteps = x[:, n + K:n + 2 * K].round().long()
    mask = x[:, n + 2 * K:n + 3 * K] > 0.5
    return states, actions, timesteps, mask


class HistoryObservation(gymnasium.Wrapper):
    """Observations become the history vector of the last ``context`` steps (module docstring)."""

    def __init__(self, env: gymnasium.Env, context: int) -> None:
        super().__init__(env)
        obs_dim = int(np.prod(env.observation_space.shape))
        self.history = HistoryStack(obs_dim, context)
        size = history_size(obs_dim, context)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        return self.history.reset(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.history.step(action, obs), reward, terminated, truncated, info


class StepView(nn.Module):
    """Identity on the current step's slice of a TransformerLens hook (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TransformerTrunk(nn.Module):
    """SB3's ``mlp_extractor`` slot: the BC transformer, read at the current state token.

    ``forward(features)`` takes history vectors [B, size] and returns the final residual stream
    after the final LayerNorm at the current state token [B, d_model], for the actor and the critic.
    """

    def __init__(self, cfg: DTModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = DecisionTransformer(cfg)
        self.latent_dim_pi = self.latent_dim_vf = cfg.d_model
        self.position = int(self.model.state_positions()[-1])  # the current step's state token
        self.views: dict[str, StepView] = {}
        hooks = self.model.transformer.hook_dict
        for name in stored_hooks(cfg):
            view = StepView()
            self.views[name] = view
            hooks[name].register_forward_hook(self._view_hook(view, name.endswith("hook_pattern")))
        self._final: torch.Tensor | None = None
        hooks["ln_final.hook_normalized"].register_forward_hook(self._keep_final)

    def _view_hook(self, view: StepView, pattern: bool) -> Callable[..., torch.Tensor | None]:
        pos = self.position

        def hook(module: Any, inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
            if not (view._forward_hooks or view._forward_pre_hooks):
                return None  # nobody reads or edits this hook: no cost
            current = out[:, :, pos, :].reshape(out.shape[0], -1) if pattern else out[:, pos]
            new = view(current)
            if new is current:
                return None
            out = out.clone()
            if pattern:
                out[:, :, pos, :] = new.reshape(out.shape[0], out.shape[1], out.shape[3])
            else:
                out[:, pos] = new
            return out

        return hook

    def _keep_final(self, module: Any, inputs: Any, out: torch.Tensor) -> None:
        self._final = out

    def _forward(self, features: torch.Tensor) -> torch.Tensor:
        states, actions, timesteps, mask = split_history(features, self.cfg.obs_dim, self.cfg.context)
        tokens, token_mask = self.model.embed(states, actions, None, timesteps, mask)  # [B, n_ctx, d]
        self.model.transformer(tokens, start_at_layer=0, attention_mask=token_mask.long())
        final, self._final = self._final, None
        assert final is not None
        return final[:, self.position]  # [B, d_model]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self._forward(features)
        return latent, latent

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self._forward(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self._forward(features)


class SeparateTrunks(nn.Module):
    """SB3's ``mlp_extractor`` slot with two trunks of one shape: the actor's and the critic's."""

    def __init__(self, cfg: DTModelConfig) -> None:
        super().__init__()
        self.actor = TransformerTrunk(cfg)
        self.critic = TransformerTrunk(dataclasses.replace(cfg, seed=cfg.seed + 1))
        self.latent_dim_pi = self.latent_dim_vf = cfg.d_model

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor._forward(features), self.critic._forward(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor._forward(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic._forward(features)


class MlpCriticTrunks(nn.Module):
    """SB3's ``mlp_extractor`` slot: the BC transformer for the actor, and for the critic SB3's MLP
    critic (Linear/Tanh layers of ``net_arch``) over the current step's observation only."""

    def __init__(self, cfg: DTModelConfig, net_arch: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.actor = TransformerTrunk(cfg)
        layers: list[nn.Module] = []
        width = cfg.obs_dim
        for out in net_arch:
            linear = nn.Linear(width, out)
            nn.init.orthogonal_(linear.weight, gain=float(np.sqrt(2)))  # SB3's MLP extractor initialisation
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.Tanh()]
            width = out
        self.value_net = nn.Sequential(*layers)
        self.latent_dim_pi, self.latent_dim_vf = cfg.d_model, width

    def _current(self, features: torch.Tensor) -> torch.Tensor:
        """The current step's observation [B, obs_dim] out of history vectors [B, size] (slot K - 1)."""
        return split_history(features, self.cfg.obs_dim, self.cfg.context)[0][:, -1]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor._forward(features), self.value_net(self._current(features))

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor._forward(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(self._current(features))


class TransformerActorCriticPolicy(ActorCriticPolicy):
    """An SB3 actor-critic policy on the BC transformer (see the module docstring).

    Parameters
    ----------
    observation_space:
        The history vector's space (``HistoryObservation``).
    action_space:
        A ``Discrete`` space (the transformer embeds actions as tokens).
    lr_schedule:
        SB3's learning-rate schedule.
    context, d_model, n_layers, n_heads:
        K and the transformer's shape, as for BC (``d_mlp = 4 * d_model``).
    separate_critic:
        Give the critic its own trunk of the same shape instead of sharing the actor's.
    mlp_critic, critic_arch:
        Give the critic SB3's MLP (``critic_arch`` Tanh layers) over the current observation instead.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Any,
                 context: int = 10, d_model: int = 64, n_layers: int = 2, n_heads: int = 2,
                 separate_critic: bool = False, mlp_critic: bool = False,
                 critic_arch: list[int] | None = None, **kwargs: Any) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"the transformer policy needs a Discrete action space, not {type(action_space).__name__}")
        size = int(np.prod(observation_space.shape))
        if size % context or size // context <= 3:
            raise ValueError(f"observation of length {size} is not a history vector of {context} steps")
        self.context = context
        self.separate_critic = bool(separate_critic)
        if mlp_critic and separate_critic:
            raise ValueError("mlp_critic and separate_critic are two different critics: choose one")
        self.mlp_critic = bool(mlp_critic)
        self.critic_arch = list(critic_arch or [64, 64])
        self.model_config = DTModelConfig(
            obs_dim=size // context - 3, n_actions=int(action_space.n), context=context, use_rtg=False,
            d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_mlp=4 * d_model,
            seed=int(torch.randint(0, 2**31 - 1, ()).item()),  # drawn from the seeded global generator
        )
        kwargs["ortho_init"] = False  # keep the transformer's own initialisation (as BC's)
        kwargs.pop("net_arch", None)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        # SB3's usual head initialisation: a near-uniform initial policy, unit-gain critic.
        nn.init.orthogonal_(self.action_net.weight, gain=0.01)
        nn.init.zeros_(self.action_net.bias)
        nn.init.orthogonal_(self.value_net.weight, gain=1.0)
        nn.init.zeros_(self.value_net.bias)

    def _build_mlp_extractor(self) -> None:
        if self.mlp_critic:
            self.mlp_extractor = MlpCriticTrunks(self.model_config, self.critic_arch)
        elif self.separate_critic:
            self.mlp_extractor = SeparateTrunks(self.model_config)
        else:
            self.mlp_extractor = TransformerTrunk(self.model_config)

    @property
    def actor_trunk(self) -> TransformerTrunk:
        """The trunk the actor reads: the network BC's recordings compare with."""
        extractor = self.mlp_extractor
        return extractor.actor if isinstance(extractor, (SeparateTrunks, MlpCriticTrunks)) \
            else extractor  # type: ignore[return-value]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(context=self.context, d_model=self.model_config.d_model,
                    n_layers=self.model_config.n_layers, n_heads=self.model_config.n_heads,
                    separate_critic=self.separate_critic, mlp_critic=self.mlp_critic,
                    critic_arch=self.critic_arch)
        return data

    # ------------------------------------------------------------------ what the recorder uses
    def hook_modules(self) -> dict[str, nn.Module]:
        """Hook name -> module: the actor trunk's step views, a separate critic's (``critic.``-prefixed),
        then the actor and critic heads."""
        views: dict[str, nn.Module] = dict(self.actor_trunk.views)
        if isinstance(self.mlp_extractor, SeparateTrunks):
            views.update({f"critic.{name}": view for name, view in self.mlp_extractor.critic.views.items()})
        if isinstance(self.mlp_extractor, MlpCriticTrunks):
            views.update({f"critic.value_net.{i}": m for i, m in enumerate(self.mlp_extractor.value_net)})
        return {**views, "action_net": self.action_net, "value_net": self.value_net}

    def linear_in(self) -> dict[str, list[str]]:
        """Labels linear by construction in a hook: the value in the critic head's output (and, with
        an MLP critic, in its last layer, which the head reads linearly)."""
        if self.mlp_critic:
            return {"value": [f"critic.value_net.{len(self.mlp_extractor.value_net) - 1}", "value_net"]}
        return {"value": ["value_net"]}

    def new_history(self) -> HistoryStack:
        """An empty history for acting on (or replaying) raw observations."""
        return HistoryStack(self.model_config.obs_dim, self.context)


def wrap_for_policy(env: gymnasium.Env, policy: str, context: int) -> gymnasium.Env:
    """The environment as the policy type sees it: the history vector for ``transformer``."""
    return HistoryObservation(env, context) if policy == "transformer" else env


class GridCNN(BaseFeaturesExtractor):
    """A small CNN features extractor for grid-sized images (``rl-lab train --policy cnn``).

    SB3's ``NatureCNN`` needs at least 36x36 pixels; a MiniGrid view is 7x7 cells. Images with a
    side of 14 or more are first brought down to about grid resolution by 2x2, stride-2
    convolutions (16 channels; a 56x56 picture with 8-pixel tiles becomes 7x7, one position per
    cell), then ``channels`` 2x2 convolutions without padding (each ReLU), flattened, and one
    linear layer to ``features_dim`` (ReLU). The modules are named for the hooks:
    ``features_extractor.cnn.<i>`` (convolutions and their ReLUs) and ``features_extractor.linear.<i>``.
    For a 7x7 one-hot view (24 channels) the ReLUs are ``cnn.1`` (16 x 6 x 6) and ``cnn.3``
    (32 x 5 x 5), then ``linear.0``/``linear.1`` (``features_dim``).

    Parameters
    ----------
    observation_space:
        A ``Box`` of shape [C, H, W] (channels first; uint8 images are scaled to [0, 1] by SB3).
    features_dim:
        Width of the output features.
    channels:
        Output channels of the 2x2 convolutions after the downsampling.
    """

    def __init__(self, observation_space: spaces.Space, features_dim: int = 64,
                 channels: tuple[int, ...] = (16, 32)) -> None:
        shape = getattr(observation_space, "shape", None)
        if not isinstance(observation_space, spaces.Box) or shape is None or len(shape) != 3:
            raise ValueError(f"the CNN policy needs image observations [C, H, W], got {observation_space}")
        c, h, w = (int(x) for x in shape)
        if min(h, w) < len(channels) + 1:
            raise ValueError(f"images of {h}x{w} are too small for {len(channels)} 2x2 convolutions")
        super().__init__(observation_space, features_dim)
        layers: list[nn.Module] = []
        while min(h, w) >= 14:
            layers += [nn.Conv2d(c, 16, kernel_size=2, stride=2), nn.ReLU()]
            c, h, w = 16, h // 2, w // 2
        for out in channels:
            layers += [nn.Conv2d(c, int(out), kernel_size=2), nn.ReLU()]
            c, h, w = int(out), h - 1, w - 1
        layers.append(nn.Flatten())
        self.cnn = nn.Sequential(*layers)
        self.linear = nn.Sequential(nn.Linear(c * h * w, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))

