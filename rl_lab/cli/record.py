"""``rl-lab record``: roll a run's policy out and record activations + labels to HDF5."""

from __future__ import annotations

import argparse

from rl_lab.cli.options import add_device, add_runs_dir, positive_int, runs_dir, seed, trust_checkpoint_arg

HELP = "record a trained policy's activations and emotion labels to RUN/activations/<checkpoint>.h5"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run name (or path to a run directory)")
    parser.add_argument("--episodes", type=positive_int, default=None,
                        help="episodes to record (default: 20; with --replay, all of the replayed recording's)")
    parser.add_argument("--checkpoint", default="latest",
                        help="latest (default), all, a training step, or a checkpoint file")
    parser.add_argument("--seed", type=seed, default=None, help="seed of the rollouts (default: 0)")
    parser.add_argument("--trust", action="store_true",
                        help="load a --checkpoint file from outside the run's checkpoints folder (checkpoints "
                             "are pickled: only pass files you trust)")
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action")
    # default None: rl_lab.record.DEFAULT_N_ENVS, read in run() so that --help does not load torch
    parser.add_argument("--n-envs", type=positive_int, default=None, metavar="N",
                        help="environments stepped together, one batched forward pass per step (default: 8); "
                             "episode i still uses seed+i and episodes are written in order, so deterministic "
                             "recordings equal --n-envs 1; a dt/bc run is recorded one environment at a time")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing recording")
    parser.add_argument("--reference-critic", metavar="RUN2", default=None,
                        help="compute value, td_error, hope, fear and every other value-derived label with RUN2's "
                             "critic (its latest checkpoint) on the same observations, so that networks compared "
                             "share one critic (default: the run's own; a dt/bc run's source run)")
    parser.add_argument("--replay", metavar="BEHAVIOUR", default=None,
                        help="record the network on run BEHAVIOUR's latest recorded episodes instead of its own: "
                             "each is replayed with its seed and actions (RUN's policy never acts), into "
                             "RUN/activations/replay/BEHAVIOUR/, so that networks compared are probed on the same "
                             "situations; BEHAVIOUR's policy plays the calibration episodes")
    # default None: rl_lab.labels.CALIBRATION_EPISODES, read in run() so that --help does not load numpy
    parser.add_argument("--calibration-episodes", type=positive_int, default=None, metavar="N",
                        help="episodes rolled out first (seeds disjoint from the recorded ones, not stored) whose "
                             "value mean and std standardise hope and fear (default: 5)")
    add_device(parser)
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.devices import resolve_device
    from rl_lab.errors import LabError
    from rl_lab.labels import CALIBRATION_EPISODES
    from rl_lab.record import DEFAULT_N_ENVS, record_run
    from rl_lab.train import tqdm_progress

    args.device = resolve_device(args.device)  # before anything is created
    trust_checkpoint_arg(args)
    if args.replay is not None:
        given = [flag for flag, value in (("--seed", args.seed), ("--n-envs", args.n_envs),
                                          ("--deterministic", args.deterministic or None)) if value is not None]
        if given:
            raise LabError(f"{given[0]} does not apply with --replay: the replayed episodes keep their seeds "
                           "and actions")

    paths = record_run(
        args.run, runs_dir(args), checkpoint=args.checkpoint,
        episodes=args.episodes if args.episodes or args.replay else 20, seed=args.seed or 0,
        deterministic=args.deterministic, overwrite=args.overwrite, progress_factory=tqdm_progress,
        reference_critic=args.reference_critic,
        calibration_episodes=args.calibration_episodes or CALIBRATION_EPISODES,
        n_envs=args.n_envs or DEFAULT_N_ENVS, device=args.device, replay=args.replay,
    )
    for path in paths:
        print(path)
    return 0
