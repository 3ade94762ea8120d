"""Recording a network on another run's episodes (``rl-lab record --replay``): real tiny trainings,
real recordings replayed action for action, their probes and the comparison on the same situations."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from rl_lab.cli import main
from rl_lab.config import TrainConfig

ENV = "lab/Forage-v0"


def _datasets(group: h5py.Group, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in group.items():
        if isinstance(value, h5py.Group):
            out.update(_datasets(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value[:]
    return out


@pytest.fixture(scope="module")
def replay_runs(tmp_path_factory: pytest.TempPathFactory, tiny_run: tuple[Path, str]) -> Path:
    """The tiny PPO run (the behaviour, 4 sampled episodes recorded in 3 environments at once), a
    transformer PPO and a DT of it."""
    from rl_lab.train import train

    src_dir, name = tiny_run
    runs_dir = tmp_path_factory.mktemp("replay")
    shutil.copytree(src_dir / name, runs_dir / "mlp")
    (runs_dir / "mlp" / "run.json").write_text((runs_dir / "mlp" / "run.json").read_text()
                                               .replace(f'"name": "{name}"', '"name": "mlp"'))
    # Recorded again with sampled actions in 3 environments at once: a replay must reproduce even that.
    assert main(["record", "mlp", "--episodes", "4", "--n-envs", "3", "--overwrite", "--runs-dir", str(runs_dir)]) == 0
    train(TrainConfig(env_id=ENV, algo="ppo", policy="transformer", total_timesteps=512, n_envs=2,
                      context=4, d_model=32, checkpoint_every=512), runs_dir, name="tf")
    assert main(["train", "--algo", "dt", "--from", "mlp", "--steps", "20", "--episodes-per-policy", "2",
                 "--eval-episodes", "1", "--context", "4", "--d-model", "32", "--name", "dt",
                 "--runs-dir", str(runs_dir)]) == 0
    return runs_dir


def test_a_run_replaying_its_own_recording_gives_the_same_file(replay_runs: Path) -> None:
    assert main(["record", "mlp", "--replay", "mlp", "--runs-dir", str(replay_runs)]) == 0
    own = sorted((replay_runs / "mlp" / "activations").glob("*.h5"))
    [replay] = sorted((replay_runs / "mlp" / "activations" / "replay" / "mlp").glob("*.h5"))
    assert len(own) == 1 and replay.name == own[0].name
    with h5py.File(own[0]) as a, h5py.File(replay) as b:
        first, second = _datasets(a), _datasets(b)
        assert set(first) == set(second)
        assert a.attrs["n_envs"] == 3 and not a.attrs["deterministic"]
        for key in first:  # every step, label, activation and random twin, hope and fear included
            assert np.array_equal(first[key], second[key], equal_nan=first[key].dtype.kind == "f"), key
        assert b.attrs["replay_of"] == "mlp" and b.attrs["replay_recording_id"] == a.attrs["recording_id"]
        assert b.attrs["value_calibration_mean"] == a.attrs["value_calibration_mean"]


def test_other_networks_see_the_behaviours_episodes(replay_runs: Path) -> None:
    for name in ("tf", "dt"):
        assert main(["record", name, "--replay", "mlp", "--runs-dir", str(replay_runs)]) == 0
    from rl_lab.runs import RunStore

    store = RunStore(replay_runs)
    [own] = store.get("mlp").activation_files()
    with h5py.File(own) as behaviour:
        steps, labels = _datasets(behaviour["steps"]), _datasets(behaviour["labels"])
        for name in ("tf", "dt"):
            run = store.get(name)
            assert run.activation_files() == []  # the run's own recordings are a separate list
            [path] = run.activation_files("mlp")
            with h5py.File(path) as f:
                for key in ("obs", "action", "reward", "episode", "t", "done"):
                    assert np.array_equal(f["steps"][key][:], steps[key]), (name, key)
                for key in ("threat", "hunger", "distance_to_threat", "prev_reward", "return_to_go"):
                    assert np.array_equal(f["labels"][key][:], labels[key], equal_nan=True), (name, key)
                assert f.attrs["replay_of"] == "mlp" and f.attrs["seed"] == behaviour.attrs["seed"]
                if name == "dt":
                    # The DT is told the return still to get: its target minus the behaviour's rewards so far.
                    reward, episode = steps["reward"].astype(np.float64), steps["episode"]
                    before = np.concatenate([[0.0], np.cumsum(reward)[:-1]])
                    for e in np.unique(episode):
                        rows = episode == e
                        before[rows] -= before[rows][0]
                    target = store.get("dt").info["dataset"]["max_return"]
                    assert np.allclose(f["inputs"]["rtg"][:], target - before, atol=1e-5)
                else:
                    assert "blocks.0.hook_resid_post" in f["acts"]


def test_replays_are_probed_and_compared_on_the_same_episodes(replay_runs: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("mlp", "tf"):
        if not list((replay_runs / name / "activations" / "replay" / "mlp").glob("*.h5")):
            assert main(["record", name, "--replay", "mlp", "--runs-dir", str(replay_runs)]) == 0
        assert main(["probe", name, "--replay", "mlp", "--labels", "hunger,threat", "--folds", "2",
                     "--runs-dir", str(replay_runs)]) == 0
        assert list((replay_runs / name / "probes" / "replay" / "mlp").glob("*.json"))
    assert not list((replay_runs / "tf" / "probes").glob("*.json"))  # nothing written for its own episodes
    capsys.readouterr()
    assert main(["compare", "mlp", "tf", "--replay", "mlp", "--label", "hunger", "--runs-dir", str(replay_runs)]) == 0
    out = capsys.readouterr().out
    assert "every network was recorded on the same episodes, run mlp's" in out
    from rl_lab.compare import compare

    result = compare(["mlp", "tf"], replay_runs, labels=["hunger"], replay="mlp", write=False)
    assert result["replay"] == "mlp"
    assert all("/probes/replay/mlp/" in r["probe_file"] for r in result["runs"])
    returns = {r["name"]: r["return"]["mean"] for r in result["runs"]}
    assert returns["mlp"] == returns["tf"]  # the same episodes, so the same return
    # --replay names a run's replays: with a file it is refused, one line.
    [own] = sorted((replay_runs / "tf" / "activations" / "replay" / "mlp").glob("*.h5"))
    assert main(["probe", str(own), "--replay", "mlp"]) == 2
    assert "give the run, not a file" in capsys.readouterr().err
    # A run with no replay of those episodes is named with the command that makes one.
    assert main(["compare", "mlp", "dt", "--replay", "tf", "--runs-dir", str(replay_runs)]) == 2
    assert "rl-lab record mlp --replay tf" in capsys.readouterr().err


def test_compare_refuses_replays_of_different_recordings(replay_runs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(replay_runs, runs)
    for name in ("mlp", "tf"):
        if not list((runs / name / "probes" / "replay" / "mlp").glob("*.json")):
            assert main(["record", name, "--replay", "mlp", "--overwrite", "--runs-dir", str(runs)]) == 0
            assert main(["probe", name, "--replay", "mlp", "--labels", "hunger", "--folds", "2",
                         "--runs-dir", str(runs)]) == 0
    # The behaviour is recorded again: tf's replay was of its earlier episodes; mlp's replay is redone.
    assert main(["record", "mlp", "--episodes", "4", "--overwrite", "--runs-dir", str(runs)]) == 0
    assert main(["record", "mlp", "--replay", "mlp", "--overwrite", "--runs-dir", str(runs)]) == 0
    assert main(["probe", "mlp", "--replay", "mlp", "--labels", "hunger", "--folds", "2", "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    assert main(["compare", "mlp", "tf", "--replay", "mlp", "--label", "hunger", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "different recordings of run 'mlp'" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--seed", "3"], "--seed does not apply with --replay"),
    (["--n-envs", "2"], "--n-envs does not apply with --replay"),
    (["--deterministic"], "--deterministic does not apply with --replay"),
    (["--episodes", "99"], "has 4 episodes to replay"),
    (["--replay", "../mlp"], "no run '../mlp'"),
    (["--replay", "nobody"], "no run named 'nobody'"),
])
def test_bad_replays_are_one_line_and_create_nothing(replay_runs: Path, tmp_path: Path, extra: list[str],
                                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(replay_runs, runs, ignore=shutil.ignore_patterns("replay"))
    args = ["record", "tf", "--replay", "mlp", *extra, "--runs-dir", str(runs)]
    if "--replay" in extra:
        args = ["record", "tf", *extra, "--runs-dir", str(runs)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (runs / "tf" / "activations" / "replay").exists()


def test_a_replay_that_leaves_its_recording_is_refused(replay_runs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(replay_runs, runs, ignore=shutil.ignore_patterns("replay"))
    [own] = sorted((runs / "mlp" / "activations").glob("*.h5"))
    with h5py.File(own, "r+") as f:  # one recorded action changed: the environment goes elsewhere
        actions = f["steps"]["action"]
        actions[2] = (actions[2] + 1) % 4
    assert main(["record", "tf", "--replay", "mlp", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "left its recording at episode 0" in err and "not deterministic" in err
    assert not list((runs / "tf" / "activations" / "replay" / "mlp").glob("*"))


def test_a_replay_in_another_environment_is_refused(replay_runs: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(replay_runs, runs, ignore=shutil.ignore_patterns("replay"))
    run_json = runs / "mlp" / "run.json"
    run_json.write_text(run_json.read_text().replace('"env_kwargs": {}', '"env_kwargs": {"max_steps": 50}'))
    assert main(["record", "tf", "--replay", "mlp", "--runs-dir", str(runs)]) == 2
    assert "a replay must happen in the same environment" in capsys.readouterr().err
