"""Sparse autoencoders on recorded activations: TopK (with AuxK) and ReLU (with L1).

An SAE maps an activation ``x`` ([..., d_in]) to a sparse code ``z`` ([..., d_sae]) and back::

    z     = act((x - b_dec) @ W_enc + b_enc)      act = TopK-then-ReLU, or ReLU
    x_hat = z @ W_dec + b_dec

with SAELens's parameter names and shapes (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]``) and decoder rows of unit norm. Saved as ``cfg.json`` +
``sae_weights.safetensors`` (SAELens 6 keys, so ``sae_lens.SAE.load_from_disk`` reads it) and
``metrics.json``. Training is in ``probes.sae_training``; the data sources in
``probes.sae_data``. See ``docs/sae.md``.

References: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (TopK, AuxK);
Bricken et al. 2023, "Towards Monosemanticity" (ReLU + L1); SAELens (file format).

Script::

    python -m probes.sae FILE.h5 --hook NAME [--arch topk|relu] [--width W] [--k K] [--l1 C]
        [--steps N | --epochs E] [--lr LR] [--seed S] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from probes.errors import ProbeError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
METRICS_FILENAME = "metrics.json"
SAELENS_COMPAT_VERSION = "6.0.0"
"""The SAELens major version whose ``cfg.json`` layout we write."""


# --------------------------------------------------------------------------- configs
@dataclass
class SAEConfig:
    """What every architecture shares: shapes, provenance and the training schedule."""

    d_in: int
    """Dimension of the activations (the hook's width)."""
    d_sae: int
    """Number of latents (the dictionary size)."""
    hook_name: str = ""
    """The hook the SAE reads: the same string as ``/acts/<hook>`` in the activation file."""
    dtype: str = "float32"
    """Parameter dtype (SAELens key)."""
    device: str = "cpu"
    """Device the SAE is trained and loaded on (SAELens key)."""
    lr: float = 1e-2
    """Adam learning rate (inputs are rescaled to mean squared norm ``d_in`` first, so one value
    suits activations of any scale)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2)."""
    lr_warmup_fraction: float = 0.02
    """Fraction of the steps over which the learning rate ramps up linearly from 0."""
    lr_decay_fraction: float = 0.2
    """Fraction of the steps, at the end, over which it decays linearly to 0."""
    batch_size: int = 1024
    """Rows per optimisation step."""
    steps: int | None = None
    """Number of optimisation steps; None means: from ``epochs``, else ``train_samples``."""
    epochs: float | None = None
    """Passes over the training rows (used when ``steps`` is None)."""
    train_samples: int = 2_000_000
    """Default budget in rows seen when neither ``steps`` nor ``epochs`` is given; capped at
    ``max_epochs`` passes over the data and raised to at least ``min_steps`` steps."""
    max_epochs: float = 30.0
    """Cap on passes over the data for the default budget (small files need fewer rows)."""
    min_steps: int = 200
    """Floor on the default number of steps (tiny files still get trained)."""
    b_dec_init: str = "geometric_median"
    """How the pre-bias ``b_dec`` starts: ``geometric_median``, ``mean`` or ``zeros`` of a sample
    of training rows."""
    init_sample: int = 16384
    """Rows sampled for the pre-bias and the input scale."""
    normalize_scale: float = 1.0
    """Factor the raw activations were multiplied by during training (set by the trainer so that
    the mean squared distance to ``b_dec`` is ``d_in``; folded into ``b_enc``/``b_dec`` when
    saving, so the saved SAE reads raw activations and this is kept for the record)."""
    seed: int = 0
    """Seed for initialisation, the episode split and the data order."""
    test_fraction: float = 0.2
    """Fraction of episodes held out for the metrics."""

    architecture: ClassVar[str] = ""
    saelens_architecture: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """SAELens-6 style ``cfg.json`` content plus every field of this dataclass."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["adam_betas"] = list(self.adam_betas)
        out.update(
            architecture=self.saelens_architecture,
            lab_architecture=self.architecture,
            apply_b_dec_to_input=True,
            normalize_activations="none",
            reshape_activations="none",
            metadata={
                "hook_name": self.hook_name,
                "sae_lens_version": SAELENS_COMPAT_VERSION,
                "sae_lens_training_version": SAELENS_COMPAT_VERSION,
                "trained_by": "rl-lab probes.sae",
            },
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SAEConfig":
        """Inverse of ``to_dict``; unknown keys (SAELens extras) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "hook_name" not in kwargs and isinstance(data.get("metadata"), Mapping):
            kwargs["hook_name"] = data["metadata"].get("hook_name") or ""
        if "adam_betas" in kwargs:
            kwargs["adam_betas"] = tuple(kwargs["adam_betas"])
        return cls(**kwargs)


@dataclass
class TopKConfig(SAEConfig):
    """TopK SAE (Gao et al. 2024): exactly ``k`` latents may fire; AuxK revives dead latents."""

    k: int = 16
    """Latents kept per sample (the L0 of every code)."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss per sample; None means ``d_in // 2`` (Gao et al.)."""
    aux_k_coefficient: float = 1.0 / 32.0
    """Weight of the AuxK loss relative to the reconstruction loss (Gao et al. use 1/32)."""
    dead_window: int = 100_000
    """A latent is dead (for AuxK) once it has not fired for this many training rows."""

    architecture: ClassVar[str] = "topk"
    saelens_architecture: ClassVar[str] = "topk"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["rescale_acts_by_decoder_norm"] = False
        return out


@dataclass
class ReLUConfig(SAEConfig):
    """ReLU SAE with an L1 penalty on the codes (SAELens's "standard" architecture)."""

    l1_coefficient: float = 1.0
    """Weight of ``sum_i z_i * ||W_dec[i]||`` (per sample, inputs rescaled to norm² ``d_in``)."""
    l1_warmup_fraction: float = 0.05
    """Fraction of the steps over which the L1 weight ramps up from 0."""

    architecture: ClassVar[str] = "relu"
    saelens_architecture: ClassVar[str] = "standard"


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


REGISTRY: dict[str, tuple[type[SparseAutoencoder], type[SAEConfig]]] = {
    "topk": (TopKSAE, TopKConfig),
    "relu": (ReLUSAE, ReLUConfig),
}
"""Architecture name -> (SAE class, config class)."""
_FROM_SAELENS = {"topk": "topk", "standard": "relu", "relu": "relu"}


def make_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE for ``cfg`` (seed torch first for reproducible weights)."""
    for cls, cfg_cls in REGISTRY.values():
        if type(cfg) is cfg_cls:
            return cls(cfg)
    raise ProbeError(f"no SAE architecture for config {type(cfg).__name__}")


def make_config(arch: str, **kwargs: Any) -> SAEConfig:
    """The config of architecture ``arch`` (a key of ``REGISTRY``) built from ``kwargs``."""
    if arch not in REGISTRY:
        raise ProbeError(f"unknown SAE architecture {arch!r} (choose from {', '.join(REGISTRY)})")
    cfg_cls = REGISTRY[arch][1]
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ProbeError(f"{arch} SAE has no option(s) {', '.join(unknown)}")
    cfg = cfg_cls(**kwargs)
    _validate(cfg)
    return cfg


def _validate(cfg: SAEConfig) -> None:
    if cfg.d_in < 1 or cfg.d_sae < 1:
        raise ProbeError(f"SAE dimensions must be positive (d_in={cfg.d_in}, d_sae={cfg.d_sae})")
    if isinstance(cfg, TopKConfig) and not 1 <= cfg.k <= cfg.d_sae:
        raise ProbeError(f"k must be between 1 and the width {cfg.d_sae}, got {cfg.k}")
    if isinstance(cfg, ReLUConfig) and cfg.l1_coefficient < 0:
        raise ProbeError(f"the L1 coefficient must be >= 0, got {cfg.l1_coefficient}")
    if cfg.lr <= 0 or cfg.batch_size < 1:
        raise ProbeError("the learning rate and the batch size must be positive")
    if cfg.steps is not None and cfg.steps < 1:
        raise ProbeError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.epochs is not None and cfg.epochs <= 0:
        raise ProbeError(f"epochs must be > 0, got {cfg.epochs}")
    if cfg.b_dec_init not in ("geometric_median", "mean", "zeros"):
        raise ProbeError(f"b_dec_init must be geometric_median, mean or zeros, got {cfg.b_dec_init!r}")


# --------------------------------------------------------------------------- save / load
def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_sae(sae: SparseAutoencoder, out_dir: Path | str) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens names and shapes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.named_parameters()}
    save_file(tensors, str(out / WEIGHTS_FILENAME))
    _write_json(out / CFG_FILENAME, sae.cfg.to_dict())
    return out


def load_sae(sae_dir: Path | str, device: str = "cpu") -> tuple[SparseAutoencoder, SAEConfig]:
    """Load an SAE saved by ``save_sae`` (or a SAELens topk/standard SAE): ``(sae, cfg)``.

    The SAE is in eval mode; ``sae.forward(x)`` reconstructs raw activations of its hook.
    """
    path = Path(sae_dir)
    cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not cfg_path.exists() or not weights_path.exists():
        raise ProbeError(f"{path} is not an SAE directory (needs {CFG_FILENAME} and {WEIGHTS_FILENAME})")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{cfg_path} is not valid JSON ({exc})") from None
    arch = data.get("lab_architecture") or _FROM_SAELENS.get(str(data.get("architecture")), "")
    if arch not in REGISTRY:
        raise ProbeError(f"{cfg_path}: unsupported SAE architecture {data.get('architecture')!r}")
    sae_cls, cfg_cls = REGISTRY[arch]
    cfg = cfg_cls.from_dict(data)
    cfg.device = device
    sae = sae_cls(cfg)
    state = load_file(str(weights_path), device=device)
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(state)
    if missing:
        raise ProbeError(f"{weights_path} lacks {', '.join(sorted(missing))}")
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            param = getattr(sae, name)
            if tuple(state[name].shape) != tuple(param.shape):
                raise ProbeError(f"{weights_path}: {name} has shape {tuple(state[name].shape)}, cfg says {tuple(param.shape)}")
            param.copy_(state[name])
    sae.to(device).eval()
    return sae, cfg


def read_metrics(sae_dir: Path | str) -> dict[str, Any]:
    """The SAE's ``metrics.json`` (empty dict if absent)."""
    path = Path(sae_dir) / METRICS_FILENAME
    return json.loads(path.read_text()) if path.exists() else {}


def update_metrics(sae_dir: Path | str, **extra: Any) -> dict[str, Any]:
    """Merge ``extra`` (e.g. ``return_recovered=0.93`` from the live agent) into ``metrics.json``.

    Notes that said such metrics were skipped are dropped once they are supplied. Returns the
    merged metrics.
    """
    path = Path(sae_dir)
    if not (path / CFG_FILENAME).exists():
        raise ProbeError(f"{path} is not an SAE directory (no {CFG_FILENAME})")
    metrics = read_metrics(path)
    metrics.update(extra)
    if any(key in extra for key in LIVE_METRICS):
        metrics["notes"] = [n for n in metrics.get("notes", []) if not n.startswith(LIVE_NOTE_PREFIX)]
    _write_json(path / METRICS_FILENAME, metrics)
    return metrics


LIVE_METRICS = ("return_recovered", "return_clean", "return_spliced", "return_mean_ablated")
"""Metrics only the live agent can give (SAE spliced into the network); see docs/sae.md."""
LIVE_NOTE_PREFIX = "return_recovered skipped"


# --------------------------------------------------------------------------- file-level API
def default_out_dir(path: Path | str, hook: str, arch: str, width: int) -> Path:
    """``RUN/saes/<hook>-<arch>-<width>/`` for ``RUN/activations/X.h5``, else next to the file."""
    p = Path(path).resolve()
    name = f"{hook}-{arch}-{width}"
    if p.parent.name == "activations":
        return p.parent.parent / "saes" / name
    return p.parent / f"{p.stem}.saes" / name


def train_sae_on_file(
    path: Path | str,
    hook: str,
    *,
    arch: str = "topk",
    width: int | None = None,
    k: int | None = None,
    l1: float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    out_dir: Path | str | None = None,
    seed: int = 0,
    progress: bool = True,
    features: bool = True,
    extra_metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train an SAE on ``/acts/<hook>`` of an activation file, save it, return its metrics.

    Parameters
    ----------
    path, hook:
        The activation file and the hook to read.
    arch:
        ``topk`` or ``relu`` (keys of ``REGISTRY``).
    width:
        Number of latents; default ``8 * d_in``.
    k:
        TopK's latents per sample (default 16, at most ``width``).
    l1:
        ReLU's L1 coefficient (default ``ReLUConfig.l1_coefficient``).
    steps, epochs:
        Training length (at most one); default: the config's sample budget.
    lr, batch_size:
        Override the config defaults.
    out_dir:
        Where to save; default ``default_out_dir``.
    seed:
        Seeds initialisation, the episode split and the data order.
    progress:
        Show a tqdm bar on stderr.
    features:
        Also compute ``features.*`` (``probes.features``) after training.
    extra_metrics:
        Metrics measured elsewhere (e.g. ``return_recovered`` from the live agent).

    The returned dict is ``metrics.json``'s content plus ``out_dir``.
    """
    from probes.activations import ActivationFile
    from probes.sae_training import train_on_file

    if steps is not None and epochs is not None:
        raise ProbeError("give either steps or epochs, not both")
    if arch not in REGISTRY:
        raise ProbeError(f"unknown SAE architecture {arch!r} (choose from {', '.join(REGISTRY)})")
    with ActivationFile(path) as af:
        d_in = af.hook_dim(hook)
    width = width or 8 * d_in
    kwargs: dict[str, Any] = {"d_in": d_in, "d_sae": width, "hook_name": hook, "seed": seed,
                              "steps": steps, "epochs": epochs}
    if lr is not None:
        kwargs["lr"] = lr
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if arch == "topk":
        kwargs["k"] = k if k is not None else min(TopKConfig.k, width)
    elif k is not None:
        raise ProbeError("--k applies to the topk architecture only")
    if arch == "relu" and l1 is not None:
        kwargs["l1_coefficient"] = l1
    elif arch != "relu" and l1 is not None:
        raise ProbeError("--l1 applies to the relu architecture only")
    cfg = make_config(arch, **kwargs)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path, hook, arch, width)
    metrics = train_on_file(path, cfg, out, progress=progress, extra_metrics=extra_metrics)
    if features:
        from probes.features import compute_features

        compute_features(out, path, progress=progress)
    metrics["out_dir"] = str(out)
    return metrics


# --------------------------------------------------------------------------- command line
# The options live in probes.sae_options (no torch import), so that `rl-lab --help` stays instant.
from probes.sae_options import add_arguments  # noqa: E402


def run_from_args(args: argparse.Namespace, file: Path | None = None) -> dict[str, Any]:
    """Train from parsed ``add_arguments`` options (``file`` overrides ``args.file``)."""
    return train_sae_on_file(
        file if file is not None else args.file,
        args.hook,
        arch=args.arch,
        width=args.width,
        k=args.k,
        l1=args.l1,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        out_dir=args.out,
        seed=args.seed,
        progress=not args.json or sys.stderr.isatty(),
        features=not args.no_features,
    )


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A few human-readable lines summarising ``metrics.json``."""
    lines = [
        f"SAE saved to {metrics.get('out_dir', '?')}",
        f"  L0 {metrics['l0']:.2f}   explained variance {metrics['explained_variance']:.4f}   "
        f"MSE {metrics['mse']:.4g}   shrinkage {metrics['shrinkage']:.3f}",
        f"  dead {metrics['dead_fraction']:.1%}   dense {metrics['dense_fraction']:.1%}   "
        f"{metrics['samples']} samples ({metrics['train_rows']} train / {metrics['test_rows']} held-out rows) "
        f"in {metrics['seconds']:.1f} s",
    ]
    lines += [f"  note: {n}" for n in metrics.get("notes", [])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probes.sae", description="Train a sparse autoencoder on one hook of an activation file.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        metrics = run_from_args(args)
    except ProbeError as exc:
        print(f"probes.sae: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(format_metrics(metrics))
    return 0


if __name__ == "__main__":
    # Run the canonical ``probes.sae`` module, not this ``__main__`` copy: the trainer imports
    # ``probes.sae`` and must see the same config classes.
    from probes.sae import main as _main

    sys.exit(_main())
