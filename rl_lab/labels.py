"""Emotion-like labels computed from one recorded episode, and where each one comes from.

Every formula here is documented in ``docs/labels.md``. With V the value estimate of the
recording's reference critic, r the reward, γ the discount and ``terminated`` the true end of
the episode:

- ``td_error`` (valence)  δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t); at the last step of a
  truncated episode V(s_{T+1}) is the value of the final observation (bootstrapped).
- ``joy`` = max(δ, 0), ``distress`` = max(−δ, 0), ``surprise`` = |δ|.
- ``prev_td_error``, ``prev_joy``, ``prev_distress``, ``prev_surprise``, ``prev_reward``: the same
  quantities of the transition just experienced (s_{t−1} → s_t), NaN at the first step of an episode.
- ``mood`` = exponential moving average of the TD errors experienced before s_t:
  m_t = (1 − α) m_{t−1} + α δ_{t−1} for t ≥ 1, starting from 0 (m_1 = α δ_0); NaN at t = 0.
- ``return_to_go`` = Σ_{k≥t} r_k (undiscounted, as a decision transformer is conditioned);
  ``discounted_return`` = Σ_{k≥t} γ^{k−t} r_k.
- ``hope`` / ``fear`` = positive / negative part of Ṽ = (V − μ) / σ, with μ and σ measured on
  calibration episodes that are not in the file (``ValueScale``), so no statistic of a test
  episode enters a label.

Each label also says what it is computed from (``derived_from``, see :data:`DERIVED_FROM`) and
when it happens relative to the network's input s_t (``timing``, see :data:`TIMINGS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

# ------------------------------------------------------------------ where a label comes from
VALUE_OUTPUT = "value_output"
"""Computed from the recorded network's own value head (its critic, max Q for DQN)."""
POLICY_OUTPUT = "policy_output"
"""Computed from the recorded network's own policy output (its logits, or the action it sampled)."""
ENVIRONMENT = "environment"
"""Ground truth: rewards, returns, the env's latents."""
REFERENCE_CRITIC = "reference_critic"
"""Computed from another network's critic (the file's ``reference_critic``), the same for every
network recorded against it."""
DERIVED_FROM = (VALUE_OUTPUT, POLICY_OUTPUT, ENVIRONMENT, REFERENCE_CRITIC)
READOUTS = (VALUE_OUTPUT, POLICY_OUTPUT)
"""A label derived from these is a readout of the network's own outputs: decoding it from the
network shows what the network was built to output, never a variable that training made emerge."""

# ------------------------------------------------------------------ when it happens
CURRENT = "current"
"""A function of s_t (and of the network's outputs at s_t): known when the network acts."""
ANTICIPATORY = "anticipatory"
"""Depends on the step's outcome (r_t, s_{t+1}), which comes after the action: a network that
sees s_t can at best anticipate it."""
FELT = "felt"
"""Of the transition already experienced (s_{t−1} → s_t): available to a network with memory."""
TIMINGS = (CURRENT, ANTICIPATORY, FELT)

# What a lab label is computed from, before the recording decides whose critic gives V.
_VALUE, _POLICY = "value", "policy"


class LabelDef(NamedTuple):
    """A lab label: its kind, description, source (``value``/``policy``/``environment``) and timing."""

    kind: str
    description: str
    source: str
    timing: str


LABELS: dict[str, LabelDef] = {
    "value": LabelDef("continuous", "V(s_t): the critic's value estimate (max Q for DQN)", _VALUE, CURRENT),
    "td_error": LabelDef("continuous",
                         "valence of this step's outcome: TD error r_t + γ(1−terminated)V(s_t+1) − V(s_t)",
                         _VALUE, ANTICIPATORY),
    "joy": LabelDef("continuous", "positive part of this step's TD error", _VALUE, ANTICIPATORY),
    "distress": LabelDef("continuous", "negative part of this step's TD error (as a positive number)",
                         _VALUE, ANTICIPATORY),
    "surprise": LabelDef("continuous", "|TD error| of this step", _VALUE, ANTICIPATORY),
    "prev_td_error": LabelDef("continuous", "felt valence: the TD error δ_t−1 of the transition into s_t "
                                            "(NaN at an episode's first step)", _VALUE, FELT),
    "prev_joy": LabelDef("continuous", "positive part of δ_t−1 (NaN at an episode's first step)", _VALUE, FELT),
    "prev_distress": LabelDef("continuous", "negative part of δ_t−1, as a positive number (NaN at an episode's "
                                            "first step)", _VALUE, FELT),
    "prev_surprise": LabelDef("continuous", "|δ_t−1| (NaN at an episode's first step)", _VALUE, FELT),
    "mood": LabelDef("continuous", "exponential moving average of the TD errors up to δ_t−1 within the episode "
                                   "(NaN at its first step)", _VALUE, FELT),
    "hope": LabelDef("continuous", "positive part of the standardised value (calibration episodes' mean and std)",
                     _VALUE, CURRENT),
    "fear": LabelDef("continuous", "negative part of the standardised value, as a positive number "
                                   "(calibration episodes' mean and std)", _VALUE, CURRENT),
    "arousal": LabelDef("continuous", "stakes: 1 − H(π)/log|A| for a stochastic policy, max Q − min Q for DQN",
                        _POLICY, CURRENT),
    "entropy": LabelDef("continuous", "entropy of the policy's action distribution (nats)", _POLICY, CURRENT),
    "reward": LabelDef("continuous", "reward r_t received after the action", ENVIRONMENT, ANTICIPATORY),
    "prev_reward": LabelDef("continuous", "reward r_t−1 of the transition into s_t (NaN at an episode's first step)",
                            ENVIRONMENT, FELT),
    "return_to_go": LabelDef("continuous", "undiscounted sum of rewards from this step to the episode's end",
                             ENVIRONMENT, ANTICIPATORY),
    "discounted_return": LabelDef("continuous", "discounted sum of rewards from this step (what V estimates)",
                                  ENVIRONMENT, ANTICIPATORY),
    "action": LabelDef("discrete", "the action taken (sampled from the policy)", _POLICY, CURRENT),
}
"""Every lab label. Env latents come from the env's ``latent_spec`` (source ``environment``)."""

FELT_OF: dict[str, str] = {
    "td_error": "prev_td_error", "joy": "prev_joy", "distress": "prev_distress", "surprise": "prev_surprise",
    "reward": "prev_reward",
}
"""Each anticipatory label and its felt version (``mood`` is felt by definition)."""


def previous(x: np.ndarray) -> np.ndarray:
    """``out[t] = x[t-1]`` within one episode; ``out[0]`` is NaN (no previous transition)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(len(x), np.nan)
    out[1:] = x[:-1]
    return out


def episode_labels(
    values: np.ndarray,
    rewards: np.ndarray,
    terminated: bool,
    final_value: float,
    gamma: float,
    mood_alpha: float = 0.1,
) -> dict[str, np.ndarray]:
    """TD error, joy/distress, surprise, their felt versions, mood and returns for one episode.

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

    The felt labels (``prev_*``, ``mood``) are NaN at t = 0: the first step of an episode has
    no previous transition, and a 0 there would be a made-up value that probes would fit.
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

    mood = np.full(T, np.nan)
    m = 0.0
    for t in range(1, T):
        m = (1.0 - mood_alpha) * m + mood_alpha * td[t - 1]
        mood[t] = m

    out = {
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
    for name, felt in FELT_OF.items():
        out[felt] = previous(out[name])
    return out


CALIBRATION_EPISODES = 5
"""Episodes rolled out (not stored) before a recording to measure the mean and std of V for hope/fear."""


@dataclass(frozen=True)
class ValueScale:
    """Mean and std of V that standardise hope and fear, measured on calibration episodes.

    The calibration episodes are rolled out before the recording with env seeds disjoint from
    the recorded ones and are not stored, so the scale holds no statistic of any episode a probe
    is later tested on.
    """

    mean: float
    std: float
    n_steps: int
    seeds: tuple[int, ...]

    @classmethod
    def fit(cls, values: Sequence[np.ndarray], seeds: Sequence[int]) -> "ValueScale":
        """The scale of the values of the calibration episodes (one array per episode)."""
        v = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in values]) if values else np.zeros(0)
        if len(v) == 0:
            raise ValueError("the calibration episodes have no step")
        return cls(float(v.mean()), float(v.std()), int(len(v)), tuple(int(s) for s in seeds))

    def attrs(self) -> dict[str, Any]:
        """The root attributes of the activation file that record the calibration."""
        return {"value_calibration_episodes": len(self.seeds), "value_calibration_seeds": list(self.seeds),
                "value_calibration_steps": self.n_steps, "value_calibration_mean": self.mean,
                "value_calibration_std": self.std}


def hope_fear(values: np.ndarray, scale: ValueScale) -> dict[str, np.ndarray]:
    """Hope and fear: positive and negative parts of (V − mean) / std, with ``scale``'s mean and std."""
    values = np.asarray(values, dtype=np.float64)
    z = (values - scale.mean) / (scale.std if scale.std > 0 else 1.0)
    return {"hope": np.maximum(z, 0.0), "fear": np.maximum(-z, 0.0)}


def label_meta(
    latent_spec: Mapping[str, Mapping[str, Any]],
    linear_in: Mapping[str, list[str]],
    value_from: str = VALUE_OUTPUT,
    derived_from: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """HDF5 attributes for every label: the lab's own and the env's latents.

    Latents keep their names unless they clash with a lab label (then ``latent_`` is prefixed).

    Parameters
    ----------
    latent_spec:
        The env's ``latent_spec``.
    linear_in:
        Label -> hooks of the recorded network in which it is linear by construction.
    value_from:
        ``value_output`` when V is the recorded network's own critic, ``reference_critic`` when it
        is another network's (then no value-derived label is linear by construction in this one).
    derived_from:
        Overrides per label (e.g. ``arousal`` of a DQN is computed from its Q-values).
    """
    if value_from not in (VALUE_OUTPUT, REFERENCE_CRITIC):
        raise ValueError(f"value_from must be {VALUE_OUTPUT!r} or {REFERENCE_CRITIC!r}, got {value_from!r}")
    sources = {_VALUE: value_from, _POLICY: POLICY_OUTPUT, ENVIRONMENT: ENVIRONMENT}
    overrides = dict(derived_from or {})
    meta: dict[str, dict[str, Any]] = {}
    for name, d in LABELS.items():
        source = overrides.get(name, sources[d.source])
        own = d.source != _VALUE or value_from == VALUE_OUTPUT
        meta[name] = {"kind": d.kind, "description": d.description,
                      "linear_in": list(linear_in.get(name, [])) if own else [],
                      "derived_from": source, "timing": d.timing}
    for name, spec in latent_spec.items():
        meta[latent_label_name(name)] = {
            "kind": spec.get("kind", "continuous"),
            "description": f"env latent: {spec.get('description', '')}",
            "linear_in": [],
            "derived_from": ENVIRONMENT,
            "timing": CURRENT,
        }
    for name, source in overrides.items():
        if source not in DERIVED_FROM:
            raise ValueError(f"derived_from of {name!r} must be one of {', '.join(DERIVED_FROM)}, got {source!r}")
        meta.setdefault(name, {"kind": "continuous", "description": "", "linear_in": [], "timing": CURRENT})
        meta[name]["derived_from"] = source
    return meta


def default_derived_from(label: str) -> str:
    """Where ``label`` comes from when a file or probe record does not say (recorded before
    ``derived_from`` existed): a lab label as if V were the network's own critic, else an env latent."""
    d = LABELS.get(label)
    if d is None:
        return ENVIRONMENT
    return {_VALUE: VALUE_OUTPUT, _POLICY: POLICY_OUTPUT}.get(d.source, ENVIRONMENT)


def is_readout(derived_from: str) -> bool:
    """Whether a label derived from ``derived_from`` reads out the network's own outputs."""
    return derived_from in READOUTS


def latent_label_name(name: str) -> str:
    """The label name under which an env latent is stored (``latent_<name>`` on a clash)."""
    return f"latent_{name}" if name in LABELS else name
