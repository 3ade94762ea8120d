"""``rl-lab train``: train an agent into a new run directory (or resume one)."""

from __future__ import annotations

import argparse
import json
import sys

from rl_lab.cli._common import add_runs_dir, positive_int, runs_dir

HELP = "train an agent (PPO, A2C, DQN; or a decision transformer from a run's trajectories)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="lab/Forage-v0", help="Gymnasium id (default: lab/Forage-v0)")
    parser.add_argument("--algo", default="ppo", help="ppo, a2c or dqn (default: ppo)")
    parser.add_argument("--steps", type=positive_int, default=50_000, help="environment steps (default: 50000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--name", default=None, help="run name (default: <env>-<algo>-s<seed>-<time>)")
    parser.add_argument("--resume", metavar="RUN", default=None, help="continue RUN from its last checkpoint")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the algorithm's)")
    parser.add_argument("--n-envs", type=positive_int, default=4, help="parallel environments (default: 4)")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount factor (default: 0.99)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=10_000,
                        help="steps between checkpoints (default: 10000)")
    parser.add_argument("--env-kwargs", default="{}", metavar="JSON",
                        help='environment options as JSON, e.g. \'{"interoception": false}\'')
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.config import TrainConfig
    from rl_lab.errors import LabError
    from rl_lab.train import tqdm_progress, train

    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as exc:
        raise LabError(f"--env-kwargs is not valid JSON: {exc}") from None
    if not isinstance(env_kwargs, dict):
        raise LabError("--env-kwargs must be a JSON object")
    if not 0.0 < args.gamma <= 1.0:
        raise LabError(f"--gamma must be in (0, 1], got {args.gamma}")
    cfg = TrainConfig(
        env_id=args.env, algo=args.algo, total_timesteps=args.steps, seed=args.seed,
        learning_rate=args.lr, n_envs=args.n_envs, gamma=args.gamma,
        checkpoint_every=args.checkpoint_every, env_kwargs=env_kwargs,
    )
    progress, close = tqdm_progress(f"train {args.algo} on {args.env}")
    try:
        result = train(cfg, runs_dir(args), name=args.name, resume=args.resume, progress=progress)
    finally:
        close()
    summary = result.summary()
    ret = summary["latest_return"]
    print(f"run {result.name}: {summary['status']}, {summary['steps_done']} steps, "
          f"latest mean return {ret:.3f}" if ret is not None else
          f"run {result.name}: {summary['status']}, {summary['steps_done']} steps")
    print(f"run directory: {result.path}")
    sys.stdout.flush()
    return 0
