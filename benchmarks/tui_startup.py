"""Start-up and responsiveness of the terminal app (``rl-lab tui``) with 1,000 runs on disk.

Measures, each in a fresh Python process (so imports count), headless via ``App.run_test``:

- ``first_paint_s``: script start -> the app's first screen refresh;
- ``interactive_s``: script start -> the runs table holds all 1,000 runs and a key press
  (cursor down) has been handled;
- ``reference_first_paint_s`` / ``reference_interactive_s``: the same for a bare Textual app
  with an empty ``DataTable`` (the floor Textual itself sets);
- ``feature_switch_ms``: median time to move from one latent to the next on the Features
  screen of a 4,096-latent SAE (fake ``features.json``), beside ``reference_switch_ms``, the
  same key press in a bare 4,096-row ``DataTable``.

Usage: ``python benchmarks/tui_startup.py`` (about a minute on 2 cores). The last line is JSON.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

N_RUNS = 1000
N_LATENTS = 4096
REPEATS = 3
SIZE = (120, 40)


def make_runs(root: Path, n: int = N_RUNS, metrics_lines: int = 50) -> None:
    """``n`` finished runs with ``run.json`` and ``metrics.jsonl``, plus one SAE with features."""
    rng = random.Random(0)
    for i in range(n):
        d = root / f"run-{i:04d}"
        (d / "checkpoints").mkdir(parents=True)
        info = {"name": d.name, "env_id": rng.choice(["lab/Forage-v0", "CartPole-v1"]), "algo": rng.choice(["ppo", "a2c", "dqn"]),
                "status": "done", "pid": None, "created": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                "updated": "2024-01-02T00:00:00+00:00", "seed": i, "total_timesteps": 50_000, "steps_done": 50_000,
                "config": {"learning_rate": 3e-4}, "versions": {}, "error": None}
        (d / "run.json").write_text(json.dumps(info))
        with open(d / "metrics.jsonl", "w") as fh:
            for k in range(metrics_lines):
                fh.write(json.dumps({"step": k * 1000, "time": k, "episode_return": rng.random() * 100,
                                     "episode_length": 100, "fps": 900}) + "\n")
    sae = root / "run-0000" / "saes" / "sae-4096"
    sae.mkdir(parents=True)
    latents = [{"index": j, "density": rng.random() * 0.05,
                "associations": {"hunger": rng.uniform(-1, 1), "threat": rng.uniform(-1, 1)},
                "histogram": {"edges": [0, 1, 2, 3, 4, 5, 6, 7, 8], "counts": [rng.randint(0, 99) for _ in range(8)]},
                "top_steps": [{"row": rng.randint(0, 99), "activation": rng.random()} for _ in range(10)]}
               for j in range(N_LATENTS)]
    (sae / "features.json").write_text(json.dumps({"hook": "mlp_extractor.policy_net.1", "features": latents}))
    import h5py
    import numpy as np

    acts = root / "run-0000" / "activations"
    acts.mkdir()
    with h5py.File(acts / "step_000050000.h5", "w") as f:
        f.attrs.update({"schema_version": 1, "complete": True, "env_id": "lab/Forage-v0"})
        s = f.create_group("steps")
        s.create_dataset("episode", data=np.repeat(np.arange(10), 10))
        s.create_dataset("t", data=np.tile(np.arange(10), 10))
        s.create_dataset("text", data=[f"step {r}\n#..@..#" for r in range(100)], dtype=h5py.string_dtype("utf-8"))
        f.create_group("acts").create_dataset("mlp_extractor.policy_net.1", data=np.zeros((100, 4), "float32"))


async def child_lab(runs: Path) -> dict[str, float]:
    from textual.widgets import DataTable

    from tui.app import LabApp

    app = LabApp(runs)
    async with app.run_test(size=SIZE) as pilot:
        while app.first_paint_at is None or app.runs_ready_at is None:
            await pilot.pause(0.001)
        table = app.screen.query_one("#runs", DataTable)
        assert table.row_count == N_RUNS, table.row_count
        await pilot.press("down")
        assert table.cursor_row == 1
        interactive = time.perf_counter()
    return {"first_paint_s": app.first_paint_at - T0, "interactive_s": interactive - T0}


async def child_reference() -> dict[str, float]:
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    class Bare(App[None]):
        painted: float | None = None

        def compose(self) -> ComposeResult:
            yield DataTable()

        def on_mount(self) -> None:
            self.call_after_refresh(lambda: setattr(self, "painted", time.perf_counter()))

    app = Bare()
    async with app.run_test(size=SIZE) as pilot:
        while app.painted is None:
            await pilot.pause(0.001)
        await pilot.press("down")
        interactive = time.perf_counter()
    return {"first_paint_s": app.painted - T0, "interactive_s": interactive - T0}


async def child_features(runs: Path) -> dict[str, float]:
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable, Static

    from tui.app import LabApp
    from tui.screens.features import FeaturesScreen

    app = LabApp(runs)
    times = []
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(FeaturesScreen("run-0000"))
        screen = app.screen
        while screen.current is None:
            await pilot.pause(0.005)
        summary = screen.query_one("#latent-summary", Static)
        for _ in range(60):
            before = screen.current.index
            t = time.perf_counter()
            await pilot.press("down")
            while screen.current.index == before:
                await pilot.pause(0)
            times.append(time.perf_counter() - t)
            assert f"latent {screen.current.index}" in str(summary.render())

    class Bare(App[None]):
        def compose(self) -> ComposeResult:
            table: DataTable[str] = DataTable(cursor_type="row")
            table.add_columns("latent", "density")
            table.add_rows([(str(i), "0.01") for i in range(N_LATENTS)])
            yield table

    ref = []
    bare = Bare()
    async with bare.run_test(size=SIZE) as pilot:
        table = bare.query_one(DataTable)
        table.focus()
        await pilot.pause()
        for _ in range(60):
            before = table.cursor_row
            t = time.perf_counter()
            await pilot.press("down")
            while table.cursor_row == before:
                await pilot.pause(0)
            ref.append(time.perf_counter() - t)
    return {"feature_switch_ms": statistics.median(times[10:]) * 1000,
            "reference_switch_ms": statistics.median(ref[10:]) * 1000}


def run_child(kind: str, runs: Path) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(runs)], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), timeout=240)
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import asyncio

        kind, runs = sys.argv[2], Path(sys.argv[3])
        coro = {"lab": lambda: child_lab(runs), "ref": child_reference, "features": lambda: child_features(runs)}[kind]()
        print(json.dumps(asyncio.run(coro)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        t = time.perf_counter()
        make_runs(runs)
        print(f"wrote {N_RUNS} runs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        lab, ref = [], []
        for i in range(REPEATS):
            lab.append(run_child("lab", runs))
            ref.append(run_child("ref", runs))
            print(f"repeat {i + 1}: lab {lab[-1]}  reference {ref[-1]}", file=sys.stderr)
        feats = run_child("features", runs)
        print(f"features: {feats}", file=sys.stderr)
    med = lambda rows, key: round(statistics.median(r[key] for r in rows), 4)  # noqa: E731
    print(json.dumps({
        "name": "tui_startup",
        "n_runs": N_RUNS,
        "first_paint_s": med(lab, "first_paint_s"),
        "interactive_s": med(lab, "interactive_s"),
        "reference_first_paint_s": med(ref, "first_paint_s"),
        "reference_interactive_s": med(ref, "interactive_s"),
        "n_latents": N_LATENTS,
        "feature_switch_ms": round(feats["feature_switch_ms"], 2),
        "reference_switch_ms": round(feats["reference_switch_ms"], 2),
    }))


if __name__ == "__main__":
    main()
