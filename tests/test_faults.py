"""Faults: interrupt and resume, kill -9, concurrent resume, killed overwrites, path escapes, crafted checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from probes.layout import RunLayout, UnsafeName, safe_component
from rl_lab.cli import main
from rl_lab.config import TrainConfig
from rl_lab.errors import LabError
from rl_lab.runs import RunStore, iter_metrics, owned_pid, pid_alive, process_start_time


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _steps(run_dir: Path) -> list[int]:
    return [int(m["step"]) for m in iter_metrics(run_dir / "metrics.jsonl") if "step" in m]


def _interrupt_at(step: int):
    def progress(done: int, total: int) -> None:
        if done >= step:
            raise KeyboardInterrupt

    return progress


def test_interrupt_then_resume_keeps_target_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rl_lab.train import train

    cfg = TrainConfig(env_id="CartPole-v1", algo="ppo", total_timesteps=768, seed=0, n_envs=1,
                      checkpoint_every=256, n_steps=128)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, name="r", progress=_interrupt_at(300))
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "interrupted" and info["total_timesteps"] == 768
    code, err = _cli(["train", "--resume", "r", "--runs-dir", str(tmp_path)], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["total_timesteps"] == 768  # not the CLI's default 50,000
    # SB3 finishes the rollout under way, so the run may pass its target by less than one rollout
    assert 768 <= info["steps_done"] < 768 + 128 and info["status"] == "done"
    steps = _steps(tmp_path / "r")
    assert steps == sorted(set(steps)) and steps[-1] == info["steps_done"]


def test_kill_9_then_resume_cuts_superseded_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real SIGKILL after metrics went past the last checkpoint; resume cuts the lines after it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_lab", "train", "--env", "CartPole-v1", "--steps", "200000", "--n-envs", "1",
         "--checkpoint-every", "1024", "--name", "k", "--runs-dir", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "k"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            ckpts = sorted((run_dir / "checkpoints").glob("step_*.zip")) if run_dir.exists() else []
            steps = _steps(run_dir) if run_dir.exists() else []
            if ckpts and steps and steps[-1] > int(ckpts[-1].stem.split("_")[1]):
                break
            time.sleep(0.05)
        else:
            pytest.fail("training never passed a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running" and not pid_alive(info["pid"], info["pid_start"])
    assert RunStore(tmp_path).get("k").status == "interrupted"
    ckpt_step = max(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.zip"))
    assert _steps(run_dir)[-1] > ckpt_step
    # Resume only as far as the checkpoint: the cut is what we check, not more training.
    code, err = _cli(["train", "--resume", "k", "--steps", str(ckpt_step), "--runs-dir", str(tmp_path)], capsys)
    assert code == 0, err
    steps = _steps(run_dir)
    assert steps and max(steps) <= ckpt_step and steps == sorted(set(steps))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["steps_done"] == ckpt_step and info["resumes"][-1]["from_step"] == ckpt_step
    assert info["resumes"][-1]["metrics_lines_cut"] >= 1


def test_concurrent_resume_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    run = store.create("c", {"status": "interrupted", "env_id": "CartPole-v1", "algo": "ppo",
                             "config": TrainConfig(env_id="CartPole-v1").to_dict()})
    with run.lock():  # another process is training it
        code, err = _cli(["train", "--resume", "c", "--runs-dir", str(tmp_path)], capsys)
        assert code == 2 and "in use by another process" in err and err.count("\n") == 1
    # The lock dies with its holder: a killed holder leaves nothing stuck.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rl_lab.runs import RunStore; "
        f"RunStore({str(tmp_path)!r}).get('c').lock().acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LabError, match="in use"):
        store.get("c").lock().acquire()
    holder.kill()
    holder.wait()
    store.get("c").lock().acquire().release()


def test_pid_checks_reject_invalid_and_reused_pids() -> None:
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None and pid_alive(me, start)
    assert not pid_alive(me, start + 1)  # the pid reused by another process
    for pid in (-1, 0, 1, "abc", 10**20, True, None, 2.5):
        assert not pid_alive(pid)
    assert owned_pid({"pid": me, "pid_start": start}) == me
    assert owned_pid({"pid": me}) is None  # no start time: nothing proves the process is the run's
    assert owned_pid({"pid": -1, "pid_start": 0}) is None and owned_pid({"pid": 1, "pid_start": 1}) is None


def _copy_run(tiny_run: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    return tmp_path, name


def test_record_overwrite_killed_keeps_previous(tiny_run, tmp_path: Path, capsys) -> None:
    from probes.activations import ActivationFile, recording_id, stale_reason
    from rl_lab.record import record_run

    runs_dir, name = _copy_run(tiny_run, tmp_path)
    layout = RunLayout(runs_dir / name)
    (h5,) = layout.activation_files()
    before = h5.read_bytes()
    code, err = _cli(["record", name, "--runs-dir", str(runs_dir)], capsys)
    assert code == 2 and "--overwrite" in err
    with pytest.raises(KeyboardInterrupt):  # killed midway through the new recording
        record_run(name, runs_dir, episodes=3, overwrite=True, progress_factory=lambda d: (_interrupt_at(1), lambda: None))
    assert h5.read_bytes() == before and layout.activation_files() == [h5]
    assert not [p for p in layout.activations_dir.iterdir() if p != h5]  # no temporary left
    with ActivationFile(h5) as f:
        assert f.complete
    # Probe results refer to the recording they read; replacing it makes them stale.
    code, err = _cli(["probe", str(h5), "--labels", "value,threat", "--hooks", "value_net", "--json"], capsys)
    assert code == 0, err
    results = json.loads(layout.probe_results_path(h5.stem).read_text())
    assert results["recording_id"] == recording_id(h5) and stale_reason(results) is None
    from rl_lab.compare import compare
    from tui.data import load_probe_file

    assert not any("stale" in n for n in load_probe_file(layout.probe_results_path(h5.stem)).notes)
    record_run(name, runs_dir, episodes=2, overwrite=True)
    assert "replaced" in stale_reason(results)
    # every reader says so: the app's probes screen and a comparison
    assert "replaced" in load_probe_file(layout.probe_results_path(h5.stem)).notes[0]
    notes = compare([name], runs_dir, write=False)["notes"]
    assert any(n.startswith(f"run {name}: stale") for n in notes)


def test_sae_overwrite_refuses_and_killed_keeps_previous(tiny_run, tmp_path: Path, capsys, monkeypatch) -> None:
    import probes.sae.training as training

    runs_dir, name = _copy_run(tiny_run, tmp_path)
    layout = RunLayout(runs_dir / name)
    (h5,) = layout.activation_files()
    args = ["sae", str(h5), "--hook", "mlp_extractor.policy_net.1", "--width", "8", "--k", "2", "--steps", "5",
            "--no-features", "--json"]
    code, err = _cli(args, capsys)
    assert code == 0, err
    (sae_dir,) = layout.sae_dirs()
    before = {p.name: p.read_bytes() for p in sae_dir.iterdir()}
    code, err = _cli(args, capsys)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "compute_features", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train_sae_on_file(h5, "mlp_extractor.policy_net.1", width=8, k=2, steps=5, progress=False,
                                   overwrite=True, seed=7)
    assert {p.name: p.read_bytes() for p in sae_dir.iterdir()} == before
    assert [p.name for p in layout.saes_dir.iterdir()] == [sae_dir.name]  # no temporary folder left
    monkeypatch.undo()
    code, err = _cli(args[:-1] + ["--overwrite", "--seed", "3", "--json"], capsys)
    assert code == 0, err
    assert json.loads((sae_dir / "cfg.json").read_text())["seed"] == 3


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "", "x" * 300, "a\x00b", "-rf"])
def test_safe_component_refuses_escapes(name: str) -> None:
    with pytest.raises(UnsafeName):
        safe_component(name, "name")
    layout = RunLayout(Path("/tmp/run"))
    for build in (layout.sae_dir, layout.trajectories_path, layout.steer_path, layout.activation_path):
        with pytest.raises(UnsafeName):
            build(name)


def test_crafted_hdf5_hook_cannot_escape(tmp_path: Path, capsys) -> None:
    """A file whose /acts holds groups named '..' and a --hook through them cannot write outside."""
    import h5py
    import numpy as np

    from probes.activations import ActivationWriter

    run = tmp_path / "runs" / "r"
    path = run / "activations" / "x.h5"
    w = ActivationWriter(path, {"run": "r"}, {})
    n = 40
    w.append({"obs": np.zeros((n, 2), np.float32), "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
              "done": np.arange(n) % 10 == 9, "episode": np.arange(n) // 10, "t": np.arange(n) % 10},
             {"value": np.zeros(n, np.float32)}, {"h": np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)})
    w.close(complete=True)
    with h5py.File(path, "a") as h5:
        h5["acts"].create_group("..").create_group("..").create_dataset(
            "evil", data=np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32))
    code, err = _cli(["sae", str(path), "--hook", "../../evil", "--steps", "2", "--no-features"], capsys)
    assert code == 2 and "hook" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert not (run / "evil-topk-32").exists() and not (run / "saes").exists()


def test_trajectories_name_cannot_escape(tiny_run, capsys) -> None:
    runs_dir, name = tiny_run
    code, err = _cli(["train", "--algo", "bc", "--from", name, "--trajectories", "../../..", "--name", "t",
                      "--runs-dir", str(runs_dir)], capsys)
    assert code == 2 and "trajectories name" in err
    assert not (runs_dir / "t").exists()


def _crafted_checkpoint(path: Path, marker: Path) -> None:
    """An SB3-looking zip whose pickled field writes ``marker`` when unpickled."""
    import base64
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = base64.b64encode(pickle.dumps(Payload())).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": blob}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))
        zf.writestr("_stable_baselines3_version", "2.0.0")


def test_crafted_checkpoint_does_not_run_without_trust(tiny_run, tmp_path: Path, capsys) -> None:
    runs_dir, name = tiny_run
    evil, marker = tmp_path / "evil.zip", tmp_path / "pwned"
    _crafted_checkpoint(evil, marker)
    for cmd in (["record", name, "--checkpoint", str(evil)],
                ["steer", name, "--direction", "diff:value@value_net", "--checkpoint", str(evil)]):
        code, err = _cli(cmd + ["--runs-dir", str(runs_dir)], capsys)
        assert code == 2 and "--trust" in err and err.count("\n") == 1, err
        assert not marker.exists()
    # With --trust the user vouches for the file: it is loaded (and here, runs its payload).
    code, err = _cli(["record", name, "--checkpoint", str(evil), "--trust", "--runs-dir", str(runs_dir)], capsys)
    assert marker.exists()
    for leftover in RunLayout(runs_dir / name).activations_dir.glob("evil*"):
        leftover.unlink()


def test_create_failure_leaves_no_run_folder(tmp_path: Path, monkeypatch) -> None:
    import errno

    import rl_lab.runs as runs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "write_bytes_atomic", full)
    with pytest.raises(OSError):
        RunStore(tmp_path).create("r", {"status": "running"})
    assert not (tmp_path / "r").exists()  # the name is not used up


def test_disk_full_is_one_line() -> None:
    import errno

    from rl_lab.cli import error_line

    assert error_line(OSError(errno.ENOSPC, "No space left on device", "f")).startswith("out of disk space (f)")
    assert "\n" not in error_line(LabError("a\nb")) and len(error_line(LabError("x" * 5000))) <= 400
