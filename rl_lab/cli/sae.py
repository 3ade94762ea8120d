"""``rl-lab sae``: train a sparse autoencoder on one hook of a run's recording (or of a file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from probes.layout import run_of_file
from probes.sae.config import add_arguments as sae_arguments
from rl_lab.cli.options import add_device, add_runs_dir, runs_dir
from rl_lab.errors import LabError
from rl_lab.runs import Run, RunStore, read_run_json

HELP = "train sparse autoencoders (one per --hook, --width, --k, in one pass over the file); with a run, also splice it into the live agent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_FILE", help="a run (its latest recording) or an activation .h5 file")
    sae_arguments(parser, file_arg=False)
    parser.add_argument("--live-episodes", type=int, default=10,
                        help="episodes per condition for the live splice (0 skips it; default: 10)")
    add_device(parser)
    add_runs_dir(parser)


def _resolve(target: str, args: argparse.Namespace) -> tuple[Path, Run | None]:
    """The activation file and, when there is one, the run whose network produced it."""
    path = Path(target)
    if path.suffix in (".h5", ".hdf5"):
        if not path.exists():
            raise LabError(f"no such activation file: {path}")
        layout = run_of_file(path)
        if layout is not None and layout.run_json.exists():
            return path, Run(layout.path, read_run_json(layout.path))
        return path, None
    run = RunStore(runs_dir(args)).get(target)
    files = run.activation_files()
    if not files:
        raise LabError(f"run {run.name!r} has no recordings yet; run `rl-lab record {run.name}` first")
    return files[-1], run


def run(args: argparse.Namespace) -> int:
    from probes.sae.training import format_metrics, run_from_args
    from rl_lab.devices import resolve_device

    args.device = resolve_device(args.device)  # the SAE config's device; checked before anything is created
    h5, run_ = _resolve(args.target, args)
    docs = []
    for metrics in run_from_args(args, file=h5):  # one SAE per (--hook, --width, --k), trained in one pass
        out_dir = Path(metrics["out_dir"])
        if run_ is not None:
            from rl_lab.sae_splice import evaluate_in_run

            metrics = evaluate_in_run(run_, out_dir, h5, live_episodes=args.live_episodes, seed=args.seed)
            metrics["out_dir"] = str(out_dir)
        docs.append(metrics)
    if args.json:
        # the feature views (large, for the app) stay in metrics.json; several SAEs: a list
        out = [{k: v for k, v in m.items() if k != "views"} for m in docs]
        print(json.dumps(out[0] if len(out) == 1 else out, sort_keys=True, default=float))
        return 0
    for i, metrics in enumerate(docs):
        if i:
            print()
        print(format_metrics(metrics))
        if run_ is not None:
            from rl_lab.sae_splice import format_run_metrics

            for line in format_run_metrics(metrics):
                print(line)
    return 0
