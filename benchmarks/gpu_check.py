"""GPU check: the SAE and decision-transformer benchmarks' training cores on CUDA against the CPU.

    python benchmarks/gpu_check.py [--sae-steps 150] [--dt-steps 40] [--threads 1]

The SAE core is ``benchmarks/sae_train.py``'s: ``probes.sae.training.fit`` of a TopK SAE (width
1024, k 16) on the planted dictionary (200k samples, 128 dimensions), here for a fixed number of
steps, on the device the SAE config names (``SAEConfig.device``). The DT core is
``benchmarks/dt_train.py``'s: AdamW steps of the lab's decision transformer on the same synthetic
windows. Each runs on the CPU (``--threads`` torch threads, 1 by default, as the lab trains) and, when
torch sees a CUDA device, on ``cuda:0``; ``*_cuda_vs_cpu`` is the CUDA speed divided by the CPU's.

Without a GPU it says so plainly, measures the CPU side alone and reports ``"cuda_available": false``.
The last line is one JSON object with ``name`` and unit-suffixed figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, for their cores

from dt_train import synthetic_batches  # noqa: E402

from probes.sae.config import make_config  # noqa: E402
from probes.sae.data import TensorSource  # noqa: E402
from probes.sae.model import make_sae  # noqa: E402
from probes.sae.planted import planted_dictionary, recovery  # noqa: E402
from probes.sae.training import fit  # noqa: E402
from rl_lab.dt.model import DecisionTransformer, DTModelConfig, loss_and_accuracy  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sae_speed(device: str, steps: int, data: Any) -> dict[str, float]:
    """Rows per second of ``fit`` on ``device`` (the SAE config's device) and the recovery reached."""
    cfg = make_config("topk", d_in=data.x.shape[1], d_sae=1024, k=16, steps=steps, seed=0, device=device)
    torch.manual_seed(0)
    sae = make_sae(cfg)
    sync(device)
    t0 = time.perf_counter()
    res = fit(sae, TensorSource(data.x), progress=False)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": res.samples / seconds, "recovery": recovery(sae.W_dec, data.directions)}


def dt_speed(device: str, steps: int, batch: int, repeats: int = 2) -> float:
    """Tokens per second of the decision transformer's training steps on ``device`` (best of ``repeats``)."""
    cfg = DTModelConfig(obs_dim=11, n_actions=5, context=10, max_timestep=200)
    batches = [{k: v.to(device) for k, v in b.items()} for b in synthetic_batches(cfg, steps, batch, seed=0)]
    model = DecisionTransformer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(b: dict[str, torch.Tensor]) -> None:
        logits = model(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
        loss, _ = loss_and_accuracy(logits, b["actions"], b["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:3]:  # warm-up (and CUDA kernels' first compilation)
        step(b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return sum(b["states"].shape[0] for b in batches) * cfg.n_ctx / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae-steps", type=int, default=150, help="SAE optimisation steps per device")
    parser.add_argument("--dt-steps", type=int, default=40, help="DT training steps per timing")
    parser.add_argument("--batch", type=int, default=64, help="DT windows per step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {"name": "gpu_check", "cuda_available": cuda, "threads": args.threads,
                           "torch": torch.__version__, "sae_steps": args.sae_steps, "dt_steps": args.dt_steps}
    if cuda:
        out["cuda_device"] = torch.cuda.get_device_name(0)
        print(f"CUDA device: {out['cuda_device']}", file=sys.stderr)
    else:
        print(f"no GPU: torch {torch.__version__} sees no CUDA device here; measuring the CPU side only "
              "(run this on a machine with a GPU for the CUDA figures)", file=sys.stderr)
    data = planted_dictionary(200_000, 128, 512, active=8, seed=0)
    devices = ["cpu"] + (["cuda:0"] if cuda else [])
    for device in devices:
        tag = device.split(":")[0]
        sae = sae_speed(device, args.sae_steps, data)
        dt = dt_speed(device, args.dt_steps, args.batch)
        out[f"sae_{tag}_samples_per_s"] = sae["samples_per_s"]
        out[f"sae_{tag}_recovery"] = sae["recovery"]
        out[f"dt_{tag}_tokens_per_s"] = dt
        print(f"{device}: SAE {sae['samples_per_s']:.0f} rows/s, DT {dt:.0f} tokens/s", file=sys.stderr)
    if cuda:
        out["sae_cuda_vs_cpu"] = out["sae_cuda_samples_per_s"] / out["sae_cpu_samples_per_s"]
        out["dt_cuda_vs_cpu"] = out["dt_cuda_tokens_per_s"] / out["dt_cpu_tokens_per_s"]
        print(f"CUDA vs CPU: SAE x{out['sae_cuda_vs_cpu']:.2f}, DT x{out['dt_cuda_vs_cpu']:.2f}", file=sys.stderr)
    else:
        out["sae_cuda_vs_cpu"] = None
        out["dt_cuda_vs_cpu"] = None
    out["total_seconds"] = time.perf_counter() - t_start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
