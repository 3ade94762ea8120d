"""``python -m probes.sae FILE.h5 --hook NAME [...]``: train an SAE on one hook of an activation file.

Options (``probes.sae.config.add_arguments``)::

    python -m probes.sae FILE.h5 --hook NAME [--hook NAME2 ...] [--arch topk|relu|binding] [--width W] [--k K] [--l1 C] [--slots S]
        [--steps N | --epochs E] [--lr LR] [--batch-size B] [--seed S] [--out DIR]
        [--no-features] [--json]

Several ``--hook``s, and lists ``--width 256,512 --k 8,16``, train one SAE per (hook, width, k) while
streaming the file once (``probes.sae.training.train_saes_on_file``).

Prints a summary per SAE (or, with ``--json``, one JSON document: the metrics of a single SAE, or a
list of them for several); bad input gives one line on stderr and exit code 2.
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
        all_metrics = run_from_args(args)
    except ProbeError as exc:
        print(f"probes.sae: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(all_metrics[0] if len(all_metrics) == 1 else all_metrics, sort_keys=True))
    else:
        print("\n\n".join(format_metrics(metrics) for metrics in all_metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
