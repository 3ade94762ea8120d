"""Training configuration: one dataclass, every field documented, stored verbatim in ``run.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rl_lab.errors import LabError

SB3_ALGOS = ("ppo", "a2c", "dqn", "recurrent-ppo")
"""Algorithms trained by stable-baselines3 (``rl_lab.train``); ``recurrent-ppo`` is sb3-contrib's
``RecurrentPPO`` with an LSTM policy (``MlpLstmPolicy``)."""
POLICIES = ("mlp", "transformer", "cnn")
"""Policy networks for ``ppo``/``a2c``: SB3's MLP, the BC transformer trunk, or a small CNN on image
observations (``rl_lab.policies.GridCNN``) under SB3's MLP heads."""
TRANSFORMER_ALGOS = ("ppo", "a2c")
"""Algorithms that accept a policy other than ``mlp`` (``transformer`` or ``cnn``)."""
DT_ALGOS = ("dt", "bc")
"""Sequence models trained offline from an RL run's trajectories (``rl_lab.dt``)."""


def agent_name(algo: str, policy: str | None) -> str:
    """The algorithm and its network in one name: ``ppo`` (the MLP), ``ppo-transformer``, ``ppo-cnn``,
    ``recurrent-ppo``, ``dt``. Runs of one algorithm with different networks never share a name."""
    return algo + (f"-{policy}" if policy in ("transformer", "cnn") else "")


DEFAULT_TEACHER = "ppo"
"""The agent whose trajectories a dt/bc run learns from by default: PPO-MLP."""


def imitator_name(algo: str, teacher: str) -> str:
    """A dt/bc run's agent: ``dt`` / ``bc`` when it learns from PPO-MLP's trajectories (the lab's
    default teacher), ``bc-of-ppo-transformer``, ``dt-of-recurrent-ppo``, ... from any other agent's,
    so imitators of different teachers are never pooled."""
    return algo if teacher == DEFAULT_TEACHER else f"{algo}-of-{teacher}"


def run_agent(info: dict[str, Any]) -> str:
    """The agent of a run from its ``run.json``: its ``agent``, or for a run written before
    ``run.json`` had one, the name ``agent_name`` gives its ``algo`` and ``config.policy``."""
    agent = info.get("agent")
    if isinstance(agent, str):
        return agent
    config = info.get("config")
    return agent_name(str(info.get("algo")), config.get("policy") if isinstance(config, dict) else None)


@dataclass
class TrainConfig:
    """Everything that determines a stable-baselines3 training run."""

    env_id: str = "lab/Forage-v0"
    """Gymnasium id (``lab/...`` ids come from the ``envs`` package)."""
    algo: str = "ppo"
    """``ppo``, ``a2c``, ``dqn`` or ``recurrent-ppo``."""
    policy: str = "mlp"
    """``mlp`` (SB3's MLP), ``transformer`` (ppo/a2c only): the same TransformerLens model as
    BC over the last ``context`` observations and actions, linear actor and critic heads, or ``cnn``
    (ppo/a2c only, image observations [C, H, W]): ``rl_lab.policies.GridCNN`` features, then the MLP."""
    total_timesteps: int = 50_000
    """Environment steps to train for (summed over parallel environments)."""
    seed: int = 0
    """Seeds the environments, the network initialisation and the algorithm."""
    n_envs: int = 4
    """Parallel environments (ignored for DQN, which uses one)."""
    learning_rate: float | None = None
    """Optimiser step size; ``None`` keeps the algorithm's default."""
    gamma: float = 0.99
    """Discount factor; also used by the recorder for TD errors."""
    n_steps: int | None = None
    """Rollout length per environment (PPO/A2C); ``None`` picks one that fits the budget."""
    batch_size: int | None = None
    """Minibatch size (PPO/DQN); ``None`` keeps a budget-aware default."""
    ent_coef: float = 0.0
    """Entropy bonus (PPO/A2C)."""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer sizes of the policy and value networks (separate networks, Tanh)."""
    context: int = 10
    """Transformer policy: K, timesteps of history it sees (left-padded at an episode's start)."""
    d_model: int = 64
    """Transformer policy: residual stream width."""
    n_layers: int = 2
    """Transformer policy: blocks."""
    n_heads: int = 2
    """Transformer policy: attention heads per block."""
    separate_critic: bool = False
    """Transformer policy: the critic reads its own trunk of the same shape (the actor's trunk is
    then trained by the policy gradient alone) instead of sharing the actor's."""
    mlp_critic: bool = False
    """Transformer policy: the critic is SB3's MLP (``net_arch``, Tanh) over the current step's
    observation, PPO-MLP's critic, instead of a transformer trunk."""
    n_epochs: int | None = None
    """PPO: passes over each rollout; ``None`` keeps SB3's 10."""
    target_kl: float | None = None
    """PPO: stop a rollout's passes early once the approximate KL between the old and the updated
    policy passes 1.5 × this (SB3's ``target_kl``); ``None``: no limit."""
    lstm_hidden: int = 64
    """Recurrent PPO: LSTM hidden size (one layer; separate actor and critic LSTMs)."""
    checkpoint_every: int = 10_000
    """Save a checkpoint every this many steps (and always at the end)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment constructor."""
    torch_threads: int = 1
    """Intra-op threads for torch. Networks this small gain nothing from more, and a second
    thread on a busy 2-core machine was measured to slow training down many times over."""
    device: str = "cpu"
    """Torch device of the networks: ``cpu`` or ``cuda:N`` (``--device auto`` is resolved before it is
    stored, by ``rl_lab.devices.resolve_device``)."""
    save_replay_buffer: bool = False
    """DQN: save the replay buffer beside every checkpoint (``checkpoints/step_<N>.replay.pkl``, up to
    the buffer's size in observations) so that ``--resume`` continues with it instead of an empty one."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def agent(self) -> str:
        """The algorithm and network in one name (``run.json`` ``agent``, by which ``rl-lab compare``
        and ``rl-lab curves`` group): ``ppo``, ``ppo-transformer``, ``recurrent-ppo``."""
        return agent_name(self.algo, self.policy)

    def check_policy(self) -> None:
        """Raise LabError unless the policy type, the algorithm and the transformer's shape fit."""
        if self.policy not in POLICIES:
            raise LabError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.policy == "transformer":
            if self.algo not in TRANSFORMER_ALGOS:
                raise LabError(f"--policy transformer is for --algo {' or '.join(TRANSFORMER_ALGOS)}, "
                               f"not {self.algo}")
            for name in ("context", "d_model", "n_layers", "n_heads"):
                if getattr(self, name) < 1:
                    raise LabError(f"the transformer's {name} must be positive, got {getattr(self, name)}")
            if self.d_model % self.n_heads:
                raise LabError(f"--d-model ({self.d_model}) must be divisible by --heads ({self.n_heads})")
        if self.policy == "cnn" and self.algo not in TRANSFORMER_ALGOS:
            raise LabError(f"--policy cnn is for --algo {' or '.join(TRANSFORMER_ALGOS)}, not {self.algo}")
        if self.separate_critic and self.policy != "transformer":
            raise LabError("--separate-critic is for --policy transformer (the MLP policy's critic is separate already)")
        if self.mlp_critic and self.policy != "transformer":
            raise LabError("--mlp-critic is for --policy transformer (the MLP policy's critic is an MLP already)")
        if self.mlp_critic and self.separate_critic:
            raise LabError("--mlp-critic and --separate-critic are two different critics: choose one")
        if self.n_epochs is not None and self.algo not in ("ppo", "recurrent-ppo"):
            raise LabError(f"--epochs is for --algo ppo or recurrent-ppo, not {self.algo}")
        if self.batch_size is not None and self.algo == "a2c":
            raise LabError("--batch-size is for --algo ppo, recurrent-ppo or dqn (A2C updates on the whole rollout)")
        if self.target_kl is not None and self.algo not in ("ppo", "recurrent-ppo"):
            raise LabError(f"--target-kl is for --algo ppo or recurrent-ppo, not {self.algo}")
        if self.algo == "recurrent-ppo" and self.lstm_hidden < 1:
            raise LabError(f"the LSTM's hidden size must be positive, got {self.lstm_hidden}")

    def check_observations(self, observation_space: Any) -> None:
        """Raise LabError unless the policy type can read ``observation_space`` (the env's, before
        any policy wrapper): ``cnn`` needs images [C, H, W]."""
        shape = tuple(getattr(observation_space, "shape", None) or ())
        if self.policy == "cnn" and len(shape) != 3:
            hint = (" (MiniGrid: --env-kwargs '{\"obs\": \"image\"}' or '{\"obs\": \"pixels\"}')"
                    if self.env_id.split("/")[-1].startswith(("MiniGrid-", "BabyAI-")) else "")
            raise LabError(f"--policy cnn needs image observations [C, H, W]; {self.env_id} gives "
                           f"{type(observation_space).__name__} of shape {shape}{hint}")
        if self.policy == "cnn" and min(shape[1:]) < 3:
            raise LabError(f"--policy cnn needs images of at least 3x3, {self.env_id} gives {shape[1]}x{shape[2]}")

    def algo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the SB3 algorithm constructor, filled in for the budget."""
        kwargs: dict[str, Any] = {"gamma": self.gamma, "seed": self.seed, "device": self.device, "verbose": 0}
        if self.learning_rate is not None:
            kwargs["learning_rate"] = self.learning_rate
        if self.algo == "dqn":
            kwargs["policy_kwargs"] = {"net_arch": list(self.net_arch)}
            kwargs["learning_starts"] = min(1000, max(0, self.total_timesteps // 10))
            kwargs["buffer_size"] = min(100_000, max(1000, self.total_timesteps))
            kwargs["batch_size"] = self.batch_size or 64
            kwargs["exploration_fraction"] = 0.3
            kwargs["target_update_interval"] = 500
            kwargs["train_freq"] = 4
            return kwargs
        per_env = max(1, self.total_timesteps // max(1, self.n_envs))
        n_steps = self.n_steps or (8 if self.algo == "a2c" else 512)
        n_steps = max(8, min(n_steps, per_env))
        kwargs["n_steps"] = n_steps
        kwargs["ent_coef"] = self.ent_coef
        kwargs["policy_kwargs"] = {"net_arch": {"pi": list(self.net_arch), "vf": list(self.net_arch)}}
        if self.policy == "transformer":
            kwargs["policy_kwargs"] = {"context": self.context, "d_model": self.d_model,
                                       "n_layers": self.n_layers, "n_heads": self.n_heads,
                                       "separate_critic": self.separate_critic}
            if self.mlp_critic:
                kwargs["policy_kwargs"].update(mlp_critic=True, critic_arch=list(self.net_arch))
        if self.policy == "cnn":
            from rl_lab.policies import GridCNN  # torch: imported only when a CNN is built

            kwargs["policy_kwargs"].update(features_extractor_class=GridCNN,
                                           features_extractor_kwargs={"features_dim": 64})
        if self.algo == "recurrent-ppo":
            kwargs["policy_kwargs"].update(lstm_hidden_size=self.lstm_hidden, n_lstm_layers=1)
        if self.algo in ("ppo", "recurrent-ppo"):
            rollout = n_steps * self.n_envs
            batch = self.batch_size or min(64, rollout)
            while rollout % batch and batch > 1:
                batch -= 1
            kwargs["batch_size"] = batch
            if self.n_epochs is not None:
                kwargs["n_epochs"] = self.n_epochs
            if self.target_kl is not None:
                kwargs["target_kl"] = self.target_kl
        return kwargs
