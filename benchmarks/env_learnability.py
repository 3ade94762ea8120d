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

import envs


def evaluate(env_id: str, kwargs: dict, policy, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the episode return of ``policy(obs) -> action``."""
    env = envs.make(env_id, **kwargs)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            obs, r, terminated, truncated, _ = env.step(policy(obs))
            total += r
            done = terminated or truncated
        returns.append(total)
    arr = np.asarray(returns)
    return float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(len(arr)))


def run(env_id: str, kwargs: dict, steps: int, episodes: int, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = PPO("MlpPolicy", envs.make(env_id, **kwargs), seed=seed, verbose=0, device="cpu")
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - t0
    action_space = envs.make(env_id, **kwargs).action_space
    action_space.seed(seed)
    eval_seed = 10_000 + seed
    rand_mean, rand_se = evaluate(env_id, kwargs, lambda o: action_space.sample(), episodes, eval_seed)
    ppo_mean, ppo_se = evaluate(env_id, kwargs, lambda o: int(model.predict(o, deterministic=False)[0]), episodes, eval_seed)
    greedy_mean, greedy_se = evaluate(env_id, kwargs, lambda o: int(model.predict(o, deterministic=True)[0]), episodes, eval_seed)
    return {
        "env_id": env_id,
        "kwargs": kwargs,
        "steps": steps,
        "train_seconds": round(train_s, 1),
        "random_return": round(rand_mean, 3),
        "random_se": round(rand_se, 3),
        "ppo_return": round(ppo_mean, 3),
        "ppo_se": round(ppo_se, 3),
        "ppo_greedy_return": round(greedy_mean, 3),
        "ppo_greedy_se": round(greedy_se, 3),
        "better_than_random": ppo_mean - 2 * ppo_se > rand_mean + 2 * rand_se,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="env id (repeatable); default: every lab env")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kwargs", default="{}", help="JSON env kwargs applied to every env")
    args = parser.parse_args()
    kwargs = json.loads(args.kwargs)
    results = []
    for env_id in args.env or envs.LAB_ENV_IDS:
        res = run(env_id, kwargs, args.steps, args.episodes, args.seed)
        results.append(res)
        print(
            f"{env_id:16s} random {res['random_return']:+8.3f}±{res['random_se']:.3f}  "
            f"ppo {res['ppo_return']:+8.3f}±{res['ppo_se']:.3f}  greedy {res['ppo_greedy_return']:+8.3f}  "
            f"train {res['train_seconds']}s  better={res['better_than_random']}",
            flush=True,
        )
    print(json.dumps({"name": "env_learnability", "results": results}))


if __name__ == "__main__":
    main()
