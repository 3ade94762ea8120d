"""``rl-lab sweep``: run environments x algorithms x seeds x hyperparameters, each through a pipeline."""

from __future__ import annotations

import argparse
import json
from typing import Any

from probes.layout import RunsDirLayout
from rl_lab.cli.options import add_runs_dir, positive_int, runs_dir
from rl_lab.errors import LabError

HELP = "run a sweep (envs x algos x seeds x grid; train, record, probe, sae per trial) locally or on Ray"

EXIT_TRIALS_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", metavar="SWEEP_FILE", nargs="?", default=None,
                        help="a sweep TOML file (see docs/sweep.md); optional when the flags say it all")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local worker processes (default) or Ray (pip install 'rl-lab[ray]')")
    parser.add_argument("--address", default=None,
                        help="join the Ray cluster at ADDR (e.g. auto or 10.0.0.1:6379) instead of starting one")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="trials at once (default: the cores of this machine; with --address: no cap)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep-file value, TOML syntax (e.g. stages.train.steps=2000, "
                             "seeds=[0,1]); repeatable")
    parser.add_argument("--name", default=None, help="the sweep's name (default: the file's stem)")
    parser.add_argument("--env", dest="envs", action="append", default=None, metavar="ENV",
                        help="environment id (repeatable; replaces the file's envs)")
    parser.add_argument("--algo", dest="algos", action="append", default=None, metavar="ALGO",
                        help="ppo, a2c or dqn (repeatable; replaces the file's algos)")
    parser.add_argument("--seeds", default=None, help="a count (3 -> 0,1,2) or a comma-separated list (0,4,7)")
    parser.add_argument("--pipeline", default=None,
                        help="comma-separated stages among train, record, probe, sae")
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps per trial")
    parser.add_argument("--json", action="store_true", help="print the sweep record as one JSON document")
    add_runs_dir(parser)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Flags and ``--set`` assignments as dotted keys (flags first, ``--set`` wins)."""
    from rl_lab.sweep import parse_assignment

    out: dict[str, Any] = {}
    if args.name is not None:
        out["name"] = args.name
    if args.envs:
        out["envs"] = list(args.envs)
    if args.algos:
        out["algos"] = list(args.algos)
    if args.seeds is not None:
        try:
            parts = [int(p) for p in args.seeds.split(",") if p.strip()]
        except ValueError:
            raise LabError(f"--seeds expects a count or comma-separated integers, got {args.seeds!r}") from None
        out["seeds"] = parts[0] if len(parts) == 1 and "," not in args.seeds else parts
    if args.pipeline is not None:
        out["pipeline"] = [p.strip() for p in args.pipeline.split(",") if p.strip()]
    if args.steps is not None:
        out["stages.train.steps"] = args.steps
    for text in args.overrides:
        key, value = parse_assignment(text)
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from rl_lab.sweep import load_sweep, run_sweep, summary_line
    from rl_lab.sweep.stats import format_tables

    spec = load_sweep(args.sweep_file, overrides_from_args(args))
    root = runs_dir(args)
    record = run_sweep(spec, root, backend=args.backend, workers=args.workers, address=args.address)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        tables = format_tables(record["aggregate"])
        if tables:
            print(tables)
        print(summary_line(record, RunsDirLayout(root).sweep_record(spec.name)))
    return EXIT_TRIALS_FAILED if record["summary"]["failed"] else 0
