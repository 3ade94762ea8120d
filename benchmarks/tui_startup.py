"""Start-up and responsiveness of the terminal app (``rl-lab tui``) with 1,000 runs on disk.

Measures, each in a fresh Python process (so imports count), headless via ``App.run_test``:

- ``first_paint_s``: script start -> the app's first screen refresh;
- ``interactive_s``: script start -> the runs table holds all 1,000 runs and a key press
  (cursor down) has been handled;
- ``reference_first_paint_s`` / ``reference_interactive_s``: the same for a bare Textual app
  with an empty ``DataTable`` (the floor Textual itself sets);
- ``interactive_cpu_s`` / ``reference_interactive_cpu_s``: CPU time of the process at that
  point, imports included — unlike wall-clock times, barely affected by other jobs competing
  for the cores;
- ``feature_switch_ms``: median time to move from one latent to the next on the Features
  screen of a 4,096-latent TopK SAE whose statistics ``probes.sae.features.compute_features``
  wrote (``features.json`` + ``features.npz``) over a 2,000-row activation file, beside ``reference_switch_ms``, the
  same key press in a bare 4,096-row ``DataTable`` (and ``*_cpu_ms``: CPU time per switch).

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

from probes.layout import RunLayout, RunsDirLayout  # noqa: E402

N_RUNS = 1000
N_LATENTS = 4096
REPEATS = 3
SIZE = (120, 40)


def make_runs(root: Path, n: int = N_RUNS, metrics_lines: int = 50) -> None:
    """``n`` finished runs with ``run.json`` and ``metrics.jsonl``, plus one SAE with features."""
    rng = random.Random(0)
    for i in range(n):
        d = RunLayout(RunsDirLayout(root).run_dir(f"run-{i:04d}"))
        d.checkpoints_dir.mkdir(parents=True)
        info = {"name": d.path.name, "env_id": rng.choice(["lab/Forage-v0", "CartPole-v1"]), "algo": rng.choice(["ppo", "a2c", "dqn"]),
                "status": "done", "pid": None, "created": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                "updated": "2024-01-02T00:00:00+00:00", "seed": i, "total_timesteps": 50_000, "steps_done": 50_000,
                "config": {"learning_rate": 3e-4}, "versions": {}, "error": None}
        d.run_json.write_text(json.dumps(info))
        with open(d.metrics_path, "w") as fh:
            for k in range(metrics_lines):
                fh.write(json.dumps({"step": k * 1000, "time": k, "episode_return": rng.random() * 100,
                                     "episode_length": 100, "fps": 900}) + "\n")
    make_sae_features(RunsDirLayout(root).run_dir("run-0000"))


def make_sae_features(run: Path, n_latents: int = N_LATENTS, rows: int = 2000, d_in: int = 16) -> Path:
    """A real activation file, a TopK SAE with ``n_latents`` latents and its feature statistics,
    written by ``probes.activations.ActivationWriter``, ``probes.sae.model.save_sae`` and
    ``probes.sae.features.compute_features`` (the format the Features screen reads)."""
    import numpy as np
    import torch

    from probes.activations import ActivationWriter
    from probes.sae.config import make_config
    from probes.sae.features import compute_features
    from probes.sae.model import make_sae, save_sae

    hook = "mlp_extractor.policy_net.1"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d_in)).astype(np.float32)
    ep_len = 50
    t = np.arange(rows) % ep_len
    meta = {"hunger": {"kind": "continuous", "description": "how hungry", "linear_in": []},
            "threat": {"kind": "discrete", "description": "predator near", "linear_in": []}}
    path = RunLayout(run).activation_path("step_000050000")
    path.parent.mkdir(parents=True, exist_ok=True)
    with ActivationWriter(path, {"run": run.name, "env_id": "lab/Forage-v0"}, label_meta=meta) as w:
        w.append({"obs": x[:, :4], "action": np.zeros(rows, np.int64), "reward": np.zeros(rows, np.float32),
                  "done": t == ep_len - 1, "episode": np.arange(rows) // ep_len, "t": t,
                  "text": [f"step {r}\n#..@..#\n#.....#" for r in range(rows)]},
                 {"hunger": x[:, 0] + 0.1 * rng.standard_normal(rows), "threat": (x[:, 1] > 0.5).astype(np.int64)},
                 {hook: x})
    torch.manual_seed(0)
    sae_dir = RunLayout(run).sae_dir(f"sae-{n_latents}")
    save_sae(make_sae(make_config("topk", d_in=d_in, d_sae=n_latents, k=8, hook_name=hook)), sae_dir)
    compute_features(sae_dir, path, progress=False)
    return sae_dir


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
        cpu = time.process_time()
    return {"first_paint_s": app.first_paint_at - T0, "interactive_s": interactive - T0, "interactive_cpu_s": cpu}


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
        cpu = time.process_time()
    return {"first_paint_s": app.painted - T0, "interactive_s": interactive - T0, "interactive_cpu_s": cpu}


async def child_features(runs: Path) -> dict[str, float]:
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from tui.app import LabApp
    from tui.screens.features import FeaturesScreen
    from tui.widgets.panel import TextPanel

    app = LabApp(runs)
    times: list[float] = []
    cpu: list[float] = []
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(FeaturesScreen("run-0000"))
        screen = app.screen
        while screen.current is None:
            await pilot.pause(0.005)
        assert len(screen.order) == N_LATENTS, len(screen.order)
        summary = screen.query_one("#latent-summary", TextPanel)
        for _ in range(60):
            before = screen.current
            t, c = time.perf_counter(), time.process_time()
            await pilot.press("down")
            while screen.current == before:
                await pilot.pause(0)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            assert f"latent {screen.current} " in str(summary.render())

    class Bare(App[None]):
        def compose(self) -> ComposeResult:
            table: DataTable[str] = DataTable(cursor_type="row")
            table.add_columns("latent", "density")
            table.add_rows([(str(i), "0.01") for i in range(N_LATENTS)])
            yield table

    ref: list[float] = []
    ref_cpu: list[float] = []
    bare = Bare()
    async with bare.run_test(size=SIZE) as pilot:
        table = bare.query_one(DataTable)
        table.focus()
        await pilot.pause()
        for _ in range(60):
            before = table.cursor_row
            t, c = time.perf_counter(), time.process_time()
            await pilot.press("down")
            while table.cursor_row == before:
                await pilot.pause(0)
            ref.append(time.perf_counter() - t)
            ref_cpu.append(time.process_time() - c)
    return {"feature_switch_ms": statistics.median(times[10:]) * 1000,
            "reference_switch_ms": statistics.median(ref[10:]) * 1000,
            "feature_switch_cpu_ms": statistics.median(cpu[10:]) * 1000,
            "reference_switch_cpu_ms": statistics.median(ref_cpu[10:]) * 1000}


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
        "interactive_cpu_s": med(lab, "interactive_cpu_s"),
        "reference_interactive_cpu_s": med(ref, "interactive_cpu_s"),
        "n_latents": N_LATENTS,
        "feature_switch_ms": round(feats["feature_switch_ms"], 2),
        "reference_switch_ms": round(feats["reference_switch_ms"], 2),
        "feature_switch_cpu_ms": round(feats["feature_switch_cpu_ms"], 2),
        "reference_switch_cpu_ms": round(feats["reference_switch_cpu_ms"], 2),
    }))


if __name__ == "__main__":
    main()
