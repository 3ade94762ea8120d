"""``rl-lab tui``: the terminal app over a runs directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from rl_lab.errors import LabError
from rl_lab.runs import default_runs_dir

HELP = "open the terminal app: runs, launch, detail, probes, features, episode replay"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--runs-dir``."""
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="directory holding one sub-directory per run (default: $RL_LAB_RUNS or ./runs)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the app until the user quits; returns the exit code."""
    runs_dir = Path(args.runs_dir) if args.runs_dir is not None else default_runs_dir()
    if runs_dir.exists() and not runs_dir.is_dir():
        raise LabError(f"--runs-dir {runs_dir} is a file, not a directory")
    from tui.app import LabApp

    LabApp(runs_dir).run()
    return 0
