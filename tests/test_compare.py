"""``rl-lab compare``: grouping, intervals across seeds, output keys, and the error without results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from probes.layout import RunsDirLayout
from probes.results import ProbeResults
from rl_lab.cli import main
from rl_lab.compare import best_by_label, compare, seed_interval
from rl_lab.errors import LabError
from rl_lab.runs import RunStore


def _record(hook: str, label: str, score: float, rand: float, by_construction: bool = False) -> dict:
    return {"hook": hook, "label": label, "metric": "r2", "score": score,
            "baselines": {"mean": 0.0, "random_weights": rand, "raw_obs": 0.1}, "selectivity": score - 0.05,
            "ci": [score - 0.1, score + 0.1], "checkpoint": "step_000000100", "linear_by_construction": by_construction}


def _make_run(store: RunStore, name: str, algo: str, seed: int, scores: dict[str, float],
              derived_from: dict[str, str] | None = None) -> None:
    run = store.create(name, {"algo": algo, "seed": seed, "env_id": "lab/Forage-v0", "status": "done"})
    run.probes_dir.mkdir()
    records = []
    for label, score in scores.items():
        records.append(_record("layer.a", label, score, rand=score / 2))
        records.append(_record("layer.b", label, score - 0.2, rand=score / 2 + 0.05))
    for rec in records:
        if derived_from and rec["label"] in derived_from:
            rec["derived_from"] = derived_from[rec["label"]]
    records.append(_record("value_net", "value", 0.99, rand=0.0, by_construction=True))
    doc = {"schema_version": 1, "file": "x.h5", "run": name, "checkpoint": "step_000000100", "step": 100,
           "records": records, "notes": []}
    (run.probes_dir / "step_000000100.json").write_text(json.dumps(doc))
    # An older checkpoint's results must be ignored in favour of the latest.
    old = dict(doc, checkpoint="step_000000050", step=50, records=[_record("layer.a", "hunger", -5.0, 0.0)])
    (run.probes_dir / "step_000000050.json").write_text(json.dumps(old))


def test_best_by_label_skips_linear_by_construction() -> None:
    """Without a nested choice in the document, the best hook is the maximum over the hooks and
    says so; the random twin is the one at that same hook."""
    records = [_record("a", "value", 0.3, 0.1), _record("v", "value", 0.99, 0.0, True), _record("b", "value", 0.5, 0.2)]
    best = best_by_label(ProbeResults.from_dict({"file": "x.h5", "records": records}))
    assert best["value"]["hook"] == "b" and best["value"]["score"] == 0.5
    assert best["value"]["random_weights"] == 0.2
    assert best["value"]["method"].startswith("max over 2 hooks")


def test_best_by_label_uses_the_nested_choice() -> None:
    """A document with a hook chosen inside the training folds reports that choice, not the max."""
    records = [_record("a", "hunger", 0.3, 0.1), _record("b", "hunger", 0.5, 0.2)]
    nested = {"hook": "a", "metric": "r2", "score": 0.28, "ci": [0.2, 0.35], "n_hooks": 2,
              "method": "nested: chosen by inner-CV score in each outer fold's training folds"}
    doc = ProbeResults.from_dict({"file": "x.h5", "records": records, "best_hooks": {"hunger": nested}})
    best = best_by_label(doc)
    assert best["hunger"]["hook"] == "a" and best["hunger"]["score"] == 0.28
    assert best["hunger"]["random_weights"] == 0.1 and best["hunger"]["method"].startswith("nested")
    # a subset of the hooks: plainly the maximum over them
    assert best_by_label(doc, ["b"])["hunger"]["method"].startswith("max over 1 hooks")


def test_compare_refuses_a_group_that_mixes_environments(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    _make_run(store, "f0", "ppo", 0, {"hunger": 0.5})
    _make_run(store, "c0", "ppo", 1, {"hunger": 0.4})
    store.get("c0").update(env_id="CartPole-v1")
    with pytest.raises(LabError, match="mixes runs of different environments"):
        compare(["f0", "c0"], tmp_path, write=False)
    result = compare(["f0", "c0"], tmp_path, write=False, group_by="env_id")
    assert set(result["groups"]) >= {"lab/Forage-v0", "CartPole-v1"}


def test_seed_interval() -> None:
    mean, ci = seed_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci is not None and ci[0] < 1.0 < 3.0 < ci[1]
    # t_{0.975, 2} = 4.3027, s = 1: half-width 4.3027 / sqrt(3)
    assert ci[1] - mean == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert seed_interval([1.0]) == (1.0, None)


def test_compare_groups_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    for s in range(3):
        _make_run(store, f"ppo{s}", "ppo", s, {"hunger": 0.6 + 0.01 * s, "value": 0.7})
        _make_run(store, f"dt{s}", "dt", s, {"hunger": 0.3 + 0.01 * s, "value": 0.4, "fear": 0.2})
    names = [f"{a}{s}" for a in ("ppo", "dt") for s in range(3)]
    result = compare(names, tmp_path)
    assert set(result) >= {"schema_version", "group_by", "runs", "labels", "groups", "table", "summary", "notes", "path"}
    assert result["labels"] == ["hunger", "value"]  # fear is not probed in the ppo runs
    assert result["groups"] == ["ppo", "ppo (random weights)", "dt", "dt (random weights)"]
    cell = result["table"]["hunger"]["groups"]["ppo"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.61) and cell["hooks"] == ["layer.a"] * 3
    assert cell["ci"][0] < 0.61 < cell["ci"][1]
    # the twin at the chosen hook (layer.a), not the best twin over all hooks: a paired comparison
    assert result["table"]["hunger"]["groups"]["ppo (random weights)"]["mean"] == pytest.approx(0.61 / 2)
    assert result["table"]["value"]["groups"]["ppo"]["mean"] == pytest.approx(0.7)  # not the by-construction 0.99
    # What training added, paired within each run: score minus its own twin (0.61 - (0.305 + 0.05)).
    gain = result["table"]["hunger"]["groups"]["ppo"]["gain_over_twin"]
    assert gain["n"] == 3 and gain["mean"] == pytest.approx(0.61 / 2) and gain["ci"][0] > 0  # paired at layer.a
    assert "gain_over_twin" not in result["table"]["hunger"]["groups"]["ppo (random weights)"]
    # value is a readout of each PPO run's own critic: reported apart, never counted in the summary
    assert result["variables"] == ["hunger"] and result["readouts"] == ["value"]
    assert result["table"]["value"]["readout"] and result["table"]["value"]["derived_from"]["ppo0"] == "value_output"
    assert result["summary"].startswith("Averaged over 1 label") and "ppo decodes best on 1 of 1" in result["summary"]
    assert json.loads(Path(result["path"]).read_text())["table"] == result["table"]
    # Comparisons live beside the runs, in RUNS/comparisons/, never among them.
    assert Path(result["path"]).parent == RunsDirLayout(tmp_path).comparisons_dir
    assert Path(result["path"]).name.startswith("compare-") and not list(tmp_path.glob("compare-*.json"))

    assert main(["compare", *names, "--label", "hunger", "--json", "--runs-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["labels"] == ["hunger"]
    assert main(["compare", "ppo0", "dt0", "--group-by", "seed", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hunger" in out and "written to" in out and "what training added" in out


def test_compare_never_pools_two_networks_of_one_algorithm(tmp_path: Path) -> None:
    """By default runs group by ``agent``: PPO-MLP and PPO-transformer stay apart, also for runs
    written before run.json had ``agent`` (named from algo and config.policy); ``algo`` pools them."""
    store = RunStore(tmp_path)
    for s in range(2):
        _make_run(store, f"mlp{s}", "ppo", s, {"hunger": 0.6})  # old run.json: no agent, no config
        _make_run(store, f"tf{s}", "ppo", s, {"hunger": 0.2})
        store.get(f"tf{s}").update(config={"policy": "transformer"})  # old run.json: the policy in its config only
    names = ["mlp0", "mlp1", "tf0", "tf1"]
    cells = compare(names, tmp_path, write=False)["table"]["hunger"]["groups"]
    assert cells["ppo"]["runs"] == ["mlp0", "mlp1"] and cells["ppo-transformer"]["runs"] == ["tf0", "tf1"]
    assert compare(names, tmp_path, write=False, group_by="algo")["table"]["hunger"]["groups"]["ppo"]["n"] == 4


def test_compare_hooks_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    for s in range(2):
        _make_run(store, f"ppo{s}", "ppo", s, {"hunger": 0.6, "value": 0.7})
    names = ["ppo0", "ppo1"]
    # layer.b scores 0.2 below layer.a: restricted to it, the best is layer.b's, and so is its random twin.
    result = compare(names, tmp_path, hooks=["layer.b*"], write=False)
    cell = result["table"]["hunger"]["groups"]["ppo"]
    assert cell["mean"] == pytest.approx(0.4) and cell["hooks"] == ["layer.b", "layer.b"]
    assert result["table"]["hunger"]["groups"]["ppo (random weights)"]["mean"] == pytest.approx(0.35)
    assert result["hooks"] == ["layer.b*"]
    assert compare(names, tmp_path, write=False)["table"]["hunger"]["groups"]["ppo"]["mean"] == pytest.approx(0.6)
    assert main(["compare", *names, "--hooks", "layer.b*", "--runs-dir", str(tmp_path)]) == 0
    assert "matching layer.b*" in capsys.readouterr().out
    assert main(["compare", *names, "--hooks", "blocks.*", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no probed hook of run 'ppo0' matches --hooks blocks.*" in err


def test_compare_error_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    _make_run(store, "ppo0", "ppo", 0, {"hunger": 0.5})
    store.create("bare", {"algo": "dt", "seed": 0, "status": "done"})
    with pytest.raises(LabError, match="rl-lab record bare"):
        compare(["ppo0", "bare"], tmp_path)
    assert main(["compare", "ppo0", "bare", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no recordings or probe results" in err
    with pytest.raises(LabError, match="label 'fear'"):
        compare(["ppo0"], tmp_path, labels=["fear"])


@pytest.mark.slow
def test_compare_probes_a_recording_without_results(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    src_dir, name = tiny_run
    shutil.copytree(src_dir / name, tmp_path / name)
    shutil.rmtree(tmp_path / name / "probes", ignore_errors=True)
    result = compare([name], tmp_path, labels=["hunger", "value"])
    assert list((tmp_path / name / "probes").glob("*.json"))
    assert result["table"]["value"]["groups"]["ppo"]["n"] == 1
    assert result["runs"][0]["probe_file"].endswith(".json")


def test_demo_explains_a_comparison_from_its_numbers(tmp_path: Path) -> None:
    from rl_lab.cli.demo import explain_comparison

    store = RunStore(tmp_path)
    # hunger: ppo 0.9 (CI 0.8-1.0) clearly above dt 0.5 (0.4-0.6); td_error: nobody's CI clears 0
    # (computed by a reference critic outside the comparison, so a variable, not a readout).
    shared = {"td_error": "reference_critic"}
    _make_run(store, "ppo0", "ppo", 0, {"hunger": 0.9, "td_error": 0.05}, derived_from=shared)
    _make_run(store, "dt0", "dt", 0, {"hunger": 0.5, "td_error": 0.02}, derived_from=shared)
    full = compare(["ppo0", "dt0"], tmp_path, write=False)
    acting = compare(["ppo0", "dt0"], tmp_path, hooks=["layer.b"], write=False)
    sentences = explain_comparison(full, acting)
    assert sentences[0] == "ppo decodes best on 1 of 2 labels: hunger (0.90 vs dt 0.50; clearly)"
    assert sentences[1].startswith("no network decodes td_error")
    # Gain over the random twin: ppo (0.9 - 0.5 + 0.05 - 0.075) / 2, dt (0.5 - 0.3 + 0.02 - 0.06) / 2.
    assert "ppo +0.24, dt +0.13" in sentences[2]  # each twin at the chosen hook
    assert "without PPO's critic" in sentences[3] and "ppo best on 1 of 2" in sentences[3]


def test_contrast_pairs_by_seed_and_corrects_for_every_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A's gain over its twin minus B's, paired by seed: a consistent difference is found, a label
    with no difference is not, and Holm multiplies the smallest p by the number of tests."""
    from scipy.stats import ttest_1samp

    store = RunStore(tmp_path)
    noise = [0.0, 0.03, -0.02, 0.01]
    for s, e in enumerate(noise):
        # twins are score / 2 at layer.a: gain = score / 2
        _make_run(store, f"rl{s}", "ppo", s, {"hunger": 0.8 + e, "thirst": 0.5 + e})
        _make_run(store, f"sup{s}", "bc", s, {"hunger": 0.4 + 0.5 * e, "thirst": 0.5 + 1.3 * e})
    _make_run(store, "sup9", "bc", 9, {"hunger": 0.1, "thirst": 0.1})  # no partner seed: left out of the pairs
    names = [f"{g}{s}" for g in ("rl", "sup") for s in range(4)] + ["sup9"]
    result = compare(names, tmp_path, write=False, contrasts=["ppo:bc"])
    cells = {c["label"]: c for c in result["contrasts"]}
    hunger = cells["hunger"]
    assert hunger["seeds"] == [0, 1, 2, 3] and hunger["n"] == 4
    expected = [(0.8 + e) / 2 - (0.4 + 0.5 * e) / 2 for e in noise]
    assert hunger["differences"] == pytest.approx(expected)
    p = float(ttest_1samp(expected, 0.0).pvalue)
    assert hunger["p"] == pytest.approx(p) and hunger["mean"] == pytest.approx(sum(expected) / 4)
    assert hunger["ci"][0] > 0 and hunger["significant"]
    assert not cells["thirst"]["significant"] and cells["thirst"]["ci"][0] < 0 < cells["thirst"]["ci"][1]
    # Holm over the two tests: the smaller p is doubled
    assert hunger["p_holm"] == pytest.approx(min(1.0, 2 * p))
    # behaviour: no recordings behind these hand-made results, so no returns
    assert result["behaviour"] == {}
    assert main(["compare", *names, "--contrast", "ppo:bc", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "contrasts:" in out and "ppo - bc" in out and "Holm" in out
    for bad, message in (("ppo", "malformed contrast"), ("ppo:ppo", "malformed contrast"),
                         ("ppo:dqn", "no compared run is in group 'dqn'")):
        assert main(["compare", *names, "--contrast", bad, "--runs-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_compare_reports_each_groups_recorded_return(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    import h5py
    import numpy as np

    src_dir, name = tiny_run
    shutil.copytree(src_dir / name, tmp_path / name)
    runs_dir = tmp_path
    result = compare([name], runs_dir, write=False, labels=["hunger"])
    run = RunStore(runs_dir).get(name)
    (path,) = run.activation_files()[-1:]
    with h5py.File(path) as f:
        reward, episode = f["steps/reward"][:], f["steps/episode"][:]
    returns = [reward[episode == e].sum() for e in np.unique(episode)]
    (group,) = result["behaviour"]
    assert result["behaviour"][group]["mean_return"] == pytest.approx(float(np.mean(returns)), rel=1e-5)
    assert result["runs"][0]["return"]["episodes"] == len(returns)
