"""``rl-lab train``: train an agent into a new run directory (or resume one)."""

from __future__ import annotations

import argparse
import json
import sys

from rl_lab.cli.options import add_device, add_runs_dir, nonnegative_float, nonnegative_int, positive_float, positive_int, runs_dir, seed
from rl_lab.config import DT_ALGOS, POLICIES, TRANSFORMER_ALGOS
from rl_lab.errors import LabError
from rl_lab.runs import RunStore

RL_STEPS = 50_000
DT_STEPS = 2_000

HELP = "train an agent (PPO, A2C, DQN; or a decision transformer from a run's trajectories)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default=None,
                        help="Gymnasium id (default: lab/Forage-v0; dt/bc take the source run's)")
    parser.add_argument("--algo", default="ppo",
                        help="ppo, a2c, dqn or recurrent-ppo (an LSTM policy, sb3-contrib); or dt (decision "
                             "transformer) / bc (behaviour cloning) with --from RUN (default: ppo)")
    parser.add_argument("--policy", default="mlp", choices=POLICIES,
                        help="ppo/a2c network: mlp, transformer (the BC transformer over the last --context "
                             "steps, shaped by --d-model, --layers, --heads), or cnn (a small CNN on image "
                             "observations, e.g. MiniGrid with --env-kwargs '{\"obs\": \"image\"}') (default: mlp)")
    parser.add_argument("--separate-critic", action="store_true",
                        help="--policy transformer: the critic reads its own trunk of the same shape "
                             "(recorded as critic.<hook>) instead of sharing the actor's")
    parser.add_argument("--mlp-critic", action="store_true",
                        help="--policy transformer: the critic is PPO-MLP's (a 64-64 Tanh MLP over the current "
                             "observation, recorded as critic.value_net.<i>) instead of a transformer trunk")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="PPO: passes over each rollout (default: SB3's 10)")
    parser.add_argument("--target-kl", type=positive_float, default=None,
                        help="PPO: end a rollout's passes early once the approximate KL of the update passes "
                             "1.5 x this (SB3's target_kl; default: no limit)")
    parser.add_argument("--ent-coef", type=nonnegative_float, default=0.0,
                        help="PPO/A2C: entropy bonus (default: 0)")
    parser.add_argument("--lstm-hidden", type=positive_int, default=64,
                        help="recurrent-ppo: LSTM hidden size (default: 64)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"environment steps (default: {RL_STEPS}); for dt/bc, gradient steps "
                             f"(default: {DT_STEPS})")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    parser.add_argument("--name", default=None, help="run name (default: <env>-<algo>-s<seed>-<time>)")
    parser.add_argument("--resume", metavar="RUN", default=None, help="continue RUN from its last checkpoint")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="learning rate (default: the algorithm's; dt/bc: 0.001)")
    parser.add_argument("--n-envs", type=positive_int, default=4, help="parallel environments (default: 4)")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount factor (default: 0.99)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=None,
                        help="steps between checkpoints (default: 10000; dt/bc: 500)")
    parser.add_argument("--env-kwargs", default="{}", metavar="JSON",
                        help='environment options as JSON, e.g. \'{"interoception": false}\'')
    add_device(parser)
    parser.add_argument("--save-replay-buffer", action="store_true",
                        help="dqn: keep the replay buffer beside the newest checkpoint so that --resume continues "
                             "with it (as large as the buffer; stored in the run's config)")
    dt = parser.add_argument_group("decision transformer / behaviour cloning (--algo dt|bc); --context, --d-model, "
                                   "--layers and --heads also shape --policy transformer")
    dt.add_argument("--from", dest="source", metavar="RUN", default=None,
                    help="the RL run whose checkpoints (plus a random policy) give the offline trajectories")
    dt.add_argument("--context", type=positive_int, default=10, help="K, timesteps of context (default: 10)")
    dt.add_argument("--batch-size", type=positive_int, default=None,
                    help="dt/bc: windows per step (default: 64); ppo, recurrent-ppo, dqn: minibatch size "
                         "(default: 64, or less when the rollout does not divide by it)")
    dt.add_argument("--d-model", type=positive_int, default=64, help="residual width (default: 64)")
    dt.add_argument("--layers", type=positive_int, default=2, help="transformer blocks (default: 2)")
    dt.add_argument("--heads", type=positive_int, default=2, help="attention heads (default: 2)")
    dt.add_argument("--trajectories", default="default", metavar="NAME",
                    help="trajectory file RUN/trajectories/NAME.h5, collected if missing (default: default)")
    dt.add_argument("--source-checkpoints", default=None, metavar="STEPS",
                    help="collect from only these checkpoints of the --from run: comma-separated training steps "
                         "or latest, e.g. latest or 800000,1600000 (default: every checkpoint); name the file "
                         "with --trajectories")
    dt.add_argument("--no-random-policy", dest="random_policy", action="store_false",
                    help="collect from the source checkpoints alone, without the uniformly random policy's "
                         "episodes (to imitate one agent's behaviour, e.g. --source-checkpoints latest)")
    dt.add_argument("--episodes-per-policy", type=positive_int, default=20,
                    help="episodes per source checkpoint when collecting (default: 20)")
    dt.add_argument("--eval-episodes", type=nonnegative_int, default=5,
                    help="episodes per target return in the final evaluation, 0 for none (default: 5)")
    dt.add_argument("--patience", type=nonnegative_int, default=20,
                    help="stop after this many metrics lines (50 steps each) without a lower loss on held-out "
                         "episodes, and end on the best weights; 0 trains every step and keeps the last (default: 20)")
    add_runs_dir(parser)


def run(args: argparse.Namespace) -> int:
    from rl_lab.config import TrainConfig
    from rl_lab.train import tqdm_progress, train

    if args.policy != "mlp" and args.algo not in TRANSFORMER_ALGOS:
        raise LabError(f"--policy {args.policy} is for --algo {' or '.join(TRANSFORMER_ALGOS)}, not {args.algo}"
                       + (" (dt and bc are transformers already)" if args.algo in DT_ALGOS else ""))
    from rl_lab.devices import resolve_device

    args.device = resolve_device(args.device)  # before anything is created
    if args.save_replay_buffer and args.algo != "dqn" and args.resume is None:
        raise LabError(f"--save-replay-buffer is for --algo dqn, not {args.algo}")
    if args.algo in DT_ALGOS:
        return _run_dt(args)
    if args.source is not None:
        raise LabError(f"--from is for --algo dt or bc, not {args.algo}")
    if args.source_checkpoints is not None:
        raise LabError(f"--source-checkpoints is for --algo dt or bc, not {args.algo}")
    if not args.random_policy:
        raise LabError(f"--no-random-policy is for --algo dt or bc, not {args.algo}")
    if args.resume is not None and args.name is not None:
        raise LabError("--name names a new run; --resume continues RUN under its own name")
    env_id = args.env or "lab/Forage-v0"
    # On --resume without --steps, 0 keeps the run's own target (rl_lab.train.train).
    steps = args.steps if args.steps is not None else (0 if args.resume is not None else RL_STEPS)
    checkpoint_every = args.checkpoint_every if args.checkpoint_every is not None else 10_000

    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as exc:
        raise LabError(f"--env-kwargs is not valid JSON: {exc}") from None
    if not isinstance(env_kwargs, dict):
        raise LabError("--env-kwargs must be a JSON object")
    if not 0.0 < args.gamma <= 1.0:
        raise LabError(f"--gamma must be in (0, 1], got {args.gamma}")
    cfg = TrainConfig(
        env_id=env_id, algo=args.algo, total_timesteps=steps, seed=args.seed,
        learning_rate=args.lr, n_envs=args.n_envs, gamma=args.gamma,
        checkpoint_every=checkpoint_every, env_kwargs=env_kwargs, policy=args.policy, context=args.context,
        d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, lstm_hidden=args.lstm_hidden,
        separate_critic=args.separate_critic, mlp_critic=args.mlp_critic, batch_size=args.batch_size,
        n_epochs=args.epochs, target_kl=args.target_kl, ent_coef=args.ent_coef,
        device=args.device, save_replay_buffer=args.save_replay_buffer,
    )
    progress, close = tqdm_progress(f"train {args.algo} on {env_id}")
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


def _run_dt(args: argparse.Namespace) -> int:
    """``--algo dt|bc --from RUN``: train a sequence model on the source run's trajectories."""
    from rl_lab.dt.evaluate import format_table
    from rl_lab.dt.train import DTTrainConfig, train_dt
    from rl_lab.train import tqdm_progress

    if args.source is None:
        raise LabError(f"--algo {args.algo} needs --from RUN (the RL run whose trajectories it learns from)")
    if args.resume is not None:
        raise LabError(f"--resume is not supported for --algo {args.algo}; train a new run instead")
    if args.patience < 0:
        raise LabError(f"--patience must be 0 (no early stopping) or positive, got {args.patience}")
    from probes.layout import safe_component

    safe_component(args.trajectories, "trajectories name")
    source_checkpoints = None
    if args.source_checkpoints is not None:
        from rl_lab.dt.trajectories import parse_checkpoint_steps

        source_checkpoints = parse_checkpoint_steps(args.source_checkpoints)
    if args.name is not None:
        from rl_lab.runs import check_run_name

        check_run_name(args.name)
    if args.env_kwargs.strip() not in ("", "{}"):
        raise LabError(f"--env-kwargs does not apply to --algo {args.algo}: it uses the source run's environment")
    source = RunStore(runs_dir(args)).get(args.source)
    if args.env is not None and args.env != source.info.get("env_id"):
        raise LabError(f"--env {args.env} differs from the source run's environment {source.info.get('env_id')}")
    cfg = DTTrainConfig(
        algo=args.algo, source_run=str(args.source), steps=args.steps or DT_STEPS, context=args.context,
        batch_size=args.batch_size or 64, learning_rate=args.lr if args.lr is not None else 1e-3,
        d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_mlp=4 * args.d_model,
        seed=args.seed, trajectories=args.trajectories, episodes_per_policy=args.episodes_per_policy,
        source_checkpoints=source_checkpoints, random_policy=args.random_policy,
        checkpoint_every=args.checkpoint_every or 500, eval_episodes=max(0, args.eval_episodes),
        patience=args.patience, restore_best=args.patience > 0, device=args.device,
    )
    collect_progress, close_collect = tqdm_progress(f"collect trajectories from {source.name}")
    progress, close = tqdm_progress(f"train {args.algo} from {source.name}")
    try:
        result = train_dt(cfg, runs_dir(args), name=args.name, progress=progress, collect_progress=collect_progress)
    finally:
        close_collect()
        close()
    metrics = [m for m in result.metrics() if "loss" in m]
    last = metrics[-1] if metrics else {}
    print(f"run {result.name}: {result.status}, {result.info.get('steps_done')} steps"
          + (f", loss {last['loss']:.3f}, action accuracy {last['accuracy']:.3f}" if last else "")
          + (f"; held-out episodes: loss {last['val_loss']:.3f}, accuracy {last['val_accuracy']:.3f}"
             if "val_loss" in last else ""))
    if result.info.get("stopped_early_at") is not None:
        print(f"stopped early at step {result.info['stopped_early_at']}: no lower held-out loss for "
              f"{cfg.patience} metrics lines")
    if cfg.restore_best and result.info.get("best_step") is not None:
        print(f"kept the weights of step {result.info['best_step']} (lowest held-out loss "
              f"{result.info['best_val_loss']:.3f})")
    if cfg.eval_episodes and result.eval_path.exists():
        print(format_table(json.loads(result.eval_path.read_text())))
    print(f"run directory: {result.path}")
    sys.stdout.flush()
    return 0
