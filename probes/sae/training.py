"""The SAE training loop and the held-out metrics.

``fit`` is a plain loop: batch, loss, backward, drop the decoder gradient parallel to each row,
Adam step, renormalise the decoder rows, track which latents fired. Before it, ``b_dec`` is set
to the geometric median (or mean) of a sample and inputs are rescaled so that their mean squared
distance to it is ``d_in``; after it, the scale is folded into the biases so the saved SAE reads
raw activations. ``evaluate`` streams held-out rows once and returns the metrics of
``docs/sae.md``. ``train_sae_on_file`` is the file-level entry point (``python -m probes.sae``,
``rl-lab sae`` and the sweep's sae stage all end there).

File-level training also writes TensorBoard events (``TrainingEvents``): the loss parts, the
learning rate and the dead fraction every ``EVENT_EVERY`` steps (``train/...``) and the held-out
metrics once (``eval/...``), into ``probes.layout.sae_tensorboard_dir`` (``RUN/tensorboard/saes/<name>/``),
built in a hidden folder and renamed into place with the SAE.
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
from probes.layout import TMP_MARK, SAELayout, safe_component, sae_tensorboard_dir
from probes.sae.config import (
    DEFAULT_ARCH,
    BindingConfig,
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

EVENT_EVERY = 10
"""Optimisation steps between two ``train/...`` TensorBoard points (and the last step)."""

EVAL_EVENTS = ("l0", "explained_variance", "mse", "shrinkage", "dead_fraction", "dense_fraction")
"""The held-out metrics written as ``eval/<metric>`` events at the last step."""


class TrainingEvents:
    """TensorBoard event files of one SAE's training, in ``folder`` (append-only files).

    ``torch.utils.tensorboard`` is imported here, when a writer is made, so that importing the
    trainer costs nothing more.
    """

    def __init__(self, folder: Path | str) -> None:
        import tensorboard  # noqa: F401  torch.utils.tensorboard writes through it: a declared dependency
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """Write ``prefix/<name>`` = value at ``step`` for every finite value."""
        for name, value in values.items():
            value = float(value)
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


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
        b_dec = torch.zeros(cfg.d_in, dtype=sample.dtype, device=sample.device)
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
    ``b_enc``/``b_dec`` and recorded in ``cfg.normalize_scale``. Training runs on ``cfg.device``;
    the SAE is back on the CPU when ``fit`` returns.
    """
    return fit_many([sae], Keyed(source, sae.cfg.hook_name), progress=progress, desc=desc, callback=callback)[0]


class Keyed:
    """A one-hook source seen as a keyed one (``H5Source`` with a list of hooks): rows as {key: rows}."""

    def __init__(self, source: Source, key: str) -> None:
        self.source, self.key = source, key
        self.n_rows, self.d_in = source.n_rows, source.d_in

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {self.key: self.source.sample(n, rng)}

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
        return ({self.key: b} for b in self.source.batches(batch_size, rng))

    def blocks(self) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        return ((rows, {self.key: x}) for rows, x in self.source.blocks())


def fit_many(
    saes: list[SparseAutoencoder],
    source: Any,
    progress: bool = True,
    desc: str = "SAE",
    callback: Callable[[int], bool | None] | None = None,
    events: list[TrainingEvents | None] | None = None,
) -> list[FitResult]:
    """Train several SAEs in lockstep on one stream of batches (``fit`` is the case of one).

    ``events[i]``, when given, receives SAE i's ``train/<loss part>``, ``train/loss``,
    ``train/lr`` and ``train/dead_fraction`` every ``EVENT_EVERY`` steps and at the last step
    (x axis: optimisation steps taken).

    ``source`` gives rows keyed by hook (``H5Source`` with a list of hooks, ``Keyed``): every
    batch is read once and each SAE takes its ``cfg.hook_name``'s rows, so SAEs on several hooks
    (or several widths and k on one hook) cost one pass over the file. They share the data order
    and so must share the seed, batch size, init sample and number of steps (checked).
    """
    cfg0 = saes[0].cfg
    for sae in saes[1:]:
        c = sae.cfg
        if (c.seed, c.batch_size, c.init_sample, c.steps, c.epochs) != \
                (cfg0.seed, cfg0.batch_size, cfg0.init_sample, cfg0.steps, cfg0.epochs):
            raise ProbeError("SAEs trained in one pass must share seed, batch size, init sample and length")
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg0.seed)
    torch.manual_seed(cfg0.seed)
    sample = source.sample(cfg0.init_sample, rng)
    total = resolve_steps(cfg0, source.n_rows)
    states = []
    for sae in saes:
        cfg = sae.cfg
        device = torch.device(cfg.device)
        sae.to(device)
        scale = _init_from_data(sae, sample[cfg.hook_name].to(device))
        prepare = getattr(sae, "prepare_fit", None)  # a staged start (the binding SAE's registration)
        if prepare is not None:
            prepare(source, scale, progress)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, c=cfg: _lr_factor(s, total, c.lr_warmup_fraction, c.lr_decay_fraction)
        )
        use_dead = isinstance(cfg, TopKConfig) and cfg.aux_k_coefficient > 0
        since_fired = torch.zeros(cfg.d_sae, dtype=torch.int64, device=device)
        states.append({"device": device, "scale": scale, "opt": opt, "sched": sched, "use_dead": use_dead,
                       "since_fired": since_fired, "parts": {}})
        sae.train()
    samples = steps_done = 0
    bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, mininterval=0.5, leave=False)
    batches = source.batches(cfg0.batch_size, rng)
    for step in range(total):
        batch = next(batches)
        for sae, st in zip(saes, states):
            cfg = sae.cfg
            xb = batch[cfg.hook_name].to(st["device"]) * st["scale"]  # [B, d_in]
            dead = st["since_fired"] > cfg.dead_window if st["use_dead"] else None  # type: ignore[attr-defined]
            loss, st["parts"], fired = sae.training_loss(xb, dead, step / total)
            st["loss"] = loss.detach()
            st["opt"].zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grad()
            st["opt"].step()
            st["sched"].step()
            sae.normalize_decoder()
            st["since_fired"] += len(xb)
            st["since_fired"][fired > 0] = 0
        samples += len(xb)
        steps_done = step + 1
        if events is not None and (steps_done % EVENT_EVERY == 0 or steps_done == total):
            for sae, st, ev in zip(saes, states, events):
                if ev is not None:
                    _step_events(ev, sae.cfg, st, steps_done)
        if progress and (step % 20 == 0 or step == total - 1):
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in states[0]["parts"].items()}, refresh=False)
            bar.update(step + 1 - bar.n)
        if callback is not None and callback(step) is False:
            break
    bar.close()
    results = []
    for sae, st in zip(saes, states):
        cfg, scale = sae.cfg, st["scale"]
        with torch.no_grad():
            sae.b_dec /= scale
            sae.b_enc /= scale
        cfg.normalize_scale = scale
        sae.to("cpu").eval()
        dead_end = float((st["since_fired"] > getattr(cfg, "dead_window", 10**18)).float().mean())
        final = {k: float(v) for k, v in st["parts"].items()}
        results.append(FitResult(steps_done, samples, time.perf_counter() - t0, final, dead_end))
    return results


def _step_events(events: TrainingEvents, cfg: SAEConfig, state: dict[str, Any], step: int) -> None:
    """One ``train/...`` point of an SAE's training (``fit_many``)."""
    values = {name: float(v) for name, v in state["parts"].items()}
    values["loss"] = float(state["loss"])
    values["lr"] = float(state["sched"].get_last_lr()[0])
    window = getattr(cfg, "dead_window", None)
    if window is not None:
        values["dead_fraction"] = float((state["since_fired"] > window).float().mean())
    events.scalars("train", values, step)


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, source: Source) -> dict[str, Any]:
    """Held-out metrics over every row of ``source`` (see ``docs/sae.md`` for definitions)."""
    return evaluate_many([sae], Keyed(source, sae.cfg.hook_name))[0]


@torch.no_grad()
def evaluate_many(saes: list[SparseAutoencoder], source: Any) -> list[dict[str, Any]]:
    """``evaluate`` of several SAEs in one ordered pass over a keyed source (``fit_many``)."""
    acc = []
    for sae in saes:
        acc.append({"n": 0, "sum_x": torch.zeros(sae.cfg.d_in, dtype=torch.float64), "sum_x2": 0.0,
                    "sum_err2": 0.0, "sum_shrink": 0.0, "sum_l0": 0.0,
                    "fires": torch.zeros(sae.cfg.d_sae, dtype=torch.int64)})
    for _, block in source.blocks():
        for sae, a in zip(saes, acc):
            x = block[sae.cfg.hook_name]
            z = sae.encode(x)
            x_hat = sae.decode(z)
            active = z > 0
            a["n"] += len(x)
            xd = x.double()
            a["sum_x"] += xd.sum(dim=0)
            a["sum_x2"] += float(xd.pow(2).sum())
            a["sum_err2"] += float((xd - x_hat.double()).pow(2).sum())
            a["sum_shrink"] += float((x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).double().sum())
            a["sum_l0"] += float(active.sum())
            a["fires"] += active.sum(dim=0)
    out = []
    for a in acc:
        n = a["n"]
        if n == 0:
            raise ProbeError("no held-out rows to evaluate on")
        total_var = a["sum_x2"] - float(a["sum_x"].pow(2).sum()) / n  # sum ||x - mean||^2
        density = a["fires"].double() / n
        out.append({
            "l0": a["sum_l0"] / n,
            "explained_variance": 1.0 - a["sum_err2"] / total_var if total_var > 0 else float("nan"),
            "mse": a["sum_err2"] / (n * len(a["sum_x"])),
            "shrinkage": a["sum_shrink"] / n,
            "dead_fraction": float((a["fires"] == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "dense_threshold": DENSE_THRESHOLD,
            "test_rows": n,
        })
    return out


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
    return train_many_on_file(path, [cfg], [out_dir], progress=progress, extra_metrics=extra_metrics)[0]


def train_many_on_file(
    path: Path | str,
    cfgs: list[SAEConfig],
    out_dirs: list[Path | str],
    progress: bool = True,
    extra_metrics: Mapping[str, Any] | None = None,
    event_dirs: list[Path | str] | None = None,
) -> list[dict[str, Any]]:
    """``train_on_file`` for several configs (hooks, widths, k) in one pass over the file.

    The file is split by episode once; training reads each block of the training rows once for
    every hook (``H5Source`` with a list of hooks, ``fit_many``) and evaluation reads the held-out
    rows once (``evaluate_many``). SAE i is saved to ``out_dirs[i]``; returns their metrics.
    With ``event_dirs``, SAE i's training and held-out metrics are also written as TensorBoard
    events into ``event_dirs[i]`` (``TrainingEvents``).
    """
    hooks = list(dict.fromkeys(cfg.hook_name for cfg in cfgs))
    with ActivationFile(path) as af:
        for hook in hooks:
            af.hook_dim(hook)  # a clear error for an unknown hook
        episodes = af.episodes()
        meta = {k: af.attrs.get(k) for k in ("run", "checkpoint", "env_id")}
    train_mask, test_mask, notes = split_rows(episodes, cfgs[0].test_fraction, cfgs[0].seed)
    train_src = H5Source(path, hooks, train_mask)
    test_src = H5Source(path, hooks, test_mask)
    events: list[TrainingEvents | None] = []
    try:
        saes = []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)  # each SAE starts as it would alone
            saes.append(make_sae(cfg))
        events = [TrainingEvents(d) for d in event_dirs] if event_dirs is not None else [None] * len(cfgs)
        desc = f"SAE {hooks[0]}" if len(cfgs) == 1 else f"{len(cfgs)} SAEs"
        results = fit_many(saes, train_src, progress=progress, desc=desc, events=events)
        all_metrics = evaluate_many(saes, test_src)
        for ev, result, metrics in zip(events, results, all_metrics):
            if ev is not None:
                ev.scalars("eval", {k: metrics[k] for k in EVAL_EVENTS}, result.steps)
    finally:
        for ev in events:
            if ev is not None:
                ev.close()
        train_src.close()
        test_src.close()
    for sae, cfg, result, metrics, out_dir in zip(saes, cfgs, results, all_metrics, out_dirs):
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
        if len(cfgs) > 1:
            metrics["trained_with"] = len(cfgs)  # SAEs that shared this one pass over the file
        extra = dict(extra_metrics or {})
        metrics.update(extra)
        own_notes = list(notes)
        if "return_recovered" not in extra:
            own_notes.append(
                f"{LIVE_NOTE_PREFIX}: the run's network is not at hand here (splice the SAE into the live "
                "agent and call probes.sae.model.update_metrics)"
            )
        metrics["notes"] = own_notes
        write_json(SAELayout(out).metrics_path, metrics)
    return all_metrics


# --------------------------------------------------------------------------- file-level API
def train_sae_on_file(
    path: Path | str,
    hook: str,
    *,
    arch: str = DEFAULT_ARCH,
    width: int | None = None,
    k: int | None = None,
    l1: float | None = None,
    slots: int | None = None,
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
    device: str = "cpu",
) -> dict[str, Any]:
    """Train an SAE on ``/acts/<hook>`` of an activation file, save it, return its metrics.

    Parameters
    ----------
    path, hook:
        The activation file and the hook to read.
    arch:
        ``topk``, ``relu`` or ``binding`` (``probes.sae.config.ARCHITECTURES``).
    width:
        Number of latents; default ``default_width(d_in)`` (``8 * d_in``).
    k:
        TopK's latents per sample (default 16, at most ``width``).
    l1:
        ReLU's L1 coefficient (default ``ReLUConfig.l1_coefficient``).
    slots:
        The binding SAE's slots (default ``BindingConfig.slots``; ``probes.sae.binding``); its
        default width is rounded up to a multiple of them.
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
    device:
        The torch device training runs on (``cpu``, ``cuda:N``; the config's ``device``).

    The returned dict is ``metrics.json``'s content plus ``out_dir``.
    """
    return train_saes_on_file(
        path, [hook], arch=arch, widths=[width], ks=[k], l1=l1, slots=slots, steps=steps, epochs=epochs, lr=lr,
        batch_size=batch_size, out_dir=out_dir, seed=seed, progress=progress, features=features,
        extra_metrics=extra_metrics, overwrite=overwrite, device=device)[0]


def train_saes_on_file(
    path: Path | str,
    hooks: list[str],
    *,
    arch: str = DEFAULT_ARCH,
    widths: list[int | None] | None = None,
    ks: list[int | None] | None = None,
    l1: float | None = None,
    slots: int | None = None,
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
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train one SAE per (hook, width, k) of the grid ``hooks × widths × ks`` in one pass over the file.

    The options are ``train_sae_on_file``'s; ``widths`` and ``ks`` are lists (``[None]``: the
    default). Every SAE goes to its own folder, ``default_out_dir`` (``<hook>-<arch>-<width>``,
    plus ``-k<k>`` when several k are swept); ``out_dir`` only names a single SAE. Every option
    is checked and every output folder refused (unless ``overwrite``) before training starts.
    Training and evaluation read each block of the file once for all the SAEs
    (``train_many_on_file``); features are computed per SAE afterwards. Training also writes
    TensorBoard events into ``probes.layout.sae_tensorboard_dir(path, <SAE folder name>)``, built in
    a hidden folder and renamed into place with the SAE (a replaced SAE's events are replaced too).
    Returns their metrics, each with ``out_dir``, in grid order (hook, then width, then k).
    """
    if steps is not None and epochs is not None:
        raise ProbeError("give either steps or epochs, not both")
    check_architecture(arch)
    hooks = list(dict.fromkeys(hooks))
    widths = list(dict.fromkeys(widths or [None]))
    ks = list(dict.fromkeys(ks or [None]))
    if not hooks:
        raise ProbeError("give at least one hook")
    for hook in hooks:
        safe_component(hook, "hook")  # it names the SAE's folder
    with ActivationFile(path) as af:
        dims = {hook: af.hook_dim(hook) for hook in hooks}
    if slots is not None and arch != "binding":
        raise ProbeError("--slots applies to the binding architecture only")
    if arch not in ("topk", "binding") and ks != [None]:
        raise ProbeError("--k applies to the topk and binding architectures only")
    if arch == "relu" and l1 is not None:
        pass
    elif l1 is not None:
        raise ProbeError("--l1 applies to the relu architecture only")
    n_slots = slots if slots is not None else BindingConfig.slots
    grid = [(hook, w, kk) for hook in hooks for w in widths for kk in ks]
    if out_dir is not None and len(grid) > 1:
        raise ProbeError(f"--out names one SAE's folder; this grid trains {len(grid)} "
                         "(leave --out out: each goes to RUN/saes/<hook>-<arch>-<width>[-k<k>])")
    cfgs, outs = [], []
    for hook, width, kk in grid:
        d_in = dims[hook]
        if width is None:
            width = default_width(d_in)
            if arch == "binding":
                width = -(-width // n_slots) * n_slots
        kwargs: dict[str, Any] = {"d_in": d_in, "d_sae": width, "hook_name": hook, "seed": seed,
                                  "steps": steps, "epochs": epochs, "device": device}
        if lr is not None:
            kwargs["lr"] = lr
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        if arch in ("topk", "binding"):
            kwargs["k"] = kk if kk is not None else min(TopKConfig.k, width)
        if arch == "binding":
            kwargs["slots"] = n_slots
        if arch == "relu" and l1 is not None:
            kwargs["l1_coefficient"] = l1
        cfgs.append(make_config(arch, **kwargs))
        k_part = kwargs.get("k") if len(ks) > 1 else None
        outs.append(Path(out_dir) if out_dir is not None else default_out_dir(path, hook, arch, width, k=k_part))
    if len(set(outs)) < len(outs):
        raise ProbeError("two SAEs of this grid would share an output folder")
    for out in outs:
        check_output_dir(out, overwrite)
    # TensorBoard events beside the run's others, one folder per SAE (named as its folder)
    event_dirs = [sae_tensorboard_dir(path, out.name) for out in outs]
    tmps, event_tmps = [], []
    for out, ev in zip(outs, event_dirs):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}{TMP_MARK}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmps.append(tmp)
        ev_tmp = ev.with_name(f".{ev.name}{TMP_MARK}{os.getpid()}")
        shutil.rmtree(ev_tmp, ignore_errors=True)
        event_tmps.append(ev_tmp)
    try:
        all_metrics = train_many_on_file(path, cfgs, tmps, progress=progress, extra_metrics=extra_metrics,
                                         event_dirs=event_tmps)
        for tmp in tmps:
            if features:
                compute_features(tmp, path, progress=progress)
        for tmp, out, ev_tmp, ev, metrics in zip(tmps, outs, event_tmps, event_dirs, all_metrics):
            replace_dir(tmp, out)
            replace_dir(ev_tmp, ev)  # a replaced SAE's old events go with it
            metrics["out_dir"] = str(out)
    except BaseException:
        for tmp in tmps + event_tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return all_metrics


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


def run_from_args(args: argparse.Namespace, file: Path | None = None) -> list[dict[str, Any]]:
    """Train from parsed ``probes.sae.config.add_arguments`` options (``file`` overrides ``args.file``):
    one SAE per (``--hook``, ``--width``, ``--k``) in one pass; returns their metrics in grid order."""
    return train_saes_on_file(
        file if file is not None else args.file,
        list(args.hook),
        arch=args.arch,
        widths=args.width,
        ks=args.k,
        l1=args.l1,
        slots=getattr(args, "slots", None),
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        out_dir=args.out,
        seed=args.seed,
        progress=not args.json or sys.stderr.isatty(),
        features=not args.no_features,
        overwrite=getattr(args, "overwrite", False),
        device=getattr(args, "device", None) or "cpu",
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
