"""The run store: names, atomic run.json, interrupted detection, torn metrics lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rl_lab.errors import LabError
from rl_lab.runs import RunStore, check_run_name, checkpoint_step


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 200, "a\\b", "a..b"])
def test_run_names_cannot_escape(name: str) -> None:
    with pytest.raises(LabError):
        check_run_name(name)


def test_create_refuses_overwrite(tmp_path) -> None:
    store = RunStore(tmp_path)
    store.create("r1", {"status": "done", "env_id": "CartPole-v1"})
    with pytest.raises(LabError, match="already exists"):
        store.create("r1", {"status": "done"})
    assert json.loads((tmp_path / "r1" / "run.json").read_text())["env_id"] == "CartPole-v1"


def test_dead_pid_is_interrupted(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store = RunStore(tmp_path)
    store.create("gone", {"status": "running", "pid": proc.pid})
    store.create("alive", {"status": "running", "pid": subprocess.os.getpid()})
    status = {r.name: r.status for r in store.list()}
    assert status == {"gone": "interrupted", "alive": "running"}


def test_torn_metrics_line_is_skipped(tmp_path) -> None:
    store = RunStore(tmp_path)
    run = store.create("r", {"status": "done"})
    run.log_metrics({"step": 1, "episode_return": 1.0})
    run.log_metrics({"step": 2, "episode_return": 3.0})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"step": 3, "episode_ret')  # a writer killed mid-line
    assert [m["step"] for m in run.metrics()] == [1, 2]
    summary = run.summary()
    assert summary["latest_return"] == 3.0 and summary["best_return"] == 3.0


def test_corrupt_run_json_is_listed_as_failed(tmp_path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    (runs,) = RunStore(tmp_path).list()
    assert runs.status == "damaged" and "corrupt" in runs.summary()["error"]
    with pytest.raises(LabError, match="corrupt"):
        RunStore(tmp_path).get("bad")


def test_checkpoint_step() -> None:
    from pathlib import Path

    assert checkpoint_step(Path("step_000001024.zip")) == 1024
    assert checkpoint_step(Path("final.zip")) == -1
