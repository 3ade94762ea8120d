"""``rl-lab runs``: list the runs in the runs directory."""

from __future__ import annotations

import argparse
import json

from rl_lab.cli.options import add_runs_dir, runs_dir
from rl_lab.runs import RunStore, finite_or_none

HELP = "list runs with their status, environment, algorithm, steps and returns"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_runs_dir(parser)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run(args: argparse.Namespace) -> int:
    store = RunStore(runs_dir(args))
    rows = [r.summary() for r in store.list()]
    if args.json:
        print(json.dumps(finite_or_none({"runs_dir": str(store.root), "runs": rows}), indent=2, allow_nan=False))
        return 0
    if not rows:
        print(f"no runs in {store.root}")
        return 0
    header = f"{'name':<36} {'status':<11} {'env':<18} {'algo':<5} {'steps':>9} {'latest':>8} {'best':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name'][:36]:<36} {r['status']:<11} {str(r['env_id'])[:18]:<18} {str(r['algo'])[:5]:<5} "
              f"{r['steps_done'] or 0:>9} {_fmt(r['latest_return']):>8} {_fmt(r['best_return']):>8}")
        if r.get("error"):
            print(f"    error: {' '.join(str(r['error']).split())[:300]}")
    return 0
