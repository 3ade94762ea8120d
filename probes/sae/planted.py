"""A planted sparse dictionary: synthetic activations with known features, to validate SAEs.

Each sample is ``offset + sum_i c_i * d_i`` over a random subset of ``n_dirs`` unit directions
``d_i`` in ``d_in`` dimensions; every direction is active independently with probability
``active / n_dirs`` and an active coefficient is uniform in ``[0.5, 1.5]``. A good SAE finds
every planted direction among its decoder rows; ``recovery`` measures the fraction it finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PlantedData:
    """Synthetic activations with their ground-truth dictionary."""

    x: np.ndarray
    """``[n_samples, d_in]`` float32 activations."""
    directions: np.ndarray
    """``[n_dirs, d_in]`` float32 unit vectors: the planted features."""
    codes_l0: float
    """Mean number of active directions per sample (the true L0)."""


def planted_dictionary(
    n_samples: int, d_in: int, n_dirs: int, active: float = 8.0, seed: int = 0, offset_norm: float = 1.0
) -> PlantedData:
    """Draw ``n_samples`` activations from a random sparse dictionary.

    Parameters
    ----------
    n_samples:
        Number of rows.
    d_in:
        Dimension of each activation.
    n_dirs:
        Number of planted unit directions (the true dictionary size).
    active:
        Expected number of active directions per sample.
    seed:
        Seed of the numpy Generator; same seed, same data.
    offset_norm:
        Norm of a constant offset added to every row (activations rarely have zero mean; the
        SAE's pre-bias must absorb it).
    """
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_dirs, d_in)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    offset = rng.standard_normal(d_in).astype(np.float32)
    offset *= offset_norm / max(float(np.linalg.norm(offset)), 1e-12)
    x = np.empty((n_samples, d_in), dtype=np.float32)
    p = active / n_dirs
    l0 = 0
    block = 16384
    for start in range(0, n_samples, block):
        n = min(block, n_samples - start)
        mask = rng.random((n, n_dirs)) < p
        coef = rng.uniform(0.5, 1.5, size=(n, n_dirs)).astype(np.float32) * mask
        x[start : start + n] = coef @ directions + offset
        l0 += int(mask.sum())
    return PlantedData(x=x, directions=directions, codes_l0=l0 / max(n_samples, 1))


def recovery(W_dec: np.ndarray | torch.Tensor, directions: np.ndarray, threshold: float = 0.9) -> float:
    """Fraction of planted ``directions`` matched by some decoder row at cosine > ``threshold``.

    ``W_dec`` is ``[d_sae, d_in]`` (SAELens layout); rows need not be unit norm.
    """
    w = W_dec.detach().cpu().numpy() if isinstance(W_dec, torch.Tensor) else np.asarray(W_dec)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    d = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    best = (d @ w.T).max(axis=1)
    return float((best > threshold).mean())
