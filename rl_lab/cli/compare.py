"""``rl-lab compare``: probe results of several runs side by side, grouped, with intervals across seeds."""

from __future__ import annotations

import argparse
import json
import sys

from rl_lab.cli.options import add_runs_dir, runs_dir

HELP = "compare probe results across runs (e.g. PPO vs DT vs BC over seeds) on the same labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="runs to compare (names or run directories)")
    parser.add_argument("--label", action="append", default=None, metavar="L",
                        help="compare this label (repeatable; default: every label probed in all runs)")
    parser.add_argument("--group-by", default="agent", metavar="KEY",
                        help="run.json key that groups runs, dotted for nested keys, e.g. algo (default: "
                             "agent, the algorithm and its network: ppo, ppo-transformer, recurrent-ppo, dt)")
    parser.add_argument("--hooks", action="append", default=None, metavar="PATTERN",
                        help="take each run's best score over hooks matching this shell-style pattern only "
                             "(repeatable), e.g. --hooks 'mlp_extractor.policy_net.*' --hooks 'blocks.*' "
                             "for the PPO actor beside the transformers (default: every hook)")
    parser.add_argument("--contrast", action="append", default=None, metavar="A:B",
                        help="test group A against group B, paired by seed: each variable's gain over the random "
                             "twin, A minus B, paired t-test, Holm-corrected over every contrast and variable "
                             "(repeatable), e.g. --contrast ppo-transformer:bc")
    parser.add_argument("--replay", metavar="RUN2", default=None,
                        help="compare every run on RUN2's episodes (their recordings made with `rl-lab record RUN "
                             "--replay RUN2`, probed), so that all networks are probed on the same situations "
                             "(default: each on its own episodes)")
    parser.add_argument("--no-random", action="store_true", help="leave out the random-weights rows")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON document")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.compare import compare, format_table, parse_contrast

    contrasts = [parse_contrast(c) for c in args.contrast or []]  # malformed: one line, exit 2, before any work
    result = compare(args.runs, runs_dir(args), labels=args.label, group_by=args.group_by,
                     random_baseline=not args.no_random, hooks=args.hooks, contrasts=contrasts,
                     replay=args.replay)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
        print(f"written to {result['path']}")
    return 0
