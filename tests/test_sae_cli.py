"""``rl-lab sae`` on a real run: trains, saves the SAELens layout, splices into the live agent."""

from __future__ import annotations

import json
import shutil

import pytest

from rl_lab.cli import main


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    return tmp_path, name


def test_sae_command_with_live_splice(run_copy, capsys) -> None:
    runs_dir, name = run_copy
    hook = "mlp_extractor.policy_net.3"
    rc = main(["sae", name, "--runs-dir", str(runs_dir), "--hook", hook, "--width", "64", "--steps", "30",
               "--live-episodes", "2", "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    out_dir = runs_dir / name / "saes" / f"{hook}-topk-64"
    assert metrics["out_dir"] == str(out_dir)
    assert {"cfg.json", "sae_weights.safetensors", "metrics.json"} <= {p.name for p in out_dir.iterdir()}
    cfg = json.loads((out_dir / "cfg.json").read_text())
    assert cfg["hook_name"] == hook and cfg["d_sae"] == 64
    saved = json.loads((out_dir / "metrics.json").read_text())
    for key in ("l0", "explained_variance", "mse", "dead_fraction", "dense_fraction",
                "return_clean", "return_spliced", "return_mean_ablated", "kl_spliced", "kl_mean_ablated"):
        assert key in saved, key
    assert saved["kl_spliced"] >= 0 and saved["kl_mean_ablated"] >= 0


def test_value_hook_splice_cannot_change_behaviour(run_copy) -> None:
    """The policy never reads the critic: splicing there leaves actions and returns unchanged."""
    from probes.sae.training import train_sae_on_file
    from rl_lab.runs import RunStore
    from rl_lab.sae_splice import splice_metrics

    runs_dir, name = run_copy
    run = RunStore(runs_dir).get(name)
    (h5,) = run.activation_files()
    m = train_sae_on_file(h5, "mlp_extractor.value_net.3", width=32, steps=10, progress=False, features=False)
    live = splice_metrics(run, m["out_dir"], h5, episodes=2)
    assert live["kl_spliced"] == 0.0 and live["kl_mean_ablated"] == 0.0
    assert live["return_clean"] == live["return_spliced"] == live["return_mean_ablated"]
    assert live["return_recovered"] is None and "undefined" in live["live_note"]


def test_sae_command_bad_input(tmp_path, capsys) -> None:
    assert main(["sae", "nope", "--runs-dir", str(tmp_path), "--hook", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
