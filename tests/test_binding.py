"""Tests of the binding experiment: the binding SAE (probes.sae.binding) and the conjunction
probes (probes.binding), on planted data whose answer is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.activations import ActivationWriter
from probes.binding import ROLE_MATCH, ROLES, probe_file
from probes.errors import ProbeError
from probes.sae.binding import (
    BindingSAE,
    binding_parameters,
    explained_variance,
    n_parameters,
    planted_binding,
    register_slots,
    slot_recovery,
    topk_width_for_parameters,
)
from probes.sae.config import CONFIGS, make_config
from probes.sae.data import TensorSource
from probes.sae.model import REGISTRY, load_sae, make_sae
from probes.sae.planted import recovery
from probes.sae.training import fit, train_in_memory, train_sae_on_file

CORNERS = np.array([[0, 0], [0, 4], [4, 0], [4, 4]])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- synthetic Binding file
def write_binding_file(path: Path, episodes: int = 80, steps: int = 12, noise: float = 0.3, seed: int = 0) -> None:
    """A Binding-v0-like recording (corners layout, 2 colours x 2 shapes) with two hooks whose
    answer is known: ``bag`` linearly holds only the colour map, the shape map and the goal;
    ``bound`` linearly holds only each role's corner (target, lures, foil) and the goal."""
    rng = np.random.default_rng(seed)
    n = episodes * steps
    role_corner = np.zeros((n, 4), np.int64)
    gc = np.zeros(n, np.int64)
    gs = np.zeros(n, np.int64)
    for e in range(episodes):
        rows = slice(e * steps, (e + 1) * steps)
        role_corner[rows] = rng.permutation(4)
        gc[rows], gs[rows] = rng.integers(2), rng.integers(2)
    eye2, eye4 = np.eye(2), np.eye(4)
    colour = np.zeros((n, 4, 2))  # corner x colour
    shape = np.zeros((n, 4, 2))
    for i, role in enumerate(ROLES):
        same_c, same_s = ROLE_MATCH[role]
        colour[np.arange(n), role_corner[:, i]] = eye2[np.where(same_c, gc, 1 - gc)]
        shape[np.arange(n), role_corner[:, i]] = eye2[np.where(same_s, gs, 1 - gs)]
    goal = np.concatenate([eye2[gc], eye2[gs]], axis=1)
    bag = np.concatenate([colour.reshape(n, -1), shape.reshape(n, -1), goal], axis=1)  # [n, 20]
    bound = np.concatenate([eye4[role_corner[:, i]] for i in range(4)] + [goal], axis=1)  # [n, 20]

    def embed(z: np.ndarray) -> np.ndarray:
        return (z @ rng.standard_normal((z.shape[1], 32)) + noise * rng.standard_normal((n, 32))).astype(np.float32)

    labels: dict[str, np.ndarray] = {"target_colour": gc, "target_shape": gs}
    for i, role in enumerate(ROLES):
        labels[f"{role}_row"] = CORNERS[role_corner[:, i], 0]
        labels[f"{role}_col"] = CORNERS[role_corner[:, i], 1]
    meta = {name: {"kind": "discrete", "description": name, "linear_in": []} for name in labels}
    t = np.tile(np.arange(steps), episodes)
    with ActivationWriter(path, {"run": "r", "checkpoint": "c", "env_id": "lab/Binding-v0"}, label_meta=meta) as w:
        w.append({"obs": bag.astype(np.float32), "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
                  "done": t == steps - 1, "episode": np.repeat(np.arange(episodes), steps), "t": t},
                 labels, {"bag": embed(bag), "bound": embed(bound)})


def test_conjunction_probes_tell_bound_from_bag(tmp_path: Path) -> None:
    path = tmp_path / "binding.h5"
    write_binding_file(path, episodes=48, steps=8)
    res = probe_file(path)
    bag, bound = res["layers"]["bag"], res["layers"]["bound"]
    # the bag layer: perfect maps, the conjunction only through binding by location
    assert bag["bound"] == []
    assert bag["features"]["colour_map_accuracy"] > 0.95 and bag["features"]["shape_map_accuracy"] > 0.95
    for role in ROLES:
        c = bag["conjunctions"][role]
        assert c["bag_and"] > 0.95 and c["probe"] < c["bag_and"] - 0.2
    # the bound layer: every role's place is linear, the maps are not
    assert bound["bound"] == list(ROLES)
    for role in ROLES:
        c = bound["conjunctions"][role]
        assert c["probe"] > 0.95 and c["difference_ci"][0] > 0.2
    assert bound["features"]["colour_map_accuracy"] < 0.9
    # the observation of this file is the bag itself
    assert res["layers"]["obs"]["bound"] == []


def test_conjunction_probe_script(tmp_path: Path) -> None:
    path = tmp_path / "binding.h5"
    write_binding_file(path, episodes=24)
    ok = subprocess.run([sys.executable, "-m", "probes.binding", str(path), "--hooks", "bound", "--no-input", "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert list(doc["layers"]) == ["bound"] and doc["test_episodes"] == 6
    bad = subprocess.run([sys.executable, "-m", "probes.binding", str(path), "--hooks", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def test_conjunction_probes_refuse_other_recordings(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with ActivationWriter(path, {"run": "r"}) as w:
        w.append({"obs": np.zeros((4, 1), np.float32), "action": np.zeros(4, np.int64), "reward": np.zeros(4, np.float32),
                  "done": np.zeros(4, bool), "episode": np.arange(4), "t": np.zeros(4, np.int64)}, {},
                 {"h": np.zeros((4, 2), np.float32)})
    with pytest.raises(ProbeError, match="not a Binding-v0 recording"):
        probe_file(path)


# --------------------------------------------------------------------------- the binding SAE
def _truth_initialised(data, cfg) -> BindingSAE:
    """A binding SAE whose decoder is the planted one and whose encoder is its transpose."""
    torch.manual_seed(cfg.seed)
    sae = make_sae(cfg)
    m = cfg.d_sae // cfg.slots
    with torch.no_grad():
        sae.W_dec_base.copy_(torch.from_numpy(data.directions[:m]))
        sae.R.copy_(torch.from_numpy(data.maps))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def test_binding_sae_is_registered_and_tied() -> None:
    assert set(REGISTRY) == set(CONFIGS) and "binding" in REGISTRY
    cfg = make_config("binding", d_in=8, d_sae=30, k=4, slots=3)
    sae = make_sae(cfg)
    assert isinstance(sae, BindingSAE) and sae.slot_of(25) == (2, 5)
    w = sae.W_dec.detach()
    assert w.shape == (30, 8)
    for j in (1, 2):  # slot j is slot 0 through its own map
        assert torch.allclose(w[j * 10 : (j + 1) * 10], w[:10] @ sae.R[j - 1].detach(), atol=1e-6)
    assert n_parameters(sae) == binding_parameters(8, 30, 3)
    assert topk_width_for_parameters(n_parameters(sae), 8) == (n_parameters(sae) - 8) // 17
    with pytest.raises(ProbeError, match="multiple"):
        make_config("binding", d_in=8, d_sae=31, k=4, slots=2)
    with pytest.raises(ProbeError, match="at least 2 slots"):
        make_config("binding", d_in=8, d_sae=30, k=4, slots=1)


def test_binding_sae_keeps_planted_structure_that_topk_cannot_fit_as_well() -> None:
    # 32 features in 2 slots (64 directions) in 16 dimensions; the binding SAE has 64 latents,
    # the TopK SAE of equal parameter count 56: it cannot give every planted direction a row.
    data = planted_binding(12_000, 16, 32, slots=2, active=3, seed=0)
    train, test = data.x[:10_000], data.x[10_000:]
    cfg = make_config("binding", d_in=16, d_sae=64, k=6, slots=2, batch_size=256, steps=600, init="random")
    sae = _truth_initialised(data, cfg)
    fit(sae, TensorSource(train), progress=False)
    assert slot_recovery(sae, data.directions) >= 0.9  # still the planted pairs, through one map
    assert recovery(sae.W_dec, data.directions) >= 0.9
    ev_binding = explained_variance(sae, test)
    width = topk_width_for_parameters(n_parameters(sae), 16)
    assert width < 64
    topk, _ = train_in_memory(train, make_config("topk", d_in=16, d_sae=width, k=6, batch_size=256, steps=600))
    assert n_parameters(topk) <= n_parameters(sae)
    assert explained_variance(topk, test) < ev_binding
    assert recovery(topk.W_dec, data.directions) < 0.5


def test_registration_pairs_planted_atoms() -> None:
    # the planted directions, shuffled and slightly perturbed: register_slots must find which
    # atom is which feature in which slot, and the map between the slots
    data = planted_binding(10, 16, 32, slots=2, seed=3)
    rng = np.random.default_rng(0)
    perm = rng.permutation(64)
    atoms = data.directions[perm] + 0.01 * rng.standard_normal((64, 16))
    reg = register_slots(atoms, 2)
    truth = perm[reg.order]  # planted row of each registered atom
    forward = truth[0] < 32
    assert forward.all() or (~forward).all()  # one slot each (which is slot 0 is arbitrary)
    assert (np.abs(truth[1] - truth[0]) == 32).all()  # every feature paired with its partner
    assert reg.inliers == 1.0 and reg.fit > 0.99
    r = data.maps[0] if forward.all() else data.maps[0].T
    assert np.abs(reg.maps[0] - r).max() < 0.05


def test_binding_sae_finds_planted_structure_from_scratch() -> None:
    # the default start (init="registered": TopK stage, refinement, registration) finds the planted
    # pairs; from a random start, gradient descent does not (slot recovery 0 on this data)
    data = planted_binding(12_000, 16, 32, slots=2, active=3, seed=0)
    train, test = data.x[:10_000], data.x[10_000:]
    cfg = make_config("binding", d_in=16, d_sae=64, k=6, slots=2, batch_size=256, steps=600)
    assert cfg.init == "registered"
    sae, _ = train_in_memory(train, cfg)
    assert slot_recovery(sae, data.directions) >= 0.9
    topk, _ = train_in_memory(train, make_config("topk", d_in=16, d_sae=topk_width_for_parameters(n_parameters(sae), 16),
                                                 k=6, batch_size=256, steps=600))
    assert explained_variance(sae, test) > explained_variance(topk, test)
    rand, _ = train_in_memory(train, make_config("binding", d_in=16, d_sae=64, k=6, slots=2, batch_size=256,
                                                 steps=600, init="random"))
    assert slot_recovery(rand, data.directions) < 0.5


def _planted_file(path: Path, n: int = 4000, episodes: int = 10) -> None:
    data = planted_binding(n, 12, 16, slots=2, active=3, seed=1)
    t = np.tile(np.arange(n // episodes), episodes)
    with ActivationWriter(path, {"run": "r", "checkpoint": "c", "env_id": "e"}) as w:
        w.append({"obs": np.zeros((n, 1), np.float32), "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
                  "done": t == t.max(), "episode": np.repeat(np.arange(episodes), n // episodes), "t": t},
                 {}, {"h": data.x})


def test_binding_sae_file_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "acts.h5"
    _planted_file(path)
    metrics = train_sae_on_file(path, "h", arch="binding", slots=2, width=32, k=4, steps=60, batch_size=256,
                                progress=False, out_dir=tmp_path / "sae")
    assert metrics["architecture"] == "binding" and metrics["d_sae"] == 32
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["lab_architecture"] == "binding" and cfg["slots"] == 2 and cfg["architecture"] == "topk"
    from safetensors.torch import load_file, save_file

    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))  # SAELens tensors, decoder expanded
    assert {k: tuple(v.shape) for k, v in w.items()} == {"W_enc": (12, 32), "W_dec": (32, 12), "b_enc": (32,), "b_dec": (12,)}
    sae, loaded = load_sae(tmp_path / "sae")
    assert isinstance(sae, BindingSAE) and loaded.slots == 2
    assert torch.allclose(sae.W_dec, w["W_dec"], atol=1e-4)  # D and R recovered from the expanded decoder
    x = torch.randn(7, 12)
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = z @ w["W_dec"] + w["b_dec"]  # what SAELens computes from the file
        assert torch.allclose(sae.decode(z), x_hat, atol=1e-4)
    assert int((z > 0).sum(-1).max()) <= 4
    # a decoder whose second slot is not a linear map of the first is refused
    w["W_dec"] = torch.randn(32, 12)
    save_file(w, str(tmp_path / "sae" / "sae_weights.safetensors"))
    with pytest.raises(ProbeError, match="not a linear map"):
        load_sae(tmp_path / "sae")


def test_binding_sae_from_the_command_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "acts.h5"
    _planted_file(path, n=1200, episodes=4)
    common = ["--hook", "h", "--arch", "binding", "--slots", "2", "--width", "16", "--k", "2", "--steps", "10",
              "--batch-size", "128", "--json", "--no-features"]
    ok = subprocess.run([sys.executable, "-m", "probes.sae", str(path), *common, "--out", str(tmp_path / "a")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["architecture"] == "binding"
    lab = subprocess.run(["rl-lab", "sae", str(path), *common, "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert lab.returncode == 0, lab.stderr
    assert json.loads((tmp_path / "b" / "cfg.json").read_text())["slots"] == 2
    from probes.sae.__main__ import main

    for bad in (["--arch", "topk", "--slots", "2"], ["--arch", "binding", "--slots", "2", "--width", "15"]):
        assert main([str(path), "--hook", "h", *bad, "--steps", "5", "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "slots" in err, err
    assert not (tmp_path / "c").exists()
