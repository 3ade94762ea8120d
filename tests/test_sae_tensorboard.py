"""SAE training writes TensorBoard events beside the run's others (issue 19).

Real SAE training (a few dozen steps) on the session's tiny PPO run's recording; the events are
read back with TensorBoard's own reader, as ``tensorboard --logdir RUNS_DIR`` would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from probes.layout import TMP_MARK, sae_tensorboard_dir
from probes.sae.training import EVAL_EVENTS, EVENT_EVERY, train_sae_on_file
from rl_lab.cli import main
from rl_lab.runs import RunStore

HOOK = "mlp_extractor.policy_net.3"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture()
def run_copy(tiny_run: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    return tmp_path, name


def test_sae_command_writes_its_scalars_beside_the_runs_events(run_copy: tuple[Path, str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    run = RunStore(runs_dir).get(name)
    assert main(["sae", name, "--runs-dir", str(runs_dir), "--hook", HOOK, "--width", "32", "--steps", "25",
                 "--live-episodes", "0", "--no-features", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    sae_name = f"{HOOK}-topk-32"
    events = run.sae_tensorboard_dir(sae_name)
    assert events == run.tensorboard_dir / "saes" / sae_name
    assert Path(metrics["out_dir"]) == run.sae_dir(sae_name)
    assert len(list(events.glob("events.out.tfevents.*"))) == 1
    assert not [p for p in events.parent.iterdir() if TMP_MARK in p.name]  # the hidden build folder was renamed

    scalars = _scalars(events)
    # the loss parts, the total, the learning rate and the dead fraction every EVENT_EVERY steps and at the last
    for tag in ("train/mse", "train/loss", "train/lr", "train/dead_fraction"):
        assert [s for s, _ in scalars[tag]] == [EVENT_EVERY, 2 * EVENT_EVERY, 25], tag
    saved = json.loads((run.sae_dir(sae_name) / "metrics.json").read_text())
    assert scalars["train/mse"][-1][1] == pytest.approx(saved["final_train_loss"]["mse"], rel=1e-5)
    # the held-out metrics once, at the last step, equal to metrics.json's
    for key in EVAL_EVENTS:
        ((step, value),) = scalars[f"eval/{key}"]
        assert step == 25 and value == pytest.approx(saved[key], rel=1e-5, abs=1e-7), key

    # --overwrite replaces the SAE and its events together: one training's events, not two
    assert main(["sae", name, "--runs-dir", str(runs_dir), "--hook", HOOK, "--width", "32", "--steps", "12",
                 "--live-episodes", "0", "--no-features", "--overwrite", "--json"]) == 0
    capsys.readouterr()
    assert len(list(events.glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in _scalars(events)["train/loss"]] == [10, 12]


def test_a_file_outside_a_run_gets_its_events_beside_it(run_copy: tuple[Path, str], tmp_path: Path) -> None:
    runs_dir, name = run_copy
    (h5,) = RunStore(runs_dir).get(name).activation_files()
    loose = tmp_path / "loose" / "acts.h5"
    loose.parent.mkdir()
    shutil.copy(h5, loose)
    m = train_sae_on_file(loose, HOOK, arch="relu", width=16, steps=10, progress=False, features=False)
    events = sae_tensorboard_dir(loose, Path(m["out_dir"]).name)
    assert events == loose.parent / "acts.tensorboard" / "saes" / f"{HOOK}-relu-16"
    scalars = _scalars(events)
    assert {"train/mse", "train/l1", "train/loss", "eval/l0", "eval/explained_variance"} <= set(scalars)


def test_a_failed_training_leaves_no_events(run_copy: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from probes.sae import training

    runs_dir, name = run_copy
    run = RunStore(runs_dir).get(name)
    (h5,) = run.activation_files()

    def killed(*args: object, **kwargs: object) -> None:  # a kill after training, before the SAE is saved
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate_many", killed)
    with pytest.raises(KeyboardInterrupt):
        train_sae_on_file(h5, HOOK, width=32, steps=10, progress=False, features=False)
    saes_events = run.tensorboard_dir / "saes"
    assert not saes_events.exists() or not list(saes_events.iterdir())  # the hidden build folder is gone
    assert not run.sae_dirs()
