"""The activation file: the HDF5 contract between recording and every analysis.

Schema (version 1, see ``docs/design.md``)::

    /                  attrs: schema_version, run, checkpoint, env_id, policy_kind, gamma, complete,
                              input_window (optional JSON: what the network receives, see below)
    /steps/{obs,action,reward,done,episode,t,text}
    /labels/<name>     attrs: kind, description, linear_in, derived_from (optional)
    /acts/<hook>       (N, d) float32
    /acts_random/<hook> (N, d) float32   (optional random-weights baseline: the first twin)
    /acts_random_<i>/<hook>              (optional further twins i = 1, 2, ...: other random inits)
    /inputs/<name>     (N,) float32      (optional per-step network inputs not in /steps, e.g. rtg)

A label without a ``kind`` attribute (a file written by someone else) is discrete when its dtype
is bool, or integer with at most ``MAX_CLASSES`` distinct values, else continuous
(``label_info`` says how the kind was decided: ``kind_source``).

``ActivationWriter`` appends rows as a rollout goes and sets ``complete`` last;
``ActivationFile`` reads lazily and in chunks, and refuses a cut file unless asked not to.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from probes.errors import ProbeError

SCHEMA_VERSION = 1
CHUNK_ROWS = 1024
MAX_CLASSES = 20
"""An integer label with at most this many distinct values and no ``kind`` attribute is discrete."""
RANDOM_GROUP = "acts_random"
"""The first random-weights twin; twin i > 0 is in ``acts_random_<i>`` (``random_group``)."""
INPUTS_GROUP = "inputs"
KIND_ATTRIBUTE = "attribute"
"""``kind_source`` of a label whose file states its kind."""


def random_group(twin: int) -> str:
    """The HDF5 group of random-weights twin ``twin`` (0: ``acts_random``, i: ``acts_random_<i>``)."""
    return RANDOM_GROUP if twin == 0 else f"{RANDOM_GROUP}_{twin}"


def infer_kind(dtype: np.dtype, distinct: int | None) -> tuple[str, str]:
    """``(kind, kind_source)`` of a label without a ``kind`` attribute.

    ``distinct`` is the number of distinct values (only needed for integers; more than
    ``MAX_CLASSES`` may be given as ``MAX_CLASSES + 1``).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "discrete", "inferred: bool dtype"
    if dtype.kind in "iu":
        if distinct is not None and distinct <= MAX_CLASSES:
            return "discrete", f"inferred: integer dtype with {distinct} distinct values (<= {MAX_CLASSES})"
        return "continuous", f"inferred: integer dtype with more than {MAX_CLASSES} distinct values"
    return "continuous", f"inferred: {dtype.name} dtype"


def _distinct(ds: h5py.Dataset, n: int, limit: int = MAX_CLASSES) -> int:
    """Distinct values of an integer/bool dataset's first ``n`` rows, counted up to ``limit + 1``."""
    seen: set = set()
    for start in range(0, n, 65536):
        seen.update(np.unique(ds[start : min(start + 65536, n)]).tolist())
        if len(seen) > limit:
            return limit + 1
    return len(seen)


class ActivationWriter:
    """Append-only writer for one activation file.

    Parameters
    ----------
    path:
        File to create (an existing file is refused: recordings are never overwritten silently).
    attrs:
        Root attributes (run, checkpoint, env_id, policy_kind, gamma, ...).
    label_meta:
        For each label name: ``{"kind": "continuous"|"discrete", "description": str,
        "linear_in": [hook, ...]}``. Labels not described here default to continuous.
    """

    def __init__(
        self,
        path: Path | str,
        attrs: Mapping[str, Any],
        label_meta: Mapping[str, Mapping[str, Any]] | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise ProbeError(f"{self.path} already exists; refusing to overwrite a recording")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5 = h5py.File(self.path, "w")
        self._chunk_rows = chunk_rows
        self._label_meta = dict(label_meta or {})
        self._n = 0
        self._episodes: set[int] = set()
        for key, value in attrs.items():
            self._h5.attrs[key] = _attr(value)
        self._h5.attrs["schema_version"] = SCHEMA_VERSION
        self._h5.attrs["complete"] = False
        if "recording_id" not in attrs:
            self._h5.attrs["recording_id"] = uuid.uuid4().hex  # what probe results refer to
        for group in ("steps", "labels", "acts"):
            self._h5.require_group(group)

    # ------------------------------------------------------------------ writing
    def append(
        self,
        steps: Mapping[str, np.ndarray | Sequence[Any]],
        labels: Mapping[str, np.ndarray],
        acts: Mapping[str, np.ndarray],
        acts_random: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append a block of ``n`` rows: every array's first axis has length ``n``.

        ``acts_random`` is one twin's activations (written to ``/acts_random``) or a sequence
        of twins (twin i to ``random_group(i)``); ``inputs`` go to ``/inputs/<name>``.
        """
        n = len(steps["reward"])
        for name, value in steps.items():
            if name == "text":
                self._append_text(np.asarray(value, dtype=object))
            else:
                self._append("steps", name, np.asarray(value))
        for name, value in labels.items():
            self._append("labels", name, np.asarray(value), meta=self._label_meta.get(name))
        for name, value in acts.items():
            self._append("acts", name, np.asarray(value, dtype=np.float32))
        twins = [acts_random] if isinstance(acts_random, Mapping) else list(acts_random or [])
        for i, twin in enumerate(twins):
            for name, value in twin.items():
                self._append(random_group(i), name, np.asarray(value, dtype=np.float32))
        for name, value in (inputs or {}).items():
            self._append(INPUTS_GROUP, name, np.asarray(value, dtype=np.float32))
        self._episodes.update(int(e) for e in np.unique(np.asarray(steps["episode"])))
        self._n += n

    def _dataset(self, group: str, name: str, row: np.ndarray, dtype: Any) -> h5py.Dataset:
        grp = self._h5.require_group(group)
        if name in grp:
            return grp[name]
        shape = row.shape[1:]
        row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        chunk = max(16, min(self._chunk_rows, (256 * 1024) // row_bytes))
        return grp.create_dataset(
            name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(chunk, *shape)
        )

    def _append(self, group: str, name: str, value: np.ndarray, meta: Mapping[str, Any] | None = None) -> None:
        if value.dtype.kind == "b":
            dtype: Any = np.bool_
        elif value.dtype.kind in "iu":
            value = value.astype(np.int64, copy=False)
            dtype = np.int64
        else:
            value = value.astype(np.float32, copy=False)
            dtype = np.float32
        ds = self._dataset(group, name, value, dtype)
        if meta is not None and "kind" not in ds.attrs:
            for key, item in meta.items():
                ds.attrs[key] = _attr(item)
        start = ds.shape[0]
        ds.resize(start + len(value), axis=0)
        ds[start:] = value

    def _append_text(self, value: np.ndarray) -> None:
        grp = self._h5["steps"]
        if "text" not in grp:
            grp.create_dataset(
                "text", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(256,)
            )
        ds = grp["text"]
        start = ds.shape[0]
        ds.resize(start + len(value), axis=0)
        ds[start:] = [str(v) if v is not None else "" for v in value]

    def read_label(self, name: str) -> np.ndarray:
        """Every row written so far of ``/labels/<name>``."""
        return self._h5["labels"][name][:]

    def add_label(self, name: str, values: np.ndarray) -> None:
        """Write a whole label at once (one that needs every row first, e.g. a standardised
        value), with the attributes given for ``name`` in ``label_meta``. It must cover every row."""
        values = np.asarray(values)
        if len(values) != self._n:
            raise ProbeError(f"label {name!r} has {len(values)} rows, the file {self._n}")
        self._append("labels", name, values, meta=self._label_meta.get(name, {}))

    def flush(self) -> None:
        self._h5.attrs["n_steps"] = self._n
        self._h5.flush()

    def close(self, complete: bool = True) -> None:
        """Close the file; ``complete=True`` marks it whole (set last, after every row)."""
        if not self._h5:
            return
        for name, ds in self._h5["labels"].items():
            if "kind" not in ds.attrs:
                # No metadata given: the kind follows the reader's rule for files without one.
                distinct = _distinct(ds, ds.shape[0]) if ds.dtype.kind in "iub" else None
                kind, source = infer_kind(ds.dtype, distinct)
                ds.attrs["kind"] = kind
                ds.attrs["kind_source"] = source
                ds.attrs["description"] = ""
                ds.attrs["linear_in"] = "[]"
        self._h5.attrs["n_steps"] = self._n
        self._h5.attrs["n_episodes"] = len(self._episodes)
        self._h5.flush()
        if complete:
            self._h5.attrs["complete"] = True
        self._h5.close()

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(complete=exc_type is None)


def _attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; lists and dicts are stored as JSON text."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


class ActivationFile:
    """Lazy, chunked reader for one activation file.

    Parameters
    ----------
    path:
        The ``.h5`` file.
    allow_incomplete:
        A file without ``complete=True`` was cut short (a crash or a recording still under way).
        By default it is refused with a clear error; with ``True`` it is opened and
        ``self.complete`` says what it is.
    """

    def __init__(self, path: Path | str, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ProbeError(f"no such activation file: {self.path}")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise ProbeError(f"{self.path} is not a readable HDF5 file ({exc})") from None
        try:
            self.attrs = {k: _decode(v) for k, v in self._h5.attrs.items()}
            if "steps" not in self._h5 or "acts" not in self._h5:
                raise ProbeError(f"{self.path} is not an activation file (no /steps or /acts group)")
            version = self.attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                raise ProbeError(
                    f"{self.path} has schema_version {version!r}; this lab reads {SCHEMA_VERSION}"
                )
            self.complete = bool(self.attrs.get("complete", False))
            if not self.complete and not allow_incomplete:
                raise ProbeError(
                    f"{self.path} is incomplete (the recording was cut short); "
                    "re-record it, or pass allow_incomplete to read what is there"
                )
        except BaseException:
            self._h5.close()
            raise
        # A cut file may have datasets of unequal length: use the common prefix.
        lengths = [ds.shape[0] for ds in self._iter_datasets()]
        self.n = min(lengths) if lengths else 0

    def _iter_datasets(self) -> Iterator[h5py.Dataset]:
        for group in ("steps", "labels", "acts", *self._random_groups(), INPUTS_GROUP):
            if group in self._h5:
                yield from (ds for ds in self._h5[group].values() if isinstance(ds, h5py.Dataset))

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return self.n

    @property
    def hooks(self) -> list[str]:
        return sorted(self._h5["acts"].keys())

    @property
    def random_hooks(self) -> list[str]:
        """Hooks that have at least the first random-weights twin (``/acts_random``)."""
        return sorted(self._h5[RANDOM_GROUP].keys()) if RANDOM_GROUP in self._h5 else []

    def _random_groups(self) -> list[str]:
        out, i = [], 0
        while random_group(i) in self._h5:
            out.append(random_group(i))
            i += 1
        return out

    def random_twins(self, hook: str) -> list[str]:
        """The groups holding random-weights twins of ``hook``, first twin first (may be empty)."""
        return [g for g in self._random_groups() if hook in self._h5[g]]

    @property
    def input_window(self) -> dict[str, Any] | None:
        """What the network receives at each step (root attr ``input_window``), None when not stated.

        ``{"context": K, "fields": [...]}``: the last K steps of the episode (left-padded with
        zeros), each with the listed fields: ``obs`` (``/steps/obs``), ``prev_action`` (the
        action taken before that step, ``/steps/action``), ``rtg`` (``/inputs/rtg``) and
        ``timestep`` (``/steps/t``).
        """
        raw = self.attrs.get("input_window")
        if not raw:
            return None
        try:
            spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (json.JSONDecodeError, TypeError, ValueError):
            return None
        if not isinstance(spec, dict) or not isinstance(spec.get("context"), int) or spec["context"] < 1:
            return None
        return {"context": int(spec["context"]), "fields": [str(x) for x in spec.get("fields", ["obs"])]}

    def has_input(self, name: str) -> bool:
        """Whether ``/inputs/<name>`` exists."""
        return INPUTS_GROUP in self._h5 and name in self._h5[INPUTS_GROUP]

    @property
    def labels(self) -> list[str]:
        return sorted(self._h5["labels"].keys()) if "labels" in self._h5 else []

    def hook_dim(self, hook: str) -> int:
        return int(self._dataset("acts", hook).shape[1])

    def label_info(self, name: str) -> dict[str, Any]:
        """``kind``, ``kind_source``, ``description``, ``linear_in`` (a list of hook names) and
        ``derived_from`` (None when not stated) of a label.

        ``kind_source`` is ``"attribute"`` when the file states the kind, else how it was
        inferred (``infer_kind``: bool, or integer with at most ``MAX_CLASSES`` values, is discrete).
        """
        ds = self._dataset("labels", name)
        if "kind" in ds.attrs:
            kind = _decode(ds.attrs["kind"])
            source = _decode(ds.attrs.get("kind_source", KIND_ATTRIBUTE)) or KIND_ATTRIBUTE
        else:
            distinct = _distinct(ds, self.n) if ds.dtype.kind in "iub" else None
            kind, source = infer_kind(ds.dtype, distinct)
        derived = _decode(ds.attrs.get("derived_from", "")) or None
        linear_in = _decode(ds.attrs.get("linear_in", "[]")) or "[]"
        try:
            linear = json.loads(linear_in) if isinstance(linear_in, str) else list(linear_in)
        except json.JSONDecodeError:
            linear = []
        return {"kind": kind, "kind_source": source, "description": _decode(ds.attrs.get("description", "")),
                "linear_in": linear, "derived_from": str(derived) if derived is not None else None}

    def _dataset(self, group: str, name: str) -> h5py.Dataset:
        if group not in self._h5 or name not in self._h5[group]:
            available = ", ".join(sorted(self._h5[group].keys())) if group in self._h5 else "none"
            what = {"acts": "hook", "labels": "label", "steps": "step field", INPUTS_GROUP: "input"}.get(
                group, "random-weights hook")
            raise ProbeError(f"{self.path.name} has no {what} {name!r} (available: {available})")
        return self._h5[group][name]

    # ------------------------------------------------------------------ reading
    def read(self, group: str, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Read one dataset (or a slice / sorted index array of its rows) into memory."""
        ds = self._dataset(group, name)
        if rows is None:
            return ds[: self.n]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.n)
            return ds[start:stop:step]
        return ds[np.asarray(rows)]

    def steps(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        return self.read("steps", name, rows)

    def label(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        return self.read("labels", name, rows)

    def acts(self, hook: str, rows: slice | np.ndarray | None = None, random_weights: bool = False) -> np.ndarray:
        return self.read("acts_random" if random_weights else "acts", hook, rows)

    def episodes(self) -> np.ndarray:
        """The episode id of every row (small: one int per step)."""
        return self.steps("episode")

    def has_step(self, name: str) -> bool:
        """Whether ``/steps/<name>`` exists (e.g. the optional ``text``)."""
        return name in self._h5["steps"]

    def text(self, row: int) -> str:
        if "text" not in self._h5["steps"]:
            return ""
        return _decode(self._h5["steps"]["text"][row]) or ""

    def chunk_size(self, group: str, name: str) -> int:
        chunks = self._dataset(group, name).chunks
        return int(chunks[0]) if chunks else CHUNK_ROWS

    def iter_chunks(
        self, group: str, name: str, rows_per_chunk: int | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(row_slice, block)`` over a dataset; memory is bounded by the chunk size."""
        ds = self._dataset(group, name)
        step = rows_per_chunk or max(self.chunk_size(group, name), 4096)
        for start in range(0, self.n, step):
            sl = slice(start, min(start + step, self.n))
            yield sl, ds[sl]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "ActivationFile":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return f"ActivationFile({str(self.path)!r}, n={self.n}, hooks={len(self.hooks)}, {state})"


def file_attribute(path: Path | str, name: str) -> str | None:
    """A text attribute of an activation file (``recording_id``, ``replay_recording_id``, ...), or
    None when the file or the attribute is missing or unreadable."""
    try:
        with h5py.File(path, "r") as h5:
            value = h5.attrs.get(name)
    except (OSError, ValueError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) if value is not None else None


def recording_id(path: Path | str) -> str | None:
    """The ``recording_id`` attribute of an activation file (unique per recording), or None."""
    return file_attribute(path, "recording_id")


def stale_reason(results: Any, recording: Path | str | None = None) -> str | None:
    """Why probe results no longer describe their recording, or None if they still do.

    ``results`` is a ``ProbeResults`` or its dict; ``recording`` the activation file they came
    from (default: the document's ``file``, which may be relative to where the probes ran).
    Results written from a recording carry its ``recording_id``; a recording replaced since
    (``rl-lab record --overwrite``) has another one, and a removed recording has none. Results
    from before recording ids are never called stale.
    """
    doc = results.to_dict() if hasattr(results, "to_dict") else dict(results)
    wanted = doc.get("recording_id")
    if not wanted:
        return None
    path = Path(recording) if recording is not None else Path(str(doc.get("file", "")))
    if not path.is_file():
        return f"stale: the recording {path.name} is gone"
    if recording_id(path) != wanted:
        return f"stale: the recording {path.name} was replaced after these probes ran; probe it again"
    return None
