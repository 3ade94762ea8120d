"""SAE configs, architecture names, defaults and command-line options, without torch.

Every default of an SAE lives here once: in the config dataclasses' fields, in
``DEFAULT_ARCH`` and in ``default_width``. The command-line options (``add_arguments``, shared
by ``python -m probes.sae`` and ``rl-lab sae``) quote those defaults, so building a parser, or
computing where an SAE will be saved, costs no torch import.

``cfg.json`` is SAELens-6 style (``to_dict``), so ``sae_lens.SAE.load_from_disk`` reads it.
"""

from __future__ import annotations

import argparse
import math
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from probes.errors import ProbeError
from probes.layout import SAE_CFG, sae_output_dir

SAELENS_COMPAT_VERSION = "6.0.0"
"""The SAELens major version whose ``cfg.json`` layout we write."""
DEFAULT_ARCH = "topk"
"""The architecture trained when none is named."""
WIDTH_PER_INPUT = 8
"""Default number of latents per input dimension (see ``default_width``)."""


def default_width(d_in: int) -> int:
    """The default number of latents of an SAE reading ``d_in`` dimensions: ``8 * d_in``."""
    return WIDTH_PER_INPUT * d_in


def sae_name(hook: str, arch: str, width: int, k: int | None = None) -> str:
    """The default folder name of an SAE: ``<hook>-<arch>-<width>``, and ``-k<k>`` when a sweep
    over k names it (``train_saes_on_file``)."""
    return f"{hook}-{arch}-{width}" + (f"-k{k}" if k is not None else "")


def default_out_dir(path: Path | str, hook: str, arch: str, width: int, k: int | None = None) -> Path:
    """``RUN/saes/<hook>-<arch>-<width>[-k<k>]/`` for ``RUN/activations/X.h5``, else next to the file
    (``probes.layout.sae_output_dir``)."""
    return sae_output_dir(path, sae_name(hook, arch, width, k))


def int_list(text: str) -> list[int]:
    """``--width 256,512``: one positive integer or several, comma-separated (an argparse type)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


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


@dataclass
class BindingConfig(TopKConfig):
    """Binding SAE (``probes.sae.binding``): TopK codes, decoder tied across slots as
    ``W_dec = [D; D R_1; ...; D R_{slots-1}]`` with ``D`` the first ``d_sae / slots`` rows and
    learned ``d_in x d_in`` maps ``R_j``. SAELens reads it as the TopK SAE it is at inference."""

    slots: int = 2
    """Number of slots (blocks of ``d_sae / slots`` latents); ``d_sae`` must be a multiple."""
    init: str = "registered"
    """How training starts: ``registered`` (a TopK SAE of the same width is trained first, its
    atoms are refined, split into slots and paired, and the binding SAE starts there:
    ``BindingSAE.prepare_fit``) or ``random`` (from the random initialisation, or whatever
    weights the SAE holds; gradient descent alone does not find the pairing)."""

    architecture: ClassVar[str] = "binding"
    saelens_architecture: ClassVar[str] = "topk"


CONFIGS: dict[str, type[SAEConfig]] = {cls.architecture: cls for cls in (TopKConfig, ReLUConfig, BindingConfig)}
"""Architecture name -> config class (``probes.sae.model.REGISTRY`` adds the SAE class)."""
ARCHITECTURES: tuple[str, ...] = tuple(sorted(CONFIGS))
"""The architecture names, sorted (the ``--arch`` choices)."""
SAELENS_ARCHITECTURES = {"topk": "topk", "standard": "relu", "relu": "relu"}
"""SAELens ``cfg.json`` ``architecture`` -> our architecture name (for SAEs SAELens wrote)."""


def check_architecture(arch: str) -> None:
    """Raise ``ProbeError`` unless ``arch`` is a known architecture."""
    if arch not in CONFIGS:
        raise ProbeError(f"unknown SAE architecture {arch!r} (choose from {', '.join(CONFIGS)})")


def make_config(arch: str, **kwargs: Any) -> SAEConfig:
    """The config of architecture ``arch`` (a key of ``CONFIGS``) built from ``kwargs``, validated."""
    check_architecture(arch)
    cfg_cls = CONFIGS[arch]
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ProbeError(f"{arch} SAE has no option(s) {', '.join(unknown)}")
    cfg = cfg_cls(**kwargs)
    validate(cfg)
    return cfg


def config_from_dict(data: Mapping[str, Any], where: str = SAE_CFG) -> SAEConfig:
    """The config a ``cfg.json`` describes (ours, or a SAELens topk/standard SAE's).

    ``where`` names the file in the error raised for an unsupported architecture.
    """
    arch = data.get("lab_architecture") or SAELENS_ARCHITECTURES.get(str(data.get("architecture")), "")
    if arch not in CONFIGS:
        raise ProbeError(f"{where}: unsupported SAE architecture {data.get('architecture')!r}")
    return CONFIGS[arch].from_dict(data)


def validate(cfg: SAEConfig) -> None:
    """Raise ``ProbeError`` for a config no SAE can be trained with."""
    if cfg.d_in < 1 or cfg.d_sae < 1:
        raise ProbeError(f"SAE dimensions must be positive (d_in={cfg.d_in}, d_sae={cfg.d_sae})")
    if isinstance(cfg, TopKConfig) and not 1 <= cfg.k <= cfg.d_sae:
        raise ProbeError(f"k must be between 1 and the width {cfg.d_sae}, got {cfg.k}")
    if isinstance(cfg, BindingConfig) and not (cfg.slots >= 2 and cfg.d_sae % cfg.slots == 0):
        raise ProbeError(f"a binding SAE needs at least 2 slots and a width that is a multiple of them "
                         f"(slots={cfg.slots}, width={cfg.d_sae})")
    if isinstance(cfg, BindingConfig) and cfg.init not in ("registered", "random"):
        raise ProbeError(f"a binding SAE's init must be registered or random, got {cfg.init!r}")
    if isinstance(cfg, ReLUConfig) and cfg.l1_coefficient < 0:
        raise ProbeError(f"the L1 coefficient must be >= 0, got {cfg.l1_coefficient}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ProbeError(f"the learning rate must be a finite number above 0, got {cfg.lr}")
    if cfg.batch_size < 1:
        raise ProbeError(f"the batch size must be positive, got {cfg.batch_size}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ProbeError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.epochs is not None and not (math.isfinite(cfg.epochs) and cfg.epochs > 0):
        raise ProbeError(f"epochs must be > 0, got {cfg.epochs}")
    if cfg.b_dec_init not in ("geometric_median", "mean", "zeros"):
        raise ProbeError(f"b_dec_init must be geometric_median, mean or zeros, got {cfg.b_dec_init!r}")


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser, file_arg: bool = True) -> None:
    """Add the SAE training options (the same for ``python -m probes.sae`` and ``rl-lab sae``).

    ``file_arg=False`` leaves out the positional FILE (a caller that finds the file itself).
    The defaults shown are the configs' own.
    """
    if file_arg:
        parser.add_argument("file", type=Path, help="activation file (.h5)")
    parser.add_argument("--hook", required=True, action="append",
                        help="hook name: which /acts/<hook> to train on; repeat it to train one SAE per hook "
                             "in one pass over the file")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=DEFAULT_ARCH,
                        help=f"SAE architecture (default {DEFAULT_ARCH})")
    parser.add_argument("--width", type=int_list, default=None,
                        help=f"number of latents (default {WIDTH_PER_INPUT} x d_in); a list (256,512) trains one "
                             "SAE per width")
    parser.add_argument("--k", type=int_list, default=None,
                        help=f"topk: latents per sample (default {TopKConfig.k}); a list (8,16) trains one SAE per k, "
                             "each named <hook>-<arch>-<width>-k<k>")
    parser.add_argument("--slots", type=int, default=None,
                        help=f"binding: slots of the tied decoder (default {BindingConfig.slots})")
    parser.add_argument("--l1", type=float, default=None,
                        help=f"relu: L1 coefficient (default {ReLUConfig.l1_coefficient})")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimisation steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the training rows")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate (default {SAEConfig.lr})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"rows per step (default {SAEConfig.batch_size})")
    parser.add_argument("--seed", type=int, default=SAEConfig.seed, help=f"seed (default {SAEConfig.seed})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default RUN/saes/<hook>-<arch>-<width>/)")
    parser.add_argument("--no-features", action="store_true", help="skip the per-latent feature statistics")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing SAE of the same name (the old one stays until the new one is complete)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON document on stdout")
