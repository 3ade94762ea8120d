"""Labels aligned with what a network can know, flagged with where they come from (docs/labels.md).

Felt labels against the closed form on Chain are in ``tests/test_labels_chain.py``; here: the
``derived_from`` and ``timing`` attributes of real recordings, hope/fear standardised without the
recorded episodes, ``--reference-critic`` on two real runs, and readouts kept apart in comparisons.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from probes.activations import ActivationFile
from rl_lab.cli import main
from rl_lab.labels import (
    DERIVED_FROM,
    LABELS,
    REFERENCE_CRITIC,
    TIMINGS,
    ValueScale,
    episode_labels,
    hope_fear,
    label_meta,
)
from rl_lab.runs import RunStore

VALUE_LABELS = ("value", "td_error", "joy", "distress", "surprise", "prev_td_error", "prev_joy", "prev_distress",
                "prev_surprise", "mood", "hope", "fear")
POLICY_LABELS = ("entropy", "arousal", "action")
ENV_LABELS = ("reward", "prev_reward", "return_to_go", "discounted_return", "hunger", "threat")


def test_episode_labels_felt_versions() -> None:
    v = np.array([1.0, 2.0, 3.0])
    r = np.array([0.0, 1.0, 5.0])
    out = episode_labels(v, r, terminated=True, final_value=0.0, gamma=0.5, mood_alpha=0.5)
    td = out["td_error"]
    for felt, anticipatory in (("prev_td_error", "td_error"), ("prev_reward", "reward"), ("prev_joy", "joy"),
                               ("prev_distress", "distress"), ("prev_surprise", "surprise")):
        assert np.isnan(out[felt][0])
        np.testing.assert_allclose(out[felt][1:], out[anticipatory][:-1])
    # mood up to δ_{t-1}: NaN, 0.5 δ0, 0.5 (0.5 δ0) + 0.5 δ1 — never this step's own δ_t
    assert np.isnan(out["mood"][0])
    np.testing.assert_allclose(out["mood"][1:], [0.5 * td[0], 0.25 * td[0] + 0.5 * td[1]])


def test_label_meta_says_where_every_label_comes_from() -> None:
    spec = {"hunger": {"kind": "continuous", "description": "h"}, "value": {"kind": "continuous"}}
    own = label_meta(spec, {"value": ["critic.3"]})
    assert set(own) == set(LABELS) | {"hunger", "latent_value"}
    assert all(m["derived_from"] in DERIVED_FROM and m["timing"] in TIMINGS for m in own.values())
    assert own["value"]["derived_from"] == "value_output" and own["value"]["linear_in"] == ["critic.3"]
    assert own["entropy"]["derived_from"] == "policy_output"
    assert own["hunger"]["derived_from"] == own["latent_value"]["derived_from"] == "environment"
    assert own["td_error"]["timing"] == "anticipatory" and own["prev_td_error"]["timing"] == "felt"
    ref = label_meta(spec, {"value": ["critic.3"]}, value_from=REFERENCE_CRITIC,
                     derived_from={"extra": "policy_output"})
    # another network's critic: value-derived labels are no longer linear by construction in this one
    assert all(ref[name]["derived_from"] == REFERENCE_CRITIC for name in VALUE_LABELS)
    assert ref["value"]["linear_in"] == [] and ref["arousal"]["derived_from"] == "policy_output"
    assert ref["extra"]["derived_from"] == "policy_output"
    with pytest.raises(ValueError):
        label_meta(spec, {}, derived_from={"x": "somewhere"})


def test_hope_fear_use_the_given_scale() -> None:
    scale = ValueScale.fit([np.array([0.0, 2.0]), np.array([4.0])], seeds=[7, 8])
    assert scale.mean == pytest.approx(2.0) and scale.n_steps == 3 and scale.seeds == (7, 8)
    hf = hope_fear(np.array([2.0, 2.0 + scale.std, 2.0 - 2 * scale.std]), scale)
    np.testing.assert_allclose(hf["hope"], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(hf["fear"], [0.0, 0.0, 2.0])
    assert scale.attrs()["value_calibration_seeds"] == [7, 8]


# --------------------------------------------------------------------------- real recordings
def test_every_label_of_a_recording_says_where_it_comes_from(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    (path,) = RunStore(runs_dir).get(name).activation_files()
    with ActivationFile(path) as f:
        assert f.attrs["reference_critic"] == name
        assert f.attrs["reference_critic_checkpoint"] == f.attrs["checkpoint"]
        sources = {label: f.label_info(label)["derived_from"] for label in f.labels}
        assert all(src in DERIVED_FROM for src in sources.values()), sources
        for label in VALUE_LABELS:
            assert sources[label] == "value_output", label
        for label in POLICY_LABELS:
            assert sources[label] == "policy_output", label
        for label in ENV_LABELS:
            assert sources[label] == "environment", label
        spec_latents = [lab for lab in f.labels if lab not in LABELS]
        assert spec_latents and all(sources[lab] == "environment" for lab in spec_latents)


def test_hope_and_fear_never_use_the_recorded_episodes(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    """The scale comes from calibration episodes with seeds of their own: recording them as episodes
    gives exactly the stored mean and std, and recording more episodes does not change it."""
    from rl_lab.record import CALIBRATION_SEED_OFFSET, record

    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    ckpt = run.latest_checkpoint()
    kw = dict(deterministic=True, random_baseline=False, calibration_episodes=2)
    a = record(run, ckpt, episodes=2, seed=5, out=tmp_path / "a.h5", **kw)
    b = record(run, ckpt, episodes=3, seed=5, out=tmp_path / "b.h5", **kw)
    calib = record(run, ckpt, episodes=2, seed=5 + CALIBRATION_SEED_OFFSET, out=tmp_path / "calib.h5", **kw)
    with ActivationFile(a) as fa, ActivationFile(b) as fb, ActivationFile(calib) as fc:
        seeds = json.loads(fa.attrs["value_calibration_seeds"])
        assert fa.attrs["value_calibration_episodes"] == 2 and not set(seeds) & {5, 6}
        v_calib = fc.label("value").astype(np.float64)
        assert fa.attrs["value_calibration_steps"] == len(v_calib)
        assert fa.attrs["value_calibration_mean"] == pytest.approx(v_calib.mean(), abs=1e-5)
        assert fa.attrs["value_calibration_std"] == pytest.approx(v_calib.std(), abs=1e-5)
        v = fa.label("value").astype(np.float64)
        z = (v - fa.attrs["value_calibration_mean"]) / fa.attrs["value_calibration_std"]
        np.testing.assert_allclose(fa.label("hope") - fa.label("fear"), z, atol=1e-4)
        # the file's own statistics would give other numbers: the check above is not vacuous
        assert abs(v.mean() - fa.attrs["value_calibration_mean"]) > 1e-4
        # one more recorded episode changes nothing in the first two
        rows = fb.episodes() < 2
        np.testing.assert_array_equal(fb.label("hope")[rows], fa.label("hope"))
        assert fb.attrs["value_calibration_mean"] == fa.attrs["value_calibration_mean"]


@pytest.fixture(scope="module")
def two_runs(tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A copy of the session's tiny PPO run and a second tiny PPO run (another seed) beside it."""
    from rl_lab.config import TrainConfig
    from rl_lab.train import train

    src_dir, name = tiny_run
    runs_dir = tmp_path_factory.mktemp("refruns")
    shutil.copytree(src_dir / name, runs_dir / name)
    cfg = TrainConfig(env_id="lab/Forage-v0", algo="ppo", total_timesteps=512, seed=1, n_envs=2, checkpoint_every=512)
    train(cfg, runs_dir, name="critic")
    return runs_dir, name, "critic"


def test_reference_critic_gives_every_value_label(two_runs: tuple[Path, str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from stable_baselines3 import PPO

    runs_dir, name, critic = two_runs
    store = RunStore(runs_dir)
    common = ["--episodes", "2", "--calibration-episodes", "1", "--runs-dir", str(runs_dir), "--overwrite"]
    assert main(["record", name, "--reference-critic", critic, *common]) == 0
    assert main(["record", critic, "--reference-critic", critic, *common]) == 0
    capsys.readouterr()
    ref_model = PPO.load(store.get(critic).latest_checkpoint(), device="cpu")
    for run_name, expected in ((name, REFERENCE_CRITIC), (critic, "value_output")):
        (path,) = store.get(run_name).activation_files()
        with ActivationFile(path) as f:
            assert f.attrs["reference_critic"] == critic
            assert f.attrs["reference_critic_checkpoint"] == store.get(critic).latest_checkpoint().stem
            obs = f.steps("obs")
            with torch.no_grad():
                v = ref_model.policy.predict_values(torch.as_tensor(obs)).numpy().ravel()
            # both networks' value labels come from the one shared critic
            np.testing.assert_allclose(f.label("value"), v, atol=1e-5)
            r, ep, td = f.label("reward"), f.episodes(), f.label("td_error")
            for e in np.unique(ep):
                idx = np.flatnonzero(ep == e)[:-1]
                np.testing.assert_allclose(td[idx], r[idx] + f.attrs["gamma"] * v[idx + 1] - v[idx], atol=1e-4)
            for label in VALUE_LABELS:
                assert f.label_info(label)["derived_from"] == expected, (run_name, label)
            assert f.label_info("entropy")["derived_from"] == "policy_output"
            own = ["mlp_extractor.value_net.3", "value_net"]
            assert f.label_info("value")["linear_in"] == ([] if run_name == name else own)
            if run_name == name:  # the recorded network's own critic is not the one in the file
                own_model = PPO.load(store.get(name).latest_checkpoint(), device="cpu")
                with torch.no_grad():
                    own_v = own_model.policy.predict_values(torch.as_tensor(obs)).numpy().ravel()
                assert not np.allclose(own_v, v, atol=1e-3)


def test_reference_critic_is_validated_before_recording(two_runs: tuple[Path, str, str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name, _ = two_runs
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir / name, copy / name)
    store = RunStore(copy)
    store.create("cartpole", {"algo": "ppo", "env_id": "CartPole-v1", "status": "done", "config": {}})
    store.create("bc0", {"algo": "bc", "env_id": "lab/Forage-v0", "status": "done", "source_run": name})
    before = sorted(p.name for p in (copy / name / "activations").iterdir())
    for ref, message in (("nope", "nope"), ("cartpole", "same observations"), ("bc0", "no critic of its own")):
        assert main(["record", name, "--reference-critic", ref, "--overwrite", "--runs-dir", str(copy)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("rl-lab: error:") and message in err, err
    with pytest.raises(SystemExit) as exc:  # an argparse usage error
        main(["record", name, "--calibration-episodes", "0", "--runs-dir", str(copy)])
    assert exc.value.code == 2 and "--calibration-episodes" in capsys.readouterr().err
    assert sorted(p.name for p in (copy / name / "activations").iterdir()) == before


@pytest.mark.slow
def test_dt_recording_labels_come_from_the_source_critic(tiny_run: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    from rl_lab.dt.train import DTTrainConfig, train_dt
    from rl_lab.record import record_run

    src_dir, src_name = tiny_run
    shutil.copytree(src_dir / src_name, tmp_path / src_name)
    cfg = DTTrainConfig(algo="bc", source_run=src_name, steps=2, context=4, batch_size=16, d_model=16, n_heads=2,
                        d_mlp=32, episodes_per_policy=1, log_every=2, checkpoint_every=2, eval_episodes=0,
                        restore_best=False, patience=0)
    train_dt(cfg, tmp_path, name="bc0")
    (path,) = record_run("bc0", tmp_path, episodes=1, calibration_episodes=1)
    with ActivationFile(path) as f:
        assert f.attrs["reference_critic"] == src_name
        assert f.attrs["reference_critic_checkpoint"] == RunStore(tmp_path).get(src_name).latest_checkpoint().stem
        sources = {label: f.label_info(label)["derived_from"] for label in f.labels}
        assert all(sources[label] == REFERENCE_CRITIC for label in VALUE_LABELS)
        assert all(sources[label] == "policy_output" for label in POLICY_LABELS)
        assert all(sources[label] == "environment" for label in ENV_LABELS)
        assert all(src in DERIVED_FROM for src in sources.values())


# --------------------------------------------------------------------------- readouts kept apart
def _probe_doc(run_dir: Path, scores: dict[str, tuple[float, str]]) -> None:
    records = [{"hook": "layer.a", "label": label, "metric": "r2", "score": score, "derived_from": source,
                "baselines": {"random_weights": score / 2}, "ci": [score - 0.05, score + 0.05],
                "paired": {"random_weights": {"difference": score / 2, "ci": [score / 2 - 0.05, score / 2 + 0.05],
                                              "p": 0.001}},
                "checkpoint": "step_000000100", "linear_by_construction": False}
               for label, (score, source) in scores.items()]
    (run_dir / "probes").mkdir()
    (run_dir / "probes" / "step_000000100.json").write_text(json.dumps(
        {"schema_version": 1, "file": "x.h5", "run": run_dir.name, "checkpoint": "step_000000100", "step": 100,
         "records": records, "notes": []}))


def test_comparison_reports_readouts_apart(tmp_path: Path) -> None:
    from rl_lab.cli.demo import compare_to_random, explain_comparison
    from rl_lab.compare import compare, format_table

    store = RunStore(tmp_path)
    for name, algo, hope in (("ppo0", "ppo", 0.95), ("dt0", "dt", 0.3)):
        run = store.create(name, {"algo": algo, "seed": 0, "env_id": "lab/Forage-v0", "status": "done"})
        # hope is a readout of ppo0's own critic (and, recorded with it as reference, a variable for dt0)
        _probe_doc(run.path, {"hunger": (0.6 if algo == "ppo" else 0.4, "environment"),
                              "hope": (hope, "value_output" if algo == "ppo" else REFERENCE_CRITIC),
                              "entropy": (0.9, "policy_output")})
    result = compare(["ppo0", "dt0"], tmp_path, write=False)
    assert result["variables"] == ["hunger"] and result["readouts"] == ["entropy", "hope"]
    assert result["table"]["hope"]["derived_from"] == {"ppo0": "value_output", "dt0": REFERENCE_CRITIC}
    assert result["summary"].startswith("Averaged over 1 label")
    text = format_table(result)
    main_block, readout_block = text.split("\nreadouts:")
    assert "hunger" in main_block and "hope" not in main_block.split("what training added")[0]
    assert "hope" in readout_block and "value_output in ppo0" in readout_block
    sentences = explain_comparison(result, result)
    assert sentences[0].startswith("ppo decodes best on 1 of 1 labels: hunger")
    assert sentences[-1].startswith("readouts, not counted above") and "hope" in sentences[-1]
    doc = json.loads((store.get("ppo0").path / "probes" / "step_000000100.json").read_text())
    said = " ".join(compare_to_random(doc))
    assert "hope (value_output" in said and "readouts of the agent's own outputs" in said
    assert "hunger" in said.split("readouts of the agent's own outputs")[0]  # a variable, in the sentences before
