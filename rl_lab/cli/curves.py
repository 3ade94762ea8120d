"""``rl-lab curves``: the RL runs' training return at equal environment steps, grouped, with intervals."""

from __future__ import annotations

import argparse
import json
import sys

from rl_lab.cli.options import add_runs_dir, runs_dir

HELP = ("training return of RL runs at equal environment steps (e.g. PPO-transformer against PPO-MLP over "
        "seeds), grouped, with intervals across seeds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="runs to compare (names or run directories)")
    parser.add_argument("--at", default=None, metavar="STEPS",
                        help="comma-separated environment steps, e.g. 100k,200k,400k,800k,1.6M (default: ten "
                             "evenly spaced up to the longest run's last logged step)")
    parser.add_argument("--group-by", default="agent", metavar="KEY",
                        help="run.json key that groups runs, dotted for nested keys, e.g. algo (default: "
                             "agent, the algorithm and its network: ppo, ppo-transformer, recurrent-ppo)")
    parser.add_argument("--json", action="store_true", help="print the curves as one JSON document")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.curves import curves, format_table, parse_marks

    marks = parse_marks(args.at) if args.at is not None else None  # malformed: one line, exit 2
    doc = curves(args.runs, runs_dir(args), marks=marks, group_by=args.group_by)
    if args.json:
        json.dump(doc, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(format_table(doc))
    return 0
