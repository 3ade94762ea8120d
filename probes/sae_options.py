"""The SAE training options, shared by ``python -m probes.sae`` and ``rl-lab sae``.

Kept free of torch so that building a command-line parser costs nothing; the defaults quoted
here are the config dataclasses' own (``tests/test_sae.py`` checks they agree).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ARCHITECTURES = ["relu", "topk"]  # sorted keys of probes.sae.REGISTRY
RELU_L1 = 1.0  # ReLUConfig.l1_coefficient
LR = 1e-2  # SAEConfig.lr
BATCH_SIZE = 1024  # SAEConfig.batch_size


def add_arguments(parser: argparse.ArgumentParser, file_arg: bool = True) -> None:
    """Add the SAE training options (the same for ``python -m probes.sae`` and ``rl-lab sae``).

    ``file_arg=False`` leaves out the positional FILE (a caller that finds the file itself).
    """
    if file_arg:
        parser.add_argument("file", type=Path, help="activation file (.h5)")
    parser.add_argument("--hook", required=True, help="hook name: which /acts/<hook> to train on")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="topk", help="SAE architecture (default topk)")
    parser.add_argument("--width", type=int, default=None, help="number of latents (default 8 x d_in)")
    parser.add_argument("--k", type=int, default=None, help="topk: latents per sample (default 16)")
    parser.add_argument("--l1", type=float, default=None, help=f"relu: L1 coefficient (default {RELU_L1})")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimisation steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the training rows")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate (default {LR})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"rows per step (default {BATCH_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN/saes/<hook>-<arch>-<width>/)")
    parser.add_argument("--no-features", action="store_true", help="skip the per-latent feature statistics")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON document on stdout")
