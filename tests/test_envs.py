"""Tests for the ``envs`` package: registration, contracts, determinism, validation."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import envs


def _importable(env_id: str) -> bool:
    try:
        gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    except (ImportError, AttributeError):
        return False
    return True


READY_IDS = [i for i in envs.LAB_ENV_IDS if _importable(i)]
# Settings under which each env's dynamics depend on the seed (the default Chain is deterministic).
RANDOM_KWARGS = {"lab/Chain-v0": {"slip": 0.2, "start": None}}


def _rollout(env: gym.Env, seed: int, actions: list[int]) -> tuple[list[np.ndarray], list[dict], list[float]]:
    obs, info = env.reset(seed=seed)
    observations, latents, rewards = [obs], [info["latents"]], []
    for a in actions:
        obs, r, terminated, truncated, info = env.step(a)
        observations.append(obs)
        latents.append(info["latents"])
        rewards.append(r)
        if terminated or truncated:
            obs, info = env.reset()
            observations.append(obs)
            latents.append(info["latents"])
    return observations, latents, rewards


# ---------------------------------------------------------------------- the package
def test_import_is_cheap():
    code = "import sys, envs; bad = [m for m in ('torch', 'stable_baselines3', 'h5py') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lab_ids_registered():
    assert envs.LAB_ENV_IDS == ("lab/Forage-v0", "lab/Binding-v0", "lab/Chain-v0")
    for env_id in envs.LAB_ENV_IDS:
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", ["Nope-v0", "lab/Nope-v0", "not an id", ""])
def test_unknown_id_is_value_error_listing_lab_ids(env_id):
    with pytest.raises(ValueError) as err:
        envs.make(env_id)
    message = str(err.value)
    assert "\n" not in message
    if env_id:
        assert "lab/Forage-v0" in message


@pytest.mark.parametrize("env_id", ["lab/Forage-v0", "lab/Binding-v0", "lab/Chain-v0", "CartPole-v1"])
def test_unknown_option_is_value_error(env_id):
    with pytest.raises(ValueError, match="bogus"):
        envs.make(env_id, bogus=3)


def test_minigrid_without_package_is_value_error():
    try:
        import minigrid  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="minigrid"):
            envs.make("MiniGrid-Empty-5x5-v0")
    else:
        env = envs.make("MiniGrid-Empty-5x5-v0")
        _, info = env.reset(seed=0)
        assert set(info["latents"]) == set(envs.latent_spec(env))


# ---------------------------------------------------------------------- contracts of every lab env
@pytest.mark.parametrize("env_id", READY_IDS)
def test_gymnasium_check_env(env_id):
    env = envs.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=True)
    gym_check_env(envs.make(env_id, render_mode="ansi").unwrapped)


@pytest.mark.parametrize("env_id", READY_IDS)
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(envs.make(env_id), warn=True)


@pytest.mark.parametrize("env_id", READY_IDS)
def test_latents_match_spec_every_step(env_id):
    env = envs.make(env_id)
    spec = envs.latent_spec(env)
    assert spec and spec == env.unwrapped.latent_spec
    for entry in spec.values():
        assert entry["kind"] in ("continuous", "discrete")
        assert isinstance(entry["description"], str) and entry["description"]
        lo, hi = entry["range"]
        assert lo <= hi
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    for t in range(600):
        latents = info["latents"]
        assert set(latents) == set(spec)
        for name, value in latents.items():
            lo, hi = spec[name]["range"]
            assert lo - 1e-6 <= value <= hi + 1e-6, (name, value, spec[name]["range"])
            if spec[name]["kind"] == "discrete":
                assert isinstance(value, int) and not isinstance(value, bool), (name, value)
            else:
                assert isinstance(value, float), (name, value)
        behaviour_spec = envs.behaviour_spec(env)
        assert set(info.get("behaviour", {})) == set(behaviour_spec)
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            _, info = env.reset()


@pytest.mark.parametrize("env_id", READY_IDS)
def test_deterministic_under_seed(env_id):
    kwargs = RANDOM_KWARGS.get(env_id, {})
    actions = [int(a) for a in np.random.default_rng(1).integers(0, envs.make(env_id).action_space.n, 400)]
    obs_a, lat_a, rew_a = _rollout(envs.make(env_id, **kwargs), 123, actions)
    obs_b, lat_b, rew_b = _rollout(envs.make(env_id, **kwargs), 123, actions)
    assert len(obs_a) == len(obs_b)
    for x, y in zip(obs_a, obs_b):
        np.testing.assert_array_equal(x, y)
    assert lat_a == lat_b
    assert rew_a == rew_b
    _, lat_c, _ = _rollout(envs.make(env_id, **kwargs), 124, actions)
    assert lat_c != lat_a  # the seed matters


@pytest.mark.parametrize("env_id", READY_IDS)
def test_ansi_render_is_compact(env_id):
    env = envs.make(env_id, render_mode="ansi")
    env.reset(seed=0)
    for _ in range(5):
        text = env.render()
        assert isinstance(text, str) and text
        lines = text.split("\n")
        assert len(lines) <= 12 and max(len(line) for line in lines) <= 40, text
        assert envs.text_render(env) == text
        env.step(env.action_space.sample())
    # text_render works without render_mode too
    plain = envs.make(env_id)
    plain.reset(seed=0)
    assert isinstance(envs.text_render(plain), str)


@pytest.mark.parametrize("env_id", READY_IDS)
def test_observation_is_a_fresh_array(env_id):
    env = envs.make(env_id)
    obs0, _ = env.reset(seed=0)
    keep = obs0.copy()
    for a in range(10):
        env.step(a % env.action_space.n)
    np.testing.assert_array_equal(obs0, keep)


@pytest.mark.parametrize("env_id", READY_IDS)
def test_stepping_past_the_end_does_not_crash(env_id):
    env = envs.make(env_id, disable_env_checker=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(2000):
        _, r, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated:
            ended += 1
            _, r2, terminated2, _, _ = env.step(int(rng.integers(env.action_space.n)))
            assert terminated2 and r2 <= 0.0
            env.reset()
    assert ended


# ---------------------------------------------------------------------- Forage
def test_forage_interoception_toggles_internal_variables():
    with_i = envs.make("lab/Forage-v0", interoception=True)
    without = envs.make("lab/Forage-v0", interoception=False)
    obs_i, info = with_i.reset(seed=3)
    obs_n, _ = without.reset(seed=3)
    assert obs_i.shape[0] == obs_n.shape[0] + 3
    lat = info["latents"]
    np.testing.assert_allclose(obs_i[-3:], [lat["energy"], lat["water"], lat["health"]], rtol=1e-6)
    np.testing.assert_array_equal(obs_i[:-3], obs_n)
    grid = envs.make("lab/Forage-v0", obs_mode="grid", interoception=False, size=5)
    assert grid.observation_space.shape == (4 * 25,)


def test_forage_drive_reward_is_drive_reduction():
    env = envs.make("lab/Forage-v0", reward_mode="drive", drive_n=3.0, drive_m=2.0, reward_scale=2.0, death_penalty=0.0)
    _, info = env.reset(seed=0)
    u = env.unwrapped
    for _ in range(100):
        d0 = info["latents"]["drive"]
        _, r, terminated, truncated, info = env.step(env.action_space.sample())
        lat = info["latents"]
        expected = (abs(0.8 - lat["energy"]) ** 3 + abs(0.8 - lat["water"]) ** 3 + (1 - lat["health"]) ** 3) ** 0.5
        assert lat["drive"] == pytest.approx(expected)
        assert r == pytest.approx(2.0 * (d0 - lat["drive"]))
        assert lat["hunger"] == pytest.approx(max(0.0, u.energy_set_point - lat["energy"]))
        if terminated or truncated:
            break


def test_forage_eating_and_drinking_restore():
    env = envs.make("lab/Forage-v0", reward_mode="plain", predator_speed=0.0)
    _, info = env.reset(seed=5)
    u = env.unwrapped
    # Walk to the food greedily and check the event.
    for _ in range(20):
        dr, dc = u._fr - u._ar, u._fc - u._ac
        a = 2 if dr > 0 else 0 if dr < 0 else 1 if dc > 0 else 3
        energy_before = info["latents"]["energy"]
        _, r, _, _, info = env.step(a)
        if info["behaviour"]["ate_food"]:
            needed = energy_before - u.energy_decay < u.energy_set_point
            assert r == float(needed) + float(info["behaviour"]["drank_water"])
            assert info["latents"]["energy"] == pytest.approx(min(1.0, energy_before - u.energy_decay + u.food_gain))
            break
    else:
        pytest.fail("never reached the food")


def test_forage_plain_reward_pays_only_when_needed():
    for init, expected in ((0.5, 1.0), (0.95, 0.0)):
        env = envs.make("lab/Forage-v0", init_low=init, init_high=init, predator_speed=0.0, energy_decay=0.0)
        env.reset(seed=1)
        u = env.unwrapped
        u._fr, u._fc = u._ar, min(u._ac + 1, u.size - 1) if u._ac < u.size - 1 else u._ac - 1
        u._wr, u._wc = (u._ar + 2) % u.size, u._ac  # keep the water out of the way
        a = 1 if u._fc > u._ac else 3
        _, r, _, _, info = env.step(a)
        assert info["behaviour"]["ate_food"] == 1 and r == expected


def test_forage_starvation_terminates():
    env = envs.make("lab/Forage-v0", energy_decay=0.2, init_low=0.5, init_high=0.5, predator_speed=0.0)
    env.reset(seed=0)
    terminated = False
    for t in range(5):
        _, r, terminated, truncated, info = env.step(4)
        if terminated:
            break
    assert terminated and info["latents"]["energy"] == 0.0 and t == 2
    assert r < -0.5  # death penalty


def test_forage_truncates_at_max_steps():
    env = envs.make("lab/Forage-v0", max_steps=7, energy_decay=0.0, water_decay=0.0, predator_damage=0.0)
    env.reset(seed=0)
    for t in range(7):
        _, _, terminated, truncated, _ = env.step(4)
        assert not terminated
        assert truncated == (t == 6)


def test_forage_predator_bites():
    env = envs.make("lab/Forage-v0", predator_speed=1.0, chase_prob=1.0, energy_decay=0.0, water_decay=0.0, predator_damage=0.5,
                    reward_mode="plain", predator_penalty=2.0, death_penalty=0.0)
    env.reset(seed=0)
    bites = 0
    for _ in range(50):
        _, r, terminated, _, info = env.step(4)  # stand still: the chaser arrives
        if info["behaviour"]["bitten"]:
            bites += 1
            assert r == pytest.approx(-2.0)
            assert info["latents"]["distance_to_threat"] >= env.unwrapped.size // 2
        if terminated:
            assert info["latents"]["health"] == 0.0
            break
    assert bites == 2 and terminated


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 3}, {"size": 100}, {"size": 7.5}, {"max_steps": 0}, {"reward_mode": "dense"},
        {"obs_mode": "pixels"}, {"energy_decay": -0.1}, {"chase_prob": 1.2}, {"predator_speed": -1},
        {"drive_n": 0}, {"drive_m": -2}, {"init_low": 0.9, "init_high": 0.5}, {"interoception": "yes"},
        {"render_mode": "human"}, {"reward_scale": float("nan")},
    ],
)
def test_forage_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        envs.make("lab/Forage-v0", **kwargs)


# ---------------------------------------------------------------------- standard envs
def test_cartpole_latents_from_observation():
    env = envs.make("CartPole-v1")
    obs, info = env.reset(seed=0)
    spec = envs.latent_spec(env)
    assert list(spec) == ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"]
    assert info["latents"]["pole_angle"] == pytest.approx(float(obs[2]))
    obs, _, _, _, info = env.step(0)
    assert [info["latents"][k] for k in spec] == pytest.approx([float(x) for x in obs])
    assert envs.text_render(env) is not None
    text_env = envs.make("CartPole-v1", render_mode="ansi")
    text_env.reset(seed=0)
    assert isinstance(text_env.render(), str)


def test_other_env_has_empty_latents():
    env = envs.make("Pendulum-v1")
    _, info = env.reset(seed=0)
    assert info["latents"] == {} and envs.latent_spec(env) == {}
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["latents"] == {}
    assert envs.text_render(env) is None
    with pytest.raises(ValueError):
        envs.make("Pendulum-v1", render_mode="ansi")


def test_latent_spec_through_wrappers():
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.wrappers.TimeLimit(envs.make("lab/Forage-v0"), 50))
    assert envs.latent_spec(env) == envs.make("lab/Forage-v0").unwrapped.latent_spec
    assert "ate_food" in envs.behaviour_spec(env)
    assert envs.latent_spec(Monitor(envs.make("CartPole-v1")))["pole_angle"]["kind"] == "continuous"
    assert envs.text_render(env) is not None


# ---------------------------------------------------------------------- Binding
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"n_colours": 3, "n_shapes": 4}, {"layout": "random"},
     {"layout": "random", "n_objects": 6, "n_colours": 3, "n_shapes": 3}],
)
def test_binding_scene_is_the_full_crossing(kwargs):
    env = envs.make("lab/Binding-v0", **kwargs)
    u = env.unwrapped
    n_objects = u.n_objects
    targets = set()
    for seed in range(60):
        obs, info = env.reset(seed=seed)
        t, cl, sl, fo = u._target, u._colour_lure, u._shape_lure, u._foil
        conj = list(zip(u._col_ids, u._shape_ids))
        assert len(set(conj)) == n_objects
        (tc, ts), (oc, os_) = conj[t], conj[fo]
        assert tc != oc and ts != os_
        assert conj[cl] == (tc, os_) and conj[sl] == (oc, ts)
        cells = set(zip(u._rows, u._cols))
        assert len(cells) == n_objects and (u._ar, u._ac) not in cells
        lat = info["latents"]
        assert (lat["target_row"], lat["target_col"]) == (u._rows[t], u._cols[t])
        assert (lat["foil_row"], lat["foil_col"]) == (u._rows[fo], u._cols[fo])
        assert lat["target_index"] == t
        # The goal is in the observation as one-hot colour + shape (last nc + ns entries).
        nc, ns = u.n_colours, u.n_shapes
        goal = obs[-(nc + ns):]
        assert goal[lat["target_colour"]] == 1 and goal[nc + lat["target_shape"]] == 1 and goal.sum() == 2
        # The bag-of-features latents point at the nearest object with that feature.
        colour = u.colours[lat["target_colour"]]
        same = [i for i, c in enumerate(u._col_ids) if c == lat["target_colour"]]
        dists = [abs(u._rows[i] - u._ar) + abs(u._cols[i] - u._ac) for i in same]
        nearest = same[int(np.argmin(dists))]
        assert len(same) >= 2
        assert (lat[f"{colour}_row"], lat[f"{colour}_col"]) == (u._rows[nearest], u._cols[nearest])
        targets.add(t)
    assert targets == set(range(n_objects)) or n_objects > 4  # the slot order is shuffled


def test_binding_corners_layout():
    env = envs.make("lab/Binding-v0", size=5)
    u = env.unwrapped
    _, info = env.reset(seed=0)
    assert list(zip(u._rows, u._cols)) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert (u._ar, u._ac) == (2, 2) and info["latents"]["distance_to_target"] == 4.0


def _walk_to(env, row, col):
    u = env.unwrapped
    for _ in range(4 * u.size):
        dr, dc = row - u._ar, col - u._ac
        a = 2 if dr > 0 else 0 if dr < 0 else 1 if dc > 0 else 3
        obs, r, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            return r, terminated, info
    raise AssertionError("never arrived")


def test_binding_rewards_target_and_penalises_lures():
    env = envs.make("lab/Binding-v0", step_reward=0.0, shaping=0.0, size=5, layout="random")
    u = env.unwrapped
    seen = {"target": 0, "lure": 0}
    for seed in range(40):
        env.reset(seed=seed)
        t, cl, sl, fo = u._target, u._colour_lure, u._shape_lure, u._foil
        goal_i = [t, cl, sl, fo][seed % 4]
        r, terminated, info = _walk_to(env, u._rows[goal_i], u._cols[goal_i])
        assert terminated
        b = info["behaviour"]
        hit = next(i for i in range(u.n_objects) if (u._rows[i], u._cols[i]) == (u._ar, u._ac))
        if hit == t:
            assert r == 1.0 and b["reached_target"] == 1
            seen["target"] += 1
        else:
            assert r == -1.0 and b["reached_target"] == 0
            assert b["reached_colour_lure"] + b["reached_shape_lure"] + b["reached_foil"] + b["reached_other"] == 1
            seen["lure"] += 1
    assert seen["target"] and seen["lure"]


def test_binding_shaping_rewards_progress():
    env = envs.make("lab/Binding-v0", step_reward=-0.01, shaping=0.1)
    _, info = env.reset(seed=4)
    for a in [0, 1, 2, 3, 0, 0, 1, 1]:
        d0 = info["latents"]["distance_to_target"]
        _, r, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            break
        assert r == pytest.approx(-0.01 + 0.1 * (d0 - info["latents"]["distance_to_target"]))


def test_binding_grid_obs_binds_by_cell():
    env = envs.make("lab/Binding-v0", obs_mode="grid", layout="random")
    u = env.unwrapped
    obs, info = env.reset(seed=2)
    s, nc = u.size, u.n_colours
    plane = s * s
    for i in range(u.n_objects):
        cell = u._rows[i] * s + u._cols[i]
        assert obs[(1 + u._col_ids[i]) * plane + cell] == 1
        assert obs[(1 + nc + u._shape_ids[i]) * plane + cell] == 1
    assert obs[u._ar * s + u._ac] == 1 and obs[:plane].sum() == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 2}, {"size": 13}, {"n_objects": 3}, {"n_objects": 9, "n_colours": 4, "n_shapes": 4},
     {"n_objects": 5, "n_colours": 2, "n_shapes": 2, "layout": "random"}, {"n_objects": 5}, {"layout": "ring"}, {"n_colours": 5}, {"n_shapes": 1},
     {"wrong_penalty": -1}, {"reward": 0}, {"max_steps": 0}, {"obs_mode": "pixels"}, {"shaping": -0.1}],
)
def test_binding_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        envs.make("lab/Binding-v0", **kwargs)


# ---------------------------------------------------------------------- Chain
from envs.chain import optimal_policy, true_values  # noqa: E402


def _value_iteration_policy(n, gamma, p, slip, reward=1.0, step_reward=0.0, iters=5000):
    v = np.zeros(n)
    p = np.broadcast_to(p, (n - 1,))
    for _ in range(iters):
        new = np.zeros(n)
        for s in range(n - 1):
            q = p[s] * (1 - slip) + (1 - p[s]) * slip
            right = reward if s + 1 == n - 1 else step_reward + gamma * v[s + 1]
            left = step_reward + gamma * v[max(s - 1, 0)]
            new[s] = q * right + (1 - q) * left
        v = new
    return v


@pytest.mark.parametrize("n,gamma,p,slip", [(5, 0.9, 1.0, 0.0), (8, 0.99, 0.5, 0.0), (6, 0.95, 0.7, 0.2), (4, 0.5, 0.0, 0.3)])
def test_chain_true_values_solve_bellman(n, gamma, p, slip):
    v = true_values(n, gamma, p, slip)
    np.testing.assert_allclose(v, _value_iteration_policy(n, gamma, p, slip), atol=1e-9)
    assert v[-1] == 0.0


def test_chain_closed_form_deterministic():
    n, gamma = 9, 0.9
    np.testing.assert_allclose(true_values(n, gamma, 1.0)[:-1], gamma ** np.arange(n - 2, -1, -1))


def test_chain_optimal_policy():
    assert optimal_policy(6, 0.9).tolist() == [1.0] * 5
    assert optimal_policy(6, 0.9, slip=0.8).tolist() == [0.0] * 5
    # A large step reward makes lingering better than finishing.
    assert optimal_policy(6, 0.9, step_reward=0.5)[-1] == 0.0
    env = envs.make("lab/Chain-v0", n=6, gamma=0.9, slip=0.1)
    best = env.unwrapped.values_optimal
    for p in (0.0, 0.3, 0.5, 0.9, 1.0):
        assert np.all(best >= true_values(6, 0.9, p, 0.1) - 1e-12)


def test_chain_td_errors_have_zero_mean_under_their_policy():
    env = envs.make("lab/Chain-v0", n=6, slip=0.2, gamma=0.9, start=None, max_steps=10_000)
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    by_state: dict[int, list[float]] = {}
    for _ in range(40_000):
        s = info["latents"]["state"]
        _, r, terminated, truncated, info = env.step(int(rng.integers(2)))  # uniform policy
        by_state.setdefault(s, []).append(info["latents"]["td_error_uniform"])
        if terminated or truncated:
            _, info = env.reset()
    for s, deltas in by_state.items():
        assert abs(np.mean(deltas)) < 0.02, (s, np.mean(deltas))


def test_chain_latents_and_one_hot_obs():
    env = envs.make("lab/Chain-v0", n=5, gamma=0.9)
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [1, 0, 0, 0, 0] and info["latents"]["state"] == 0
    total = 0.0
    for t in range(4):
        obs, r, terminated, truncated, info = env.step(1)
        total += r
        assert info["latents"]["td_error_optimal"] == pytest.approx(0.0, abs=1e-12)
    assert terminated and total == 1.0 and info["latents"]["at_goal"] == 1
    assert int(np.argmax(obs)) == 4 and info["latents"]["value_optimal"] == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 2}, {"n": 5000}, {"slip": 1.0}, {"slip": -0.1}, {"gamma": 1.0}, {"start": 7}, {"start": -1},
     {"max_steps": 0}, {"n": "8"}],
)
def test_chain_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        envs.make("lab/Chain-v0", **kwargs)


# ---------------------------------------------------------------------- docs
def test_every_latent_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "envs.md").read_text()
    for env_id in envs.LAB_ENV_IDS:
        u = envs.make(env_id).unwrapped
        feature_names = set(getattr(u, "colours", ())) | set(getattr(u, "shapes", ()))
        for name in list(u.latent_spec) + list(u.behaviour_spec):
            if name.rsplit("_", 1)[0] in feature_names:
                continue  # documented by pattern: <colour>_row, <shape>_col
            assert f"`{name}`" in doc or f"`{name.rsplit('_', 1)[0]}_row`, `{name.rsplit('_', 1)[0]}_col`" in doc, name
    assert "`<colour>_row`" in doc and "`<shape>_row`" in doc


@pytest.mark.parametrize(
    "env_id,kwargs",
    [("lab/Forage-v0", {"energy_set_point": 0.3, "water_set_point": 1.0, "size": 4, "obs_mode": "grid",
                        "reward_mode": "drive", "food_gain": 1.0}),
     ("lab/Forage-v0", {"size": 12, "interoception": False, "predator_speed": 1.0, "chase_prob": 1.0}),
     ("lab/Binding-v0", {"layout": "random", "size": 8, "n_objects": 8, "n_colours": 4, "n_shapes": 4,
                         "obs_mode": "grid"}),
     ("lab/Chain-v0", {"n": 30, "slip": 0.7, "step_reward": -0.05, "start": None})],
)
def test_latents_in_range_for_other_settings(env_id, kwargs):
    env = envs.make(env_id, **kwargs)
    spec = envs.latent_spec(env)
    assert env.observation_space.contains(env.reset(seed=0)[0])
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(1500):
        for name, value in info["latents"].items():
            lo, hi = spec[name]["range"]
            assert lo - 1e-6 <= value <= hi + 1e-6, (name, value, spec[name]["range"])
        obs, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            _, info = env.reset()


# --------------------------------------------------------------------------- do: interventions on the world
DO_CASES = [(env_id, target) for env_id in envs.LAB_ENV_IDS
            for target in envs.do_targets(envs.make(env_id, **RANDOM_KWARGS.get(env_id, {})))]


def test_every_lab_env_offers_do_targets():
    for env_id in envs.LAB_ENV_IDS:
        targets = envs.do_targets(envs.make(env_id))
        assert targets, env_id
        for name, entry in targets.items():
            assert entry["description"], (env_id, name)
    assert envs.do_targets(gym.make("CartPole-v1")) == {}
    with pytest.raises(ValueError, match="offers no do"):
        envs.do(gym.make("CartPole-v1"), "anything")


@pytest.mark.parametrize("env_id, target", DO_CASES)
def test_do_is_deterministic_and_draws_no_random_numbers(env_id, target):
    kwargs = RANDOM_KWARGS.get(env_id, {})
    actions = [1, 2, 1, 0, 1, 3, 1, 1]

    def play(intervene: bool) -> tuple[list[np.ndarray], list[dict], dict]:
        env = envs.make(env_id, **kwargs)
        env.reset(seed=11)
        for a in actions[:3]:
            env.step(a % env.action_space.n)
        after: dict = {}
        if intervene:
            obs_do, info_do = envs.do(env, target)
            after = {"obs": obs_do, "latents": info_do["latents"]}
            assert set(info_do["latents"]) == set(envs.latent_spec(env))
        obs, lat = [], []
        for a in actions[3:]:
            o, _, term, trunc, info = env.step(a % env.action_space.n)
            obs.append(o)
            lat.append(info["latents"])
            if term or trunc:
                break
        env.close()
        return obs, lat, after

    obs1, lat1, after1 = play(True)
    obs2, lat2, after2 = play(True)
    np.testing.assert_array_equal(after1["obs"], after2["obs"])
    assert after1["latents"] == after2["latents"]
    assert lat1 == lat2 and all(np.array_equal(a, b) for a, b in zip(obs1, obs2))
    # do draws no random numbers: the env's random stream after it is the one it would have been.
    env_a, env_b = envs.make(env_id, **kwargs), envs.make(env_id, **kwargs)
    env_a.reset(seed=11)
    env_b.reset(seed=11)
    envs.do(env_a, target)
    assert env_a.unwrapped.np_random.bit_generator.state == env_b.unwrapped.np_random.bit_generator.state
    assert env_a.unwrapped._rand._i == env_b.unwrapped._rand._i


def test_forage_do_sets_what_it_says():
    env = envs.make("lab/Forage-v0")
    env.reset(seed=2)
    _, info = envs.do(env, "predator_adjacent")
    assert info["latents"]["predator_adjacent"] == 1 and info["latents"]["distance_to_threat"] == 1.0
    _, info = envs.do(env, "predator_far")
    assert info["latents"]["distance_to_threat"] >= 6
    _, info = envs.do(env, "food_adjacent")
    assert info["latents"]["distance_to_food"] == 1.0
    obs, info = envs.do(env, "energy", 0.1)
    assert info["latents"]["energy"] == pytest.approx(0.1) and obs[8] == pytest.approx(0.1)
    _, info = envs.do(env, "hunger", 0.5)
    assert info["latents"]["hunger"] == pytest.approx(0.5)
    _, info = envs.do(env, "energy")  # the default value
    assert info["latents"]["energy"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown do target"):
        envs.do(env, "lava")
    with pytest.raises(ValueError):
        envs.do(env, "energy", 2.0)
    with pytest.raises(ValueError, match="takes no value"):
        envs.do(env, "predator_adjacent", 1.0)
    # The next step starts from the new state: an agent next to food that steps onto it eats.
    env.reset(seed=2)
    _, info = envs.do(env, "food_adjacent")
    u = env.unwrapped
    dr, dc = u._fr - u._ar, u._fc - u._ac
    action = {(-1, 0): 0, (0, 1): 1, (1, 0): 2, (0, -1): 3}[(dr, dc)]
    _, _, _, _, info = env.step(action)
    assert info["behaviour"]["ate_food"] == 1 and info["behaviour"]["idle"] == 0


def test_binding_and_chain_do():
    env = envs.make("lab/Binding-v0")
    env.reset(seed=4)
    before = env.unwrapped._latents()
    obs, info = envs.do(env, "swap_goal_shape")
    lat = info["latents"]
    assert lat["target_colour"] == before["target_colour"] and lat["target_shape"] != before["target_shape"]
    assert (lat["target_row"], lat["target_col"]) == (before["colour_lure_row"], before["colour_lure_col"])
    _, info = envs.do(env, "target_adjacent")
    assert info["latents"]["distance_to_target"] == 1.0
    chain = envs.make("lab/Chain-v0")
    chain.reset(seed=0)
    obs, info = envs.do(chain, "near_goal")
    assert info["latents"]["distance_to_goal"] == 1 and obs.argmax() == 6
    _, info = envs.do(chain, "state", 3)
    assert info["latents"]["state"] == 3
    with pytest.raises(ValueError):
        envs.do(chain, "state", 7)  # the goal cannot be set
