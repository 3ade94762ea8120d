"""``rl-lab intervene``: set a latent of the world (``do``) and measure how each probe and SAE latent responds."""

from __future__ import annotations

import argparse
import json
import sys

from rl_lab.cli.options import (
    add_device,
    add_runs_dir,
    finite_float,
    nonnegative_int,
    positive_int,
    runs_dir,
    seed,
    trust_checkpoint_arg,
)
from rl_lab.runs import json_default

HELP = "intervene on the world (e.g. put the predator next to the agent) and measure how far each probe and SAE latent moves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run name (or path to a run directory)")
    parser.add_argument("--do", required=True, metavar="TARGET[=VALUE]",
                        help="the env's do target, e.g. predator_adjacent or energy=0.1 (docs/envs.md lists them)")
    parser.add_argument("--value", type=finite_float, default=None, help="the value for a target that takes one")
    parser.add_argument("--at-step", type=nonnegative_int, default=10,
                        help="intervene on the observation of this step of each episode (default: 10)")
    parser.add_argument("--episodes", type=positive_int, default=20, help="episodes (default: 20)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of episodes, sampling and bootstrap (default: 0)")
    parser.add_argument("--trust", action="store_true",
                        help="load a --checkpoint file from outside the run's checkpoints folder (checkpoints "
                             "are pickled: only pass files you trust)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint (a step or a file; default: the one the activations were recorded from)")
    parser.add_argument("--activations", default=None,
                        help="activation file giving each reading's natural spread (default: the latest)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    add_device(parser)
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.devices import resolve_device
    from rl_lab.steer.world import InterveneConfig, format_intervention, intervene
    from rl_lab.train import tqdm_progress

    args.device = resolve_device(args.device)  # before anything is created
    trust_checkpoint_arg(args)
    cfg = InterveneConfig(do=args.do, value=args.value, at_step=args.at_step, episodes=args.episodes,
                          seed=args.seed, checkpoint=args.checkpoint, activations=args.activations,
                          device=args.device)
    progress, close = tqdm_progress("intervene episodes")
    try:
        doc = intervene(args.run, cfg, runs_dir(args), progress=progress)
    finally:
        close()
    if args.json:
        json.dump(doc, sys.stdout, default=json_default)
        sys.stdout.write("\n")
    else:
        print(format_intervention(doc))
        print(f"written: {doc['path']}")
    return 0
