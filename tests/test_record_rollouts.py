"""The vectorised recorder's bookkeeping: latent columns and the batched rollout's order, on the real env."""

from __future__ import annotations

import numpy as np

import envs
from rl_lab.record import Episode, _latent_columns, _make_recording_env, rollouts


def test_latent_columns_keep_each_latents_dtype_and_mark_missing_steps_nan() -> None:
    env = _make_recording_env("lab/Forage-v0", {})
    _, info = env.reset(seed=3)
    latents = [info["latents"]]
    for a in (0, 1, 2, 3):
        latents.append(env.step(a)[4]["latents"])
    keys = list(envs.latent_spec(env))
    cols = _latent_columns(latents, keys)
    for key in keys:
        expected = np.asarray([lat.get(key, np.nan) for lat in latents])
        assert cols[key].dtype == expected.dtype and np.array_equal(cols[key], expected), key
    assert cols["agent_row"].dtype.kind == "i" and cols["energy"].dtype.kind == "f"
    gappy = latents[:2] + [{}]  # a step whose info has no latents: NaN there, as before
    cols = _latent_columns(gappy, keys)
    assert np.isnan(cols["energy"][2]) and cols["energy"][0] == latents[0]["energy"]
    assert _latent_columns(latents, ["step"])["step"].tolist() == [0, 1, 2, 3, 4]
    assert _latent_columns(latents, []) == {}


class _FirstAction:
    """A deterministic batched policy (action 1 for every environment), enough to drive ``rollouts``."""

    kind = "fixed"

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        return 1

    def act_batch(self, obs: np.ndarray, slots: list[int], starts: list[bool]) -> np.ndarray:
        return np.ones(len(obs), dtype=np.int64)


def test_batched_rollouts_yield_the_sequential_episodes_step_for_step() -> None:
    seeds = [11, 12, 13, 14, 15]
    one = [_make_recording_env("lab/Forage-v0", {"max_steps": 40})]
    many = [_make_recording_env("lab/Forage-v0", {"max_steps": 40}) for _ in range(3)]
    seq = list(rollouts(one, _FirstAction(), seeds, renders=True))
    vec = list(rollouts(many, _FirstAction(), seeds, renders=True))
    assert [e.index for e in vec] == [0, 1, 2, 3, 4]
    for a, b in zip(seq, vec):
        assert isinstance(b, Episode)
        assert a.texts == b.texts and a.latents == b.latents and a.rewards == b.rewards
        assert len(b.latents) == len(b.obs) == len(b.actions) == len(b.texts)
        assert np.array_equal(np.asarray(a.obs), np.asarray(b.obs)) and np.array_equal(a.final_obs, b.final_obs)
        assert a.terminated == b.terminated
