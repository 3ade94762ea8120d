"""The SAE modules, their registry, and the SAE folder: ``cfg.json``, weights, ``metrics.json``.

An SAE maps an activation ``x`` ([..., d_in]) to a sparse code ``z`` ([..., d_sae]) and back::

    z     = act((x - b_dec) @ W_enc + b_enc)      act = TopK-then-ReLU, or ReLU
    x_hat = z @ W_dec + b_dec

with SAELens's parameter names and shapes (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]``) and decoder rows of unit norm. Saved as ``cfg.json`` +
``sae_weights.safetensors`` (SAELens 6 keys, so ``sae_lens.SAE.load_from_disk`` reads it) and
``metrics.json``, at the names ``probes.layout.SAELayout`` gives. The configs are in
``probes.sae.config``; training in ``probes.sae.training``. See ``docs/sae.md``.

References: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (TopK, AuxK);
Bricken et al. 2023, "Towards Monosemanticity" (ReLU + L1); SAELens (file format).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from probes.errors import ProbeError
from probes.layout import SAE_CFG, SAE_WEIGHTS, TMP_MARK, SAELayout
from probes.sae.config import CONFIGS, ReLUConfig, SAEConfig, TopKConfig, config_from_dict

SAELENS_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
"""The tensors of ``sae_weights.safetensors`` (SAELens 6 names)."""


# --------------------------------------------------------------------------- models
class SparseAutoencoder(nn.Module):
    """Shared parameters and the encode/decode contract; subclasses choose the activation.

    ``encode``, ``decode`` and ``forward`` take torch tensors of any leading shape, so a forward
    hook on the agent's network can replace an activation by ``sae.forward(act)``.
    """

    cfg: SAEConfig

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, dtype=dtype)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # [d_sae, d_in]
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # [d_in, d_sae], W_enc = W_dec^T
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))  # [d_sae]
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))  # [d_in]

    # -- inference
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(x - b_dec) @ W_enc + b_enc``: [..., d_sae]."""
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse code of ``x`` ([..., d_in] -> [..., d_sae])."""
        return self.activation(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction from a code ([..., d_sae] -> [..., d_in])."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the reconstruction that can stand in for ``x``."""
        return self.decode(self.encode(x))

    # -- training
    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor | None, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Loss on one batch ``x`` [B, d_in].

        ``dead`` is a [d_sae] bool mask of latents that have not fired recently (None: none),
        ``progress`` the fraction of training done (for warm-ups). Returns the loss, its named
        parts (detached 0-d tensors, for logging) and a [d_sae] count of how often each latent
        fired.
        """
        raise NotImplementedError

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def load_saelens_state(self, state: dict[str, torch.Tensor], where: str = "") -> None:
        """Set the parameters from the SAELens tensors of ``SAELENS_TENSORS`` (shapes checked by
        ``load_sae``); an architecture whose decoder is computed overrides this."""
        for name in SAELENS_TENSORS:
            getattr(self, name).copy_(state[name])

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of ``W_dec.grad`` along each (unit) decoder row: it only changes norms."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec


class TopKSAE(SparseAutoencoder):
    """TopK SAE: keep the ``k`` largest pre-activations, ReLU them, zero the rest."""

    cfg: TopKConfig

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor | None, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        # Only k (and aux_k) latents per row are non-zero, so the step is written sparsely: the
        # dense [B, d_sae] pre-activations are computed once without autograd, the kept latents
        # are gathered (``_SparseEncode``: its backward touches only their encoder columns) and
        # decoded as a weighted sum of k decoder rows (``_SparseDecode``). The gradients are
        # those of the dense formulation; the dense backward matmuls are never formed.
        with torch.no_grad():
            xc = x - self.b_dec  # [B, d_in]
            pre = torch.addmm(self.b_enc, xc, self.W_enc)  # [B, d_sae]
            idx = pre.topk(self.cfg.k, dim=-1, sorted=False).indices  # [B, k]
        vals = _SparseEncode.apply(xc, pre, idx, self.W_enc, self.b_enc, self.b_dec).relu()  # [B, k]
        x_hat = _SparseDecode.apply(vals, idx, self.W_dec) + self.b_dec  # [B, d_in]
        err = x - x_hat  # [B, d_in]
        mse = err.pow(2).sum(dim=-1).mean()
        loss = mse
        parts = {"mse": mse.detach()}
        n_dead = int(dead.sum()) if dead is not None else 0
        if n_dead > 0 and self.cfg.aux_k_coefficient > 0:
            assert dead is not None
            k_base = self.cfg.aux_k or max(1, self.cfg.d_in // 2)
            k_aux = min(k_base, n_dead)
            # Dead latents, alone, try to explain the live latents' residual (Gao et al. A.2);
            # the loss is scaled down while few latents are dead, as in SAELens. Only the dead
            # columns are computed and ranked: densely while they are at most a quarter of the
            # latents, else through their top aux_k alone.
            dead_idx = dead.nonzero().squeeze(1)  # [n_dead]
            if 4 * n_dead <= self.cfg.d_sae:
                pre_d = (x - self.b_dec) @ self.W_enc[:, dead_idx] + self.b_enc[dead_idx]  # [B, n_dead]
                aux_vals, local = pre_d.topk(k_aux, dim=-1, sorted=False)  # [B, k_aux]
                z_d = torch.zeros_like(pre_d).scatter(-1, local, aux_vals.relu())
                e_hat = z_d @ self.W_dec[dead_idx]  # [B, d_in]
            else:
                with torch.no_grad():
                    local = pre.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False).indices
                    aux_idx = dead_idx[local]  # [B, k_aux]
                aux_vals = _SparseEncode.apply(xc, pre, aux_idx, self.W_enc, self.b_enc, self.b_dec).relu()
                e_hat = _SparseDecode.apply(aux_vals, aux_idx, self.W_dec)  # [B, d_in]
            aux = (err.detach() - e_hat).pow(2).sum(dim=-1).mean() * min(1.0, n_dead / k_base)
            loss = loss + self.cfg.aux_k_coefficient * aux
            parts["aux"] = aux.detach()
        with torch.no_grad():
            fired = torch.bincount(idx[vals > 0], minlength=self.cfg.d_sae)
        return loss, parts, fired


def _scatter_rows(idx: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor, n_out: int) -> torch.Tensor:
    """``out[idx[b, j]] += coef[b, j] * rows[b]`` as one sparse-dense product: ``M^T @ rows`` with
    ``M`` the [B, n_out] matrix holding ``coef`` at ``idx`` ([B, k], [B, k], [B, d] -> [n_out, d])."""
    b, k = idx.shape
    src = torch.arange(b).repeat_interleave(k)  # [B * k]
    m = torch.sparse_coo_tensor(
        torch.stack([idx.reshape(-1), src]), coef.reshape(-1), (n_out, b), check_invariants=False
    )
    return torch.sparse.mm(m, rows)


class _SparseEncode(torch.autograd.Function):
    """``pre.gather(1, idx)`` where ``pre = (x - b_dec) @ W_enc + b_enc`` was computed outside
    autograd; the backward gives the gradients for ``W_enc``, ``b_enc`` and ``b_dec`` by scattering
    into the ``idx`` columns only (``B * k * d_in`` work instead of ``B * d_sae * d_in``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, xc: torch.Tensor, pre: torch.Tensor, idx: torch.Tensor,
        W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(xc, idx, W_enc)
        return pre.gather(1, idx)  # [B, k]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xc, idx, W_enc = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        g_w = _scatter_rows(idx, grad, xc, d_sae)  # [d_sae, d_in]
        g_b = torch.zeros(d_sae, dtype=grad.dtype).index_add_(0, idx.reshape(-1), grad.reshape(-1))  # [d_sae]
        return None, None, None, g_w.T.contiguous(), g_b, -(W_enc @ g_b)


class _SparseDecode(torch.autograd.Function):
    """``sum_j vals[:, j] * W_dec[idx[:, j]]`` ([B, k], [B, k], [d_sae, d_in] -> [B, d_in]): the
    decode of a code with k non-zeros per row, whose backward scatters into the k used rows."""

    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(vals, idx, W_dec)
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        vals, idx, W_dec = ctx.saved_tensors
        if 16 * idx.shape[1] >= len(W_dec):  # many rows per sample: one dense product is cheaper
            g_vals = (grad @ W_dec.T).gather(1, idx)  # [B, k]
        else:  # gather the k rows: memory-bound, but B * k * d_in instead of B * d_sae * d_in
            g_vals = torch.bmm(W_dec[idx], grad.unsqueeze(-1)).squeeze(-1)  # [B, k]
        return g_vals, None, _scatter_rows(idx, vals, grad, len(W_dec))


class ReLUSAE(SparseAutoencoder):
    """ReLU SAE trained with an L1 penalty weighted by the decoder norms."""

    cfg: ReLUConfig

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor | None, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        z = self.pre_acts(x).relu()  # [B, d_sae]
        x_hat = z @ self.W_dec + self.b_dec
        mse = (x - x_hat).pow(2).sum(dim=-1).mean()
        l1 = (z * self.W_dec.norm(dim=1)).sum(dim=-1).mean()
        warm = self.cfg.l1_warmup_fraction
        coef = self.cfg.l1_coefficient * (min(1.0, progress / warm) if warm > 0 else 1.0)
        loss = mse + coef * l1
        fired = (z > 0).sum(dim=0)
        return loss, {"mse": mse.detach(), "l1": l1.detach()}, fired


MODELS: dict[str, type[SparseAutoencoder]] = {"topk": TopKSAE, "relu": ReLUSAE}
"""Architecture name -> SAE class; the names are those of ``probes.sae.config.CONFIGS``."""
REGISTRY: dict[str, tuple[type[SparseAutoencoder], type[SAEConfig]]] = {
    name: (MODELS[name], cfg_cls) for name, cfg_cls in CONFIGS.items() if name in MODELS
}
"""Architecture name -> (SAE class, config class)."""


def make_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE for ``cfg`` (seed torch first for reproducible weights)."""
    for cls, cfg_cls in REGISTRY.values():
        if type(cfg) is cfg_cls:
            return cls(cfg)
    raise ProbeError(f"no SAE architecture for config {type(cfg).__name__}")


# --------------------------------------------------------------------------- save / load
def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: ``NAME.tmp`` beside it, then ``os.replace``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``, replacing what is there, and never lose both.

    ``target`` (if any) is renamed aside to a hidden name, ``new`` renamed into place, then the old
    one deleted. A kill between the two renames leaves both complete folders under their names.
    """
    new, target = Path(new), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old{TMP_MARK}{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_sae(sae: SparseAutoencoder, out_dir: Path | str) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens names and shapes)."""
    layout = SAELayout(Path(out_dir))
    layout.path.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(sae, name).detach().contiguous().cpu() for name in SAELENS_TENSORS}
    save_file(tensors, str(layout.weights_path))
    write_json(layout.cfg_path, sae.cfg.to_dict())
    return layout.path


def load_sae(sae_dir: Path | str, device: str = "cpu") -> tuple[SparseAutoencoder, SAEConfig]:
    """Load an SAE saved by ``save_sae`` (or a SAELens topk/standard SAE): ``(sae, cfg)``.

    The SAE is in eval mode; ``sae.forward(x)`` reconstructs raw activations of its hook.
    """
    layout = SAELayout(Path(sae_dir))
    cfg_path, weights_path = layout.cfg_path, layout.weights_path
    if not cfg_path.exists() or not weights_path.exists():
        raise ProbeError(f"{layout.path} is not an SAE directory (needs {SAE_CFG} and {SAE_WEIGHTS})")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{cfg_path} is not valid JSON ({exc})") from None
    cfg = config_from_dict(data, where=str(cfg_path))
    cfg.device = device
    sae = MODELS[cfg.architecture](cfg)
    state = load_file(str(weights_path), device=device)
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(state)
    if missing:
        raise ProbeError(f"{weights_path} lacks {', '.join(sorted(missing))}")
    with torch.no_grad():
        for name in SAELENS_TENSORS:
            param = getattr(sae, name)
            if tuple(state[name].shape) != tuple(param.shape):
                raise ProbeError(f"{weights_path}: {name} has shape {tuple(state[name].shape)}, cfg says {tuple(param.shape)}")
        sae.load_saelens_state(state, where=str(weights_path))
    sae.to(device).eval()
    return sae, cfg


LIVE_METRICS = ("return_recovered", "return_clean", "return_spliced", "return_mean_ablated")
"""Metrics only the live agent can give (SAE spliced into the network); see docs/sae.md."""
LIVE_NOTE_PREFIX = "return_recovered skipped"
"""How the note that says the live metrics are missing begins."""


def read_metrics(sae_dir: Path | str) -> dict[str, Any]:
    """The SAE's ``metrics.json`` (empty dict if absent)."""
    path = SAELayout(Path(sae_dir)).metrics_path
    return json.loads(path.read_text()) if path.exists() else {}


def update_metrics(sae_dir: Path | str, **extra: Any) -> dict[str, Any]:
    """Merge ``extra`` (e.g. ``return_recovered=0.93`` from the live agent) into ``metrics.json``.

    Notes that said such metrics were skipped are dropped once they are supplied. Returns the
    merged metrics.
    """
    layout = SAELayout(Path(sae_dir))
    if not layout.cfg_path.exists():
        raise ProbeError(f"{layout.path} is not an SAE directory (no {SAE_CFG})")
    metrics = read_metrics(layout.path)
    metrics.update(extra)
    if any(key in extra for key in LIVE_METRICS):
        metrics["notes"] = [n for n in metrics.get("notes", []) if not n.startswith(LIVE_NOTE_PREFIX)]
    write_json(layout.metrics_path, metrics)
    return metrics


import probes.sae.binding  # noqa: E402,F401  (registers the "binding" architecture; it subclasses TopKSAE)
