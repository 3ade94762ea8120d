"""The terminal app driven through Pilot over real run directories written to tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Static

from rl_lab.runs import RunStore
from tui.app import LabApp
from tui.data import RunIndex, filter_rows, sort_rows
from tui.screens.runs import RunsScreen

SIZE = (100, 40)


def make_run(
    store: RunStore,
    name: str,
    *,
    status: str = "done",
    env_id: str = "CartPole-v1",
    algo: str = "ppo",
    returns: list[float] | None = None,
    created: str = "2024-01-01T00:00:00+00:00",
    pid: int | None = None,
    error: str | None = None,
    total: int = 1024,
) -> Path:
    """Create a run through the real RunStore and append metrics like training does."""
    run = store.create(
        name,
        {
            "env_id": env_id,
            "algo": algo,
            "status": status,
            "pid": pid,
            "created": created,
            "seed": 0,
            "total_timesteps": total,
            "steps_done": total if status == "done" else total // 4,
            "config": {"learning_rate": 3e-4, "n_steps": 128, "env_kwargs": {}},
            "versions": {"python": sys.version.split()[0]},
            "error": error,
        },
    )
    for i, r in enumerate(returns or []):
        run.log_metrics({"step": (i + 1) * 64, "time": float(i), "episode_return": r, "episode_length": 20, "fps": 500})
    return run.path


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    store = RunStore(tmp_path / "runs")
    make_run(store, "alpha", returns=[1.0, 5.0, 3.0], created="2024-01-01T00:00:01+00:00")
    make_run(store, "beta", algo="a2c", env_id="lab/Forage-v0", status="failed", error="ValueError: boom",
             returns=[2.0], created="2024-01-01T00:00:02+00:00")
    # "running" with a pid that is certainly gone -> interrupted
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    make_run(store, "gamma", algo="dqn", status="running", pid=dead.pid, returns=[9.0, 7.0],
             created="2024-01-01T00:00:03+00:00")
    # a live "running" run: our own pid is alive
    make_run(store, "delta", status="running", pid=os.getpid(), returns=[], created="2024-01-01T00:00:04+00:00")
    corrupt = store.root / "zeta"
    corrupt.mkdir()
    (corrupt / "run.json").write_text('{"name": "zeta", "status": ')  # half-written
    (store.root / "not-a-run").mkdir()  # no run.json: ignored
    return store.root


def table_keys(table: DataTable[Any]) -> list[str]:
    return [str(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]


async def wait_for_rows(app: LabApp, pilot: Any, n: int) -> None:
    for _ in range(100):
        await pilot.pause(0.02)
        if isinstance(app.screen, RunsScreen) and app.screen.query_one("#runs", DataTable).row_count >= n:
            return
    raise AssertionError("runs table never filled")


def test_run_index_reads_status_returns_and_corruption(runs_dir: Path) -> None:
    rows = {r.name: r for r in RunIndex(runs_dir).scan()}
    assert set(rows) == {"alpha", "beta", "gamma", "delta", "zeta"}
    assert rows["alpha"].latest_return == 3.0 and rows["alpha"].best_return == 5.0
    assert rows["gamma"].status == "interrupted"
    assert rows["delta"].status == "running"
    assert rows["beta"].status == "failed" and rows["beta"].error == "ValueError: boom"
    assert rows["zeta"].status == "failed" and "corrupt" in (rows["zeta"].error or "")


def test_run_index_reads_only_appended_metrics(runs_dir: Path) -> None:
    index = RunIndex(runs_dir)
    index.scan()
    with open(runs_dir / "alpha" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 999, "episode_return": 11.0}) + "\n")
        fh.write('{"step": 1000, "episode_ret')  # torn line: not yet counted
    row = next(r for r in index.scan() if r.name == "alpha")
    assert (row.latest_return, row.best_return) == (11.0, 11.0)
    with open(runs_dir / "alpha" / "metrics.jsonl", "a") as fh:
        fh.write('urn": -4.0}\n')
    row = next(r for r in index.scan() if r.name == "alpha")
    assert (row.latest_return, row.best_return) == (-4.0, 11.0)


def test_filter_and_sort_helpers(runs_dir: Path) -> None:
    rows = RunIndex(runs_dir).scan()
    assert [r.name for r in filter_rows(rows, "status:fail")] == ["beta", "zeta"]
    assert [r.name for r in filter_rows(rows, "forage")] == ["beta"]
    assert [r.name for r in filter_rows(rows, "algo:ppo status:done")] == ["alpha"]
    assert [r.name for r in sort_rows(rows, "best_return", True)][:2] == ["gamma", "alpha"]
    assert [r.name for r in sort_rows(rows, "name", False)] == ["alpha", "beta", "delta", "gamma", "zeta"]


async def test_runs_screen_lists_filters_and_sorts(runs_dir: Path) -> None:
    app = LabApp(runs_dir, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 5)
        table = app.screen.query_one("#runs", DataTable)
        # newest first by created; the corrupt run has no created -> last
        assert table_keys(table) == ["delta", "gamma", "beta", "alpha", "zeta"]
        assert str(table.get_cell("gamma", "status")) == "interrupted"
        assert str(table.get_cell("zeta", "status")) == "failed"
        # the corrupt run's reason is shown when selected
        table.move_cursor(row=4)
        await pilot.pause()
        assert "corrupt" in str(app.screen.query_one("#run-info", Static).render())

        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"status:fail")
        await pilot.pause()
        assert table_keys(table) == ["beta", "zeta"]
        await pilot.press("enter")  # back to the table
        assert app.focused is table
        await pilot.press("escape")  # clears the filter
        await pilot.pause()
        assert table.row_count == 5

        await pilot.press("s")  # created -> name
        await pilot.pause()
        assert table_keys(table) == ["alpha", "beta", "delta", "gamma", "zeta"]
        await pilot.press("r")
        await pilot.pause()
        assert table_keys(table) == ["zeta", "gamma", "delta", "beta", "alpha"]


async def test_runs_screen_updates_live(runs_dir: Path) -> None:
    app = LabApp(runs_dir, poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 5)
        table = app.screen.query_one("#runs", DataTable)
        RunStore(runs_dir).get("alpha").log_metrics({"step": 5000, "episode_return": 42.0})
        make_run(RunStore(runs_dir), "omega", created="2024-02-01T00:00:00+00:00", returns=[0.5])
        for _ in range(100):
            await pilot.pause(0.05)
            if table.row_count == 6 and str(table.get_cell("alpha", "best_return")) == "42":
                break
        assert table_keys(table)[0] == "omega"
        assert str(table.get_cell("alpha", "latest_return")) == "42"


async def test_empty_runs_dir_says_how_to_start(tmp_path: Path) -> None:
    app = LabApp(tmp_path / "nothing-here", poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(50):
            await pilot.pause(0.02)
            if app.runs_ready_at is not None:
                break
        assert "No runs" in str(app.screen.query_one("#run-info", Static).render())


async def test_help_screen_lists_keys(runs_dir: Path) -> None:
    from tui.screens.help import HelpScreen

    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 5)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        keys = str(app.screen.query_one("#help-keys", Static).render())
        assert "Launch" in keys and "Filter" in keys
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


def test_cli_rejects_a_file_as_runs_dir(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "rl_lab", "tui", "--runs-dir", str(f)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rl-lab: error: --runs-dir {f} is a file, not a directory"


def write_probe_file(run_dir: Path, step: int, scores: dict[tuple[str, str], float]) -> Path:
    """A probe results file following docs/design.md (records with hook, label, metric, score, ...)."""
    records = []
    for (hook, label), score in scores.items():
        records.append({
            "hook": hook, "label": label, "metric": "r2", "score": score,
            "baselines": {"mean": 0.0, "raw_obs": score / 2, "control_task": score / 4},
            "selectivity": score - score / 4, "ci": [score - 0.1, score + 0.1],
            "checkpoint": f"step_{step:09d}", "step": step,
            "linear_by_construction": label == "value" and hook == "value_net",
        })
    folder = run_dir / "probes"
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step:09d}.json"
    path.write_text(json.dumps({"schema_version": 1, "file": f"activations/step_{step:09d}.h5", "run": run_dir.name,
                                "checkpoint": f"step_{step:09d}", "records": records, "notes": ["a note"]}))
    return path


async def open_selected(app: LabApp, pilot: Any, name: str, key: str) -> None:
    await wait_for_rows(app, pilot, 1)
    table = app.screen.query_one("#runs", DataTable)
    table.move_cursor(row=table.get_row_index(name))
    await pilot.press(key)
    await pilot.pause()


async def test_detail_screen_shows_curves_config_and_artifacts(runs_dir: Path) -> None:
    import h5py

    from tui.screens.detail import RunDetailScreen
    from tui.widgets.chart import LineChart

    alpha = runs_dir / "alpha"
    (alpha / "checkpoints" / "step_000000512.zip").write_bytes(b"zip")
    (alpha / "activations").mkdir()
    with h5py.File(alpha / "activations" / "step_000000512.h5", "w") as f:  # half-written: no complete attr
        f.attrs["schema_version"] = 1
    app = LabApp(runs_dir, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "enter")
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.snapshot is not None and screen.snapshot.completeness:
                break
        assert "done" in str(screen.query_one("#detail-status", Static).render())
        assert screen.query_one("#chart-return", LineChart).ys == [1.0, 5.0, 3.0]
        assert "learning_rate" in str(screen.query_one("#detail-config", Static).render())
        await pilot.press("4")
        await pilot.pause()
        table = screen.query_one("#detail-artifacts", DataTable)
        cells = [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        assert any("checkpoint step_000000512.zip" in c for c in cells)
        assert any("activations step_000000512.h5" in c and "INCOMPLETE" in c for c in cells)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_detail_of_corrupt_run_says_why(runs_dir: Path) -> None:
    from tui.screens.detail import RunDetailScreen

    app = LabApp(runs_dir, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "zeta", "enter")
        assert isinstance(app.screen, RunDetailScreen)
        for _ in range(50):
            await pilot.pause(0.05)
            if app.screen.snapshot is not None:
                break
        assert "corrupt" in str(app.screen.query_one("#detail-status", Static).render())


async def test_probes_screen_grid_and_drill_down(runs_dir: Path) -> None:
    from tui.screens.probes import ProbeDetailScreen, ProbesScreen

    hooks, labels = ["mlp_extractor.value_net.1", "value_net"], ["value", "hunger", "threat"]
    write_probe_file(runs_dir / "alpha", 512, {(h, lab): 0.1 * (i + 1) for i, (h, lab) in enumerate((h, lab) for h in hooks for lab in labels)})
    write_probe_file(runs_dir / "alpha", 1024, {(h, lab): 0.9 for h in hooks for lab in labels})
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "p")
        screen = app.screen
        assert isinstance(screen, ProbesScreen)
        for _ in range(50):
            await pilot.pause(0.05)
            if screen.current is not None:
                break
        assert screen.current is not None and screen.current.path.name == "step_000001024.json"  # newest first
        grid = screen.query_one("#probe-grid", DataTable)
        assert grid.row_count == 2 and len(grid.columns) == 4
        cell = str(grid.get_cell("value_net", "value"))
        assert "0.900" in cell and "b0.450" in cell and "s+0.68" in cell and "†" in cell
        await pilot.press("n")  # the other checkpoint
        await pilot.pause()
        assert screen.current.path.name == "step_000000512.json"
        assert "0.100" in str(grid.get_cell("mlp_extractor.value_net.1", "value"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ProbeDetailScreen)
        assert [r.extra["step"] for r in app.screen.history] == [512, 1024]
        assert "CI [0, 0.200]" in str(app.screen.query_one("#probe-detail-text", Static).render())


async def test_probes_screen_reports_corrupt_and_missing_results(runs_dir: Path) -> None:
    from tui.screens.probes import ProbesScreen

    (runs_dir / "beta" / "probes").mkdir()
    (runs_dir / "beta" / "probes" / "step_000000064.json").write_text('{"records": [')
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "beta", "p")
        assert isinstance(app.screen, ProbesScreen)
        for _ in range(50):
            await pilot.pause(0.05)
            if app.screen.current is not None:
                break
        assert "cannot read step_000000064.json" in str(app.screen.query_one("#probe-notes", Static).render())
        await pilot.press("escape")
        await open_selected(app, pilot, "gamma", "p")
        await pilot.pause(0.2)
        assert "No probe results" in str(app.screen.query_one("#probe-notes", Static).render())


async def test_command_palette_opens_a_run(runs_dir: Path) -> None:
    from tui.screens.detail import RunDetailScreen

    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 5)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Open run gamma")
        for _ in range(40):
            await pilot.pause(0.05)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, RunDetailScreen) and app.screen.run_name == "gamma"


def write_activation_file(path: Path, episodes: int = 3, length: int = 12, complete: bool = True, dim: int = 8) -> Path:
    """An activation file following the design.md schema (written with h5py, resizable datasets)."""
    import h5py
    import numpy as np

    n = episodes * length
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs.update({"schema_version": 1, "run": path.parents[1].name, "checkpoint": path.stem,
                        "env_id": "lab/Forage-v0", "policy_kind": "sb3", "gamma": 0.99, "complete": False,
                        "n_steps": n, "n_episodes": episodes})
        steps = f.create_group("steps")
        steps.create_dataset("obs", data=rng.normal(size=(n, 4)).astype("float32"), maxshape=(None, 4))
        steps.create_dataset("action", data=np.arange(n) % 3, maxshape=(None,))
        steps.create_dataset("reward", data=np.ones(n, dtype="float32"), maxshape=(None,))
        steps.create_dataset("done", data=(np.arange(n) % length) == length - 1, maxshape=(None,))
        steps.create_dataset("episode", data=np.repeat(np.arange(episodes), length), maxshape=(None,))
        steps.create_dataset("t", data=np.tile(np.arange(length), episodes), maxshape=(None,))
        steps.create_dataset("text", data=[f"ep{e} t{t}\n#..@..#" for e in range(episodes) for t in range(length)],
                             dtype=h5py.string_dtype("utf-8"), maxshape=(None,))
        labels = f.create_group("labels")
        ds = labels.create_dataset("hunger", data=np.tile(np.linspace(0, 1, length), episodes).astype("float32"))
        ds.attrs.update({"kind": "continuous", "description": "how hungry", "linear_in": "[]"})
        acts = f.create_group("acts")
        acts.create_dataset("mlp_extractor.policy_net.1", data=rng.normal(size=(n, dim)).astype("float32"))
        acts.create_dataset("value_net", data=np.arange(n, dtype="float32").reshape(n, 1))
        if complete:
            f.attrs["complete"] = True
    return path


async def test_replay_steps_through_an_episode(runs_dir: Path) -> None:
    from tui.screens.replay import ReplayScreen

    write_activation_file(runs_dir / "alpha" / "activations" / "step_000000512.h5")
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "e")
        screen = app.screen
        assert isinstance(screen, ReplayScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.episode is not None:
                break
        assert screen.episode is not None and len(screen.episode) == 12
        assert str(screen.query_one("#replay-text", Static).render()).startswith("ep0 t0")
        await pilot.press("right", "right")
        assert str(screen.query_one("#replay-text", Static).render()).startswith("ep0 t2")
        assert "hunger" in str(screen.query_one("#replay-labels", Static).render())
        await pilot.press("right_square_bracket")  # next episode: only its rows are read
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.episode.index == 1:
                break
        assert screen.episode.start == 12
        assert str(screen.query_one("#replay-text", Static).render()).startswith("ep1 t0")
        await pilot.press("h")  # the other hook, same step
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.episode.hook == "value_net":
                break
        assert screen.episode.acts[0] == [12.0]


async def test_replay_of_half_written_file_is_marked(runs_dir: Path) -> None:
    from tui.screens.replay import ReplayScreen

    write_activation_file(runs_dir / "alpha" / "activations" / "step_000000064.h5", complete=False)
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "e")
        screen = app.screen
        assert isinstance(screen, ReplayScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.episode is not None:
                break
        assert "INCOMPLETE" in str(screen.query_one("#replay-info", Static).render())


async def test_features_screen_sorts_latents_and_shows_top_steps(runs_dir: Path) -> None:
    from tui.screens.features import FeaturesScreen

    write_activation_file(runs_dir / "alpha" / "activations" / "step_000000512.h5")
    sae = runs_dir / "alpha" / "saes" / "sae-a"
    sae.mkdir(parents=True)
    latents = [{"index": i, "density": d, "associations": {"hunger": a},
                "histogram": {"edges": [0, 1, 2], "counts": [3, 1]}, "top_steps": [{"row": 13, "activation": 2.5}]}
               for i, (d, a) in enumerate([(0.1, 0.0), (0.5, -0.9), (0.3, 0.4)])]
    (sae / "features.json").write_text(json.dumps({"hook": "mlp_extractor.policy_net.1", "features": latents}))
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "f")
        screen = app.screen
        assert isinstance(screen, FeaturesScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.order:
                break
        assert screen.order == [1, 2, 0]  # by density, highest first
        await pilot.press("a")  # by |association with hunger|
        assert screen.order == [1, 2, 0] and screen.sort_label == "hunger"
        await pilot.press("d", "d")  # back to density, then ascending
        assert screen.order == [0, 2, 1]
        for _ in range(100):
            await pilot.pause(0.05)
            if "ep1 t1" in str(screen.query_one("#latent-steps", Static).render()):
                break
        steps = str(screen.query_one("#latent-steps", Static).render())
        assert "▶ row 13" in steps and "ep1 t0" in steps and "ep1 t3" in steps and "ep0" not in steps


async def test_features_screen_without_features_json_says_so(runs_dir: Path) -> None:
    from tui.screens.features import FeaturesScreen

    (runs_dir / "alpha" / "saes" / "sae-b").mkdir(parents=True)
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "f")
        assert isinstance(app.screen, FeaturesScreen)
        for _ in range(50):
            await pilot.pause(0.05)
            if app.screen.features is not None:
                break
        assert "no features.json" in str(app.screen.query_one("#features-info", Static).render())
