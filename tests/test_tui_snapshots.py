"""Screenshots of the main screens (pytest-textual-snapshot), over fixed fake data.

Every file is written with fixed timestamps and no pids, the runs directory is given as the
relative path ``runs`` (so the header does not show a temporary path) and the text cursor does
not blink. Regenerate after an intended change of the UI with ``pytest tests/test_tui_snapshots.py
--snapshot-update`` and review the SVGs in ``tests/__snapshots__/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input

from probes.layout import RunLayout, RunsDirLayout
from tui.app import LabApp

RUN_INFO = {"algo": "ppo", "status": "done", "pid": None, "updated": "2024-01-02T00:00:00+00:00",
            "total_timesteps": 4096, "steps_done": 4096, "config": {"learning_rate": 0.0003, "n_steps": 128},
            "versions": {"python": "3.11", "rl_lab": "0.1.0"}, "error": None}


def write_run(root: Path, name: str, minute: int, env: str = "CartPole-v1", returns: list[float] | None = None,
              **extra: Any) -> Path:
    run = RunLayout(RunsDirLayout(root).run_dir(name))
    run.path.mkdir(parents=True)
    info = dict(RUN_INFO, name=name, env_id=env, seed=extra.pop("seed", 0),
                created=f"2024-01-01T00:{minute:02d}:00+00:00", **extra)
    run.run_json.write_text(json.dumps(info))
    with open(run.metrics_path, "w") as fh:
        for i, r in enumerate(returns or []):
            fh.write(json.dumps({"step": (i + 1) * 256, "time": float(i), "episode_return": r,
                                 "episode_length": 20, "fps": 500, "loss": 1.0 / (i + 1)}) + "\n")
    return run.path


@pytest.fixture()
def snap_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    write_run(root, "cartpole-ppo-s0", 1, returns=[10 + 3 * i + (i % 3) for i in range(16)])
    write_run(root, "forage-a2c-s1", 2, env="lab/Forage-v0", algo="a2c", returns=[-5.0, -2.5, 0.5, 1.25])
    write_run(root, "forage-dqn-s2", 3, env="lab/Forage-v0", algo="dqn", status="failed", steps_done=1024,
              error="ValueError: the replay buffer is empty", returns=[0.0, 1.0])
    write_run(root, "chain-ppo-s3", 4, env="lab/Chain-v0", status="interrupted", steps_done=2048, returns=[0.25, 0.5])
    for seed in range(3):
        for minute, (cond, base) in enumerate((("CartPole-v1 ppo lr_0.001", 20.0), ("CartPole-v1 ppo lr_0.01", 60.0))):
            write_run(root, f"sw-CartPole-v1-ppo-s{seed}-{cond.split()[-1]}", 10 + 3 * minute + seed, seed=seed,
                      sweep="sw", sweep_condition=cond,
                      returns=[base * (k + 1) / 12 + 4 * seed + (k % 2) for k in range(12)])
    monkeypatch.chdir(tmp_path)
    return Path("runs")


async def _settle(pilot: Any) -> None:
    for inp in pilot.app.screen.query(Input):
        inp.cursor_blink = False
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


async def _runs_ready(pilot: Any, n: int) -> None:
    app = pilot.app
    for _ in range(200):
        await pilot.pause(0.02)
        if app.runs_ready_at is not None and app.screen.query_one("#runs", DataTable).row_count >= n:
            break
    await _settle(pilot)


def test_snapshot_runs(snap_compare: Any, snap_runs: Path) -> None:
    async def run_before(pilot: Any) -> None:
        await _runs_ready(pilot, 10)
        table = pilot.app.screen.query_one("#runs", DataTable)
        table.move_cursor(row=table.get_row_index("forage-dqn-s2"))  # the failed run: its reason shows below
        await _settle(pilot)

    assert snap_compare(LabApp(snap_runs, poll_interval=60), terminal_size=(100, 40), run_before=run_before)


def test_snapshot_runs_small_terminal(snap_compare: Any, snap_runs: Path) -> None:
    async def run_before(pilot: Any) -> None:
        await _runs_ready(pilot, 10)

    assert snap_compare(LabApp(snap_runs, poll_interval=60), terminal_size=(80, 24), run_before=run_before)


def test_snapshot_detail(snap_compare: Any, snap_runs: Path) -> None:
    async def run_before(pilot: Any) -> None:
        await _runs_ready(pilot, 10)
        pilot.app.open_run("cartpole-ppo-s0")
        for _ in range(200):
            await pilot.pause(0.02)
            if getattr(pilot.app.screen, "snapshot", None) is not None:
                break
        await _settle(pilot)

    assert snap_compare(LabApp(snap_runs, poll_interval=60), terminal_size=(100, 40), run_before=run_before)


def test_snapshot_sweeps(snap_compare: Any, snap_runs: Path) -> None:
    async def run_before(pilot: Any) -> None:
        await _runs_ready(pilot, 10)
        pilot.app.open_sweeps("sw")
        for _ in range(200):
            await pilot.pause(0.02)
            if getattr(pilot.app.screen, "view", None) is not None:
                break
        await _settle(pilot)

    assert snap_compare(LabApp(snap_runs, poll_interval=60), terminal_size=(100, 40), run_before=run_before)


def test_snapshot_features(snap_compare: Any, snap_runs: Path) -> None:
    from test_tui import write_sae_features

    write_sae_features(RunsDirLayout(snap_runs).run_dir("cartpole-ppo-s0"))

    async def run_before(pilot: Any) -> None:
        await _runs_ready(pilot, 10)
        pilot.app.open_features("cartpole-ppo-s0")
        for _ in range(400):
            await pilot.pause(0.02)
            if getattr(pilot.app.screen, "current", None) is not None:
                break
        await pilot.press("a")  # sorted by association with hunger
        await _settle(pilot)

    assert snap_compare(LabApp(snap_runs, poll_interval=60), terminal_size=(100, 40), run_before=run_before)
