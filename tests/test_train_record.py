"""Training writes a run directory; recording writes the activation file of docs/design.md."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from probes.activations import ActivationFile
from probes.errors import ProbeError
from rl_lab.errors import LabError
from rl_lab.labels import episode_labels
from rl_lab.runs import RunStore


def test_run_directory(tiny_run) -> None:
    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    assert run.status == "done"
    assert run.info["env_id"] == "lab/Forage-v0" and run.info["algo"] == "ppo"
    assert run.info["steps_done"] >= 1024
    assert {"torch", "numpy", "stable_baselines3", "gymnasium", "transformer_lens", "cpu"} <= set(run.info["versions"])
    assert all(isinstance(v, str) and v for v in run.info["versions"].values())
    metrics = run.metrics()
    assert metrics and all("step" in m and "fps" in m for m in metrics)
    steps = [c.name for c in run.checkpoints()]
    assert steps[0] == "step_000000512.zip" and steps[-1] == "step_000001024.zip"


def test_activation_file_contract(tiny_run) -> None:
    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    (path,) = run.activation_files()
    with ActivationFile(path) as f:
        assert f.complete and f.attrs["schema_version"] == 1
        assert f.attrs["env_id"] == "lab/Forage-v0" and f.attrs["policy_kind"] == "ppo"
        assert f.attrs["n_episodes"] == 4 and f.n == f.attrs["n_steps"]
        assert "mlp_extractor.policy_net.1" in f.hooks and "value_net" in f.hooks
        assert f.random_hooks == f.hooks
        for label in ("value", "td_error", "reward", "return_to_go", "entropy", "hope", "fear", "mood",
                      "surprise", "arousal", "action", "hunger", "threat"):
            assert label in f.labels, label
            assert f.label(label).shape == (f.n,)
        assert f.label_info("action")["kind"] == "discrete"
        assert f.label_info("value")["linear_in"] == ["mlp_extractor.value_net.3", "value_net"]
        assert f.acts("mlp_extractor.policy_net.1").shape == (f.n, 64)
        # the random-weights twin saw the same observations through different weights
        assert not np.allclose(f.acts("mlp_extractor.policy_net.1"),
                               f.acts("mlp_extractor.policy_net.1", random_weights=True))
        episodes, t = f.episodes(), f.steps("t")
        assert list(np.unique(episodes)) == [0, 1, 2, 3]
        assert (t[episodes == 1] == np.arange((episodes == 1).sum())).all()
        assert f.steps("done").sum() == 4
        assert "A" in f.text(0)  # the agent on the ansi grid


def test_labels_agree_with_the_network(tiny_run) -> None:
    """value is V(s) of the recorded checkpoint; td_error follows its formula row by row."""
    from stable_baselines3 import PPO
    import torch

    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    (path,) = run.activation_files()
    model = PPO.load(run.latest_checkpoint(), device="cpu")
    with ActivationFile(path) as f:
        obs = f.steps("obs")
        with torch.no_grad():
            v = model.policy.predict_values(torch.as_tensor(obs)).numpy().ravel()
        np.testing.assert_allclose(f.label("value"), v, atol=1e-5)
        np.testing.assert_allclose(f.acts("value_net").ravel(), v, atol=1e-5)
        r, ep, td = f.label("reward"), f.episodes(), f.label("td_error")
        gamma = f.attrs["gamma"]
        for e in np.unique(ep):
            idx = np.flatnonzero(ep == e)
            inner = idx[:-1]
            expected = r[inner] + gamma * v[inner + 1] - v[inner]
            np.testing.assert_allclose(td[inner], expected, atol=1e-4)
        # hope/fear are standardised with the calibration episodes' statistics, not the file's own
        hope, fear = f.label("hope"), f.label("fear")
        z = (v - f.attrs["value_calibration_mean"]) / f.attrs["value_calibration_std"]
        np.testing.assert_allclose(hope - fear, z, atol=1e-4)


def test_episode_labels_terminal_and_truncated() -> None:
    v = np.array([1.0, 2.0, 3.0])
    r = np.array([0.0, 1.0, 5.0])
    term = episode_labels(v, r, terminated=True, final_value=100.0, gamma=0.5)
    trunc = episode_labels(v, r, terminated=False, final_value=100.0, gamma=0.5)
    np.testing.assert_allclose(term["td_error"], [0 + 0.5 * 2 - 1, 1 + 0.5 * 3 - 2, 5 - 3])
    assert trunc["td_error"][-1] == pytest.approx(5 + 0.5 * 100 - 3)
    np.testing.assert_allclose(term["return_to_go"], [6, 6, 5])
    np.testing.assert_allclose(term["discounted_return"], [0 + 0.5 * 1 + 0.25 * 5, 1 + 0.5 * 5, 5])
    np.testing.assert_allclose(term["joy"] - term["distress"], term["td_error"])


def test_record_refuses_to_overwrite(tiny_run, tmp_path) -> None:
    from rl_lab.record import record_run

    runs_dir, name = tiny_run
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    with pytest.raises(LabError, match="already exists"):
        record_run(name, copy, episodes=1)
    (path,) = record_run(name, copy, episodes=1, overwrite=True)
    with ActivationFile(path) as f:
        assert f.attrs["n_episodes"] == 1


def test_recording_is_reproducible(tiny_run, tmp_path) -> None:
    from rl_lab.record import record
    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    a = record(run, run.latest_checkpoint(), episodes=2, seed=3, out=tmp_path / "a.h5")
    b = record(run, run.latest_checkpoint(), episodes=2, seed=3, out=tmp_path / "b.h5")
    with ActivationFile(a) as fa, ActivationFile(b) as fb:
        np.testing.assert_array_equal(fa.steps("action"), fb.steps("action"))
        np.testing.assert_array_equal(fa.acts("action_net"), fb.acts("action_net"))


def test_cut_recording_is_refused(tiny_run, tmp_path) -> None:
    from rl_lab.record import record

    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    out = tmp_path / "cut.h5"

    def boom(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record(run, run.latest_checkpoint(), episodes=4, out=out, progress=boom)
    with pytest.raises(ProbeError, match="incomplete"):
        ActivationFile(out)
    with ActivationFile(out, allow_incomplete=True) as f:
        assert not f.complete and f.n > 0


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_sigint_checkpoints_and_resume_continues(tmp_path) -> None:
    env = dict(os.environ, RL_LAB_RUNS=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_lab", "train", "--env", "lab/Forage-v0", "--steps", "1000000",
         "--name", "long", "--n-envs", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    run_json = tmp_path / "long" / "run.json"

    def started() -> bool:
        try:
            return json.loads(run_json.read_text()).get("steps_done", 0) > 0
        except (OSError, json.JSONDecodeError):
            return False

    _wait_for(started)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    run = RunStore(tmp_path).get("long")
    assert run.status == "interrupted"
    done = run.info["steps_done"]
    assert run.checkpoints() and int(run.checkpoints()[-1].stem.split("_")[1]) == done
    target = done + 1024
    res = subprocess.run([sys.executable, "-m", "rl_lab", "train", "--resume", "long", "--steps", str(target)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    run.reload()
    assert run.status == "done" and run.info["steps_done"] >= target
