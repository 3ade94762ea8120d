"""The probe-results contract: one :class:`ProbeRecord` per hook x label, in one document per
activation file (``RUN/probes/<stem>.json``, see ``docs/probes.md``).

``probes.linear`` writes it; ``rl-lab probe``, ``rl-lab compare``, the demo, the sweeps and the
TUI read it. Every one of them goes through this module: the keys of a record are named here
and nowhere else.

Standard library only, like ``probes.layout``. Reading is tolerant: a record needs only ``hook`` and ``label``; missing optional keys take
their defaults, and keys this version does not know are kept in ``ProbeRecord.extra`` (and
written back by ``to_dict``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from probes.errors import ProbeError

SCHEMA_VERSION = 1
R2 = "r2"
ACCURACY = "accuracy"
CONTINUOUS = "continuous"
DISCRETE = "discrete"
CONTROL_TASK = "control_task"
"""The baseline that ``selectivity`` subtracts."""
JSON_DECIMALS = 6
"""Floats are written rounded to this many decimals; values that are not finite as ``null``."""
SUMMARY_KEYS = ("hook", "label", "metric", "score", "selectivity", "ci")
"""What ``ProbeRecord.summary`` keeps: the address of a probe and its held-out result."""


def jsonable(obj: Any) -> Any:
    """``obj`` as the document stores it: numpy scalars to Python, floats rounded to
    ``JSON_DECIMALS``, non-finite floats to ``None``, tuples to lists.

    (numpy registers its scalars with ``numbers``, so this module needs no numpy: the TUI
    reads probe results without loading it.)
    """
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return None if not math.isfinite(float(obj)) else round(float(obj), JSON_DECIMALS)
    return obj


def _num(value: Any) -> float | None:
    """A finite number as float, else None (bools, strings, NaN and null are not scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _paired(value: Any) -> dict[str, dict[str, Any]]:
    """``baseline -> {"difference", "ci": [low, high], "p"}``; malformed entries are dropped."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in value.items():
        if not isinstance(entry, Mapping):
            continue
        ci = entry.get("ci")
        out[str(name)] = {
            "difference": _num(entry.get("difference")),
            "ci": [_num(ci[0]), _num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None],
            "p": _num(entry.get("p")),
        }
    return out


def _scores(value: Any) -> dict[str, float | None]:
    """A ``name -> score`` table; a name whose score is null keeps ``None``."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): _num(v) for k, v in value.items()}


@dataclass(frozen=True)
class ProbeRecord:
    """One probe: a label read linearly from one hook, scored on held-out episodes.

    The fields are the keys of a record in ``docs/probes.md``, in the order they are written.
    """

    hook: str
    label: str
    kind: str | None = None
    """``continuous`` or ``discrete``."""
    metric: str = "score"
    """``r2`` (continuous) or ``accuracy`` (discrete)."""
    score: float | None = None
    """Held-out score on the hook (None when it is not finite)."""
    baselines: dict[str, float | None] = field(default_factory=dict)
    """Baseline name -> held-out score of the same metric (None: not finite)."""
    selectivity: float | None = None
    """``score - baselines["control_task"]``."""
    beats_baselines: bool = False
    """Same as ``significant`` (older files: the lower end of ``ci`` was above every baseline)."""
    ci: tuple[float | None, float | None] | None = None
    """95% bootstrap interval ``(low, high)`` of ``score`` over episodes (out-of-fold predictions)."""
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Baseline name -> ``{"difference": score - baseline, "ci": [low, high], "p"}``: a paired
    bootstrap over the same episode resamples. "Beats X" means ``ci[0] > 0``."""
    p_value: float | None = None
    """Uncorrected p of "the probe beats every baseline" (the largest per-baseline ``p``)."""
    p_adjusted: float | None = None
    """``p_value`` Holm-adjusted over every cell of the document (``ProbeResults.n_tests``)."""
    significant: bool | None = None
    """``p_adjusted`` below the level and every paired interval above 0 (None: not tested)."""
    control: str | None = None
    """The control task behind ``baselines["control_task"]`` (e.g. ``episode_permuted_label``)."""
    random_twins: dict[str, Any] | None = None
    """``{"n", "scores", "std"}`` of the random-weights twins; ``baselines["random_weights"]`` is their mean."""
    kind_source: str | None = None
    """How the label's kind was decided: ``attribute`` or ``inferred: ...``."""
    derived_from: str | None = None
    """Where the label comes from (``value_output``, ``policy_output``, ``environment``; None: unknown)."""
    checkpoint: str = ""
    step: int | None = None
    linear_by_construction: bool = False
    """The hook is in the label's ``linear_in``: a high score is expected, not a finding."""
    n_train: int | None = None
    n_test: int | None = None
    alpha: float | None = None
    """Chosen ridge alpha (``r2`` records)."""
    auroc: float | None = None
    """AUROC, macro one-vs-rest for more than two classes (``accuracy`` records)."""
    auroc_baselines: dict[str, float | None] | None = None
    C: float | None = None
    """Chosen logistic C (``accuracy`` records)."""
    n_classes: int | None = None
    reduction: dict[str, Any] | None = None
    """How a hook wider than ``probes.linear.MAX_FEATURE_DIM`` was reduced before probing, e.g.
    ``{"kind": "random_projection", "dims": 512, "seed": 0, "input_dims": 12800}`` (None: probed as is)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (from a newer or older writer), kept as read."""

    # ------------------------------------------------------------------ views
    @property
    def scored_baselines(self) -> dict[str, float]:
        """The baselines that have a score."""
        return {k: v for k, v in self.baselines.items() if v is not None}

    @property
    def best_baseline(self) -> tuple[str, float] | None:
        """The strongest baseline as ``(name, score)`` (the first on ties), None without any."""
        scored = self.scored_baselines
        if not scored:
            return None
        name = max(scored, key=lambda k: scored[k])
        return name, scored[name]

    @property
    def interval(self) -> tuple[float, float] | None:
        """``ci`` when both ends are finite, else None."""
        if self.ci is None or self.ci[0] is None or self.ci[1] is None:
            return None
        return self.ci[0], self.ci[1]

    @property
    def random_weights(self) -> float | None:
        """The random-weights twin's score (None when the recording has no ``/acts_random``)."""
        return self.baselines.get("random_weights")

    def beats(self, baseline: str) -> bool:
        """Whether the paired interval of ``score - baseline`` lies above 0 (uncorrected)."""
        low = self.paired.get(baseline, {}).get("ci", [None, None])[0]
        return low is not None and low > 0

    def replace(self, **changes: Any) -> ProbeRecord:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """The keys a sweep keeps per probe (``SUMMARY_KEYS``), as JSON values."""
        full = self.to_dict()
        return {k: full[k] for k in SUMMARY_KEYS}

    # ------------------------------------------------------------------ the contract
    def to_dict(self) -> dict[str, Any]:
        """The record as written in the document (``jsonable`` rounds its floats).

        ``auroc``, ``auroc_baselines``, ``C`` and ``n_classes`` are written for ``accuracy``
        records, ``alpha`` for the others.
        """
        out: dict[str, Any] = {
            "hook": self.hook,
            "label": self.label,
            "kind": self.kind,
            "metric": self.metric,
            "score": self.score,
            "baselines": dict(self.baselines),
            "selectivity": self.selectivity,
            "beats_baselines": self.beats_baselines,
            "ci": list(self.ci) if self.ci is not None else None,
            "paired": {k: dict(v) for k, v in self.paired.items()},
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "significant": self.significant,
            "control": self.control,
            "random_twins": dict(self.random_twins) if self.random_twins is not None else None,
            "kind_source": self.kind_source,
            "derived_from": self.derived_from,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "linear_by_construction": self.linear_by_construction,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }
        if self.metric == ACCURACY:
            out["auroc"] = self.auroc
            out["auroc_baselines"] = dict(self.auroc_baselines) if self.auroc_baselines is not None else None
            out["C"] = self.C
            out["n_classes"] = self.n_classes
        else:
            out["alpha"] = self.alpha
        if self.reduction is not None:
            out["reduction"] = dict(self.reduction)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, checkpoint: str = "") -> ProbeRecord:
        """Read one record; ``checkpoint`` is used when the record has none (the document's).

        Raises ``ProbeError`` when ``data`` is not a mapping with ``hook`` and ``label``.
        """
        if not isinstance(data, Mapping) or "hook" not in data or "label" not in data:
            raise ProbeError("a probe record needs at least a hook and a label")
        ci = data.get("ci")
        kind = data.get("kind")
        auroc_b = data.get("auroc_baselines")
        return cls(
            hook=str(data["hook"]),
            label=str(data["label"]),
            kind=str(kind) if kind is not None else None,
            metric=str(data.get("metric") or "score"),
            score=_num(data.get("score")),
            baselines=_scores(data.get("baselines")),
            selectivity=_num(data.get("selectivity")),
            beats_baselines=bool(data.get("beats_baselines", False)),
            ci=(_num(ci[0]), _num(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None,
            paired=_paired(data.get("paired")),
            p_value=_num(data.get("p_value")),
            p_adjusted=_num(data.get("p_adjusted")),
            significant=bool(data["significant"]) if isinstance(data.get("significant"), bool) else None,
            control=_str(data.get("control")),
            random_twins=dict(data["random_twins"]) if isinstance(data.get("random_twins"), Mapping) else None,
            kind_source=_str(data.get("kind_source")),
            derived_from=_str(data.get("derived_from")),
            checkpoint=str(data.get("checkpoint") or checkpoint),
            step=_int(data.get("step")),
            linear_by_construction=bool(data.get("linear_by_construction", False)),
            n_train=_int(data.get("n_train")),
            n_test=_int(data.get("n_test")),
            alpha=_num(data.get("alpha")),
            auroc=_num(data.get("auroc")),
            auroc_baselines=_scores(auroc_b) if isinstance(auroc_b, Mapping) else None,
            C=_num(data.get("C")),
            n_classes=_int(data.get("n_classes")),
            reduction=dict(data["reduction"]) if isinstance(data.get("reduction"), Mapping) else None,
            extra={k: v for k, v in data.items() if k not in _RECORD_KEYS},
        )


_RECORD_KEYS = frozenset(f.name for f in fields(ProbeRecord)) - {"extra"}


@dataclass
class ProbeResults:
    """One probe-results document: the records of one activation file (one checkpoint)."""

    file: str
    run: str = ""
    checkpoint: str = ""
    step: int | None = None
    seed: int | None = None
    n_steps: int | None = None
    records: list[ProbeRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    weights: str | None = None
    """Path of the probe weights (``.weights.npz``), None when none were saved."""
    n_train_episodes: int | None = None
    """Absent (None) when the episodes could not be split."""
    n_test_episodes: int | None = None
    control: str | None = None
    """The control task of the records (``episode_permuted_label``)."""
    correction: str | None = None
    """The multiple-comparison correction behind ``p_adjusted`` (``holm``)."""
    significance_level: float | None = None
    n_tests: int | None = None
    """Number of cells (hook x label) in the correction."""
    cv: dict[str, Any] | None = None
    """``{"outer_folds", "repeats", "n_episodes", "inner", "n_bootstrap"}``."""
    best_hooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Label -> the best hook chosen inside the training folds (``probes.linear.best_hook``)."""
    schema_version: int = SCHEMA_VERSION
    skipped: int = 0
    """Malformed records left out when reading (not written)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The document as written (before ``jsonable``); the episode counts only when known."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "file": self.file,
            "run": self.run,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "seed": self.seed,
            "n_steps": self.n_steps,
            "records": [r.to_dict() for r in self.records],
            "notes": list(self.notes),
            "weights": self.weights,
        }
        if self.n_train_episodes is not None:
            out["n_train_episodes"] = self.n_train_episodes
        if self.n_test_episodes is not None:
            out["n_test_episodes"] = self.n_test_episodes
        out.update(control=self.control, correction=self.correction, significance_level=self.significance_level,
                   n_tests=self.n_tests, cv=self.cv, best_hooks=self.best_hooks)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, default_checkpoint: str = "") -> ProbeResults:
        """Read a document; malformed records are counted in ``skipped``, not raised."""
        if not isinstance(data, Mapping):
            raise ProbeError("a probe-results document is a JSON object")
        checkpoint = str(data.get("checkpoint") or default_checkpoint)
        records: list[ProbeRecord] = []
        skipped = 0
        for rec in data.get("records") or []:
            try:
                records.append(ProbeRecord.from_dict(rec, checkpoint=checkpoint))
            except ProbeError:
                skipped += 1
        weights = data.get("weights")
        return cls(
            file=str(data.get("file") or ""),
            run=str(data.get("run") or ""),
            checkpoint=checkpoint,
            step=_int(data.get("step")),
            seed=_int(data.get("seed")),
            n_steps=_int(data.get("n_steps")),
            records=records,
            notes=[str(n) for n in data.get("notes") or [] if n],
            weights=str(weights) if weights is not None else None,
            n_train_episodes=_int(data.get("n_train_episodes")),
            n_test_episodes=_int(data.get("n_test_episodes")),
            control=_str(data.get("control")),
            correction=_str(data.get("correction")),
            significance_level=_num(data.get("significance_level")),
            n_tests=_int(data.get("n_tests")),
            cv=dict(data["cv"]) if isinstance(data.get("cv"), Mapping) else None,
            best_hooks={str(k): dict(v) for k, v in (data.get("best_hooks") or {}).items() if isinstance(v, Mapping)}
            if isinstance(data.get("best_hooks"), Mapping) else {},
            schema_version=_int(data.get("schema_version")) or SCHEMA_VERSION,
            skipped=skipped,
            extra={k: v for k, v in data.items() if k not in _DOCUMENT_KEYS},
        )


_DOCUMENT_KEYS = frozenset(f.name for f in fields(ProbeResults)) - {"extra", "skipped"}


def read_probe_results(path: Path | str) -> ProbeResults:
    """Read ``RUN/probes/<stem>.json``; its checkpoint defaults to the file's stem.

    Raises ``ProbeError`` (one sentence naming the file) when it cannot be read or is not a
    JSON object; malformed records are skipped and counted in ``ProbeResults.skipped``.
    """
    path = Path(path)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProbeError(f"cannot read {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ProbeError(f"{path.name} is not a JSON object")
    return ProbeResults.from_dict(data, default_checkpoint=path.stem)


def write_probe_results(path: Path | str, doc: ProbeResults | Mapping[str, Any]) -> dict[str, Any]:
    """Write a document atomically (``NAME.tmp``, then ``os.replace``); returns what was written."""
    path = Path(path)
    data = jsonable(doc.to_dict() if isinstance(doc, ProbeResults) else dict(doc))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return data
