"""``rl-lab tui``: the terminal app over a runs directory."""

from __future__ import annotations

import argparse

from rl_lab.cli.options import add_runs_dir, runs_dir
from rl_lab.errors import LabError

HELP = "open the terminal app: runs, launch, detail, probes, features, episode replay"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--runs-dir``."""
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    """Run the app until the user quits; returns the exit code."""
    root = runs_dir(args)
    if root.exists() and not root.is_dir():
        raise LabError(f"--runs-dir {root} is a file, not a directory")
    from tui.app import LabApp

    app = LabApp(root)
    app.run()
    return app.return_code or 0  # non-zero when the app crashed (Textual sets 1)
