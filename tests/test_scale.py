"""Recording and analysing at scale (issue 20): vectorised recording, many SAEs in one pass, bounded
memory and wide hooks. Real SB3 runs (tiny budgets), real HDF5 files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from probes.activations import ActivationFile


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by its path."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_recording(a: Path, b: Path) -> None:
    da, db = datasets(a), datasets(b)
    assert da.keys() == db.keys()
    assert any(k.startswith("acts/") for k in da) and any(k.startswith("labels/") for k in da)
    for key in da:
        assert np.array_equal(da[key], db[key], equal_nan=da[key].dtype.kind == "f"), key


def train_run(runs_dir: Path, name: str, **kwargs):
    from rl_lab.config import TrainConfig
    from rl_lab.train import train

    cfg = dict(env_id="lab/Forage-v0", algo="ppo", total_timesteps=512, seed=0, n_envs=2, checkpoint_every=512)
    cfg.update(kwargs)
    if cfg["algo"] == "dqn":
        cfg["n_envs"] = 1
    return train(TrainConfig(**cfg), runs_dir, name=name)


# --------------------------------------------------------------------------- vectorised recording
@pytest.mark.parametrize("algo,policy", [("ppo", "mlp"), ("dqn", "mlp"), ("recurrent-ppo", "mlp"),
                                         ("ppo", "transformer")])
def test_vectorised_recording_equals_sequential(tmp_path: Path, algo: str, policy: str) -> None:
    """With deterministic actions and the same seeds, --n-envs 4 writes the sequential recorder's file."""
    from rl_lab.record import record

    run = train_run(tmp_path, f"{algo}-{policy}", algo=algo, policy=policy)
    ckpt = run.latest_checkpoint()
    episodes = 6 if policy == "mlp" else 4
    # blocks of a few episodes (each block is one batched forward pass), written as they complete
    seq = record(run, ckpt, episodes=episodes, seed=5, deterministic=True, out=tmp_path / "seq.h5", n_envs=1,
                 flush_rows=64)
    vec = record(run, ckpt, episodes=episodes, seed=5, deterministic=True, out=tmp_path / "vec.h5", n_envs=4,
                 flush_rows=64)
    assert_same_recording(seq, vec)
    one = record(run, ckpt, episodes=episodes, seed=5, deterministic=True, out=tmp_path / "one.h5", n_envs=4)
    with ActivationFile(one) as f, ActivationFile(seq) as g:  # one block: the same values up to float rounding
        for hook in f.hooks:
            assert np.allclose(f.acts(hook), g.acts(hook), atol=1e-5), hook
    with ActivationFile(vec) as f:
        episode = f.steps("episode")
        assert f.attrs["n_envs"] == 4
        assert "vectorised_fallback" not in f.attrs
    assert list(np.unique(episode)) == list(range(episodes))
    assert np.all(np.diff(episode) >= 0)  # written in index order whichever environment finished first


def test_vectorised_recording_stops_at_max_steps_like_sequential(tiny_run, tmp_path: Path) -> None:
    from rl_lab.record import record
    from rl_lab.runs import RunStore

    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    ckpt = run.latest_checkpoint()
    a = record(run, ckpt, episodes=10, seed=1, deterministic=True, out=tmp_path / "a.h5", max_steps=150)
    b = record(run, ckpt, episodes=10, seed=1, deterministic=True, out=tmp_path / "b.h5", max_steps=150, n_envs=3)
    assert_same_recording(a, b)
    with ActivationFile(b) as f:
        assert len(f) >= 150 and len(np.unique(f.steps("episode"))) < 10


def test_sampled_vectorised_recording_is_reproducible(tiny_run, tmp_path: Path) -> None:
    from rl_lab.record import record
    from rl_lab.runs import RunStore

    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    ckpt = run.latest_checkpoint()
    a = record(run, ckpt, episodes=5, seed=2, out=tmp_path / "a.h5", n_envs=3)
    b = record(run, ckpt, episodes=5, seed=2, out=tmp_path / "b.h5", n_envs=3)
    assert_same_recording(a, b)


def test_decision_transformer_falls_back_to_sequential(tiny_run, tmp_path: Path) -> None:
    """A network that reads each reward as it acts is recorded one environment at a time, and the
    file says so; the file equals the sequential one."""
    from rl_lab.dt.train import DTTrainConfig, train_dt
    from rl_lab.record import record
    from rl_lab.runs import RunStore

    src_dir, src_name = tiny_run
    runs_dir = tmp_path / "runs"
    shutil.copytree(src_dir / src_name, runs_dir / src_name)
    train_dt(DTTrainConfig(algo="dt", source_run=src_name, steps=4, context=4, batch_size=16, d_model=16, n_heads=2,
                           d_mlp=32, episodes_per_policy=2, log_every=2, checkpoint_every=4, eval_episodes=1,
                           restore_best=False, patience=0), runs_dir, name="dt0")
    run = RunStore(runs_dir).get("dt0")
    ckpt = run.latest_checkpoint()
    seq = record(run, ckpt, episodes=3, seed=0, deterministic=True, out=tmp_path / "seq.h5", random_baseline=False)
    vec = record(run, ckpt, episodes=3, seed=0, deterministic=True, out=tmp_path / "vec.h5", random_baseline=False,
                 n_envs=4)
    assert_same_recording(seq, vec)
    with ActivationFile(vec) as f:
        assert f.attrs["n_envs"] == 1
        assert "sequentially" in f.attrs["vectorised_fallback"]


def test_cli_record_n_envs(tiny_run, tmp_path: Path) -> None:
    runs_dir, name = tiny_run
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir / name, copy / name)
    cli = [sys.executable, "-m", "rl_lab", "record", name, "--runs-dir", str(copy)]
    bad = subprocess.run(cli + ["--n-envs", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "error" in bad.stderr
    ok = subprocess.run(cli + ["--n-envs", "3", "--episodes", "4", "--overwrite", "--deterministic"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    with ActivationFile(Path(ok.stdout.strip().splitlines()[-1])) as f:
        assert f.attrs["n_envs"] == 3 and f.attrs["n_episodes"] == 4


# --------------------------------------------------------------------------- feature extractors and wide hooks
def _extractor_class():
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from torch import nn

    class WideExtractor(BaseFeaturesExtractor):
        """A CNN-like extractor: a 1-d convolution over the grid planes, then a layer wider than 2,048."""

        def __init__(self, observation_space, features_dim: int = 32) -> None:
            super().__init__(observation_space, features_dim)
            n = int(observation_space.shape[0])
            self.cnn = nn.Sequential(nn.Conv1d(1, 4, kernel_size=8, stride=4), nn.ReLU(), nn.Flatten())
            conv_out = 4 * ((n - 8) // 4 + 1)
            self.wide = nn.Sequential(nn.Linear(conv_out, 2100), nn.ReLU())
            self.linear = nn.Sequential(nn.Linear(2100, features_dim), nn.ReLU())

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.linear(self.wide(self.cnn(obs[:, None, :])))

    return WideExtractor


def test_feature_extractor_layers_are_recorded_and_wide_hooks_probed(tmp_path: Path) -> None:
    """A policy with its own feature extractor records its layers under their module names
    (vectorised too), and a hook wider than 2,048 units is probed through the stated reduction."""
    from stable_baselines3 import PPO

    from probes.linear import MAX_FEATURE_DIM, REDUCED_DIMS, probe_file
    from probes.results import ProbeRecord, ProbeResults
    from rl_lab.adapters import SB3Adapter
    from rl_lab.record import record
    from rl_lab.train import make_env

    run = train_run(tmp_path, "grid", env_kwargs={"obs_mode": "grid"}, total_timesteps=256)
    env = make_env("lab/Forage-v0", {"obs_mode": "grid"})
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, seed=0, device="cpu",
                policy_kwargs={"features_extractor_class": _extractor_class(), "net_arch": [16]})
    model.learn(64)
    adapter = SB3Adapter(model, deterministic=True)
    assert {"features_extractor.cnn.1", "features_extractor.wide.1", "features_extractor.linear.1"} <= set(adapter.hooks)
    kwargs = dict(episodes=6, seed=0, deterministic=True, max_steps=400)
    seq = record(run, run.latest_checkpoint(), out=tmp_path / "seq.h5", adapter=adapter, **kwargs)
    vec = record(run, run.latest_checkpoint(), out=tmp_path / "vec.h5", adapter=adapter, n_envs=3, **kwargs)
    assert_same_recording(seq, vec)
    with ActivationFile(vec) as f:
        assert f.hook_dim("features_extractor.wide.1") == 2100 > MAX_FEATURE_DIM
        assert "features_extractor.cnn.1" in f.random_hooks
    doc = ProbeResults.from_dict(probe_file(vec, labels=["value", "action"], n_bootstrap=20, n_folds=3, workers=1,
                                                out_json=tmp_path / "vec.json"))
    wide = [r for r in doc.records if r.hook == "features_extractor.wide.1"]
    narrow = [r for r in doc.records if r.hook == "features_extractor.linear.1"]
    assert wide and narrow
    for rec in wide:
        assert rec.reduction == {"kind": "random_projection", "dims": REDUCED_DIMS, "seed": rec.reduction["seed"],
                                 "input_dims": 2100}
        assert rec.score is not None and "random_weights" in rec.baselines
        again = ProbeRecord.from_dict(rec.to_dict())  # the field survives the document
        assert again.reduction == rec.reduction
    assert all(r.reduction is None and "reduction" not in r.to_dict() for r in narrow)
    assert any("random projection" in note for note in doc.notes)
    # the saved direction reads the layer itself (2,100 wide), not its projection
    assert doc.weights is not None
    weights = np.load(doc.weights)
    wide_keys = [k for k in weights.files if "features_extractor.wide.1" in k and k.endswith("coef")]
    assert wide_keys and all(weights[k].shape[-1] == 2100 for k in wide_keys)


def test_probe_record_without_reduction_reads_as_before() -> None:
    from probes.results import ProbeRecord

    old = {"hook": "h", "label": "value", "metric": "r2", "score": 0.5}
    rec = ProbeRecord.from_dict(old)
    assert rec.reduction is None and "reduction" not in rec.to_dict() and "reduction" not in rec.extra


# --------------------------------------------------------------------------- many SAEs, one pass
def _recording(tiny_run, tmp_path: Path) -> Path:
    runs_dir, name = tiny_run
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir / name, copy / name)
    return next((copy / name / "activations").glob("*.h5"))


def test_many_saes_in_one_pass_equal_separate_ones(tiny_run, tmp_path: Path) -> None:
    """Each SAE of a one-pass grid is the SAE a separate call trains (same rows, same order)."""
    from safetensors.numpy import load_file

    from probes.layout import SAELayout
    from probes.sae.training import train_sae_on_file, train_saes_on_file

    h5 = _recording(tiny_run, tmp_path)
    hooks = ["mlp_extractor.policy_net.1", "mlp_extractor.value_net.1"]
    common = dict(arch="topk", steps=30, progress=False, features=False, seed=3)
    many = train_saes_on_file(h5, hooks, widths=[32, 48], ks=[4, 8], **common)
    assert len(many) == 8
    names = sorted(Path(m["out_dir"]).name for m in many)
    assert names == sorted(f"{h}-topk-{w}-k{k}" for h in hooks for w in (32, 48) for k in (4, 8))
    assert all(Path(m["out_dir"]).parent == h5.parent.parent / "saes" for m in many)
    alone = train_sae_on_file(h5, hooks[1], width=48, k=8, out_dir=tmp_path / "alone", **common)
    twin = next(m for m in many if Path(m["out_dir"]).name == f"{hooks[1]}-topk-48-k8")
    a, b = (load_file(str(SAELayout(Path(m["out_dir"])).weights_path)) for m in (alone, twin))
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert alone["explained_variance"] == twin["explained_variance"] and twin["trained_with"] == 8
    with pytest.raises(Exception, match="already exists"):  # every folder is checked before training
        train_saes_on_file(h5, hooks, widths=[32], ks=[4, 8], **common)


def test_sae_cli_several_hooks_and_sweeps(tiny_run, tmp_path: Path) -> None:
    import json

    h5 = _recording(tiny_run, tmp_path)
    base = [sys.executable, "-m", "probes.sae", str(h5), "--hook", "mlp_extractor.policy_net.1",
            "--hook", "mlp_extractor.value_net.3", "--steps", "20", "--no-features"]
    res = subprocess.run(base + ["--width", "16,32", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    docs = json.loads(res.stdout)
    assert [(d["hook_name"], d["d_sae"]) for d in docs] == [
        ("mlp_extractor.policy_net.1", 16), ("mlp_extractor.policy_net.1", 32),
        ("mlp_extractor.value_net.3", 16), ("mlp_extractor.value_net.3", 32)]
    for bad in (["--width", "16,x"], ["--k", "0"], ["--width", "16,32", "--out", str(tmp_path / "one")]):
        res = subprocess.run(base + bad, capture_output=True, text=True)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "one").exists()
    lab = subprocess.run([sys.executable, "-m", "rl_lab", "sae", str(h5), "--hook", "mlp_extractor.policy_net.1",
                          "--hook", "mlp_extractor.value_net.1", "--steps", "20", "--no-features", "--width", "24",
                          "--live-episodes", "0", "--json"], capture_output=True, text=True)
    assert lab.returncode == 0, lab.stderr
    assert [d["hook_name"] for d in json.loads(lab.stdout)] == ["mlp_extractor.policy_net.1",
                                                               "mlp_extractor.value_net.1"]
