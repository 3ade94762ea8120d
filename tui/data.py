"""Light, cached readers for the files the app shows.

Nothing here imports torch, SB3 or h5py: the app must start in well under a second. Every
reader is defensive — a corrupt or half-written file becomes a row or a message that says
so, never an exception that reaches the UI.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rl_lab.errors import LabError
from rl_lab.runs import Run, checkpoint_step, read_run_json

#: Columns of the runs table: (key in :class:`RunRow`, header).
RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Run"),
    ("status", "Status"),
    ("env_id", "Env"),
    ("algo", "Algo"),
    ("steps", "Steps"),
    ("latest_return", "Latest"),
    ("best_return", "Best"),
    ("created", "Created"),
)

#: Keys the runs table can be sorted by, in the order ``s`` cycles through them.
SORT_KEYS: tuple[str, ...] = ("created", "name", "status", "env_id", "algo", "steps", "latest_return", "best_return")


@dataclass(frozen=True)
class RunRow:
    """One line of the runs table: a snapshot of a run directory."""

    name: str
    path: Path
    status: str
    env_id: str
    algo: str
    steps_done: int
    total_timesteps: int | None
    latest_return: float | None
    best_return: float | None
    created: str
    updated: str
    pid: int | None
    error: str | None

    @property
    def progress(self) -> float | None:
        """Fraction of the step budget done, or None when the budget is unknown."""
        if not self.total_timesteps:
            return None
        return max(0.0, min(1.0, self.steps_done / self.total_timesteps))

    def sort_value(self, key: str) -> Any:
        """A value for sorting by ``key`` (one of :data:`SORT_KEYS`); missing values sort first."""
        if key == "steps":
            return self.steps_done
        value = getattr(self, key)
        if key in ("latest_return", "best_return"):
            return float("-inf") if value is None else value
        return value or ""


@dataclass
class _MetricsState:
    """Incremental reader state for one ``metrics.jsonl``."""

    offset: int = 0
    inode: int = 0
    latest: float | None = None
    best: float | None = None


@dataclass
class _Entry:
    stamp: tuple[int, int] = (0, 0)
    info: dict[str, Any] = field(default_factory=dict)
    metrics: _MetricsState = field(default_factory=_MetricsState)


def _as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None


def read_new_lines(path: Path, offset: int, inode: int) -> tuple[list[dict[str, Any]], int, int]:
    """Complete JSON-object lines appended to ``path`` since byte ``offset``.

    Args:
        path: a JSON-lines file that is only ever appended to (``metrics.jsonl``).
        offset: bytes already consumed by earlier calls (0 for a first read).
        inode: the inode seen by earlier calls; a different inode or a shorter file means
            the file was replaced, and reading restarts from the beginning.

    Returns:
        ``(records, new_offset, inode)``. A torn last line is left for the next call.
    """
    try:
        st = os.stat(path)
    except OSError:
        return [], 0, 0
    if st.st_ino != inode or st.st_size < offset:
        offset = 0
    if st.st_size == offset:
        return [], offset, st.st_ino
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read(st.st_size - offset)
    except OSError:
        return [], offset, st.st_ino
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset, st.st_ino
    return parse_lines(chunk[: end + 1]), offset + end + 1, st.st_ino


def parse_lines(block: bytes) -> list[dict[str, Any]]:
    """JSON objects of a block of complete lines; one bad line does not lose the others."""
    lines = [ln for ln in block.splitlines() if ln.strip()]
    if not lines:
        return []
    try:  # one decode of the whole block is several times faster than one per line
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
    except (json.JSONDecodeError, UnicodeDecodeError):
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return [rec for rec in parsed if isinstance(rec, dict)]


_RETURN = re.compile(rb'"episode_return":\s*(-?[0-9][0-9.eE+-]*)')


def scan_returns(path: Path, offset: int, inode: int) -> tuple[list[float], int, int]:
    """Like :func:`read_new_lines` but only extracts ``episode_return`` values (fast, for the runs table)."""
    try:
        st = os.stat(path)
    except OSError:
        return [], 0, 0
    if st.st_ino != inode or st.st_size < offset:
        offset = 0
    if st.st_size == offset:
        return [], offset, st.st_ino
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read(st.st_size - offset)
    except OSError:
        return [], offset, st.st_ino
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset, st.st_ino
    found = _RETURN.findall(chunk, 0, end + 1)  # null / NaN do not match and are skipped
    try:
        values = [float(x) for x in found]
    except ValueError:  # a malformed number somewhere: convert one by one
        values = [v for v in map(_as_float, (x.decode() for x in found)) if v is not None]
    return values, offset + end + 1, st.st_ino


class RunIndex:
    """All runs under one directory, re-read only where files changed since the last scan.

    ``scan()`` stats ``run.json`` and ``metrics.jsonl`` of every run; it parses a ``run.json``
    only when its mtime or size changed and reads only the bytes appended to a
    ``metrics.jsonl`` since the previous scan, so polling every second is cheap even with
    thousands of runs.
    """

    def __init__(self, root: Path | str) -> None:
        """Args: root: the runs directory (``--runs-dir``)."""
        self.root = Path(root)
        self._cache: dict[str, _Entry] = {}

    def scan(self) -> list[RunRow]:
        """Every run directory as a :class:`RunRow`, newest first."""
        rows: list[RunRow] = []
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            entries = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            try:
                st = os.stat(path / "run.json")
            except OSError:
                continue
            seen.add(entry.name)
            cached = self._cache.setdefault(entry.name, _Entry())
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != cached.stamp:
                cached.stamp = stamp
                try:
                    cached.info = read_run_json(path)
                except LabError as exc:
                    cached.info = {"name": entry.name, "status": "failed", "error": str(exc)}
            m = cached.metrics
            before, old_inode = m.offset, m.inode
            new, m.offset, m.inode = scan_returns(path / "metrics.jsonl", m.offset, m.inode)
            if m.inode != old_inode or m.offset < before or m.offset == 0:  # new, replaced or emptied
                m.latest = m.best = None
            if new:
                m.latest = new[-1]
                top = max(new)
                m.best = top if m.best is None else max(m.best, top)
            rows.append(self._row(path, cached))
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        rows.sort(key=lambda r: (r.created, r.name), reverse=True)
        return rows

    @staticmethod
    def _row(path: Path, entry: _Entry) -> RunRow:
        info = entry.info
        status = Run(path, info).status
        if status not in ("running", "done", "failed", "interrupted"):
            status = str(status)
        pid = info.get("pid")
        return RunRow(
            name=path.name,
            path=path,
            status=status,
            env_id=str(info.get("env_id") or "?"),
            algo=str(info.get("algo") or "?"),
            steps_done=_as_int(info.get("steps_done")),
            total_timesteps=_as_int(info.get("total_timesteps"), 0) or None,
            latest_return=entry.metrics.latest,
            best_return=entry.metrics.best,
            created=str(info.get("created") or ""),
            updated=str(info.get("updated") or ""),
            pid=_as_int(pid) or None,
            error=(str(info["error"]) if info.get("error") else None),
        )


_FIELD_ALIASES = {"status": "status", "env": "env_id", "env_id": "env_id", "algo": "algo", "name": "name"}


def filter_rows(rows: Iterable[RunRow], query: str) -> list[RunRow]:
    """Rows that match every token of ``query``.

    Args:
        rows: the rows to filter.
        query: whitespace-separated tokens; ``field:value`` (field one of status, env, algo,
            name) matches that field by substring, a bare token matches name, env, algo or
            status by substring. Matching ignores case.
    """
    tokens = query.lower().split()
    if not tokens:
        return list(rows)
    out = []
    for row in rows:
        hay = {
            "name": row.name.lower(),
            "status": row.status.lower(),
            "env_id": row.env_id.lower(),
            "algo": row.algo.lower(),
        }
        ok = True
        for tok in tokens:
            key, sep, value = tok.partition(":")
            if sep and key in _FIELD_ALIASES:
                if value not in hay[_FIELD_ALIASES[key]]:
                    ok = False
                    break
            elif not any(tok in v for v in hay.values()):
                ok = False
                break
        if ok:
            out.append(row)
    return out


def sort_rows(rows: Iterable[RunRow], key: str, reverse: bool) -> list[RunRow]:
    """Rows sorted by ``key`` (one of :data:`SORT_KEYS`), ties broken by name."""
    rows = sorted(rows, key=lambda r: r.name)
    return sorted(rows, key=lambda r: r.sort_value(key), reverse=reverse)


class MetricsTail:
    """Follows one ``metrics.jsonl``: ``poll()`` returns only the new records."""

    def __init__(self, path: Path) -> None:
        """Args: path: the ``metrics.jsonl`` to follow."""
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._inode = 0

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; also kept in :attr:`records`."""
        before = self._offset
        new, self._offset, self._inode = read_new_lines(self.path, self._offset, self._inode)
        if self._offset < before or (before and self._offset == 0):
            self.records = []
        self.records.extend(new)
        return new

    def curve(self, key: str = "episode_return") -> list[tuple[float, float]]:
        """``(step, value)`` pairs of every record holding a numeric ``key``."""
        out = []
        for i, rec in enumerate(self.records):
            y = _as_float(rec.get(key))
            if y is None:
                continue
            x = _as_float(rec.get("step"))
            out.append((float(i) if x is None else x, y))
        return out

    def numeric_keys(self) -> list[str]:
        """Metric names with numeric values, ``episode_return`` first."""
        keys: dict[str, None] = {}
        for rec in self.records[-200:]:
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys[k] = None
        ordered = sorted(keys)
        if "episode_return" in keys:
            ordered.remove("episode_return")
            ordered.insert(0, "episode_return")
        return ordered


def tail_text(path: Path, lines: int = 20, max_bytes: int = 64_000) -> list[str]:
    """The last ``lines`` lines of a text file, reading at most ``max_bytes`` from its end.

    Carriage returns (progress bars) are resolved to the text after the last one on a line.
    A missing file gives an empty list.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    out = []
    for line in text.splitlines():
        line = line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
        if line.strip():
            out.append(line)
    return out[-lines:]


@dataclass
class Artifacts:
    """What a run directory holds besides ``run.json`` and metrics."""

    checkpoints: list[Path]
    activations: list[tuple[Path, bool | None]]
    probes: list[Path]
    saes: list[Path]
    steer: list[Path]
    logs: list[Path]


def _activation_complete(path: Path) -> bool | None:
    """Whether an activation file carries ``complete=True``; None when it cannot be told cheaply."""
    import sys

    h5py = sys.modules.get("h5py")
    if h5py is None:
        return None
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False))
    except Exception:  # noqa: BLE001 - any unreadable file is "not complete"
        return False


def list_artifacts(run_path: Path, logs_dir: Path | None = None, check_complete: bool = False) -> Artifacts:
    """Collect a run's artifacts.

    Args:
        run_path: the run directory.
        logs_dir: the app's log directory; logs named ``<run>-*.log`` in it are included.
        check_complete: open each activation file (needs h5py; call from a worker) to read
            its ``complete`` attribute.
    """
    run = Run(run_path, {})
    if check_complete:
        import h5py  # noqa: F401 - makes _activation_complete able to look

    acts = [(p, _activation_complete(p) if check_complete else None) for p in run.activation_files()]
    probes = sorted(p for p in run.probes_dir.glob("*.json")) if run.probes_dir.is_dir() else []
    saes = sorted(p for p in run.saes_dir.iterdir() if p.is_dir()) if run.saes_dir.is_dir() else []
    steer_dir = run_path / "steer"
    steer = sorted(steer_dir.glob("*.json")) if steer_dir.is_dir() else []
    logs = sorted(run_path.glob("*.log"))
    if logs_dir is not None and logs_dir.is_dir():
        logs += sorted(logs_dir.glob(f"{run_path.name}-*.log"))
    return Artifacts(run.checkpoints(), acts, probes, saes, steer, logs)


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class ProbeRecord:
    """One probe result (a record of ``RUN/probes/<stem>.json``)."""

    hook: str
    label: str
    metric: str
    score: float | None
    baselines: dict[str, float]
    selectivity: float | None
    ci: tuple[float, float] | None
    checkpoint: str
    linear_by_construction: bool
    source: Path
    extra: dict[str, Any]

    @property
    def best_baseline(self) -> tuple[str, float] | None:
        """The strongest baseline as ``(name, score)``."""
        if not self.baselines:
            return None
        name = max(self.baselines, key=lambda k: self.baselines[k])
        return name, self.baselines[name]


@dataclass
class ProbeFile:
    """A parsed probe results file; ``error`` says why it could not be read."""

    path: Path
    records: list[ProbeRecord]
    notes: list[str]
    checkpoint: str
    error: str | None = None


def load_probe_file(path: Path) -> ProbeFile:
    """Read ``RUN/probes/<stem>.json``; never raises, bad content goes to ``error``/skipped."""
    path = Path(path)
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ProbeFile(path, [], [], path.stem, error=f"cannot read {path.name}: {exc}")
    if not isinstance(doc, dict):
        return ProbeFile(path, [], [], path.stem, error=f"{path.name} is not a JSON object")
    file_ckpt = str(doc.get("checkpoint") or path.stem)
    records = []
    skipped = 0
    for rec in doc.get("records") or []:
        if not isinstance(rec, dict) or "hook" not in rec or "label" not in rec:
            skipped += 1
            continue
        baselines = {}
        raw_b = rec.get("baselines")
        if isinstance(raw_b, dict):
            for k, v in raw_b.items():
                fv = _as_float(v)
                if fv is not None:
                    baselines[str(k)] = fv
        ci = rec.get("ci")
        ci_t = None
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            lo, hi = _as_float(ci[0]), _as_float(ci[1])
            if lo is not None and hi is not None:
                ci_t = (lo, hi)
        known = {"hook", "label", "metric", "score", "baselines", "selectivity", "ci", "checkpoint", "linear_by_construction"}
        records.append(
            ProbeRecord(
                hook=str(rec["hook"]),
                label=str(rec["label"]),
                metric=str(rec.get("metric") or "score"),
                score=_as_float(rec.get("score")),
                baselines=baselines,
                selectivity=_as_float(rec.get("selectivity")),
                ci=ci_t,
                checkpoint=str(rec.get("checkpoint") or file_ckpt),
                linear_by_construction=bool(rec.get("linear_by_construction", False)),
                source=path,
                extra={k: v for k, v in rec.items() if k not in known},
            )
        )
    notes = [str(n) for n in doc.get("notes") or [] if n]
    if skipped:
        notes.append(f"{skipped} malformed record(s) skipped")
    return ProbeFile(path, records, notes, file_ckpt)


def checkpoint_order(name: str) -> int:
    """Training step of a checkpoint or activation stem (``step_000001000`` -> 1000)."""
    return checkpoint_step(Path(name))


# ----------------------------------------------------------------------------- SAE features


@dataclass(frozen=True)
class Latent:
    """One SAE latent as far as ``features.json`` describes it."""

    index: int
    density: float | None
    associations: dict[str, float]
    histogram: tuple[list[float], list[float]] | None  # (bin edges or centres, counts)
    top_steps: list[tuple[int, float | None]]  # (row in activation file, activation)
    extra: dict[str, Any]


@dataclass
class FeatureSet:
    """A parsed ``features.json``; ``error`` says why there is nothing to show."""

    path: Path
    latents: list[Latent]
    labels: list[str]
    activation_file: str | None
    hook: str | None
    error: str | None = None


_DENSITY_KEYS = ("density", "frequency", "freq", "fire_rate", "activation_density")
_ASSOC_KEYS = ("associations", "label_associations", "label_corr", "correlations", "labels", "assoc")
_TOP_KEYS = ("top_steps", "top_activations", "top", "top_examples", "examples")
_HIST_KEYS = ("histogram", "hist")


def _parse_top(raw: Any) -> list[tuple[int, float | None]]:
    out: list[tuple[int, float | None]] = []
    if isinstance(raw, dict):  # {"rows": [...], "values": [...]} or {"index": [...], "activation": [...]}
        idx = next((raw[k] for k in ("rows", "steps", "index", "indices", "step") if isinstance(raw.get(k), list)), [])
        val = next((raw[k] for k in ("values", "activations", "activation", "acts") if isinstance(raw.get(k), list)), [])
        raw = [(i, val[n] if n < len(val) else None) for n, i in enumerate(idx)]
    if not isinstance(raw, list):
        return out
    for item in raw:
        if isinstance(item, dict):
            i = next((item[k] for k in ("row", "step", "index", "i", "idx") if k in item), None)
            v = next((item[k] for k in ("activation", "value", "act", "a") if k in item), None)
        elif isinstance(item, (list, tuple)) and item:
            i, v = item[0], (item[1] if len(item) > 1 else None)
        else:
            i, v = item, None
        ii = _as_int(i, -1)
        if ii >= 0:
            out.append((ii, _as_float(v)))
    return out


def _parse_hist(raw: Any) -> tuple[list[float], list[float]] | None:
    if isinstance(raw, dict):
        counts = next((raw[k] for k in ("counts", "count", "hist", "values") if isinstance(raw.get(k), list)), None)
        edges = next((raw[k] for k in ("edges", "bins", "bin_edges", "centers", "centres") if isinstance(raw.get(k), list)), None)
        if counts is None:
            return None
        c = [_as_float(x) or 0.0 for x in counts]
        e = [_as_float(x) or 0.0 for x in edges] if edges else list(map(float, range(len(c) + 1)))
        return e, c
    if isinstance(raw, list) and raw:
        c = [_as_float(x) or 0.0 for x in raw]
        return list(map(float, range(len(c) + 1))), c
    return None


def parse_latent(raw: Any, position: int) -> Latent | None:
    """One latent from whatever shape ``features.json`` uses; None if unrecognisable."""
    if not isinstance(raw, dict):
        return None
    index = _as_int(next((raw[k] for k in ("index", "latent", "id", "feature") if k in raw), position), position)
    density = next((_as_float(raw[k]) for k in _DENSITY_KEYS if k in raw), None)
    assoc: dict[str, float] = {}
    for k in _ASSOC_KEYS:
        v = raw.get(k)
        if isinstance(v, dict):
            for lk, lv in v.items():
                if isinstance(lv, dict):  # {"label": {"score": x}} or {"corr": x}
                    lv = next((lv[s] for s in ("score", "corr", "r", "auc", "value") if s in lv), None)
                f = _as_float(lv)
                if f is not None:
                    assoc[str(lk)] = f
            break
        if isinstance(v, list):  # [{"label": ..., "score": ...}]
            for item in v:
                if isinstance(item, dict) and "label" in item:
                    f = _as_float(next((item[s] for s in ("score", "corr", "r", "auc", "value") if s in item), None))
                    if f is not None:
                        assoc[str(item["label"])] = f
            break
    hist = next((_parse_hist(raw[k]) for k in _HIST_KEYS if k in raw), None)
    top = next((_parse_top(raw[k]) for k in _TOP_KEYS if k in raw), [])
    known = set(_DENSITY_KEYS) | set(_ASSOC_KEYS) | set(_TOP_KEYS) | set(_HIST_KEYS) | {"index", "latent", "id", "feature"}
    return Latent(index, density, assoc, hist, top, {k: v for k, v in raw.items() if k not in known})


def load_features(sae_dir: Path) -> FeatureSet:
    """Read ``saes/<name>/features.json`` defensively (never raises).

    Accepts a list of latent objects, or an object whose ``features``/``latents`` member is
    such a list (or a dict keyed by latent index). Recognised latent fields: an index
    (``index``/``latent``/``id``), a density (``density``/``frequency``), label associations
    (``associations``: label -> score), a ``histogram`` (``counts`` and ``edges``) and top
    activating steps (``top_steps``: rows of the activation file with their activation).
    """
    path = Path(sae_dir) / "features.json"
    if not path.exists():
        return FeatureSet(path, [], [], None, None, error=f"no features.json in {Path(sae_dir).name} yet (the SAE has not been analysed)")
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return FeatureSet(path, [], [], None, None, error=f"cannot read {path}: {exc}")
    meta: dict[str, Any] = doc if isinstance(doc, dict) else {}
    raw = doc
    if isinstance(doc, dict):
        raw = next((doc[k] for k in ("features", "latents") if k in doc), None)
    if isinstance(raw, dict):
        items = [dict(v, index=_as_int(k, i)) if isinstance(v, dict) and "index" not in v else v for i, (k, v) in enumerate(raw.items())]
    elif isinstance(raw, list):
        items = raw
    else:
        return FeatureSet(path, [], [], None, None, error=f"{path.name} has no list of features or latents")
    latents = [lat for i, r in enumerate(items) if (lat := parse_latent(r, i)) is not None]
    labels: dict[str, None] = {str(x): None for x in meta.get("labels") or [] if isinstance(x, str)}
    for lat in latents:
        for k in lat.associations:
            labels.setdefault(k, None)
    act = meta.get("activation_file") or meta.get("file")
    hook = meta.get("hook") or meta.get("hook_name")
    if not hook:
        cfg = Path(sae_dir) / "cfg.json"
        cfg_doc, _ = read_json_quiet(cfg)
        if isinstance(cfg_doc, dict):
            hook = cfg_doc.get("hook") or cfg_doc.get("hook_name")
    err = None if latents else f"{path.name} lists no readable latents"
    return FeatureSet(path, latents, list(labels), str(act) if act else None, str(hook) if hook else None, error=err)


def read_json_quiet(path: Path) -> tuple[Any, str | None]:
    """``(document, None)`` or ``(None, reason)`` for any JSON file."""
    try:
        with open(path) as fh:
            return json.load(fh), None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"cannot read {Path(path).name}: {exc}"


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_fragment(text: str) -> str:
    """``text`` made safe for a file name."""
    return _SAFE.sub("_", text).strip("_") or "x"
