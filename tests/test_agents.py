"""The transformer policy trained by PPO and the recurrent (LSTM) PPO agent: real tiny trainings,
recordings, probes and steering rollouts, and checks of the history layout and the LSTM states
against independent references (the acting pass, sb3-contrib's own sequence processing)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rl_lab.cli import main
from rl_lab.config import TrainConfig
from rl_lab.dt.model import stored_hooks, DTModelConfig
from rl_lab.policies import HistoryObservation, HistoryStack, split_history

ENV = "lab/Forage-v0"


@pytest.fixture(scope="module")
def agent_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformer-PPO run and a recurrent-PPO run (512 steps each), one recording of each."""
    from rl_lab.record import record_run
    from rl_lab.train import train

    runs_dir = tmp_path_factory.mktemp("agents")
    train(TrainConfig(env_id=ENV, algo="ppo", policy="transformer", total_timesteps=512, n_envs=2,
                      context=4, d_model=32, checkpoint_every=512), runs_dir, name="tf")
    train(TrainConfig(env_id=ENV, algo="recurrent-ppo", total_timesteps=512, n_envs=2, lstm_hidden=16,
                      net_arch=[16], checkpoint_every=256), runs_dir, name="lstm")
    for name in ("tf", "lstm"):
        record_run(name, runs_dir, episodes=3, seed=0)
    return runs_dir


def _run(runs_dir: Path, name: str):
    from rl_lab.runs import RunStore

    return RunStore(runs_dir).get(name)


# --------------------------------------------------------------------------- the history vector
def test_history_stack_layout_left_pads_and_shifts() -> None:
    h = HistoryStack(obs_dim=2, context=3)
    v0 = h.reset(np.array([1.0, 2.0]))
    #            states (3 x 2)            actions   timesteps  mask
    assert v0.tolist() == [0, 0, 0, 0, 1, 2] + [0, 0, 0] + [0, 0, 0] + [0, 0, 1]
    v1 = h.step(4, np.array([3.0, 4.0]))
    assert v1.tolist() == [0, 0, 1, 2, 3, 4] + [0, 4, 0] + [0, 0, 1] + [0, 1, 1]
    h.step(1, np.array([5.0, 6.0]))
    v3 = h.step(2, np.array([7.0, 8.0]))  # step 0 falls out of the window
    assert v3.tolist() == [3, 4, 5, 6, 7, 8] + [1, 2, 0] + [1, 2, 3] + [1, 1, 1]
    states, actions, timesteps, mask = split_history(torch.as_tensor(v1)[None], 2, 3)
    assert states[0].tolist() == [[0, 0], [1, 2], [3, 4]]
    assert actions[0].tolist() == [0, 4, 0] and timesteps[0].tolist() == [0, 0, 1]
    assert mask[0].tolist() == [False, True, True]


def test_history_wrapper_matches_replay() -> None:
    """The wrapper SB3 trains on and the recorder's replay build the same vectors."""
    from rl_lab.train import make_env

    env = HistoryObservation(make_env(ENV), context=4)
    raw_env = make_env(ENV)
    obs, _ = env.reset(seed=3)
    raw, _ = raw_env.reset(seed=3)
    seen, raws, actions = [obs], [raw], []
    rng = np.random.default_rng(0)
    for _ in range(7):
        a = int(rng.integers(5))
        actions.append(a)
        obs, *_ = env.step(a)
        raw, *_ = raw_env.step(a)
        seen.append(obs)
        raws.append(raw)
    replay, final = HistoryStack(raws[0].size, 4).episode(np.asarray(raws[:-1]), np.asarray(actions), raws[-1])
    np.testing.assert_array_equal(replay, np.asarray(seen[:-1]))
    np.testing.assert_array_equal(final, seen[-1])


# --------------------------------------------------------------------------- transformer PPO
def test_transformer_run_records_the_dt_hook_names(agent_runs: Path) -> None:
    run = _run(agent_runs, "tf")
    assert run.info["config"]["policy"] == "transformer"
    (path,) = sorted(run.activations_dir.glob("*.h5"))
    cfg = DTModelConfig(obs_dim=11, n_actions=5, context=4, use_rtg=False, d_model=32)
    with h5py.File(path) as f:
        hooks = set(f["acts"])
        assert hooks == set(stored_hooks(cfg)) | {"action_net", "value_net"}
        n = f["steps/obs"].shape[0]
        assert f["steps/obs"].shape == (n, 11)  # the raw observation, not the history vector
        assert f["acts/blocks.1.hook_resid_post"].shape == (n, 32)
        assert f["acts/blocks.0.attn.hook_pattern"].shape == (n, 2 * 8)  # heads x n_ctx (2 tokens/step)
        for hook in hooks:
            assert np.isfinite(f[f"acts/{hook}"][:]).all(), hook
        values = f["labels/value"][:]
        np.testing.assert_allclose(f["acts/value_net"][:, 0], values, rtol=1e-5, atol=1e-5)
        # left padding: the first step's attention row puts no weight on the padded window
        first = np.flatnonzero(f["steps/t"][:] == 0)[0]
        pattern = f["acts/blocks.0.attn.hook_pattern"][first].reshape(2, 8)
        np.testing.assert_allclose(pattern[:, :6], 0.0, atol=1e-6)


def test_transformer_replay_matches_acting(agent_runs: Path) -> None:
    """episode_forward rebuilds exactly the inputs the acting policy had (same logits per step)."""
    from rl_lab.record import load_adapter
    from rl_lab.train import make_env

    run = _run(agent_runs, "tf")
    adapter = load_adapter(run, run.latest_checkpoint())
    live: list[np.ndarray] = []
    handle = adapter.modules["action_net"].register_forward_hook(lambda m, i, o: live.append(o.detach().numpy()[0]))
    env = make_env(ENV)
    obs, _ = env.reset(seed=5)
    adapter.reset()
    buf_obs, buf_act = [], []
    for _ in range(15):
        a = adapter.act(obs)
        buf_obs.append(obs)
        buf_act.append(a)
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    handle.remove()
    fwd = adapter.episode_forward(np.asarray(buf_obs), np.asarray(buf_act), np.zeros(len(buf_act)), obs)
    np.testing.assert_allclose(fwd.acts["action_net"], np.asarray(live), rtol=1e-4, atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in live}) > 1  # the history changes the logits


def test_step_view_edit_reaches_the_actor(agent_runs: Path) -> None:
    """An edit at a step view is written back into the residual stream: later layers and the
    action distribution change; a read-only hook changes nothing."""
    from rl_lab.adapters import load_sb3

    run = _run(agent_runs, "tf")
    policy = load_sb3(run, run.latest_checkpoint()).policy
    view = policy.hook_modules()["blocks.0.hook_resid_post"]
    h = HistoryStack(11, 4)
    x = torch.as_tensor(np.stack([h.reset(np.full(11, 0.5))]))
    with torch.no_grad():
        base = policy.get_distribution(x).distribution.logits
        handle = view.register_forward_hook(lambda m, i, o: None)
        assert torch.equal(policy.get_distribution(x).distribution.logits, base)
        handle.remove()
        handle = view.register_forward_hook(lambda m, i, o: o + 5.0 * torch.randn_like(o))
        edited = policy.get_distribution(x).distribution.logits
        handle.remove()
    assert not torch.allclose(edited, base)


def test_transformer_probe_and_steer(agent_runs: Path) -> None:
    from probes.linear import probe_file
    from rl_lab.steer.intervene import Edit
    from rl_lab.steer.policies import load_policy
    from rl_lab.steer.rollout import rollout_rows
    from rl_lab.train import make_policy_env

    run = _run(agent_runs, "tf")
    (path,) = sorted(run.activations_dir.glob("*.h5"))
    doc = probe_file(path, labels=["energy", "value"], hooks=["blocks.1.hook_resid_post"], n_bootstrap=20)
    scores = {(r["hook"], r["label"]): r for r in doc["records"]}
    assert ("blocks.1.hook_resid_post", "energy") in scores
    policy = load_policy(run, run.latest_checkpoint(), "blocks.1.hook_resid_post")
    rng = np.random.default_rng(0)
    push = Edit(vector=rng.standard_normal(32).astype(np.float32), a=20.0)
    metrics = rollout_rows(policy, lambda: make_policy_env(run.info["config"]), [Edit.clean(32), push],
                           [0, 0], seed=0, max_steps=12)
    assert metrics.values["kl"][0] == 0.0 and metrics.values["kl"][1] > 0.0


def test_both_recordings_state_their_input_for_the_input_matched_baseline(agent_runs: Path) -> None:
    """The transformer policy's file says it reads the last K steps (observations, earlier actions,
    timesteps), the LSTM's that it reads the observation history (its last ``context`` steps);
    the probe fits the input-matched baseline on each."""
    from probes.activations import ActivationFile
    from probes.linear import probe_file

    expected = {"tf": {"context": 4, "fields": ["obs", "prev_actions", "timestep"]},
                "lstm": {"context": 10, "fields": ["obs"]}}
    for name, window in expected.items():
        path = sorted(_run(agent_runs, name).activations_dir.glob("*.h5"))[-1]
        with ActivationFile(path) as f:
            assert f.input_window == window, name
            hook = f.hooks[0]
        doc = probe_file(path, labels=["energy"], hooks=[hook], n_bootstrap=20)
        (record,) = doc["records"]
        assert "input_matched" in record["baselines"], (name, doc["notes"])


def test_separate_critic_trains_the_actor_trunk_by_the_policy_gradient_alone(tmp_path: Path) -> None:
    """--separate-critic: a second trunk of the same shape feeds the critic, recorded as critic.<hook>;
    the value loss leaves the actor's trunk untouched, and --epochs and --target-kl reach PPO."""
    from rl_lab.adapters import load_sb3
    from rl_lab.record import record_run
    from rl_lab.train import train

    train(TrainConfig(env_id=ENV, algo="ppo", policy="transformer", separate_critic=True, n_epochs=2,
                      target_kl=0.02, batch_size=32, total_timesteps=256, n_envs=2, context=3, d_model=16, checkpoint_every=256),
          tmp_path, name="sep")
    run = _run(tmp_path, "sep")
    model = load_sb3(run, run.latest_checkpoint())
    assert model.n_epochs == 2 and model.target_kl == 0.02 and model.batch_size == 32
    policy = model.policy
    cfg = DTModelConfig(obs_dim=11, n_actions=5, context=3, use_rtg=False, d_model=16)
    names = set(policy.hook_modules())
    assert names == set(stored_hooks(cfg)) | {f"critic.{h}" for h in stored_hooks(cfg)} | {"action_net", "value_net"}
    actor, critic = policy.mlp_extractor.actor, policy.mlp_extractor.critic
    assert not torch.equal(actor.model.state_embed.weight, critic.model.state_embed.weight)
    h = HistoryStack(11, 3)
    x = torch.as_tensor(np.stack([h.reset(np.full(11, 0.5))]))
    policy.zero_grad()
    policy.predict_values(x).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in actor.parameters())
    assert any(p.grad is not None and p.grad.any() for p in critic.parameters())
    record_run("sep", tmp_path, episodes=2, seed=0)
    (path,) = sorted(run.activations_dir.glob("*.h5"))
    with h5py.File(path) as f:
        assert "critic.blocks.1.hook_resid_post" in f["acts"] and "blocks.1.hook_resid_post" in f["acts"]
        np.testing.assert_allclose(f["acts/value_net"][:, 0], f["labels/value"][:], rtol=1e-5, atol=1e-5)


def test_mlp_critic_reads_the_current_observation_only(tmp_path: Path) -> None:
    """--mlp-critic: the critic is PPO-MLP's 64-64 Tanh MLP over the current observation (earlier steps
    of the history do not move the value), recorded as critic.value_net.<i>, linear_in names its last
    layer; the value loss leaves the actor's transformer untouched."""
    from rl_lab.adapters import load_sb3
    from rl_lab.record import record_run
    from rl_lab.train import train

    train(TrainConfig(env_id=ENV, algo="ppo", policy="transformer", mlp_critic=True,
                      total_timesteps=256, n_envs=2, context=3, d_model=16, checkpoint_every=256),
          tmp_path, name="mlpc")
    run = _run(tmp_path, "mlpc")
    policy = load_sb3(run, run.latest_checkpoint()).policy
    assert policy.mlp_critic and policy.linear_in() == {"value": ["critic.value_net.3", "value_net"]}
    h = HistoryStack(11, 3)
    h.reset(np.full(11, 0.1))
    h.step(1, np.full(11, 0.9))
    a = h.step(2, np.full(11, 0.5))
    h2 = HistoryStack(11, 3)
    b = h2.reset(np.full(11, 0.5))  # the same current observation after a different history
    x = torch.as_tensor(np.stack([a, b]))
    with torch.no_grad():
        values = policy.predict_values(x)[:, 0]
        logits = policy.action_net(policy.mlp_extractor.forward_actor(x))
    assert torch.allclose(values[0], values[1]) and not torch.allclose(logits[0], logits[1])
    policy.zero_grad()
    policy.predict_values(x).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in policy.actor_trunk.parameters())
    record_run("mlpc", tmp_path, episodes=2, seed=0)
    (path,) = sorted(run.activations_dir.glob("*.h5"))
    with h5py.File(path) as f:
        assert f["acts/critic.value_net.3"].shape[1] == 64 and "blocks.1.hook_resid_post" in f["acts"]
        assert not any(k.startswith("critic.blocks") for k in f["acts"])
        np.testing.assert_allclose(f["acts/value_net"][:, 0], f["labels/value"][:], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- recurrent PPO
def test_recurrent_run_records_lstm_states(agent_runs: Path) -> None:
    run = _run(agent_runs, "lstm")
    (path,) = sorted(run.activations_dir.glob("*.h5"))[-1:]
    with h5py.File(path) as f:
        for hook in ("lstm_actor.hidden", "lstm_actor.cell", "lstm_critic.hidden", "lstm_critic.cell"):
            assert f[f"acts/{hook}"].shape[1] == 16, hook
        assert f.attrs["policy_kind"] == "recurrent-ppo"
        np.testing.assert_allclose(f["acts/value_net"][:, 0], f["labels/value"][:], rtol=1e-5, atol=1e-5)


def test_recurrent_states_match_sb3_contrib(agent_runs: Path) -> None:
    """The recorded hidden states equal sb3-contrib's own LSTM pass over the episode, and the
    acting adapter's action distribution equals RecurrentPPO's with its own state handling."""
    from rl_lab.record import load_adapter
    from rl_lab.train import make_env

    run = _run(agent_runs, "lstm")
    adapter = load_adapter(run, run.latest_checkpoint())
    policy = adapter.policy
    env = make_env(ENV)
    obs, _ = env.reset(seed=1)
    adapter.reset()
    buf_obs, buf_act = [], []
    states = None
    for t in range(12):
        torch.manual_seed(t)
        a = adapter.act(obs)
        with torch.no_grad():
            obs_t = policy.obs_to_tensor(obs)[0]
            zeros = torch.zeros(1, 1, 16)
            dist, states = policy.get_distribution(obs_t, states or (zeros, zeros),
                                                   torch.tensor([1.0 if t == 0 else 0.0]))
        torch.manual_seed(t)
        assert int(dist.get_actions()[0]) == int(a)
        buf_obs.append(obs)
        buf_act.append(a)
        obs, *_ = env.step(a)
    fwd = adapter.episode_forward(np.asarray(buf_obs), np.asarray(buf_act), np.zeros(12), obs)
    with torch.no_grad():
        x = policy.extract_features(torch.as_tensor(np.asarray(buf_obs)), policy.pi_features_extractor)
        zeros = torch.zeros(1, 1, 16)
        hidden, _ = policy._process_sequence(x, (zeros, zeros), torch.zeros(12), policy.lstm_actor)
    np.testing.assert_allclose(fwd.acts["lstm_actor.hidden"], hidden.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fwd.acts["mlp_extractor.policy_net.0"][:, :3],
                               (hidden @ policy.mlp_extractor.policy_net[0].weight.T
                                + policy.mlp_extractor.policy_net[0].bias).detach().numpy()[:, :3],
                               rtol=1e-4, atol=1e-5)


def test_imitating_a_memory_agent_acts_with_its_memory(agent_runs: Path, tmp_path: Path, capsys) -> None:
    """BC/DT can learn from a PPO-transformer or recurrent-PPO teacher: the trajectories are its own
    behaviour (history and LSTM memory carried through each episode, as sb3-contrib's predict with
    its state does), the random policy is left out on request, and the imitator's agent names its
    teacher so that `rl-lab compare --group-by agent` never pools it with BC of PPO-MLP."""
    import shutil

    from rl_lab.adapters import load_sb3
    from rl_lab.dt.trajectories import Trajectories
    from rl_lab.train import make_env

    runs_dir = tmp_path / "runs"
    shutil.copytree(agent_runs, runs_dir)
    for teacher, agent in (("tf", "bc-of-ppo-transformer"), ("lstm", "bc-of-recurrent-ppo")):
        assert main(["train", "--algo", "bc", "--from", teacher, "--source-checkpoints", "latest",
                     "--no-random-policy", "--episodes-per-policy", "3", "--trajectories", "own", "--steps", "20",
                     "--context", "4", "--eval-episodes", "0", "--name", f"bc-{teacher}",
                     "--runs-dir", str(runs_dir)]) == 0
        info = json.loads((runs_dir / f"bc-{teacher}" / "run.json").read_text())
        assert info["agent"] == agent
        assert list(info["dataset"]["policies"]) == [_run(runs_dir, teacher).latest_checkpoint().stem]
    capsys.readouterr()

    # the LSTM's episodes are the ones RecurrentPPO.predict gives when it is handed its state back
    data = Trajectories.load(runs_dir / "lstm" / "trajectories" / "own.h5")
    model = load_sb3(_run(runs_dir, "lstm"), _run(runs_dir, "lstm").latest_checkpoint())
    env = make_env(ENV)
    torch.manual_seed(0)
    actions = []
    for i in range(3):
        obs, _ = env.reset(seed=i)
        state, start, done = None, True, False
        while not done:
            action, state = model.predict(obs, state=state, episode_start=np.array([start]), deterministic=False)
            actions.append(int(action))
            obs, _, terminated, truncated, _ = env.step(int(action))
            start, done = False, terminated or truncated
    assert data.action.tolist() == actions

    # a file collected without the random policy is not reused for a command that asks for it
    code = main(["train", "--algo", "bc", "--from", "lstm", "--source-checkpoints", "latest", "--trajectories",
                 "own", "--steps", "20", "--eval-episodes", "0", "--name", "bc-again", "--runs-dir", str(runs_dir)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was collected from" in err[0] and "random" in err[0], err
    assert not (runs_dir / "bc-again").exists()


def test_recurrent_probe_steer_and_resume(agent_runs: Path, tmp_path: Path) -> None:
    import shutil

    from probes.linear import probe_file
    from rl_lab.steer.intervene import Edit
    from rl_lab.steer.policies import load_policy
    from rl_lab.steer.rollout import rollout_rows
    from rl_lab.train import make_policy_env, train

    run = _run(agent_runs, "lstm")
    path = sorted(run.activations_dir.glob("*.h5"))[-1]
    doc = probe_file(path, labels=["energy"], hooks=["lstm_actor.hidden", "lstm_actor.cell"], n_bootstrap=20)
    assert {r["hook"] for r in doc["records"]} == {"lstm_actor.hidden", "lstm_actor.cell"}

    # an edit of the hidden state reaches the actor at once; one of the cell state only through the
    # memory it carries, which the clean and the edited pass share: its per-step KL is 0
    push = Edit(vector=np.ones(16, dtype=np.float32) / 4.0, a=8.0)
    for hook, moves in (("lstm_actor.hidden", True), ("lstm_actor.cell", False)):
        policy = load_policy(run, run.latest_checkpoint(), hook)
        metrics = rollout_rows(policy, lambda: make_policy_env(run.info["config"]), [Edit.clean(16), push],
                               [0, 0], seed=0, max_steps=12)
        assert metrics.values["kl"][0] == 0.0 and (metrics.values["kl"][1] > 0.0) == moves, hook

    copy = tmp_path / "runs"
    shutil.copytree(agent_runs, copy)
    (copy / "lstm" / "checkpoints" / "step_000000512.zip").unlink()
    info = json.loads((copy / "lstm" / "run.json").read_text())
    info["status"] = "interrupted"
    (copy / "lstm" / "run.json").write_text(json.dumps(info))
    resumed = train(TrainConfig(total_timesteps=768), copy, resume="lstm")
    assert resumed.info["status"] == "done" and resumed.info["steps_done"] >= 768


# --------------------------------------------------------------------------- the app
async def test_tui_shows_both_agents(agent_runs: Path) -> None:
    """The runs table, the detail, probes and replay screens handle both runs as any other."""
    from probes.linear import probe_file
    from textual.widgets import DataTable, Static
    from tui.app import LabApp
    from tui.screens.detail import RunDetailScreen
    from tui.screens.probes import ProbesScreen
    from tui.screens.replay import ReplayScreen

    hooks = {"tf": "blocks.1.hook_resid_post", "lstm": "lstm_actor.hidden"}
    for name, hook in hooks.items():
        run = _run(agent_runs, name)
        path = sorted(run.activations_dir.glob("*.h5"))[-1]
        probe_file(path, labels=["energy"], hooks=[hook], n_bootstrap=20, out_json=run.probe_results_path(path.stem))
    app = LabApp(agent_runs, poll_interval=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app.row("tf") is not None and app.row("lstm") is not None:
                break
        assert app.row("lstm").algo == "recurrent-ppo" and app.row("tf").status == "done"
        for name, hook in hooks.items():
            app.push_screen(RunDetailScreen(name))
            await pilot.pause(0.3)
            assert "done" in str(app.screen.query_one("#detail-status", Static).render())
            app.pop_screen()
            probes = ProbesScreen(name)
            app.push_screen(probes)
            for _ in range(100):
                await pilot.pause(0.05)
                if probes.current is not None:
                    break
            grid = probes.query_one("#probe-grid", DataTable)
            assert str(grid.get_cell(hook, "energy")).strip()
            app.pop_screen()
            replay = ReplayScreen(name)
            app.push_screen(replay)
            for _ in range(100):
                await pilot.pause(0.05)
                if replay.episode is not None:
                    break
            assert replay.episode is not None and len(replay.episode) > 0
            app.pop_screen()


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv, message", [
    (["--algo", "dqn", "--policy", "transformer"], "--policy transformer is for --algo ppo or a2c"),
    (["--algo", "ppo", "--policy", "transformer", "--d-model", "30", "--heads", "4"], "divisible"),
    (["--algo", "ppo", "--separate-critic"], "--separate-critic is for --policy transformer"),
    (["--algo", "ppo", "--mlp-critic"], "--mlp-critic is for --policy transformer"),
    (["--algo", "ppo", "--policy", "transformer", "--mlp-critic", "--separate-critic"], "choose one"),
    (["--algo", "a2c", "--epochs", "3"], "--epochs is for --algo ppo or recurrent-ppo"),
    (["--algo", "ppo", "--no-random-policy"], "--no-random-policy is for --algo dt or bc"),
    (["--algo", "ppo", "--epochs", "0"], "--epochs"),
    (["--algo", "a2c", "--batch-size", "32"], "--batch-size is for --algo ppo"),
    (["--algo", "a2c", "--target-kl", "0.02"], "--target-kl is for --algo ppo or recurrent-ppo"),
    (["--algo", "ppo", "--target-kl", "0"], "--target-kl"),
    (["--algo", "ppo", "--ent-coef", "-1"], "--ent-coef"),
])
def test_bad_policy_options_exit_2(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    try:
        code = main(["train", "--steps", "64", "--runs-dir", str(tmp_path), *argv])
    except SystemExit as exc:
        code = int(exc.code)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())  # nothing created


def test_sweeps_accept_policy_and_recurrent_ppo(tmp_path: Path) -> None:
    from rl_lab.errors import LabError
    from rl_lab.sweep.spec import load_sweep

    sweep = tmp_path / "fair.toml"
    sweep.write_text('name = "fair"\nalgos = ["ppo", "recurrent-ppo"]\nseeds = 2\n'
                     '[stages.train]\nsteps = 512\ncontext = 4\n')
    spec = load_sweep(sweep)
    configs = [t.train_config(spec.stages["train"]) for t in spec.trials()]
    assert sorted({(c.algo, c.policy, c.context) for c in configs}) == [("ppo", "mlp", 4), ("recurrent-ppo", "mlp", 4)]
    sweep.write_text('name = "fair"\nalgos = ["ppo"]\n[grid]\npolicy = ["mlp", "transformer"]\n')
    trials = load_sweep(sweep).trials()
    assert [t.params["policy"] for t in trials] == ["mlp", "transformer"]
    assert trials[1].name.endswith("-pol_transformer")
    for text, message in (('algos = ["dqn"]\n[grid]\npolicy = ["transformer"]\n', "is for --algo ppo or a2c"),
                          ('[stages.train]\npolicy = "lstm"\n', "expected one of mlp, transformer, cnn")):
        sweep.write_text('name = "fair"\n' + text)
        with pytest.raises(LabError, match=message):
            load_sweep(sweep)
