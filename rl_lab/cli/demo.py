"""``rl-lab demo``: the whole pipeline on embedded defaults — train, record, probe, explain, and
compare the RL agent with a decision transformer and a behaviour-cloning transformer trained by
supervision on its own trajectories."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from probes.layout import RunsDirLayout
from probes.results import ProbeRecord, ProbeResults
from rl_lab.cli.options import add_runs_dir, positive_int, runs_dir

HELP = ("train a small PPO agent on lab/Forage-v0, record it, probe it, explain what its layers encode, "
        "and compare it with a DT and a BC transformer trained on its trajectories")

DEMO_ENV = "lab/Forage-v0"
DEMO_STEPS = 100_000
DEMO_EPISODES = 40
# The demo probes the hidden layers (after each Tanh) of the actor and the critic for the
# emotion-like labels and the homeostatic/threat latents; `rl-lab probe RUN` probes everything.
DEMO_HOOKS = ("mlp_extractor.policy_net.1", "mlp_extractor.policy_net.3",
              "mlp_extractor.value_net.1", "mlp_extractor.value_net.3")
DEMO_LABELS = ("value", "td_error", "prev_td_error", "hope", "fear", "surprise", "mood", "arousal", "return_to_go",
               "hunger", "thirst", "threat", "distance_to_threat", "predator_adjacent", "action")
# The transformers' counterparts: each block's residual stream and MLP hidden layer.
DT_HOOKS = ("blocks.0.hook_resid_post", "blocks.0.mlp.hook_post", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post")
# The hooks that only act (PPO's actor and the transformers): the same question without PPO's
# critic, which is trained to predict value and so gets value-derived labels for free.
ACTING_HOOKS = ("mlp_extractor.policy_net.*", "blocks.*")
DEMO_DT_STEPS = 1500
# A small SAE per network so the features screen has latents after the demo (a few seconds each).
DEMO_SAE_HOOK = "mlp_extractor.policy_net.3"
DT_SAE_HOOK = "blocks.0.hook_resid_post"
DEMO_SAE_WIDTH = 256
DEMO_SAE_K = 8
DEMO_SAE_STEPS = 300
DEMO_SAE_LIVE_EPISODES = 3
DEMO_DT_EVAL_EPISODES = 3
EMOTION_LABELS = ("td_error", "prev_td_error", "hope", "fear", "surprise", "mood", "arousal", "hunger", "thirst",
                  "threat", "distance_to_threat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=DEMO_STEPS,
                        help=f"training steps (default: {DEMO_STEPS})")
    parser.add_argument("--episodes", type=positive_int, default=DEMO_EPISODES,
                        help=f"episodes to record (default: {DEMO_EPISODES})")
    parser.add_argument("--supervised-steps", type=int, default=DEMO_DT_STEPS, metavar="N",
                        help="gradient steps for the decision transformer and the behaviour-cloning "
                             f"transformer trained on the agent's trajectories, 0 to skip them (default: {DEMO_DT_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    add_runs_dir(parser)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from probes import linear
    from rl_lab.config import TrainConfig
    from rl_lab.errors import LabError
    from rl_lab.record import record_run
    from rl_lab.train import tqdm_progress, train

    if args.supervised_steps < 0:
        raise LabError(f"--supervised-steps must be 0 (skip) or positive, got {args.supervised_steps}")
    supervised = args.supervised_steps > 0
    n_stages = 6 if supervised else 4
    t0 = time.time()
    root = runs_dir(args)
    name = f"demo-forage-ppo-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    _say(f"[1/{n_stages}] training PPO on {DEMO_ENV} for {args.steps} steps -> {RunsDirLayout(root).run_dir(name)}")
    progress, close = tqdm_progress("train")
    try:
        run_ = train(TrainConfig(env_id=DEMO_ENV, algo="ppo", total_timesteps=args.steps, seed=args.seed),
                     root, name=name, progress=progress)
    finally:
        close()
    summary = run_.summary()
    _say(f"      done in {time.time() - t0:.0f}s; mean episode return at the end: {summary['latest_return']:.2f}")

    _say(f"[2/{n_stages}] recording {args.episodes} episodes of the trained policy (all hooks, labels, random-weights twin)")
    progress_factory = tqdm_progress
    (h5,) = record_run(run_.name, root, episodes=args.episodes, seed=args.seed, progress_factory=progress_factory)

    _say(f"[3/{n_stages}] probing every hook x label, split by episode, beside the baselines")
    doc, labels, out_json, weights = probe_recording(h5, DEMO_HOOKS, DEMO_LABELS, args.seed)

    print()
    print(linear.format_table(doc))
    print()
    print("What the agent's layers encode (held-out episodes):")
    for sentence in linear.summarise(doc):
        print(f"  - {sentence}")
    print()
    print("Trained network versus the same network with random weights (the RL-versus-no-learning comparison):")
    for sentence in compare_to_random(doc):
        print(f"  - {sentence}")
    written = [("activations", h5), ("probe results", out_json), ("probe weights", weights)]
    _say(f"[4/{n_stages}] a small sparse autoencoder ({DEMO_SAE_WIDTH} latents) on {DEMO_SAE_HOOK}, spliced into the "
         "agent, with the statistics the features screen shows")
    sae_dir, sae_line = train_demo_sae(run_, h5, DEMO_SAE_HOOK, args.seed)
    written.append(("SAE", sae_dir))
    sae_lines = [sae_line]
    if supervised:
        written += train_supervised(run_, root, args, labels, n_stages, sae_lines)
    print()
    print("Sparse autoencoders (held-out episodes):")
    for line in sae_lines:
        print(f"  - {line}")
    print()
    print(f"Finished in {time.time() - t0:.0f}s. Everything written:")
    print(f"  run directory : {run_.path}")
    print(f"  run.json      : {run_.run_json}")
    print(f"  metrics       : {run_.metrics_path}")
    ckpts = run_.checkpoints()
    print(f"  checkpoints   : {run_.checkpoints_dir} ({len(ckpts)} files, last {ckpts[-1].name})")
    for what, path in written:
        print(f"  {what:<14}: {path}")
    print()
    print(f"Next: `rl-lab tui --runs-dir {root}` to browse it, "
          f"`rl-lab steer {run_.name} --runs-dir {root} --direction probe:threat@mlp_extractor.policy_net.3` to test a direction.")
    print(f"Features: in `rl-lab tui --runs-dir {root}` select {run_.name} and press f (or ctrl+p, \"features\") to "
          "browse the SAE's latents: top-activating steps, histogram, labels, logit effect; 2 shows the SAE's "
          "error-vs-L0 plot, 3 a DT run's attention.")
    return 0


def train_demo_sae(run_, h5, hook: str, seed: int) -> tuple[object, str]:
    """A small TopK SAE on ``hook`` of ``h5`` with its feature statistics and the measurements
    ``rl-lab sae`` makes inside the run's network; returns its folder and a one-line summary."""
    from probes.sae.training import train_sae_on_file
    from rl_lab.sae_splice import evaluate_in_run

    metrics = train_sae_on_file(h5, hook, width=DEMO_SAE_WIDTH, k=DEMO_SAE_K, steps=DEMO_SAE_STEPS, seed=seed,
                                overwrite=True)
    out = metrics["out_dir"]
    m = evaluate_in_run(run_, out, h5, live_episodes=DEMO_SAE_LIVE_EPISODES, seed=seed)

    def num(key: str, fmt: str = ".2f") -> str:
        v = m.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "undefined"

    line = (f"{run_.info.get('algo')} {hook}: L0 {num('l0')}, explained variance {num('explained_variance', '.3f')}, "
            f"dead {num('dead_fraction', '.0%')}")
    if "loss_recovered" in m:
        line += f", action loss recovered {num('loss_recovered')} (zero ablation), {num('loss_recovered_mean_ablation')} (mean)"
    if "return_clean" in m:
        line += f", return recovered {num('return_recovered')} over {m.get('live_episodes')} episodes"
    return out, line


def probe_recording(h5, hooks, labels, seed: int) -> tuple[dict, list[str], object, object]:
    """Probe the wanted hooks x labels that the recording has; returns the document, the labels
    probed, and the paths of the results and weights it wrote (``RUN/probes/``)."""
    from probes import linear
    from probes.activations import ActivationFile
    from probes.layout import probe_output_paths

    out_json, weights = probe_output_paths(h5)
    with ActivationFile(h5) as f:
        hooks = [h for h in hooks if h in f.hooks]
        labels = [lab for lab in labels if lab in f.labels]
    doc = linear.probe_file(h5, hooks=hooks, labels=labels, seed=seed, out_json=out_json, weights_path=weights)
    return doc, labels, out_json, weights


def train_supervised(run_, root, args: argparse.Namespace, labels: list[str], n_stages: int,
                     sae_lines: list[str] | None = None) -> list:
    """Stages 4 and 5: a DT and a BC transformer trained on the agent's own trajectories, recorded
    and probed the same way, then compared with the agent. Returns (what, path) of the files written."""
    from rl_lab.compare import compare, format_table
    from rl_lab.dt.train import DTTrainConfig, train_dt
    from rl_lab.record import record_run
    from rl_lab.train import tqdm_progress

    _say(f"[5/{n_stages}] the same data, learned by supervision: trajectories of every checkpoint of the agent plus a "
         f"random policy; a decision transformer (DT, conditioned on return-to-go) and a behaviour-cloning transformer "
         f"(BC), each trained for at most {args.supervised_steps} gradient steps, stopping early on held-out loss")
    runs, written, lines = [], [], []
    for algo in ("dt", "bc"):
        collect_progress, close_collect = tqdm_progress("collect trajectories")
        progress, close = tqdm_progress(f"train {algo}")
        try:
            sup = train_dt(DTTrainConfig(algo=algo, source_run=run_.name, steps=args.supervised_steps, seed=args.seed,
                                         eval_episodes=DEMO_DT_EVAL_EPISODES),
                           root, name=run_.name.replace("-ppo-", f"-{algo}-"), progress=progress,
                           collect_progress=collect_progress)
        finally:
            close_collect()
            close()
        runs.append(sup)
        lines.append(describe_supervised(sup))
    for line in lines:
        _say(f"      {line}")

    _say(f"[6/{n_stages}] recording DT and BC for {args.episodes} episodes each (same recorder, labels from the agent's "
         f"critic), probing the same labels, comparing")
    for sup in runs:
        (h5,) = record_run(sup.name, root, episodes=args.episodes, seed=args.seed, progress_factory=tqdm_progress)
        _, _, out_json, _ = probe_recording(h5, DT_HOOKS, labels, args.seed)
        written += [(f"{sup.info['algo']} run", sup.path), (f"{sup.info['algo']} probes", out_json)]
        if sup.info["algo"] == "dt":
            _say(f"      a small SAE on the DT's {DT_SAE_HOOK}, spliced into its forward pass")
            sae_dir, line = train_demo_sae(sup, h5, DT_SAE_HOOK, args.seed)
            written.append(("dt SAE", sae_dir))
            if sae_lines is not None:
                sae_lines.append(line)
    names = [run_.name] + [sup.name for sup in runs]
    cmp_labels = [lab for lab in EMOTION_LABELS if lab in labels]
    full = compare(names, root, labels=cmp_labels)
    acting = compare(names, root, labels=cmp_labels, hooks=ACTING_HOOKS, write=False)
    written.append(("comparison", full["path"]))

    print()
    print("RL versus supervision on the same data — best held-out probe score per label over each network's hooks:")
    print(format_table(full))
    print()
    print("What the comparison shows on Forage (this seed):")
    for sentence in explain_comparison(full, acting):
        print(f"  - {sentence}")
    for line in lines:
        print(f"  - {line}")
    print(f"  - one seed per network, so there is no interval across seeds; docs/results.md has the comparison over "
          f"three seeds and the command that reproduces it (examples/rl-vs-supervised.sh)")
    print("  - confounds this small run leaves (examples/fair-comparison.sh removes them at a full budget):")
    for confound in demo_confounds(runs, full.get("behaviour", {})):
        print(f"      {confound}")
    return written


def demo_confounds(supervised: list, behaviour: dict | None = None) -> list[str]:
    """What still separates the demo's networks besides their training signal, in words.

    ``behaviour`` is a comparison's ``behaviour`` block (group -> ``mean_return`` of its recorded
    episodes): networks that act differently are probed on different situations."""
    out = [
        "different networks: PPO here is a 64-64 MLP seeing one observation, DT and BC are transformers seeing "
        "a window of steps; the PPO-transformer (`--policy transformer`) is the like-for-like RL network",
        "the value-derived labels come from PPO's own critic: for PPO they are readouts, for DT and BC a "
        "reference critic's labels (`rl-lab record --reference-critic`) — only the environment's variables count",
    ]
    returns = {g: b["mean_return"] for g, b in (behaviour or {}).items()
               if isinstance(b, dict) and isinstance(b.get("mean_return"), (int, float))}
    if len(returns) > 1:
        out.append("different behaviour: mean return of the recorded episodes "
                   + ", ".join(f"{g} {r:+.2f}" for g, r in returns.items())
                   + "; each network is probed on its own episodes, so a better policy is probed on other "
                     "situations (`rl-lab record RUN --replay PPO_RUN` records a network on PPO's episodes and "
                     "`rl-lab compare --replay` compares on those; the fair comparison does both, and its bc-tf, "
                     "BC copying the PPO-transformer's own policy, holds behaviour equal)")
    for run in supervised:
        frac = None
        try:
            with open(run.eval_path) as fh:
                frac = json.load(fh).get("fraction_of_best_policy_mean")
        except (OSError, ValueError):
            pass
        if isinstance(frac, (int, float)) and math.isfinite(frac) and frac < 0.9:
            out.append(f"{run.info.get('algo')} is a weak actor ({frac:.0%} of the best source policy's mean return; "
                       "the fair test asks for at least 90%): it learned from a short budget")
        elif frac is None:
            out.append(f"{run.info.get('algo')} was not evaluated against its best source policy")
    return out


def describe_supervised(run) -> str:
    """One line on how well a DT/BC run learned the agent's behaviour."""
    import json

    algo = run.info["algo"]
    metrics = [m for m in run.metrics() if "loss" in m]
    # The line of the weights kept (training ends on the lowest held-out loss).
    last = next((m for m in metrics if m["step"] == run.info.get("best_step")), metrics[-1] if metrics else {})
    text = f"{algo} (weights of step {last.get('step')}): action accuracy {last.get('accuracy', float('nan')):.2f} on training windows"
    if "val_accuracy" in last:
        text += f", {last['val_accuracy']:.2f} on held-out episodes"
    if run.eval_path.exists():
        ev = json.loads(run.eval_path.read_text())
        best = ev.get("dataset_best_return")
        text += (f"; return {ev['return_at_best_target']:.2f} when conditioned on the best dataset return {best:.2f}"
                 if algo == "dt" else f"; return {ev['rows'][0]['mean_return']:.2f}")
        text += f" (dataset mean {ev.get('dataset_mean_return', float('nan')):.2f})"
        if "calibration_corr" in ev:
            text += f", achieved-vs-target correlation {ev['calibration_corr']:.2f}"
    return text


def explain_comparison(full: dict, acting: dict) -> list[str]:
    """Sentences on what a PPO-vs-DT-vs-BC comparison shows, computed from its numbers.

    ``full`` takes each network's best hook; ``acting`` leaves out PPO's critic. A label counts
    for the network that decodes it best, among labels some network decodes at all (for R², a
    bootstrap interval over held-out episodes above 0). "Clearly" means the winner's interval
    lies above every other network's.
    """
    from rl_lab.compare import RANDOM_SUFFIX

    def trained(result: dict) -> list[str]:
        return [g for g in result["groups"] if not g.endswith(RANDOM_SUFFIX)]

    def decoded(cells: dict, g: str, metric: str) -> bool:
        """An R² probe decodes when its interval over held-out episodes is above 0 (any other metric: always)."""
        if metric != "r2":
            return True
        return any(c and c[0] > 0 for c in cells[g].get("probe_cis", []))

    def variables(result: dict) -> list[str]:
        """The labels that count: not readouts of a compared network's own outputs."""
        return result.get("variables", result["labels"])

    def winners(result: dict) -> tuple[dict[str, list[str]], list[str]]:
        out: dict[str, list[str]] = {g: [] for g in trained(result)}
        none = []
        for label in variables(result):
            row = result["table"][label]
            cells = row["groups"]
            nets = [g for g in trained(result) if g in cells]
            if len(nets) < 2:
                continue
            if not any(decoded(cells, g, row["metric"]) for g in nets):
                none.append(label)
                continue
            top = max(nets, key=lambda g: cells[g]["mean"])
            lo = [c[0] for c in cells[top].get("probe_cis", []) if c]
            clear = bool(lo) and all(
                min(lo) > max((c[1] for c in cells[g].get("probe_cis", []) if c), default=float("inf"))
                for g in nets if g != top)
            others = ", ".join(f"{g} {cells[g]['mean']:.2f}" for g in nets if g != top)
            out[top].append(f"{label} ({cells[top]['mean']:.2f} vs {others}{'; clearly' if clear else ''})")
        return {g: items for g, items in out.items() if items}, none

    n = len(variables(full))
    out = []
    wins, none = winners(full)
    for group, items in wins.items():
        out.append(f"{group} decodes best on {len(items)} of {n} labels: " + "; ".join(items))
    if none:
        out.append(f"no network decodes {', '.join(none)} (every probe's interval over held-out episodes reaches 0)")
    gains = []
    for g in trained(full):
        diffs = [full["table"][lab]["groups"][g]["gain_over_twin"]["mean"] for lab in variables(full)
                 if "gain_over_twin" in full["table"][lab]["groups"].get(g, {})]
        if diffs:
            gains.append(f"{g} {sum(diffs) / len(diffs):+.2f}")
    if gains:
        out.append("what training added over each network's own random-weights twin (mean score gain over the labels): "
                   + ", ".join(gains))
    acting_wins, _ = winners(acting)
    if acting_wins:
        out.append("without PPO's critic (trained to predict value, so value-derived labels come free to it) — "
                   "PPO's actor beside the transformers, which also only act: "
                   + " | ".join(f"{g} best on {len(items)} of {len(variables(acting))}" for g, items in acting_wins.items()))
    readouts = full.get("readouts", [])
    if readouts:
        items = []
        for label in readouts:
            cells = full["table"][label]["groups"]
            own = sorted({run for run, src in full["table"][label].get("derived_from", {}).items()
                          if src in ("value_output", "policy_output")})
            scores = ", ".join(f"{g} {cells[g]['mean']:.2f}" for g in trained(full) if g in cells)
            items.append(f"{label} ({scores}; read from the own outputs of {', '.join(own)})")
        out.append("readouts, not counted above (computed from a compared network's own value or policy output, so "
                   "decoding them shows what that network was built to output): " + "; ".join(items))
    return out


def compare_to_random(doc: dict) -> list[str]:
    """Sentences: for each emotion-like label, does training make it more decodable than the
    random-weights twin (same architecture, same observations)?"""
    from probes.linear import RANDOM_WEIGHTS, SIGNIFICANCE
    from probes.stats import holm
    from rl_lab.compare import record_derived_from
    from rl_lab.labels import is_readout

    # Trained minus random twins at the same hook, paired over episodes; Holm over every
    # (label, hook) cell compared, so picking a label's best hook is covered by the correction.
    cells = [r for r in ProbeResults.from_dict(doc).records
             if r.label in EMOTION_LABELS and not r.linear_by_construction and r.score is not None
             and r.paired.get(RANDOM_WEIGHTS, {}).get("p") is not None]
    adjusted = dict(zip(map(id, cells), holm([r.paired[RANDOM_WEIGHTS]["p"] for r in cells])))
    best: dict[str, ProbeRecord] = {}
    for rec in cells:
        if rec.label not in best or adjusted[id(rec)] < adjusted[id(best[rec.label])]:
            best[rec.label] = rec
    gained, not_gained, readouts = [], [], []
    for label in EMOTION_LABELS:
        rec = best.get(label)
        if rec is None or rec.random_weights is None:
            continue
        diff = rec.paired[RANDOM_WEIGHTS]
        item = (f"{label} ({rec.metric} {rec.score:.2f} at {rec.hook} vs {rec.random_weights:.2f} random, "
                f"difference {diff['difference']:+.2f}, 95% CI {diff['ci'][0]:+.2f} to {diff['ci'][1]:+.2f})")
        if is_readout(record_derived_from(rec)):
            readouts.append(f"{label} ({record_derived_from(rec)}, {rec.metric} {rec.score:.2f} at {rec.hook})")
        else:
            (gained if rec.beats(RANDOM_WEIGHTS) and adjusted[id(rec)] < SIGNIFICANCE else not_gained).append(item)
    out = []
    if gained:
        out.append("training made these more linearly decodable than in the random-weights twins at the same hook "
                   f"(paired interval over episodes above 0, Holm-corrected over {len(cells)} label x hook cells): "
                   + "; ".join(gained))
    if not_gained:
        out.append("no gain over the random-weights twin (the information is already there in a random "
                   "projection of the observation, or absent): " + "; ".join(not_gained))
    if readouts:
        out.append("readouts of the agent's own outputs, not counted as variables that training made emerge "
                   "(computed from its value or policy head, which its layers were trained to produce): "
                   + "; ".join(readouts))
    return out
