"""An SAE inside a decision transformer: loss recovered, return recovered, feature views.

A tiny real pipeline (PPO on lab/Forage-v0 -> record -> DT -> record the DT); the splice is
checked against SAEs whose answer is known: an exact SAE (ReLU over [I, -I], so x_hat = x)
recovers all of the loss, a silent one (x_hat = 0) none of the zero-ablation gap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.layout import SAELayout
from probes.sae.config import make_config
from probes.sae.model import make_sae, save_sae
from rl_lab.runs import RunStore


def _cli(*args: str, runs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl_lab", *args, "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dt_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("dtsae") / "runs"
    for args in (("train", "--env", "lab/Forage-v0", "--algo", "ppo", "--steps", "512", "--name", "ppo"),
                 ("record", "ppo", "--episodes", "3"),
                 ("train", "--algo", "dt", "--from", "ppo", "--steps", "40", "--name", "dt", "--eval-episodes", "1",
                  "--episodes-per-policy", "2"),
                 ("record", "dt", "--episodes", "6")):
        res = _cli(*args, runs=runs)
        assert res.returncode == 0, res.stderr[-2000:]
    return runs, "dt"


def _hand_sae(path: Path, d: int, hook: str, exact: bool) -> Path:
    """A ReLU SAE with 2d latents: W_enc = [I, -I], W_dec = [I; -I] (exact) or a silent one."""
    cfg = make_config("relu", d_in=d, d_sae=2 * d, hook_name=hook)
    sae = make_sae(cfg)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if not exact:
            sae.b_enc.fill_(-1e6)  # never fires: x_hat = b_dec = 0
    return save_sae(sae, path)


def test_loss_recovered_is_one_for_an_exact_sae_and_zero_for_a_silent_one(dt_run: tuple[Path, str],
                                                                          tmp_path: Path) -> None:
    from rl_lab.dt.sae_eval import loss_metrics
    from rl_lab.sae_splice import hook_mean

    runs, name = dt_run
    run = RunStore(runs).get(name)
    h5 = run.activation_files()[-1]
    hook = "blocks.0.hook_resid_post"
    d = run.info["model_config"]["d_model"]
    mean = hook_mean(h5, hook)
    exact = loss_metrics(run, _hand_sae(tmp_path / "exact", d, hook, True), h5, mean)
    assert exact["loss_spliced"] == pytest.approx(exact["loss_clean"], abs=1e-5)
    assert exact["loss_zero_ablated"] > exact["loss_clean"]  # deleting layer 0's state tokens hurts
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert exact["loss_recovered_baseline"] == "zero_ablation"
    silent = loss_metrics(run, _hand_sae(tmp_path / "silent", d, hook, False), h5, mean)
    assert silent["loss_spliced"] == pytest.approx(silent["loss_zero_ablated"], abs=1e-5)
    assert silent["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert silent["loss_rows"] == exact["loss_rows"] > 0


def test_rl_lab_sae_on_a_dt_hook_reports_held_out_and_live_metrics(dt_run: tuple[Path, str]) -> None:
    runs, name = dt_run
    res = _cli("sae", name, "--hook", "blocks.0.hook_resid_post", "--width", "64", "--k", "4", "--steps", "40",
               "--live-episodes", "2", runs=runs)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "loss recovered" in res.stdout and "zero-ablation baseline" in res.stdout
    (sae_dir,) = RunStore(runs).get(name).sae_dirs()
    metrics = json.loads(SAELayout(sae_dir).metrics_path.read_text())
    for key in ("l0", "mse", "explained_variance", "dead_fraction", "dense_fraction", "loss_recovered",
                "loss_recovered_mean_ablation", "loss_clean", "loss_spliced", "loss_zero_ablated",
                "loss_mean_ablated", "return_clean", "return_spliced", "return_zero_ablated", "return_mean_ablated"):
        assert key in metrics, key
    assert metrics["loss_clean"] <= metrics["loss_zero_ablated"] or metrics["loss_recovered"] is None
    assert metrics["live_episodes"] == 2
    views = metrics["views"]
    assert len(views["logit_effects"]) == 64 and len(views["logit_effects"][0]) == 5
    assert views["action_names"] == ["up", "right", "down", "left", "stay"]
    assert views["label_sources"]["hunger"] == "environment"
    assert len(views["recon"]["l0"]) == len(views["recon"]["mse"]) > 0
    assert max(views["recon"]["l0"]) <= 4
    att = views["attention"]
    K = json.loads((runs / name / "run.json").read_text())["model_config"]["context"]
    assert len(att["tokens"]) == 3 * K and att["tokens"][-3:] == ["R", "s", "a"]
    pattern = np.asarray(att["steps"][0]["patterns"])  # [targets, layers, heads, n_ctx]
    assert pattern.shape[1:] == (att["layers"], att["heads"], 3 * K)
    assert np.allclose(pattern.sum(-1), 1.0, atol=1e-3)  # each head's row is a distribution
    assert pattern[..., -1].max() < 1e-6  # the state token cannot see its own action token
    # the SAE is saved in SAELens' layout, as before: cfg.json + sae_weights.safetensors with its keys
    from safetensors.torch import load_file

    layout = SAELayout(sae_dir)
    assert layout.cfg_path.name == "cfg.json" and layout.weights_path.name == "sae_weights.safetensors"
    cfg = json.loads(layout.cfg_path.read_text())
    assert cfg["hook_name"] == "blocks.0.hook_resid_post" and cfg["d_sae"] == 64
    tensors = load_file(str(layout.weights_path))
    assert tuple(tensors["W_dec"].shape) == (64, cfg["d_in"]) and tuple(tensors["W_enc"].shape) == (cfg["d_in"], 64)


async def test_features_screen_shows_a_dt_sae_with_attention(dt_run: tuple[Path, str]) -> None:
    from tui.app import LabApp
    from tui.screens.features import FeaturesScreen
    from tui.widgets.panel import TextPanel

    runs, name = dt_run
    if not RunStore(runs).get(name).sae_dirs():
        res = _cli("sae", name, "--hook", "blocks.0.hook_resid_post", "--width", "64", "--k", "4", "--steps", "40",
                   "--live-episodes", "0", runs=runs)
        assert res.returncode == 0, res.stderr[-2000:]
    app = LabApp(runs)
    async with app.run_test(size=(120, 44)) as pilot:
        app.open_features(name)
        for _ in range(200):
            await pilot.pause(0.05)
            screen = app.screen
            if isinstance(screen, FeaturesScreen) and screen.store is not None and screen.order:
                break
        assert isinstance(screen, FeaturesScreen) and screen.order
        await pilot.press("2")
        sae = str(screen.query_one("#sae-panel", TextPanel).render())
        assert "loss recovered" in sae and "reconstruction error (MSE) against L0" in sae
        await pilot.press("3")
        att = str(screen.query_one("#attention-panel", TextPanel).render())
        assert "L0H0" in att and "target" in att and "on R" in att
        await pilot.press("n")
        assert "step 2/" in str(screen.query_one("#attention-panel", TextPanel).render())
