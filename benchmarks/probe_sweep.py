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
Then, on a synthetic demo-sized decision-transformer file (``make_dt_file``: 4,607 rows, the 9
hooks of the demo's DT, 40-256 dims, 29 labels), times ``python -m probes.linear FILE`` with every
hook and label in a fresh interpreter (``full_file_s``; null if it exceeds ``FULL_FILE_TIMEOUT_S``)
and the logistic probes alone against ``LogisticRegressionCV`` on the same grouped folds
(``logistic_speedup_vs_sklearn``; the held-out accuracies must agree).
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
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the scikit-learn reference

from probes.activations import ActivationFile, ActivationWriter  # noqa: E402
from probes.linear import main_probe_scores, probe_file  # noqa: E402
from probes.results import ProbeResults  # noqa: E402
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


DT_ROWS = 4607
DT_HOOK_DIMS = {
    "blocks.0.hook_resid_pre": 64, "blocks.0.hook_resid_mid": 64, "blocks.0.hook_resid_post": 64,
    "blocks.0.mlp.hook_post": 256, "blocks.0.attn.hook_pattern": 40, "blocks.1.hook_resid_mid": 64,
    "blocks.1.hook_resid_post": 64, "blocks.1.mlp.hook_post": 256, "blocks.1.attn.hook_pattern": 40,
}
DT_DISCRETE = {"action": 5, "agent_row": 7, "agent_col": 7, "dominant_need": 2, "predator_adjacent": 2, "step": 0}
DT_CONTINUOUS = [
    "arousal", "discounted_return", "distance_to_food", "distance_to_threat", "distance_to_water", "distress",
    "drive", "energy", "entropy", "fear", "health", "hope", "hunger", "joy", "mood", "return_to_go", "reward",
    "surprise", "td_error", "thirst", "threat", "value", "water",
]


def _dt_network(rng: np.random.Generator, obs: np.ndarray, pos: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """A two-block transformer-shaped stack of activations for one episode (one network's weights)."""
    n = len(obs)
    embed = rng.normal(size=(obs.shape[1], 64)) * 0.6
    pos_embed = rng.normal(size=(49, 64)) * 0.8  # one-hot grid cell -> residual: row/col nearly separable
    resid = obs @ embed + pos_embed[pos] + 0.1 * rng.normal(size=(n, 64))
    out = {"blocks.0.hook_resid_pre": resid}
    for b in range(2):
        ctx = np.minimum(t, 39)[:, None]
        scores = rng.normal(size=(n, 40)) + 2.0 * (np.arange(40)[None, :] >= 39 - ctx)
        scores = np.where(np.arange(40)[None, :] >= 39 - ctx, scores, -np.inf)
        pattern = np.exp(scores - scores.max(axis=1, keepdims=True))
        pattern /= pattern.sum(axis=1, keepdims=True)
        mixed = np.cumsum(resid, axis=0) / np.arange(1, n + 1)[:, None]
        resid = resid + 0.5 * mixed @ (rng.normal(size=(64, 64)) / 8)
        out[f"blocks.{b}.hook_resid_mid"] = resid
        pre = resid @ (rng.normal(size=(64, 256)) / 8)
        post = pre * (1.0 / (1.0 + np.exp(-1.702 * pre)))  # GELU
        resid = resid + post @ (rng.normal(size=(256, 64)) / 16)
        out[f"blocks.{b}.mlp.hook_post"] = post
        out[f"blocks.{b}.hook_resid_post"] = resid
        out[f"blocks.{b}.attn.hook_pattern"] = pattern
    if "blocks.1.hook_resid_pre" in out:
        del out["blocks.1.hook_resid_pre"]
    return {k: out[k] for k in DT_HOOK_DIMS}


def make_dt_file(path: Path, seed: int = 0, n_rows: int = DT_ROWS) -> None:
    """A demo-sized decision-transformer recording: ``n_rows`` steps (default 4,607) of episodes of
    60-150 steps on a 7x7 grid, the 9 hooks of the demo's DT (40-256 dims) with a random-weights
    twin, an 11-dim observation and the demo's 29 labels (6 discrete, 23 continuous)."""
    rng = np.random.default_rng(seed)
    net_seed, rand_seed = rng.integers(2**31, size=2)
    meta = {name: {"kind": "discrete", "description": name, "linear_in": []} for name in DT_DISCRETE}
    meta |= {name: {"kind": "continuous", "description": name, "linear_in": []} for name in DT_CONTINUOUS}
    meta["value"]["linear_in"] = ["blocks.1.hook_resid_post"]
    attrs = {"run": "bench-dt", "checkpoint": path.stem, "policy_kind": "dt", "env_id": "lab/Forage-v0"}
    with ActivationWriter(path, attrs, meta) as w:
        done, e = 0, 0
        while done < n_rows:
            n = int(min(rng.integers(60, 151), n_rows - done))
            t = np.arange(n)
            rc = np.clip(np.cumsum(rng.integers(-1, 2, size=(n, 2)), axis=0) + rng.integers(0, 7, 2), 0, 6)
            pos = rc[:, 0] * 7 + rc[:, 1]
            needs = np.clip(np.cumsum(rng.normal(size=(n, 3)) * 0.05, axis=0) + rng.random(3), 0, 1)
            threat_rc = rng.integers(0, 7, 2)
            d_threat = np.abs(rc - threat_rc).sum(axis=1).astype(np.float64)
            d_food = np.abs(rc - rng.integers(0, 7, 2)).sum(axis=1).astype(np.float64)
            d_water = np.abs(rc - rng.integers(0, 7, 2)).sum(axis=1).astype(np.float64)
            obs = np.column_stack([rc / 6.0, needs, d_threat / 12, d_food / 12, d_water / 12,
                                   rng.normal(size=(n, 3)) * 0.3]).astype(np.float32)
            action = np.argmax(rng.normal(size=(n, 5)) + 1.5 * np.eye(5)[(pos + t) % 5], axis=1)
            value = np.cumsum(rng.normal(size=n)) * 0.1 - d_threat * 0.1
            lab: dict[str, np.ndarray] = {
                "action": action, "agent_row": rc[:, 0], "agent_col": rc[:, 1],
                "dominant_need": (needs[:, 0] > needs[:, 1]).astype(np.int64),
                "predator_adjacent": (d_threat <= 1).astype(np.int64), "step": t,
                "hunger": needs[:, 0], "thirst": needs[:, 1], "energy": needs[:, 2], "water": 1 - needs[:, 1],
                "distance_to_threat": d_threat, "distance_to_food": d_food, "distance_to_water": d_water,
                "threat": np.maximum(0, 4 - d_threat), "health": np.minimum(2, rng.integers(0, 40, n) // 10).astype(float),
                "value": value, "return_to_go": np.floor(np.linspace(4, 0, n)),
                "reward": rng.choice([0.0, 0.0, 0.0, 1.0, -1.0], n),
            }
            for i, name in enumerate(DT_CONTINUOUS):
                if name not in lab:
                    base = needs[:, i % 3] * (i % 4) - 0.2 * d_threat * (i % 2) + value * (i % 3 == 0)
                    lab[name] = base + rng.normal(size=n) * (0.2 + 0.1 * (i % 5))
            acts = _dt_network(np.random.default_rng(net_seed), obs, pos, t)
            rand = _dt_network(np.random.default_rng(rand_seed), obs, pos, t)
            acts = {k: v + 0.05 * rng.normal(size=v.shape) for k, v in acts.items()}
            w.append(
                {"obs": obs, "action": action, "reward": lab["reward"], "done": t == n - 1,
                 "episode": np.full(n, e), "t": t},
                lab, {k: v.astype(np.float32) for k, v in acts.items()},
                {k: v.astype(np.float32) for k, v in rand.items()},
            )
            done, e = done + n, e + 1


def lab_main_scores(path: Path, hooks: list[str]) -> dict[tuple[str, str], float]:
    """The lab's main probe only (what scikit-learn is timed on): every label on each hook."""
    return main_probe_scores(path, hooks=hooks, seed=0)  # nested CV on the same outer folds as sklearn_scores


FULL_FILE_TIMEOUT_S = 150


def full_file_seconds(path: Path, timeout: float = FULL_FILE_TIMEOUT_S) -> float | None:
    """Wall time of ``python -m probes.linear FILE --json`` (every hook and label) in a fresh
    interpreter, from cold start; None if it did not finish within ``timeout`` seconds."""
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "probes.linear", str(path), "--json"], check=True,
                       stdout=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - t0


def logistic_vs_sklearn(path: Path, hooks: list[str], seed: int = 0) -> dict[str, float]:
    """The logistic probes alone against scikit-learn's ``LogisticRegressionCV`` on the same rows,
    grouped folds and C grid (features standardised once, held-out log-loss, multinomial, refit at
    the best C): ``probes.logistic.logistic_cv`` with every discrete label of a hook in one batch
    versus one ``LogisticRegressionCV`` per label. Scored on the held-out episodes of
    ``split_episodes``: the accuracies must agree."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    from probes.logistic import CS, logistic_cv, predict_proba, standardiser
    from probes.splits import split_episodes, unique_episodes

    with ActivationFile(path) as f:
        split = split_episodes(unique_episodes(f), seed=seed)
        groups = split.groups_of(f.episodes())
        train, test = groups < split.n_folds, groups == split.test_group
        names = [n for n in f.labels if f.label_info(n)["kind"] == "discrete"
                 and 2 <= len(np.unique(f.label(n))) <= 20]
        codes = [np.unique(f.label(n), return_inverse=True)[1] for n in names]
        Y = np.stack(codes, axis=1)
        ks = [int(c.max()) + 1 for c in codes]
        lab_s = sk_s = 0.0
        diffs = []
        for hook in hooks:
            x = f.acts(hook).astype(np.float64)
            mu, scale = standardiser(x[train])
            xs = (x - mu) / scale
            t0 = time.perf_counter()
            fits = logistic_cv(xs[train], Y[train], groups[train], ks, split.n_folds, fold_scalers=False)
            lab_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for j, fit in enumerate(fits):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # scikit-learn's FutureWarnings about its own defaults
                    model = LogisticRegressionCV(Cs=list(CS), cv=PredefinedSplit(groups[train]), scoring="neg_log_loss",
                                                 max_iter=1000, tol=1e-8).fit(xs[train], Y[train, j])
                ours = np.argmax(predict_proba((xs[test] - fit.mean) / fit.scale, fit.w, ks[j]), axis=1)
                theirs = model.predict(xs[test])
                diffs.append(abs(float(np.mean(ours == Y[test, j])) - float(np.mean(theirs == Y[test, j]))))
            sk_s += time.perf_counter() - t0
    return {"logistic_lab_seconds": round(lab_s, 2), "logistic_sklearn_seconds": round(sk_s, 2),
            "logistic_speedup_vs_sklearn": round(sk_s / lab_s, 2),
            "logistic_max_abs_accuracy_diff": float(f"{max(diffs):.2e}"), "logistic_n_fits": len(diffs)}


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
    # A demo-sized decision-transformer file, every hook and label, from cold start (issue 15).
    dt_file = tmp / "dt.h5"
    make_dt_file(dt_file)
    full_file = full_file_seconds(dt_file)
    result["full_file_s"] = round(full_file, 1) if full_file is not None else None
    result["full_file_timeout_s"] = FULL_FILE_TIMEOUT_S
    result["full_file_shape"] = {"rows": DT_ROWS, "hooks": len(DT_HOOK_DIMS), "labels": len(DT_DISCRETE) + len(DT_CONTINUOUS)}
    print(f"python -m probes.linear on the DT file: {result['full_file_s']} s", file=sys.stderr)
    result.update(logistic_vs_sklearn(dt_file, ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern"]))
    if large is not None:
        result["peak_rss_mb_small"] = round(peak_rss_mb(small, hooks), 1)
        result["peak_rss_mb_large"] = round(peak_rss_mb(large, hooks), 1)
        result["large_n_steps"] = 4 * N_STEPS
        print("\n".join(f"{k}: {v}" for k, v in result.items()), file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
