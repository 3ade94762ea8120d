"""Emotion-like labels computed from one recorded episode.

Every formula here is documented in ``docs/labels.md``. With V the agent's value estimate,
r the reward, γ the discount and ``terminated`` the true end of the episode:

- ``td_error`` (valence)  δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t); at the last step of a
  truncated episode V(s_{T+1}) is the value of the final observation (bootstrapped).
- ``joy`` = max(δ, 0), ``distress`` = max(−δ, 0), ``surprise`` = |δ|.
- ``mood`` = exponential moving average of δ within the episode: m_t = (1 − α) m_{t−1} + α δ_t,
  m_{−1} = 0, α = ``mood_alpha``.
- ``return_to_go`` = Σ_{k≥t} r_k (undiscounted, as a decision transformer is conditioned);
  ``discounted_return`` = Σ_{k≥t} γ^{k−t} r_k.
- ``hope`` / ``fear`` = positive / negative part of the standardised value Ṽ = (V − mean V) / std V,
  with mean and std over the whole recording (computed by ``standardised_value``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# name -> (kind, description). Env latents come from the env's latent_spec.
LABELS: dict[str, tuple[str, str]] = {
    "value": ("continuous", "V(s_t): the critic's value estimate (max Q for DQN)"),
    "td_error": ("continuous", "valence: TD error r + γ(1−terminated)V(s') − V(s)"),
    "joy": ("continuous", "positive part of the TD error"),
    "distress": ("continuous", "negative part of the TD error (as a positive number)"),
    "surprise": ("continuous", "|TD error|"),
    "mood": ("continuous", "exponential moving average of the TD error within the episode"),
    "hope": ("continuous", "positive part of the standardised value"),
    "fear": ("continuous", "negative part of the standardised value (as a positive number)"),
    "arousal": ("continuous", "stakes: 1 − H(π)/log|A| for a stochastic policy, max Q − min Q for DQN"),
    "entropy": ("continuous", "entropy of the policy's action distribution (nats)"),
    "reward": ("continuous", "reward received after the action"),
    "return_to_go": ("continuous", "undiscounted sum of rewards from this step to the episode's end"),
    "discounted_return": ("continuous", "discounted sum of rewards from this step (what V estimates)"),
    "action": ("discrete", "the action taken"),
}


def episode_labels(
    values: np.ndarray,
    rewards: np.ndarray,
    terminated: bool,
    final_value: float,
    gamma: float,
    mood_alpha: float = 0.1,
) -> dict[str, np.ndarray]:
    """TD error, joy/distress, surprise, mood and returns for one episode.

    Parameters
    ----------
    values:
        V(s_t) for every step of the episode, shape (T,).
    rewards:
        r_t received after the action at step t, shape (T,).
    terminated:
        True if the episode ended in a terminal state (no bootstrap), False if it was truncated.
    final_value:
        V of the observation after the last step (used only when ``terminated`` is False).
    gamma:
        Discount factor.
    mood_alpha:
        Step size of the mood's moving average.
    """
    values = np.asarray(values, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    T = len(values)
    next_values = np.empty(T)
    next_values[:-1] = values[1:]
    next_values[-1] = 0.0 if terminated else float(final_value)
    td = rewards + gamma * next_values - values

    rtg = np.cumsum(rewards[::-1])[::-1]
    disc = np.empty(T)
    acc = 0.0
    for t in range(T - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        disc[t] = acc

    mood = np.empty(T)
    m = 0.0
    for t in range(T):
        m = (1.0 - mood_alpha) * m + mood_alpha * td[t]
        mood[t] = m

    return {
        "value": values,
        "td_error": td,
        "joy": np.maximum(td, 0.0),
        "distress": np.maximum(-td, 0.0),
        "surprise": np.abs(td),
        "mood": mood,
        "reward": rewards,
        "return_to_go": rtg,
        "discounted_return": disc,
    }


def standardised_value(values: np.ndarray) -> dict[str, np.ndarray]:
    """Hope and fear: positive and negative parts of (V − mean) / std over a recording."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    z = (values - values.mean()) / (std if std > 0 else 1.0)
    return {"hope": np.maximum(z, 0.0), "fear": np.maximum(-z, 0.0)}


def label_meta(latent_spec: dict[str, dict[str, Any]], linear_in: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """HDF5 attributes for every label: the lab's own and the env's latents (prefixed ``env/`` never:
    latents keep their names unless they clash with a lab label, in which case ``latent_`` is prefixed)."""
    meta = {
        name: {"kind": kind, "description": desc, "linear_in": linear_in.get(name, [])}
        for name, (kind, desc) in LABELS.items()
    }
    for name, spec in latent_spec.items():
        key = latent_label_name(name)
        meta[key] = {
            "kind": spec.get("kind", "continuous"),
            "description": f"env latent: {spec.get('description', '')}",
            "linear_in": [],
        }
    return meta


def latent_label_name(name: str) -> str:
    """The label name under which an env latent is stored (``latent_<name>`` on a clash)."""
    return f"latent_{name}" if name in LABELS else name
