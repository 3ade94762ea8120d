"""What every ``python -m probes.*`` script shares: an argument parser whose usage errors are one
line on stderr and exit code 2, like ``rl-lab``'s (argparse's own prints the usage too)."""

from __future__ import annotations

import argparse
import sys


class ScriptParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line errors: ``<prog>: error: <message>``, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())}\n")
        raise SystemExit(2)
