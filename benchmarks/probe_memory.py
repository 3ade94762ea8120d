"""Peak memory of probing and SAE training on a large activation file: flat in the number of rows.

Builds a synthetic recording of ``--rows`` rows (default 300,000: 1,500 episodes of 200 steps) with
two 512-wide hooks (``h.0``, ``h.1``; 1.2 GB), a continuous label linear in ``h.0`` and a
three-class label, and the same at a quarter of the rows. On each it runs, as separate processes
under ``/usr/bin/time -v``:

- ``python -m probes.linear FILE --quiet --json`` (the whole probe sweep: nested CV, baselines);
- ``python -m probes.sae FILE --hook h.0 --hook h.1 --width 1024 --steps 200 --no-features`` (two
  SAEs streamed in one pass).

Prints ``peak_rss_mb`` of each (the "Maximum resident set size"), the target (the issue's 700 MB
for the probe sweep on the large file) and ``probe_rss_growth``: peak at the large file / peak at
the small one (flat memory: close to 1).

    python benchmarks/probe_memory.py [--rows 300000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from probes.activations import ActivationWriter

TARGET_MB = 700
WIDTH = 512
EPISODE = 200
BLOCK = 10_000


def build(path: Path, rows: int, seed: int = 0) -> float:
    """Write the synthetic recording; returns its size in MB."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=WIDTH).astype(np.float32) / np.sqrt(WIDTH)
    meta = {"value": {"kind": "continuous", "description": "linear in h.0"},
            "choice": {"kind": "discrete", "description": "three classes, weakly in h.1"}}
    with ActivationWriter(path, {"run": "bench", "checkpoint": "synthetic", "env_id": "synthetic"}, meta) as w:
        for start in range(0, rows, BLOCK):
            n = min(BLOCK, rows - start)
            idx = np.arange(start, start + n)
            h0 = rng.normal(size=(n, WIDTH)).astype(np.float32)
            h1 = rng.normal(size=(n, WIDTH)).astype(np.float32)
            value = h0 @ direction + 0.5 * rng.normal(size=n).astype(np.float32)
            choice = np.argmax(h1[:, :3] + rng.normal(size=(n, 3)), axis=1).astype(np.int64)
            steps = {"obs": rng.normal(size=(n, 4)).astype(np.float32), "action": choice,
                     "reward": np.zeros(n, np.float32), "done": (idx % EPISODE) == EPISODE - 1,
                     "episode": idx // EPISODE, "t": idx % EPISODE}
            w.append(steps, {"value": value, "choice": choice}, {"h.0": h0, "h.1": h1})
    return path.stat().st_size / 2**20


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` under ``/usr/bin/time -v``; its peak resident memory in MB and wall seconds."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    if match is None:
        raise SystemExit("no 'Maximum resident set size' in /usr/bin/time's output")
    return int(match.group(1)) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--keep", action="store_true", help="keep the files (printed) instead of deleting them")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-probe-memory-"))
    out: dict[str, float | int | bool | str] = {"name": "probe_memory", "rows": args.rows, "hook_width": WIDTH,
                                                "hooks": 2, "target_mb": TARGET_MB}
    try:
        for tag, rows in (("small", args.rows // 4), ("large", args.rows)):
            path = root / f"{tag}.h5"
            t0 = time.perf_counter()
            size = build(path, rows)
            print(f"{tag}: {rows} rows, {size:.0f} MB written in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            probe_mb, probe_s = peak_rss_mb([sys.executable, "-m", "probes.linear", str(path), "--quiet", "--json",
                                             "--out", str(root / f"{tag}.json")])
            sae_mb, sae_s = peak_rss_mb([sys.executable, "-m", "probes.sae", str(path), "--hook", "h.0", "--hook",
                                         "h.1", "--width", "1024", "--steps", "200", "--no-features", "--json"])
            print(f"{tag}: probes.linear peak {probe_mb:.0f} MB ({probe_s:.0f}s), "
                  f"probes.sae (2 hooks) peak {sae_mb:.0f} MB ({sae_s:.0f}s)", file=sys.stderr)
            out.update({f"{tag}_rows": rows, f"{tag}_file_mb": round(size), f"{tag}_probe_peak_rss_mb": round(probe_mb),
                        f"{tag}_probe_s": round(probe_s, 1), f"{tag}_sae_peak_rss_mb": round(sae_mb),
                        f"{tag}_sae_s": round(sae_s, 1)})
    finally:
        if args.keep:
            print(f"files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    out["peak_rss_mb"] = out["large_probe_peak_rss_mb"]
    out["probe_rss_growth"] = round(out["large_probe_peak_rss_mb"] / out["small_probe_peak_rss_mb"], 3)
    out["sae_rss_growth"] = round(out["large_sae_peak_rss_mb"] / out["small_sae_peak_rss_mb"], 3)
    out["under_target"] = out["large_probe_peak_rss_mb"] < TARGET_MB
    print(json.dumps(out))


if __name__ == "__main__":
    main()
