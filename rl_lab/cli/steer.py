"""``rl-lab steer``: edit a direction into the running agent and measure what it does to behaviour."""

from __future__ import annotations

import argparse
import json
import re
import sys

from rl_lab.cli.options import add_runs_dir, positive_int, runs_dir
from rl_lab.runs import json_default

HELP = "steer a run's agent along a probe/SAE/mean-difference direction and measure behaviour against random directions"

# Let "--scales -4,-2,0,2,4" read as a value, not as an unknown option.
_NEGATIVE_VALUE = re.compile(r"^-\d[\d.,eE+-]*$|^-\.\d[\d.,eE+-]*$")


def _scales(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one scale")
    return values


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser._negative_number_matcher = _NEGATIVE_VALUE  # type: ignore[attr-defined]
    parser.add_argument("run", metavar="RUN", help="run name (or path to a run directory)")
    parser.add_argument("--direction", required=True,
                        help="probe:LABEL@HOOK (latest probe weights), sae:SAE_NAME/LATENT (decoder row) "
                             "or diff:LABEL@HOOK (top- minus bottom-quartile mean activation)")
    parser.add_argument("--mode", choices=("add", "erase", "clamp"), default="add",
                        help="add the direction, erase it (project out / mean-ablate), or clamp its "
                             "coordinate (default: add)")
    parser.add_argument("--scales", type=_scales, default=None,
                        help="comma-separated doses (default: -4,-2,0,2,4 for add and clamp, 0,0.5,1 for erase); "
                             "add/clamp: standard deviations of the coordinate; erase: fraction erased")
    parser.add_argument("--episodes", type=positive_int, default=20, help="episodes per condition (default: 20)")
    parser.add_argument("--controls", type=_count, default=5,
                        help="random directions of the same norm (default: 5)")
    parser.add_argument("--expect", default=None, metavar='"METRIC up|down"',
                        help='a prediction checked against the dose-response slope, e.g. "distance_to_threat up"')
    parser.add_argument("--seed", type=int, default=0, help="seed of episodes, controls and bootstrap (default: 0)")
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to steer (a step or a file; default: the recorded one)")
    parser.add_argument("--activations", default=None,
                        help="activation file for the units and diff directions (default: the latest)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.steer import SteerConfig, format_table, steer
    from rl_lab.train import tqdm_progress

    cfg = SteerConfig(direction=args.direction, mode=args.mode, scales=args.scales, episodes=args.episodes,
                      controls=args.controls, seed=args.seed, expect=args.expect,
                      deterministic=args.deterministic, checkpoint=args.checkpoint,
                      activations=args.activations)
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
