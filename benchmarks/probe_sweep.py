"""Speed and memory of the linear probe sweep against scikit-learn on the same splits.

    python benchmarks/probe_sweep.py [FILE.h5]

Without an argument, writes a synthetic file (``N_STEPS`` = 20k steps, 6 hooks x 64 dims,
10 labels of which 4 discrete). Like for like: times the lab's MAIN probe of every label on
``BENCH_HOOKS`` hooks (same CV grids and episode folds, held-out scoring; no baselines) against
scikit-learn's StandardScaler + Ridge / LogisticRegression with GridSearchCV over the same folds
(``speedup_vs_sklearn``), and checks the held-out scores agree to 1e-3. Separately times the
full lab sweep ``probes.linear.probe_file`` on the same hooks (raw observation, random weights,
control task, bootstrap: ``full_sweep_seconds``). Then measures peak RSS of the sweep in a
subprocess on the file and on one 4x longer.
The last line is one JSON object.

BLAS is pinned to one thread (before numpy loads) for both the lab and scikit-learn: on a
shared 2-core machine, OpenBLAS threads spinning against other processes slow small matrix
products down by an order of magnitude and make the timings meaningless.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the scikit-learn reference

from probes.activations import ActivationFile, ActivationWriter  # noqa: E402
from probes.linear import MAX_LOGISTIC_ROWS, fit_source, probe_file, scan_labels  # noqa: E402
from probes.results import ProbeResults  # noqa: E402
from probes.splits import split_episodes, unique_episodes  # noqa: E402
from sklearn_reference import sklearn_scores  # noqa: E402

BENCH_HOOKS = 2
N_STEPS = 20_000
N_HOOKS, DIM, EP_LEN = 6, 64, 250


def make_file(path: Path, n_steps: int, seed: int = 0) -> None:
    """Synthetic recording: labels are noisy linear/nonlinear functions of a latent state."""
    rng = np.random.default_rng(seed)
    n_latent = 12
    mix = [rng.normal(size=(n_latent, DIM)) for _ in range(N_HOOKS)]
    meta = {f"c{i}": {"kind": "continuous", "description": f"continuous {i}", "linear_in": []} for i in range(6)}
    meta |= {f"d{i}": {"kind": "discrete", "description": f"discrete {i}", "linear_in": []} for i in range(4)}
    meta["c0"]["linear_in"] = ["hook_5"]
    with ActivationWriter(path, {"run": "bench", "checkpoint": path.stem, "step": n_steps}, meta) as w:
        for e in range(n_steps // EP_LEN):
            z = np.cumsum(rng.normal(size=(EP_LEN, n_latent)) * 0.3, axis=0) + rng.normal(size=n_latent)
            acts = {f"hook_{h}": np.tanh(z @ mix[h] * 0.3) + 0.3 * rng.normal(size=(EP_LEN, DIM)) for h in range(N_HOOKS)}
            labels = {f"c{i}": z[:, i] + 0.5 * rng.normal(size=EP_LEN) for i in range(6)}
            labels["c0"] = acts["hook_5"][:, :4].sum(axis=1)
            labels["d0"] = (z[:, 6] > 0).astype(np.int64)
            labels["d1"] = (z[:, 7] + rng.normal(size=EP_LEN) > 0.5).astype(np.int64)
            labels["d2"] = np.digitize(z[:, 8], [-0.5, 0.5])
            labels["d3"] = np.digitize(z[:, 9] + z[:, 10], [-1.0, 1.0])
            w.append(
                {"obs": z[:, :8].astype(np.float32) + rng.normal(size=(EP_LEN, 8)).astype(np.float32),
                 "action": rng.integers(0, 4, EP_LEN), "reward": np.zeros(EP_LEN), "done": np.arange(EP_LEN) == EP_LEN - 1,
                 "episode": np.full(EP_LEN, e), "t": np.arange(EP_LEN)},
                labels, acts, {k: rng.normal(size=v.shape) for k, v in acts.items()},
            )


def lab_main_scores(path: Path, hooks: list[str]) -> dict[tuple[str, str], float]:
    """The lab's main probe only (what scikit-learn is timed on): every label on each hook."""
    notes: list[str] = []
    out: dict[tuple[str, str], float] = {}
    with ActivationFile(path) as f:
        split = split_episodes(unique_episodes(f), seed=0)
        plans = scan_labels(f, f.labels, split, notes)
        for hook in hooks:
            res = fit_source(
                f, ("acts", hook), plans, split, with_control=False, seed=0, n_bootstrap=200,
                max_logistic_rows=MAX_LOGISTIC_ROWS, notes=notes,
            )
            out.update({(hook, label): r.score for label, r in res.items()})
    return out


def peak_rss_mb(path: Path, hooks: list[str]) -> float:
    """Peak RSS (MB) of a fresh interpreter running the sweep on ``path``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    code = (
        "import sys; from probes.linear import probe_file; "
        f"probe_file(sys.argv[1], hooks={hooks!r}, n_bootstrap=200)"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:  # ru_maxrss of children is a max over all children so far
        raise RuntimeError("child peak RSS not above earlier children; run the small file first")
    return after / 1024.0


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="probe_sweep_"))
    if len(sys.argv) > 1:
        small = Path(sys.argv[1])
        large = None
    else:
        small = tmp / "small.h5"
        make_file(small, N_STEPS)
        large = tmp / "large.h5"
        make_file(large, 4 * N_STEPS, seed=1)
    with ActivationFile(small) as f:
        hooks = f.hooks[:BENCH_HOOKS]
        n_steps, labels = f.n, f.labels

    t0 = time.perf_counter()
    main_scores = lab_main_scores(small, hooks)
    lab_s = time.perf_counter() - t0
    print(f"lab main probe on {len(hooks)} hooks x {len(labels)} labels: {lab_s:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    doc = probe_file(small, hooks=hooks, n_bootstrap=200)
    full_s = time.perf_counter() - t0
    print(f"lab full sweep (with all baselines and bootstrap): {full_s:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    ref = sklearn_scores(small, hooks=hooks)
    sk_s = time.perf_counter() - t0
    print(f"sklearn (main probe only): {sk_s:.1f} s", file=sys.stderr)
    diffs = [abs(r.score - ref[(r.hook, r.label)]) for r in ProbeResults.from_dict(doc).records]
    diffs += [abs(s - ref[key]) for key, s in main_scores.items()]
    max_diff = max(diffs)
    result = {
        "name": "probe_sweep",
        "n_steps": n_steps,
        "n_hooks_timed": len(hooks),
        "n_labels": len(labels),
        "lab_main_probe_seconds": round(lab_s, 2),
        "sklearn_main_probe_seconds": round(sk_s, 2),
        "full_sweep_seconds": round(full_s, 2),
        "speedup_vs_sklearn": round(sk_s / lab_s, 2),
        "max_abs_score_diff": float(f"{max_diff:.2e}"),
        "scores_agree_1e-3": bool(max_diff <= 1e-3),
    }
    if large is not None:
        result["peak_rss_mb_small"] = round(peak_rss_mb(small, hooks), 1)
        result["peak_rss_mb_large"] = round(peak_rss_mb(large, hooks), 1)
        result["large_n_steps"] = 4 * N_STEPS
        print("\n".join(f"{k}: {v}" for k, v in result.items()), file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
