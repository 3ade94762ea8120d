"""MiniGrid as a lab environment: observation layouts, latents, text, ``do``, and the pipeline on it
(PPO with the MLP and with the CNN policy, record, probe, a decision transformer from the run)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import envs
from envs.minigrid import CELL, N_COLOURS, N_OBJECTS
from rl_lab.cli import main

DOORKEY = "MiniGrid-DoorKey-5x5-v0"
TASKS = [DOORKEY, "MiniGrid-MemoryS7-v0", "MiniGrid-Empty-5x5-v0"]


def _raw(env):
    return env.unwrapped.gen_obs()


def _decode_view(vec: np.ndarray, view: int = 7) -> np.ndarray:
    """The [x, y, 3] index image a one-hot vector encodes (the documented layout, read back)."""
    cells = vec[: view * view * CELL].reshape(view, view, CELL)  # [row, col, 20]
    assert np.all(cells.sum(axis=2) == 3)  # exactly one object, one colour, one state per cell
    obj = cells[..., :N_OBJECTS].argmax(axis=2)
    col = cells[..., N_OBJECTS:N_OBJECTS + N_COLOURS].argmax(axis=2)
    state = cells[..., N_OBJECTS + N_COLOURS:].argmax(axis=2)
    return np.stack([obj, col, state], axis=2).transpose(1, 0, 2)  # [row, col] -> [x, y]


# --------------------------------------------------------------------------- observations
def test_object_table_is_minigrids() -> None:
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    from envs.minigrid import _TYPE_INDEX

    assert _TYPE_INDEX == OBJECT_TO_IDX
    assert (N_OBJECTS, N_COLOURS, CELL - N_OBJECTS - N_COLOURS) == (
        len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))


@pytest.mark.parametrize("env_id", TASKS)
def test_onehot_vector_encodes_the_view_and_direction(env_id: str) -> None:
    env = envs.make(env_id)
    assert env.observation_space.shape == (7 * 7 * 20 + 4,)  # fixed missions are dropped
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        raw = _raw(env)
        np.testing.assert_array_equal(_decode_view(obs), raw["image"])
        assert obs[980:984].argmax() == raw["direction"] and obs[980:984].sum() == 1
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            obs, _ = env.reset()


def test_agent_sits_at_the_bottom_centre_of_the_view() -> None:
    env = envs.make(DOORKEY)
    obs, _ = env.reset(seed=0)
    image = _decode_view(obs)
    # minigrid draws the agent's own cell as what it carries (nothing at the start: empty)
    assert image[3, 6, 0] == 1


def test_mission_with_placeholders_is_encoded() -> None:
    env = envs.make("MiniGrid-GoToObject-6x6-N2-v0")
    width = env.observation_space.shape[0] - 984
    assert width == 6 + 3  # colour x object placeholders
    seen = set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        code = obs[984:]
        assert code[:6].sum() == 1 and code[6:].sum() == 1
        space = env.unwrapped.observation_space["mission"]
        colour = space.ordered_placeholders[0][int(code[:6].argmax())]
        obj = space.ordered_placeholders[1][int(code[6:].argmax())]
        assert space.mission_func(colour, obj) == env.unwrapped.mission
        seen.add((colour, obj))
    assert len(seen) > 1


def test_image_observation_is_the_onehot_as_planes() -> None:
    vec_env = envs.make(DOORKEY)
    img_env = envs.make(DOORKEY, obs="image")
    assert img_env.observation_space.shape == (24, 7, 7)
    vec, _ = vec_env.reset(seed=5)
    img, _ = img_env.reset(seed=5)
    for action in (0, 2, 2, 1, 2):
        grid = img[:20].transpose(1, 2, 0).reshape(-1)
        np.testing.assert_array_equal(grid, vec[:980])
        for k in range(4):
            assert np.all(img[20 + k] == vec[980 + k])
        vec, *_ = vec_env.step(action)
        img, *_ = img_env.step(action)


def test_pixel_observation() -> None:
    env = envs.make(DOORKEY, obs="pixels", tile_size=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 28, 28) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs) and obs.max() > 0


@pytest.mark.parametrize("kwargs, match", [({"obs": "rgb"}, "obs must be one of"),
                                           ({"tile_size": 0}, "tile_size"),
                                           ({"bogus": 1}, "bogus")])
def test_bad_options_are_one_line_value_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        envs.make(DOORKEY, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("obs", ["onehot", "image"])
@pytest.mark.parametrize("env_id", TASKS)
def test_gymnasium_and_sb3_check_env(env_id: str, obs: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # SB3's warnings about images are for its NatureCNN (uint8 pixels, channels first, >= 36x36):
        # the one-hot planes are float32 [24, 7, 7] on purpose, read by the lab's GridCNN
        check_env(envs.make(env_id, obs=obs), warn=obs == "onehot")
    gym_check_env(envs.make(env_id, obs=obs), skip_render_check=True)


# --------------------------------------------------------------------------- latents, text, do
@pytest.mark.parametrize("env_id", TASKS)
def test_latents_match_spec_and_stay_in_range(env_id: str) -> None:
    env = envs.make(env_id)
    spec = envs.latent_spec(env)
    rng = np.random.default_rng(1)
    _, info = env.reset(seed=0)
    for _ in range(300):
        assert set(info["latents"]) == set(spec)
        for name, value in info["latents"].items():
            lo, hi = spec[name]["range"]
            assert lo <= value <= hi, (name, value)
        assert set(info["behaviour"]) == set(envs.behaviour_spec(env))
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            _, info = env.reset()


def test_task_latents() -> None:
    assert {"key_held", "door_open", "goal_visible", "distance_to_goal"} <= set(envs.latent_spec(envs.make(DOORKEY)))
    assert {"cue", "correct_side", "distance_to_correct"} <= set(envs.latent_spec(envs.make("MiniGrid-MemoryS7-v0")))
    empty = envs.make("MiniGrid-Empty-5x5-v0")
    _, info = empty.reset(seed=0)
    # Empty-5x5: the agent starts top-left facing right, the goal is bottom-right, 4 steps away
    assert info["latents"]["distance_to_goal"] == 4
    _, _, _, _, info = empty.step(2)  # forward
    assert info["latents"]["distance_to_goal"] == 3 and info["behaviour"]["moved"] == 1


def test_doorkey_do_targets_and_text() -> None:
    env = envs.make(DOORKEY, render_mode="ansi")
    assert env.render_mode == "ansi"
    _, info = env.reset(seed=0)
    assert set(envs.do_targets(env)) == {"key_held", "door_open", "door_locked"}
    lat = info["latents"]
    assert (lat["key_held"], lat["door_open"], lat["door_locked"]) == (0, 0, 1)
    text = envs.text_render(env)
    assert "L" in text and "k" in text and "G" in text and "door locked" in text.splitlines()[-1]
    obs, info = envs.do(env, "key_held")
    assert info["latents"]["key_held"] == 1 and info["latents"]["carrying"] == 5
    assert "k" not in "".join(envs.text_render(env).splitlines()[:-1]) and "holding key" in envs.text_render(env)
    # the carried key shows in the agent's own cell of the view
    assert _decode_view(obs)[3, 6, 0] == 5
    _, info = envs.do(env, "door_open")
    assert info["latents"]["door_open"] == 1 and info["latents"]["door_locked"] == 0
    assert "/" in envs.text_render(env)
    with pytest.raises(ValueError, match="unknown do target"):
        envs.do(env, "swap_cue")


def test_memory_swap_cue_flips_the_answer() -> None:
    env = envs.make("MiniGrid-MemoryS7-v0")
    _, info = env.reset(seed=2)
    before = info["latents"]
    _, info = envs.do(env, "swap_cue")
    after = info["latents"]
    assert after["cue"] == 1 - before["cue"] and after["correct_side"] == 1 - before["correct_side"]
    assert envs.do_targets(envs.make("MiniGrid-Empty-5x5-v0")) == {}


# --------------------------------------------------------------------------- the pipeline
def _cli(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def doorkey_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("runs")
    assert _cli("train", "--env", DOORKEY, "--algo", "ppo", "--steps", "1024", "--n-envs", "2",
                "--checkpoint-every", "512", "--name", "dk", "--runs-dir", str(runs)) == 0
    return runs, "dk"


def test_ppo_record_probe_on_doorkey(doorkey_run: tuple[Path, str]) -> None:
    runs, name = doorkey_run
    assert _cli("record", name, "--episodes", "4", "--runs-dir", str(runs)) == 0
    path = runs / name / "activations" / "step_000001024.h5"
    with h5py.File(path, "r") as f:
        assert f["steps/obs"].shape[1] == 984
        assert "mlp_extractor.policy_net.1" in f["acts"]
        for latent in ("key_held", "door_open", "distance_to_goal"):
            assert any(latent in key for key in f["labels"]), latent
        text = f["steps/text"][0]
        text = text.decode() if isinstance(text, bytes) else str(text)
        assert text.splitlines()[-1].startswith("t0 ")
    assert _cli("probe", str(path), "--hooks", "mlp_extractor.policy_net.1",
                "--labels", "value,distance_to_goal", "--folds", "2", "--runs-dir", str(runs)) == 0
    results = list((runs / name / "probes").glob("*.json"))
    assert results
    doc = json.loads(results[0].read_text())
    assert "distance_to_goal" in json.dumps(doc)


def test_decision_transformer_from_a_minigrid_run(doorkey_run: tuple[Path, str]) -> None:
    runs, name = doorkey_run
    assert _cli("train", "--algo", "dt", "--from", name, "--steps", "30", "--episodes-per-policy", "2",
                "--eval-episodes", "1", "--checkpoint-every", "30", "--patience", "0", "--name", "dk-dt",
                "--runs-dir", str(runs)) == 0
    with h5py.File(runs / name / "trajectories" / "default.h5", "r") as f:
        assert f["steps/obs"].shape[1] == 984
    evaluation = runs / "dk-dt" / "eval.json"
    assert evaluation.exists()
    assert _cli("evaluate", "dk-dt", "--episodes", "1", "--runs-dir", str(runs)) == 0


def test_cnn_policy_trains_and_records(tmp_path: Path) -> None:
    assert _cli("train", "--env", DOORKEY, "--env-kwargs", '{"obs": "image"}', "--policy", "cnn",
                "--steps", "512", "--n-envs", "2", "--name", "cnn", "--runs-dir", str(tmp_path)) == 0
    info = json.loads((tmp_path / "cnn" / "run.json").read_text())
    assert info["agent"] == "ppo-cnn" and info["config"]["policy"] == "cnn"
    from rl_lab.adapters import load_sb3
    from rl_lab.runs import RunStore

    run = RunStore(tmp_path).get("cnn")
    model = load_sb3(run, run.latest_checkpoint())
    names = dict(model.policy.named_modules())
    assert type(names["features_extractor.cnn.0"]).__name__ == "Conv2d"
    assert type(names["features_extractor.linear.0"]).__name__ == "Linear"
    assert _cli("record", "cnn", "--episodes", "2", "--runs-dir", str(tmp_path)) == 0
    with h5py.File(tmp_path / "cnn" / "activations" / "step_000000512.h5", "r") as f:
        assert f["steps/obs"].shape[1:] == (24, 7, 7)
        assert "mlp_extractor.policy_net.1" in f["acts"]
        extractor = sorted(h for h in f["acts"] if h.startswith("features_extractor."))
        assert extractor == ["features_extractor.cnn.1", "features_extractor.cnn.3",
                             "features_extractor.linear.0", "features_extractor.linear.1"]
        assert f["acts/features_extractor.cnn.1"].shape[1] == 16 * 6 * 6
        assert f["acts/features_extractor.cnn.3"].shape[1] == 32 * 5 * 5
    path = tmp_path / "cnn" / "activations" / "step_000000512.h5"
    assert _cli("probe", str(path), "--hooks", "features_extractor.cnn.3", "--labels", "value,key_visible",
                "--folds", "2", "--runs-dir", str(tmp_path)) == 0
    doc = json.dumps([json.loads(p.read_text()) for p in (tmp_path / "cnn" / "probes").glob("*.json")])
    assert "features_extractor.cnn.3" in doc


def test_cnn_on_pixels_builds() -> None:
    import gymnasium

    from rl_lab.policies import GridCNN

    space = gymnasium.spaces.Box(0, 255, shape=(3, 56, 56), dtype=np.uint8)
    net = GridCNN(space)
    import torch

    out = net(torch.zeros(2, 3, 56, 56))
    assert out.shape == (2, 64)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.cnn) == 3 + 2  # 56 -> 28 -> 14 -> 7, then 2x2 convs


@pytest.mark.parametrize("argv, message", [
    (["--env", DOORKEY, "--policy", "cnn"], "--policy cnn needs image observations"),
    (["--policy", "cnn"], "--policy cnn needs image observations"),
    (["--env", DOORKEY, "--env-kwargs", '{"obs": "image"}', "--algo", "dqn", "--policy", "cnn"],
     "--policy cnn is for --algo ppo or a2c"),
    (["--env", DOORKEY, "--env-kwargs", '{"obs": "voxels"}'], "obs must be one of"),
])
def test_bad_cnn_options_exit_2(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert _cli("train", "--steps", "64", "--runs-dir", str(tmp_path), *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())
