"""Arguments shared by several commands (a support module, not a command: ``rl_lab.cli.SUPPORT_MODULES``)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from rl_lab.runs import default_runs_dir


def add_runs_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="directory holding the runs (default: $RL_LAB_RUNS, else ./runs)",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda[:N]`` (resolved and checked by ``rl_lab.devices.resolve_device`` in ``run``)."""
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (CUDA when torch sees one, else CPU; default), cpu, cuda or cuda:N")


def runs_dir(args: argparse.Namespace) -> Path:
    return args.runs_dir if args.runs_dir is not None else default_runs_dir()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


SEED_MAX = 2**31 - 1
"""Largest seed any command takes (numpy's legacy seeding needs 32 bits; 31 leave room for offsets)."""


def seed(text: str) -> int:
    """A seed: a whole number from 0 to ``SEED_MAX``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {SEED_MAX}, got {text[:40]}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (a learning rate, a temperature, ...)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text[:40]}")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number, 0 or more (an entropy coefficient, ...)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of 0 or more, got {text[:40]}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text[:40]}")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def trust_checkpoint_arg(args: argparse.Namespace) -> None:
    """With ``--trust``, allow the ``--checkpoint`` file even from outside its run (``rl_lab.runs.trust_checkpoint``)."""
    from rl_lab.runs import trust_checkpoint

    which = getattr(args, "checkpoint", None)
    if getattr(args, "trust", False) and which and Path(which).is_file():
        trust_checkpoint(which)


NEGATIVE_NUMBERS = re.compile(r"^-\d[\d.,eE+-]*$|^-\.\d[\d.,eE+-]*$")
"""What argparse should read as a value, not an option: ``-4``, ``-4,-2,0``, ``-.5``."""


def accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let an option take comma-separated numbers that start with a minus (``--scales -4,-2,0``)."""
    parser._negative_number_matcher = NEGATIVE_NUMBERS  # type: ignore[attr-defined]
