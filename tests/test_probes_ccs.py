"""Contrast-consistent search: pairs, baselines and the Farquhar et al. sanity checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probes.activations import ActivationWriter
from probes.ccs import episode_bootstrap, form_pairs, format_report, plant_distractor, run_ccs
from probes.errors import ProbeError


def write(path: Path, *, distractor: float, signal: float, n_eps: int = 30, ep_len: int = 60) -> None:
    """Hook ``h``: dim 0 = ``signal * label`` + noise (the truth), plus a prominent binary
    distractor of size ``distractor`` unrelated to the label, spread along a dense direction so
    that per-dimension normalisation does not hide it; 6 more noise dims."""
    rng = np.random.default_rng(0)
    u = np.ones(8) / np.sqrt(8)
    meta = {"threat": {"kind": "continuous", "description": "closeness of threat", "linear_in": []}}
    with ActivationWriter(path, {"run": "r", "checkpoint": "c"}, meta) as w:
        for e in range(n_eps):
            y = rng.normal(size=ep_len)
            x = rng.normal(size=(ep_len, 8)) * 0.5
            x[:, 0] += signal * y
            x += distractor * np.outer(rng.choice([-1.0, 1.0], ep_len), u)
            w.append(
                {"obs": rng.normal(size=(ep_len, 2)), "action": np.zeros(ep_len, np.int64), "reward": np.zeros(ep_len),
                 "done": np.arange(ep_len) == ep_len - 1, "episode": np.full(ep_len, e), "t": np.arange(ep_len)},
                {"threat": y}, {"h": x}, {"h": rng.normal(size=(ep_len, 8))},
            )


def test_pairs_are_within_episode_and_matched() -> None:
    eps = np.repeat(np.arange(3), 10)
    t = np.tile(np.arange(10), 3)
    label = np.tile(np.r_[np.zeros(5), np.ones(5)], 3)
    p = form_pairs(label, eps, t, lo=0.5, hi=0.5, seed=0, strict_hi=True)
    assert len(p.high) == 15 and np.all(label[p.high] == 1) and np.all(label[p.low] == 0)
    assert np.all(eps[p.high] == eps[p.low]) and np.all(t[p.high] - t[p.low] == 5)


def test_true_feature_found_and_sanity_checks(tmp_path: Path) -> None:
    path = tmp_path / "clean.h5"
    write(path, distractor=0.0, signal=1.0)
    doc = run_ccs(path, label="threat", hook="h", seed=0, n_inits=4)
    assert doc["supervised_accuracy"] > 0.95 and doc["ccs_accuracy"] > 0.9
    assert doc["shuffled_pairs_accuracy"] < doc["chance_band"]
    assert doc["random_weights_accuracy"] < doc["chance_band"]
    assert doc["verdict"].startswith("CCS recovered")
    assert "supervised ceiling" in format_report(doc)


def test_prominent_distractor_is_not_reported_as_the_label(tmp_path: Path) -> None:
    path = tmp_path / "distract.h5"
    write(path, distractor=6.0, signal=0.4)
    doc = run_ccs(path, label="threat", hook="h", seed=0, n_inits=4)
    # The truth is there (supervised), PC1 is (mostly) the distractor: near chance.
    assert doc["supervised_accuracy"] > 0.85
    assert doc["pca_accuracy"] < 0.7 and doc["pca_ci"][1] < doc["supervised_ci"][0]
    # Whatever CCS finds, the report must be consistent with it.
    if doc["verdict"].startswith("CCS recovered"):
        assert doc["ccs_accuracy"] > doc["chance_band"] and doc["cos_ccs_pc1"] < 0.9
    else:
        assert doc["ccs_accuracy"] < doc["supervised_accuracy"] - 0.15 or doc["flags"]
    if doc["cos_ccs_pc1"] > 0.9:
        assert any("prominent" in f for f in doc["flags"])


def test_planted_distractor_check_can_fail_and_pass(tmp_path: Path) -> None:
    """A planted irrelevant contrast stronger than the label's captures CCS (the check fails and
    the verdict says so); a weaker one does not (the same check passes)."""
    path = tmp_path / "clean.h5"
    write(path, distractor=0.0, signal=1.0)
    strong = run_ccs(path, label="threat", hook="h", seed=0, n_inits=4, distractor_strength=2.0)
    assert strong["ccs_accuracy"] > 0.9  # CCS finds the label on the real activations...
    dis = strong["distractor"]
    assert not dis["passed"] and dis["cos_ccs_distractor"] > 0.5  # ...but follows the planted contrast
    assert dis["ccs_accuracy"] < strong["chance_band"] and dis["supervised_accuracy"] > 0.9
    assert any("planted-distractor test failed" in f for f in strong["flags"])
    assert "planted-distractor test failed" in strong["verdict"]
    weak = run_ccs(path, label="threat", hook="h", seed=0, n_inits=4, distractor_strength=0.5)
    assert weak["distractor"]["passed"] and weak["distractor"]["ccs_accuracy"] > 0.9
    assert not any("planted-distractor" in f for f in weak["flags"])
    assert "FAILED" in format_report(strong) and "passed" in format_report(weak)


def test_plant_distractor_is_orthogonal_and_sized() -> None:
    rng = np.random.default_rng(1)
    n, d = 50, 6
    high = rng.normal(size=(n, d)) + np.r_[2.0, np.zeros(d - 1)]
    x = np.concatenate([high, rng.normal(size=(n, d))])
    train = np.arange(n) < 40
    planted, u = plant_distractor(x, n, train, strength=3.0, seed=0)
    m = (x[:n][train] - x[n:][train]).mean(axis=0)
    assert abs(u @ m) < 1e-9 and np.linalg.norm(u) == pytest.approx(1.0)
    contrast = ((planted[:n] - planted[n:]) - (x[:n] - x[n:])) @ u
    assert np.allclose(np.abs(contrast), 3.0 * np.linalg.norm(m))  # +- strength x |m| in every pair


def test_direction_is_chosen_on_training_pairs(tmp_path: Path) -> None:
    path = tmp_path / "distract.h5"
    write(path, distractor=6.0, signal=0.4)
    doc = run_ccs(path, label="threat", hook="h", seed=0, n_inits=4)
    losses = doc["ccs_init_train_losses"]
    assert doc["ccs_accuracy"] == doc["ccs_inits"][int(np.argmin(losses))]
    # 2-means and PCA on the same pairs follow the prominent per-step distractor; CCS does not.
    assert doc["kmeans_accuracy"] < 0.75 and doc["ccs_accuracy"] > doc["kmeans_ci"][1]
    assert not any("unsupervised baseline" in f for f in doc["flags"])


def test_chance_band_accounts_for_episodes() -> None:
    """Pairs of one episode that are right or wrong together widen the band (design effect > 1)."""
    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(20), 30)
    clustered = np.repeat(rng.random(20) < 0.5, 30)
    independent = rng.random(600) < 0.5
    (lo_c, hi_c), deff_c = episode_bootstrap(clustered, episodes, 1000, 0)
    (lo_i, hi_i), deff_i = episode_bootstrap(independent, episodes, 1000, 0)
    assert deff_c > 10 and 0.5 < deff_i < 2
    assert hi_c - lo_c > 3 * (hi_i - lo_i)


def test_cli(tmp_path: Path) -> None:
    path = tmp_path / "clean.h5"
    write(path, distractor=0.0, signal=1.0, n_eps=12, ep_len=40)
    ok = subprocess.run([sys.executable, "-m", "probes.ccs", str(path), "--label", "threat", "--hook", "h",
                         "--json", "--inits", "2", "--distractor-strength", "1.5"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["label"] == "threat" and doc["distractor"]["strength"] == 1.5
    bad = subprocess.run([sys.executable, "-m", "probes.ccs", str(path), "--label", "nope", "--hook", "h"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    with pytest.raises(ProbeError):
        run_ccs(path, label="threat", hook="nope")
    bad_strength = subprocess.run([sys.executable, "-m", "probes.ccs", str(path), "--label", "threat", "--hook", "h",
                                   "--distractor-strength", "0"], capture_output=True, text=True)
    assert bad_strength.returncode == 2 and len(bad_strength.stderr.strip().splitlines()) == 1
