"""The ``rl-lab`` command line.

Every module in this package is one sub-command: ``rl_lab/cli/train.py`` is ``rl-lab train``,
except ``options`` (the arguments several commands share, ``SUPPORT_MODULES``). A command
module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Heavy
imports belong inside ``run`` so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from typing import Sequence

from probes.errors import ProbeError
from rl_lab.errors import LabError
from rl_lab.runs import is_no_space

EXIT_USAGE = 2
SUPPORT_MODULES = frozenset({"options"})
"""Modules of this package that are not commands."""
USER_ERRORS = (LabError, ProbeError, OSError, KeyboardInterrupt)
"""Shown as one ``rl-lab: error: ...`` line (no traceback unless ``RL_LAB_DEBUG`` is set): the lab's
own errors and what the operating system refuses (a missing file, no permission, a full disk)."""
MAX_MESSAGE = 400
"""Longest error line printed; longer messages are cut (a message is one readable sentence)."""


def error_line(exc: BaseException) -> str:
    """The one line ``rl-lab: error: ...`` shows for ``exc``."""
    if isinstance(exc, OSError) and not isinstance(exc, (LabError, ProbeError)):
        if is_no_space(exc):
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            message = f"out of disk space{where}; free some space and run the command again"
        elif exc.strerror:
            message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        else:
            message = str(exc) or type(exc).__name__
    else:
        message = str(exc) or type(exc).__name__
    message = " ".join(message.split())  # one line
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return message


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def command_modules() -> list[str]:
    """The sub-command names: every public module of this package but ``SUPPORT_MODULES``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in SUPPORT_MODULES)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rl-lab",
        description="RL Lab: train agents, record their activations, probe, steer and inspect them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in command_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        if os.environ.get("RL_LAB_DEBUG"):
            traceback.print_exc()
        if isinstance(exc, KeyboardInterrupt):
            sys.stderr.write("rl-lab: interrupted\n")
            return 130
        sys.stderr.write(f"rl-lab: error: {error_line(exc)}\n")
        return EXIT_USAGE


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
