"""TensorBoard events, SB3 monitor files, --device and DQN's replay buffer across --resume (issue 19).

Real SB3 training of a few thousand steps on lab/Forage-v0; the files are read back with the tools
researchers use on them (TensorBoard's event reader, ``stable_baselines3.common.monitor.load_results``).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl_lab.config import TrainConfig
from rl_lab.errors import LabError
from rl_lab.runs import RunStore
from rl_lab.train import train


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _rl_lab(*args: str, runs: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RL_LAB_RUNS=str(runs))
    return subprocess.run([sys.executable, "-m", "rl_lab", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_train_and_resume_write_tensorboard_monitor_and_current_losses(tmp_path: Path) -> None:
    from stable_baselines3.common.monitor import load_results

    res = _rl_lab("train", "--steps", "2048", "--n-envs", "2", "--name", "tb", "--checkpoint-every", "1024",
                  "--device", "auto", runs=tmp_path)
    assert res.returncode == 0, res.stderr
    run = RunStore(tmp_path).get("tb")
    assert run.info["config"]["device"] == "cpu"  # auto: no CUDA on this machine
    assert sorted(p.name for p in run.path.glob("*.monitor.csv")) == ["0.monitor.csv", "1.monitor.csv"]
    episodes_before = len(load_results(str(run.path)))
    assert episodes_before > 0

    res = _rl_lab("train", "--resume", "tb", "--steps", "4096", runs=tmp_path)
    assert res.returncode == 0, res.stderr
    run.reload()
    assert run.info["steps_done"] == 4096

    # the monitor files were appended to, and SB3's reader reads them all
    episodes = load_results(str(run.path))
    assert len(episodes) > episodes_before
    # TensorBoard: every rollout's mean return once, both sessions' event files in one folder
    scalars = _scalars(run.tensorboard_dir)
    assert len(list(run.tensorboard_dir.glob("events.out.tfevents.*"))) == 2
    assert [s for s, _ in scalars["rollout/ep_rew_mean"]] == [1024, 2048, 3072, 4096]
    assert "train/value_loss" in scalars and "train/approx_kl" in scalars

    # metrics.jsonl, progress.csv and TensorBoard carry the update made from each rollout, the last included
    metrics = [m for m in run.metrics() if "value_loss" in m]
    assert [m["step"] for m in metrics] == [1024, 2048, 3072, 4096]
    with open(run.progress_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["time/total_timesteps"]) for r in rows] == [1024, 2048, 3072, 4096]
    n_epochs = 10  # SB3's PPO default: n_updates counts epochs, so the first update's row says 10
    assert [int(r["train/n_updates"]) for r in rows] == [n_epochs, 2 * n_epochs, 3 * n_epochs, 4 * n_epochs]
    tb_loss = dict(scalars["train/value_loss"])
    for m, r in zip(metrics, rows):
        assert float(r["train/value_loss"]) == pytest.approx(m["value_loss"], rel=1e-6)
        assert tb_loss[m["step"]] == pytest.approx(m["value_loss"], rel=1e-5)


def test_device_cuda_without_cuda_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:0"):
        res = _rl_lab("train", "--steps", "256", "--name", "gpu", "--device", device, runs=tmp_path)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and "CUDA" in lines[0], res.stderr
    res = _rl_lab("train", "--steps", "256", "--device", "tpu", runs=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "auto, cpu, cuda or cuda:N" in res.stderr
    assert not (tmp_path / "gpu").exists()


def test_resolve_device() -> None:
    from rl_lab.devices import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(LabError, match="must be"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(LabError, match="no CUDA"):
            resolve_device("cuda:1")


def test_dqn_resume_keeps_its_replay_buffer(tmp_path: Path) -> None:
    cfg = TrainConfig(algo="dqn", total_timesteps=1200, seed=0, checkpoint_every=600, save_replay_buffer=True)
    run = train(cfg, tmp_path, name="dqn")
    assert run.info["config"]["save_replay_buffer"] is True
    buffers = sorted(run.checkpoints_dir.glob("*.replay.pkl"))
    assert buffers == [run.replay_buffer_path(run.latest_checkpoint())]  # only the newest checkpoint keeps one
    assert run.checkpoints()[-1].suffix == ".zip"  # the buffer is not listed as a checkpoint

    run = train(TrainConfig(total_timesteps=1500), tmp_path, resume="dqn")
    resume = run.info["resumes"][-1]
    assert resume["from_step"] == 1200
    assert resume["replay_buffer_size"] == 1200  # every transition of the first session carried over
    from stable_baselines3 import DQN

    model = DQN.load(run.latest_checkpoint(), device="cpu")
    model.load_replay_buffer(str(run.replay_buffer_path(run.latest_checkpoint())))
    # capacity 1200 (the first session's budget): 1200 carried over + 300 new wrap around to position 300;
    # a resume from an empty buffer would hold only 300
    assert model.replay_buffer.full and model.replay_buffer.pos == 300

    # without the option the resume says it started from an empty buffer
    train(TrainConfig(algo="dqn", total_timesteps=600, seed=0, checkpoint_every=600), tmp_path, name="plain")
    plain = train(TrainConfig(total_timesteps=700), tmp_path, resume="plain")
    assert plain.info["resumes"][-1]["replay_buffer_size"] is None
    assert not list(plain.checkpoints_dir.glob("*.replay.pkl"))


def test_save_replay_buffer_is_for_dqn(tmp_path: Path) -> None:
    res = _rl_lab("train", "--steps", "256", "--algo", "ppo", "--save-replay-buffer", runs=tmp_path)
    assert res.returncode == 2 and "dqn" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_dt_training_writes_tensorboard(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    from rl_lab.dt.train import DTTrainConfig, train_dt

    runs, name = tiny_run
    shutil.copytree(runs / name, tmp_path / name)
    cfg = DTTrainConfig(algo="bc", source_run=name, steps=60, log_every=20, episodes_per_policy=2,
                        eval_episodes=0, patience=0, restore_best=False, device="auto")
    run = train_dt(cfg, tmp_path, name="bc")
    assert run.info["config"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    scalars = _scalars(run.tensorboard_dir)
    lines = [m for m in run.metrics() if "loss" in m]
    assert [s for s, _ in scalars["train/loss"]] == [m["step"] for m in lines] == [20, 40, 60]
    assert scalars["train/loss"][-1][1] == pytest.approx(lines[-1]["loss"], rel=1e-5)


def test_a_pid_is_judged_only_on_its_host(tmp_path: Path) -> None:
    """run.json records the host; a run another machine is training (a Ray trial) is neither alive nor
    dead here, and it is resumed once its lock is free, never because a local pid of that number is gone."""
    import socket

    from rl_lab.runs import liveness, owned_pid, write_json_atomic

    run = train(TrainConfig(total_timesteps=256, n_envs=1, checkpoint_every=128), tmp_path, name="elsewhere")
    assert run.info["host"] == socket.gethostname()
    info = dict(run.info, status="running", pid=os.getpid(), pid_start=run.info.get("pid_start"))
    assert liveness(dict(info, host=socket.gethostname(), pid_start=None)) == "alive"
    assert liveness(dict(info, host=socket.gethostname(), pid=4_000_000)) == "dead"
    other = dict(info, host="another-node-of-the-cluster", pid=4_000_000)
    assert liveness(other) == "unknown" and owned_pid(dict(other, pid=os.getpid())) is None
    write_json_atomic(run.run_json, other)
    stored = RunStore(tmp_path).get("elsewhere")
    assert stored.status == "running"  # not "interrupted": its pid means nothing on this machine
    with stored.lock():  # its process (on the other node) would hold the lock: resuming refuses
        with pytest.raises(LabError, match="in use by another process"):
            train(TrainConfig(total_timesteps=512), tmp_path, resume="elsewhere")
    resumed = train(TrainConfig(total_timesteps=512), tmp_path, resume="elsewhere")
    assert resumed.info["status"] == "done" and resumed.info["steps_done"] == 512
    assert resumed.info["host"] == socket.gethostname()
