"""The command line: help everywhere, one-line errors with exit code 2, --json, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from probes.layout import RESERVED_NAMES, RunsDirLayout
from rl_lab.cli import command_modules, main

COMMANDS = command_modules()


def test_every_contract_command_exists() -> None:
    for name in ("train", "record", "probe", "runs", "tui", "demo", "sae", "steer", "compare", "sweep", "evaluate"):
        assert name in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: rl-lab" in capsys.readouterr().out


def run_cli(argv: list[str]) -> int:
    """``main`` as the console script runs it: argparse's usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--env", "NoSuchEnv-v9", "--steps", "10"], "NoSuchEnv-v9"),
        (["train", "--algo", "sac", "--steps", "10"], "sac"),
        (["train", "--steps", "-5"], "positive"),
        (["train", "--name", "../escape", "--steps", "10"], "invalid run name"),
        (["train", "--env-kwargs", "{bad", "--steps", "10"], "JSON"),
        (["train", "--env-kwargs", '{"size": 1}', "--steps", "10"], "size"),
        (["record", "missing-run"], "missing-run"),
        (["probe", "missing-run"], "missing-run"),
        (["probe", "nowhere.h5"], "nowhere.h5"),
        (["steer", "missing-run", "--direction", "diff:threat@x"], "missing-run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys) -> None:
    assert run_cli([*argv, "--runs-dir", str(tmp_path)]) == 2
    assert needle in _one_line_error(capsys)
    assert not any(tmp_path.iterdir()), "a failed command must not leave a run behind"


def test_unreadable_file(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    assert main(["probe", str(bad)]) == 2
    assert "bad.h5" in _one_line_error(capsys)


def test_runs_json(tiny_run, capsys) -> None:
    runs_dir, name = tiny_run
    assert main(["runs", "--json", "--runs-dir", str(runs_dir)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = [r for r in doc["runs"] if r["name"] == name]
    assert row["status"] == "done" and row["env_id"] == "lab/Forage-v0" and row["algo"] == "ppo"


def test_runs_dir_from_environment(tiny_run, monkeypatch, capsys) -> None:
    runs_dir, name = tiny_run
    monkeypatch.setenv("RL_LAB_RUNS", str(runs_dir))
    assert main(["runs"]) == 0
    assert name in capsys.readouterr().out


def test_probe_run_json(tiny_run, tmp_path, capsys) -> None:
    import shutil

    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    assert main(["probe", name, "--runs-dir", str(tmp_path), "--json", "--hooks", "mlp_extractor.value_net.3",
                 "--labels", "value,hunger,action"]) == 0
    doc = json.loads(capsys.readouterr().out)
    recs = {(r["hook"], r["label"]): r for r in doc["records"]}
    assert set(recs) == {("mlp_extractor.value_net.3", lab) for lab in ("value", "hunger", "action")}
    for rec in recs.values():
        assert {"hook", "label", "metric", "score", "baselines", "selectivity", "ci"} <= set(rec)
        assert {"mean", "raw_obs", "random_weights", "control_task"} <= set(rec["baselines"])
    assert recs[("mlp_extractor.value_net.3", "value")]["linear_by_construction"] is True
    assert (tmp_path / name / "probes" / "step_000001024.json").exists()
    assert (tmp_path / name / "probes" / "step_000001024.weights.npz").exists()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "rl_lab", "demo", "--steps", "2048", "--episodes", "6", "--supervised-steps", "10",
         "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "What the agent's layers encode" in out and "random-weights twin" in out
    assert "raw" in out.lower() and "ctrl" in out  # the table shows its baselines
    runs = {p.name.split("-")[2]: p for p in tmp_path.iterdir() if p.is_dir() and p.name not in RESERVED_NAMES}
    assert set(runs) == {"ppo", "dt", "bc"}
    run_dir = runs["ppo"]
    assert (run_dir / "run.json").exists() and list((run_dir / "activations").glob("*.h5"))
    assert list((run_dir / "probes").glob("*.json"))
    assert str(run_dir) in out
    # The RL-versus-supervision comparison: DT and BC trained from the agent, recorded, probed, compared.
    for algo in ("dt", "bc"):
        info = json.loads((runs[algo] / "run.json").read_text())
        assert info["algo"] == algo and info["source_run"] == run_dir.name and info["steps_done"] == 10
        assert list((runs[algo] / "probes").glob("*.json")) and (runs[algo] / "eval.json").exists()
    assert "What the comparison shows on Forage" in out and "random-weights twin" in out
    assert "confounds this small run leaves" in out and "different networks" in out
    (cmp_path,) = RunsDirLayout(tmp_path).comparisons_dir.glob("compare-*.json")
    doc = json.loads(cmp_path.read_text())
    assert [r["algo"] for r in doc["runs"]] == ["ppo", "dt", "bc"]
    assert {"ppo", "dt", "bc", "dt (random weights)"} <= set(doc["groups"]) and "hope" in doc["labels"]
    assert str(cmp_path) in out
    behaviour = ", ".join(f"{g} {b['mean_return']:+.2f}" for g, b in doc["behaviour"].items())
    assert f"different behaviour: mean return of the recorded episodes {behaviour};" in out


def test_demo_rejects_negative_supervised_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--supervised-steps", "-1", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--supervised-steps" in err
    assert not any(tmp_path.iterdir())
