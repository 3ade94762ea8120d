"""Bad input, table-driven: every case exits 2 with exactly one line on stderr and no traceback.

The commands run in-process (``rl_lab.cli.main`` and the ``probes`` scripts' ``main``); a few
run as real subprocesses to check the console entry point itself. ``{runs}`` is a copy of the
session's tiny run folder, ``{run}`` its run, ``{h5}`` its recording, ``{file}`` a plain file.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rl_lab.cli import main

RL = [
    # train: options validated before any run folder exists
    "train --seed -1 --name a", "train --seed 99999999999999999999 --name a", "train --lr -1 --name a",
    "train --lr nan --name a", "train --lr inf --name a", "train --gamma nan --name a", "train --gamma 2 --name a",
    "train --steps 0 --name a", "train --steps -5 --name a", "train --n-envs 0 --name a", "train --name ''",
    "train --name ../evil", "train --name sweeps", "train --name .hidden", "train --resume ''",
    "train --resume nope", "train --resume ../..", "train --resume {run} --name b", "train --env-kwargs [1]",
    "train --env-kwargs {{bad", "train --env nope/Nope-v9 --name a", "train --algo xyz --name a",
    "train --checkpoint-every 0 --name a", "train --from {run} --name a", "train --algo bc --name a",
    "train --algo bc --from {run} --trajectories ../../.. --name a",
    "train --algo bc --from {run} --trajectories '' --name a", "train --algo bc --from {run} --patience -1",
    "train --algo dt --from {run} --resume {run}", "train --steps abc",
    # runs / tui
    "runs --runs-dir {file}", "runs --json --runs-dir {file}", "tui --runs-dir {file}",
    # record
    "record nope", "record {run}", "record {run} --episodes 0", "record {run} --seed -3",
    "record {run} --checkpoint 77", "record {run} --checkpoint /nonexistent.zip", "record ''",
    "record {run} --checkpoint {file}",
    # probe
    "probe nope", "probe {h5} --labels nope", "probe {h5} --hooks nope", "probe {file}.h5",
    "probe {h5} --seed -1", "probe {file}",
    # sae
    "sae {h5} --hook nope", "sae {h5} --hook ../../x", "sae {h5} --hook value_net --lr nan",
    "sae {h5} --hook value_net --lr -1", "sae {h5} --hook value_net --width 0",
    "sae {h5} --hook value_net --k 0", "sae {h5} --hook value_net --steps 0",
    "sae {h5} --hook value_net --epochs nan", "sae {h5} --hook value_net --arch nope",
    "sae nope --hook value_net",
    # steer
    "steer {run} --direction nope", "steer {run} --direction probe:value@nope --scales nan",
    "steer {run} --direction diff:value@value_net --scales nan,inf", "steer {run} --direction x --seed -1",
    "steer {run} --direction diff:value@value_net --mode erase --scales 5",
    "steer nope --direction diff:value@value_net",
    # evaluate
    "evaluate {run}", "evaluate {run} --targets=nan,inf", "evaluate {run} --temperature 0",
    "evaluate {run} --episodes 0", "evaluate nope",
    # compare, sweep
    "compare nope", "compare {run} --runs-dir {file}", "sweep {file}", "sweep --seeds x",
]

SCRIPTS = [
    ("probes.linear", "{file}"), ("probes.linear", "{h5} --labels nope"), ("probes.linear", "/nonexistent.h5"),
    ("probes.ccs", "{file} --label value --hook value_net"), ("probes.ccs", "/nonexistent.h5 --label value --hook x"),
    ("probes.ccs", "{h5} --label nope --hook value_net"),
    ("probes.sae", "{h5} --hook nope"), ("probes.sae", "{h5} --hook ../x"), ("probes.sae", "{h5} --hook value_net --lr nan"),
    ("probes.sae", "/nonexistent.h5 --hook x"),
    ("probes.features", "/nonexistent {h5}"), ("probes.features", "{file} {h5}"),
    # usage errors: argparse's, in one line too (probes.scripts.ScriptParser)
    ("probes.linear", ""), ("probes.linear", "{h5} --folds x"), ("probes.linear", "{h5} --bootstrap -5"),
    ("probes.linear", "{h5} --workers 0"), ("probes.ccs", "{h5}"), ("probes.sae", "{h5}"),
    ("probes.sae", "{h5} --hook value_net --width x"), ("probes.features", "{h5}"),
]


@pytest.fixture(scope="module")
def env(tiny_run, tmp_path_factory) -> dict[str, str]:
    runs_dir, name = tiny_run
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(runs_dir / name, root / "runs" / name)
    (root / "plain").write_text("not a runs directory\n")
    h5 = sorted((root / "runs" / name / "activations").glob("*.h5"))[0]
    return {"runs": str(root / "runs"), "run": name, "h5": str(h5), "file": str(root / "plain"), "root": str(root)}


def _argv(template: str, env: dict[str, str]) -> list[str]:
    import shlex

    return shlex.split(template.format(**env))


def _check(code: int, err: str, case: str) -> None:
    assert code == 2, f"{case}: exit {code}, stderr {err!r}"
    assert "Traceback" not in err, f"{case}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: {len(lines)} lines on stderr: {err!r}"
    assert len(lines[0]) <= 500, f"{case}: a {len(lines[0])}-character line"


@pytest.mark.parametrize("case", RL)
def test_rl_lab_bad_input(case: str, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = _argv(case, env)
    if "--runs-dir" not in argv:
        argv += ["--runs-dir", env["runs"]]
    before = sorted(p.name for p in Path(env["runs"]).iterdir())
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    _check(code, capsys.readouterr().err, case)
    assert sorted(p.name for p in Path(env["runs"]).iterdir()) == before, f"{case}: created something"


@pytest.mark.parametrize("module,case", SCRIPTS)
def test_probe_scripts_bad_input(module: str, case: str, env: dict[str, str], capsys) -> None:
    entry = importlib.import_module(module if module != "probes.sae" else "probes.sae.__main__").main
    try:
        code = entry(_argv(case, env))
    except SystemExit as exc:
        code = int(exc.code or 0)
    _check(code, capsys.readouterr().err, f"{module} {case}")


@pytest.mark.parametrize("case", ["runs --runs-dir {file}", "train --seed -1 --name a", "record nope"])
def test_console_entry_point(case: str, env: dict[str, str]) -> None:
    argv = _argv(case, env)
    if "--runs-dir" not in argv:
        argv += ["--runs-dir", env["runs"]]
    proc = subprocess.run([sys.executable, "-m", "rl_lab", *argv], capture_output=True, text=True, timeout=60)
    _check(proc.returncode, proc.stderr, case)


def test_runs_json_is_strict_on_damaged_folders(env: dict[str, str], capsys, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    damaged = {"pid-abc": {"pid": "abc", "status": "running"}, "pid-huge": {"pid": 10**20, "status": "running"},
               "created-int": {"created": 5}, "lists": {"steps_done": [1], "total_timesteps": [2]},
               "status-num": {"status": 3}}
    for name, info in damaged.items():
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text(json.dumps(info))
    (root / "pid-abc" / "metrics.jsonl").mkdir()
    (root / "garbage").mkdir()
    (root / "garbage" / "run.json").write_bytes(b"\xff\xfe{")
    ok = root / "ok"
    ok.mkdir()
    (ok / "run.json").write_text(json.dumps({"status": "done", "env_id": "CartPole-v1", "algo": "ppo"}))
    (ok / "metrics.jsonl").write_bytes(b'{"step": 1, "episode_return": NaN}\n\xff\n{"step": [2], "episode_return": [1]}\n'
                                       b'{"step": 3, "episode_return": Infinity}\n{"step": 4, "episode_return": 2.5}\n')
    assert main(["runs", "--json", "--runs-dir", str(root)]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    rows = {r["name"]: r for r in doc["runs"]}
    assert rows["ok"]["latest_return"] == 2.5 and rows["ok"]["status"] == "done"
    for name in list(damaged) + ["garbage"]:
        assert rows[name]["status"] == "damaged" and rows[name]["error"], name
    assert "pid" in rows["pid-abc"]["error"] and "created" in rows["created-int"]["error"]
    assert main(["runs", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and "ok" in out


def _damaged_runs(root: Path) -> list[str]:
    cases = {"pid-abc": {"pid": "abc", "status": "running"}, "pid-neg": {"pid": -1, "status": "running"},
             "created-int": {"created": 5, "status": 7}, "lists": {"steps_done": "12", "total_timesteps": [2]},
             "nan-return": {"status": "done", "env_id": "CartPole-v1", "algo": "ppo", "steps_done": 4}}
    for name, info in cases.items():
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text(json.dumps(info))
    (root / "nan-return" / "metrics.jsonl").write_bytes(
        b'{"step": 1, "episode_return": NaN}\n{"step": "2", "episode_return": [1]}\n\xff\n{"step": 4, "episode_return": 1.5}\n')
    (root / "pid-abc" / "metrics.jsonl").mkdir()
    (root / "garbage").mkdir()
    (root / "garbage" / "run.json").write_bytes(b"\xff{")
    return sorted(cases) + ["garbage"]


async def test_tui_survives_damaged_runs(tmp_path: Path) -> None:
    from textual.widgets import DataTable

    from tui.app import LabApp

    names = _damaged_runs(tmp_path)
    app = LabApp(tmp_path, poll_interval=0.1)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(100):
            await pilot.pause(0.02)
            if app.screen.query("#runs") and app.screen.query_one("#runs", DataTable).row_count >= len(names):
                break
        table = app.screen.query_one("#runs", DataTable)
        assert table.row_count == len(names)
        for name in names:  # every detail screen opens on its damaged run and shows the problem
            app.open_run(name)
            await pilot.pause(0.1)
            await pilot.press("escape")
            await pilot.pause(0.05)
    assert app.return_code in (0, None)
    from tui.data import RunIndex

    rows = {r.name: r for r in RunIndex(tmp_path).scan()}
    assert rows["pid-abc"].status == "damaged" and "pid" in rows["pid-abc"].error
    assert rows["nan-return"].latest_return == 1.5
