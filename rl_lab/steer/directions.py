"""Where a steering direction comes from, and its natural units at its hook.

A direction is named by one string (``--direction``)::

    probe:LABEL@HOOK          the run's latest linear-probe weights (``RUN/probes/*.weights.npz``)
    probe:LABEL=CLASS@HOOK    one class of a multi-class probe
    sae:SAE_NAME/LATENT       decoder row ``W_dec[LATENT]`` of ``RUN/saes/SAE_NAME/`` (hook from its cfg)
    diff:LABEL@HOOK           mean activation where LABEL is in its top quartile minus where it is
                              in its bottom quartile (a discrete label: class 1 minus class 0)

Statistics of the activations at the hook (mean and second moment, streamed in chunks from the
activation file) give every direction ``u`` its projection mean and standard deviation, which
are the units of the scales (see ``docs/steer.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.activations import ActivationFile
from probes.layout import PROBE_WEIGHTS_SUFFIX
from probes.linear import load_direction
from probes.sae.model import load_sae
from rl_lab.errors import LabError
from rl_lab.runs import Run, checkpoint_step

_SPEC = re.compile(r"^(?P<kind>probe|diff):(?P<label>[^@=\s]+)(?:=(?P<cls>[^@\s]+))?@(?P<hook>\S+)$")
_SAE_SPEC = re.compile(r"^sae:(?P<name>\S+)/(?P<latent>\d+)$")
FORMAT = "probe:LABEL@HOOK, sae:SAE_NAME/LATENT or diff:LABEL@HOOK"


@dataclass(frozen=True)
class DirectionSpec:
    """A parsed ``--direction`` string."""

    kind: str
    """``probe``, ``sae`` or ``diff``."""
    text: str
    """The string as given."""
    label: str | None = None
    """The label (probe, diff)."""
    label_class: str | None = None
    """For a multi-class probe: which class's direction."""
    hook: str | None = None
    """The hook (probe, diff; an SAE's hook comes from its config)."""
    sae_name: str | None = None
    """Directory name under ``RUN/saes/``."""
    latent: int | None = None
    """SAE latent index."""


def parse_direction(text: str) -> DirectionSpec:
    """Parse ``probe:LABEL@HOOK``, ``sae:SAE_NAME/LATENT`` or ``diff:LABEL@HOOK``."""
    text = text.strip()
    m = _SPEC.match(text)
    if m:
        return DirectionSpec(kind=m["kind"], text=text, label=m["label"], label_class=m["cls"], hook=m["hook"])
    m = _SAE_SPEC.match(text)
    if m:
        return DirectionSpec(kind="sae", text=text, sae_name=m["name"], latent=int(m["latent"]))
    raise LabError(f"malformed --direction {text!r}: expected {FORMAT}")


@dataclass
class HookStats:
    """Streamed first and second moments of the activations at one hook."""

    hook: str
    n: int
    mean: np.ndarray  # [d]
    second: np.ndarray  # [d, d]  E[h h^T]
    mean_norm: float  # E||h||

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def projection(self, u: np.ndarray) -> tuple[float, float]:
        """Mean and standard deviation of ``h . u`` over the recording."""
        mu = float(self.mean @ u)
        var = float(u @ self.second @ u) - mu * mu
        return mu, float(np.sqrt(max(var, 0.0)))


@dataclass
class Direction:
    """A resolved direction: the vector, where it acts, and its natural units there."""

    spec: DirectionSpec
    hook: str
    vector: np.ndarray
    """Unit vector for probe/diff; the raw decoder row ``W_dec[latent]`` for an SAE latent."""
    raw_norm: float
    """Norm before normalisation (the mean difference's length; 1 for probe weights)."""
    mean: float
    """Mean of the coordinate along the direction (``h . u``, or the SAE latent's activation)."""
    std: float
    """Its standard deviation: one unit of scale."""
    activations: Path
    """The activation file the statistics (and a diff direction) come from."""
    source: str
    """Where the vector came from (a file or directory)."""
    stats: HookStats | None = None
    """Moments of the activations at the hook (for the random controls' units)."""
    sae: Any = None
    """The SAE (``probes.sae.model.SparseAutoencoder``) for ``sae:`` directions."""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for the result document)."""
        out = {
            "spec": self.spec.text,
            "kind": self.spec.kind,
            "hook": self.hook,
            "label": self.spec.label,
            "sae": self.spec.sae_name,
            "latent": self.spec.latent,
            "source": self.source,
            "activations": str(self.activations),
            "raw_norm": self.raw_norm,
            "vector_norm": float(np.linalg.norm(self.vector)),
            "coordinate_mean": self.mean,
            "coordinate_std": self.std,
        }
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------- files
def latest_activation_file(run: Run) -> Path:
    """The run's activation file of the latest checkpoint."""
    files = run.activation_files()
    if not files:
        raise LabError(f"run {run.name!r} has no activation file; run `rl-lab record {run.name}` first")
    return max(files, key=_step_key)


def latest_probe_weights(run: Run) -> Path:
    """The run's probe weights file of the latest checkpoint (``RUN/probes/<stem>.weights.npz``)."""
    files = sorted(run.probes_dir.glob(f"*{PROBE_WEIGHTS_SUFFIX}")) if run.probes_dir.is_dir() else []
    if not files:
        try:
            act = latest_activation_file(run)
            target, out = str(act), str(run.probe_results_path(act.stem))
        except LabError:
            target, out = "RUN/activations/<file>.h5", "RUN/probes/<stem>.json"
        raise LabError(f"run {run.name!r} has no probe weights yet; run "
                       f"`python -m probes.linear {target} --out {out}` first")
    return max(files, key=_step_key)


def _step_key(path: Path) -> tuple[int, float]:
    """Sort key: the checkpoint step in the file's name (``step_000001000.weights.npz`` -> 1000), then its time."""
    return checkpoint_step(Path(path.name.split(".")[0])), path.stat().st_mtime


def hook_stats(act_path: Path, hook: str) -> HookStats:
    """Mean, second moment and mean norm of ``/acts/<hook>``, streamed in chunks."""
    with ActivationFile(act_path) as af:
        _check_hook_in_file(af, hook)
        d = af.hook_dim(hook)
        total = np.zeros(d)
        second = np.zeros((d, d))
        norm = 0.0
        n = 0
        for _, block in af.iter_chunks("acts", hook):
            x = block.astype(np.float64)  # [rows, d]
            total += x.sum(0)
            second += x.T @ x
            norm += float(np.linalg.norm(x, axis=1).sum())
            n += len(x)
    if n == 0:
        raise LabError(f"{act_path} has no recorded steps")
    return HookStats(hook=hook, n=n, mean=total / n, second=second / n, mean_norm=norm / n)


def _check_hook_in_file(af: Any, hook: str) -> None:
    if hook not in af.hooks:
        raise LabError(f"unknown hook {hook!r} in {af.path.name} (available: {', '.join(af.hooks)})")


# --------------------------------------------------------------------------- resolution
def resolve_direction(spec: DirectionSpec, run: Run, activations: Path | None = None) -> Direction:
    """Turn a parsed spec into a vector at a hook, with its projection statistics."""
    if spec.kind == "sae":
        return _sae_direction(spec, run, activations)
    if spec.kind == "probe":
        weights = latest_probe_weights(run)
        stem = weights.name.removesuffix(PROBE_WEIGHTS_SUFFIX)
        if activations is None:
            matching = run.activation_path(stem)
            activations = matching if matching.exists() else latest_activation_file(run)
        vec = _probe_vector(weights, spec)
        source = str(weights)
        raw_norm = 1.0
    else:
        activations = activations or latest_activation_file(run)
        vec, raw_norm, extra = diff_direction(activations, spec.label or "", spec.hook or "")
        source = str(activations)
    assert spec.hook is not None
    stats = hook_stats(activations, spec.hook)
    if vec.shape != (stats.dim,):
        raise LabError(f"direction has {vec.shape[-1]} dimensions but hook {spec.hook!r} has {stats.dim}")
    mu, sd = stats.projection(vec)
    direction = Direction(spec=spec, hook=spec.hook, vector=vec, raw_norm=raw_norm, mean=mu, std=sd,
                          activations=activations, source=source, stats=stats)
    direction.extra["activation_mean_norm"] = stats.mean_norm
    if spec.kind == "diff":
        direction.extra.update(extra)
    return direction


def _probe_vector(weights: Path, spec: DirectionSpec) -> np.ndarray:
    vec = np.asarray(load_direction(weights, spec.label or "", spec.hook or ""), dtype=np.float64)
    if vec.ndim == 2:
        with np.load(weights) as data:
            key = f"{spec.label}@{spec.hook}/classes"
            classes = [str(c) for c in data[key]] if key in data.files else [str(i) for i in range(len(vec))]
        if vec.shape[0] == 1:
            return vec[0]
        if spec.label_class is None:
            raise LabError(f"probe {spec.label}@{spec.hook} has {len(classes)} classes "
                           f"({', '.join(classes)}); name one as probe:{spec.label}=CLASS@{spec.hook}")
        if spec.label_class not in classes:
            raise LabError(f"probe {spec.label}@{spec.hook} has no class {spec.label_class!r} "
                           f"(has: {', '.join(classes)})")
        vec = vec[classes.index(spec.label_class)]
    elif spec.label_class is not None:
        raise LabError(f"probe {spec.label}@{spec.hook} is not multi-class; drop ={spec.label_class}")
    norm = np.linalg.norm(vec)
    if not norm > 0:
        raise LabError(f"probe {spec.label}@{spec.hook} has a zero direction")
    return vec / norm


def diff_direction(act_path: Path, label: str, hook: str) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Unit mean-difference direction ``mean(h | high label) - mean(h | low label)`` at ``hook``.

    Continuous label: high = top quartile (``>= q75``), low = bottom quartile (``<= q25``); if
    the quartiles tie (a label that is mostly one value), high = above that value, low = at or
    below it. Discrete label: class 1 minus class 0. Returns ``(unit, raw_norm, info)``.
    """
    with ActivationFile(act_path) as af:
        if label not in af.labels:
            raise LabError(f"unknown label {label!r} in {act_path.name} (available: {', '.join(af.labels)})")
        _check_hook_in_file(af, hook)
        y = af.label(label).astype(np.float64)
        kind = af.label_info(label)["kind"]
        ok = np.isfinite(y)
        if kind == "discrete":
            high, low = ok & (y == 1), ok & (y == 0)
            rule = "class 1 minus class 0"
        else:
            q25, q75 = np.quantile(y[ok], [0.25, 0.75]) if ok.any() else (np.nan, np.nan)
            if q75 > q25:
                high, low = ok & (y >= q75), ok & (y <= q25)
                rule = f"top quartile (>= {q75:.4g}) minus bottom quartile (<= {q25:.4g})"
            else:
                high, low = ok & (y > q25), ok & (y <= q25)
                rule = f"above {q25:.4g} minus at or below it (the quartiles tie)"
        if high.sum() == 0 or low.sum() == 0:
            raise LabError(f"label {label!r} does not split into two groups in {act_path.name} "
                           f"({rule}: {int(high.sum())} and {int(low.sum())} steps)")
        d = af.hook_dim(hook)
        sums = {True: np.zeros(d), False: np.zeros(d)}
        for rows, block in af.iter_chunks("acts", hook):
            block = block.astype(np.float64)
            sums[True] += block[high[rows]].sum(0)
            sums[False] += block[low[rows]].sum(0)
    vec = sums[True] / high.sum() - sums[False] / low.sum()
    norm = float(np.linalg.norm(vec))
    if not norm > 0:
        raise LabError(f"the mean difference for {label!r} at {hook!r} is zero")
    info = {"diff_rule": rule, "diff_n_high": int(high.sum()), "diff_n_low": int(low.sum())}
    return vec / norm, norm, info


def _sae_direction(spec: DirectionSpec, run: Run, activations: Path | None) -> Direction:
    sae_dir = run.sae_dir(spec.sae_name or "")
    if not sae_dir.is_dir() or ".." in (spec.sae_name or ""):
        have = [p.name for p in run.sae_dirs()]
        raise LabError(f"run {run.name!r} has no SAE {spec.sae_name!r} (has: {', '.join(have) or 'none'}; "
                       f"train one with `python -m probes.sae RUN/activations/<file>.h5 --hook HOOK`)")
    sae, cfg = load_sae(sae_dir)
    latent = int(spec.latent or 0)
    if not 0 <= latent < cfg.d_sae:
        raise LabError(f"SAE {spec.sae_name!r} has latents 0..{cfg.d_sae - 1}; there is no latent {latent}")
    hook = cfg.hook_name
    if not hook:
        raise LabError(f"SAE {spec.sae_name!r} does not say which hook it reads (no hook_name in cfg.json)")
    activations = activations or latest_activation_file(run)
    vec = sae.W_dec[latent].detach().double().numpy().copy()
    # The latent's activation over the recording: its mean and std are the units.
    total = sq = 0.0
    n = active = 0
    with ActivationFile(activations) as af:
        _check_hook_in_file(af, hook)
        if af.hook_dim(hook) != cfg.d_in:
            raise LabError(f"SAE {spec.sae_name!r} reads {cfg.d_in} dimensions; {hook!r} has {af.hook_dim(hook)}")
        with torch.no_grad():
            for _, block in af.iter_chunks("acts", hook):
                z = sae.encode(torch.from_numpy(block.astype(np.float32)))[:, latent].double().numpy()
                total += float(z.sum())
                sq += float((z * z).sum())
                active += int((z > 0).sum())
                n += len(z)
    mu = total / max(n, 1)
    sd = float(np.sqrt(max(sq / max(n, 1) - mu * mu, 0.0)))
    stats = hook_stats(activations, hook)
    direction = Direction(spec=DirectionSpec(kind="sae", text=spec.text, hook=hook, sae_name=spec.sae_name,
                                             latent=latent),
                          hook=hook, vector=vec, raw_norm=float(np.linalg.norm(vec)), mean=mu, std=sd,
                          activations=activations, source=str(sae_dir), stats=stats, sae=sae)
    direction.extra["activation_mean_norm"] = stats.mean_norm
    direction.extra["latent_fraction_active"] = active / max(n, 1)
    if sd == 0.0:
        raise LabError(f"SAE latent {latent} of {spec.sae_name!r} never varies on {activations.name} (dead latent)")
    return direction


def random_controls(d: int, n: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors in ``d`` dimensions (isotropic), seeded: [n, d]."""
    rng = np.random.default_rng([seed, 0x5EED])
    vecs = rng.standard_normal((n, d))
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


CONTROL_KINDS = ("isotropic", "covariance")


def covariance_controls(stats: HookStats, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors drawn from N(0, Σ), Σ the activation covariance at the hook: [n, d].

    They point where the activations actually vary, as "natural" as a direction read off the data
    (a dimension the layer never uses is never drawn). A hook without variance falls back to
    isotropic draws.
    """
    cov = stats.second - np.outer(stats.mean, stats.mean)
    evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
    root = evecs * np.sqrt(np.clip(evals, 0.0, None))  # [d, d]: root @ g ~ N(0, Σ)
    rng = np.random.default_rng([seed, 0xC0F])
    vecs = rng.standard_normal((n, stats.dim)) @ root.T
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    if not np.all(norms > 1e-12):
        return random_controls(stats.dim, n, seed + 1)
    return vecs / norms


def control_directions(stats: HookStats, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` random unit control directions at a hook, alternating isotropic and covariance-drawn
    (the first is isotropic): ``(vectors [n, d], kinds)``. Same seed, same directions."""
    n_iso = (n + 1) // 2
    iso = random_controls(stats.dim, n_iso, seed)
    cov = covariance_controls(stats, n - n_iso, seed)
    vecs, kinds = [], []
    for k in range(n):
        if k % 2 == 0:
            vecs.append(iso[k // 2])
            kinds.append("isotropic")
        else:
            vecs.append(cov[k // 2])
            kinds.append("covariance")
    return (np.stack(vecs) if vecs else np.zeros((0, stats.dim))), kinds


def random_subspaces(stats: HookStats, rank: int, n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` random ``rank``-dimensional subspaces (orthonormal bases [d, rank]), alternating
    isotropic and covariance-drawn like ``control_directions``."""
    bases, kinds = [], []
    for k in range(n):
        kind = CONTROL_KINDS[k % 2]
        draw = (random_controls(stats.dim, rank, seed * 1000 + k) if kind == "isotropic"
                else covariance_controls(stats, rank, seed * 1000 + k))
        q, _ = np.linalg.qr(draw.T)  # [d, rank]
        bases.append(q)
        kinds.append(kind)
    return bases, kinds
