"""Sweeps: sweep files, grid expansion, run names, resuming, failing trials, the record, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probes.layout import RunsDirLayout
from rl_lab.cli import main
from rl_lab.errors import LabError
from rl_lab.runs import RunStore
from rl_lab.sweep import load_sweep, parse_assignment, read_record, run_sweep, trial_job
from rl_lab.sweep.spec import MAX_NAME, validate
from rl_lab.sweep.stages import run_trial
from rl_lab.sweep.stats import aggregate_returns, format_tables, seed_ci

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
envs = ["lab/Forage-v0"]
algos = ["ppo"]
seeds = [0]
pipeline = ["train", "record"]
[stages.train]
steps = 64
n_envs = 1
[stages.record]
episodes = 1
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- parsing and validation
BAD = [
    ("colour = 1", "unknown key 'colour'"),
    ("pipeline = ['train', 'dance']", "unknown stage 'dance'"),
    ("pipeline = ['train', 'probe']", "needs stage 'record'"),
    ("algos = ['sac']", "unknown algorithm 'sac'"),
    ("seeds = [0, 0]", "lists a seed twice"),
    ("seeds = -2", "must be positive"),
    ("seeds = ['a']", "seeds"),
    ("envs = ['lab/Nope-v0']", "unknown environment 'lab/Nope-v0'"),
    ("name = 'a b'", "not a valid sweep name"),
    ("[stages.train]\nsteps = 0", "stages.train.steps: expected a positive integer"),
    ("[stages.train]\ngamma = 1.5", "must be in (0, 1]"),
    ("[stages.train]\nwarp = 9", "stages.train: unknown key 'warp'"),
    ("[stages.record]\nepisodes = 'many'", "stages.record.episodes"),
    ("[stages.fly]\nx = 1", "unknown stage 'fly'"),
    ("[grid]\nlearning_rate = 0.1", "expected a non-empty list"),
    ("[grid]\nlearning_rate = []", "expected a non-empty list"),
    ("[grid]\nmomentum = [1, 2]", "grid: unknown key 'momentum'"),
    ("[grid]\nn_envs = [1, 1]", "lists a value twice"),
    ("[grid]\nnet_arch = [[64, 0]]", "grid.net_arch"),
    ("name = ", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_sweep_files_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LabError) as info:
        load_sweep(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_missing_name(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no such sweep file"):
        load_sweep(tmp_path / "nope.toml")
    with pytest.raises(LabError, match="needs a name"):
        load_sweep(None, {"seeds": 2})


def test_sae_stage_needs_a_hook(tmp_path: Path) -> None:
    pytest.importorskip("probes.sae")
    with pytest.raises(LabError, match="stages.sae.hook"):
        load_sweep(write(tmp_path, "pipeline = ['train', 'record', 'sae']"))


def test_stage_options_checked_against_the_probe_function(tmp_path: Path) -> None:
    pytest.importorskip("probes.linear")
    spec = load_sweep(write(tmp_path, "pipeline = ['train', 'record', 'probe']\n[stages.probe]\nseed = 3"))
    assert spec.stages["probe"] == {"seed": 3}
    with pytest.raises(LabError, match="stages.probe: unknown key 'colour'"):
        load_sweep(write(tmp_path, "pipeline = ['train', 'record', 'probe']\n[stages.probe]\ncolour = 3"))
    with pytest.raises(LabError, match="unknown key 'out_json'"):  # the sweep decides where results go
        load_sweep(write(tmp_path, "pipeline = ['train', 'record', 'probe']\n[stages.probe]\nout_json = 'x'"))


def test_defaults_name_from_file_and_pipeline_order(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path, "pipeline = ['record', 'train']\nseeds = 3", name="my-sweep.toml"))
    assert spec.name == "my-sweep"
    assert spec.pipeline == ["train", "record"]
    assert spec.seeds == [0, 1, 2]
    assert spec.envs == ["lab/Forage-v0"] and spec.algos == ["ppo"]


def test_overrides_and_set_syntax(tmp_path: Path) -> None:
    assert parse_assignment("stages.train.steps=2000") == ("stages.train.steps", 2000)
    assert parse_assignment("seeds=[0, 1]") == ("seeds", [0, 1])
    assert parse_assignment("name=plain-words") == ("name", "plain-words")
    assert parse_assignment("grid.env_kwargs.size=[5, 7]") == ("grid.env_kwargs.size", [5, 7])
    with pytest.raises(LabError, match="KEY=VALUE"):
        parse_assignment("stages.train.steps")
    spec = load_sweep(write(tmp_path, TINY), {"stages.train.steps": 64, "grid.env_kwargs.size": [5, 7]})
    assert spec.stages["train"]["steps"] == 64
    assert spec.grid == {"env_kwargs.size": [5, 7]}


# --------------------------------------------------------------------------- grid and names
def test_grid_expansion_and_deterministic_names() -> None:
    raw = {"name": "g", "envs": ["lab/Forage-v0", "CartPole-v1"], "algos": ["ppo", "a2c"], "seeds": [0, 1, 2],
           "grid": {"learning_rate": [0.0003, 0.001], "env_kwargs.interoception": [True, False]}}
    trials = validate(raw, check_env=False).trials()
    assert len(trials) == 2 * 2 * 3 * 2 * 2
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    assert names == [t.name for t in validate(raw, check_env=False).trials()]
    assert names[0] == "g-Forage-v0-ppo-s0-lr_0.0003-interoception_on"
    assert names[1] == "g-Forage-v0-ppo-s1-lr_0.0003-interoception_on"  # seeds vary fastest
    assert {t.name for t in trials if t.condition == "CartPole-v1 a2c lr_0.001 interoception_off"} == {
        f"g-CartPole-v1-a2c-s{s}-lr_0.001-interoception_off" for s in range(3)}
    cfg = trials[0].train_config({"steps": 500, "env_kwargs": {"size": 5}})
    assert cfg.total_timesteps == 500 and cfg.learning_rate == 0.0003 and cfg.seed == 0
    assert cfg.env_kwargs == {"size": 5, "interoception": True}


def test_long_names_are_shortened_but_stay_unique() -> None:
    raw = {"name": "x" * 60, "seeds": [0], "grid": {"env_kwargs." + "k" * 40: ["v" * 40 + "a", "v" * 40 + "b"]}}
    names = [t.name for t in validate(raw, check_env=False).trials()]
    assert all(len(n) <= MAX_NAME for n in names)
    assert len(set(names)) == 2
    for name in names:
        RunStore("unused").path_for(name)  # a valid run name


def test_colliding_names_are_refused() -> None:
    with pytest.raises(LabError, match="same run name"):
        validate({"name": "c", "grid": {"env_kwargs.mode": ["a b", "ab"]}}, check_env=False).trials()


# --------------------------------------------------------------------------- statistics
def test_seed_ci_is_the_t_interval() -> None:
    from scipy.stats import t as student_t

    assert seed_ci([1.0]) is None and seed_ci([1.0, None, float("nan")]) is None
    lo, hi = seed_ci([1.0, 2.0, 3.0, 4.0])
    half = student_t.ppf(0.975, 3) * np.std([1.0, 2.0, 3.0, 4.0], ddof=1) / 2.0
    assert lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)
    # Two seeds: t_{0.975,1} = 12.71, far wider than a bootstrap of two values could ever be.
    lo2, hi2 = seed_ci([0.0, 1.0])
    assert hi2 - lo2 == pytest.approx(2 * 12.7062 * np.std([0.0, 1.0], ddof=1) / np.sqrt(2), rel=1e-4)
    assert lo2 < 0.0 and hi2 > 1.0
    assert seed_ci([2.0, 2.0, 2.0]) == [2.0, 2.0]


def test_returns_grouped_by_condition_over_seeds() -> None:
    def trial(cond: str, seed: int, ret: float | None) -> dict[str, Any]:
        stage = {"status": "done", "final_return": ret} if ret is not None else {"status": "failed"}
        return {"condition": cond, "env_id": "e", "algo": "ppo", "params": {}, "seed": seed,
                "stages": {"train": stage}}

    rows = aggregate_returns([trial("a", 0, 1.0), trial("a", 1, 3.0), trial("b", 0, 5.0), trial("b", 1, None)])
    by = {r["condition"]: r for r in rows}
    assert by["a"]["train_return"]["mean"] == 2.0 and by["a"]["train_return"]["n"] == 2
    assert by["a"]["train_return"]["ci"] is not None
    assert by["b"]["train_return"]["n"] == 1 and by["b"]["train_return"]["ci"] is None
    assert by["b"]["seeds"] == [0]
    assert "a" in format_tables({"returns": rows})


# --------------------------------------------------------------------------- stages in this process
def _job(spec: Any, runs_dir: Path, index: int = 0) -> dict[str, Any]:
    return trial_job(spec, spec.trials()[index], runs_dir, "1/1")


def test_run_trial_marks_the_run_and_resume_skips_done_stages(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path, TINY))
    job = _job(spec, tmp_path / "runs")
    first = run_trial(job)
    assert [s["status"] for s in first["stages"].values()] == ["done", "done"]
    assert not first["stages"]["train"].get("cached")
    run = RunStore(tmp_path / "runs").get(first["name"])
    assert run.info["sweep"] == "tiny" and run.status == "done"
    h5 = Path(first["stages"]["record"]["file"])
    mtime = h5.stat().st_mtime_ns
    again = run_trial(job)
    assert again["stages"]["train"]["cached"] and again["stages"]["record"]["cached"]
    assert h5.stat().st_mtime_ns == mtime


def test_unfinished_train_is_resumed_and_a_run_without_checkpoint_restarted(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path, TINY), {"pipeline": ["train"]})
    runs = tmp_path / "runs"
    job = _job(spec, runs)
    run_trial(job)
    run = RunStore(runs).get(job["trial"]["name"])
    run.update(status="interrupted")
    longer = load_sweep(write(tmp_path, TINY), {"pipeline": ["train"], "stages.train.steps": 128})
    result = run_trial(_job(longer, runs))["stages"]["train"]
    assert result["status"] == "done" and result["resumed"] and result["steps_done"] >= 128
    assert RunStore(runs).get(job["trial"]["name"]).info["sweep"] == "tiny"
    # killed before its first checkpoint: nothing to resume, so it trains afresh
    for ckpt in run.checkpoints():
        ckpt.unlink()
    run.reload().update(status="failed", steps_done=0)
    result = run_trial(_job(longer, runs))["stages"]["train"]
    assert result["status"] == "done" and not result["resumed"]


def test_failed_stage_skips_its_dependants(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path, TINY), {"grid.env_kwargs.size": [-3]})
    result = run_trial(_job(spec, tmp_path / "runs"))
    assert result["stages"]["train"]["status"] == "failed"
    assert "size" in result["stages"]["train"]["error"]
    assert result["stages"]["record"]["status"] == "skipped"


# --------------------------------------------------------------------------- whole sweeps and the CLI
def test_sweep_cli_failing_trial_record_and_resume(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Two trials on the local process pool; one has an invalid env kwarg and fails alone."""
    sweep = write(tmp_path, TINY + '[grid]\n"env_kwargs.size" = [5, -3]\n')
    runs = tmp_path / "runs"
    code = main(["sweep", str(sweep), "--runs-dir", str(runs), "--workers", "2"])
    out, err = capfd.readouterr()  # the workers write their progress lines to the inherited stderr
    assert code == 1
    assert "1/2 trials done, 1 failed" in out.strip().splitlines()[-1]
    assert "local backend" in err and "Ray would add" in err
    assert "train start" in err and "record done" in err and "train failed" in err
    record = read_record(runs, "tiny")
    assert record is not None and record["status"] == "failed"
    assert record["file"] == str(sweep.resolve())
    by = {t["name"]: t for t in record["trials"]}
    good, bad = by["tiny-Forage-v0-ppo-s0-size_5"], by["tiny-Forage-v0-ppo-s0-size_-3"]
    assert good["status"] == "done" and good["params"] == {"env_kwargs.size": 5}
    assert good["stages"]["train"]["status"] == "done" and good["stages"]["record"]["status"] == "done"
    assert bad["status"] == "failed" and "size" in bad["error"]
    assert bad["stages"]["record"]["status"] == "skipped"
    assert RunStore(runs).get(good["name"]).info["sweep"] == "tiny"
    assert not (runs / bad["name"]).exists()
    returns = {r["condition"]: r for r in record["aggregate"]["returns"]}
    assert returns["Forage-v0 ppo size_5"]["train_return"]["n"] == 1
    assert record["summary"] == {**record["summary"], "trials": 2, "done": 1, "failed": 1, "ran": 2}

    # the second time only the failed trial runs again
    code = main(["sweep", str(sweep), "--runs-dir", str(runs), "--json"])
    out, err = capfd.readouterr()
    assert code == 1
    again = json.loads(out)
    assert again["summary"]["ran"] == 1
    assert "1 already finished, 1 to run" in err
    assert {t["name"]: t["status"] for t in again["trials"]} == {good["name"]: "done", bad["name"]: "failed"}


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(write(tmp_path, "colour = 1")), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rl-lab: error: sweep file: unknown key 'colour'") and err.count("\n") == 1
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert main(["sweep", "--seeds", "2", "--runs-dir", str(tmp_path)]) == 2  # flags only, but no name
    assert main(["sweep", str(write(tmp_path, TINY)), "--address", "auto", "--runs-dir", str(tmp_path)]) == 2
    assert "use it with --backend ray" in capsys.readouterr().err


def test_ray_backend_without_ray_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from rl_lab.sweep import backends

    monkeypatch.setattr(backends, "ray_available", lambda: False)
    assert main(["sweep", str(write(tmp_path, TINY)), "--backend", "ray", "--runs-dir", str(tmp_path)]) == 2
    assert "pip install 'rl-lab[ray]'" in capsys.readouterr().err
    assert not RunsDirLayout(tmp_path).sweep_record("tiny").exists()


def test_flags_alone_define_a_sweep(tmp_path: Path) -> None:
    from rl_lab.cli import build_parser
    from rl_lab.cli.sweep import overrides_from_args

    args = build_parser().parse_args(["sweep", "--name", "f", "--env", "CartPole-v1", "--algo", "a2c",
                                      "--seeds", "0,4", "--pipeline", "train", "--steps", "64",
                                      "--set", "grid.gamma=[0.9, 0.99]"])
    spec = load_sweep(None, overrides_from_args(args))
    assert [t.name for t in spec.trials()] == ["f-CartPole-v1-a2c-s0-gamma_0.9", "f-CartPole-v1-a2c-s4-gamma_0.9",
                                               "f-CartPole-v1-a2c-s0-gamma_0.99", "f-CartPole-v1-a2c-s4-gamma_0.99"]
    assert spec.stages["train"] == {"steps": 64}
    args = build_parser().parse_args(["sweep", "--name", "f", "--seeds", "3"])
    assert load_sweep(None, overrides_from_args(args)).seeds == [0, 1, 2]


# --------------------------------------------------------------------------- slow: Ray and the example
RAY_SWEEP = """
name = "rayk"
envs = ["lab/Forage-v0"]
algos = ["ppo"]
seeds = [0, 1]
pipeline = ["train", "record"]
[stages.train]
steps = 8192
n_envs = 2
checkpoint_every = 1024
[stages.record]
episodes = 1
"""


@pytest.mark.slow
def test_ray_backend_runs_a_sweep_and_a_killed_trial_resumes(tmp_path: Path) -> None:
    """A local Ray cluster of 2 CPUs runs a real sweep; one trial's worker is killed (SIGKILL) mid-training:
    Ray retries the task and the trial resumes its run from the last checkpoint. Also: a runs directory a
    node cannot write to fails the shared-storage check with one line."""
    ray = pytest.importorskip("ray")
    import signal
    import socket
    import threading
    import time

    from rl_lab.sweep import backends

    runs = tmp_path / "runs"
    spec = load_sweep(write(tmp_path, RAY_SWEEP))
    victim = spec.trials()[0].name
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome: dict[str, Any] = {}

        def sweep() -> None:
            try:
                outcome["record"] = run_sweep(spec, runs, backend="ray", workers=2, log=lambda line: None)
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=sweep)
        thread.start()
        run_json = runs / victim / "run.json"
        killed = None
        deadline = time.time() + 600  # generous: on a loaded machine Ray's workers start slowly
        while killed is None and thread.is_alive() and time.time() < deadline:
            try:
                info = json.loads(run_json.read_text())
            except (OSError, json.JSONDecodeError):
                info = {}
            if info.get("status") == "running" and list((runs / victim / "checkpoints").glob("*.zip")):
                killed = info["pid"]
                assert info["host"] == socket.gethostname()
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        thread.join(timeout=600)
        assert "error" not in outcome, outcome.get("error")
        assert killed is not None, ("the trial finished before it could be killed" if not thread.is_alive()
                                    else "no checkpoint appeared within the deadline")
        record = outcome["record"]
        assert record["summary"]["done"] == 2 and record["backend"] == "ray"
        run = RunStore(runs).get(victim)
        assert run.info["sweep"] == "rayk" and run.info["steps_done"] == 8192
        assert run.info["resumes"] and run.info["resumes"][-1]["from_step"] >= 1024  # resumed, not restarted
        assert run.info["pid"] != killed
        assert not list(runs.glob(".shared-*"))  # the shared-storage markers are removed

        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(LabError, match="is not shared with Ray node") as err:
            backends.check_shared_runs_dir(blocker / "runs")
        assert "\n" not in str(err.value)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_smoke_example_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/sweep-smoke.toml, with a smaller budget: every stage of every trial finishes."""
    example = ROOT / "examples" / "sweep-smoke.toml"
    runs = tmp_path / "runs"
    code = main(["sweep", str(example), "--runs-dir", str(runs), "--workers", "2",
                 "--set", "stages.train.steps=1024", "--set", "stages.record.episodes=4"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    record = read_record(runs, "sweep-smoke")
    assert record is not None and record["summary"]["done"] == record["summary"]["trials"] >= 2
    spec = load_sweep(example)
    for trial in record["trials"]:
        assert set(trial["stages"]) == set(spec.pipeline)
        assert all(s["status"] == "done" for s in trial["stages"].values())
    if "probe" in spec.pipeline:
        assert record["aggregate"]["probes"] and "probes" in out
        if importlib.util.find_spec("rl_lab.compare") is not None:
            assert record["aggregate"]["compare"]["groups"][0] == record["trials"][0]["condition"]
        # a label can be skipped in one seed on this tiny budget (e.g. a class never seen); value never is
        assert all(1 <= r["score"]["n"] <= len(spec.seeds) for r in record["aggregate"]["probes"])
        assert any(r["label"] == "value" and r["score"]["n"] == len(spec.seeds) for r in record["aggregate"]["probes"])
    if "sae" in spec.pipeline:
        assert record["aggregate"]["saes"]
    assert os.path.exists(runs / record["trials"][0]["name"] / "activations")
