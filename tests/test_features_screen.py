"""The features screen over a real run folder: a PPO agent on lab/Forage-v0, recorded, with a small
SAE trained by the demo's SAE stage (``rl_lab.cli.demo.train_demo_sae``), driven by Pilot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from probes.layout import SAELayout
from rl_lab.runs import RunStore


async def _open_features(app: Any, pilot: Any, name: str) -> Any:
    from tui.screens.features import FeaturesScreen

    app.open_features(name)
    screen = app.screen
    for _ in range(300):  # the worker imports numpy/h5py on first use
        await pilot.pause(0.05)
        screen = app.screen
        if isinstance(screen, FeaturesScreen) and (screen.order or screen.error):
            break
    assert isinstance(screen, FeaturesScreen)
    return screen


@pytest.fixture(scope="module")
def ppo_with_sae(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    from rl_lab.cli.demo import DEMO_SAE_HOOK, train_demo_sae
    from rl_lab.config import TrainConfig
    from rl_lab.record import record_run
    from rl_lab.train import train

    runs = tmp_path_factory.mktemp("features") / "runs"
    run = train(TrainConfig(env_id="lab/Forage-v0", algo="ppo", total_timesteps=512, seed=0), runs, name="ppo")
    (h5,) = record_run(run.name, runs, episodes=4, seed=0)
    sae_dir, line = train_demo_sae(run, h5, DEMO_SAE_HOOK, 0)
    assert DEMO_SAE_HOOK in line and "L0" in line
    return runs, run.name, Path(sae_dir)


def test_demo_sae_stage_writes_features_and_views(ppo_with_sae: tuple[Path, str, Path]) -> None:
    from rl_lab.cli.demo import DEMO_SAE_WIDTH

    _, _, sae_dir = ppo_with_sae
    layout = SAELayout(sae_dir)
    assert layout.has_features()
    metrics = json.loads(layout.metrics_path.read_text())
    assert metrics["d_sae"] == DEMO_SAE_WIDTH and "return_recovered" in metrics
    views = metrics["views"]
    assert len(views["logit_effects"]) == DEMO_SAE_WIDTH
    assert views["action_names"] == ["up", "right", "down", "left", "stay"]
    assert "action_net" in views["logit_effect_path"] or "action head" in views["logit_effect_path"]
    assert "attention" not in views  # an MLP agent has none


async def test_features_screen_lists_latents_with_top_steps_and_panels(ppo_with_sae: tuple[Path, str, Path]) -> None:
    from probes.features import FeatureStore
    from tui.app import LabApp
    from tui.widgets.panel import TextPanel

    runs, name, sae_dir = ppo_with_sae
    store = FeatureStore(sae_dir)
    app = LabApp(runs)
    async with app.run_test(size=(120, 44)) as pilot:
        screen = await _open_features(app, pilot, name)
        assert screen.order and screen.order[0] == int(store.sorted_by("density")[0])
        first = screen.order[0]
        summary = str(screen.query_one("#latent-summary", TextPanel).render())
        assert summary.startswith(f"latent {first} ") and "histogram" in summary
        assert "logit effect" in summary and "env variables" in summary  # hunger, threat... are the env's
        steps = str(screen.query_one("#latent-steps", TextPanel).render())
        top = store.latent(first)["top"]
        assert f"top step 1/{len(top)}" in steps
        # the Forage picture of the top step, as recorded
        assert top[0]["text"].splitlines()[0].strip() in steps
        await pilot.press("]")
        assert f"top step 2/{len(top)}" in str(screen.query_one("#latent-steps", TextPanel).render())
        await pilot.press("2")
        sae = str(screen.query_one("#sae-panel", TextPanel).render())
        assert "reconstruction error (MSE) against L0" in sae and "live return" in sae and "┤" in sae
        await pilot.press("3")
        att = str(screen.query_one("#attention-panel", TextPanel).render())
        assert "decision-transformer" in att  # an MLP agent: the panel says why there is no attention


def test_logit_effect_text_orders_pushes() -> None:
    from tui.screens.features import logit_effect_text

    views = {"logit_effects": [[0.5, -0.25, 0.0, 0.1]], "action_names": ["up", "right", "down", "left"]}
    assert logit_effect_text(views, 0) == "up +0.50  left +0.10  ·  right -0.25"
    assert logit_effect_text({}, 0) is None


@pytest.mark.slow
async def test_after_the_demo_the_features_screen_lists_latents(tmp_path: Path) -> None:
    from tui.app import LabApp
    from tui.widgets.panel import TextPanel

    res = subprocess.run([sys.executable, "-m", "rl_lab", "demo", "--steps", "2048", "--episodes", "6",
                          "--supervised-steps", "0", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "press f" in res.stdout and "Sparse autoencoders" in res.stdout
    (run,) = RunStore(tmp_path).list()
    app = LabApp(tmp_path)
    async with app.run_test(size=(120, 44)) as pilot:
        screen = await _open_features(app, pilot, run.name)
        assert len(screen.order) > 0
        assert "top step 1/" in str(screen.query_one("#latent-steps", TextPanel).render())


async def test_features_screen_shows_a_binding_saes_slots(ppo_with_sae: tuple[Path, str, Path]) -> None:
    """A binding SAE's latents are listed with their slot and feature, and a latent's summary
    names the same feature's latents in the other slots (probes.sae.binding's layout)."""
    from probes.sae.training import train_sae_on_file
    from rl_lab.cli.demo import DEMO_SAE_HOOK
    from tui.app import LabApp
    from tui.widgets.panel import TextPanel

    runs, name, _ = ppo_with_sae
    (h5,) = sorted((runs / name / "activations").glob("*.h5"))
    metrics = train_sae_on_file(h5, DEMO_SAE_HOOK, arch="binding", width=32, k=4, slots=2, steps=30, seed=0,
                                overwrite=True, progress=False)
    sae_name = Path(metrics["out_dir"]).name
    app = LabApp(runs)
    async with app.run_test(size=(120, 44)) as pilot:
        from tui.screens.features import FeaturesScreen

        app.open_features(name, sae_name)
        screen = app.screen
        for _ in range(300):
            await pilot.pause(0.05)
            screen = app.screen
            if isinstance(screen, FeaturesScreen) and (screen.order or screen.error):
                break
        assert isinstance(screen, FeaturesScreen) and screen.sae_name == sae_name
        assert screen.slots == 2
        table = screen.query_one("#latents")
        assert "slot·feature" in [str(c.label) for c in table.columns.values()]
        first = screen.order[0]
        summary = str(screen.query_one("#latent-summary", TextPanel).render())
        slot, feature = divmod(first, 16)
        other = (1 - slot) * 16 + feature
        assert f"slot {slot} of 2, feature {feature}" in summary and f"{other} (slot {1 - slot})" in summary
