"""The edit itself: a forward hook that rewrites one module's output, row by row.

Every intervention the lab makes is one formula on the hooked output ``h`` ([B, d])::

    h' = h + (a + b * p) * U          p = h . U   (or the SAE latent's activation z(h))

with one ``(U, a, b)`` per row of the batch, so a single forward pass can carry the clean
policy, the direction at every scale and every random control side by side:

=========  ===================  ======================  =========================================
mode       a                    b                       effect
=========  ===================  ======================  =========================================
clean      0                    0                       ``h`` unchanged (exactly)
add        scale * norm_unit    0                       ``h + scale * norm_unit * U``
erase      scale * centre       -scale                  the coordinate moves a fraction ``scale``
                                                        of the way to ``centre`` (0: projected
                                                        out; the mean: mean-ablated)
clamp      target               -1                      the coordinate is set to ``target``
=========  ===================  ======================  =========================================

A subspace erasure (LEACE, or a random subspace of the same rank) is an affine map per row::

    h' = h - (h - c) @ M          M = scale * (the erased projection)^T   ([d, d])

so ``leace`` rows and the clean row also share one forward pass.

The hooked output may be ``[B, d]`` (an MLP layer) or ``[B, P, d]`` (a transformer's residual
stream: one vector per token); for the latter the edit is applied at ``positions`` (default:
every position), each position with its own coordinate ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

MODES = ("add", "erase", "clamp", "leace")


@dataclass(frozen=True)
class Edit:
    """One row's edit: ``h' = h + (a + b * p) * vector``."""

    vector: np.ndarray  # [d]
    a: float = 0.0
    b: float = 0.0
    sae_latent: bool = False
    """``p`` is the SAE latent's activation instead of ``h . vector`` (``vector`` = its decoder row)."""
    matrix: np.ndarray | None = None
    """A subspace erasure ``h' = h - (h - centre) @ matrix`` ([d, d]), applied after the vector edit."""
    centre: np.ndarray | None = None
    """The point a subspace erasure moves toward ([d]; default 0)."""

    @staticmethod
    def clean(d: int) -> "Edit":
        return Edit(vector=np.zeros(d))


def subspace_edit(matrix: np.ndarray, centre: np.ndarray, scale: float) -> Edit:
    """Erase a fraction ``scale`` of a subspace: ``h' = h - scale * (h - centre) @ matrix``.

    ``matrix`` is the erased part as a right-multiplication ([d, d]): ``Q Q^T`` for the orthogonal
    projection on the columns of ``Q``, ``R^T L^T`` for LEACE's oblique ``L R``.
    """
    d = matrix.shape[0]
    return Edit(vector=np.zeros(d), matrix=np.asarray(scale * matrix, dtype=np.float64),
                centre=np.asarray(centre, dtype=np.float64))


def make_edit(mode: str, vector: np.ndarray, scale: float, *, add_norm: float, mean: float, std: float,
              centre: float, sae_latent: bool = False) -> Edit:
    """The edit for ``mode`` at ``scale``.

    Parameters
    ----------
    mode:
        ``add``, ``erase`` or ``clamp``.
    vector:
        The direction (unit, or an SAE decoder row).
    scale:
        add: multiples of ``add_norm``; erase: fraction of the way to ``centre`` (1 = all the way);
        clamp: the target in standard deviations from the mean, ``mean + scale * std``.
    add_norm:
        Length of the added vector per unit of scale (in units of ``|vector|``).
    mean, std:
        The coordinate's mean and standard deviation over the recording (clamp's units).
    centre:
        Where erasure moves the coordinate: 0 (project out) or its mean (mean-ablate).
    sae_latent:
        The coordinate is an SAE latent's activation (see ``Edit``).
    """
    if mode == "add":
        return Edit(vector, a=scale * add_norm, b=0.0, sae_latent=sae_latent)
    if mode == "erase":
        return Edit(vector, a=scale * centre, b=-scale, sae_latent=sae_latent)
    if mode == "clamp":
        return Edit(vector, a=mean + scale * std, b=-1.0, sae_latent=sae_latent)
    raise ValueError(f"unknown mode {mode!r}")


class SteeringHook:
    """A forward hook applying one ``Edit`` per batch row to a module's output.

    Parameters
    ----------
    module:
        The module whose output is edited (found by hook name).
    sae:
        An SAE reading this hook (``probes.sae``), needed only for ``sae_latent`` edits.
    latent:
        The SAE latent those edits act on.
    positions:
        For a ``[B, P, d]`` output: the positions edited (default: all).
    """

    def __init__(self, module: nn.Module, sae: Any = None, latent: int | None = None,
                 positions: Any = None) -> None:
        self.sae = sae
        self.latent = latent
        self.positions = None if positions is None else torch.as_tensor(positions, dtype=torch.long)
        self.enabled = False
        self._M: torch.Tensor | None = None  # [B, d, d] subspace erasures (None: none in this batch)
        self._c: torch.Tensor | None = None  # [B, d]
        self._U: torch.Tensor | None = None  # [B, d]
        self._a: torch.Tensor | None = None  # [B]
        self._b: torch.Tensor | None = None  # [B]
        self._sae_rows: torch.Tensor | None = None  # [B] bool
        self._handle = module.register_forward_hook(self._hook)

    def set_edits(self, U: np.ndarray, a: np.ndarray, b: np.ndarray, sae_rows: np.ndarray,
                  M: np.ndarray | None = None, c: np.ndarray | None = None) -> None:
        """Set the rows' edits for the next forward pass (arrays of length B, U [B, d]; optional
        subspace erasures ``M`` [B, d, d] toward ``c`` [B, d])."""
        self._M = None if M is None else torch.as_tensor(M, dtype=torch.float32)
        self._c = None if M is None or c is None else torch.as_tensor(c, dtype=torch.float32)
        self._U = torch.as_tensor(U, dtype=torch.float32)
        self._a = torch.as_tensor(a, dtype=torch.float32)
        self._b = torch.as_tensor(b, dtype=torch.float32)
        self._sae_rows = torch.as_tensor(sae_rows, dtype=torch.bool)
        if bool(self._sae_rows.any()) and self.sae is None:
            raise ValueError("SAE-latent edits need the SAE")

    def remove(self) -> None:
        self._handle.remove()

    def _to(self, device: torch.device) -> None:
        """Move the edits to the network's device (once per ``set_edits``; a no-op on the CPU)."""
        if self._U is None or self._U.device == device:
            return
        for name in ("_M", "_c", "_U", "_a", "_b", "_sae_rows", "positions"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled or self._U is None:
            return None
        self._to(output.device)
        if output.ndim == 3 and output.shape[-1] == self._U.shape[-1]:
            # A token sequence [B, P, d]: edit the chosen positions, each with its own coordinate.
            pos = self.positions if self.positions is not None else torch.arange(output.shape[1], device=output.device)
            out = output.clone()
            out[:, pos, :] = self._edit(output[:, pos, :])
            return out
        h = output.reshape(output.shape[0], -1)  # [B, d]
        if h.shape != self._U.shape:
            raise ValueError(f"hooked output has shape {tuple(h.shape)}, edits are for {tuple(self._U.shape)}")
        return self._edit(h[:, None, :])[:, 0, :].reshape(output.shape)

    def _edit(self, h: torch.Tensor) -> torch.Tensor:
        """The edit of ``h`` [B, P, d] (every position of a row gets that row's edit)."""
        assert self._U is not None and self._sae_rows is not None and self._a is not None and self._b is not None
        U = self._U[:, None, :]  # [B, 1, d]
        p = (h * U).sum(-1)  # [B, P]
        if bool(self._sae_rows.any()):
            rows = h[self._sae_rows]  # [B_sae, P, d]
            z = self.sae.encode(rows.reshape(-1, rows.shape[-1]))[:, self.latent]  # [B_sae * P]
            p = p.clone()
            p[self._sae_rows] = z.reshape(rows.shape[:2]).to(p.dtype)
        coef = self._a[:, None] + self._b[:, None] * p  # [B, P]
        out = h + coef[..., None] * U
        if self._M is not None:
            centre = self._c[:, None, :] if self._c is not None else 0.0  # [B, 1, d]
            out = out - torch.bmm(out - centre, self._M)  # [B, P, d] @ [B, d, d]
        return out
