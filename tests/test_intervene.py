"""``rl-lab intervene``: an intervention on the world, and how far each reading of the network moves.

Uses the session's tiny real PPO run on lab/Forage-v0 (``tiny_run``), copied, with planted probe
weights so that the expected shift can be computed independently from the activations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from probes.activations import ActivationFile
from rl_lab.cli import main
from rl_lab.runs import RunStore
from rl_lab.steer.directions import latest_activation_file

HOOK = "mlp_extractor.policy_net.1"


@pytest.fixture()
def run_with_probe(tiny_run: tuple[Path, str], tmp_path: Path) -> tuple[Path, str, np.ndarray]:
    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    run = RunStore(tmp_path).get(name)
    act = latest_activation_file(run)
    d = ActivationFile(act).hook_dim(HOOK)
    coef = np.random.default_rng(0).standard_normal(d)
    run.probes_dir.mkdir(exist_ok=True)
    np.savez(run.probes_dir / f"{act.stem}.weights.npz",
             **{f"threat@{HOOK}/coef": coef, f"threat@{HOOK}/bias": np.array([0.3])})
    return tmp_path, name, coef


def test_intervene_json(run_with_probe: tuple[Path, str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name, coef = run_with_probe
    argv = ["intervene", name, "--do", "predator_adjacent", "--at-step", "3", "--episodes", "4", "--json",
            "--runs-dir", str(runs_dir)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON document
    assert doc["kind"] == "intervene" and doc["do"]["target"] == "predator_adjacent" and doc["n_used"] == 4
    assert doc["latents"]["predator_adjacent"]["after"] == 1.0
    assert doc["latents"]["distance_to_threat"]["after"] == 1.0
    (probe,) = doc["probes"]
    assert probe["label"] == "threat" and probe["hook"] == HOOK
    with ActivationFile(Path(doc["activations"])) as af:
        spread = float((af.acts(HOOK).astype(np.float64) @ coef).std())
    assert probe["spread"] == pytest.approx(spread, rel=1e-5)
    assert probe["shift"] == pytest.approx((probe["after"] - probe["before"]) / spread, rel=1e-6)
    assert probe["shift_ci"][0] <= probe["shift"] <= probe["shift_ci"][1]
    assert doc["value"]["change"] == pytest.approx(doc["value"]["after"] - doc["value"]["before"])
    files = [p for p in (runs_dir / name / "steer").glob("intervene-*.json")]
    assert len(files) == 1 and json.loads(files[0].read_text())["probes"] == doc["probes"]
    # Same seed, same numbers.
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["probes"] == doc["probes"] and again["value"] == doc["value"]


def test_intervene_table_with_a_value_and_an_sae(run_with_probe: tuple[Path, str, np.ndarray],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from probes.sae.config import make_config
    from probes.sae.model import make_sae, save_sae

    runs_dir, name, _ = run_with_probe
    run = RunStore(runs_dir).get(name)
    torch.manual_seed(0)
    save_sae(make_sae(make_config("relu", d_in=64, d_sae=8, hook_name=HOOK)), run.saes_dir / "tiny-sae")
    assert main(["intervene", name, "--do", "energy=0.05", "--at-step", "2", "--episodes", "3",
                 "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "do energy=0.05" in out and "energy" in out and "threat@" in out and "SAE tiny-sae" in out


@pytest.mark.parametrize("args, needle", [
    (["--do", "lava"], "no do target 'lava'"),
    (["--do", "predator_adjacent=1"], "takes no value"),
    (["--do", "energy=abc"], "must be a number"),
    (["--do", "energy=2"], "takes a value in [0.0, 1.0]"),
    (["--do", "predator_adjacent", "--at-step", "500"], "choose an earlier --at-step"),
])
def test_intervene_bad_input(tiny_run: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                             args: list[str], needle: str) -> None:
    runs_dir, name = tiny_run
    code = main(["intervene", name, *args, "--episodes", "2", "--runs-dir", str(runs_dir)])
    err = capsys.readouterr()
    assert code == 2 and err.out == ""
    lines = [line for line in err.err.splitlines() if line.strip() and "intervene episodes" not in line]
    assert len(lines) == 1 and needle in lines[0], err.err
