"""``rl-lab evaluate``: roll a decision-transformer (or BC) run out online — the RTG calibration curve."""

from __future__ import annotations

import argparse
import math
import json
import sys

from rl_lab.cli.options import add_runs_dir, positive_int, runs_dir, seed, trust_checkpoint_arg
from rl_lab.config import DT_ALGOS
from rl_lab.errors import LabError
from rl_lab.runs import RunStore

HELP = "evaluate a dt/bc run online: achieved return for each target return (the RTG calibration curve)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a dt or bc run (name or run directory)")
    parser.add_argument("--targets", default=None, metavar="R1,R2,...",
                        help="target returns, e.g. --targets=-2,0,5 (default: from the dataset's worst to its best episode, and 25%% beyond)")
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes per target (default: 10)")
    parser.add_argument("--checkpoint", default=None, metavar="STEP",
                        help="a training step or checkpoint file (default: the run's final weights)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sample actions from softmax(logits / T); below 1 is sharper (default: 1)")
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action")
    parser.add_argument("--seed", type=seed, default=1_000_000,
                        help="episode i of every target starts from env seed SEED + i (default: 1000000)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    parser.add_argument("--trust", action="store_true",
                        help="load a --checkpoint file from outside the run's checkpoints folder (checkpoints "
                             "are pickled: only pass files you trust)")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.dt.evaluate import evaluate, format_table
    from rl_lab.record import resolve_checkpoints
    from rl_lab.train import tqdm_progress

    trust_checkpoint_arg(args)
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise LabError(f"--temperature must be positive, got {args.temperature}")
    targets = None
    if args.targets is not None:
        try:
            targets = [float(x) for x in args.targets.split(",") if x.strip()]
        except ValueError:
            raise LabError(f"--targets must be comma-separated numbers, got {args.targets[:60]!r}") from None
        if not all(math.isfinite(t) for t in targets):
            raise LabError(f"--targets must be finite numbers, got {args.targets[:60]!r}")
        if not targets:
            raise LabError("--targets names no target return")
    run_ = RunStore(runs_dir(args)).get(args.run)
    if run_.info.get("algo") not in DT_ALGOS:
        raise LabError(f"run {run_.name!r} is a {run_.info.get('algo')} run; `rl-lab evaluate` is for dt and bc runs "
                       f"(an RL run's returns are in its metrics)")
    checkpoint = resolve_checkpoints(run_, args.checkpoint)[-1] if args.checkpoint else None
    progress, close = tqdm_progress(f"evaluate {run_.name}")
    try:
        result = evaluate(run_, checkpoint=checkpoint, targets=targets, episodes=args.episodes, seed=args.seed,
                          deterministic=args.deterministic, temperature=args.temperature, progress=progress)
    finally:
        close()
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
        print(f"written to {run_.eval_path}")
    return 0
