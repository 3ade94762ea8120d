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


def _oracle_recording(tmp_path: Path, episodes: int = 30) -> Path:
    env_kwargs = {"n": N, "gamma": GAMMA, "slip": SLIP, "max_steps": 12}
    run = RunStore(tmp_path).create("oracle", {"env_id": "lab/Chain-v0", "algo": "oracle", "status": "done",
                                               "config": {"gamma": GAMMA, "env_kwargs": env_kwargs}})
    return record(run, Path("oracle.zip"), episodes=episodes, seed=1, adapter=OracleAdapter(0),
                  random_baseline=False, out=tmp_path / "felt.h5")


def test_felt_labels_match_closed_form(tmp_path: Path) -> None:
    """prev_* at row t is the env's exact TD error / reward of the transition s_{t-1} -> s_t;
    mood is the moving average of those, and every felt label is NaN at an episode's first step."""
    path = _oracle_recording(tmp_path)
    with ActivationFile(path) as f:
        ep, t = f.episodes(), f.steps("t")
        env_td = f.label("td_error_uniform")  # exact δ of the transition into this row (0 at reset)
        reward = f.label("reward")
        felt = {name: f.label(name) for name in ("prev_td_error", "prev_joy", "prev_distress", "prev_surprise",
                                                 "prev_reward", "mood")}
        first = t == 0
        for name, values in felt.items():
            assert np.isnan(values[first]).all(), f"{name} must be NaN at an episode's first step"
            assert np.isfinite(values[~first]).all(), name
            assert f.label_info(name)["kind"] == "continuous"
        rest = ~first
        np.testing.assert_allclose(felt["prev_td_error"][rest], env_td[rest], atol=1e-6)
        np.testing.assert_allclose(felt["prev_joy"][rest], np.maximum(env_td[rest], 0), atol=1e-6)
        np.testing.assert_allclose(felt["prev_distress"][rest], np.maximum(-env_td[rest], 0), atol=1e-6)
        np.testing.assert_allclose(felt["prev_surprise"][rest], np.abs(env_td[rest]), atol=1e-6)
        assert (env_td[rest] != 0).any() and (env_td[rest] < 0).any()  # the check is not vacuous
        for e in np.unique(ep):
            idx = np.flatnonzero(ep == e)
            np.testing.assert_allclose(felt["prev_reward"][idx[1:]], reward[idx[:-1]])
            # mood_t = 0.9 mood_{t-1} + 0.1 δ_{t-1}, from 0: it never includes this step's own δ_t
            m, expected = 0.0, []
            for k in idx[1:]:
                m = 0.9 * m + 0.1 * env_td[k]
                expected.append(m)
            np.testing.assert_allclose(felt["mood"][idx[1:]], expected, atol=1e-6)


def test_first_step_is_left_out_of_probe_fits(tmp_path: Path) -> None:
    """A felt label's probe is fitted and scored on the rows that have a previous transition only."""
    from probes.linear import probe_file
    from probes.results import ProbeResults

    path = _oracle_recording(tmp_path, episodes=20)
    with ActivationFile(path) as f:
        n_rows, n_first = f.n, int((f.steps("t") == 0).sum())
    doc = ProbeResults.from_dict(probe_file(path, hooks=["state"], labels=["prev_td_error", "value"], seed=0,
                                            n_bootstrap=0))
    by_label = {rec.label: rec for rec in doc.records if rec.hook == "state"}
    felt, value = by_label["prev_td_error"], by_label["value"]
    # the felt label is tested on every row except the episodes' first steps; value on every row
    assert felt.n_test is not None and value.n_test is not None and n_first > 0
    assert felt.n_test * n_rows == value.n_test * (n_rows - n_first)
    assert any("prev_td_error" in note and "NaN" in note for note in doc.notes)
