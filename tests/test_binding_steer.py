"""Steering the target-cell direction of a Binding-v0 agent (``rl_lab.steer.binding``): the outcome
classification on a hand-made layout, and the script end to end on a real tiny PPO run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probes.activations import ActivationWriter
from probes.binding import ROLES
from rl_lab.steer.binding import (
    CONFLICT_OUTCOMES,
    OUTCOMES,
    ROLE_OUTCOMES,
    classify,
    conflict_rates,
    main,
    rates,
    reached_roles,
    relation,
)

HOOK = "mlp_extractor.policy_net.3"
T, CL, SL, FO = (ROLES.index(r) for r in ("target", "colour_lure", "shape_lure", "foil"))


# --------------------------------------------------------------------------- outcome classification
def test_relation_to_the_steered_object() -> None:
    # target (c, s), colour lure (c, s'), shape lure (c', s), foil (c', s')
    expected = {
        (T, T): "steered", (CL, T): "colour_only", (SL, T): "shape_only", (FO, T): "neither",
        (T, CL): "colour_only", (FO, CL): "shape_only", (SL, CL): "neither",
        (T, SL): "shape_only", (FO, SL): "colour_only", (CL, SL): "neither",
        (CL, FO): "shape_only", (SL, FO): "colour_only", (T, FO): "neither", (FO, FO): "steered",
    }
    for (reached, steered), name in expected.items():
        assert OUTCOMES[relation(reached, steered)] == name, (ROLES[reached], ROLES[steered])
    assert OUTCOMES[relation(-1, T)] == "none"


def test_classify_a_hand_made_layout() -> None:
    # Episode 0: corners hold target, colour lure, shape lure, foil; episode 1: foil, shape lure, target, colour lure.
    layout = np.array([[T, CL, SL, FO], [FO, SL, T, CL]])
    # Steer corner 1 (episode 0: the colour lure; episode 1: the shape lure).
    assert [OUTCOMES[c] for c in classify(layout, 1, np.array([CL, SL]))] == ["steered", "steered"]
    # Episode 0 reaches the target (the colour lure's colour); episode 1 the foil (the shape lure's colour).
    assert [OUTCOMES[c] for c in classify(layout, 1, np.array([T, FO]))] == ["colour_only", "colour_only"]
    # Episode 0 reaches the foil (the colour lure's shape); episode 1 the target (the shape lure's shape).
    assert [OUTCOMES[c] for c in classify(layout, 1, np.array([FO, T]))] == ["shape_only", "shape_only"]
    # The object sharing nothing with the steered one, and no object at all.
    assert [OUTCOMES[c] for c in classify(layout, 1, np.array([SL, -1]))] == ["neither", "none"]
    # Steer corner 0 of episode 1 (the foil): reaching the target there shares nothing with it.
    assert OUTCOMES[classify(layout, 0, np.array([T, T]))[1]] == "neither"
    r = rates(classify(layout, 1, np.array([CL, -1])), OUTCOMES)
    assert r == {"steered": 0.5, "colour_only": 0.0, "shape_only": 0.0, "neither": 0.0, "none": 0.5}


def test_conflict_rates_skip_the_target_corner() -> None:
    layout = np.array([[T, CL, SL, FO], [FO, SL, T, CL]])
    # corner 0: episode 0 holds the target there (not a conflict); episode 1 the foil, and the agent took the target.
    # corner 2: episode 0 the shape lure, reached; episode 1 the target (skipped).
    res = conflict_rates(layout, [0, 2], [np.array([T, T]), np.array([SL, -1])])
    assert res == {"episodes": 2, "steered": 0.5, "target": 0.5, "other": 0.0, "none": 0.0}
    res = conflict_rates(layout, [1], [np.array([FO, -1])])
    assert res == {"episodes": 2, "steered": 0.0, "target": 0.0, "other": 0.5, "none": 0.5}


def test_reached_roles_from_behaviour_totals() -> None:
    values = {f"reached_{r}": np.zeros(3) for r in ROLES}
    values["reached_shape_lure"][0] = 1
    values["reached_target"][2] = 1
    assert reached_roles(values).tolist() == [SL, -1, T]


# --------------------------------------------------------------------------- the script on a real agent
@pytest.fixture(scope="module")
def binding_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real PPO run (1024 steps on lab/Binding-v0, objects mode) with one recording of 32 episodes."""
    from rl_lab.config import TrainConfig
    from rl_lab.record import record_run
    from rl_lab.train import train

    runs_dir = tmp_path_factory.mktemp("binding-runs")
    cfg = TrainConfig(env_id="lab/Binding-v0", algo="ppo", total_timesteps=1024, seed=0, n_envs=2,
                      checkpoint_every=1024, env_kwargs={"obs_mode": "objects"})
    run = train(cfg, runs_dir, name="bind")
    record_run("bind", runs_dir, episodes=32, seed=0)
    return runs_dir, run.name


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _sums_to_one(block: dict) -> None:
    assert sum(block["rates"][o] for o in OUTCOMES) == pytest.approx(1.0)
    assert sum(block["role_rates"][r] for r in ROLE_OUTCOMES) == pytest.approx(1.0)
    if "conflict" in block and block["conflict"]["episodes"]:
        assert sum(block["conflict"][o] for o in CONFLICT_OUTCOMES) == pytest.approx(1.0)


def test_binding_steer_document(binding_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = binding_run
    code = main([name, "--hook", HOOK, "--runs-dir", str(runs_dir), "--episodes", "3", "--controls", "2",
                 "--scales", "0,6", "--seed", "1", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert doc["kind"] == "binding_steer" and doc["hook"] == HOOK and doc["scales"] == [0.0, 6.0]
    assert doc["episodes"] == 3 and doc["n_controls"] == 2 and len(doc["controls"]) == 2
    probe = doc["probe"]
    assert sorted(probe["classes"]) == ["bottom-left", "bottom-right", "top-left", "top-right"]
    assert 0.0 <= probe["held_out_accuracy"] <= 1.0 and probe["split"]["test_fraction"] == 0.25
    assert len(doc["layouts"]) == 3 and all(sorted(row) == sorted(ROLES) for row in doc["layouts"])
    assert [c["name"] for c in doc["corners"]] == probe["classes"]
    for c in doc["corners"]:
        assert c["direction"]["vector_norm"] == pytest.approx(1.0) and c["direction"]["coordinate_std"] > 0
    # every condition's rates are distributions; scale 0 is the clean policy
    for part in [doc["pooled"], *doc["corners"]]:
        _sums_to_one(part["clean"])
        assert len(part["results"]) == 2
        for res in part["results"]:
            _sums_to_one(res)
            assert len(res["controls"]["per_control"]) == 2 and len(res["controls"]["steered_means"]) == 2
            for ctl in res["controls"]["per_control"]:
                _sums_to_one(ctl)
            lo, hi = res["steered_ci"]
            assert lo <= res["steered"] <= hi
            assert 1 / 3 <= res["control_p_value"] <= 1
        zero = part["results"][0]
        assert zero["rates"] == part["clean"]["rates"] and zero["role_rates"] == part["clean"]["role_rates"]
        assert zero["conflict"] == part["clean"]["conflict"]
        assert all(ctl["rates"] == part["clean"]["rates"] for ctl in zero["controls"]["per_control"])
    # the clean policy's pooled steered rate is its reach rate over 4: one corner of four holds the reached object
    clean = doc["pooled"]["clean"]
    assert clean["conflict"]["episodes"] == 3 * 3  # per episode, three corners hold another object than the target
    assert clean["steered"] == pytest.approx((1 - clean["role_rates"]["none"]) / 4)
    assert doc["verdict"]["scale"] == 6.0 and doc["summary"].startswith("steering the target-cell direction")
    # written to the run's steer folder, the same document
    path = Path(doc["path"])
    assert path.parent == runs_dir / name / "steer" and path.name.startswith("binding-")
    assert json.loads(path.read_text())["pooled"] == doc["pooled"]


def test_binding_steer_table(binding_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    runs_dir, name = binding_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    before = set((tmp_path / name).rglob("*"))
    code = main([name, "--hook", HOOK, "--runs-dir", str(tmp_path), "--episodes", "2", "--controls", "0",
                 "--scales", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "held-out accuracy" in out and "pooled" in out and "top-left" in out and "written:" in out
    new = set((tmp_path / name).rglob("*")) - before
    assert len([p for p in new if p.suffix == ".json"]) == 1
    assert all(p.parent == tmp_path / name / "steer" and p.name.startswith("binding-") for p in new if p.is_file())


def test_binding_steer_bad_input(binding_run: tuple[Path, str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = binding_run
    other = tmp_path / "other.h5"  # a recording without the Binding labels
    n = 4
    with ActivationWriter(other, {"run": name}) as w:
        w.append({"obs": np.zeros((n, 1), np.float32), "action": np.zeros(n, np.int64),
                  "reward": np.zeros(n, np.float32), "done": np.ones(n, bool), "episode": np.arange(n),
                  "t": np.zeros(n, np.int64)}, {"agent_row": np.zeros(n)}, {HOOK: np.zeros((n, 64), np.float32)})
    before = _files(runs_dir)
    base = ["--runs-dir", str(runs_dir), "--episodes", "2", "--controls", "1"]
    cases = {
        "no-such-run": ["no-such-run", "--hook", HOOK, *base],
        "hook": [name, "--hook", "nope.0", *base],
        "labels": [name, "--hook", HOOK, "--activations", str(other), *base],
        "no-file": [name, "--hook", HOOK, "--activations", str(tmp_path / "missing.h5"), *base],
        "negative": [name, "--hook", HOOK, "--scales", "-2,4", *base],
        "all-zero": [name, "--hook", HOOK, "--scales", "0", *base],
        "not-a-number": [name, "--hook", HOOK, "--scales", "a,b", *base],
        "one-episode": [name, "--hook", HOOK, "--runs-dir", str(runs_dir), "--episodes", "1"],
    }
    for what, argv in cases.items():
        code = _exit_code(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, what
        assert len(err) == 1 and "error: " in err[0], (what, err)
        assert _files(runs_dir) == before, what
    for what, words in (("labels", "not a lab/Binding-v0 recording"), ("hook", "nope.0"),
                        ("no-such-run", "no-such-run"), ("negative", ">= 0")):
        assert _exit_code(cases[what]) == 2
        assert words in capsys.readouterr().err, what
    # the module runs as a script: one line, exit 2, nothing written
    bad = subprocess.run([sys.executable, "-m", "rl_lab.steer.binding", name, "--hook", "nope.0", *base],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "error: " in bad.stderr
    assert _files(runs_dir) == before


def _exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


async def test_tui_draws_a_binding_steering_result(binding_run: tuple[Path, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from textual.widgets import Static

    from tui.app import LabApp
    from tui.screens.steer import SteerScreen, binding_curve
    from tui.widgets.chart import BandChart

    runs_dir, name = binding_run
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    code = main([name, "--hook", HOOK, "--runs-dir", str(copy), "--episodes", "3", "--controls", "2",
                 "--scales", "0,6", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    app = LabApp(copy, poll_interval=0.5)
    async with app.run_test(size=(140, 50)) as pilot:
        app.push_screen(SteerScreen(name, doc["path"]))
        await pilot.pause()
        screen = app.screen
        chart = screen.query_one("#steer-chart", BandChart)
        xs, ys, lo, hi = binding_curve(doc, doc["pooled"])
        assert xs == [0.0, 6.0] and ys[0] == 0.0 and chart.mean == ys
        assert all(a <= y <= b for a, y, b in zip(lo, ys, hi))
        text = str(screen.query_one("#steer-numbers", Static).render())
        assert "pooled over the corners" in text and "steered object" in text and "not a steering result" not in text
        await pilot.press("m")  # the first corner's view
        assert screen.metric == f"corner {doc['corners'][0]['name']}"
        assert chart.mean == binding_curve(doc, doc["corners"][0])[1]
