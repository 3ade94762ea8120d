"""``rl-lab record``: roll a run's policy out and record activations + labels to HDF5."""

from __future__ import annotations

import argparse

from rl_lab.cli.options import add_runs_dir, positive_int, runs_dir

HELP = "record a trained policy's activations and emotion labels to RUN/activations/<checkpoint>.h5"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run name (or path to a run directory)")
    parser.add_argument("--episodes", type=positive_int, default=20, help="episodes to record (default: 20)")
    parser.add_argument("--checkpoint", default="latest",
                        help="latest (default), all, a training step, or a checkpoint file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rollouts (default: 0)")
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing recording")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.record import record_run
    from rl_lab.train import tqdm_progress

    paths = record_run(
        args.run, runs_dir(args), checkpoint=args.checkpoint, episodes=args.episodes, seed=args.seed,
        deterministic=args.deterministic, overwrite=args.overwrite, progress_factory=tqdm_progress,
    )
    for path in paths:
        print(path)
    return 0
