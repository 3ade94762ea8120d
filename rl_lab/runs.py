"""The run store: one directory per run, described in ``docs/design.md``.

``run.json`` is replaced atomically; ``metrics.jsonl`` is appended one line per event, so a
crash loses at most the line being written. A run whose status says ``running`` while its
process is gone is reported as ``interrupted``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from probes.layout import CHECKPOINT_SUFFIXES, RESERVED_NAMES, RUN_JSON, RunLayout, RunsDirLayout
from rl_lab.errors import LabError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_runs_dir() -> Path:
    """``$RL_LAB_RUNS`` if set, else ``./runs``."""
    return Path(os.environ.get("RL_LAB_RUNS") or "runs")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run name (cannot escape the runs directory)."""
    if not RUN_NAME.match(name) or name in (".", "..") or ".." in name:
        raise LabError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise LabError(f"invalid run name {name!r}: the runs directory keeps {name}/ for itself")
    return name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=json_default)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_default(obj: Any) -> Any:
    """``json.dump``'s ``default`` for numpy scalars and arrays and paths."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Run(RunLayout):
    """A view of one run directory: its layout (:class:`probes.layout.RunLayout`, every folder
    and file name of the contract) and ``info``, the content of ``run.json``."""

    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        status = self.info.get("status", "failed")
        if status == "running" and not pid_alive(self.info.get("pid")):
            return "interrupted"
        return status

    def reload(self) -> "Run":
        self.info = read_run_json(self.path)
        return self

    def update(self, **changes: Any) -> None:
        """Merge ``changes`` into ``run.json`` (atomically) and stamp ``updated``."""
        self.info.update(changes)
        self.info["updated"] = now_iso()
        write_json_atomic(self.run_json, self.info)

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` and flush it to disk."""
        line = json.dumps(record, default=json_default)
        with open(self.metrics_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """Every complete line of ``metrics.jsonl`` (a torn last line is skipped)."""
        return list(iter_metrics(self.metrics_path))

    def checkpoints(self) -> list[Path]:
        """Checkpoint files sorted by training step (oldest first)."""
        if not self.checkpoints_dir.is_dir():
            return []
        files = [p for p in self.checkpoints_dir.iterdir() if p.suffix in CHECKPOINT_SUFFIXES]
        return sorted(files, key=checkpoint_step)

    def latest_checkpoint(self) -> Path:
        ckpts = self.checkpoints()
        if not ckpts:
            raise LabError(f"run {self.name!r} has no checkpoint yet")
        return ckpts[-1]

    def latest_return(self) -> float | None:
        value = None
        for rec in iter_metrics(self.metrics_path):
            if rec.get("episode_return") is not None:
                value = rec["episode_return"]
        return value

    def summary(self) -> dict[str, Any]:
        """The row the ``runs`` listing and the terminal app show."""
        latest = best = None
        for rec in iter_metrics(self.metrics_path):
            r = rec.get("episode_return")
            if r is not None:
                latest = r
                best = r if best is None else max(best, r)
        return {
            "name": self.name,
            "env_id": self.info.get("env_id"),
            "algo": self.info.get("algo"),
            "status": self.status,
            "steps_done": self.info.get("steps_done", 0),
            "total_timesteps": self.info.get("total_timesteps"),
            "latest_return": latest,
            "best_return": best,
            "created": self.info.get("created"),
            "updated": self.info.get("updated"),
            "error": self.info.get("error"),
        }


def checkpoint_step(path: Path) -> int:
    """The training step encoded in a checkpoint's name (``step_000001000.zip`` -> 1000)."""
    m = re.search(r"(\d+)$", Path(path).stem)
    return int(m.group(1)) if m else -1


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    try:
        fh = open(path)
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn last line of a crashed writer
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def read_run_json(path: Path) -> dict[str, Any]:
    try:
        with open(Path(path) / RUN_JSON) as fh:
            info = json.load(fh)
    except FileNotFoundError:
        raise LabError(f"{path} is not a run directory (no run.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabError(f"{path}/run.json is corrupt: {exc}") from None
    if not isinstance(info, dict):
        raise LabError(f"{path}/run.json is corrupt: not a JSON object")
    return info


class RunStore:
    """All runs under one directory."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()
        self.layout = RunsDirLayout(self.root)

    def path_for(self, name: str) -> Path:
        return self.layout.run_dir(check_run_name(name))

    def has_run(self, name: str) -> bool:
        """Whether run ``name`` exists here (its folder holds a ``run.json``)."""
        return RunLayout(self.path_for(name)).run_json.exists()

    def create(self, name: str, info: dict[str, Any]) -> Run:
        """Create a new run directory; refuses to overwrite an existing run."""
        path = self.path_for(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise LabError(
                f"run {name!r} already exists in {self.root}; choose another --name "
                "or continue it with --resume"
            ) from None
        run = Run(path, dict(info))
        run.checkpoints_dir.mkdir()
        run.info.setdefault("name", name)
        run.info.setdefault("created", now_iso())
        run.update()
        return run

    def get(self, name_or_path: str | Path) -> Run:
        """A run by name (inside this store) or by a path to its directory."""
        candidate = Path(name_or_path)
        if candidate.is_dir() and RunLayout(candidate).run_json.exists():
            return Run(candidate, read_run_json(candidate))
        name = str(name_or_path)
        if not RUN_NAME.match(name) or name in RESERVED_NAMES:
            raise LabError(f"no run {name!r} (not a run directory, not a run name)")
        path = self.layout.run_dir(name)
        if not path.is_dir():
            raise LabError(f"no run named {name!r} in {self.root}")
        return Run(path, read_run_json(path))

    def list(self) -> list[Run]:
        """Every run directory, newest first; unreadable ones appear with status ``failed``."""
        if not self.root.is_dir():
            return []
        runs = []
        for path in self.root.iterdir():
            if not path.is_dir() or not RunLayout(path).run_json.exists():
                continue
            try:
                runs.append(Run(path, read_run_json(path)))
            except LabError as exc:
                runs.append(Run(path, {"name": path.name, "status": "failed", "error": str(exc)}))
        runs.sort(key=lambda r: (r.info.get("created") or "", r.name), reverse=True)
        return runs
