"""Decision transformer: the model (fast, synthetic inputs) and the pipeline on a real tiny PPO run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_lab.dt.model import DecisionTransformer, DTModelConfig, loss_and_accuracy
from rl_lab.dt.trajectories import episode_windows


def _cfg(**kw: object) -> DTModelConfig:
    base = dict(obs_dim=5, n_actions=3, context=4, d_model=16, n_layers=2, n_heads=2, d_mlp=32, max_timestep=50)
    base.update(kw)
    return DTModelConfig(**base)  # type: ignore[arg-type]


def _batch(cfg: DTModelConfig, B: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    K = cfg.context
    return {
        "states": torch.randn(B, K, cfg.obs_dim, generator=g),
        "actions": torch.randint(0, cfg.n_actions, (B, K), generator=g),
        "rtg": torch.randn(B, K, generator=g),
        "timesteps": torch.arange(K).repeat(B, 1),
        "mask": torch.ones(B, K, dtype=torch.bool),
    }


def _fwd(model: DecisionTransformer, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])


def test_token_layout_and_hook_names() -> None:
    cfg = _cfg()
    model = DecisionTransformer(cfg)
    assert cfg.n_ctx == 12 and model.state_positions().tolist() == [1, 4, 7, 10]
    b = _batch(cfg)
    logits, cache = model.run_with_cache(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
    assert logits.shape == (3, 4, 3)
    assert cache["blocks.0.hook_resid_post"].shape == (3, 12, 16)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 2, 12, 12)
    # causal: no token attends to a later one
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.all(torch.triu(pattern, diagonal=1) == 0)


def test_bc_variant_has_no_rtg_token() -> None:
    cfg = _cfg(use_rtg=False)
    model = DecisionTransformer(cfg)
    assert model.rtg_embed is None and cfg.n_ctx == 8
    assert not any(k.startswith("rtg_embed") for k in model.state_dict())
    b = _batch(cfg)
    out = _fwd(model, b)
    b2 = dict(b, rtg=b["rtg"] * 100 + 7)
    assert torch.equal(out, _fwd(model, b2))  # the return-to-go cannot matter
    dt = DecisionTransformer(_cfg())
    assert not torch.allclose(_fwd(dt, b), _fwd(dt, b2))  # ... but it does for the DT


def test_prediction_ignores_current_and_future_actions() -> None:
    model = DecisionTransformer(_cfg())
    b = _batch(_cfg())
    out = _fwd(model, b)
    changed = b["actions"].clone()
    changed[:, -1] = (changed[:, -1] + 1) % 3
    out2 = _fwd(model, dict(b, actions=changed))
    assert torch.allclose(out[:, :-1], out2[:, :-1]) and torch.allclose(out[:, -1], out2[:, -1])
    changed[:, 1] = (changed[:, 1] + 1) % 3
    out3 = _fwd(model, dict(b, actions=changed))
    assert torch.allclose(out[:, :2], out3[:, :2]) and not torch.allclose(out[:, 2:], out3[:, 2:])


def test_left_padding_is_masked_out() -> None:
    cfg = _cfg()
    model = DecisionTransformer(cfg)
    obs = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    win = episode_windows(obs, np.array([1, 2]), np.array([3.0, 2.5]), context=4)
    assert win["mask"].tolist() == [[False, False, False, True], [False, False, True, True]]
    assert np.all(win["states"][1, :2] == 0) and np.array_equal(win["states"][1, 2:], obs)
    t = {k: torch.as_tensor(v) for k, v in win.items()}
    logits, cache = model.run_with_cache(t["states"], t["actions"], t["rtg"], t["timesteps"], t["mask"])
    pattern = cache["blocks.0.attn.hook_pattern"]  # [B, H, 12, 12]
    last = int(model.state_positions()[-1])
    assert torch.all(pattern[1, :, last, :6] == 0)  # padded timesteps get no attention
    assert torch.allclose(pattern[1, :, last].sum(-1), torch.ones(2))
    # Garbage in the padding does not change the prediction.
    noisy = dict(t, states=t["states"].clone(), rtg=t["rtg"].clone())
    noisy["states"][1, :2] = 9.0
    noisy["rtg"][1, :2] = -9.0
    assert torch.allclose(logits[1, -1], _fwd(model, noisy)[1, -1], atol=1e-5)


def test_state_dict_roundtrip_weights_only(tmp_path: Path) -> None:
    cfg = _cfg()
    model = DecisionTransformer(cfg)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = DecisionTransformer(_cfg(seed=5))
    b = _batch(cfg)
    assert torch.equal(_fwd(model, b), _fwd(DecisionTransformer(_cfg()), b))  # same seed, same weights
    assert not torch.allclose(_fwd(model, b), _fwd(other, b))
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert torch.allclose(_fwd(model, b), _fwd(other, b))


def test_loss_decreases_on_a_fixed_batch() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    model = DecisionTransformer(cfg)
    b = _batch(cfg, B=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = loss_and_accuracy(_fwd(model, b), b["actions"], b["mask"])
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_validation_holds_out_whole_episodes() -> None:
    from rl_lab.dt.train import DTTrainConfig, split_by_episode
    from rl_lab.dt.trajectories import Trajectories

    lengths = np.array([5, 7, 3, 9, 4, 6, 8, 5, 7, 6])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    episode = np.repeat(np.arange(10), lengths)
    t = np.concatenate([np.arange(n) for n in lengths])
    n = int(lengths.sum())
    data = Trajectories(path=Path("x.h5"), attrs={"n_actions": 3}, obs=np.arange(n, dtype=np.float32)[:, None],
                        action=np.zeros(n, dtype=np.int64), reward=np.zeros(n, dtype=np.float32), t=t,
                        return_to_go=np.zeros(n, dtype=np.float32), episode=episode, ep_start=starts,
                        ep_length=lengths, ep_return=np.zeros(10, dtype=np.float32), ep_policy=np.zeros(10, dtype=np.int64))
    cfg = DTTrainConfig(val_fraction=0.2, context=4)
    train_rows, val = split_by_episode(data, cfg, np.random.default_rng(0))
    assert val is not None
    # Every held-out window comes from held-out episodes only, and those episodes train nothing.
    val_rows = val["states"][:, -1, 0].numpy().astype(int)
    held = set(episode[val_rows])
    assert len(held) == 2 and not held & set(episode[train_rows])
    assert len(train_rows) + len(val_rows) == n
    for row, mask, states in zip(val_rows, val["mask"].numpy(), val["states"][..., 0].numpy()):
        assert all(episode[int(s)] == episode[row] for s, m in zip(states, mask) if m)
    train_rows, val = split_by_episode(data, DTTrainConfig(val_fraction=0.0), np.random.default_rng(0))
    assert val is None and len(train_rows) == n


# --------------------------------------------------------------------------- pipeline (real runs)
@pytest.fixture(scope="module")
def dt_runs(tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A copy of the session's tiny PPO run, and a 6-step DT and BC trained from it."""
    from rl_lab.dt.train import DTTrainConfig, train_dt

    src_dir, src_name = tiny_run
    runs_dir = tmp_path_factory.mktemp("dtruns")
    shutil.copytree(src_dir / src_name, runs_dir / src_name)
    common = dict(source_run=src_name, steps=6, context=4, batch_size=16, d_model=16, n_heads=2, d_mlp=32,
                  episodes_per_policy=2, log_every=2, checkpoint_every=3, eval_episodes=1, restore_best=False, patience=0)
    train_dt(DTTrainConfig(algo="dt", **common), runs_dir, name="dt0")  # type: ignore[arg-type]
    train_dt(DTTrainConfig(algo="bc", **common), runs_dir, name="bc0")  # type: ignore[arg-type]
    return runs_dir, "dt0", "bc0"


@pytest.mark.slow
def test_trajectory_file(dt_runs: tuple[Path, str, str]) -> None:
    from rl_lab.dt.trajectories import Trajectories

    runs_dir, _, _ = dt_runs
    src = next(p for p in runs_dir.iterdir() if (p / "trajectories").is_dir())
    data = Trajectories.load(src / "trajectories" / "default.h5")
    assert data.attrs["policies"] == ["step_000000512", "step_000001024", "random"]
    assert len(data.ep_return) == 6
    for e in range(6):
        rows = slice(data.ep_start[e], data.ep_start[e] + data.ep_length[e])
        assert np.allclose(data.return_to_go[rows][0], data.ep_return[e], atol=1e-4)
        assert data.t[rows].tolist() == list(range(data.ep_length[e]))
    win = data.windows(np.array([data.ep_start[1]]), 4)
    assert win["mask"][0].tolist() == [False, False, False, True]


@pytest.mark.slow
def test_dt_run_directory(dt_runs: tuple[Path, str, str]) -> None:
    from rl_lab.dt.evaluate import load_model
    from rl_lab.runs import RunStore

    runs_dir, dt_name, bc_name = dt_runs
    store = RunStore(runs_dir)
    for name, algo in ((dt_name, "dt"), (bc_name, "bc")):
        run = store.get(name)
        assert run.info["algo"] == algo and run.status == "done" and run.info["source_run"] == "tiny"
        assert run.info["env_id"] == "lab/Forage-v0" and run.info["steps_done"] == 6
        assert [p.name for p in run.checkpoints()] == ["step_000000003.pt", "step_000000006.pt"]
        state = torch.load(run.checkpoints()[-1], weights_only=True)
        assert isinstance(state, dict) and "state_embed.weight" in state
        assert ("rtg_embed.weight" in state) == (algo == "dt")
        losses = [m for m in run.metrics() if "loss" in m]
        assert [m["step"] for m in losses] == [2, 4, 6] and all(m["tokens_per_s"] > 0 for m in losses)
        assert all(m["val_loss"] > 0 and 0 <= m["val_accuracy"] <= 1 for m in losses)
        model = load_model(run)
        assert model.cfg.use_rtg == (algo == "dt")
        ev = json.loads((run.path / "eval.json").read_text())
        assert ev["rows"] and len(ev["rows"]) == (7 if algo == "dt" else 1)


@pytest.mark.slow
def test_early_stopping_ends_on_the_best_held_out_weights(dt_runs: tuple[Path, str, str]) -> None:
    from rl_lab.dt.evaluate import load_model
    from rl_lab.dt.train import DTTrainConfig, split_by_episode, train_dt, validation
    from rl_lab.dt.trajectories import Trajectories
    from rl_lab.runs import RunStore, checkpoint_step

    runs_dir, dt_name, _ = dt_runs
    source = RunStore(runs_dir).get(dt_name).info["source_run"]
    cfg = DTTrainConfig(algo="dt", source_run=source, steps=60, context=4, batch_size=16, d_model=16, n_heads=2,
                        d_mlp=32, episodes_per_policy=2, log_every=2, checkpoint_every=4, eval_episodes=0,
                        learning_rate=3e-3, patience=4, val_fraction=0.5)
    run = train_dt(cfg, runs_dir, name="dt-early")
    vals = [(m["val_loss"], m["step"]) for m in run.metrics() if "val_loss" in m]
    best_loss, best_step = min(vals)
    assert run.info["best_step"] == best_step and run.info["best_val_loss"] == pytest.approx(best_loss)
    # It stopped `patience` lines after the best (or ran out of steps), and kept no later checkpoint.
    last_step = vals[-1][1]
    assert last_step == run.info["steps_done"]
    assert last_step == 60 or (run.info["stopped_early_at"] == last_step and last_step == best_step + 4 * 2)
    assert max(checkpoint_step(p) for p in run.checkpoints()) == best_step
    # The weights it ends with are the best ones: the same held-out loss, recomputed.
    data = Trajectories.load(Path(run.info["dataset"]["path"]))
    _, batch = split_by_episode(data, cfg, np.random.default_rng(cfg.seed))
    assert validation(load_model(run), batch)["val_loss"] == pytest.approx(best_loss, rel=1e-5)


@pytest.mark.slow
def test_record_dt_run_has_transformerlens_hooks(dt_runs: tuple[Path, str, str]) -> None:
    from probes.activations import ActivationFile
    from rl_lab.record import record_run

    runs_dir, dt_name, _ = dt_runs
    (path,) = record_run(dt_name, runs_dir, episodes=2, seed=0)
    with ActivationFile(path) as f:
        n = len(f)
        assert "blocks.0.hook_resid_post" in f.hooks and "blocks.1.attn.hook_pattern" in f.hooks
        assert f.acts("blocks.0.hook_resid_post").shape == (n, 16)
        assert f.acts("blocks.0.attn.hook_pattern").shape == (n, 2 * 12)
        assert f.acts("blocks.0.mlp.hook_post").shape == (n, 32)
        assert set(f.random_hooks) == set(f.hooks)
        assert not np.allclose(f.acts("blocks.1.hook_resid_post"), f.acts("blocks.1.hook_resid_post", random_weights=True))
        for label in ("value", "td_error", "hope", "entropy", "return_to_go"):
            assert label in f.labels
        value = f.label("value")
        assert np.isfinite(value).all() and value.std() > 0
        pattern = f.acts("blocks.0.attn.hook_pattern").reshape(n, 2, 12)
        assert np.allclose(pattern.sum(-1), 1.0, atol=1e-5)
        t = f.steps("t")
        assert np.all(pattern[t == 0][:, :, :9] == 0)  # first step: only its own timestep is visible


def test_cli_dt_needs_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rl_lab.cli import main

    assert main(["train", "--algo", "dt", "--runs-dir", str(tmp_path)]) == 2
    assert "--from RUN" in capsys.readouterr().err
    assert main(["train", "--algo", "ppo", "--from", "x", "--runs-dir", str(tmp_path)]) == 2
    assert "--from is for --algo dt or bc" in capsys.readouterr().err
    assert main(["train", "--algo", "bc", "--from", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a usage error: argparse checks the range
        main(["train", "--algo", "dt", "--from", "x", "--patience", "-1", "--runs-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--patience: expected 0 or more, got -1" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_bc_on_the_same_trajectories(dt_runs: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from rl_lab.cli import main
    from rl_lab.runs import RunStore

    runs_dir, _, _ = dt_runs
    traj = runs_dir / "tiny" / "trajectories" / "default.h5"
    before = traj.stat().st_mtime_ns
    code = main(["train", "--algo", "bc", "--from", "tiny", "--steps", "4", "--context", "3", "--d-model", "16",
                 "--batch-size", "8", "--eval-episodes", "0", "--name", "bc-cli", "--runs-dir", str(runs_dir)])
    assert code == 0
    out = capsys.readouterr().out
    assert "run bc-cli: done, 4 steps" in out and "held-out episodes: loss" in out
    assert "kept the weights of step 4 (lowest held-out loss" in out
    run = RunStore(runs_dir).get("bc-cli")
    assert run.info["model_config"]["context"] == 3 and run.info["algo"] == "bc"
    assert traj.stat().st_mtime_ns == before  # reused, not collected again
    assert not (run.path / "eval.json").exists()


@pytest.mark.slow
def test_cli_source_checkpoints(dt_runs: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """--source-checkpoints collects from only the named checkpoints (plus the random policy); a
    step the run does not have, or a file collected from other policies, is one line and exit 2,
    before any run is created."""
    from rl_lab.cli import main
    from rl_lab.dt.trajectories import Trajectories
    from rl_lab.runs import RunStore

    runs_dir, _, _ = dt_runs
    common = ["--algo", "bc", "--from", "tiny", "--steps", "2", "--context", "3", "--d-model", "16",
              "--batch-size", "8", "--eval-episodes", "0", "--episodes-per-policy", "2", "--runs-dir", str(runs_dir)]
    assert main(["train", *common, "--source-checkpoints", "latest", "--trajectories", "last",
                 "--name", "bc-last"]) == 0
    data = Trajectories.load(runs_dir / "tiny" / "trajectories" / "last.h5")
    assert data.attrs["policies"] == ["step_000001024", "random"]
    assert RunStore(runs_dir).get("bc-last").info["config"]["source_checkpoints"] == ["latest"]
    capsys.readouterr()
    for option, message in ((["--source-checkpoints", "700", "--trajectories", "x"], "no checkpoint at step 700"),
                            (["--source-checkpoints", "512", "--trajectories", "last"], "was collected from"),
                            (["--source-checkpoints", "12k"], "is not a training step")):
        assert main(["train", *common, *option, "--name", "bc-refused"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (runs_dir / "bc-refused").exists()
    assert main(["train", "--algo", "ppo", "--source-checkpoints", "latest", "--runs-dir", str(runs_dir)]) == 2
    assert "--source-checkpoints is for --algo dt or bc" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_evaluate_calibration_curve(dt_runs: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from rl_lab.cli import main

    runs_dir, dt_name, _ = dt_runs
    args = ["--runs-dir", str(runs_dir)]
    assert main(["evaluate", dt_name, "--targets=-1,2.5", "--episodes", "2", "--temperature", "0.5", "--json", *args]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in doc["rows"]] == [-1.0, 2.5] and all(len(r["returns"]) == 2 for r in doc["rows"])
    assert doc["temperature"] == 0.5 and doc["checkpoint_step"] == 6
    assert json.loads((runs_dir / dt_name / "eval.json").read_text())["rows"] == doc["rows"]
    assert "best_policy_mean_return" in doc and "fraction_of_best" in doc
    # Same seeds, same numbers.
    assert main(["evaluate", dt_name, "--targets=-1,2.5", "--episodes", "2", "--temperature", "0.5", "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == doc["rows"]
    assert main(["evaluate", dt_name, "--checkpoint", "3", "--episodes", "1", *args]) == 0
    assert "achieved" in capsys.readouterr().out
    for bad, message in ((["--targets", "a,b"], "--targets must be comma-separated numbers"),
                         (["--temperature", "0"], "--temperature must be positive"),
                         (["--checkpoint", "5"], "has no checkpoint at step 5")):
        assert main(["evaluate", dt_name, *bad, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    assert main(["evaluate", "tiny", *args]) == 2
    assert "is for dt and bc runs" in capsys.readouterr().err
