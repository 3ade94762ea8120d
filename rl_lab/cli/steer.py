"""``rl-lab steer``: edit a direction into the running agent and measure what it does to behaviour."""

from __future__ import annotations

import argparse
import json
import math
import sys

from rl_lab.cli.options import (
    accept_negative_numbers,
    add_device,
    add_runs_dir,
    nonnegative_int,
    positive_int,
    runs_dir,
    seed,
    trust_checkpoint_arg,
)
from rl_lab.runs import json_default

HELP = "steer a run's agent along a probe/SAE/mean-difference direction and measure behaviour against random directions"



def _scales(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one scale")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text[:60]!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    accept_negative_numbers(parser)  # "--scales -4,-2,0,2,4" is a value, not an unknown option
    parser.add_argument("run", metavar="RUN", help="run name (or path to a run directory)")
    parser.add_argument("--direction", required=True,
                        help="probe:LABEL@HOOK (latest probe weights), sae:SAE_NAME/LATENT (decoder row) "
                             "or diff:LABEL@HOOK (top- minus bottom-quartile mean activation)")
    parser.add_argument("--mode", choices=("add", "erase", "clamp", "leace"), default="add",
                        help="add the direction, erase it (project out / mean-ablate), clamp its "
                             "coordinate, or erase its LABEL with LEACE (default: add)")
    parser.add_argument("--scales", type=_scales, default=None,
                        help="comma-separated doses (default: -4,-2,0,2,4 for add and clamp, 0,0.5,1 for erase and "
                             "leace); add/clamp: standard deviations of the coordinate; erase/leace: fraction erased")
    parser.add_argument("--episodes", type=positive_int, default=20, help="episodes per condition (default: 20)")
    parser.add_argument("--controls", type=nonnegative_int, default=20,
                        help="random directions of the same norm, alternately isotropic and drawn from the "
                             "activation covariance (leace: random subspaces of the same rank) (default: 20)")
    parser.add_argument("--expect", default=None, metavar="METRIC:up|down",
                        help='a pre-registered prediction checked against the dose-response slope, e.g. '
                             'distance_to_threat:up (or "distance_to_threat up")')
    parser.add_argument("--seed", type=seed, default=0, help="seed of episodes, controls and bootstrap (default: 0)")
    parser.add_argument("--trust", action="store_true",
                        help="load a --checkpoint file from outside the run's checkpoints folder (checkpoints "
                             "are pickled: only pass files you trust)")
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to steer (a step or a file; default: the recorded one)")
    parser.add_argument("--activations", default=None,
                        help="activation file for the units and diff directions (default: the latest)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    add_device(parser)
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.devices import resolve_device
    from rl_lab.steer import SteerConfig, format_table, steer
    from rl_lab.train import tqdm_progress

    args.device = resolve_device(args.device)  # before anything is created
    trust_checkpoint_arg(args)
    if args.mode in ("erase", "leace") and args.scales is not None and not all(0.0 <= s <= 1.0 for s in args.scales):
        from rl_lab.errors import LabError

        raise LabError(f"--mode {args.mode} takes --scales between 0 and 1 (the fraction erased)")

    cfg = SteerConfig(direction=args.direction, mode=args.mode, scales=args.scales, episodes=args.episodes,
                      controls=args.controls, seed=args.seed, expect=args.expect,
                      deterministic=args.deterministic, checkpoint=args.checkpoint,
                      activations=args.activations, device=args.device)
    progress, close = tqdm_progress("steer episodes")
    try:
        doc = steer(args.run, cfg, runs_dir(args), progress=progress)
    finally:
        close()
    if args.json:
        json.dump(doc, sys.stdout, default=json_default)
        sys.stdout.write("\n")
    else:
        print(format_table(doc))
        print(f"written: {doc['path']}")
    return 0
