"""``python -m probes.sae FILE.h5 --hook NAME [...]``: train an SAE on one hook of an activation file.

Options (``probes.sae.config.add_arguments``)::

    python -m probes.sae FILE.h5 --hook NAME [--arch topk|relu] [--width W] [--k K] [--l1 C]
        [--steps N | --epochs E] [--lr LR] [--batch-size B] [--seed S] [--out DIR]
        [--no-features] [--json]

Prints a summary (or, with ``--json``, the metrics as one JSON document); bad input gives one
line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from probes.errors import ProbeError
from probes.sae.config import add_arguments
from probes.sae.training import format_metrics, run_from_args
from probes.scripts import ScriptParser


def main(argv: Sequence[str] | None = None) -> int:
    parser = ScriptParser(prog="python -m probes.sae", description="Train a sparse autoencoder on one hook of an activation file.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        metrics = run_from_args(args)
    except ProbeError as exc:
        print(f"probes.sae: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
