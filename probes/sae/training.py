"""The SAE training loop and the held-out metrics.

``fit`` is a plain loop: batch, loss, backward, drop the decoder gradient parallel to each row,
Adam step, renormalise the decoder rows, track which latents fired. Before it, ``b_dec`` is set
to the geometric median (or mean) of a sample and inputs are rescaled so that their mean squared
distance to it is ``d_in``; after it, the scale is folded into the biases so the saved SAE reads
raw activations. ``evaluate`` streams held-out rows once and returns the metrics of
``docs/sae.md``. ``train_sae_on_file`` is the file-level entry point (``python -m probes.sae``,
``rl-lab sae`` and the sweep's sae stage all end there).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch
from tqdm import tqdm

from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.layout import TMP_MARK, SAELayout, safe_component
from probes.sae.config import (
    DEFAULT_ARCH,
    SAEConfig,
    TopKConfig,
    check_architecture,
    default_out_dir,
    default_width,
    make_config,
)
from probes.sae.data import H5Source, TensorSource, split_rows
from probes.sae.features import compute_features
from probes.sae.model import LIVE_NOTE_PREFIX, SparseAutoencoder, make_sae, replace_dir, save_sae, write_json

DENSE_THRESHOLD = 0.1
"""A latent is *dense* if it fires on more than this fraction of held-out rows."""


class Source(Protocol):
    """What ``fit`` and ``evaluate`` need from a data source (``TensorSource``, ``H5Source``)."""

    n_rows: int
    d_in: int

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor: ...

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[torch.Tensor]: ...

    def blocks(self, rows: int = ...) -> Iterator[tuple[np.ndarray, torch.Tensor]]: ...


@dataclass
class FitResult:
    """What a training run did."""

    steps: int
    """Optimisation steps taken."""
    samples: int
    """Training rows seen (steps × batch size)."""
    seconds: float
    """Wall-clock time of ``fit`` (initialisation and any callback included)."""
    final: dict[str, float] = field(default_factory=dict)
    """Loss parts of the last step."""
    dead_at_end: float = 0.0
    """Fraction of latents dead (by the AuxK window) when training stopped."""


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Geometric median of the rows of ``x`` [n, d] by Weiszfeld's algorithm (float64)."""
    pts = x.double()
    median = pts.mean(dim=0)
    for _ in range(iters):
        dist = (pts - median).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        new = (w[:, None] * pts).sum(dim=0) / w.sum()
        if (new - median).norm() <= tol * max(1.0, float(median.norm())):
            median = new
            break
        median = new
    return median.to(x.dtype)


def resolve_steps(cfg: SAEConfig, n_rows: int) -> int:
    """Number of optimisation steps: ``steps``, else ``epochs`` passes, else the default budget."""
    batch = min(cfg.batch_size, n_rows)
    if cfg.steps is not None:
        return int(cfg.steps)
    if cfg.epochs is not None:
        return max(1, int(math.ceil(cfg.epochs * n_rows / batch)))
    samples = min(cfg.train_samples, cfg.max_epochs * n_rows)
    return max(cfg.min_steps, int(math.ceil(samples / batch)))


def _lr_factor(step: int, total: int, warmup: float, decay: float) -> float:
    w = int(warmup * total)
    d = int(decay * total)
    if w > 0 and step < w:
        return (step + 1) / w
    if d > 0 and step >= total - d:
        return max(0.0, (total - step) / d)
    return 1.0


@torch.no_grad()
def _init_from_data(sae: SparseAutoencoder, sample: torch.Tensor) -> float:
    """Set ``b_dec`` from ``sample`` and return the input scale (mean sq. distance -> ``d_in``)."""
    cfg = sae.cfg
    if cfg.b_dec_init == "geometric_median":
        b_dec = geometric_median(sample)
    elif cfg.b_dec_init == "mean":
        b_dec = sample.mean(dim=0)
    else:
        b_dec = torch.zeros(cfg.d_in, dtype=sample.dtype)
    spread = float((sample - b_dec).pow(2).sum(dim=1).mean())
    if not math.isfinite(spread):
        raise ProbeError("the activations contain NaN or infinite values")
    scale = math.sqrt(cfg.d_in / spread) if spread > 0 else 1.0
    sae.b_dec.copy_(b_dec * scale)
    return scale


def fit(
    sae: SparseAutoencoder,
    source: Source,
    progress: bool = True,
    desc: str = "SAE",
    callback: Callable[[int], bool | None] | None = None,
) -> FitResult:
    """Train ``sae`` in place on ``source`` with the schedule of ``sae.cfg``.

    The caller seeds torch before building ``sae``; the data order comes from a numpy Generator
    seeded with ``cfg.seed``. ``callback(step)`` runs after every optimisation step; returning
    ``False`` stops training early. On return the input scale is folded into
    ``b_enc``/``b_dec`` and recorded in ``cfg.normalize_scale``.
    """
    cfg = sae.cfg
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    scale = _init_from_data(sae, source.sample(cfg.init_sample, rng))
    total = resolve_steps(cfg, source.n_rows)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total, cfg.lr_warmup_fraction, cfg.lr_decay_fraction)
    )
    use_dead = isinstance(cfg, TopKConfig) and cfg.aux_k_coefficient > 0
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.int64)
    parts: dict[str, torch.Tensor] = {}
    samples = steps_done = 0
    sae.train()
    bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, mininterval=0.5, leave=False)
    batches = source.batches(cfg.batch_size, rng)
    for step in range(total):
        xb = next(batches) * scale  # [B, d_in]
        dead = since_fired > cfg.dead_window if use_dead else None  # type: ignore[attr-defined]
        loss, parts, fired = sae.training_loss(xb, dead, step / total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sched.step()
        sae.normalize_decoder()
        since_fired += len(xb)
        since_fired[fired > 0] = 0
        samples += len(xb)
        steps_done = step + 1
        if progress and (step % 20 == 0 or step == total - 1):
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in parts.items()}, refresh=False)
            bar.update(step + 1 - bar.n)
        if callback is not None and callback(step) is False:
            break
    bar.close()
    with torch.no_grad():
        sae.b_dec /= scale
        sae.b_enc /= scale
    cfg.normalize_scale = scale
    sae.eval()
    dead_end = float((since_fired > getattr(cfg, "dead_window", 10**18)).float().mean())
    final = {k: float(v) for k, v in parts.items()}
    return FitResult(steps_done, samples, time.perf_counter() - t0, final, dead_end)


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, source: Source) -> dict[str, Any]:
    """Held-out metrics over every row of ``source`` (see ``docs/sae.md`` for definitions)."""
    n = 0
    d = sae.cfg.d_in
    sum_x = torch.zeros(d, dtype=torch.float64)
    sum_x2 = 0.0
    sum_err2 = 0.0
    sum_shrink = 0.0
    sum_l0 = 0.0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.int64)
    for _, x in source.blocks():
        z = sae.encode(x)
        x_hat = sae.decode(z)
        active = z > 0
        n += len(x)
        xd = x.double()
        sum_x += xd.sum(dim=0)
        sum_x2 += float(xd.pow(2).sum())
        sum_err2 += float((xd - x_hat.double()).pow(2).sum())
        sum_shrink += float((x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).double().sum())
        sum_l0 += float(active.sum())
        fires += active.sum(dim=0)
    if n == 0:
        raise ProbeError("no held-out rows to evaluate on")
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n  # sum ||x - mean||^2
    density = fires.double() / n
    return {
        "l0": sum_l0 / n,
        "explained_variance": 1.0 - sum_err2 / total_var if total_var > 0 else float("nan"),
        "mse": sum_err2 / (n * d),
        "shrinkage": sum_shrink / n,
        "dead_fraction": float((fires == 0).double().mean()),
        "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
        "dense_threshold": DENSE_THRESHOLD,
        "test_rows": n,
    }


def train_in_memory(
    x: torch.Tensor | np.ndarray, cfg: SAEConfig, progress: bool = False
) -> tuple[SparseAutoencoder, FitResult]:
    """Train an SAE of config ``cfg`` on in-memory rows ``x`` [n, d_in] (tests, benchmarks)."""
    source = TensorSource(x)
    if source.d_in != cfg.d_in:
        raise ProbeError(f"data has {source.d_in} dimensions, the config {cfg.d_in}")
    torch.manual_seed(cfg.seed)
    sae = make_sae(cfg)
    return sae, fit(sae, source, progress=progress)


def train_on_file(
    path: Path | str,
    cfg: SAEConfig,
    out_dir: Path | str,
    progress: bool = True,
    extra_metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Split ``path`` by episode, train on ``cfg.hook_name``, evaluate, save; return the metrics."""
    with ActivationFile(path) as af:
        af.hook_dim(cfg.hook_name)  # a clear error for an unknown hook
        episodes = af.episodes()
        meta = {k: af.attrs.get(k) for k in ("run", "checkpoint", "env_id")}
    train_mask, test_mask, notes = split_rows(episodes, cfg.test_fraction, cfg.seed)
    train_src = H5Source(path, cfg.hook_name, train_mask)
    test_src = H5Source(path, cfg.hook_name, test_mask)
    try:
        torch.manual_seed(cfg.seed)
        sae = make_sae(cfg)
        result = fit(sae, train_src, progress=progress, desc=f"SAE {cfg.hook_name}")
        metrics = evaluate(sae, test_src)
    finally:
        train_src.close()
        test_src.close()
    out = save_sae(sae, out_dir)
    metrics.update(
        architecture=type(cfg).architecture,
        hook_name=cfg.hook_name,
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        file=str(Path(path).resolve()),
        run=meta["run"],
        checkpoint=meta["checkpoint"],
        samples=result.samples,
        steps=result.steps,
        seconds=result.seconds,
        train_rows=int(train_mask.sum()),
        train_episodes=int(len(np.unique(episodes[train_mask]))),
        test_episodes=int(len(np.unique(episodes[test_mask]))),
        final_train_loss=result.final,
        dead_fraction_train=result.dead_at_end,
    )
    extra = dict(extra_metrics or {})
    metrics.update(extra)
    if "return_recovered" not in extra:
        notes.append(
            f"{LIVE_NOTE_PREFIX}: the run's network is not at hand here (splice the SAE into the live "
            "agent and call probes.sae.model.update_metrics)"
        )
    metrics["notes"] = notes
    write_json(SAELayout(out).metrics_path, metrics)
    return metrics


# --------------------------------------------------------------------------- file-level API
def train_sae_on_file(
    path: Path | str,
    hook: str,
    *,
    arch: str = DEFAULT_ARCH,
    width: int | None = None,
    k: int | None = None,
    l1: float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    out_dir: Path | str | None = None,
    seed: int = SAEConfig.seed,
    progress: bool = True,
    features: bool = True,
    extra_metrics: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train an SAE on ``/acts/<hook>`` of an activation file, save it, return its metrics.

    Parameters
    ----------
    path, hook:
        The activation file and the hook to read.
    arch:
        ``topk`` or ``relu`` (``probes.sae.config.ARCHITECTURES``).
    width:
        Number of latents; default ``default_width(d_in)`` (``8 * d_in``).
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
        Also compute ``features.*`` (``probes.sae.features.compute_features``) after training.
    extra_metrics:
        Metrics measured elsewhere (e.g. ``return_recovered`` from the live agent).
    overwrite:
        Replace an existing SAE at the output folder (refused otherwise). The new SAE is built in a
        hidden folder beside it and renamed into place when complete, so a kill or an error leaves
        the previous SAE whole.

    The returned dict is ``metrics.json``'s content plus ``out_dir``.
    """
    if steps is not None and epochs is not None:
        raise ProbeError("give either steps or epochs, not both")
    check_architecture(arch)
    safe_component(hook, "hook")  # it names the SAE's folder
    with ActivationFile(path) as af:
        d_in = af.hook_dim(hook)
    width = width if width is not None else default_width(d_in)
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
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        metrics = train_on_file(path, cfg, tmp, progress=progress, extra_metrics=extra_metrics)
        if features:
            compute_features(tmp, path, progress=progress)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics["out_dir"] = str(out)
    return metrics


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing SAE at ``out`` unless ``overwrite``; never replace a folder that is not an SAE's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ProbeError(f"{out} exists and is not a folder")
    layout = SAELayout(out)
    if not layout.cfg_path.exists() and any(out.iterdir()):
        raise ProbeError(f"{out} exists and is not an SAE folder; choose another output folder")
    if not overwrite and layout.cfg_path.exists():
        raise ProbeError(f"an SAE already exists at {out}; pass --overwrite to replace it")


def run_from_args(args: argparse.Namespace, file: Path | None = None) -> dict[str, Any]:
    """Train from parsed ``probes.sae.config.add_arguments`` options (``file`` overrides ``args.file``)."""
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
        overwrite=getattr(args, "overwrite", False),
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
