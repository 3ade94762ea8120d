"""SAELens interoperability: SAELens reads the lab's SAEs, and the two train TopK SAEs side by side.

    python benchmarks/saelens_interop.py [--venv DIR] [--quick] [--saelens-lr 3e-4]

SAELens pins TransformerLens < 4 and the lab needs 4, so SAELens lives in a virtualenv of its own:
``--venv`` (default ``$RL_LAB_SAELENS_VENV``, else ``~/.cache/rl-lab/saelens-venv``), built on first
use (``python -m venv``, then ``pip install torch==2.13.0`` (the CPU wheel, as CI installs it) and
``pip install sae-lens``) and reused after. The lab's side runs in this interpreter; SAELens' side
runs in that virtualenv's Python, the two exchanging ``.npy`` files.

1. **Loading.** A real run: PPO on ``lab/Forage-v0`` (2048 steps), 6 recorded episodes, a lab TopK
   SAE on ``mlp_extractor.policy_net.1`` saved to ``RUN/saes/<name>/``. SAELens'
   ``SAE.load_from_disk`` loads that folder; its ``encode`` and ``decode`` of every recorded
   activation must match the lab's ``load_sae`` to 1e-5 (``encode_max_abs_diff``,
   ``decode_max_abs_diff``; ``interop_ok``).
2. **Training.** The planted dictionary of ``benchmarks/sae_train.py`` (512 unit directions in 128
   dimensions, ~8 active, 200k rows): the lab (``probes.sae.training.fit``, defaults) and SAELens
   (``TopKTrainingSAE`` through ``SAETrainer``, its defaults but the learning rate: ``--saelens-lr``,
   default the lab's 1e-2; at SAELens' own 3e-4 it found 0 of 64 planted directions in ``--quick``,
   at 1e-3 20 %, at 1e-2 all) with the same width (1024), k (16), batch (1024) and number of
   samples, one torch thread each, one after the other. ``speed_vs_saelens`` is the lab's rows/s over
   SAELens', both per second of the process's CPU time (one thread each: on a machine shared with
   other jobs, wall time measures the other jobs; the wall seconds are reported beside);
   ``lab_recovery`` / ``saelens_recovery`` the fractions of planted directions found
   (decoder row at cosine > 0.9, ``probes.sae.planted.recovery``).

The last line is one JSON object with ``name``. When SAELens cannot be installed it says why
(``saelens_installed: false`` and the pip error) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.activations import ActivationFile
from probes.sae.config import make_config
from probes.sae.data import TensorSource
from probes.sae.model import load_sae, make_sae
from probes.sae.planted import planted_dictionary, recovery
from probes.sae.training import fit, train_sae_on_file

TORCH_PIN = "torch==2.13.0"
HOOK = "mlp_extractor.policy_net.1"
TOLERANCE = 1e-5

SAELENS_SIDE = textwrap.dedent('''
    """Runs in the SAELens virtualenv: load the lab's SAE, encode/decode; train a TopK SAE on the planted data."""
    import json, sys, time
    from pathlib import Path

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import sae_lens
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    work = Path(sys.argv[1])
    job = json.loads((work / "job.json").read_text())
    out = {"sae_lens": sae_lens.__version__, "torch": torch.__version__}

    sae = SAE.load_from_disk(job["sae_dir"], device="cpu")
    out["loaded_class"] = type(sae).__name__
    x = torch.from_numpy(np.load(work / "acts.npy"))
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    np.save(work / "saelens_z.npy", z.numpy())
    np.save(work / "saelens_xhat.npy", x_hat.numpy())

    if job.get("train"):
        t = job["train"]
        data = torch.from_numpy(np.load(work / "planted.npy"))
        gen = torch.Generator().manual_seed(t["seed"])

        class Batches:
            def __iter__(self):
                return self

            def __next__(self):
                return data[torch.randint(len(data), (t["batch"],), generator=gen)]

        torch.manual_seed(t["seed"])
        cfg = TopKTrainingSAEConfig(d_in=data.shape[1], d_sae=t["width"], k=t["k"], device="cpu")
        training_sae = TopKTrainingSAE(cfg)
        trainer_cfg = SAETrainerConfig(
            total_training_samples=t["samples"], train_batch_size_samples=t["batch"], lr=t["lr"], lr_end=t["lr"],
            device="cpu", n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
            logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        )
        trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=Batches(),
                             save_checkpoint_fn=lambda path: None)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.fit()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        np.save(work / "saelens_W_dec.npy", training_sae.W_dec.detach().numpy())
        out.update(train_seconds=seconds, train_cpu_seconds=cpu_seconds, train_steps=int(trainer.n_training_steps),
                   train_samples=int(trainer.n_training_samples))
    (work / "saelens_out.json").write_text(json.dumps(out))
''')


def default_venv() -> Path:
    return Path(os.environ.get("RL_LAB_SAELENS_VENV") or Path.home() / ".cache" / "rl-lab" / "saelens-venv")


def ensure_venv(venv: Path) -> tuple[Path, str | None]:
    """The SAELens virtualenv's Python (built if missing), and None, or the reason it cannot be built."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import sae_lens"], capture_output=True).returncode == 0:
        return python, None
    print(f"building the SAELens virtualenv in {venv} (once; a few minutes)", file=sys.stderr)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", TORCH_PIN],
             [str(python), "-m", "pip", "install", "-q", "sae-lens"]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
            return python, f"`{' '.join(cmd[-2:])}` failed: {(lines[-1] if lines else 'no output')[:300]}"
    return python, None


def lab_sae_on_real_activations(work: Path, quick: bool) -> tuple[Path, np.ndarray]:
    """Train a tiny PPO run, record it, train a lab TopK SAE on one hook; the SAE folder and the activations."""
    from rl_lab.config import TrainConfig
    from rl_lab.record import record_run
    from rl_lab.train import train

    runs = work / "runs"
    cfg = TrainConfig(env_id="lab/Forage-v0", algo="ppo", total_timesteps=1024 if quick else 2048, seed=0,
                      n_envs=2, checkpoint_every=1024)
    train(cfg, runs, name="interop")
    h5 = record_run("interop", runs, episodes=2 if quick else 6, seed=0)[-1]
    metrics = train_sae_on_file(h5, HOOK, arch="topk", width=128, k=8, steps=100 if quick else 400,
                                progress=False, features=False)
    with ActivationFile(h5) as af:
        x = af.acts(HOOK).astype(np.float32)
    return Path(metrics["out_dir"]), x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=None,
                        help="the SAELens virtualenv (default $RL_LAB_SAELENS_VENV or ~/.cache/rl-lab/saelens-venv)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--saelens-lr", type=float, default=None,
                        help="SAELens' learning rate (default: the lab's, 1e-2; SAELens' own default, 3e-4, "
                             "is meant for runs of many millions of samples and finds no planted direction here)")
    parser.add_argument("--no-train", action="store_true", help="only the loading check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    venv = args.venv or default_venv()
    out: dict[str, Any] = {"name": "saelens_interop", "venv": str(venv), "threads": 1}
    python, problem = ensure_venv(venv)
    out["saelens_installed"] = problem is None
    if problem is not None:
        out["error"] = problem
        print(f"error: cannot install SAELens: {problem}", file=sys.stderr)
        print(json.dumps(out))
        raise SystemExit(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sae_dir, x = lab_sae_on_real_activations(work, args.quick)
        np.save(work / "acts.npy", x)
        lab_sae, _ = load_sae(sae_dir)
        with torch.no_grad():
            z_lab = lab_sae.encode(torch.from_numpy(x)).numpy()
            xhat_lab = lab_sae.decode(torch.from_numpy(z_lab)).numpy()
        job: dict[str, Any] = {"sae_dir": str(sae_dir)}
        sizes = dict(n=20_000, d=32, n_dirs=64, width=128, k=8) if args.quick else \
            dict(n=200_000, d=128, n_dirs=512, width=1024, k=16)
        planted = None
        if not args.no_train:
            planted = planted_dictionary(sizes["n"], sizes["d"], sizes["n_dirs"], active=8, seed=0)
            cfg = make_config("topk", d_in=sizes["d"], d_sae=sizes["width"], k=sizes["k"], seed=0)
            torch.manual_seed(0)
            lab = make_sae(cfg)
            print(f"lab: training a TopK SAE (width {sizes['width']}, k {sizes['k']}) on {sizes['n']} planted rows",
                  file=sys.stderr)
            c0 = time.process_time()
            res = fit(lab, TensorSource(planted.x), progress=False)
            lab_cpu = time.process_time() - c0
            out.update(lab_samples_per_s=res.samples / lab_cpu, lab_cpu_seconds=lab_cpu, lab_wall_seconds=res.seconds,
                       steps=res.steps,
                       samples_trained=res.samples, lab_recovery=recovery(lab.W_dec, planted.directions))
            np.save(work / "planted.npy", planted.x)
            job["train"] = {"width": sizes["width"], "k": sizes["k"], "batch": cfg.batch_size,
                            "samples": res.samples, "lr": args.saelens_lr or cfg.lr, "seed": 0}
        (work / "job.json").write_text(json.dumps(job))
        (work / "saelens_side.py").write_text(SAELENS_SIDE)
        print("SAELens: loading the lab's SAE" + ("" if args.no_train else " and training on the same rows"),
              file=sys.stderr)
        env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
        proc = subprocess.run([str(python), str(work / "saelens_side.py"), str(work)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            out["error"] = f"the SAELens side failed: {tail[0][:300]}"
            print(proc.stderr[-3000:], file=sys.stderr)
            print(json.dumps(out))
            raise SystemExit(1)
        side = json.loads((work / "saelens_out.json").read_text())
        z_sl, xhat_sl = np.load(work / "saelens_z.npy"), np.load(work / "saelens_xhat.npy")
        out.update(sae_lens_version=side["sae_lens"], saelens_class=side["loaded_class"], rows_compared=len(x),
                   d_in=int(x.shape[1]),
                   encode_max_abs_diff=float(np.abs(z_sl - z_lab).max()),
                   decode_max_abs_diff=float(np.abs(xhat_sl - xhat_lab).max()))
        out["interop_ok"] = bool(out["encode_max_abs_diff"] <= TOLERANCE and out["decode_max_abs_diff"] <= TOLERANCE)
        print(f"SAELens {side['sae_lens']} loaded the lab's SAE as {side['loaded_class']}: encode max |diff| "
              f"{out['encode_max_abs_diff']:.2e}, decode {out['decode_max_abs_diff']:.2e} on {len(x)} rows "
              f"({'OK' if out['interop_ok'] else 'MISMATCH'} at {TOLERANCE:g})", file=sys.stderr)
        if planted is not None:
            w_sl = np.load(work / "saelens_W_dec.npy")
            out.update(saelens_recovery=recovery(w_sl, planted.directions),
                       saelens_samples_per_s=side["train_samples"] / side["train_cpu_seconds"],
                       saelens_cpu_seconds=side["train_cpu_seconds"], saelens_wall_seconds=side["train_seconds"],
                       saelens_steps=side["train_steps"],
                       saelens_lr=args.saelens_lr or cfg.lr, lab_lr=cfg.lr)
            out["speed_vs_saelens"] = out["lab_samples_per_s"] / out["saelens_samples_per_s"]
            print(f"training: lab recovery {out['lab_recovery']:.3f} at {out['lab_samples_per_s']:.0f} rows/s, "
                  f"SAELens {out['saelens_recovery']:.3f} at {out['saelens_samples_per_s']:.0f} rows/s "
                  f"(speed_vs_saelens {out['speed_vs_saelens']:.2f})", file=sys.stderr)
    out["total_seconds"] = time.perf_counter() - t_start
    print(json.dumps(out))
    if not out["interop_ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
