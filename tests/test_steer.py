"""Steering: directions, the edit hook, live rollouts against random controls, the CLI.

Uses the session's tiny real PPO run on lab/Forage-v0 (``tiny_run`` in conftest.py); tests that
write into a run copy it first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.activations import ActivationFile
from rl_lab.cli import main
from rl_lab.errors import LabError
from rl_lab.runs import RunStore
from rl_lab.steer import Edit, SteerConfig, SteeringHook, make_edit, parse_direction, steer
from rl_lab.steer.directions import diff_direction, latest_activation_file, random_controls, resolve_direction
from rl_lab.steer.experiment import build_edits

POLICY_HOOK = "mlp_extractor.policy_net.1"
VALUE_HOOK = "mlp_extractor.value_net.1"


@pytest.fixture()
def run_copy(tiny_run: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    runs_dir, name = tiny_run
    shutil.copytree(runs_dir / name, tmp_path / name)
    return tmp_path, name


def _act_file(tiny_run: tuple[Path, str]) -> Path:
    runs_dir, name = tiny_run
    return latest_activation_file(RunStore(runs_dir).get(name))


# --------------------------------------------------------------------------- directions
def test_parse_direction_forms() -> None:
    p = parse_direction(f"probe:threat@{POLICY_HOOK}")
    assert (p.kind, p.label, p.hook, p.label_class) == ("probe", "threat", POLICY_HOOK, None)
    p = parse_direction("probe:action=2@action_net")
    assert (p.kind, p.label, p.label_class, p.hook) == ("probe", "action", "2", "action_net")
    s = parse_direction("sae:mlp_extractor.policy_net.1-topk-512/17")
    assert (s.kind, s.sae_name, s.latent) == ("sae", "mlp_extractor.policy_net.1-topk-512", 17)
    d = parse_direction(f"diff:hunger@{POLICY_HOOK}")
    assert (d.kind, d.label, d.hook) == ("diff", "hunger", POLICY_HOOK)
    for bad in ("threat", "probe:threat", "sae:x", "sae:x/abc", "pca:threat@h", "diff:@h", "probe:a@"):
        with pytest.raises(LabError):
            parse_direction(bad)


def test_diff_direction_is_top_minus_bottom_quartile(tiny_run: tuple[Path, str]) -> None:
    path = _act_file(tiny_run)
    vec, norm, info = diff_direction(path, "threat", POLICY_HOOK)
    with ActivationFile(path) as af:
        y = af.label("threat").astype(np.float64)
        acts = af.acts(POLICY_HOOK).astype(np.float64)
    q25, q75 = np.quantile(y, [0.25, 0.75])
    expected = acts[y >= q75].mean(0) - acts[y <= q25].mean(0)
    assert norm == pytest.approx(np.linalg.norm(expected))
    np.testing.assert_allclose(vec, expected / np.linalg.norm(expected), atol=1e-10)
    assert info["diff_n_high"] == int((y >= q75).sum())

    # A discrete label: class 1 minus class 0.
    vec, _, info = diff_direction(path, "predator_adjacent", POLICY_HOOK)
    with ActivationFile(path) as af:
        y = af.label("predator_adjacent")
    expected = acts[y == 1].mean(0) - acts[y == 0].mean(0)
    np.testing.assert_allclose(vec, expected / np.linalg.norm(expected), atol=1e-10)
    assert "class 1 minus class 0" in info["diff_rule"]


def test_resolved_units_match_the_recording(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    run = RunStore(runs_dir).get(name)
    direction = resolve_direction(parse_direction(f"diff:threat@{POLICY_HOOK}"), run)
    with ActivationFile(direction.activations) as af:
        proj = af.acts(POLICY_HOOK).astype(np.float64) @ direction.vector
    assert direction.mean == pytest.approx(proj.mean(), abs=1e-6)
    assert direction.std == pytest.approx(proj.std(), rel=1e-5)


def test_controls_have_the_same_norm(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    direction = resolve_direction(parse_direction(f"diff:threat@{POLICY_HOOK}"), RunStore(runs_dir).get(name))
    controls = random_controls(direction.vector.shape[0], 4, seed=3)
    np.testing.assert_allclose(np.linalg.norm(controls, axis=1), 1.0)
    assert not np.allclose(controls[0], controls[1])
    np.testing.assert_array_equal(controls, random_controls(direction.vector.shape[0], 4, seed=3))
    scales = [-2.0, 0.5, 3.0]
    dir_edits, ctl_edits = build_edits(direction, "add", scales, controls)
    for s, edit in enumerate(dir_edits):
        added = abs(edit.a) * np.linalg.norm(edit.vector)
        assert added == pytest.approx(abs(scales[s]) * direction.std)
        for k in range(len(controls)):
            ctl = ctl_edits[k][s]
            assert abs(ctl.a) * np.linalg.norm(ctl.vector) == pytest.approx(added)


# --------------------------------------------------------------------------- the hook
def _hooked_linear(d: int = 6) -> tuple[torch.nn.Sequential, torch.nn.Module]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, d), torch.nn.Tanh())
    return net, net[1]


def test_erase_and_clamp_set_the_projection() -> None:
    net, module = _hooked_linear()
    hook = SteeringHook(module)
    captured: list[torch.Tensor] = []
    module.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    u = np.random.default_rng(0).standard_normal(6)
    u /= np.linalg.norm(u)
    x = torch.randn(3, 4)
    clean_out = net(x).detach()
    edits = [Edit.clean(6),
             make_edit("erase", u, 1.0, add_norm=1.0, mean=0.0, std=1.0, centre=0.0),
             make_edit("clamp", u, 2.0, add_norm=1.0, mean=0.1, std=0.5, centre=0.0)]
    hook.set_edits(np.stack([e.vector for e in edits]), np.array([e.a for e in edits]),
                   np.array([e.b for e in edits]), np.zeros(3, dtype=bool))
    hook.enabled = True
    out = net(x).detach()
    assert torch.equal(captured[-1], out)  # a later hook sees the edited output
    proj = out.double().numpy() @ u
    assert torch.equal(out[0], clean_out[0])  # the clean row is untouched, bit for bit
    assert abs(proj[1]) < 1e-6  # erased: no component along u
    assert proj[2] == pytest.approx(0.1 + 2.0 * 0.5, abs=1e-6)  # clamped to mean + 2 std
    # Off the direction nothing moved.
    rest = lambda v: v - np.outer(v @ u, u)  # noqa: E731
    np.testing.assert_allclose(rest(out.double().numpy()[1:]), rest(clean_out.double().numpy()[1:]), atol=1e-6)
    hook.enabled = False
    assert torch.equal(net(x).detach(), clean_out)


def test_sae_latent_edit_uses_the_latent() -> None:
    from probes.sae.config import make_config
    from probes.sae.model import make_sae

    net, module = _hooked_linear(6)
    sae = make_sae(make_config("relu", d_in=6, d_sae=5, hook_name="x"))
    hook = SteeringHook(module, sae=sae, latent=2)
    x = torch.randn(4, 4)
    clean = net(x).detach()
    z = sae.encode(clean)[:, 2].detach()
    w = sae.W_dec[2].detach()
    hook.set_edits(np.tile(w.numpy(), (4, 1)), np.full(4, 0.5 * 0.3), np.full(4, -0.5), np.ones(4, dtype=bool))
    hook.enabled = True
    out = net(x).detach()
    # Erasing half-way to the mean 0.3: h + 0.5 * (0.3 - z) * W_dec[2].
    expected = clean + (0.5 * (0.3 - z))[:, None] * w[None]
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------- live rollouts
def _small(direction: str, **kw: object) -> SteerConfig:
    base: dict[str, object] = dict(direction=direction, episodes=3, controls=2, seed=1, n_boot=200)
    base.update(kw)
    return SteerConfig(**base)  # type: ignore[arg-type]


def test_scale_zero_is_the_clean_policy_and_large_scale_moves_it(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    cfg = _small(f"diff:threat@{POLICY_HOOK}", scales=[0.0, 8.0])
    doc = steer(name, cfg, runs_dir, write=False)
    zero, big = doc["results"]
    assert zero["scale"] == 0.0 and big["scale"] == 8.0
    for metric, clean in doc["clean"].items():
        assert zero["metrics"][metric]["mean"] == clean["mean"], metric
        assert zero["metrics"][metric]["ci"] == clean["ci"], metric
    assert zero["metrics"]["kl"]["mean"] == 0.0
    assert zero["metrics"]["action_change"]["mean"] == 0.0
    assert big["metrics"]["kl"]["mean"] > 1e-4
    assert doc["controls_by_scale"][1]["metrics"]["kl"]["mean"] > 0  # random directions at scale 8 move it too
    # Same seed, same numbers.
    again = steer(name, cfg, runs_dir, write=False)
    assert again["effects"] == doc["effects"]


def test_value_hook_does_not_change_behaviour(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    doc = steer(name, _small(f"diff:threat@{VALUE_HOOK}", scales=[8.0], controls=1), runs_dir, write=False)
    big = doc["results"][0]["metrics"]
    assert big["kl"]["mean"] == 0.0
    assert big["action_change"]["mean"] == 0.0
    for metric, clean in doc["clean"].items():
        assert big[metric]["mean"] == clean["mean"], metric
    assert any("not on the action path" in n for n in doc["notes"])


def test_probe_and_sae_directions(run_copy: tuple[Path, str]) -> None:
    from probes.sae.config import make_config
    from probes.sae.model import make_sae, save_sae

    runs_dir, name = run_copy
    run = RunStore(runs_dir).get(name)
    act = latest_activation_file(run)
    d = ActivationFile(act).hook_dim(POLICY_HOOK)
    coef = np.random.default_rng(0).standard_normal(d)
    run.probes_dir.mkdir(exist_ok=True)
    np.savez(run.probes_dir / f"{act.stem}.weights.npz", **{f"threat@{POLICY_HOOK}/coef": coef,
                                                             f"threat@{POLICY_HOOK}/bias": np.zeros(1)})
    direction = resolve_direction(parse_direction(f"probe:threat@{POLICY_HOOK}"), run)
    np.testing.assert_allclose(direction.vector, coef / np.linalg.norm(coef))

    torch.manual_seed(0)
    save_sae(make_sae(make_config("relu", d_in=d, d_sae=8, hook_name=POLICY_HOOK)), run.saes_dir / "tiny-sae")
    doc = steer(name, _small("sae:tiny-sae/3", mode="erase", scales=[0.0, 1.0], controls=1, episodes=2),
                runs_dir, write=False)
    assert doc["direction"]["kind"] == "sae" and doc["hook"] == POLICY_HOOK
    assert doc["results"][0]["metrics"]["kl"]["mean"] == 0.0


# --------------------------------------------------------------------------- CLI
def test_cli_json_schema_and_file(run_copy: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    code = main(["steer", name, "--direction", f"diff:threat@{POLICY_HOOK}", "--scales", "-3,3",
                 "--episodes", "3", "--controls", "3", "--expect", "distance_to_threat:up", "--json",
                 "--runs-dir", str(runs_dir)])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)  # exactly one JSON document
    for key in ("direction", "hook", "mode", "results", "controls", "expect", "effects", "summary", "scales"):
        assert key in doc, key
    assert doc["mode"] == "add" and doc["scales"] == [-3.0, 3.0]
    assert len(doc["results"]) == 2 and len(doc["controls_by_scale"]) == 2 and len(doc["controls"]) == 3
    assert [c["kind"] for c in doc["controls"]] == ["isotropic", "covariance", "isotropic"]
    m = doc["results"][0]["metrics"]
    for metric in ("return", "length", "kl", "action_change", "distance_to_threat", "ate_food", "steps_to_ate_food",
                   "distance_to_food", "idle"):
        assert len(m[metric]["ci"]) == 2 and m[metric]["ci"][0] <= m[metric]["mean"] <= m[metric]["ci"][1]
        assert len(doc["controls_by_scale"][0]["metrics"][metric]["means"]) == 3
        assert len(doc["controls"][0]["metrics"][metric]["means"]) == 2  # one per scale
    assert 0 <= doc["control_percentile"] <= 100 and doc["primary_metric"] == "distance_to_threat"
    assert doc["expect"]["control_p_value"] >= 1 / 4
    assert doc["expect"]["metric"] == "distance_to_threat"
    assert isinstance(doc["expect"]["confirmed"], bool)
    files = list((runs_dir / name / "steer").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["effects"] == doc["effects"]


def test_cli_table(run_copy: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = run_copy
    code = main(["steer", name, "--direction", f"diff:threat@{POLICY_HOOK}", "--mode", "erase",
                 "--episodes", "2", "--controls", "1", "--runs-dir", str(runs_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "scale 0.5" in out and "distance_to_threat" in out and "random directions" in out
    assert "dose-response of kl" in out and "percentile" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["nope", "--direction", f"diff:threat@{POLICY_HOOK}"], "nope"),
        (["{run}", "--direction", "threat"], "malformed --direction"),
        (["{run}", "--direction", "diff:threat@no.such.hook"], "unknown hook"),
        (["{run}", "--direction", f"diff:no_such_label@{POLICY_HOOK}"], "unknown label"),
        (["{run}", "--direction", f"probe:threat@{POLICY_HOOK}"], "python -m probes.linear"),
        (["{run}", "--direction", "sae:missing/0"], "no SAE"),
        (["{run}", "--direction", f"diff:threat@{POLICY_HOOK}", "--expect", "sideways"], "malformed --expect"),
        (["{run}", "--direction", f"diff:threat@{POLICY_HOOK}", "--expect", "bogus up"], "unknown metric"),
        (["{run}", "--direction", f"diff:threat@{POLICY_HOOK}", "--scales", "a,b"], "comma-separated"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_run: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                         args: list[str], needle: str) -> None:
    runs_dir, name = tiny_run
    argv = ["steer"] + [a.replace("{run}", name) for a in args] + ["--episodes", "2", "--runs-dir", str(runs_dir)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert needle in lines[0]


# --------------------------------------------------------------------------- statistics
def test_expect_verdict_on_synthetic_dose_response() -> None:
    from rl_lab.steer.analysis import Bootstrap, expect_verdict, summarise_metric

    rng = np.random.default_rng(0)
    E, scales = 40, [-2.0, 0.0, 2.0]
    clean = rng.normal(5.0, 1.0, E)
    xs = np.asarray(scales)
    direction = clean[None] + 0.5 * xs[:, None] + rng.normal(0, 0.1, (3, E))  # a clear positive slope
    controls = clean[None, None] + rng.normal(0, 0.1, (4, 3, E))  # random directions: nothing
    boot = Bootstrap.make(E, 500, seed=0)
    eff = summarise_metric(boot, clean, direction, controls, scales, xs, [0, 1, 2])
    assert eff["slope"]["value"] == pytest.approx(0.5, abs=0.05)
    assert eff["slope"]["exceeds_controls"] and eff["exceeds_controls"]
    assert expect_verdict("m", "up", eff, 4)["confirmed"]
    assert not expect_verdict("m", "down", eff, 4)["confirmed"]
    # If the random directions do just as much, the direction is not special.
    same = np.stack([direction + rng.normal(0, 0.1, (3, E)) for _ in range(4)])
    eff = summarise_metric(boot, clean, direction, same, scales, xs, [0, 1, 2])
    assert not eff["slope"]["exceeds_controls"]
    verdict = expect_verdict("m", "up", eff, 4)
    assert not verdict["confirmed"] and "random directions" in verdict["sentence"]


# --------------------------------------------------------------------------- controls
def test_controls_alternate_isotropic_and_covariance(tiny_run: tuple[Path, str]) -> None:
    from rl_lab.steer.directions import control_directions, hook_stats

    stats = hook_stats(_act_file(tiny_run), POLICY_HOOK)
    vecs, kinds = control_directions(stats, 20, seed=4)
    assert vecs.shape == (20, stats.dim) and kinds == ["isotropic", "covariance"] * 10
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0)
    again, _ = control_directions(stats, 20, seed=4)
    np.testing.assert_array_equal(vecs, again)
    # Covariance draws lie where the activations vary: their projections' spread is, on average,
    # larger than that of isotropic draws (for an anisotropic layer).
    sd = np.array([stats.projection(v)[1] for v in vecs])
    assert sd[1::2].mean() > sd[0::2].mean()


def test_control_rank_percentile_and_p_value() -> None:
    from rl_lab.steer.analysis import control_rank

    controls = [-3.0, -1.0, 0.5, 1.0, 2.0]
    r = control_rank(2.5, controls)  # by magnitude: beyond 4 of 5 (|-3| is larger)
    assert r["control_percentile"] == pytest.approx(80.0) and r["control_p_value"] == pytest.approx(2 / 6)
    r = control_rank(2.5, controls, "up")  # one-sided: beyond all 5
    assert r["control_percentile"] == pytest.approx(100.0) and r["control_p_value"] == pytest.approx(1 / 6)
    r = control_rank(2.5, controls, "down")
    assert r["control_percentile"] == pytest.approx(0.0) and r["control_p_value"] == pytest.approx(1.0)
    assert control_rank(1.0, [])["control_percentile"] is None


def test_default_run_has_twenty_controls_of_both_kinds(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    cfg = SteerConfig(direction=f"diff:threat@{POLICY_HOOK}", scales=[4.0], episodes=2, seed=0, n_boot=100,
                      max_steps=15)
    doc = steer(name, cfg, runs_dir, write=False)
    assert doc["n_controls"] == 20 and len(doc["controls"]) == 20
    assert doc["control_directions"]["kinds"] == {"isotropic": 10, "covariance": 10}
    assert {c["kind"] for c in doc["controls"]} == {"isotropic", "covariance"}
    stat = doc["effects"]["kl"]["statistic"]
    higher = sum(abs(c) >= abs(stat["value"]) for c in stat["controls"])
    assert doc["primary_metric"] == "kl" and doc["control_p_value"] == pytest.approx((1 + higher) / 21)
    assert 0 <= doc["control_percentile"] <= 100


# --------------------------------------------------------------------------- LEACE
def test_leace_erases_the_label_and_random_subspaces_do_not(tiny_run: tuple[Path, str]) -> None:
    from rl_lab.steer.directions import hook_stats, random_subspaces
    from rl_lab.steer.leace import erasure_scores, fit_leace

    path = _act_file(tiny_run)
    hook = "mlp_extractor.policy_net.0"
    fit = fit_leace(path, "energy", hook, seed=0)
    assert fit.rank == 1 and fit.matrix.shape == (64, 64)
    # After erasure no linear function of h predicts the label on the training rows (LEACE's guarantee).
    train = fit.fold < fit.n_folds
    erased = fit.erase(fit.x[train])
    cov = ((erased - erased.mean(0)) * (fit.y[train] - fit.y[train].mean())[:, None]).mean(0)
    assert np.abs(cov).max() < 1e-8
    bases, kinds = random_subspaces(hook_stats(path, hook), fit.rank, 4, seed=0)
    scores = erasure_scores(fit, bases, hook_stats(path, hook).mean)
    assert scores["before"] > 0.9  # energy is in the observation
    assert scores["after"] < 0.1 and scores["falls_to_baseline"]
    # An isotropic random line barely touches the label; a covariance-drawn one may (it lies along the
    # layer's main axes of variation, which can carry the label): that is why both kinds are controls.
    assert kinds == ["isotropic", "covariance"] * 2 and min(scores["random_after"][0::2]) > 0.8


def test_steer_leace_mode(tiny_run: tuple[Path, str]) -> None:
    runs_dir, name = tiny_run
    doc = steer(name, _small(f"diff:energy@{POLICY_HOOK}", mode="leace", controls=2, max_steps=20), runs_dir,
                write=False)
    assert doc["mode"] == "leace" and doc["scales"] == [0.0, 0.5, 1.0]
    er = doc["erasure"]
    assert er["label"] == "energy" and er["after"] < er["before"] and len(er["random_after"]) == 2
    assert [c["kind"] for c in doc["controls"]] == ["isotropic", "covariance"]
    zero = doc["results"][0]["metrics"]
    assert zero["kl"]["mean"] == 0.0 and zero["action_change"]["mean"] == 0.0  # scale 0 is the clean policy
    assert doc["results"][2]["metrics"]["kl"]["mean"] > 0


# --------------------------------------------------------------------------- decision transformer
@pytest.fixture(scope="module")
def dt_run(tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 4-step DT trained from the session's tiny PPO run, recorded for 2 episodes."""
    from rl_lab.dt.train import DTTrainConfig, train_dt
    from rl_lab.record import record_run

    src_dir, src_name = tiny_run
    runs_dir = tmp_path_factory.mktemp("steer-dt")
    shutil.copytree(src_dir / src_name, runs_dir / src_name)
    cfg = DTTrainConfig(algo="dt", source_run=src_name, steps=4, context=4, batch_size=16, d_model=16, n_heads=2,
                        d_mlp=32, episodes_per_policy=1, log_every=2, checkpoint_every=4, eval_episodes=0,
                        restore_best=False, patience=0)
    train_dt(cfg, runs_dir, name="dt-steer")
    record_run("dt-steer", runs_dir, episodes=2, seed=0)
    return runs_dir, "dt-steer"


def test_steer_a_decision_transformer(dt_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, name = dt_run
    hook = "blocks.0.hook_resid_post"
    code = main(["steer", name, "--direction", f"diff:threat@{hook}", "--scales", "0,6", "--episodes", "2",
                 "--controls", "2", "--json", "--runs-dir", str(runs_dir)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hook"] == hook and doc["algo"] == "dt"
    zero, big = doc["results"]
    for metric, clean in doc["clean"].items():
        assert zero["metrics"][metric]["mean"] == clean["mean"], metric  # scale 0: the clean DT, bit for bit
    assert big["metrics"]["kl"]["mean"] > 0
    assert [c["kind"] for c in doc["controls"]] == ["isotropic", "covariance"]
    # An unknown TransformerLens hook: one line, exit 2.
    assert main(["steer", name, "--direction", "diff:threat@blocks.9.hook_resid_post", "--episodes", "2",
                 "--runs-dir", str(runs_dir)]) == 2
    assert "unknown hook" in capsys.readouterr().err


def test_dt_policy_matches_the_dt_actor(dt_run: tuple[Path, str]) -> None:
    """DTPolicy's clean logits are DTActor's, step by step, on the same history."""
    from rl_lab.dt.evaluate import DTActor, load_model
    from rl_lab.steer.policies import DTPolicy
    from rl_lab.train import make_env

    runs_dir, name = dt_run
    run = RunStore(runs_dir).get(name)
    model = load_model(run)
    policy = DTPolicy(model, "blocks.1.hook_resid_post", target_return=1.5)
    actor = DTActor(model, 1.5, deterministic=True)
    env = make_env("lab/Forage-v0")
    obs, _ = env.reset(seed=3)
    policy.start(1)
    for _ in range(7):  # past the context of 4
        dist = policy.forward(np.zeros(1, dtype=np.int64), obs[None], steer=False)
        a = actor.act(obs)
        assert int(dist.probs.argmax()) == a
        obs2, r, *_ = env.step(a)
        actor.observe(r)
        policy.advance(np.zeros(1, dtype=np.int64), obs[None], np.array([a]), np.array([r]))
        obs = obs2


# --------------------------------------------------------------------------- TUI
async def test_tui_shows_the_dose_response_with_the_control_band(run_copy: tuple[Path, str]) -> None:
    from textual.widgets import Static

    from tui.app import LabApp
    from tui.screens.steer import SteerScreen, dose_response
    from tui.widgets.chart import BandChart

    runs_dir, name = run_copy
    doc = steer(name, _small(f"diff:threat@{POLICY_HOOK}", scales=[-4.0, 0.0, 4.0], controls=2, max_steps=15,
                             expect="distance_to_threat:up"), runs_dir)
    xs, ys, lo, hi = dose_response(doc, "kl")
    assert xs == [-4.0, 0.0, 4.0] and ys[1] == 0.0 and all(a <= b for a, b in zip(lo, hi))
    app = LabApp(runs_dir, poll_interval=0.5)
    async with app.run_test(size=(120, 45)) as pilot:
        app.push_screen(SteerScreen(name, doc["path"]))
        await pilot.pause()
        screen = app.screen
        chart = screen.query_one("#steer-chart", BandChart)
        assert screen.metric == "distance_to_threat"  # the predicted metric first
        eff = doc["effects"]["distance_to_threat"]
        assert chart.mean == [p["effect"] for p in eff["direction"]] and len(chart.low) == 3
        text = str(screen.query_one("#steer-numbers", Static).render())
        assert "percentile" in text and "Prediction" in text
        await pilot.press("m")
        assert screen.metric != "distance_to_threat"
