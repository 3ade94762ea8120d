"""Tests of probes.features: statistics against direct computations, and the store's access."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from probes.activations import ActivationFile, ActivationWriter
from probes.errors import ProbeError
from probes.features import FeatureStore
from probes.sae.config import make_config
from probes.sae.features import compute_features
from probes.sae.model import load_sae, make_sae, save_sae


def make_case(tmp_path: Path, with_text: bool = True) -> tuple[Path, Path]:
    """A file with a continuous label, a binary and a 3-class label, and an SAE for its hook.

    Latent 0 of the SAE reads direction e0, which carries the continuous label ``fear``.
    """
    rng = np.random.default_rng(0)
    n, d, eps = 900, 8, 9
    x = rng.standard_normal((n, d)).astype(np.float32)
    fear = x[:, 0] * 2.0 + 0.1 * rng.standard_normal(n)
    threat = (x[:, 1] > 0.5).astype(np.int64)
    room = rng.integers(0, 3, n)
    ep = np.repeat(np.arange(eps), n // eps)
    t = np.concatenate([np.arange(n // eps)] * eps)
    path = tmp_path / "acts.h5"
    meta = {"fear": {"kind": "continuous", "description": "", "linear_in": []},
            "threat": {"kind": "discrete", "description": "", "linear_in": []},
            "room": {"kind": "discrete", "description": "", "linear_in": []}}
    with ActivationWriter(path, {"run": "r"}, label_meta=meta, chunk_rows=128) as w:
        steps = {"obs": x[:, :2], "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
                 "done": t == t.max(), "episode": ep, "t": t}
        if with_text:
            steps["text"] = [f"row {i}" for i in range(n)]
        w.append(steps, {"fear": fear, "threat": threat, "room": room}, {"h": x})
    torch.manual_seed(0)
    sae = make_sae(make_config("topk", d_in=d, d_sae=16, k=3, hook_name="h"))
    with torch.no_grad():
        sae.W_enc[:, 0] = 0
        sae.W_enc[0, 0] = 3.0  # latent 0 = 3 * x0, dominant whenever x0 > 0
        sae.W_enc[:, 1] = 0
        sae.W_enc[1, 1] = 3.0
    save_sae(sae, tmp_path / "sae")
    return path, tmp_path / "sae"


def test_statistics_match_direct_computation(tmp_path: Path) -> None:
    path, sae_dir = make_case(tmp_path)
    compute_features(sae_dir, path, n_top=5, context=2, bins=16, rows_per_block=100, progress=False)
    store = FeatureStore(sae_dir)
    sae, _ = load_sae(sae_dir)
    with ActivationFile(path) as af:
        x = torch.from_numpy(af.acts("h"))
        fear, threat, room = af.label("fear"), af.label("threat"), af.label("room")
        episodes = af.episodes()
    with torch.no_grad():
        z = sae.encode(x).numpy()
    for i in (0, 1, 5):
        info = store.latent(i)
        assert info["density"] == pytest.approx(float((z[:, i] > 0).mean()))
        assert info["max_activation"] == pytest.approx(float(z[:, i].max()), rel=1e-5)
        assert info["histogram"]["zero"] + sum(info["histogram"]["counts"]) == len(z)
        if z[:, i].std() > 0:
            assert info["labels"]["fear"]["pearson"] == pytest.approx(float(np.corrcoef(z[:, i], fear)[0, 1]), abs=1e-4)
            # binned AUROC: close to the exact one (bins are 1/16 of the max wide)
            assert info["labels"]["threat"]["auroc"] == pytest.approx(roc_auc_score(threat, z[:, i]), abs=0.03)
            per = info["labels"]["room"]["per_class"]
            assert per["2"] == pytest.approx(roc_auc_score(room == 2, z[:, i]), abs=0.03)
        top_rows = [s["row"] for s in info["top"]]
        expected = np.argsort(-z[:, i], kind="stable")[: len(top_rows)]
        assert np.allclose(z[top_rows, i], z[expected, i])
        for s in info["top"]:
            assert s["text"] == f"row {s['row']}"
            assert s["episode"] == episodes[s["row"]]
            assert all(episodes[c["row"]] == s["episode"] for c in s["context"])
            assert [c["offset"] for c in s["context"]][0] >= -2
    assert store.sorted_by("association", "fear")[0] == 0
    assert store.sorted_by("auroc", "threat")[0] == 1
    # binary labels report one AUROC (for class 1); multi-class one per class
    assert list(store.latent(0)["labels"]["threat"]["per_class"]) == ["1"]
    assert list(store.latent(0)["labels"]["room"]["per_class"]) == ["0", "1", "2"]


def test_file_without_text_gives_empty_texts(tmp_path: Path) -> None:
    path, sae_dir = make_case(tmp_path, with_text=False)
    with ActivationFile(path) as af:
        assert not af.has_step("text") and af.has_step("episode")
    compute_features(sae_dir, path, n_top=3, context=1, progress=False)
    top = FeatureStore(sae_dir).latent(0)["top"]
    assert top and all(s["text"] == "" for s in top)
    assert all(c["text"] == "" for s in top for c in s["context"])


def test_store_errors_and_sorting(tmp_path: Path) -> None:
    path, sae_dir = make_case(tmp_path)
    with pytest.raises(ProbeError, match="no feature statistics"):
        FeatureStore(sae_dir)
    compute_features(sae_dir, path, progress=False)
    store = FeatureStore(sae_dir)
    with pytest.raises(ProbeError, match="needs a label"):
        store.sorted_by("pearson")
    with pytest.raises(ProbeError, match="discrete"):
        store.sorted_by("pearson", "threat")
    with pytest.raises(ProbeError, match="out of range"):
        store.latent(16)
    dens = store.scores("density")
    order = store.sorted_by("density")
    assert np.all(np.diff(dens[order]) <= 0)


def test_script(tmp_path: Path) -> None:
    path, sae_dir = make_case(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "probes.features", str(sae_dir), str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "fear" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "probes.features", str(tmp_path), str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_script_describes_latents(tmp_path: Path) -> None:
    """--best fear picks latent 0 (it reads the direction carrying fear) and prints its top steps'
    renders; --show works from the stored statistics without the file; bad latents are one line."""
    path, sae_dir = make_case(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "probes.features", *a], capture_output=True, text=True)
    ok = run(str(sae_dir), str(path), "--best", "fear", "--show-top", "2")
    assert ok.returncode == 0, ok.stderr
    block = ok.stdout.split("# the latent most associated with fear")[1]
    assert block.splitlines()[1].startswith("latent 0:")
    assert "fear (r +" in block and block.count("  top step ") == 2
    store = FeatureStore(sae_dir)
    best_row = store.latent(0)["top"][0]["row"]
    assert f"row {best_row}" in block  # the top step's own render
    again = run(str(sae_dir), "--show", "1")
    assert again.returncode == 0 and again.stdout.lstrip().startswith("latent 1:")
    for bad in (["--show", "99"], ["--best", "nolabel"], []):
        out = run(str(sae_dir), *bad)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (bad, out.stderr)


def test_heldout_associations_match_direct_computation(tmp_path: Path) -> None:
    """Train / held-out associations are those of the rows of probes.splits' episode split."""
    from probes.splits import split_episodes

    path, sae_dir = make_case(tmp_path)
    compute_features(sae_dir, path, bins=64, progress=False, test_fraction=0.34, seed=3)
    store = FeatureStore(sae_dir)
    assert store.has_heldout
    sae, _ = load_sae(sae_dir)
    with ActivationFile(path) as af:
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(af.acts("h"))).numpy()
        fear, threat, episodes = af.label("fear"), af.label("threat"), af.episodes()
    split = split_episodes(np.unique(episodes), test_fraction=0.34, seed=3)
    test = np.isin(episodes, split.test_episodes)
    assert store.index["split"]["n_test_rows"] == int(test.sum())
    assert store.index["split"]["test_episodes"] == [int(e) for e in split.test_episodes]
    for i in (0, 1):
        for rows, key in ((~test, "train"), (test, "test")):
            r = store.scores("pearson", "fear", split=key)[i]
            assert r == pytest.approx(np.corrcoef(z[rows, i], fear[rows])[0, 1], abs=1e-4)
            a = store.scores("auroc", "threat", split=key)[i]
            assert a == pytest.approx(roc_auc_score(threat[rows], z[rows, i]), abs=0.02)
    best = store.best_latents("fear", 2)
    assert best[0]["latent"] == 0 and best[0]["test"] > 0.8
    scores = store.latent(1)["labels"]["threat"]
    assert scores["class_train"] == 1 and scores["auroc_test"] == pytest.approx(store.scores("auroc", "threat", split="test")[1])


def test_best_latent_of_a_noise_label_does_not_survive_heldout(tmp_path: Path) -> None:
    """A label unrelated to the activations: the best of many latents on the training episodes
    looks associated; on held-out episodes it is not (a check that a lucky maximum fails)."""
    rng = np.random.default_rng(1)
    n, d, eps = 1200, 16, 24
    x = rng.standard_normal((n, d)).astype(np.float32)
    ep = np.repeat(np.arange(eps), n // eps)
    t = np.tile(np.arange(n // eps), eps)
    noise = np.repeat(rng.standard_normal(eps), n // eps) + 0.3 * rng.standard_normal(n)  # per-episode offsets
    path = tmp_path / "noise.h5"
    meta = {"noise": {"kind": "continuous", "description": "", "linear_in": []}}
    with ActivationWriter(path, {"run": "r"}, label_meta=meta) as w:
        w.append({"obs": x[:, :2], "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
                  "done": t == t.max(), "episode": ep, "t": t}, {"noise": noise}, {"h": x})
    torch.manual_seed(0)
    save_sae(make_sae(make_config("topk", d_in=d, d_sae=256, k=8, hook_name="h")), tmp_path / "sae")
    compute_features(tmp_path / "sae", path, progress=False)
    store = FeatureStore(tmp_path / "sae")
    best = store.best_latents("noise", 1)[0]
    assert abs(best["train"]) > 0.1  # the maximum over 256 latents on the rows it was chosen on
    assert abs(best["test"]) < abs(best["train"])
    assert abs(best["test"]) < 0.15


def test_files_without_heldout_arrays_stay_readable(tmp_path: Path) -> None:
    path, sae_dir = make_case(tmp_path)
    compute_features(sae_dir, path, progress=False)
    npz = sae_dir / "features.npz"
    with np.load(npz) as data:
        old = {k: data[k] for k in data.files if not k.endswith(("_train", "_test"))}
    np.savez(npz, **old)
    store = FeatureStore(sae_dir)
    assert not store.has_heldout
    assert "pearson_test" not in store.latent(0)["labels"]["fear"]
    assert store.sorted_by("association", "fear")[0] == 0
    with pytest.raises(ProbeError, match="no held-out"):
        store.scores("pearson", "fear", split="test")
