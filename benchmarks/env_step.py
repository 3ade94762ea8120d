"""Raw env steps per second: every lab env beside CartPole-v1, in the same run.

    python benchmarks/env_step.py [--steps 100000] [--repeats 3]

The baseline ``cartpole`` is ``gymnasium.make("CartPole-v1")`` as it comes (raw);
``cartpole_lab`` is CartPole made by ``envs.make`` (with the latent wrapper the lab adds).
The lab envs are made by ``envs.make`` (Gymnasium's default wrappers, no more). Each is
stepped with pre-drawn random actions, resetting when an episode ends; the best of
``--repeats`` timings counts. Last line: one JSON object with ``<name>_steps_per_s`` and
``<name>_ratio_vs_cartpole`` (against raw CartPole). Forage must reach at least 1/4 of
CartPole's rate.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np

import envs

ENVS = {
    "cartpole": "CartPole-v1",
    "cartpole_lab": "CartPole-v1",
    "forage": "lab/Forage-v0",
    "binding": "lab/Binding-v0",
    "chain": "lab/Chain-v0",
}


def steps_per_second(name: str, env_id: str, steps: int, repeats: int) -> float:
    env = gym.make(env_id) if name == "cartpole" else envs.make(env_id)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, steps).tolist()
    best = float("inf")
    for rep in range(repeats):
        env.reset(seed=rep)
        step, reset = env.step, env.reset
        t0 = time.perf_counter()
        for a in actions:
            _, _, terminated, truncated, _ = step(a)
            if terminated or truncated:
                reset()
        best = min(best, time.perf_counter() - t0)
    return steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, float | str] = {"name": "env_step"}
    rates = {name: steps_per_second(name, env_id, args.steps, args.repeats) for name, env_id in ENVS.items()}
    for name, rate in rates.items():
        ratio = rate / rates["cartpole"]
        print(f"{name:14s} {ENVS[name]:16s} {rate:10.0f} steps/s  ({ratio:.2f} x raw CartPole)")
        result[f"{name}_steps_per_s"] = round(rate)
    for name, rate in rates.items():
        if name != "cartpole":
            result[f"{name}_ratio_vs_cartpole"] = round(rate / rates["cartpole"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
