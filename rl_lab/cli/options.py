"""Arguments shared by several commands (a support module, not a command: ``rl_lab.cli.SUPPORT_MODULES``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rl_lab.runs import default_runs_dir


def add_runs_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="directory holding the runs (default: $RL_LAB_RUNS, else ./runs)",
    )


def runs_dir(args: argparse.Namespace) -> Path:
    return args.runs_dir if args.runs_dir is not None else default_runs_dir()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value
