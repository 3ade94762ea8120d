"""Shared fixtures: a tiny real PPO run on lab/Forage-v0, trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real PPO run (1024 steps on lab/Forage-v0) with one recording of 4 episodes.

    Returns ``(runs_dir, run_name)``. Tests must not modify it; copy it if they need to.
    """
    from rl_lab.config import TrainConfig
    from rl_lab.record import record_run
    from rl_lab.train import train

    runs_dir = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(env_id="lab/Forage-v0", algo="ppo", total_timesteps=1024, seed=0, n_envs=2,
                      checkpoint_every=512)
    run = train(cfg, runs_dir, name="tiny")
    record_run("tiny", runs_dir, episodes=4, seed=0)
    return runs_dir, run.name
