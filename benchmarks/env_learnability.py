"""Is every lab env learnable in a demo-sized budget? PPO (SB3 defaults) vs a random policy.

    python benchmarks/env_learnability.py                  # all lab envs, 50k steps each
    python benchmarks/env_learnability.py --env lab/Forage-v0 --steps 30000 --kwargs '{"size": 5}'

Trains PPO (``MlpPolicy``, default hyperparameters, fixed seed) on each env, then runs the
trained policy (sampling its actions, and greedily) and a uniform-random policy for
``--episodes`` episodes each on the same evaluation seeds. Prints one line per env and,
last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import envs


# The lab's own PPO settings for a small budget (rl_lab.config.TrainConfig's defaults).
LAB_HPARAMS = {"n_envs": 4, "n_steps": 256, "batch_size": 256, "ent_coef": 0.01}


def evaluate(env_id: str, kwargs: dict, policy, episodes: int, seed: int) -> dict[str, float]:
    """Mean return (with its standard error) and mean length of ``policy(obs) -> action``."""
    env = envs.make(env_id, **kwargs)
    returns, lengths = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total, t = False, 0.0, 0
        while not done:
            obs, r, terminated, truncated, _ = env.step(policy(obs))
            total += r
            t += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(t)
    arr = np.asarray(returns)
    return {
        "return": round(float(arr.mean()), 3),
        "se": round(float(arr.std(ddof=1) / np.sqrt(len(arr))), 3),
        "length": round(float(np.mean(lengths)), 1),
    }


def run(env_id: str, kwargs: dict, steps: int, episodes: int, seed: int, hparams: str) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if hparams == "lab":
        algo_kwargs = {k: v for k, v in LAB_HPARAMS.items() if k != "n_envs"}
        env = make_vec_env(lambda: envs.make(env_id, **kwargs), n_envs=LAB_HPARAMS["n_envs"], seed=seed)
    else:
        algo_kwargs = {}
        env = envs.make(env_id, **kwargs)
    model = PPO("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **algo_kwargs)
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - t0
    action_space = envs.make(env_id, **kwargs).action_space
    action_space.seed(seed)
    eval_seed = 10_000 + seed
    rand = evaluate(env_id, kwargs, lambda o: action_space.sample(), episodes, eval_seed)
    ppo = evaluate(env_id, kwargs, lambda o: int(model.predict(o, deterministic=False)[0]), episodes, eval_seed)
    greedy = evaluate(env_id, kwargs, lambda o: int(model.predict(o, deterministic=True)[0]), episodes, eval_seed)
    return {
        "env_id": env_id,
        "kwargs": kwargs,
        "hparams": hparams,
        "steps": steps,
        "train_seconds": round(train_s, 1),
        "random": rand,
        "ppo": ppo,
        "ppo_greedy": greedy,
        "better_than_random": ppo["return"] - 2 * ppo["se"] > rand["return"] + 2 * rand["se"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="env id (repeatable); default: every lab env")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kwargs", default="{}", help="JSON env kwargs applied to every env")
    parser.add_argument(
        "--hparams", choices=("default", "lab"), default="default",
        help="PPO settings: SB3's defaults on one env, or the lab's (4 envs, n_steps 256, ent_coef 0.01)",
    )
    args = parser.parse_args()
    kwargs = json.loads(args.kwargs)
    results = []
    for env_id in args.env or envs.LAB_ENV_IDS:
        res = run(env_id, kwargs, args.steps, args.episodes, args.seed, args.hparams)
        results.append(res)
        rand, ppo, greedy = res["random"], res["ppo"], res["ppo_greedy"]
        print(
            f"{env_id:16s} random {rand['return']:+7.3f}±{rand['se']:.3f} (len {rand['length']:.0f})  "
            f"ppo {ppo['return']:+7.3f}±{ppo['se']:.3f} (len {ppo['length']:.0f})  "
            f"greedy {greedy['return']:+7.3f} (len {greedy['length']:.0f})  "
            f"train {res['train_seconds']}s  better={res['better_than_random']}",
            flush=True,
        )
    print(json.dumps({"name": "env_learnability", "results": results}))


if __name__ == "__main__":
    main()
