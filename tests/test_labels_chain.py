"""On lab/Chain-v0 the recorder's labels match the closed form (docs/labels.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.chain import true_values
from probes.activations import ActivationFile
from rl_lab.adapters import EpisodeForward
from rl_lab.record import record
from rl_lab.runs import RunStore

N, GAMMA, SLIP = 8, 0.9, 0.2


class OracleAdapter:
    """Acts uniformly at random and reports the exact value of the uniform policy as V."""

    kind = "oracle"
    hooks = ["state"]
    linear_in: dict[str, list[str]] = {}

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.v = true_values(N, GAMMA, 0.5, slip=SLIP)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return int(self.rng.integers(2))

    def episode_forward(self, obs, actions, rewards, final_obs) -> EpisodeForward:
        states = obs.argmax(axis=1)
        return EpisodeForward(acts={"state": obs}, values=self.v[states],
                              final_value=float(self.v[int(final_obs.argmax())]))

    def random_twin(self, seed: int) -> None:
        return None


def test_td_error_matches_closed_form(tmp_path: Path) -> None:
    env_kwargs = {"n": N, "gamma": GAMMA, "slip": SLIP, "max_steps": 12}
    run = RunStore(tmp_path).create("oracle", {"env_id": "lab/Chain-v0", "algo": "oracle", "status": "done",
                                               "config": {"gamma": GAMMA, "env_kwargs": env_kwargs}})
    path = record(run, Path("oracle.zip"), episodes=30, seed=1, adapter=OracleAdapter(0),
                  random_baseline=False, out=tmp_path / "chain.h5")
    v = true_values(N, GAMMA, 0.5, slip=SLIP)
    with ActivationFile(path) as f:
        states = f.steps("obs").argmax(axis=1)
        td, value, ep = f.label("td_error"), f.label("value"), f.episodes()
        env_td = f.label("td_error_uniform")  # the env's exact TD error of the transition into this row
        reward = f.label("reward")
        np.testing.assert_allclose(value, v[states], atol=1e-6)
        truncated = 0
        for e in np.unique(ep):
            idx = np.flatnonzero(ep == e)
            np.testing.assert_allclose(td[idx[:-1]], env_td[idx[1:]], atol=1e-6)
            last = idx[-1]
            if reward[last] == 1.0:  # entered the goal: terminal, no bootstrap
                assert abs(td[last] - (1.0 - v[states[last]])) < 1e-6
            else:  # truncated: bootstrapped with V of the state after the last step
                truncated += 1
                candidates = [GAMMA * v[s2] - v[states[last]] for s2 in (states[last] - 1, states[last] + 1,
                                                                           max(states[last] - 1, 0))]
                assert min(abs(td[last] - c) for c in candidates) < 1e-6
        assert truncated > 0, "the test should exercise truncated episodes"
        # under the policy that defines V the TD error has mean zero
        assert abs(td.mean()) < 0.05
