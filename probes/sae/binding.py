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

Trained by gradient from a random start the SAE does not find planted maps ``R`` (which row of
slot j belongs with which row of slot 0 is a point-set registration problem), so ``fit`` starts
it in stages by default (``BindingConfig.init = "registered"``, ``BindingSAE.prepare_fit``): a
TopK SAE of the same width finds the atoms (trained ``TOPK_STAGE_FACTOR`` times as long),
``refine_dictionary`` sharpens them, ``register_slots`` splits them into slots and pairs them
(inner products kept by the maps, Procrustes + Hungarian ICP), and the binding SAE fine-tunes
from there.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
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


    def prepare_fit(self, source: Any, scale: float, progress: bool = False) -> dict[str, Any] | None:
        """The staged start ``fit`` runs before optimising (``cfg.init == "registered"``).

        1. A TopK SAE of the same width and k is trained on the same rows for ``TOPK_STAGE_FACTOR``
           times the steps, same schedule shape (it finds the atoms of every slot, unpaired);
           2. its decoder is refined by a few rounds of matching pursuit + least squares
           (``refine_dictionary``: the SAE's linear encoder blurs atoms that sparse coding
           separates); 3. the refined atoms are split into slots and paired (``register_slots``);
           4. this SAE starts from the registered dictionary: ``D`` = slot 0, ``R_j`` = the fitted
           maps, the encoder the decoder's transpose with ``b_enc`` = 0 (the TopK SAE's encoder
           fits its blurred atoms, and fine-tuning from it drags the refined ones back), ``b_dec``
           from the TopK SAE. ``source`` is the keyed source ``fit_many`` trains on, ``scale`` its
           input scale. Returns what the registration found (None when ``cfg.init`` is ``random``:
           the weights are left as they are).
        """
        cfg = self.cfg
        if cfg.init != "registered":
            return None
        from probes.sae.config import TopKConfig
        from probes.sae.training import fit_many, resolve_steps

        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TopKConfig)}
        fields.update(steps=TOPK_STAGE_FACTOR * resolve_steps(cfg, source.n_rows), epochs=None)
        tcfg = TopKConfig(**fields)
        torch.manual_seed(cfg.seed)
        topk = TopKSAE(tcfg).to(self.W_enc.device)
        fit_many([topk], source, progress=progress, desc="binding: TopK stage")  # raw units on return
        rng = np.random.default_rng(cfg.seed)
        rows = source.sample(min(source.n_rows, REFINE_ROWS), rng)[cfg.hook_name].double().numpy()
        b_dec = topk.b_dec.detach().double().numpy()
        # two refinements (plain, and with atom replacement), each registered; the better
        # registration (mean cosine of the paired atoms, no ground truth) is kept
        best: tuple[np.ndarray, Registration] | None = None
        for replace in (False, True):
            atoms_r = refine_dictionary(rows - b_dec, topk.W_dec.detach().double().numpy(), seed=cfg.seed,
                                        replace=replace)
            reg_r = register_slots(atoms_r, cfg.slots)
            if best is None or reg_r.fit > best[1].fit:
                best = (atoms_r, reg_r)
        assert best is not None
        atoms, reg = best
        with torch.no_grad():
            self._set_registered(topk, atoms, reg, scale)
        return {"registration_fit": reg.fit, "registration_inliers": reg.inliers}

    def _set_registered(self, topk: TopKSAE, atoms: np.ndarray, reg: "Registration", scale: float) -> None:
        dev = self.W_enc.device
        self.W_dec_base.copy_(torch.as_tensor(atoms[reg.order[0]], dtype=torch.float32, device=dev))
        self.R.copy_(torch.as_tensor(reg.maps, dtype=torch.float32, device=dev))
        self.b_dec.copy_((topk.b_dec.detach() * scale).to(dev))
        self.normalize_decoder()
        # the encoder starts as the decoder's transpose, not the TopK stage's encoder (planted
        # benchmark, seed 0, plain refinement: slot recovery 0.50 after fine-tuning from that
        # one, 0.88 from this)
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()


MODELS["binding"] = BindingSAE
REGISTRY["binding"] = (BindingSAE, BindingConfig)


# --------------------------------------------------------------------------- registration
TOPK_STAGE_FACTOR = 3
"""The TopK stage of the staged start runs this many times the binding SAE's steps (same schedule
shape); the atoms it finds bound what registration can pair."""
REFINE_ROWS = 8192
"""Rows the staged start samples for ``refine_dictionary``."""
REFINE_ITERS = 30
"""Rounds of matching pursuit + least squares in ``refine_dictionary``."""
REPLACE_ROUNDS = 0.6
"""Fraction of the refinement rounds (the first) in which ``refine_dictionary(replace=True)``
restarts its least-used atom."""
MP_REL_THRESHOLD = 0.3
"""Matching pursuit stops adding atoms to a row once the next coefficient is below this fraction
of the median first coefficient (``refine_dictionary``)."""
INLIER_COSINE = 0.8
"""A registered pair counts as an inlier when ``cos(D_i R_j, atom) > INLIER_COSINE``."""


def _matching_pursuit(x: np.ndarray, atoms: np.ndarray, k: int, floor: float | None) -> tuple[np.ndarray, float]:
    """Non-negative matching pursuit codes of the rows of ``x`` [n, d] over unit ``atoms`` [a, d]:
    at most ``k`` greedy steps, a step kept only if its coefficient is >= ``floor`` (None: the
    floor is ``MP_REL_THRESHOLD`` x the median first coefficient). Returns ([n, a] codes, floor)."""
    n = len(x)
    r, z, rows = x.copy(), np.zeros((n, len(atoms))), np.arange(n)
    for step in range(k):
        p = r @ atoms.T  # [n, a]
        j = p.argmax(axis=1)
        v = np.maximum(p[rows, j], 0.0)
        if floor is None:
            floor = MP_REL_THRESHOLD * float(np.median(v))
        v = np.where(v >= floor, v, 0.0)
        if not v.any():
            break
        z[rows, j] += v
        r -= v[:, None] * atoms[j]
    return z, float(floor or 0.0)


def refine_dictionary(x: np.ndarray, atoms: np.ndarray, k: int = 8, iters: int = REFINE_ITERS, seed: int = 0,
                      replace: bool = False) -> np.ndarray:
    """Refine dictionary ``atoms`` [a, d] on centred rows ``x`` [n, d] by alternating matching
    pursuit codes and a least-squares decoder (MOD, Engan et al. 1999); unit rows returned.

    A TopK SAE's linear encoder mixes atoms that are close in angle, and its decoder rows
    inherit the blur (on the planted benchmark: median cosine 0.8-0.9 to the planted
    directions); sparse coding by pursuit separates them (0.99), which is what registration needs.
    The pursuit stops per row at a relative coefficient floor, so it does not need the true L0.
    An atom no row uses is restarted at a random row. With ``replace``, restarts go to the rows
    the dictionary explains worst instead, and in every second round of the first
    ``REPLACE_ROUNDS`` of them the atom with the least coefficient energy is restarted too (it
    frees atoms that settled between two directions; K-SVD's atom replacement).
    """
    rng = np.random.default_rng(seed)
    d = atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-12)
    floor = None
    for it in range(iters):
        z, floor = _matching_pursuit(x, d, k, floor)
        # the least-squares decoder from the normal equations ([a, a]: the codes are sparse and
        # n >> a, so this is the same solution as lstsq on [n, a] at a fraction of the cost; an
        # atom no row uses has a zero row and column and gets the min-norm 0)
        new = np.linalg.lstsq(z.T @ z, z.T @ x, rcond=None)[0]  # [a, d]
        norm = np.linalg.norm(new, axis=1)
        unused = (norm < 1e-8) | ~(z > 0).any(axis=0)
        if not replace:
            new[unused] = x[rng.choice(len(x), int(unused.sum()))]
        else:
            if it < REPLACE_ROUNDS * iters and it % 2 == 1:
                unused[np.argmin((z ** 2).sum(axis=0))] = True
            if unused.any():
                resid = np.linalg.norm(x - z @ d, axis=1)
                worst = np.argsort(-resid, kind="stable")  # fewer rows than restarts: they cycle
                new[unused] = x[np.resize(worst, int(unused.sum()))]
        d = new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
    return d


@dataclass
class Registration:
    """Atoms split into slots and paired: feature ``i`` in slot ``j`` is atom ``order[j, i]``."""

    order: np.ndarray
    """``[slots, m]`` atom indices."""
    maps: np.ndarray
    """``[slots - 1, d, d]`` orthogonal maps: ``atoms[order[0]] @ maps[j-1] ~ atoms[order[j]]``."""
    fit: float
    """Mean cosine of ``atoms[order[0], i] @ maps[j-1]`` with ``atoms[order[j], i]`` over every pair."""
    inliers: float
    """Fraction of those pairs with cosine above ``INLIER_COSINE``."""


def _procrustes(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Orthogonal ``R`` minimising ``||a R - b||`` (rows weighted by ``w``); batched over leading axes."""
    if w is not None:
        a = a * w[..., None]
    u, _, vt = np.linalg.svd(np.swapaxes(a, -1, -2) @ b)
    return u @ vt


def _cherries(g: np.ndarray, ok: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Triples ``(a, b, c)`` of allowed atoms with ``b, c`` among ``a``'s nearest neighbours, and
    their sides ``(g_ab, g_ac, g_bc)``."""
    n = len(g)
    gm = np.where(np.eye(n, dtype=bool), -np.inf, g)
    nb = np.argsort(-gm, axis=1, kind="stable")[:, :neighbours]  # [n, L]
    iu, ju = np.triu_indices(nb.shape[1], 1)
    a = np.repeat(np.arange(n), len(iu))
    b, c = nb[:, iu].ravel(), nb[:, ju].ravel()
    tri = np.stack([a, b, c], axis=1)
    tri = tri[ok[tri].all(axis=1)]
    sides = np.stack([g[tri[:, 0], tri[:, 1]], g[tri[:, 0], tri[:, 2]], g[tri[:, 1], tri[:, 2]]], axis=1)
    return tri, sides


def _seeds(g: np.ndarray, src_ok: np.ndarray, tgt_ok: np.ndarray, neighbours: int, n_seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_seeds`` pairs of triangles (source, target) whose sides agree best: three
    correspondences each, the starts of ``_grow``."""
    ts, ss = _cherries(g, src_ok, neighbours)
    tt, st = _cherries(g, tgt_ok, neighbours)
    cands: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for swap in (False, True):  # the target triangle with b and c exchanged
        t2 = tt[:, [0, 2, 1]] if swap else tt
        s2 = st[:, [1, 0, 2]] if swap else st
        for lo in range(0, len(ts), 256):
            disc = np.abs(ss[lo:lo + 256, None, :] - s2[None, :, :]).max(axis=-1)  # [chunk, Tt]
            share = (ts[lo:lo + 256, None, :, None] == t2[None, :, None, :]).any(axis=(-1, -2))
            disc[share] = np.inf
            keep = min(n_seeds, disc.size)
            flat = np.argpartition(disc, keep - 1, axis=None)[:keep]
            i, j = np.unravel_index(flat, disc.shape)
            ok = np.isfinite(disc[i, j])
            cands.append((disc[i, j][ok], ts[lo + i[ok]], t2[j[ok]]))
    disc = np.concatenate([c[0] for c in cands])
    best = np.argsort(disc, kind="stable")[:n_seeds]
    return np.concatenate([c[1] for c in cands])[best], np.concatenate([c[2] for c in cands])[best]


def _grow(g: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int, src_ok: np.ndarray, tgt_ok: np.ndarray,
          chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Grow hypotheses ``xs -> ys`` ([S, k0] atom indices) greedily to ``size`` pairs: each step
    adds the unused (source, target) whose inner products with the pairs so far agree best
    (an isometry keeps them)."""
    outs = []
    n = len(g)
    base = ~(src_ok[:, None] & tgt_ok[None, :]) | np.eye(n, dtype=bool)
    for lo in range(0, len(xs), chunk):
        x0, y0 = xs[lo:lo + chunk], ys[lo:lo + chunk]
        s, k0 = x0.shape
        idx = np.arange(s)
        cost = np.zeros((s, n, n))
        for k in range(k0):
            cost += (g[x0[:, k]][:, :, None] - g[y0[:, k]][:, None, :]) ** 2
        used = np.zeros((s, n), bool)
        used[idx[:, None], x0] = used[idx[:, None], y0] = True
        X, Y = [x0[:, k] for k in range(k0)], [y0[:, k] for k in range(k0)]
        for _ in range(k0, size):
            c = np.where(base[None] | used[:, :, None] | used[:, None, :], np.inf, cost)
            x, y = np.divmod(c.reshape(s, -1).argmin(axis=1), n)
            X.append(x)
            Y.append(y)
            used[idx, x] = used[idx, y] = True
            cost += (g[x][:, :, None] - g[y][:, None, :]) ** 2
        outs.append((np.stack(X, 1), np.stack(Y, 1)))
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _complete(a: np.ndarray, X: np.ndarray, Y: np.ndarray, m: int, src_ok: np.ndarray, tgt_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extend pairs ``X -> Y`` to ``m`` with the map they fit: best remaining (source, target) first."""
    r = _procrustes(a[X], a[Y])
    used = np.zeros(len(a), bool)
    used[X] = used[Y] = True
    sim = (a @ r) @ a.T
    sim[~src_ok | used, :] = -np.inf
    sim[:, ~tgt_ok | used] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    X, Y = list(X), list(Y)
    while len(X) < m:
        x, y = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if not np.isfinite(sim[x, y]):
            break
        X.append(int(x))
        Y.append(int(y))
        sim[[x, y], :] = -np.inf
        sim[:, [x, y]] = -np.inf
    return np.array(X), np.array(Y)


def _icp(a: np.ndarray, X: np.ndarray, Y: np.ndarray, iters: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alternate the orthogonal map (Procrustes on the inlier pairs) and the pairing of the
    sources ``X`` with the targets ``Y`` (Hungarian on ``cos(a_x R, a_y)``)."""
    w = np.ones(len(X))
    for _ in range(iters):
        r = _procrustes(a[X], a[Y], w)
        _, col = linear_sum_assignment(-((a[X] @ r) @ a[Y].T))
        Y = Y[col]
        cos = np.einsum("ij,ij->i", a[X] @ r, a[Y])
        inl = cos > INLIER_COSINE
        w = inl.astype(float) if inl.sum() >= a.shape[1] else np.ones(len(X))
    r = _procrustes(a[X], a[Y], w)
    return X, Y, r


def register_pair(atoms: np.ndarray, m: int, src_ok: np.ndarray | None = None, tgt_ok: np.ndarray | None = None,
                  *, neighbours: int = 6, n_seeds: int = 4000, probe: int = 8, n_refine: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find ``m`` pairs (source -> target) of unit ``atoms`` related by one orthogonal map.

    An isometry keeps inner products, so a correct pairing has ``<a_x, a_x'> = <a_y, a_y'>`` for
    every two of its pairs. Seeds are triangles of near neighbours whose sides agree
    (``_seeds``); each grows greedily to ``probe`` pairs (``_grow``), the ``n_refine`` most
    consistent grow to ``min(m, 2 d + 8)`` pairs, are completed with their map (``_complete``)
    and polished by ICP (``_icp``); the one with the highest mean cosine wins. Deterministic.
    Returns (sources [m], targets [m], map [d, d]).
    """
    n, d = atoms.shape
    src_ok = np.ones(n, bool) if src_ok is None else src_ok
    tgt_ok = np.ones(n, bool) if tgt_ok is None else tgt_ok
    if m < 3 or int(src_ok.sum()) < 3 or int(tgt_ok.sum()) < 3:  # too few atoms for a triangle: pair in order
        xs, ys = np.nonzero(src_ok)[0][:m], np.nonzero(tgt_ok & ~src_ok)[0][:m]
        if len(ys) < m:
            ys = np.setdiff1d(np.nonzero(tgt_ok)[0], xs)[:m]
        return xs, ys, _procrustes(atoms[xs], atoms[ys])
    neighbours = min(neighbours, n - 1)
    g = atoms @ atoms.T
    n_seeds = max(16, min(n_seeds, int(4e7 // (n * n * probe))))
    sx, sy = _seeds(g, src_ok, tgt_ok, neighbours, n_seeds)
    if len(sx) == 0:
        raise ProbeError("registration found no seed: too few atoms")
    X, Y = _grow(g, sx, sy, min(probe, m), src_ok, tgt_ok)
    incons = ((g[X[:, :, None], X[:, None, :]] - g[Y[:, :, None], Y[:, None, :]]) ** 2).sum(axis=(1, 2))
    top = np.argsort(incons, kind="stable")[:n_refine]
    X, Y = _grow(g, X[top], Y[top], min(m, 2 * d + 8), src_ok, tgt_ok)
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for xs, ys in zip(X, Y):
        xs, ys = _complete(atoms, xs, ys, m, src_ok, tgt_ok)
        xs, ys, r = _icp(atoms, xs, ys)
        score = float(np.einsum("ij,ij->i", atoms[xs] @ r, atoms[ys]).mean())
        if best is None or score > best[0]:
            best = (score, xs, ys, r)
    assert best is not None
    return best[1], best[2], best[3]


def register_slots(atoms: np.ndarray, slots: int) -> Registration:
    """Split ``slots * m`` atoms [slots * m, d] into ``slots`` slots of ``m`` paired features.

    Slot 0 and slot 1 come from ``register_pair`` over all atoms; each further slot from
    ``register_pair`` with slot 0 as the only sources and the atoms not yet placed as targets.
    The search assumes the maps between slots are near-isometries (angles kept); the binding
    SAE's maps are free linear maps once training goes on from this start.
    """
    a = atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-12)
    n, d = a.shape
    if n % slots:
        raise ProbeError(f"{n} atoms do not split into {slots} slots")
    m = n // slots
    x0, y, r = register_pair(a, m)
    order, maps = [x0, y], [r]
    placed = np.zeros(n, bool)
    placed[x0] = placed[y] = True
    src = np.zeros(n, bool)
    src[x0] = True
    for _ in range(2, slots):
        xs, ys, r = register_pair(a, m, src, ~placed)
        pos = {int(x): i for i, x in enumerate(xs)}
        ys = ys[[pos[int(x)] for x in x0]]  # in slot 0's order
        order.append(ys)
        maps.append(r)
        placed[ys] = True
    cos = np.concatenate([np.einsum("ij,ij->i", a[x0] @ r, a[yj]) for r, yj in zip(maps, order[1:])])
    return Registration(order=np.stack(order), maps=np.stack(maps), fit=float(cos.mean()),
                        inliers=float((cos > INLIER_COSINE).mean()))


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
