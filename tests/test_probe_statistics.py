"""The probe sweep's statistics on synthetic files where each check can fail (docs/probes.md).

Every test builds a small activation file whose truth is known, and checks a rule that a
careless sweep would break: an episode leak, a baseline as strong as the probe, a label that is
significant only before the multiple-comparison correction, a control that a function of time
fools, labels without a ``kind``, several random twins, and the input-matched baseline.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from probes.activations import ActivationWriter
from probes.linear import best_hook, control_column, episode_permutation, probe_file, summarise
from probes.stats import holm

D = 8


def steps(n: int, e: int, obs: np.ndarray) -> dict[str, np.ndarray]:
    return {"obs": obs.astype(np.float32), "action": np.zeros(n, dtype=np.int64), "reward": np.zeros(n),
            "done": np.arange(n) == n - 1, "episode": np.full(n, e), "t": np.arange(n)}


def rec(doc: dict, hook: str, label: str) -> dict:
    return next(r for r in doc["records"] if r["hook"] == hook and r["label"] == label)


def test_episode_leak_trap(tmp_path: Path) -> None:
    """The label is constant within an episode and random across episodes; the hook carries an
    episode fingerprint. Rows of one episode on both sides of a split would be 'decoded'
    perfectly; grouped folds must find nothing."""
    rng = np.random.default_rng(0)
    path = tmp_path / "leak.h5"
    n_eps, n = 30, 40
    ep_label = rng.normal(size=n_eps)
    with ActivationWriter(path, {"run": "leak", "checkpoint": "c"}, {"ident": {"kind": "continuous"}}) as w:
        for e in range(n_eps):
            finger = rng.normal(size=D) * 3.0
            w.append(steps(n, e, rng.normal(size=(n, 2))), {"ident": np.full(n, ep_label[e])},
                     {"h": finger + 0.1 * rng.normal(size=(n, D))})
    # The trap is real: a split of rows (not episodes) decodes the label from the fingerprint.
    with h5py.File(path) as h:
        x, y = h["acts/h"][:].astype(np.float64), h["labels/ident"][:]
    rows = rng.permutation(len(y))
    tr, te = rows[: len(y) // 2], rows[len(y) // 2 :]
    xb = np.c_[x, np.ones(len(x))]
    coef = np.linalg.lstsq(xb[tr], y[tr], rcond=None)[0]
    leak_r2 = 1 - np.sum((y[te] - xb[te] @ coef) ** 2) / np.sum((y[te] - y[te].mean()) ** 2)
    assert leak_r2 > 0.2  # more parameters than episodes: rows of a seen episode are memorised
    doc = probe_file(path, n_bootstrap=200)
    r = rec(doc, "h", "ident")
    # 30 episodes are 30 samples: the out-of-fold score is noisy, but its interval reaches below 0
    assert r["ci"][0] < 0 and r["score"] < leak_r2 - 0.3
    assert not r["significant"] and not r["beats_baselines"] and r["p_adjusted"] >= 0.05
    assert "not decoded" in " ".join(summarise(doc))


def test_strong_baseline_is_not_beaten(tmp_path: Path) -> None:
    """The hook is a noisy copy of the observation and the label is linear in the observation:
    the probe scores well, but not beyond the raw-observation baseline."""
    rng = np.random.default_rng(1)
    path = tmp_path / "strong.h5"
    mix = rng.normal(size=(D, D))
    with ActivationWriter(path, {"run": "s", "checkpoint": "c"}, {"y": {"kind": "continuous"}}) as w:
        for e in range(30):
            n = 40
            obs = rng.normal(size=(n, 4))
            y = obs @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.3 * rng.normal(size=n)
            hook = np.c_[obs, rng.normal(size=(n, D - 4))] @ mix * 0.1
            hook += 0.05 * rng.normal(size=(n, D))
            w.append(steps(n, e, obs), {"y": y}, {"h": hook})
    doc = probe_file(path, n_bootstrap=200)
    r = rec(doc, "h", "y")
    assert r["score"] > 0.6  # the probe itself is good ...
    low, high = r["paired"]["raw_obs"]["ci"]
    assert low < 0  # ... but not better than the observation it was computed from
    assert r["paired"]["mean"]["ci"][0] > 0  # it does beat the mean predictor
    assert not r["significant"] and not r["beats_baselines"]
    assert "y is not decoded beyond the baselines" in " ".join(summarise(doc))


def weak_file(path: Path, n_noise: int) -> None:
    """One hook carries a weak trace of ``weak``; ``n_noise`` hooks carry nothing."""
    rng = np.random.default_rng(7)
    meta = {"weak": {"kind": "continuous"}, "other": {"kind": "continuous"}}
    with ActivationWriter(path, {"run": "w", "checkpoint": "c"}, meta) as w:
        for e in range(40):
            n = 30
            weak = rng.normal(size=n)
            acts = {f"noise{i:02d}": rng.normal(size=(n, 2)) for i in range(n_noise)}
            acts["signal"] = np.c_[0.17 * weak + rng.normal(size=n), rng.normal(size=n)]
            w.append(steps(n, e, rng.normal(size=(n, 2))), {"weak": weak, "other": rng.normal(size=n)}, acts)


def test_significant_only_before_correction(tmp_path: Path) -> None:
    path = tmp_path / "weak.h5"
    weak_file(path, n_noise=14)
    doc = probe_file(path, n_bootstrap=400, seed=0)
    r = rec(doc, "signal", "weak")
    assert doc["n_tests"] == 2 * 15
    # Uncorrected, the cell beats every baseline ...
    assert r["p_value"] < 0.05 and all(p["ci"][0] > 0 for p in r["paired"].values())
    # ... but not after Holm over the 30 cells of the file.
    assert r["p_adjusted"] >= 0.05 and r["p_adjusted"] > r["p_value"] and not r["significant"]
    # The same probe alone in its file survives the (trivial) correction.
    alone = probe_file(path, n_bootstrap=400, seed=0, hooks=["signal"], labels=["weak"])
    assert alone["n_tests"] == 1 and alone["records"][0]["significant"]


def test_holm_matches_the_definition() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    # sorted: 0.005*5, 0.01*4, 0.03*3, 0.04*2, 0.5*1, made monotone
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    assert holm([]) == [] and holm([0.3]) == [0.3]


def test_control_fails_when_the_label_is_a_function_of_time(tmp_path: Path) -> None:
    """The label follows the time within the episode and the hook encodes time: the
    episode-permuted control keeps the time course, so it is decoded as well, and the probe
    is not selective. (A control that hashes continuous observations would sit at chance.)"""
    rng = np.random.default_rng(3)
    path = tmp_path / "time.h5"
    with ActivationWriter(path, {"run": "t", "checkpoint": "c"}, {"clock": {"kind": "continuous"}}) as w:
        for e in range(30):
            n = 40
            t = np.arange(n) / n
            clock = np.sin(3 * t) + 0.05 * rng.normal(size=n)
            hook = np.c_[np.sin(3 * t), rng.normal(size=(n, D - 1))]
            w.append(steps(n, e, rng.normal(size=(n, 3))), {"clock": clock}, {"h": hook})
    doc = probe_file(path, n_bootstrap=200)
    r = rec(doc, "h", "clock")
    assert r["score"] > 0.9 and r["baselines"]["control_task"] > 0.9 and r["control"] == "episode_permuted_label"
    assert abs(r["selectivity"]) < 0.05 and not r["significant"]


def test_episode_permutation_control_keeps_time_course() -> None:
    perm = episode_permutation(7, seed=1)
    assert sorted(perm.tolist()) == list(range(7)) and not np.any(perm == np.arange(7))
    ep_idx = np.repeat(np.arange(3), [4, 2, 3])
    values = np.arange(9.0)
    ctrl = control_column(values, ep_idx, 3, seed=0)
    for e in range(3):
        rows = ctrl[ep_idx == e]
        donors = {int(d) for d in ep_idx[np.isin(values, rows)]}
        assert donors and e not in donors and len(donors) == 1  # one other episode, whole
        donor = values[ep_idx == donors.pop()]
        assert np.array_equal(rows, donor[np.arange(len(rows)) % len(donor)])  # in its time order


def test_label_kinds_of_files_written_by_others(tmp_path: Path) -> None:
    """No ``kind`` attribute: a 0/1 integer label is discrete (accuracy, not R^2); a float label
    continuous; the record says how the kind was decided, and carries ``derived_from``."""
    rng = np.random.default_rng(4)
    n_eps, n = 20, 30
    path = tmp_path / "foreign.h5"
    z = rng.normal(size=n_eps * n)
    with h5py.File(path, "w") as h:
        h.attrs.update({"schema_version": 1, "complete": True, "run": "x", "checkpoint": "c"})
        h["steps/obs"] = rng.normal(size=(n_eps * n, 2)).astype(np.float32)
        h["steps/episode"] = np.repeat(np.arange(n_eps), n)
        h["steps/t"] = np.tile(np.arange(n), n_eps)
        h["acts/h"] = np.c_[z, rng.normal(size=(n_eps * n, 3))].astype(np.float32)
        h["labels/flag"] = (z > 0).astype(np.int64)
        h["labels/count"] = rng.integers(0, 100, n_eps * n)
        h["labels/level"] = (z + 0.1 * rng.normal(size=n_eps * n)).astype(np.float32)
        h["labels/level"].attrs["derived_from"] = "environment"
    doc = probe_file(path, n_bootstrap=50)
    flag, level, count = rec(doc, "h", "flag"), rec(doc, "h", "level"), rec(doc, "h", "count")
    assert flag["kind"] == "discrete" and flag["metric"] == "accuracy" and flag["score"] > 0.9
    assert flag["kind_source"].startswith("inferred: integer") and "2 distinct" in flag["kind_source"]
    assert count["metric"] == "r2" and "more than 20" in count["kind_source"]
    assert level["metric"] == "r2" and level["kind_source"].startswith("inferred: float")
    assert level["derived_from"] == "environment" and flag["derived_from"] is None
    # The writer applies the same rule when it is given no metadata.
    own = tmp_path / "own.h5"
    with ActivationWriter(own, {"run": "x", "checkpoint": "c"}) as w:
        w.append(steps(n, 0, np.zeros((n, 2))), {"b": rng.integers(0, 2, n)}, {"h": rng.normal(size=(n, 2))})
    with h5py.File(own) as h:
        assert h["labels/b"].attrs["kind"] == "discrete"


def test_several_random_twins(tmp_path: Path) -> None:
    """Three twins: the baseline is their mean, the spread is reported, and one lucky twin (that
    happens to carry the label) does not decide the verdict on its own."""
    rng = np.random.default_rng(5)
    path = tmp_path / "twins.h5"
    with ActivationWriter(path, {"run": "t", "checkpoint": "c"}, {"y": {"kind": "continuous"}}) as w:
        for e in range(30):
            n = 30
            y = rng.normal(size=n)
            hook = np.c_[y + 0.3 * rng.normal(size=n), rng.normal(size=(n, 3))]
            lucky = np.c_[y + 0.6 * rng.normal(size=n), rng.normal(size=(n, 3))]
            twins = [{"h": lucky}, {"h": rng.normal(size=(n, 4))}, {"h": rng.normal(size=(n, 4))}]
            w.append(steps(n, e, rng.normal(size=(n, 2))), {"y": y}, {"h": hook}, twins)
    with h5py.File(path) as h:
        assert {"acts_random", "acts_random_1", "acts_random_2"} <= set(h)
    doc = probe_file(path, n_bootstrap=200)
    r = rec(doc, "h", "y")
    tw = r["random_twins"]
    assert tw["n"] == 3 and tw["scores"][0] > 0.5 and max(tw["scores"][1:]) < 0.1 and tw["std"] > 0.2
    assert r["baselines"]["random_weights"] == pytest.approx(np.mean(tw["scores"]), abs=1e-5)
    assert r["paired"]["random_weights"]["ci"][0] > 0 and r["significant"]


def test_input_matched_baseline(tmp_path: Path) -> None:
    """A transformer-like file: the network sees the last 3 steps and the return-to-go. The label
    is the observation two steps back: the current observation cannot predict it, the input
    window can, so a hook that merely carries the window does not beat the input-matched baseline."""
    rng = np.random.default_rng(6)
    path = tmp_path / "window.h5"
    mix = rng.normal(size=(5, 5))
    attrs = {"run": "w", "checkpoint": "c", "input_window": {"context": 3, "fields": ["obs", "rtg", "prev_actions", "timestep"]}}
    with ActivationWriter(path, attrs, {"past": {"kind": "continuous"}}) as w:
        for e in range(30):
            n = 30
            obs = rng.normal(size=(n, 2))
            past = np.r_[np.zeros(2), obs[:-2, 0]]
            hook = np.c_[past, obs, rng.normal(size=(n, 2))] @ mix
            st = steps(n, e, obs)
            st["action"] = rng.integers(0, 3, n)
            w.append(st, {"past": past}, {"h": hook}, inputs={"rtg": 10.0 - np.arange(n) * 0.1})
    doc = probe_file(path, n_bootstrap=200)
    r = rec(doc, "h", "past")
    assert r["score"] > 0.95 and r["baselines"]["raw_obs"] < 0.1
    assert r["baselines"]["input_matched"] > 0.95
    assert r["paired"]["input_matched"]["ci"][0] < 0.01 and not r["significant"]
    assert not any("input-matched baseline is absent" in n for n in doc["notes"])


def test_best_hook_is_chosen_inside_training_folds(tmp_path: Path) -> None:
    path = tmp_path / "weak.h5"
    weak_file(path, n_noise=4)
    doc = probe_file(path, n_bootstrap=100)
    top = best_hook(doc, "other")
    assert top["method"].startswith("nested") and top["n_hooks"] == 5
    # The selection is out-of-fold: with nothing to find, its score is not inflated above the
    # maximum over hooks (which is optimistic by construction).
    naive = best_hook(doc, "other", hooks=[r["hook"] for r in doc["records"] if r["label"] == "other"])
    assert naive["method"].startswith("max over 5 hooks")
    assert top["score"] <= naive["score"] + 1e-9
    assert best_hook(doc, "nope") is None
    # A file that does not say what the network receives has no input-matched baseline, and says so.
    assert "input_matched" not in rec(doc, "signal", "weak")["baselines"]
    assert any("input-matched baseline is absent" in n for n in doc["notes"])


def test_recorder_writes_three_random_twins(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    """A real recording: three twins of every hook, each a different initialisation, and no
    input window for an MLP agent (it sees the current observation only)."""
    from probes.activations import ActivationFile
    from rl_lab.record import RANDOM_TWINS, record
    from rl_lab.runs import RunStore

    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    path = record(run, run.latest_checkpoint(), episodes=2, seed=3, out=tmp_path / "a.h5")
    hook = "mlp_extractor.policy_net.1"
    with ActivationFile(path) as f:
        groups = f.random_twins(hook)
        assert RANDOM_TWINS >= 3 and groups == ["acts_random", "acts_random_1", "acts_random_2"]
        twins = [f.read(g, hook) for g in groups]
        assert not np.allclose(twins[0], twins[1]) and not np.allclose(twins[1], twins[2])
        assert f.input_window is None
    doc = probe_file(path, hooks=[hook], labels=["hunger"], n_bootstrap=20)
    assert doc["records"][0]["random_twins"]["n"] == 3


def test_dt_recording_states_its_input_window(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    """A real decision transformer: the recording says what the model receives (context, fields)
    and stores the return-to-go it was given, and the sweep probes that window as a baseline."""
    import shutil

    from probes.activations import ActivationFile
    from rl_lab.dt.train import DTTrainConfig, train_dt
    from rl_lab.record import record_run

    src_dir, src_name = tiny_run
    shutil.copytree(src_dir / src_name, tmp_path / src_name)
    cfg = DTTrainConfig(algo="dt", source_run=src_name, steps=3, context=4, batch_size=16, d_model=16, n_heads=2,
                        d_mlp=32, episodes_per_policy=2, log_every=3, checkpoint_every=3, eval_episodes=1,
                        restore_best=False, patience=0)  # type: ignore[arg-type]
    train_dt(cfg, tmp_path, name="dt0")
    (path,) = record_run("dt0", tmp_path, episodes=3, seed=0)
    with ActivationFile(path) as f:
        assert f.input_window == {"context": 4, "fields": ["obs", "prev_actions", "timestep", "rtg"]}
        rtg = f.read("inputs", "rtg")
        reward, ep = f.steps("reward"), f.episodes()
        first = np.flatnonzero(ep == ep[0])
        # the return-to-go falls by each reward received
        np.testing.assert_allclose(rtg[first][1:], rtg[first][:-1] - reward[first][:-1], atol=1e-4)
    doc = probe_file(path, hooks=["blocks.0.hook_resid_post"], labels=["hunger"], n_bootstrap=20, n_folds=3)
    r = doc["records"][0]
    assert "input_matched" in r["baselines"] and "input_matched" in r["paired"]
    assert not any("input-matched baseline is absent" in n for n in doc["notes"])
