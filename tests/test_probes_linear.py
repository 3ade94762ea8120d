"""The linear probe sweep on synthetic activation files whose truth is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from probes.activations import ActivationWriter
from probes.errors import ProbeError
from probes.linear import format_table, format_timeline, load_direction, probe_file, probe_files, summarise
from probes.logistic import auroc
from probes.results import SUMMARY_KEYS, ProbeRecord, read_probe_results
from probes.splits import outer_folds, split_episodes, unique_episodes
from probes.activations import ActivationFile

META = {
    "hunger": {"kind": "continuous", "description": "need for food", "linear_in": []},
    "value": {"kind": "continuous", "description": "critic value", "linear_in": ["enc"]},
    "threat": {"kind": "discrete", "description": "threat near", "linear_in": []},
    "mode": {"kind": "discrete", "description": "three modes", "linear_in": []},
}
D = 8


def write_file(
    path: Path,
    *,
    n_eps: int = 24,
    ep_len: int = 50,
    seed: int = 0,
    random_acts: bool = True,
    step: int | None = None,
    signal: float = 1.0,
    extra_labels: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Write a file: hook ``enc`` encodes hunger (R^2 ~ 0.8 at signal 1), threat and mode linearly;
    hook ``noise`` encodes nothing; ``value`` is linear in ``enc`` by construction.
    Returns the true hunger direction in ``enc``."""
    rng = np.random.default_rng(seed)
    attrs = {"run": "synthetic", "checkpoint": path.stem, "env_id": "none"}
    if step is not None:
        attrs["step"] = step
    meta = dict(META)
    for name in extra_labels or {}:
        meta[name] = {"kind": "continuous", "description": name, "linear_in": []}
    direction = rng.normal(size=D)
    with ActivationWriter(path, attrs, meta) as w:
        for e in range(n_eps):
            n = ep_len
            hunger = rng.normal(size=n)
            threat = (rng.random(n) < 0.4).astype(np.int64)
            mode = rng.integers(0, 3, n)
            enc = 0.5 * rng.normal(size=(n, D)) + signal * np.outer(hunger, direction) / np.linalg.norm(direction)
            enc[:, 3] += 2.0 * threat
            enc[:, 4:7] += np.eye(3)[mode]
            value = 2.0 * enc[:, 0] - enc[:, 1]
            labels = {"hunger": hunger, "value": value, "threat": threat, "mode": mode}
            for name, col in (extra_labels or {}).items():
                labels[name] = col[e * n : (e + 1) * n]
            w.append(
                {
                    "obs": rng.normal(size=(n, 3)).astype(np.float32),
                    "action": rng.integers(0, 2, n),
                    "reward": np.zeros(n),
                    "done": np.arange(n) == n - 1,
                    "episode": np.full(n, e),
                    "t": np.arange(n),
                },
                labels,
                {"enc": enc, "noise": rng.normal(size=(n, D))},
                {"enc": rng.normal(size=(n, D)), "noise": rng.normal(size=(n, D))} if random_acts else None,
            )
    return direction / np.linalg.norm(direction)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("probe") / "step_100.h5"
    direction = write_file(path, step=100)
    return path, direction


@pytest.fixture(scope="module")
def doc(synth: tuple[Path, np.ndarray]) -> dict:
    return probe_file(synth[0], seed=3, n_bootstrap=100, weights_path=synth[0].with_suffix(".weights.npz"))


def rec(doc: dict, hook: str, label: str) -> dict:
    return next(r for r in doc["records"] if r["hook"] == hook and r["label"] == label)


def test_scores_near_truth_and_baselines(doc: dict) -> None:
    r = rec(doc, "enc", "hunger")
    # var(signal) = 1, noise per direction 0.25 -> R^2 ~ 0.8
    assert r["metric"] == "r2" and 0.7 < r["score"] < 0.9
    assert set(r["baselines"]) == {"mean", "raw_obs", "random_weights", "control_task"}
    assert all(abs(v) < 0.05 for v in r["baselines"].values())
    assert r["selectivity"] == pytest.approx(r["score"] - r["baselines"]["control_task"], abs=1e-5)
    assert r["ci"][0] < r["score"] < r["ci"][1] and r["ci"][1] - r["ci"][0] < 0.2
    assert r["beats_baselines"]
    noise = rec(doc, "noise", "hunger")
    assert abs(noise["score"]) < 0.05 and not noise["beats_baselines"]
    t = rec(doc, "enc", "threat")
    assert t["metric"] == "accuracy" and t["score"] > 0.9 and t["auroc"] > 0.95
    assert t["baselines"]["mean"] == pytest.approx(0.6, abs=0.08)
    m = rec(doc, "enc", "mode")
    assert m["n_classes"] == 3 and m["score"] > 0.5 and m["auroc"] > 0.7
    assert rec(doc, "noise", "mode")["auroc"] == pytest.approx(0.5, abs=0.06)


def test_linear_by_construction_flag(doc: dict) -> None:
    assert rec(doc, "enc", "value")["linear_by_construction"] is True
    assert rec(doc, "noise", "value")["linear_by_construction"] is False
    table = format_table(doc)
    assert "value*" in table and "linear by construction" in table
    assert any("linear by construction" in s for s in summarise(doc) if s.startswith("value"))


def test_summary_sentences(doc: dict) -> None:
    text = "\n".join(summarise(doc))
    assert "hunger is linearly decodable from enc (R^2" in text
    assert "from noise" not in text


def test_schema(doc: dict, synth: tuple[Path, np.ndarray]) -> None:
    assert doc["schema_version"] == 1 and doc["run"] == "synthetic" and doc["checkpoint"] == "step_100"
    assert doc["step"] == 100
    json.dumps(doc)  # plain JSON types only
    for r in doc["records"]:
        for key in ("hook", "label", "metric", "score", "baselines", "selectivity", "ci", "checkpoint",
                    "linear_by_construction", "n_train", "n_test", "paired", "p_adjusted", "significant",
                    "control", "kind_source", "derived_from"):
            assert key in r
        # out-of-fold: every row is tested once; each fold's probe trained on the other 4 of 5 folds
        assert r["n_test"] == 24 * 50 and r["n_train"] == pytest.approx(0.8 * r["n_test"], abs=1)
        assert set(r["paired"]) == set(r["baselines"]) and r["control"] == "episode_permuted_label"
    assert doc["n_tests"] == len(doc["records"]) and doc["correction"] == "holm"
    assert doc["cv"]["outer_folds"] == 5 and doc["cv"]["n_episodes"] == 24


def test_record_round_trips_through_to_dict_and_from_dict(doc: dict) -> None:
    for r in doc["records"]:
        record = ProbeRecord.from_dict(r)
        assert record.to_dict() == r and list(record.to_dict()) == list(r)  # same keys, same order
        assert ProbeRecord.from_dict(record.to_dict()) == record and record.extra == {}
        assert record.summary() == {k: r[k] for k in SUMMARY_KEYS}
    t = ProbeRecord.from_dict(rec(doc, "enc", "threat"))
    assert t.kind == "discrete" and t.n_classes == 2 and t.C is not None and t.alpha is None
    assert t.best_baseline is not None and t.best_baseline[1] == max(t.baselines.values())


def test_probe_file_reads_back_into_records(synth: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out = tmp_path / "step_100.json"
    written = probe_file(synth[0], seed=3, n_bootstrap=20, out_json=out)
    assert json.loads(out.read_text()) == written
    results = read_probe_results(out)
    assert results.records == [ProbeRecord.from_dict(r) for r in written["records"]] and results.skipped == 0
    assert results.to_dict() == written and list(results.to_dict()) == list(written)
    assert (results.checkpoint, results.step, results.run) == ("step_100", 100, "synthetic")
    assert results.weights == str(tmp_path / "step_100.weights.npz")
    assert format_table(results) == format_table(written) and summarise(results) == summarise(written)


def test_record_reader_tolerates_old_and_new_keys(tmp_path: Path) -> None:
    old = {"hook": "h", "label": "x", "score": 0.5, "baselines": {"mean": 0.1, "raw_obs": None}, "ci": [None, None],
           "from_the_future": [1, 2]}
    r = ProbeRecord.from_dict(old, checkpoint="step_7")
    assert (r.metric, r.checkpoint, r.step, r.kind, r.selectivity, r.beats_baselines) == ("score", "step_7", None, None, None, False)
    assert r.extra == {"from_the_future": [1, 2]} and r.to_dict()["from_the_future"] == [1, 2]
    assert r.baselines == {"mean": 0.1, "raw_obs": None} and r.scored_baselines == {"mean": 0.1}
    assert r.best_baseline == ("mean", 0.1) and r.interval is None and r.random_weights is None
    with pytest.raises(ProbeError):
        ProbeRecord.from_dict({"hook": "h"})
    path = tmp_path / "step_000000064.json"
    path.write_text(json.dumps({"records": [old, {"label": "no hook"}, "junk"], "notes": ["n", ""]}))
    doc = read_probe_results(path)
    assert doc.checkpoint == "step_000000064" and doc.records[0].checkpoint == "step_000000064"
    assert len(doc.records) == 1 and doc.skipped == 2 and doc.notes == ["n"]
    path.write_text("[1, 2]")
    with pytest.raises(ProbeError, match="not a JSON object"):
        read_probe_results(path)


def test_outer_folds_test_every_episode_once(synth: tuple[Path, np.ndarray]) -> None:
    with ActivationFile(synth[0]) as f:
        eps = unique_episodes(f)
    folds = outer_folds(eps, n_folds=5, n_repeats=3, seed=3)
    assert folds.fold.shape == (3, 24) and folds.nested
    for r in range(3):
        sizes = np.bincount(folds.fold[r], minlength=5)
        assert sizes.sum() == 24 and sizes.max() - sizes.min() <= 1  # each episode in exactly one fold
    assert not np.array_equal(folds.fold[0], folds.fold[1])
    assert np.array_equal(outer_folds(eps, n_folds=5, seed=3).fold[0], folds.fold[0])
    assert outer_folds(eps[:3], n_folds=5).n_folds == 3


def test_split_keeps_episodes_whole(synth: tuple[Path, np.ndarray]) -> None:
    with ActivationFile(synth[0]) as f:
        split = split_episodes(unique_episodes(f), test_fraction=0.25, seed=3)
    train, test = set(split.train_episodes.tolist()), set(split.test_episodes.tolist())
    assert not train & test and len(train | test) == 24 and len(test) == 6
    other = split_episodes(split.episodes, test_fraction=0.25, seed=4)
    assert set(other.test_episodes.tolist()) != test


def test_reproducible_under_seed(doc: dict, synth: tuple[Path, np.ndarray]) -> None:
    again = probe_file(synth[0], seed=3, n_bootstrap=100, hooks=["enc"])
    again_recs = {(r["hook"], r["label"]): r for r in again["records"]}
    for r in doc["records"]:
        if r["hook"] == "enc":
            assert again_recs[("enc", r["label"])] == r
    other = probe_file(synth[0], seed=4, n_bootstrap=100, hooks=["enc"], labels=["hunger"])
    assert other["records"][0]["score"] != rec(doc, "enc", "hunger")["score"]


def test_worker_processes_give_the_same_document(doc: dict, synth: tuple[Path, np.ndarray]) -> None:
    """Feature sources fitted in a pool of processes: the same records and notes, any timing;
    progress is reported once per source."""
    seen: list[tuple[int, int]] = []
    pooled = probe_file(synth[0], seed=3, n_bootstrap=100, workers=2,
                        progress=lambda done, total, _: seen.append((done, total)))
    assert pooled["records"] == doc["records"] and pooled["notes"] == doc["notes"]
    assert [d for d, _ in seen] == list(range(1, seen[0][1] + 1))
    with pytest.raises(ProbeError, match="workers"):
        probe_file(synth[0], workers=0)


def test_matches_sklearn(synth: tuple[Path, np.ndarray], doc: dict) -> None:
    pytest.importorskip("sklearn")
    from sklearn_reference import sklearn_scores

    ref = sklearn_scores(synth[0], seed=3, hooks=["enc"], labels=["hunger", "threat", "mode"])
    for (hook, label), score in ref.items():
        assert rec(doc, hook, label)["score"] == pytest.approx(score, abs=1e-3)


def test_auroc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet(np.ones(3), 300)
    p[np.arange(300), y] += 0.3
    p = np.round(p / p.sum(axis=1, keepdims=True), 1)  # ties
    p[:, 2] = 1.0 - p[:, 0] - p[:, 1]
    assert auroc(p, y) == pytest.approx(metrics.roc_auc_score(y, p, multi_class="ovr"), abs=1e-9)
    yb = (y == 1).astype(int)
    pb = np.stack([1 - p[:, 1], p[:, 1]], axis=1)
    assert auroc(pb, yb) == pytest.approx(metrics.roc_auc_score(yb, p[:, 1]), abs=1e-9)


def test_weights_direction(doc: dict, synth: tuple[Path, np.ndarray]) -> None:
    path, truth = synth
    assert doc["weights"] == str(path.with_suffix(".weights.npz"))
    direction = load_direction(doc["weights"], "hunger", "enc")
    assert direction.shape == (D,) and np.linalg.norm(direction) == pytest.approx(1.0)
    assert abs(direction @ truth) > 0.9
    with np.load(doc["weights"]) as w:
        coef, bias = w["hunger@enc/coef"], w["hunger@enc/bias"]
        assert float(w["hunger@enc/label_std"]) == pytest.approx(1.0, abs=0.1)
    with ActivationFile(path) as f:
        x, y = f.acts("enc"), f.label("hunger")
    pred = x @ coef + bias[0]
    assert np.corrcoef(pred, y)[0, 1] > 0.85
    assert load_direction(doc["weights"], "mode", "enc").shape == (3, D)
    with pytest.raises(ProbeError):
        load_direction(doc["weights"], "nope", "enc")


def test_missing_random_weights_and_degenerate_labels(tmp_path: Path) -> None:
    n = 20 * 30
    path = tmp_path / "f.h5"
    flat = np.ones(n)
    holes = np.random.default_rng(1).normal(size=n)
    holes[::7] = np.nan
    write_file(path, n_eps=20, ep_len=30, random_acts=False, extra_labels={"flat": flat, "holes": holes})
    doc = probe_file(path, n_bootstrap=20)
    notes = " ".join(doc["notes"])
    assert "random-weights baseline needs the run's network" in notes
    assert "'flat' was not probed" in notes and "'holes': " in notes
    assert "random_weights" not in rec(doc, "enc", "hunger")["baselines"]
    assert rec(doc, "enc", "holes")["n_test"] == n - len(range(0, n, 7))  # the NaN rows are left out


def test_too_few_episodes(tmp_path: Path) -> None:
    path = tmp_path / "one.h5"
    write_file(path, n_eps=1, ep_len=40)
    doc = probe_file(path)
    assert doc["records"] == [] and "at least 2" in doc["notes"][0]
    two = tmp_path / "two.h5"
    write_file(two, n_eps=2, ep_len=40)
    doc2 = probe_file(two, n_bootstrap=10, hooks=["enc"], labels=["hunger"])
    assert len(doc2["records"]) == 1 and any("not cross-validated" in n for n in doc2["notes"])
    with pytest.raises(ProbeError, match="folds"):
        probe_file(two, n_folds=1)


def test_timeline(tmp_path: Path) -> None:
    paths = []
    for i, (step, signal) in enumerate([(2000, 1.0), (1000, 0.0)]):
        p = tmp_path / f"ck{i}.h5"
        write_file(p, n_eps=10, ep_len=30, step=step, signal=signal, random_acts=False)
        paths.append(p)
    docs = probe_files(paths, hooks=["enc"], labels=["hunger"], n_bootstrap=10)
    assert [d["step"] for d in docs] == [1000, 2000]
    assert docs[0]["records"][0]["score"] < 0.2 < docs[1]["records"][0]["score"]
    text = format_timeline(docs)
    assert "hunger @ enc" in text and "1000" in text.splitlines()[0]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probes.linear", *args], capture_output=True, text=True)


def test_cli_json_and_table(synth: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    proc = _cli(str(synth[0]), "--json", "--hooks", "enc", "--labels", "hunger,threat", "--bootstrap", "20",
                "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {r["label"] for r in doc["records"]} == {"hunger", "threat"}
    assert json.loads(out.read_text()) == doc
    assert (tmp_path / "res.weights.npz").exists()
    table = _cli(str(synth[0]), "--hooks", "noise", "--labels", "hunger", "--bootstrap", "20")
    assert table.returncode == 0 and "held-out episodes" in table.stdout and "not decoded" in table.stdout


@pytest.mark.parametrize("case", ["missing", "not_hdf5", "wrong_schema", "incomplete", "label", "hook"])
def test_cli_bad_input(case: str, synth: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    extra: list[str] = []
    if case == "missing":
        path = tmp_path / "nope.h5"
    elif case == "not_hdf5":
        path.write_text("hello")
    elif case == "wrong_schema":
        with h5py.File(path, "w") as h:
            h.create_group("steps")
            h.create_group("acts")
            h.attrs["schema_version"] = 99
    elif case == "incomplete":
        w = ActivationWriter(path, {"run": "r", "checkpoint": "c"})
        n = 20
        w.append({"obs": np.zeros((n, 2)), "action": np.zeros(n), "reward": np.zeros(n), "done": np.zeros(n, bool),
                  "episode": np.arange(n) // 5, "t": np.arange(n) % 5}, {"x": np.random.default_rng(0).normal(size=n)},
                 {"h": np.random.default_rng(1).normal(size=(n, 2))})
        w.close(complete=False)
    else:
        path = synth[0]
        extra = ["--labels", "nope"] if case == "label" else ["--hooks", "nope"]
    proc = _cli(str(path), "--json", *extra)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    if case == "incomplete":
        assert "incomplete" in proc.stderr
        ok = _cli(str(path), "--json", "--allow-incomplete", "--bootstrap", "10")
        assert ok.returncode == 0, ok.stderr
        assert any("incomplete" in n for n in json.loads(ok.stdout)["notes"])
