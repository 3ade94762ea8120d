"""End to end: launch a real tiny training run from the Launch screen and follow it to the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, ProgressBar, Select

from probes.layout import RunLayout, RunsDirLayout
from tui.app import LabApp
from tui.screens.launch import LaunchScreen, parse_form
from tui.widgets.chart import LineChart
from rl_lab.errors import LabError

TRAIN_CLI = Path(__file__).resolve().parents[1] / "rl_lab" / "cli" / "train.py"


def test_parse_form_validates_fields() -> None:
    base = {"env": "CartPole-v1", "algo": "ppo", "steps": "256", "seed": "3", "name": "", "lr": "", "n_envs": "", "gamma": ""}
    spec = parse_form(base)
    assert spec.name.startswith("cartpole-ppo-s3-")
    assert spec.args({"--lr"})[:4] == ["--env", "CartPole-v1", "--algo", "ppo"]
    assert "--lr" in parse_form(dict(base, lr="0.001")).args({"--lr"})
    assert "--lr" not in parse_form(dict(base, lr="0.001")).args({"--gamma"})
    for bad, message in (({"steps": "-1"}, "steps must be positive"), ({"lr": "abc"}, "lr must be a number"),
                         ({"name": "../x"}, "invalid run name"), ({"gamma": "2"}, "gamma must be in")):
        with pytest.raises(LabError, match=message):
            parse_form(dict(base, **bad))


async def test_launch_form_rejects_bad_input(tmp_path: Path) -> None:
    app = LabApp(tmp_path / "runs")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("l")
        await pilot.pause()
        assert isinstance(app.screen, LaunchScreen)
        app.screen.query_one("#steps", Input).value = "zero"
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.screen.job is None
        assert any("steps must be a whole number" in n.message for n in app._notifications)


@pytest.mark.slow
@pytest.mark.skipif(not TRAIN_CLI.exists(), reason="rl_lab/cli/train.py (rl-lab train) does not exist yet")
async def test_launch_real_training_and_follow_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    app = LabApp(runs, poll_interval=0.25)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("l")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LaunchScreen)
        screen.query_one("#env", Select).value = "CartPole-v1"
        screen.query_one("#steps", Input).value = "256"
        screen.query_one("#name", Input).value = "tiny-launch"
        screen.query_one("#n_envs", Input).value = "1"
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert screen.job is not None
        for _ in range(1200):  # up to ~120 s on a slow machine
            await pilot.pause(0.1)
            if screen.final_status is not None:
                break
        log = "\n".join(screen.job.last_lines(20))
        assert screen.final_status == "done", log
        info = json.loads(RunLayout(RunsDirLayout(runs).run_dir("tiny-launch")).run_json.read_text())
        assert info["status"] == "done" and info["env_id"] == "CartPole-v1"
        bar = screen.query_one("#launch-progress", ProgressBar)
        assert bar.progress == bar.total == info["total_timesteps"]
        assert len(screen.query_one("#launch-chart", LineChart).ys) > 0
        # the runs screen shows it as done once we go back
        await pilot.press("escape")
        for _ in range(50):
            await pilot.pause(0.1)
            if app.row("tiny-launch") is not None:
                break
        row = app.row("tiny-launch")
        assert row is not None and row.status == "done"


def test_parse_form_policy_and_recurrent_ppo() -> None:
    base = {"env": "lab/Forage-v0", "algo": "ppo", "policy": "transformer", "steps": "256", "seed": "0",
            "name": "", "lr": "", "n_envs": "", "gamma": ""}
    spec = parse_form(base)
    assert spec.name.startswith("forage-ppo-transformer-s0-")
    assert spec.args(set())[:6] == ["--env", "lab/Forage-v0", "--algo", "ppo", "--steps", "256"]
    assert spec.args(set())[-2:] == ["--policy", "transformer"]
    recurrent = parse_form(dict(base, algo="recurrent-ppo", policy="mlp"))
    assert "--policy" not in recurrent.args(set()) and recurrent.algo == "recurrent-ppo"
    for bad, message in (({"algo": "dqn"}, "transformer policy is for ppo or a2c"),
                         ({"algo": "recurrent-ppo"}, "transformer policy is for"),
                         ({"policy": "lstm"}, "policy must be one of")):
        with pytest.raises(LabError, match=message):
            parse_form(dict(base, **bad))


async def test_launch_form_offers_policy_and_recurrent_ppo(tmp_path: Path) -> None:
    app = LabApp(tmp_path / "runs")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("l")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LaunchScreen)
        algo, policy = screen.query_one("#algo", Select), screen.query_one("#policy", Select)
        assert "recurrent-ppo" in [value for _, value in algo._options]
        assert [value for _, value in policy._options] == ["mlp", "transformer", "cnn"]
        algo.value, policy.value = "dqn", "transformer"
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert screen.job is None
        assert any("transformer policy is for ppo or a2c" in n.message for n in app._notifications)
        algo.value = "a2c"
        await pilot.pause()
        spec = parse_form(screen.form_values())
        assert (spec.algo, spec.policy) == ("a2c", "transformer")
        assert "--policy" in spec.args(set())
