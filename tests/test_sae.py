"""Tests of probes.sae: planted-dictionary recovery, file training, save/load, the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.activations import ActivationWriter
from probes.errors import ProbeError
from probes.sae.config import make_config
from probes.sae.data import H5Source, TensorSource, split_rows
from probes.sae.model import REGISTRY, load_sae, make_sae, update_metrics
from probes.sae.planted import planted_dictionary, recovery
from probes.sae.training import fit, geometric_median, train_in_memory, train_sae_on_file
from probes.splits import split_episodes


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small SAEs train fastest on one thread, and a shared machine does not stall them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_planted_file(path: Path, n: int = 6000, d: int = 16, n_dirs: int = 24, episodes: int = 12, seed: int = 0) -> np.ndarray:
    """An activation file whose hook ``h`` holds planted-dictionary rows; returns the directions."""
    data = planted_dictionary(n, d, n_dirs, active=3, seed=seed)
    ep = np.repeat(np.arange(episodes), n // episodes)
    t = np.concatenate([np.arange(n // episodes)] * episodes)
    with ActivationWriter(path, {"run": "r", "checkpoint": "c", "env_id": "e"},
                          label_meta={"fear": {"kind": "continuous", "description": "d", "linear_in": []}}) as w:
        w.append(
            {"obs": np.zeros((n, 2), np.float32), "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
             "done": t == t.max(), "episode": ep, "t": t, "text": [f"step {i}" for i in range(n)]},
            {"fear": data.x @ data.directions[0]},
            {"h": data.x},
        )
    return data.directions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_recovers_planted_dictionary_with_defaults(seed: int) -> None:
    # Smaller instance of the check: 128 unit directions in 64 dimensions, ~8 active.
    data = planted_dictionary(20_000, 64, 128, active=8, seed=seed)
    cfg = make_config("topk", d_in=64, d_sae=256, k=16, seed=seed)
    sae, _ = train_in_memory(data.x, cfg)
    assert recovery(sae.W_dec, data.directions) >= 0.95
    x = torch.from_numpy(data.x[:4000])
    with torch.no_grad():
        err = (x - sae(x)).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum()
    assert 1 - float(err / var) > 0.9
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(256), atol=1e-4)


def _dense_topk_loss(sae: torch.nn.Module, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """The TopK + AuxK loss written densely, as the textbook formulation (no sparse kernels)."""
    cfg = sae.cfg
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(cfg.k, dim=-1)
    err = x - (torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ sae.W_dec + sae.b_dec)
    loss = err.pow(2).sum(-1).mean()
    n_dead, k_base = int(dead.sum()), cfg.d_in // 2
    if n_dead:
        a_vals, a_idx = pre.masked_fill(~dead, float("-inf")).topk(min(k_base, n_dead), dim=-1)
        e_hat = torch.zeros_like(pre).scatter(-1, a_idx, a_vals.relu()) @ sae.W_dec
        aux = (err.detach() - e_hat).pow(2).sum(-1).mean() * min(1.0, n_dead / k_base)
        loss = loss + cfg.aux_k_coefficient * aux
    return loss


@pytest.mark.parametrize("every", [1000, 5, 1])  # no dead latent; a few (dense AuxK); all (sparse AuxK)
def test_sparse_training_step_matches_dense_gradients(every: int) -> None:
    torch.manual_seed(0)
    sae = make_sae(make_config("topk", d_in=16, d_sae=64, k=4))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(50, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::every] = True
    loss, parts, fired = sae.training_loss(x, dead, 0.5)
    loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    dense = _dense_topk_loss(sae, x, dead)
    dense.backward()
    assert float(loss.detach()) == pytest.approx(float(dense.detach()), rel=1e-5)
    assert ("aux" in parts) == bool(dead.any())
    for name, p in sae.named_parameters():
        assert torch.allclose(sparse[name], p.grad, atol=1e-5, rtol=1e-4), name
    assert int(fired.sum()) <= 50 * 4


def test_fit_callback_can_stop_training() -> None:
    data = planted_dictionary(2000, 8, 12, active=2, seed=0)
    seen: list[int] = []
    cfg = make_config("topk", d_in=8, d_sae=16, k=2, steps=50, batch_size=100)
    sae = make_sae(cfg)
    res = fit(sae, TensorSource(data.x), progress=False, callback=lambda step: seen.append(step) or step < 9)
    assert seen == list(range(10)) and res.steps == 10 and res.samples == 1000


def test_untrained_sae_does_not_recover() -> None:
    # The recovery measure can fail: a random decoder matches almost none of the directions.
    data = planted_dictionary(100, 64, 128, seed=0)
    sae = make_sae(make_config("topk", d_in=64, d_sae=256, k=16))
    assert recovery(sae.W_dec, data.directions) < 0.1


def test_training_is_reproducible() -> None:
    data = planted_dictionary(3000, 16, 24, active=3, seed=3)
    cfg = dict(d_in=16, d_sae=48, k=4, steps=30, batch_size=256, seed=5)
    a, _ = train_in_memory(data.x, make_config("topk", **cfg))
    b, _ = train_in_memory(data.x, make_config("topk", **cfg))
    c, _ = train_in_memory(data.x, make_config("topk", **{**cfg, "seed": 6}))
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_relu_sae_trains_and_is_sparse() -> None:
    data = planted_dictionary(6000, 16, 24, active=3, seed=0)
    sae, _ = train_in_memory(data.x, make_config("relu", d_in=16, d_sae=64, steps=300, batch_size=512))
    x = torch.from_numpy(data.x)
    with torch.no_grad():
        z = sae.encode(x)
        ev = 1 - float((x - sae.decode(z)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert ev > 0.8
    assert float((z > 0).float().sum(1).mean()) < 16  # a quarter of the latents at most


def test_geometric_median_resists_outliers() -> None:
    x = torch.zeros(101, 3)
    x[:50, 0] = 1.0
    x[50:100, 0] = -1.0
    x[100] = 1000.0
    med = geometric_median(x)
    # Any point between the two clusters minimises the 100 inlier distances; the outlier moves
    # the median by at most one unit, the mean by about ten.
    assert float(med.norm()) < 1.0 and float(med[1:].abs().max()) < 0.05
    assert float(x.mean(0).norm()) > 10


def test_split_rows_holds_out_whole_episodes() -> None:
    ep = np.repeat(np.arange(10), 5)
    train, test, notes = split_rows(ep, 0.2, seed=0)
    assert not set(ep[train]) & set(ep[test])
    assert len(set(ep[test])) == 2 and notes == []
    # the lab's one episode split: the probes hold out the same episodes
    split = split_episodes(np.unique(ep), test_fraction=0.2, seed=0)
    assert set(ep[test]) == set(split.test_episodes.tolist())
    train, test, notes = split_rows(np.zeros(10, np.int64), 0.2, seed=0)
    assert test.sum() == 2 and notes


def test_train_on_file_saves_saelens_layout(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = run / "activations" / "step_1.h5"
    directions = write_planted_file(path)
    metrics = train_sae_on_file(path, "h", width=48, k=4, steps=150, batch_size=512, progress=False)
    out = run / "saes" / "h-topk-48"
    assert Path(metrics["out_dir"]) == out
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["d_in"] == 16 and cfg["d_sae"] == 48
    assert cfg["hook_name"] == "h" and cfg["metadata"]["hook_name"] == "h"
    from safetensors.torch import load_file

    w = load_file(str(out / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {"W_enc": (16, 48), "W_dec": (48, 16), "b_enc": (48,), "b_dec": (16,)}
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("l0", "explained_variance", "mse", "dead_fraction", "dense_fraction", "shrinkage", "samples",
                "train_episodes", "test_episodes", "seconds"):
        assert key in saved
    assert saved["l0"] <= 4 and saved["explained_variance"] > 0.5
    assert saved["train_episodes"] + saved["test_episodes"] == 12
    assert "return_recovered" not in saved and any("return_recovered skipped" in n for n in saved["notes"])
    assert recovery(w["W_dec"], directions) > 0.5

    sae, loaded_cfg = load_sae(out)
    assert loaded_cfg.k == 4 and loaded_cfg.hook_name == "h"
    x = torch.randn(5, 3, 16)  # any leading shape, as a forward hook would pass
    assert sae.forward(x).shape == x.shape and sae.encode(x).shape == (5, 3, 48)
    assert int((sae.encode(x) > 0).sum(-1).max()) <= 4

    merged = update_metrics(out, return_recovered=0.9, return_clean=10.0)
    assert merged["return_recovered"] == 0.9 and not any("skipped" in n for n in merged["notes"])
    assert (out / "features.json").exists() and (out / "features.npz").exists()


def test_saved_metrics_match_an_independent_computation(tmp_path: Path) -> None:
    path = tmp_path / "acts.h5"
    write_planted_file(path)
    metrics = train_sae_on_file(path, "h", width=32, k=3, steps=40, batch_size=256, progress=False, features=False,
                                out_dir=tmp_path / "sae")
    sae, cfg = load_sae(tmp_path / "sae")
    from probes.activations import ActivationFile

    with ActivationFile(path) as af:
        _, test, _ = split_rows(af.episodes(), cfg.test_fraction, cfg.seed)
        x = torch.from_numpy(af.acts("h")[test])
    with torch.no_grad():
        x_hat = sae(x)
        z = sae.encode(x)
    ev = 1 - float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert metrics["explained_variance"] == pytest.approx(ev, abs=1e-4)
    assert metrics["l0"] == pytest.approx(float((z > 0).sum(1).float().mean()), abs=1e-6)
    assert metrics["dead_fraction"] == pytest.approx(float(((z > 0).sum(0) == 0).float().mean()))
    assert metrics["test_rows"] == int(test.sum())


def test_h5_source_streams_only_masked_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    write_planted_file(path, n=3000, episodes=6)
    mask = np.zeros(3000, bool)
    mask[500:1500] = True
    src = H5Source(path, "h", mask, block_rows=256)
    rows = np.concatenate([r for r, _ in src.blocks()])
    assert np.array_equal(rows, np.arange(500, 1500))
    rng = np.random.default_rng(0)
    it = src.batches(300, rng)
    seen = torch.cat([next(it) for _ in range(10)])  # 3,000 rows: three passes over the 1,000
    from probes.activations import ActivationFile

    with ActivationFile(path) as af:
        allowed = {tuple(r) for r in af.acts("h", slice(500, 1500)).round(5).tolist()}
    assert all(tuple(r) in allowed for r in seen.numpy().round(5).tolist())
    src.close()


def test_bad_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    write_planted_file(path, n=600, episodes=3)
    with pytest.raises(ProbeError, match="no hook"):
        train_sae_on_file(path, "nope", progress=False)
    with pytest.raises(ProbeError, match="k must be"):
        train_sae_on_file(path, "h", width=8, k=9, progress=False)
    with pytest.raises(ProbeError, match="unknown SAE architecture"):
        make_config("gated", d_in=4, d_sae=8)
    with pytest.raises(ProbeError, match="not an SAE directory"):
        load_sae(tmp_path)
    assert set(REGISTRY) == {"topk", "relu", "binding"}


def test_script_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    write_planted_file(path, n=1200, episodes=4)
    bad = subprocess.run([sys.executable, "-m", "probes.sae", str(path), "--hook", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "probes.sae", str(path), "--hook", "h", "--width", "32", "--k", "4", "--steps", "20",
         "--batch-size", "256", "--json", "--out", str(tmp_path / "s")],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["d_sae"] == 32


def test_config_imports_no_torch() -> None:
    """The options, defaults and output folder of an SAE are known without loading torch."""
    code = ("import sys, argparse; import probes.sae.config as c, probes.features; "
            "c.add_arguments(argparse.ArgumentParser()); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
