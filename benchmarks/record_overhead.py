"""Recording overhead: the same trained policy, the same episodes, with and without recording.

Bare rollout: ``model.predict`` + ``env.step`` per step. Recorded rollout: ``rl_lab.record.record``
(every hook, the random-weights twin, all labels, text renders, HDF5 writes). Both use the same
episode seeds, so they take the same steps. Prints ``overhead_ratio`` (target <= 1.3).

Vectorised recording: the same agent and seeds recorded with deterministic actions by the sequential
recorder (``n_envs=1``) and with ``--n-envs 8`` (``rl_lab.record.rollouts``); prints
``vectorised_speedup`` (episodes per second, vectorised / sequential; target >= 5) and checks that
the two files hold identical ``/acts``, ``/labels`` and ``/steps``.

    python benchmarks/record_overhead.py [--episodes 30] [--repeats 3] [--vec-episodes 64] [--vectorised-only]

``--vectorised-only`` skips the overhead comparison (its keys are left out of the JSON line).
``vectorised_cpu_speedup`` is the same ratio in process CPU seconds, which a loaded machine disturbs less.
``rollout_only_speedup`` is the ratio of the rollouts alone (acting and stepping the same episodes,
nothing recorded): what the vectorised recorder would reach if recording cost nothing, so an upper
bound on ``vectorised_speedup``. ``recording_cpu_us_per_row`` is what the vectorised recorder spends
per row beyond its rollouts (the forward passes of the network, its twins and the reference critic,
the labels, the HDF5 writes, the value calibration), a cost batching the environments cannot share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from probes.activations import ActivationFile
from rl_lab.adapters import SB3Adapter, load_sb3
from rl_lab.config import TrainConfig
from rl_lab.record import _make_recording_env, record, rollouts
from rl_lab.train import make_env, train


def bare_rollout(model, env_id: str, episodes: int, seed: int) -> tuple[float, int]:
    env = make_env(env_id)
    torch.manual_seed(seed)
    steps = 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            steps += 1
    elapsed = time.perf_counter() - t0
    env.close()
    return elapsed, steps


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by its path."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def identical(a: Path, b: Path) -> bool:
    """Whether two recordings hold the same datasets with equal values (NaN equal to NaN)."""
    da, db = datasets(a), datasets(b)
    if da.keys() != db.keys():
        return False
    return all(np.array_equal(da[k], db[k], equal_nan=da[k].dtype.kind == "f") for k in da)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=8192)
    parser.add_argument("--vec-episodes", type=int, default=64, help="episodes of the vectorised comparison")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--vectorised-only", action="store_true",
                        help="measure only vectorised_speedup (skip the bare vs recorded overhead)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = Path(tempfile.mkdtemp(prefix="bench-record-"))
    run = train(TrainConfig(env_id="lab/Forage-v0", total_timesteps=args.train_steps, seed=0), root, name="bench")
    ckpt = run.latest_checkpoint()
    torch.set_num_threads(1)  # training set its own thread count; rollouts are single-sample
    model = load_sb3(run, ckpt)
    adapter = SB3Adapter(model)  # loaded once, like the bare rollout's model

    record(run, ckpt, episodes=1, seed=0, out=root / "warmup.h5", adapter=adapter)  # one-time imports, not recording cost
    bare, recorded, n_steps = [], [], 0
    for i in range(0 if args.vectorised_only else args.repeats):
        elapsed, n_steps = bare_rollout(model, "lab/Forage-v0", args.episodes, seed=0)
        bare.append(elapsed)
        out = root / f"rec{i}.h5"
        t0 = time.perf_counter()
        record(run, ckpt, episodes=args.episodes, seed=0, out=out, adapter=adapter)
        recorded.append(time.perf_counter() - t0)
        with ActivationFile(out) as f:
            rec_steps, n_hooks = f.n, len(f.hooks)
    det_adapter = SB3Adapter(model, deterministic=True)
    seq, vec, seq_cpu, vec_cpu = [], [], [], []  # wall and process CPU seconds (CPU: robust on a loaded machine)
    for i in range(args.repeats):
        for n, times, cpu in ((1, seq, seq_cpu), (args.n_envs, vec, vec_cpu)):
            t0, c0 = time.perf_counter(), time.process_time()
            record(run, ckpt, episodes=args.vec_episodes, seed=0, deterministic=True, out=root / f"det{n}-{i}.h5",
                   adapter=det_adapter, n_envs=n)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    # The rollouts alone (acting and stepping, nothing recorded), in CPU seconds: the ratio the
    # vectorised recorder would reach if recording cost nothing, an upper bound on its speedup.
    roll_cpu: dict[int, list[float]] = {1: [], args.n_envs: []}
    env_kwargs = run.info.get("config", {}).get("env_kwargs") or {}
    renders = getattr(_make_recording_env("lab/Forage-v0", env_kwargs), "render_mode", None) == "ansi"
    for _ in range(args.repeats):
        for n in roll_cpu:
            env_list = [_make_recording_env("lab/Forage-v0", env_kwargs) for _ in range(n)]
            c0 = time.process_time()
            rows = sum(len(ep.rewards) for ep in rollouts(env_list, det_adapter, list(range(args.vec_episodes)), renders))
            roll_cpu[n].append(time.process_time() - c0)
    seq_roll, vec_roll = (statistics.median(v) for v in roll_cpu.values())
    seq_c, vec_c = statistics.median(seq_cpu), statistics.median(vec_cpu)
    same = identical(root / "det1-0.h5", root / f"det{args.n_envs}-0.h5")
    seq_s, vec_s = statistics.median(seq), statistics.median(vec)
    overhead: dict = {}
    if not args.vectorised_only:
        bare_s, rec_s = statistics.median(bare), statistics.median(recorded)
        print(f"bare rollout     : {bare_s:.3f}s for {n_steps} steps ({n_steps / bare_s:.0f} steps/s)")
        print(f"recorded rollout : {rec_s:.3f}s for {rec_steps} steps, {n_hooks} hooks + random-weights twin, "
              f"{rec_steps / rec_s:.0f} steps/s")
        overhead = {"steps": rec_steps, "bare_s": round(bare_s, 4), "recorded_s": round(rec_s, 4),
                    "overhead_ratio": round(rec_s / bare_s, 3)}
    print(f"deterministic    : {args.vec_episodes} episodes in {seq_s:.3f}s sequential, {vec_s:.3f}s with "
          f"{args.n_envs} envs ({args.vec_episodes / seq_s:.1f} vs {args.vec_episodes / vec_s:.1f} episodes/s); "
          f"files identical: {same}")
    print(f"per row (CPU µs): acting+stepping {seq_roll / rows * 1e6:.1f} sequential, {vec_roll / rows * 1e6:.1f} "
          f"vectorised; recording (forward passes, labels, HDF5, calibration) {(seq_c - seq_roll) / rows * 1e6:.1f} / "
          f"{(vec_c - vec_roll) / rows * 1e6:.1f}; rollouts alone {seq_roll / vec_roll:.2f}x faster vectorised")
    print(json.dumps({
        "name": "record_overhead",
        **overhead,
        "sequential_episodes_per_s": round(args.vec_episodes / seq_s, 2),
        "vectorised_episodes_per_s": round(args.vec_episodes / vec_s, 2),
        "vectorised_speedup": round(seq_s / vec_s, 3),
        "vectorised_cpu_speedup": round(statistics.median(seq_cpu) / statistics.median(vec_cpu), 3),
        "vectorised_identical": same,
        "rollout_only_speedup": round(seq_roll / vec_roll, 3),
        "recording_cpu_us_per_row": round((vec_c - vec_roll) / rows * 1e6, 1),
    }))


if __name__ == "__main__":
    main()
