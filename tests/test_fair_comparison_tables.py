"""examples/fair_comparison_tables.py: the results tables come from the comparison JSON that
``rl-lab compare`` wrote and the DT's and BC's eval.json, number for number."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from rl_lab.compare import compare
from rl_lab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"ppo-mlp": "ppo", "ppo-tf": "ppo-transformer", "rppo": "recurrent-ppo", "dt": "dt", "bc": "bc",
          "bc-tf": "bc-of-ppo-transformer"}


def _record(hook: str, label: str, score: float, rand: float) -> dict:
    return {"hook": hook, "label": label, "metric": "r2", "score": score,
            "baselines": {"mean": 0.0, "random_weights": rand, "raw_obs": 0.1}, "selectivity": score - 0.05,
            "ci": [score - 0.1, score + 0.1], "checkpoint": "step_000000100", "linear_by_construction": False}


def _replays(tmp_path: Path, names: list[str], replay: str) -> None:
    """Probe documents of every run's recording on ``replay``'s episodes: no difference between agents."""
    store = RunStore(tmp_path)
    for name in names:
        folder = store.get(name).probes_folder(replay)
        folder.mkdir(parents=True)
        s = int(name.rsplit("-s", 1)[1])
        records = [_record("blocks.0.hook_resid_post", "threat", 0.4 + 0.01 * s, rand=0.2),
                   _record("blocks.0.hook_resid_post", "hunger", 0.5, rand=0.5)]
        (folder / "step_000000100.json").write_text(json.dumps(
            {"schema_version": 1, "file": "x.h5", "run": name, "checkpoint": "step_000000100", "step": 100,
             "records": records, "notes": []}))


def _runs(tmp_path: Path) -> list[str]:
    store = RunStore(tmp_path)
    names = []
    for s, e in enumerate([0.0, 0.02, -0.01]):
        for prefix, group in GROUPS.items():
            name = f"{prefix}-s{s}"
            names.append(name)
            algo = "ppo" if group.startswith(("ppo", "recurrent")) else group[:2]
            run = store.create(name, {"algo": algo, "agent": group, "seed": s,
                                      "env_id": "lab/Forage-v0", "status": "done"})
            run.probes_dir.mkdir()
            # the PPO-transformer gains 0.3 + e on threat, the others 0.1: a consistent difference
            threat = 0.6 + 2 * e if group == "ppo-transformer" else 0.2 + e * (s % 2)
            records = [_record("blocks.0.hook_resid_post", "threat", threat, rand=threat / 2),
                       _record("blocks.0.hook_resid_post", "hunger", 0.5 + e, rand=0.5)]
            (run.probes_dir / "step_000000100.json").write_text(json.dumps(
                {"schema_version": 1, "file": "x.h5", "run": name, "checkpoint": "step_000000100", "step": 100,
                 "records": records, "notes": []}))
    return names


def _eval(tmp_path: Path, name: str, achieved: float) -> None:
    doc = {"algo": name[:2], "episodes": 50, "dataset_best_return": 11.0, "best_policy": "step_001600000",
           "best_policy_mean_return": 6.8, "fraction_of_best_policy_mean": achieved / 6.8,
           "rows": [{"target": 5.0, "mean_return": 1.0, "ci": [0.0, 2.0]},
                    {"target": 11.0, "mean_return": achieved, "ci": [achieved - 0.5, achieved + 0.5]}]}
    (tmp_path / name / "eval.json").write_text(json.dumps(doc))


def _tables(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    module = runpy.run_path(str(ROOT / "examples" / "fair_comparison_tables.py"))
    rc = module["main"]([str(runs_dir)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_tables_repeat_the_comparisons_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = _runs(tmp_path)
    compare(names, tmp_path, group_by="agent")
    compare(names, tmp_path, group_by="agent", hooks=["blocks.*"])
    test = compare([n for n in names if n.startswith(("ppo-tf", "bc", "dt"))], tmp_path, group_by="agent",
                   hooks=["blocks.*"], contrasts=["ppo-transformer:bc", "ppo-transformer:dt",
                                                  "ppo-transformer:bc-of-ppo-transformer"])
    for s in range(3):
        _eval(tmp_path, f"dt-s{s}", 6.5 - s)
    _eval(tmp_path, "bc-s0", 3.6)
    _eval(tmp_path, "bc-tf-s0", 2.0)
    rc, out, err = _tables(tmp_path, capsys)
    assert rc == 0 and err == ""
    threat = next(c for c in test["contrasts"] if c["b"] == "bc" and c["label"] == "threat")
    assert threat["significant"]
    row = next(line for line in out.splitlines() if line.startswith("| threat |") and "p (raw" not in line
               and f"{threat['p']:.2g} / {threat['p_holm']:.2g}" in line)
    assert f"**{threat['mean']:+.3f} [{threat['ci'][0]:+.3f}, {threat['ci'][1]:+.3f}]**" in row
    n_tests = sum(1 for c in test["contrasts"] if c["p"] is not None)
    n_sig = sum(1 for c in test["contrasts"] if c["significant"])
    assert f"{n_sig} of {n_tests} contrasts significant after Holm's correction." in out
    # the DT at its best target, its interval and its fraction; a missing eval.json is said so
    assert "| dt-s0 | 50 | 11 | +6.50 [+6.00, +7.00] | step_001600000 (+6.80) | 96% |" in out
    assert "| bc-s1 | no readable eval.json |" in out
    assert "| bc-tf-s0 | 50 | (none) | +2.00 [+1.50, +2.50] | step_001600000 (+6.80) | 29% |" in out
    # the competence-matched control has its own gain column and contrast
    assert "| label | PPO-transformer gain | DT gain | BC gain | BC of PPO-tf gain | PPO-tf − DT [95% CI]" in out
    assert "PPO-tf − BC of PPO-tf [95% CI] | p (raw / Holm) |" in out
    # every agent's gain at the acting hooks, from the comparison restricted to hooks
    assert "| label | PPO-MLP | PPO-transformer | recurrent PPO | DT | BC | BC of PPO-tf |" in out


def test_the_replayed_test_is_a_table_of_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = _runs(tmp_path)
    tested = [n for n in names if n.startswith(("ppo-tf", "bc", "dt"))]
    _replays(tmp_path, tested, "ppo-mlp-s0")
    contrasts = ["ppo-transformer:bc", "ppo-transformer:dt", "ppo-transformer:bc-of-ppo-transformer"]
    own = compare(tested, tmp_path, group_by="agent", hooks=["blocks.*"], contrasts=contrasts)
    replayed = compare(tested, tmp_path, group_by="agent", hooks=["blocks.*"], contrasts=contrasts,
                       replay="ppo-mlp-s0")  # written last: the own-episodes table must not take it
    rc, out, _ = _tables(tmp_path, capsys)
    assert rc == 0
    own_part, replay_part = out.split("The test itself (every network on the same episodes, run ppo-mlp-s0's")
    assert "The test itself (each network on its own episodes)" in own_part
    for doc, part in ((own, own_part), (replayed, replay_part)):
        threat = next(c for c in doc["contrasts"] if c["b"] == "bc" and c["label"] == "threat")
        assert f"{threat['mean']:+.3f} [{threat['ci'][0]:+.3f}, {threat['ci'][1]:+.3f}]" in part
    assert next(c for c in own["contrasts"] if c["b"] == "bc" and c["label"] == "threat")["significant"]
    assert not any(c["significant"] for c in replayed["contrasts"])


def test_tables_refuse_a_folder_without_comparisons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _tables(tmp_path / "missing", capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "does not exist" in err
