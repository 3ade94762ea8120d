"""``rl-lab demo``: the whole pipeline on embedded defaults — train, record, probe, explain."""

from __future__ import annotations

import argparse
import sys
import time

from rl_lab.cli._common import add_runs_dir, positive_int, runs_dir

HELP = "train a small PPO agent on lab/Forage-v0, record it, probe it, and explain what its layers encode"

DEMO_ENV = "lab/Forage-v0"
DEMO_STEPS = 60_000
DEMO_EPISODES = 40


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
    doc = linear.probe_file(h5, seed=args.seed, out_json=out_json, weights_path=weights)

    print()
    print(linear.format_table(doc))
    print()
    print("What the agent's layers encode (held-out episodes):")
    for sentence in linear.summarise(doc):
        print(f"  - {sentence}")
    print()
    print(f"Finished in {time.time() - t0:.0f}s. Everything written:")
    print(f"  run directory : {run_.path}")
    print(f"  run.json      : {run_.run_json}")
    print(f"  metrics       : {run_.metrics_path}")
    for ckpt in run_.checkpoints():
        print(f"  checkpoint    : {ckpt}")
    print(f"  activations   : {h5}")
    print(f"  probe results : {out_json}")
    print(f"  probe weights : {weights}")
    print()
    print(f"Next: `rl-lab tui --runs-dir {root}` to browse it, "
          f"`rl-lab steer {run_.name} --runs-dir {root} --direction probe:hunger@<hook>` to test a direction.")
    return 0
