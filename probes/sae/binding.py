"""The binding SAE: a TopK SAE whose decoder is tied across slots, ``W_dec = [D; D R_1; ...]``.

A feature can appear "in slot 1" (decoder row ``D[i]``) and "in slot j" (row ``D[i] @ R_j``):
the slots share the first block ``D`` ([m, d_in], rows of unit norm) and each further slot is
a learned linear map ``R_j`` ([d_in, d_in]) of it. With ``slots`` slots the SAE has
``d_sae = slots * m`` latents, latent ``j * m + i`` being feature ``i`` in slot ``j``
(``slot_of``). The encoder is free (``W_enc [d_in, d_sae]``) and sparsity is TopK over all
latents, so the training loss, AuxK and the sparse kernels are those of ``TopKSAE``.

Saved like every SAE (``probes.sae.model.save_sae``): ``cfg.json`` holds the structure
(``lab_architecture: "binding"``, ``slots``; SAELens reads ``architecture: "topk"``) and
``sae_weights.safetensors`` the SAELens tensors with the *expanded* decoder, so SAELens loads a
binding SAE as the TopK SAE it is at inference. Loading it back (``load_sae``) recovers ``D`` as
the first block and each ``R_j`` by least squares from the expanded decoder; a file whose
decoder does not have the structure is refused.

Also here: ``planted_binding`` (synthetic activations with planted bound structure, to
validate the SAE), ``n_parameters`` and ``topk_width_for_parameters`` (the TopK SAE of equal
parameter count), ``compare_on_data`` / ``compare_on_file`` (binding vs TopK at equal parameter
count and equal L0: explained variance and conjunction-selective latents), and the script
``python -m probes.sae.binding FILE.h5 --hook H [--json]``. See ``docs/sae.md``.

Known limitation: trained by gradient from a random start, the SAE does not find planted maps
``R`` (which row of slot j belongs with which row of slot 0 is a point-set registration
problem); initialised at the planted structure it keeps it (``tests/test_binding.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from probes.errors import ProbeError
from probes.sae.config import BindingConfig, make_config
from probes.sae.model import MODELS, REGISTRY, SparseAutoencoder, TopKSAE

STRUCTURE_TOLERANCE = 1e-3
"""Largest relative residual of ``D R_j`` fitted to a saved slot block for the file to count as
a binding SAE's (float32 round-off is ~1e-6)."""


def _random_orthogonal(d: int, gen: torch.Generator | None = None) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # [d, d], Haar-distributed


class BindingSAE(TopKSAE):
    """TopK SAE with the decoder ``[D; D R_1; ...; D R_{slots-1}]``.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``b_dec [d_in]``, ``W_dec_base``
    (``D``, ``[m, d_in]``, unit rows) and ``R`` (``[slots-1, d_in, d_in]``, initialised
    orthogonal so every slot starts with unit rows). ``W_dec`` is computed from them, so code
    that reads ``sae.W_dec`` (steering directions, splicing) sees the expanded decoder.
    """

    cfg: BindingConfig

    def __init__(self, cfg: BindingConfig) -> None:
        nn.Module.__init__(self)  # not SparseAutoencoder.__init__: W_dec is not a parameter here
        self.cfg = cfg
        m, d = cfg.d_sae // cfg.slots, cfg.d_in
        base = torch.randn(m, d)
        base /= base.norm(dim=1, keepdim=True)
        self.W_dec_base = nn.Parameter(base)  # [m, d_in]
        self.R = nn.Parameter(torch.stack([_random_orthogonal(d) for _ in range(cfg.slots - 1)]))  # [s-1, d, d]
        with torch.no_grad():
            w_dec = self.W_dec
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d))

    @property
    def slot_width(self) -> int:
        """Features per slot ``m = d_sae / slots``."""
        return self.cfg.d_sae // self.cfg.slots

    @property
    def W_dec(self) -> torch.Tensor:  # type: ignore[override]
        """The expanded decoder ``[D; D R_1; ...]``: [d_sae, d_in]."""
        base = self.W_dec_base
        return torch.cat([base, (base @ self.R).reshape(-1, base.shape[1])])

    def slot_of(self, latent: int) -> tuple[int, int]:
        """``(slot, feature)`` of a latent: latent ``j * m + i`` is feature ``i`` in slot ``j``."""
        return divmod(int(latent), self.slot_width)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale the rows of ``D`` to unit norm (the other slots follow through ``R``)."""
        self.W_dec_base /= self.W_dec_base.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of ``D``'s gradient along each of its unit rows."""
        if self.W_dec_base.grad is not None:
            g, w = self.W_dec_base.grad, self.W_dec_base
            g -= (g * w).sum(dim=1, keepdim=True) * w

    @torch.no_grad()
    def load_saelens_state(self, state: Mapping[str, torch.Tensor], where: str = "") -> None:
        """Set the parameters from SAELens tensors: ``D`` = the first block of ``W_dec``, each
        ``R_j`` its least-squares map onto block ``j``; refuse a decoder without the structure."""
        for name in ("W_enc", "b_enc", "b_dec"):
            getattr(self, name).copy_(state[name])
        m, w = self.slot_width, state["W_dec"].double()
        base = w[:m]
        for j in range(1, self.cfg.slots):
            block = w[j * m : (j + 1) * m]
            r = torch.linalg.lstsq(base, block, driver="gelsd").solution  # [d, d]
            resid = float((base @ r - block).norm() / block.norm().clamp_min(1e-12))
            if resid > STRUCTURE_TOLERANCE:
                raise ProbeError(f"{where}: slot {j} of the decoder is not a linear map of slot 0 "
                                 f"(relative residual {resid:.2g}); not a binding SAE's weights")
            self.R[j - 1].copy_(r)
        self.W_dec_base.copy_(base)


MODELS["binding"] = BindingSAE
REGISTRY["binding"] = (BindingSAE, BindingConfig)


def n_parameters(sae: SparseAutoencoder) -> int:
    """Number of trained scalars of an SAE."""
    return sum(p.numel() for p in sae.parameters())


def binding_parameters(d_in: int, d_sae: int, slots: int) -> int:
    """Parameters of a binding SAE: encoder, biases, ``D`` and the ``slots - 1`` maps ``R``."""
    return d_in * d_sae + d_sae + d_in + (d_sae // slots) * d_in + (slots - 1) * d_in * d_in


def topk_width_for_parameters(n_params: int, d_in: int) -> int:
    """Width of the TopK SAE with at most ``n_params`` parameters (``2 d w + w + d``)."""
    return max(1, (n_params - d_in) // (2 * d_in + 1))


# --------------------------------------------------------------------------- planted structure
@dataclass
class PlantedBinding:
    """Synthetic activations whose features appear in ``slots`` slots related by linear maps."""

    x: np.ndarray
    """``[n_samples, d_in]`` float32 activations."""
    directions: np.ndarray
    """``[slots * n_features, d_in]``: feature ``i`` in slot ``j`` is row ``j * n_features + i``
    (slot 0's rows are unit vectors, slot j's are them times the orthogonal ``maps[j-1]``)."""
    maps: np.ndarray
    """``[slots - 1, d_in, d_in]``: the planted ``R_j``."""
    codes_l0: float
    """Mean number of active (feature, slot) pairs per sample."""


def planted_binding(
    n_samples: int, d_in: int, n_features: int, slots: int = 2, active: float = 4.0, seed: int = 0,
    offset_norm: float = 1.0,
) -> PlantedBinding:
    """Draw activations from a planted *bound* dictionary ``[D; D R_1; ...]``.

    Each (feature, slot) pair is active independently with probability
    ``active / (slots * n_features)`` with a coefficient uniform in ``[0.5, 1.5]``; a constant
    offset of norm ``offset_norm`` is added. A binding SAE of ``slots * n_features`` latents can
    represent it exactly; a TopK SAE needs ``slots * n_features`` free rows for the same.
    """
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_features, d_in))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    maps = np.stack([np.linalg.qr(rng.standard_normal((d_in, d_in)))[0] for _ in range(slots - 1)])
    directions = np.concatenate([base, *(base @ r for r in maps)]).astype(np.float32)
    offset = rng.standard_normal(d_in)
    offset *= offset_norm / max(float(np.linalg.norm(offset)), 1e-12)
    n_dirs = len(directions)
    mask = rng.random((n_samples, n_dirs)) < active / n_dirs
    coef = rng.uniform(0.5, 1.5, size=(n_samples, n_dirs)) * mask
    x = (coef @ directions + offset).astype(np.float32)
    return PlantedBinding(x=x, directions=directions, maps=maps.astype(np.float32),
                          codes_l0=float(mask.sum()) / max(n_samples, 1))


def slot_recovery(sae: BindingSAE, directions: np.ndarray, threshold: float = 0.9) -> float:
    """Fraction of planted features found *with their structure*: some SAE feature whose decoder
    row in every slot matches the planted feature's row in that slot at cosine > ``threshold``.

    The slots' order is arbitrary (``D R`` and ``D`` can trade places), so the best global
    permutation of the planted slots counts. ``directions`` is ``[slots * n, d_in]`` as in
    ``PlantedBinding``.
    """
    w = sae.W_dec.detach().double().numpy()
    w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    d = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    s, m = sae.cfg.slots, sae.slot_width
    n = len(d) // s
    best = 0.0
    for perm in itertools.permutations(range(s)):
        # cosine of planted feature i with SAE feature f: the worst slot counts
        cos = np.min(np.stack([d[p * n : (p + 1) * n] @ w[j * m : (j + 1) * m].T for j, p in enumerate(perm)]), axis=0)
        best = max(best, float((cos.max(axis=1) > threshold).mean()))
    return best


# --------------------------------------------------------------------------- comparison
def explained_variance(sae: SparseAutoencoder, x: np.ndarray | torch.Tensor) -> float:
    """``1 - ||x - x_hat||^2 / ||x - mean||^2`` over the rows of ``x``."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        err = (xt - sae(xt)).double().pow(2).sum()
    return float(1.0 - err / (xt.double() - xt.double().mean(0)).pow(2).sum())


def compare_on_data(
    train: np.ndarray, test: np.ndarray, *, slots: int = 2, width: int, k: int,
    steps: int | None = None, batch_size: int = 1024, seed: int = 0, extra_widths: tuple[float, ...] = (1.5, 2.0),
) -> dict[str, Any]:
    """Binding SAE vs TopK SAE of equal parameter count, at equal L0 (``k``), on the same rows.

    Returns the parameter counts, both widths, held-out explained variance of each, and
    ``topk_width_to_match``: the smallest TopK width among ``topk_width * extra_widths`` whose
    explained variance reaches the binding SAE's (None if none does): how many more latents a
    bag of free directions needs for the same fit.
    """
    from probes.sae.training import train_in_memory

    d = train.shape[1]
    common = dict(d_in=d, k=k, steps=steps, batch_size=batch_size, seed=seed)
    b_sae, b_fit = train_in_memory(train, make_config("binding", d_sae=width, slots=slots, **common))
    n_b = n_parameters(b_sae)
    w_t = topk_width_for_parameters(n_b, d)
    t_sae, t_fit = train_in_memory(train, make_config("topk", d_sae=w_t, **common))
    out: dict[str, Any] = {
        "slots": slots, "k": k, "binding_width": width, "binding_parameters": n_b,
        "topk_width": w_t, "topk_parameters": n_parameters(t_sae),
        "binding_explained_variance": explained_variance(b_sae, test),
        "topk_explained_variance": explained_variance(t_sae, test),
        "binding_seconds": b_fit.seconds, "topk_seconds": t_fit.seconds,
    }
    out["topk_width_to_match"] = None
    for factor in extra_widths:
        w = int(round(w_t * factor))
        sae, _ = train_in_memory(train, make_config("topk", d_sae=w, **common))
        ev = explained_variance(sae, test)
        out[f"topk_explained_variance_width_{w}"] = ev
        if ev >= out["binding_explained_variance"] - 0.005 and out["topk_width_to_match"] is None:
            out["topk_width_to_match"] = w
    return out



def _l0(sae: SparseAutoencoder, x: np.ndarray) -> float:
    with torch.no_grad():
        return float((sae.encode(torch.as_tensor(x, dtype=torch.float32)) > 0).sum(1).double().mean())


def selective_latents(sae: SparseAutoencoder, x: np.ndarray, pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Conjunction-selective latents of ``sae`` on rows ``x`` (``probes.binding.conjunction_selective``
    for every pair source of ``pairs``): the count per source and over all of them."""
    from probes.binding import conjunction_selective

    with torch.no_grad():
        fires = (sae.encode(torch.as_tensor(x, dtype=torch.float32)) > 0).numpy()
    alive = fires.any(axis=0)
    per = {name: conjunction_selective(fires, c, s) for name, (c, s) in pairs.items()}
    union = np.any(np.stack(list(per.values())), axis=0) if per else np.zeros(fires.shape[1], bool)
    out: dict[str, Any] = {"selective": int(union.sum()), "alive": int(alive.sum()),
                           "selective_by_source": {k: int(v.sum()) for k, v in per.items()}}
    if isinstance(sae, BindingSAE):
        slots = np.arange(sae.cfg.d_sae) // sae.slot_width
        out["selective_by_slot"] = [int(union[slots == j].sum()) for j in range(sae.cfg.slots)]
    return out


def compare_on_file(
    path: str, hook: str, *, slots: int = 2, width: int | None = None, k: int = 8, steps: int | None = None,
    batch_size: int = 1024, seed: int = 0, test_fraction: float = 0.2,
) -> dict[str, Any]:
    """Binding SAE vs the TopK SAE of equal parameter count on one hook of a recording.

    Both train on the training episodes (the lab's split) with the same ``k``; on the held-out
    episodes it reports explained variance and L0 of each and, for a Binding-v0 recording,
    how many latents are conjunction-selective (``selective_latents``, ground truth from
    ``probes.binding.read_scenes``).
    """
    from probes.activations import ActivationFile
    from probes.binding import conjunction_pairs, read_scenes
    from probes.sae.config import default_width
    from probes.sae.data import split_rows
    from probes.sae.training import train_in_memory

    with ActivationFile(path) as f:
        x = f.acts(hook).astype(np.float32)
        episodes = f.episodes()
        try:
            pairs = conjunction_pairs(read_scenes(f))
        except ProbeError:
            pairs = {}
    train, test, notes = split_rows(episodes, test_fraction, seed)
    d = x.shape[1]
    width = width or -(-default_width(d) // slots) * slots
    common = dict(d_in=d, k=k, steps=steps, batch_size=batch_size, seed=seed, hook_name=hook)
    b_sae, _ = train_in_memory(x[train], make_config("binding", d_sae=width, slots=slots, **common))
    w_t = topk_width_for_parameters(n_parameters(b_sae), d)
    t_sae, _ = train_in_memory(x[train], make_config("topk", d_sae=w_t, **common))
    out: dict[str, Any] = {"file": str(path), "hook": hook, "slots": slots, "k": k, "notes": notes,
                           "test_rows": int(test.sum())}
    for name, sae in (("binding", b_sae), ("topk", t_sae)):
        out[name] = {"width": sae.cfg.d_sae, "parameters": n_parameters(sae),
                     "explained_variance": explained_variance(sae, x[test]), "l0": _l0(sae, x[test])}
        if pairs:
            out[name].update(selective_latents(sae, x[test], {n: (c[test], s[test]) for n, (c, s) in pairs.items()}))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m probes.sae.binding FILE.h5 --hook H``: binding vs TopK SAE at equal parameters."""
    import json
    import sys

    from probes.scripts import ScriptParser

    parser = ScriptParser(prog="python -m probes.sae.binding",
                          description="Compare a binding SAE with the TopK SAE of equal parameter count on one hook.")
    parser.add_argument("file", help="activation file (.h5)")
    parser.add_argument("--hook", required=True, help="hook name")
    parser.add_argument("--slots", type=int, default=BindingConfig.slots, help="slots (default 2)")
    parser.add_argument("--width", type=int, default=None, help="binding SAE latents (default 8 x d_in)")
    parser.add_argument("--k", type=int, default=8, help="latents per sample, both SAEs (default 8)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the config's budget)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args(argv)
    try:
        res = compare_on_file(args.file, args.hook, slots=args.slots, width=args.width, k=args.k, steps=args.steps,
                              seed=args.seed)
    except ProbeError as exc:
        print(f"probes.sae.binding: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        for name in ("binding", "topk"):
            r = res[name]
            print(f"{name:<8} width {r['width']:>5}  params {r['parameters']:>7}  EV {r['explained_variance']:.4f}  "
                  f"L0 {r['l0']:.2f}  conjunction-selective {r.get('selective', 'n/a')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
