"""``rl-lab demo``: the whole pipeline on embedded defaults — train, record, probe, explain."""

from __future__ import annotations

import argparse
import sys
import time

from rl_lab.cli._common import add_runs_dir, positive_int, runs_dir

HELP = "train a small PPO agent on lab/Forage-v0, record it, probe it, and explain what its layers encode"

DEMO_ENV = "lab/Forage-v0"
DEMO_STEPS = 100_000
DEMO_EPISODES = 40
# The demo probes the hidden layers (after each Tanh) of the actor and the critic for the
# emotion-like labels and the homeostatic/threat latents; `rl-lab probe RUN` probes everything.
DEMO_HOOKS = ("mlp_extractor.policy_net.1", "mlp_extractor.policy_net.3",
              "mlp_extractor.value_net.1", "mlp_extractor.value_net.3")
DEMO_LABELS = ("value", "td_error", "hope", "fear", "surprise", "mood", "arousal", "return_to_go",
               "hunger", "thirst", "threat", "distance_to_threat", "predator_adjacent", "action")
EMOTION_LABELS = ("td_error", "hope", "fear", "surprise", "mood", "arousal", "hunger", "thirst", "threat",
                  "distance_to_threat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=DEMO_STEPS,
                        help=f"training steps (default: {DEMO_STEPS})")
    parser.add_argument("--episodes", type=positive_int, default=DEMO_EPISODES,
                        help=f"episodes to record (default: {DEMO_EPISODES})")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    add_runs_dir(parser)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from probes import linear
    from rl_lab.cli.probe import output_paths
    from rl_lab.config import TrainConfig
    from rl_lab.record import record_run
    from rl_lab.train import tqdm_progress, train

    t0 = time.time()
    root = runs_dir(args)
    name = f"demo-forage-ppo-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    _say(f"[1/3] training PPO on {DEMO_ENV} for {args.steps} steps -> {root / name}")
    progress, close = tqdm_progress("train")
    try:
        run_ = train(TrainConfig(env_id=DEMO_ENV, algo="ppo", total_timesteps=args.steps, seed=args.seed),
                     root, name=name, progress=progress)
    finally:
        close()
    summary = run_.summary()
    _say(f"      done in {time.time() - t0:.0f}s; mean episode return at the end: {summary['latest_return']:.2f}")

    _say(f"[2/3] recording {args.episodes} episodes of the trained policy (all hooks, labels, random-weights twin)")
    progress_factory = tqdm_progress
    (h5,) = record_run(run_.name, root, episodes=args.episodes, seed=args.seed, progress_factory=progress_factory)

    _say("[3/3] probing every hook x label, split by episode, beside the baselines")
    out_json, weights = output_paths(h5)
    from probes.activations import ActivationFile

    with ActivationFile(h5) as f:
        hooks = [h for h in DEMO_HOOKS if h in f.hooks]
        labels = [lab for lab in DEMO_LABELS if lab in f.labels]
    doc = linear.probe_file(h5, hooks=hooks, labels=labels, seed=args.seed, out_json=out_json,
                            weights_path=weights)

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
    print()
    print(f"Finished in {time.time() - t0:.0f}s. Everything written:")
    print(f"  run directory : {run_.path}")
    print(f"  run.json      : {run_.run_json}")
    print(f"  metrics       : {run_.metrics_path}")
    ckpts = run_.checkpoints()
    print(f"  checkpoints   : {run_.checkpoints_dir} ({len(ckpts)} files, last {ckpts[-1].name})")
    print(f"  activations   : {h5}")
    print(f"  probe results : {out_json}")
    print(f"  probe weights : {weights}")
    print()
    print(f"Next: `rl-lab tui --runs-dir {root}` to browse it, "
          f"`rl-lab steer {run_.name} --runs-dir {root} --direction probe:threat@mlp_extractor.policy_net.3` to test a direction.")
    return 0


def compare_to_random(doc: dict) -> list[str]:
    """Sentences: for each emotion-like label, does training make it more decodable than the
    random-weights twin (same architecture, same observations)?"""
    best: dict[str, dict] = {}
    for rec in doc.get("records", []):
        if rec["label"] not in EMOTION_LABELS or rec.get("linear_by_construction"):
            continue
        if rec["label"] not in best or rec["score"] > best[rec["label"]]["score"]:
            best[rec["label"]] = rec
    gained, not_gained = [], []
    for label in EMOTION_LABELS:
        rec = best.get(label)
        if rec is None or "random_weights" not in rec.get("baselines", {}):
            continue
        rand = rec["baselines"]["random_weights"]
        lo = rec["ci"][0]
        item = f"{label} ({rec['metric']} {rec['score']:.2f} at {rec['hook']} vs {rand:.2f} random)"
        (gained if lo > rand else not_gained).append(item)
    out = []
    if gained:
        out.append("training made these more linearly decodable than in the random-weights twin "
                   "(whole 95% CI above it): " + "; ".join(gained))
    if not_gained:
        out.append("no gain over the random-weights twin (the information is already there in a random "
                   "projection of the observation, or absent): " + "; ".join(not_gained))
    out.append("the decision-transformer and behaviour-cloning side of the comparison takes longer than a demo: "
               "`rl-lab train --algo dt --from RUN`, `rl-lab record`, then `rl-lab compare RUN DT_RUN` "
               "(or `rl-lab sweep examples/sweep-smoke.toml` for seeds)")
    return out
