"""``rl-lab curves``: training return at equal environment steps, grouped, with intervals across seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from probes.stats import t_interval
from rl_lab.cli import main
from rl_lab.curves import curves, default_marks, format_table, parse_marks, value_at
from rl_lab.errors import LabError
from rl_lab.runs import RunStore


def _run(store: RunStore, name: str, agent: str, seed: int, points: list[tuple[int, float]],
         status: str = "done", env_id: str = "lab/Forage-v0", algo: str = "ppo") -> None:
    run = store.create(name, {"algo": algo, "agent": agent, "seed": seed, "env_id": env_id, "status": status})
    for step, value in points:
        run.log_metrics({"step": step, "episode_return": value, "fps": 100.0})


def test_value_is_the_last_logged_at_or_before_the_mark() -> None:
    points = [(2048, -2.0), (4096, -1.0), (6144, 0.5)]
    assert value_at(points, 4096) == -1.0
    assert value_at(points, 5000) == -1.0  # what the run had achieved by then
    assert value_at(points, 6144) == 0.5
    assert value_at(points, 6145) is None  # not reached: never the last value carried forward
    assert value_at(points, 1000) is None  # before the first log


def test_marks_parse_and_default() -> None:
    assert parse_marks("1.6M, 100k,200000,100k") == [100_000, 200_000, 1_600_000]
    for bad in ("", "0", "-5", "1.5x", "1.00001k", "abc"):
        with pytest.raises(LabError):
            parse_marks(bad)
    assert default_marks(1_601_536) == [160_000 * i for i in range(1, 11)]
    assert default_marks(150_000) == [15_000 * i for i in range(1, 11)]
    assert default_marks(7) == [1, 2, 3, 4, 5, 6, 7]


def test_groups_average_runs_at_equal_steps(tmp_path: Path) -> None:
    """Each group's cell is the mean and t-interval of its runs' values at that mark; a run that has
    not reached a mark adds nothing there; DT/BC runs (no training episodes) are named in the notes."""
    store = RunStore(tmp_path)
    _run(store, "mlp-s0", "ppo", 0, [(1000, 0.0), (2000, 1.0), (3000, 2.0)])
    _run(store, "mlp-s1", "ppo", 1, [(1000, 0.5), (2000, 2.0), (3000, 3.0)])
    _run(store, "tf-s0", "ppo-transformer", 0, [(1000, -1.0), (2000, 0.0)], status="running")
    store.create("dt-s0", {"algo": "dt", "agent": "dt", "seed": 0, "env_id": "lab/Forage-v0", "status": "done"})
    doc = curves(["mlp-s0", "mlp-s1", "tf-s0", "dt-s0"], tmp_path, marks=[2000, 3000], group_by="agent")
    assert doc["marks"] == [2000, 3000]
    mlp = doc["groups"]["ppo"]["cells"]
    mean, low, high = t_interval([1.0, 2.0])
    assert mlp[0]["mean"] == pytest.approx(mean) and mlp[0]["ci"] == pytest.approx([low, high])
    assert mlp[1]["mean"] == pytest.approx(2.5) and mlp[1]["n"] == 2
    tf = doc["groups"]["ppo-transformer"]["cells"]
    assert tf[0] == {"mean": 0.0, "ci": None, "n": 1} and tf[1] is None
    assert [r["values"] for r in doc["runs"] if r["name"] == "tf-s0"] == [[0.0, None]]
    assert any("dt-s0" in n and "eval.json" in n for n in doc["notes"])
    assert any("tf-s0 is interrupted at step 2000" in n for n in doc["notes"])  # no live process
    json.dumps(doc, allow_nan=False)  # strict JSON
    text = format_table(doc)
    assert "+2.50±" in text and "2k" in text and "3k" in text


def test_refusals(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    _run(store, "a", "ppo", 0, [(1000, 0.0)])
    _run(store, "b", "ppo", 1, [(1000, 0.0)], env_id="CartPole-v1")
    store.create("dt", {"algo": "dt", "seed": 0, "env_id": "lab/Forage-v0", "status": "done"})
    with pytest.raises(LabError, match="different environments"):
        curves(["a", "b"], tmp_path)
    with pytest.raises(LabError, match="named twice"):
        curves(["a", "a"], tmp_path)
    with pytest.raises(LabError, match="logged a training return"):
        curves(["dt"], tmp_path)
    with pytest.raises(LabError, match="no run named"):
        curves(["missing"], tmp_path)


def test_cli_on_a_real_run(tiny_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """On a real PPO run, each value is the episode_return SB3 logged at or before the mark."""
    runs_dir, name = tiny_run
    logged = [json.loads(line) for line in (runs_dir / name / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if r.get("episode_return") is not None]
    assert logged, "the tiny run logged no training return"
    last = logged[-1]["step"]
    assert main(["curves", name, "--at", f"{last},{last + 1}", "--json", "--runs-dir", str(runs_dir)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["runs"]
    assert row["values"][0] == pytest.approx(logged[-1]["episode_return"]) and row["values"][1] is None
    assert main(["curves", name, "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert name in out and "training return" in out
    assert main(["curves", name, "--json", "--runs-dir", str(runs_dir)]) == 0
    default = json.loads(capsys.readouterr().out)  # default marks: none before the first log
    assert default["marks"] and min(default["marks"]) >= logged[0]["step"]
    assert all(v is not None for v in default["runs"][0]["values"])
    assert main(["curves", name, "--at", "1.5x", "--runs-dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad step" in err
    assert not math.isnan(row["values"][0])
