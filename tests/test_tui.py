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

from probes.layout import RunLayout, RunsDirLayout, SAELayout
from rl_lab.runs import RunStore
from tui.app import LabApp
from tui.data import RunIndex, filter_rows, group_sweeps, sort_rows
from tui.screens.runs import RunsScreen

SIZE = (100, 40)


def run_at(runs_dir: Path, name: str) -> RunLayout:
    """The layout of run ``name`` in ``runs_dir``."""
    return RunLayout(RunsDirLayout(runs_dir).run_dir(name))


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
    corrupt = store.layout.run_dir("zeta")
    corrupt.mkdir()
    RunLayout(corrupt).run_json.write_text('{"name": "zeta", "status": ')  # half-written
    store.layout.run_dir("not-a-run").mkdir()  # no run.json: ignored
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
    with open(run_at(runs_dir, "alpha").metrics_path, "a") as fh:
        fh.write(json.dumps({"step": 999, "episode_return": 11.0}) + "\n")
        fh.write('{"step": 1000, "episode_ret')  # torn line: not yet counted
    row = next(r for r in index.scan() if r.name == "alpha")
    assert (row.latest_return, row.best_return) == (11.0, 11.0)
    with open(run_at(runs_dir, "alpha").metrics_path, "a") as fh:
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
    make_sweep(RunStore(runs_dir))
    rows = RunIndex(runs_dir).scan()
    assert sorted(r.name for r in filter_rows(rows, "sweep:sw lr_0.01")) == [f"sw-CartPole-v1-ppo-s{s}-lr_0.01" for s in range(3)]
    groups = group_sweeps(rows)
    assert list(groups) == ["sw"] and [r.seed for r in groups["sw"]["CartPole-v1 ppo lr_0.001"]] == [0, 1, 2]


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
            if table.row_count == 6 and str(table.get_cell("alpha", "best_return")).strip() == "42":
                break
        assert table_keys(table)[0] == "omega"
        assert str(table.get_cell("alpha", "latest_return")).strip() == "42"


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


def write_probe_file(run_dir: Path, step: int, scores: dict[tuple[str, str], float],
                     replay: str | None = None) -> Path:
    """A probe results file following docs/design.md (records with hook, label, metric, score, ...);
    ``replay``: of the run's recording on that run's episodes (``probes/replay/<replay>/``)."""
    records = []
    for (hook, label), score in scores.items():
        records.append({
            "hook": hook, "label": label, "metric": "r2", "score": score,
            "baselines": {"mean": 0.0, "raw_obs": score / 2, "control_task": score / 4},
            "selectivity": score - score / 4, "ci": [score - 0.1, score + 0.1],
            "checkpoint": f"step_{step:09d}", "step": step,
            "linear_by_construction": label == "value" and hook == "value_net",
        })
    run = RunLayout(run_dir)
    run.probes_folder(replay).mkdir(parents=True, exist_ok=True)
    path = run.probe_results_path(f"step_{step:09d}", replay)
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

    alpha = run_at(runs_dir, "alpha")
    (alpha.checkpoints_dir / "step_000000512.zip").write_bytes(b"zip")
    alpha.activations_dir.mkdir()
    with h5py.File(alpha.activation_path("step_000000512"), "w") as f:  # half-written: no complete attr
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
    write_probe_file(run_at(runs_dir, "alpha").path, 512, {(h, lab): 0.1 * (i + 1) for i, (h, lab) in enumerate((h, lab) for h in hooks for lab in labels)})
    write_probe_file(run_at(runs_dir, "alpha").path, 1024, {(h, lab): 0.9 for h in hooks for lab in labels})
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
        assert [r.step for r in app.screen.history] == [512, 1024]
        assert "CI [0, 0.200]" in str(app.screen.query_one("#probe-detail-text", Static).render())


async def test_probes_screen_reports_corrupt_and_missing_results(runs_dir: Path) -> None:
    from tui.screens.probes import ProbesScreen

    beta = run_at(runs_dir, "beta")
    beta.probes_dir.mkdir()
    beta.probe_results_path("step_000000064").write_text('{"records": [')
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

    write_activation_file(run_at(runs_dir, "alpha").activation_path("step_000000512"))
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


async def test_recordings_on_another_runs_episodes_are_listed_and_opened(runs_dir: Path) -> None:
    from tui.screens.detail import RunDetailScreen
    from tui.screens.probes import ProbeDetailScreen, ProbesScreen
    from tui.screens.replay import ReplayScreen

    alpha = run_at(runs_dir, "alpha")
    write_activation_file(alpha.activation_path("step_000000512"))
    replayed = write_activation_file(alpha.activation_path("step_000000512", "beta"), episodes=2)
    scores = {("value_net", "hunger"): 0.5}
    write_probe_file(alpha.path, 256, scores)
    write_probe_file(alpha.path, 512, scores)
    write_probe_file(alpha.path, 512, {("value_net", "hunger"): 0.25}, replay="beta")
    app = LabApp(runs_dir, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "enter")
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        await pilot.press("4")
        table = screen.query_one("#detail-artifacts", DataTable)
        for _ in range(100):
            await pilot.pause(0.05)
            if table.row_count >= 5:
                break
        cells = [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        assert any(c.startswith("activations step_000000512.h5") for c in cells)
        assert any(c.startswith("activations replay/beta/step_000000512.h5") for c in cells)
        assert any(c.startswith("probes replay/beta/step_000000512.json") for c in cells)
        table.focus()
        table.move_cursor(row=table.get_row_index(f"activations:{replayed}"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ReplayScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if app.screen.episode is not None:
                break
        assert app.screen.meta.path == replayed  # the replay's file, not the run's own of the same name
        await pilot.press("escape", "escape")
        await pilot.pause()
        await open_selected(app, pilot, "alpha", "p")
        probes = app.screen
        assert isinstance(probes, ProbesScreen)
        for _ in range(50):
            await pilot.pause(0.05)
            if probes.current is not None:
                break
        assert probes.current.path == alpha.probe_results_path("step_000000512")  # its own newest first
        await pilot.press("n")
        await pilot.pause()
        assert probes.current.path == alpha.probe_results_path("step_000000512", "beta")
        assert "0.250" in str(probes.query_one("#probe-grid", DataTable).get_cell("value_net", "hunger"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ProbeDetailScreen)
        assert [r.score for r in app.screen.history] == [0.25]  # not mixed with its own episodes' results


async def test_replay_of_half_written_file_is_marked(runs_dir: Path) -> None:
    from tui.screens.replay import ReplayScreen

    write_activation_file(run_at(runs_dir, "alpha").activation_path("step_000000064"), complete=False)
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


def write_sae_features(run_dir: Path, name: str = "sae-a", episodes: int = 6, length: int = 20) -> Path:
    """An activation file, a TopK SAE and its feature statistics, all written by the real writers
    (``ActivationWriter``, ``probes.sae.model.save_sae``, ``probes.sae.features.compute_features``).

    Latent 0 reads the first activation dimension, which carries the label ``hunger``.
    """
    import numpy as np
    import torch

    from probes.activations import ActivationWriter
    from probes.sae.config import make_config
    from probes.sae.features import compute_features
    from probes.sae.model import make_sae, save_sae

    hook, n, d = "mlp_extractor.policy_net.1", episodes * length, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    ep, t = np.repeat(np.arange(episodes), length), np.tile(np.arange(length), episodes)
    meta = {"hunger": {"kind": "continuous", "description": "how hungry", "linear_in": []},
            "threat": {"kind": "discrete", "description": "predator near", "linear_in": []}}
    path = RunLayout(run_dir).activation_path("step_000000512")
    path.parent.mkdir(parents=True, exist_ok=True)
    with ActivationWriter(path, {"run": run_dir.name, "env_id": "lab/Forage-v0"}, label_meta=meta) as w:
        w.append({"obs": x[:, :2], "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
                  "done": t == length - 1, "episode": ep, "t": t,
                  "text": [f"ep{e} t{k}\n#..@..#" for e, k in zip(ep, t)]},
                 {"hunger": x[:, 0] * 2 + 0.05 * rng.standard_normal(n), "threat": (x[:, 1] > 0.5).astype(np.int64)},
                 {hook: x})
    torch.manual_seed(0)
    sae = make_sae(make_config("topk", d_in=d, d_sae=16, k=3, hook_name=hook))
    with torch.no_grad():
        sae.W_enc[:, 0] = 0
        sae.W_enc[0, 0] = 3.0
    sae_dir = RunLayout(run_dir).sae_dir(name)
    save_sae(sae, sae_dir)
    compute_features(sae_dir, path, n_top=5, context=1, bins=8, progress=False)
    return sae_dir


async def wait_features(app: LabApp, pilot: Any) -> Any:
    from tui.screens.features import FeaturesScreen

    screen = app.screen
    assert isinstance(screen, FeaturesScreen)
    for _ in range(300):  # the worker imports torch on first use
        await pilot.pause(0.05)
        if screen.store is not None or screen.error is not None:
            break
    return screen


async def test_features_screen_sorts_latents_and_shows_top_steps(runs_dir: Path) -> None:
    from probes.features import FeatureStore
    from tui.widgets.panel import TextPanel

    sae_dir = write_sae_features(run_at(runs_dir, "alpha").path)
    store = FeatureStore(sae_dir)
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "f")
        screen = await wait_features(app, pilot)
        assert screen.error is None
        assert screen.order == [int(i) for i in store.sorted_by("density")]
        info = str(screen.query_one("#features-info", Static).render())
        assert "16 latents" in info and "hunger (cont)" in info and "threat (disc)" in info
        await pilot.press("a")  # by association with hunger: latent 0 carries it
        assert screen.sort_label == "hunger" and screen.order[0] == 0
        await pilot.pause()
        summary = str(screen.query_one("#latent-summary", TextPanel).render())
        r = store.latent(0)["labels"]["hunger"]["pearson"]
        assert summary.startswith("latent 0 ") and f"hunger r {r:+.2f}" in summary and r > 0.8
        top = store.latent(0)["top"]
        steps = str(screen.query_one("#latent-steps", TextPanel).render())
        first = top[0]
        assert f"top step 1/{len(top)}: row {first['row']} · episode {first['episode']} · t {first['t']}" in steps
        assert f"▶ row {first['row']}" in steps and f"ep{first['episode']} t{first['t']}" in steps
        for ctx in first["context"]:  # neighbours in the same episode only
            assert f"ep{first['episode']} t{first['t'] + ctx['offset']}" in steps
        await pilot.press("right_square_bracket")
        steps = str(screen.query_one("#latent-steps", TextPanel).render())
        assert f"top step 2/{len(top)}: row {top[1]['row']}" in steps
        await pilot.press("d", "d")  # back to density, then ascending
        assert screen.sort_label is None
        assert screen.order == [int(i) for i in store.sorted_by("density", descending=False)]
        await pilot.press("down")
        await pilot.pause()
        assert screen.current == screen.order[1]
        assert str(screen.query_one("#latent-summary", TextPanel).render()).startswith(f"latent {screen.order[1]} ")


@pytest.mark.parametrize("content", [None, "old"])
async def test_features_screen_without_feature_statistics_says_so(runs_dir: Path, content: str | None) -> None:
    sae = SAELayout(run_at(runs_dir, "alpha").sae_dir("sae-b"))
    sae.path.mkdir(parents=True)
    if content == "old":  # an analysis from before probes.features: features.json alone
        sae.features_path.write_text(json.dumps({"features": [{"index": 0, "density": 0.1}]}))
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await open_selected(app, pilot, "alpha", "f")
        screen = await wait_features(app, pilot)
        assert screen.store is None and screen.order == []
        info = str(screen.query_one("#features-info", Static).render())
        assert "sae-b has no feature statistics yet" in info and "python -m probes.features" in info


def test_quick_scan_reads_large_metrics_from_the_tail(runs_dir: Path) -> None:
    big = run_at(runs_dir, "alpha").metrics_path
    with open(big, "a") as fh:
        for i in range(3000):  # > RunIndex.TAIL_BYTES
            fh.write(json.dumps({"step": 10_000 + i, "time": 0.0, "episode_return": 100.0 if i == 5 else float(i % 7),
                                 "episode_length": 20, "fps": 500}) + "\n")
    assert big.stat().st_size > RunIndex.TAIL_BYTES
    index = RunIndex(runs_dir)
    quick = {r.name: r for r in index.scan(quick=True)}
    assert quick["alpha"].latest_return == float(2999 % 7) and quick["alpha"].best_return is None
    assert quick["alpha"].returns_partial and not quick["gamma"].returns_partial
    assert quick["gamma"].best_return == 9.0  # small files are read whole even by a quick scan
    full = {r.name: r for r in index.scan()}
    assert (full["alpha"].latest_return, full["alpha"].best_return) == (float(2999 % 7), 100.0)
    assert not full["alpha"].returns_partial


def test_quick_scan_reads_metrics_of_the_newest_runs_only(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunIndex, "QUICK_ROWS", 2)
    index = RunIndex(runs_dir)
    quick = index.scan(quick=True)
    assert [r.name for r in quick] == ["delta", "gamma", "beta", "alpha", "zeta"]  # newest first, as before
    assert [r.returns_partial for r in quick] == [False, False, True, True, True]
    assert quick[1].latest_return == 7.0 and quick[3].latest_return is None and quick[3].best_return is None
    full = {r.name: r for r in index.scan()}
    assert (full["alpha"].latest_return, full["alpha"].best_return) == (3.0, 5.0)
    assert not any(r.returns_partial for r in full.values())


async def test_runs_table_completes_returns_after_a_quick_scan(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunIndex, "QUICK_ROWS", 1)
    app = LabApp(runs_dir, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 5)
        table = app.screen.query_one("#runs", DataTable)
        first = (str(table.get_cell("alpha", "latest_return")).strip(), str(table.get_cell("alpha", "best_return")).strip())
        for _ in range(100):
            await pilot.pause(0.05)
            if str(table.get_cell("alpha", "latest_return")).strip() != "…":
                break
        assert first == ("…", "…")  # not read by the quick scan (only the newest run was)
        assert str(table.get_cell("alpha", "latest_return")).strip() == "3"
        assert str(table.get_cell("alpha", "best_return")).strip() == "5"


def make_sweep(store: RunStore) -> None:
    """Sweep ``sw``: two conditions x three seeds, known returns; a record with one pending trial."""
    conditions = {"CartPole-v1 ppo lr_0.001": 10.0, "CartPole-v1 ppo lr_0.01": 40.0}
    for c, (cond, base) in enumerate(conditions.items()):
        for seed in range(3):
            name = f"sw-CartPole-v1-ppo-s{seed}-{cond.split()[-1]}"
            path = make_run(store, name, returns=[base * (k + 1) / 4 + seed for k in range(4)],
                            created=f"2024-03-01T00:0{c}:0{seed}+00:00")
            run_json = RunLayout(path).run_json
            info = json.loads(run_json.read_text())
            info.update(seed=seed, sweep="sw", sweep_condition=cond)
            run_json.write_text(json.dumps(info))
    record = {"schema_version": 1, "name": "sw", "status": "running", "backend": "local",
              "trials": [{"name": "sw-CartPole-v1-ppo-s3-lr_0.01", "condition": "CartPole-v1 ppo lr_0.01", "status": "pending"}],
              "summary": {"trials": 7, "done": 6, "failed": 0}}
    store.layout.sweeps_dir.mkdir()
    store.layout.sweep_record("sw").write_text(json.dumps(record))


def test_aggregate_curves_mean_and_band() -> None:
    from tui.data import aggregate_curves

    band = aggregate_curves([([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 4.0, 6.0]), ([2.0, 4.0], [4.0, 8.0])], points=4)
    assert band.steps == [1.75, 2.5, 3.25, 4.0] and band.n_curves == 2
    assert band.seeds == [1, 2, 2, 2]  # the second seed starts at step 2
    assert band.mean == [0.0, 3.0, 5.0, 7.0]  # the second seed is interpolated at 3.25
    assert band.high[1] - band.mean[1] == pytest.approx(2 ** 0.5) and band.low[0] == band.high[0] == 0.0


async def test_sweeps_screen_groups_trials_by_condition(runs_dir: Path) -> None:
    from tui.screens.sweeps import SweepsScreen
    from tui.widgets.chart import BandChart

    make_sweep(RunStore(runs_dir))
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 11)
        runs = app.screen.query_one("#runs", DataTable)
        runs.move_cursor(row=runs.get_row_index("sw-CartPole-v1-ppo-s1-lr_0.01"))
        await pilot.press("w")  # the sweeps screen, on the selected run's sweep
        screen = app.screen
        assert isinstance(screen, SweepsScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if screen.view is not None:
                break
        assert screen.view is not None and screen.view.name == "sw"
        table = screen.query_one("#sweep-conditions", DataTable)
        assert table_keys(table) == ["CartPole-v1 ppo lr_0.001", "CartPole-v1 ppo lr_0.01"]
        assert [str(c) for c in table.get_row_at(0)] == ["CartPole-v1 ppo lr_0.001", "3/3", "7.25 ± 1"]
        assert [str(c) for c in table.get_row_at(1)][1:] == ["3/4", "26 ± 1"]  # one trial still pending
        info = str(screen.query_one("#sweep-info", Static).render())
        assert "sw  running  trials 6 done / 0 failed of 7" in info and "2 conditions, 6 trial runs" in info
        chart = screen.query_one("#sweep-chart", BandChart)
        assert chart.mean[-1] == pytest.approx(11.0) and chart.high[-1] == pytest.approx(12.0)  # seeds 10, 11, 12
        assert "lr_0.001" in chart.title and "3 seeds" in chart.title
        await pilot.press("down")
        await pilot.pause()
        assert "lr_0.01:" in chart.title and chart.mean[-1] == pytest.approx(41.0)
        await pilot.press("o")
        await pilot.pause()
        from tui.screens.detail import RunDetailScreen

        assert isinstance(app.screen, RunDetailScreen) and app.screen.run_name == "sw-CartPole-v1-ppo-s0-lr_0.01"


async def test_sweeps_screen_without_sweeps_says_so(runs_dir: Path) -> None:
    app = LabApp(runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_rows(app, pilot, 5)
        await pilot.press("w")
        for _ in range(50):
            await pilot.pause(0.05)
            if "No sweeps" in str(app.screen.query_one("#sweep-info", Static).render()):
                break
        assert "No sweeps" in str(app.screen.query_one("#sweep-info", Static).render())


async def test_fast_table_matches_data_table() -> None:
    """FastTable's batch insert and cheap column sizing give what DataTable's own methods give."""
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.widgets.data_table import DuplicateKey

    from tui.widgets.table import FastTable

    rows = [(f"k{i}", (f"name-{i}" * (1 + i % 3), Text("done", style="green"), f"{i * 1.5:8.2f}", "[b]bold[/b]" if i == 7 else "x"))
            for i in range(40)]

    class Two(App[None]):
        def compose(self) -> ComposeResult:
            for id_ in ("plain", "fast"):
                table = (FastTable if id_ == "fast" else DataTable)(id=id_)
                table.add_columns("a", "b", "c", "d")
                yield table

    app = Two()
    async with app.run_test(size=(120, 30)) as pilot:
        plain, fast = app.query_one("#plain", DataTable), app.query_one("#fast", FastTable)
        for key, cells in rows:
            plain.add_row(*cells, key=key)
        fast.add_keyed_rows(rows)
        await pilot.pause()
        assert fast.row_count == plain.row_count == 40
        assert [fast.get_row_at(i) for i in range(40)] == [plain.get_row_at(i) for i in range(40)]
        assert [c.content_width for c in fast.ordered_columns] == [c.content_width for c in plain.ordered_columns]
        assert fast.virtual_size == plain.virtual_size
        assert fast.get_row_index("k39") == 39
        for value in ("a much longer value than before", "short", Text("styled, wider still than those")):
            for table in (plain, fast):
                table.update_cell("k5", table.ordered_columns[0].key, value, update_width=True)
                table.update_cell("k9", table.ordered_columns[3].key, "[i]x[/i]", update_width=True)
            await pilot.pause()
            assert [c.content_width for c in fast.ordered_columns] == [c.content_width for c in plain.ordered_columns]
        with pytest.raises(DuplicateKey):
            fast.add_keyed_rows([("k3", ("again",))])
