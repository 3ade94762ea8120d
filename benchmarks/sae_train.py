"""Benchmark: the lab's SAE trainer against a plain PyTorch TopK loop, and streaming vs memory.

On the issue's planted-dictionary instance (512 unit directions in 128 dimensions, ~8 active per
sample; TopK SAE of width 1024, k 16) it measures, per seed:

- ``lab_recovery`` / ``reference_recovery``: fraction of planted directions matched by a decoder
  row at cosine > 0.9, for ``probes.sae`` with its default settings and for a straightforward
  TopK loop (Adam, random init, no AuxK, no pre-bias init, decoder renormalised) with the same
  number of steps and batch size;
- ``lab_samples_per_s`` / ``reference_samples_per_s``: training rows per second;
- ``streaming_vs_memory``: speed of the lab streaming the same rows from an HDF5 file divided by
  its speed on an in-memory tensor (same steps).

Last line: one JSON object with "name". ``--quick`` shrinks everything (for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probes.activations import ActivationWriter
from probes.planted import planted_dictionary, recovery
from probes.sae import make_config, make_sae
from probes.sae_data import H5Source, TensorSource
from probes.sae_training import fit


def reference_topk(x: np.ndarray, width: int, k: int, steps: int, batch: int, lr: float, seed: int) -> tuple[torch.Tensor, float]:
    """A plain TopK SAE loop; returns (W_dec [width, d], seconds)."""
    torch.manual_seed(seed)
    data = torch.from_numpy(x)
    d = data.shape[1]
    W_enc = torch.nn.Parameter(torch.randn(d, width) / d**0.5)
    W_dec = torch.nn.Parameter(torch.randn(width, d) / d**0.5)
    b_enc = torch.nn.Parameter(torch.zeros(width))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        xb = data[torch.randint(len(data), (batch,), generator=gen)]
        pre = (xb - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        loss = (z @ W_dec + b_dec - xb).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    return W_dec.detach(), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--seeds", type=int, default=1, help="seeds for the recovery comparison (each adds a full lab + reference run)")
    args = parser.parse_args()
    if args.quick:
        n, d, n_dirs, width, k = 20_000, 32, 64, 128, 8
    else:
        n, d, n_dirs, width, k = 200_000, 128, 512, 1024, 16
    torch.set_num_threads(2)
    out: dict[str, object] = {"name": "sae_train", "samples": n, "d_in": d, "planted_directions": n_dirs,
                              "width": width, "k": k}
    lab_rec, ref_rec, lab_sps, ref_sps = [], [], [], []
    for seed in range(args.seeds):
        data = planted_dictionary(n, d, n_dirs, active=8, seed=seed)
        cfg = make_config("topk", d_in=d, d_sae=width, k=k, seed=seed)
        torch.manual_seed(seed)
        sae = make_sae(cfg)
        res = fit(sae, TensorSource(data.x), progress=False)
        lab_rec.append(recovery(sae.W_dec, data.directions))
        lab_sps.append(res.samples / res.seconds)
        w_ref, secs = reference_topk(data.x, width, k, res.steps, cfg.batch_size, cfg.lr, seed)
        ref_rec.append(recovery(w_ref, data.directions))
        ref_sps.append(res.samples / secs)
        print(f"seed {seed}: lab recovery {lab_rec[-1]:.3f} ({lab_sps[-1]:.0f} rows/s, {res.steps} steps), "
              f"reference {ref_rec[-1]:.3f} ({ref_sps[-1]:.0f} rows/s)", file=sys.stderr)

    # Streaming vs memory: the same fixed number of steps from a tensor and from an HDF5 file.
    data = planted_dictionary(n, d, n_dirs, active=8, seed=0)
    steps = 60 if not args.quick else 30
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.h5"
        with ActivationWriter(path, {"run": "bench"}) as w:
            for start in range(0, n, 50_000):
                rows = data.x[start : start + 50_000]
                m = len(rows)
                w.append({"obs": np.zeros((m, 1), np.float32), "action": np.zeros(m, np.int64),
                          "reward": np.zeros(m, np.float32), "done": np.zeros(m, bool),
                          "episode": np.full(m, start // 50_000), "t": np.arange(m)}, {}, {"h": rows})
        sources = {"memory": lambda: TensorSource(data.x), "stream": lambda: H5Source(path, "h", np.ones(n, bool))}
        for _ in range(2):  # alternate twice, keep the best of each (the machine may be shared)
            for name, make in sources.items():
                cfg = make_config("topk", d_in=d, d_sae=width, k=k, steps=steps)
                torch.manual_seed(0)
                sae = make_sae(cfg)
                src = make()
                t0 = time.perf_counter()
                res = fit(sae, src, progress=False)
                speeds[name] = max(speeds.get(name, 0.0), res.samples / (time.perf_counter() - t0))
    out.update(
        lab_recovery=lab_rec,
        reference_recovery=ref_rec,
        lab_recovery_min=min(lab_rec),
        reference_recovery_min=min(ref_rec),
        lab_samples_per_s=float(np.median(lab_sps)),
        reference_samples_per_s=float(np.median(ref_sps)),
        memory_samples_per_s=speeds["memory"],
        streaming_samples_per_s=speeds["stream"],
        streaming_vs_memory=speeds["stream"] / speeds["memory"],
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
