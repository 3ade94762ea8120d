"""The same short trials one after another, then as a sweep on worker processes, in one run.

    python benchmarks/sweep.py [--trials 4] [--workers 2] [--steps 4096] [--episodes 5] [--backend local]

Each trial is lab/Forage-v0 PPO (one seed each) through ``train`` and ``record``.
*Sequential* runs the trials' pipelines in this process one after another (torch imported
beforehand, so no start-up cost is counted; ``train`` uses its own thread setting);
*sweep* is ``rl_lab.sweep.run_sweep`` on ``--workers`` worker processes with one torch
thread each, start-up of the workers included. Both write into fresh run directories.
Last line: one JSON object with ``sequential_s``, ``sweep_s``, ``speedup`` (sequential_s / sweep_s) and the setup.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rl_lab.sweep import run_sweep, trial_job
from rl_lab.sweep.spec import validate
from rl_lab.sweep.stages import run_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    args = parser.parse_args()

    raw = {"name": "bench", "envs": ["lab/Forage-v0"], "algos": ["ppo"], "seeds": list(range(args.trials)),
           "pipeline": ["train", "record"],
           "stages": {"train": {"steps": args.steps, "n_envs": 4, "checkpoint_every": args.steps},
                      "record": {"episodes": args.episodes}}}
    spec = validate(raw)
    import stable_baselines3  # noqa: F401  (imports are not part of the sequential timing)
    import torch  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="rl-lab-bench-") as tmp:
        seq_dir = Path(tmp) / "sequential"
        t0 = time.perf_counter()
        for i, trial in enumerate(spec.trials()):
            result = run_trial(trial_job(spec, trial, seq_dir, f"{i + 1}/{args.trials}"))
            assert all(s["status"] == "done" for s in result["stages"].values()), result
        sequential = time.perf_counter() - t0

        t0 = time.perf_counter()
        record = run_sweep(spec, Path(tmp) / "sweep", backend=args.backend, workers=args.workers,
                           log=lambda m: print(m, file=sys.stderr))
        sweep = time.perf_counter() - t0
        assert record["summary"]["done"] == args.trials, record["summary"]

    print(f"sequential: {sequential:.1f} s   sweep ({args.workers} workers, {args.backend}): {sweep:.1f} s   "
          f"speedup {sequential / sweep:.2f}x on {os.cpu_count()} cores")
    print(json.dumps({"name": "sweep", "trials": args.trials, "workers": args.workers, "backend": args.backend,
                      "steps_per_trial": args.steps, "cores": os.cpu_count(),
                      "sequential_s": round(sequential, 2), "sweep_s": round(sweep, 2),
                      "speedup": round(sequential / sweep, 3)}))


if __name__ == "__main__":
    main()
