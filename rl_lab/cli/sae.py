"""``rl-lab sae``: train a sparse autoencoder on one hook of a run's recording (or of a file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probes.layout import run_of_file
from probes.sae.config import add_arguments as sae_arguments
from rl_lab.cli.options import add_runs_dir, runs_dir
from rl_lab.config import SB3_ALGOS
from rl_lab.errors import LabError
from rl_lab.runs import Run, RunStore, read_run_json

HELP = "train a sparse autoencoder (TopK or ReLU) on one hook; with a run, also splice it into the live agent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_FILE", help="a run (its latest recording) or an activation .h5 file")
    sae_arguments(parser, file_arg=False)
    parser.add_argument("--live-episodes", type=int, default=10,
                        help="episodes per condition for the live splice (0 skips it; default: 10)")
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
    from probes.sae.model import update_metrics
    from probes.sae.training import format_metrics, run_from_args
    from rl_lab.train import tqdm_progress

    h5, run_ = _resolve(args.target, args)
    metrics = run_from_args(args, file=h5)
    out_dir = Path(metrics["out_dir"])
    if run_ is not None and args.live_episodes > 0 and run_.info.get("algo") in SB3_ALGOS:
        from rl_lab.sae_splice import splice_metrics

        print(f"splicing the SAE into the live agent ({args.live_episodes} episodes per condition)",
              file=sys.stderr)
        progress, close = tqdm_progress("splice")
        try:
            live = splice_metrics(run_, out_dir, h5, episodes=args.live_episodes, seed=args.seed,
                                  progress=progress)
        finally:
            close()
        metrics = update_metrics(out_dir, **live)
        metrics["out_dir"] = str(out_dir)
    if args.json:
        print(json.dumps(metrics, sort_keys=True, default=float))
        return 0
    print(format_metrics(metrics))
    if "return_clean" in metrics:
        rec = metrics.get("return_recovered")
        print(f"  live agent: return clean {metrics['return_clean']:.3f}, spliced {metrics['return_spliced']:.3f}, "
              f"mean-ablated {metrics['return_mean_ablated']:.3f}; return recovered "
              + (f"{rec:.2f}" if rec is not None else "undefined") +
              (f"; policy KL spliced {metrics['kl_spliced']:.4f} vs mean-ablated {metrics['kl_mean_ablated']:.4f}"
               if metrics.get("kl_spliced") is not None else ""))
        if metrics.get("live_note"):
            print(f"  note: {metrics['live_note']}")
    return 0
