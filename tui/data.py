"""Light, cached readers for the files the app shows.

Nothing here imports torch, SB3 or h5py: the app must start in well under a second. Every
reader is defensive — a corrupt or half-written file becomes a row or a message that says
so, never an exception that reaches the UI.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from probes.errors import ProbeError
from probes.layout import LOG_SUFFIX, METRICS_JSONL, RUN_JSON, RunsDirLayout, recording_of_results
from probes.results import ProbeRecord, read_probe_results
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
    seed: int | None = None
    sweep: str | None = None
    sweep_condition: str | None = None
    returns_partial: bool = False  # metrics not (fully) read yet by a quick scan: best (maybe latest) unknown

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
    partial: bool = False  # latest came from the file's tail; nothing consumed yet


@dataclass
class _Entry:
    path: Path
    stamp: tuple[int, int] = (0, 0)
    info: dict[str, Any] = field(default_factory=dict)
    metrics: _MetricsState = field(default_factory=_MetricsState)
    row: RunRow | None = None  # the last row built, reused while nothing it shows changed


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
    return out if math.isfinite(out) else None  # NaN, infinities -> None


def _new_complete_lines(path: Path | str, offset: int, inode: int) -> tuple[bytes, int, int]:
    """The bytes of the complete lines appended since ``offset``, the new offset and the inode
    (a replaced or shortened file is read again from the start; a torn last line waits)."""
    try:
        st = os.stat(path)
    except OSError:
        return b"", 0, 0
    if st.st_ino != inode or st.st_size < offset:
        offset = 0
    if st.st_size == offset:
        return b"", offset, st.st_ino
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read(st.st_size - offset)
    except OSError:
        return b"", offset, st.st_ino
    end = chunk.rfind(b"\n")
    if end < 0:
        return b"", offset, st.st_ino
    return chunk[: end + 1], offset + end + 1, st.st_ino


def read_new_lines(path: Path | str, offset: int, inode: int) -> tuple[list[dict[str, Any]], int, int]:
    """Complete JSON-object lines appended to ``path`` since byte ``offset``.

    Args:
        path: a JSON-lines file that is only ever appended to (``metrics.jsonl``).
        offset: bytes already consumed by earlier calls (0 for a first read).
        inode: the inode seen by earlier calls; a different inode or a shorter file means
            the file was replaced, and reading restarts from the beginning.

    Returns:
        ``(records, new_offset, inode)``. A torn last line is left for the next call.
    """
    chunk, offset, inode = _new_complete_lines(path, offset, inode)
    return (parse_lines(chunk) if chunk else []), offset, inode


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


def scan_returns(path: Path | str, offset: int, inode: int) -> tuple[list[float], int, int]:
    """Like :func:`read_new_lines` but only extracts ``episode_return`` values (fast, for the runs table)."""
    chunk, offset, inode = _new_complete_lines(path, offset, inode)
    found = _RETURN.findall(chunk)  # null / NaN do not match and are skipped
    try:
        values = [float(x) for x in found]
    except ValueError:  # a malformed number somewhere: convert one by one
        values = [v for v in map(_as_float, (x.decode() for x in found)) if v is not None]
    return values, offset, inode


def _read_info(info_path: str, run_path: Path) -> dict[str, Any]:
    """``run.json`` as a dict; an unreadable one becomes a *failed* run that says why."""
    try:
        with open(info_path, "rb") as fh:
            info = json.loads(fh.read())
        if isinstance(info, dict):
            return info
    except (OSError, ValueError):
        pass
    try:  # the rare bad file: let the run store word the reason
        return read_run_json(run_path)
    except LabError as exc:
        return {"name": run_path.name, "status": "failed", "error": str(exc)}


def last_return(path: Path | str, max_bytes: int = 16 * 1024) -> float | None:
    """The last ``episode_return`` in the complete lines of the last ``max_bytes`` of ``path``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            chunk = fh.read()
    except OSError:
        return None
    end = chunk.rfind(b"\n")
    found = _RETURN.findall(chunk, 0, end + 1) if end >= 0 else []
    for raw in reversed(found):
        value = _as_float(raw.decode())
        if value is not None:
            return value
    return None


class RunIndex:
    """All runs under one directory, re-read only where files changed since the last scan.

    ``scan()`` stats ``run.json`` and ``metrics.jsonl`` of every run; it parses a ``run.json``
    only when its mtime or size changed and reads only the bytes appended to a
    ``metrics.jsonl`` since the previous scan, so polling every second is cheap even with
    thousands of runs. ``scan(quick=True)`` (the app's first pass, which only has to fill the
    screen) reads the metrics of the newest :attr:`QUICK_ROWS` runs only, and a large
    ``metrics.jsonl`` only from its tail: those rows show their latest return at once; the
    other returns, and the best of a large file, come with the next full scan.
    """

    #: A never-read ``metrics.jsonl`` larger than this is read from its tail by a quick scan.
    TAIL_BYTES = 64 * 1024
    #: Runs (newest first, the runs table's default order) whose metrics a quick scan reads.
    QUICK_ROWS = 64

    def __init__(self, root: Path | str) -> None:
        """Args: root: the runs directory (``--runs-dir``)."""
        self.root = Path(root)
        self._cache: dict[str, _Entry] = {}

    def scan(self, quick: bool = False) -> list[RunRow]:
        """Every run directory as a :class:`RunRow`, newest first.

        Args:
            quick: a first pass that reads the metrics of the :attr:`QUICK_ROWS` newest runs
                only (a large file from its tail); the other rows are marked
                ``returns_partial`` until the next full scan (see the class).
        """
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            entries = []
        found: list[tuple[_Entry, str, bool]] = []
        for entry in entries:  # plain strings, not pathlib: Path arithmetic was a third of a scan
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            info_path = os.path.join(entry.path, RUN_JSON)
            try:
                st = os.stat(info_path)
            except OSError:
                continue
            seen.add(entry.name)
            cached = self._cache.get(entry.name)
            if cached is None:
                cached = self._cache[entry.name] = _Entry(Path(entry.path))
            stamp = (st.st_mtime_ns, st.st_size)
            changed = stamp != cached.stamp
            if changed:
                cached.stamp = stamp
                cached.info = _read_info(info_path, cached.path)
            found.append((cached, entry.path, changed))
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        found.sort(key=lambda f: (str(f[0].info.get("created") or ""), f[0].path.name), reverse=True)
        rows: list[RunRow] = []
        for i, (cached, path, changed) in enumerate(found):
            m = cached.metrics
            before = (m.offset, m.inode, m.partial)
            if quick and i >= self.QUICK_ROWS and m.offset == 0:
                m.partial = True
            else:
                self._read_metrics(os.path.join(path, METRICS_JSONL), m, quick)
            row = cached.row
            if row is None or changed or before != (m.offset, m.inode, m.partial) or row.status == "running":
                row = cached.row = self._row(cached)
            rows.append(row)
        return rows

    def _read_metrics(self, path: str, m: _MetricsState, quick: bool) -> None:
        if quick and m.offset == 0 and not m.partial:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0
            if size > self.TAIL_BYTES:
                m.latest, m.best, m.partial = last_return(path), None, True
                return
        before, old_inode = m.offset, m.inode
        new, m.offset, m.inode = scan_returns(path, m.offset, m.inode)
        if m.inode != old_inode or m.offset < before or m.offset == 0:  # new, replaced or emptied
            m.latest = m.best = None
        m.partial = False
        if new:
            m.latest = new[-1]
            top = max(new)
            m.best = top if m.best is None else max(m.best, top)

    @staticmethod
    def _row(entry: _Entry) -> RunRow:
        info = entry.info
        run = Run(entry.path, info)
        status = run.status
        if status not in ("running", "done", "failed", "interrupted"):
            status = str(status)
        problems = run.problems()  # a damaged run.json: listed as damaged, with the reason
        pid = info.get("pid")
        return RunRow(
            name=entry.path.name,
            path=entry.path,
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
            error=("damaged run.json: " + "; ".join(problems) if problems else
                   str(info["error"]) if info.get("error") else None),
            seed=_as_int(info.get("seed"), -1) if info.get("seed") is not None else None,
            sweep=str(info["sweep"]) if info.get("sweep") else None,
            sweep_condition=str(info["sweep_condition"]) if info.get("sweep_condition") else None,
            returns_partial=entry.metrics.partial,
        )


_FIELD_ALIASES = {"status": "status", "env": "env_id", "env_id": "env_id", "algo": "algo", "name": "name", "sweep": "sweep"}


def filter_rows(rows: Iterable[RunRow], query: str) -> list[RunRow]:
    """Rows that match every token of ``query``.

    Args:
        rows: the rows to filter.
        query: whitespace-separated tokens; ``field:value`` (field one of status, env, algo,
            name, sweep) matches that field by substring, a bare token matches name, env, algo or
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
            "sweep": (row.sweep or "").lower(),
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
    activations: list[Path]
    probes: list[Path]
    saes: list[Path]
    steer: list[Path]
    logs: list[Path]


def list_artifacts(run_path: Path, logs_dir: Path | None = None) -> Artifacts:
    """Collect a run's artifacts.

    Args:
        run_path: the run directory.
        logs_dir: the app's log directory; logs named ``<run>-*.log`` in it are included.
    """
    run = Run(run_path, {})
    logs = run.log_files()
    if logs_dir is not None and logs_dir.is_dir():
        logs += sorted(logs_dir.glob(f"{run.name}-*{LOG_SUFFIX}"))
    return Artifacts(run.checkpoints(), run.all_activation_files(), run.all_probe_result_files(), run.sae_dirs(),
                     run.steer_files(), logs)


# ----------------------------------------------------------------------------- probes


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
        doc = read_probe_results(path)
    except ProbeError as exc:
        return ProbeFile(path, [], [], path.stem, error=str(exc))
    from probes.activations import stale_reason  # h5py: read in the screen's worker, not at start-up

    notes = list(doc.notes)
    if doc.skipped:
        notes.append(f"{doc.skipped} malformed record(s) skipped")
    recording = recording_of_results(path)
    stale = stale_reason(doc, recording) if recording is not None else None
    if stale:
        notes.insert(0, stale)
    return ProbeFile(path, doc.records, notes, doc.checkpoint)


def checkpoint_order(name: str) -> int:
    """Training step of a checkpoint or activation stem (``step_000001000`` -> 1000)."""
    return checkpoint_step(Path(name))


# ----------------------------------------------------------------------------- sweeps


def group_sweeps(rows: Iterable[RunRow]) -> dict[str, dict[str, list[RunRow]]]:
    """Trials of every sweep: sweep name -> condition -> runs (by seed, then name).

    A trial is a run whose ``run.json`` carries ``sweep`` (see ``docs/sweep.md``); a trial
    without ``sweep_condition`` is put under the condition ``"?"``.
    """
    out: dict[str, dict[str, list[RunRow]]] = {}
    for row in rows:
        if row.sweep:
            out.setdefault(row.sweep, {}).setdefault(row.sweep_condition or "?", []).append(row)
    for conditions in out.values():
        for runs in conditions.values():
            runs.sort(key=lambda r: (r.seed if r.seed is not None else -1, r.name))
    return dict(sorted(out.items()))


def sweep_names(runs_dir: Path, rows: Iterable[RunRow]) -> list[str]:
    """Sweeps known from trial runs or from records in ``RUNS_DIR/sweeps/<name>.json``, sorted."""
    names = {r.sweep for r in rows if r.sweep}
    names.update(p.stem for p in RunsDirLayout(runs_dir).sweep_records())
    return sorted(names)


def read_return_curve(path: Path) -> tuple[list[float], list[float]]:
    """``(steps, episode returns)`` of one ``metrics.jsonl`` (lines without a return are skipped)."""
    records, _, _ = read_new_lines(path, 0, 0)
    xs: list[float] = []
    ys: list[float] = []
    for i, rec in enumerate(records):
        y = _as_float(rec.get("episode_return"))
        if y is None:
            continue
        x = _as_float(rec.get("step"))
        xs.append(float(i) if x is None else x)
        ys.append(y)
    return xs, ys


@dataclass(frozen=True)
class Band:
    """A learning curve aggregated over seeds on a common step grid."""

    steps: list[float]
    mean: list[float]
    low: list[float]  # mean - 1 sd over seeds (the mean where one seed has data)
    high: list[float]  # mean + 1 sd
    seeds: list[int]  # how many seeds have data at each step
    n_curves: int


def aggregate_curves(curves: Iterable[tuple[list[float], list[float]]], points: int = 80) -> Band:
    """Mean and a ±1 standard-deviation band over seeds of several learning curves.

    Each curve is resampled onto ``points`` steps evenly spaced up to the largest step of all
    curves: the value at a grid step is the mean of the curve's returns in the interval that
    ends there, interpolated linearly across intervals without episodes, carried forward after
    the curve's last episode, and missing before its first (a seed that has not logged yet does
    not drag the mean down).

    Args:
        curves: ``(steps, returns)`` per seed.
        points: grid size.
    """
    curves = [(xs, ys) for xs, ys in curves if xs]
    if not curves:
        return Band([], [], [], [], [], 0)
    top = max(max(xs) for xs, _ in curves)
    lo = min(min(xs) for xs, _ in curves)
    span = (top - lo) or 1.0
    grid = [lo + span * (k + 1) / points for k in range(points)]
    per_seed: list[list[float | None]] = []
    for xs, ys in curves:
        sums = [0.0] * points
        counts = [0] * points
        for x, y in zip(xs, ys):
            k = min(points - 1, max(0, int((x - lo) / span * points - 1e-9)))
            sums[k] += y
            counts[k] += 1
        values: list[float | None] = [sums[k] / counts[k] if counts[k] else None for k in range(points)]
        known = [k for k in range(points) if counts[k]]
        for a, b in zip(known, known[1:]):  # linear between intervals with episodes
            va, vb = values[a], values[b]
            assert va is not None and vb is not None
            for k in range(a + 1, b):
                values[k] = va + (vb - va) * (k - a) / (b - a)
        for k in range(known[-1] + 1, points):  # the last value carries forward
            values[k] = values[known[-1]]
        per_seed.append(values)
    steps, mean, low, high, seeds = [], [], [], [], []
    for k in range(points):
        vals = [v[k] for v in per_seed if v[k] is not None]
        if not vals:
            continue
        m = sum(vals) / len(vals)
        sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
        steps.append(grid[k])
        mean.append(m)
        low.append(m - sd)
        high.append(m + sd)
        seeds.append(len(vals))
    return Band(steps, mean, low, high, seeds, len(curves))


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


def read_sae_metrics(sae_dir: Path) -> tuple[dict[str, Any], str | None]:
    """An SAE's ``metrics.json`` (its ``views`` for the features screen included) or ``({}, why)``."""
    from probes.layout import SAELayout

    data, error = read_json_quiet(SAELayout(sae_dir).metrics_path)
    if error is not None or not isinstance(data, dict):
        return {}, error or "metrics.json is not an object"
    return data, None


def read_sae_slots(sae_dir: Path) -> int:
    """Slots of a binding SAE (``cfg.json``'s ``slots``, ``lab_architecture`` "binding"), else 1.
    Latent ``j * (d_sae / slots) + i`` is feature ``i`` in slot ``j`` (``probes.sae.binding``)."""
    from probes.layout import SAELayout

    data, error = read_json_quiet(SAELayout(sae_dir).cfg_path)
    if error is not None or not isinstance(data, dict) or data.get("lab_architecture") != "binding":
        return 1
    slots = data.get("slots")
    return slots if isinstance(slots, int) and slots > 1 else 1

