"""The run store: one directory per run, described in ``docs/design.md``.

``run.json`` is replaced atomically; ``metrics.jsonl`` is appended one line per event, so a
crash loses at most the line being written. A run whose status says ``running`` while its
process is gone is reported as ``interrupted``; a process is the run's own only if its start
time (``pid_start``, ``/proc/<pid>/stat`` field 22) matches, and only on the host that wrote it
(``host``): a pid from another machine of a cluster is neither alive nor dead here
(:func:`liveness` says ``unknown``; the run keeps the status its ``run.json`` says). One process at a time trains a run:
it holds ``RUN/.lock`` (:class:`RunLock`, ``fcntl.flock``, released by the kernel when the
process dies). A ``run.json`` with a malformed field is listed as ``damaged`` with the reason
(:func:`info_problems`); unreadable metrics values are skipped (:func:`iter_metrics`).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import math
import os
import socket
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from probes.layout import (
    CHECKPOINT_SUFFIXES,
    RESERVED_NAMES,
    RUN_JSON,
    RunLayout,
    RunsDirLayout,
    UnsafeName,
    is_temporary,
    safe_component,
)
from rl_lab.errors import LabError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STATUSES = ("running", "done", "failed", "interrupted")
"""The statuses ``run.json`` may hold; the listing adds ``damaged`` for a run.json it cannot trust."""
PID_MAX = 4_194_304
"""The largest process id Linux hands out (``/proc/sys/kernel/pid_max`` cannot exceed it)."""
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""``OSError`` numbers that mean the disk (or the quota, or the file-size limit) is full."""


def default_runs_dir() -> Path:
    """``$RL_LAB_RUNS`` if set, else ``./runs``."""
    return Path(os.environ.get("RL_LAB_RUNS") or "runs")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run name (cannot escape the runs directory).

    ``probes.layout.safe_component`` (the one check for names that become paths) first, then
    the run-name alphabet.
    """
    try:
        safe_component(name, "run name")
    except UnsafeName as exc:
        raise LabError(str(exc)) from None
    if not RUN_NAME.match(name) or name in (".", "..") or ".." in name:
        raise LabError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise LabError(f"invalid run name {name!r}: the runs directory keeps {name}/ for itself")
    return name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename.

    Non-finite floats are written as ``null`` (strict JSON). A reader sees the old file or the
    new one, never half of one; a failure (disk full) leaves the old file and no temporary.
    """
    text = json.dumps(finite_or_none(data), indent=2, default=json_default, allow_nan=False) + "\n"
    write_bytes_atomic(Path(path), text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (also numpy scalars) replaced by ``None``."""
    if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0):
        try:
            value = float(obj)
        except (TypeError, ValueError):
            return obj
        if not math.isfinite(value):
            return None
        return obj
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota, or file-size limit) is full."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    text = str(exc).lower()
    return "no space left" in text or "disk quota" in text or "file too large" in text


def json_default(obj: Any) -> Any:
    """``json.dump``'s ``default`` for numpy scalars and arrays and paths."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def valid_pid(pid: Any) -> int | None:
    """``pid`` if it can be a run's process id (an int, not bool, in 2..PID_MAX), else None.

    ``0``, ``-1`` (every process of the user) and ``1`` (init) are never a run's process.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 < pid <= PID_MAX:
        return None
    return pid


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (``/proc/<pid>/stat`` field 22, clock ticks since boot), or None."""
    pid_ = valid_pid(pid)
    fields = _proc_stat(pid_) if pid_ is not None else None
    try:
        return int(fields[19]) if fields else None  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def pid_alive(pid: Any, start: Any = None) -> bool:
    """Whether ``pid`` is a live process, and, when ``start`` is given, the same process.

    ``start`` is the process start time recorded beside the pid (``pid_start`` in run.json):
    a pid reused by another process has another start time and reads as not running. An
    invalid pid (``-1``, ``1``, a string, out of range) is never alive; a zombie is gone.
    """
    pid_ = valid_pid(pid)
    if pid_ is None:
        return False
    if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
        return False
    try:
        os.kill(pid_, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    fields = _proc_stat(pid_)
    if fields is None:  # no /proc: trust kill(0) when nothing proves otherwise
        return start is None
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    if start is not None:
        return process_start_time(pid_) == start
    return True


def this_host() -> str:
    """This machine's name, as ``run.json``'s ``host`` records it."""
    return socket.gethostname()


def liveness(info: dict[str, Any]) -> str:
    """Whether ``run.json``'s process is ``alive``, ``dead`` or ``unknown`` (written on another host).

    A pid means something only on the host that wrote it (``host``; a run.json without one is
    this machine's, as before hosts were recorded): a trial a Ray cluster ran elsewhere is
    judged there, or by its run's lock (:class:`RunLock`), never by a local pid of that number.
    """
    if not isinstance(info, dict):
        return "dead"
    host = info.get("host")
    if isinstance(host, str) and host and host != this_host():
        return "unknown"
    return "alive" if pid_alive(info.get("pid"), info.get("pid_start")) else "dead"


def owned_pid(info: dict[str, Any]) -> int | None:
    """The pid of ``run.json``'s process if it provably is the run's own, else None.

    The process must be alive on this host and started at the recorded ``pid_start``: the only
    pid the app may signal. A run without ``pid_start`` (or with a bad one), or written on
    another host, has no provable process.
    """
    if not isinstance(info, dict) or liveness(info) == "unknown":
        return None
    pid, start = valid_pid(info.get("pid")), info.get("pid_start")
    if pid is None or start is None or not pid_alive(pid, start):
        return None
    return pid


def process_identity() -> dict[str, Any]:
    """``{"pid", "pid_start", "host"}`` of this process, for run.json."""
    return {"pid": os.getpid(), "pid_start": process_start_time(os.getpid()), "host": this_host()}


def info_problems(info: Any) -> list[str]:
    """What is wrong with the fields of a run.json (empty when every field has its type)."""
    if not isinstance(info, dict):
        return ["run.json is not a JSON object"]
    if isinstance(info.get("unreadable"), str):  # set by RunStore.list for a run.json it could not parse
        return [info["unreadable"]]
    problems = []

    def show(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    for key in ("name", "env_id", "algo", "created", "updated", "error", "sweep", "host"):
        value = info.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{key} {show(value)} is not text")
    status = info.get("status")
    if status is not None and status not in STATUSES:
        problems.append(f"status {show(status)} is not one of {', '.join(STATUSES)}")
    for key in ("seed", "total_timesteps", "steps_done", "pid_start"):
        value = info.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(f"{key} {show(value)} is not a whole number >= 0")
    pid = info.get("pid")
    if pid is not None and valid_pid(pid) is None:
        problems.append(f"pid {show(pid)} is not a process id")
    for key in ("config", "versions"):
        value = info.get(key)
        if value is not None and not isinstance(value, dict):
            problems.append(f"{key} {show(value)} is not an object")
    return problems


_TRUSTED_CHECKPOINTS: set[Path] = set()


def trust_checkpoint(path: Path | str) -> None:
    """Allow loading the checkpoint file ``path`` although it lies outside its run (``--trust``)."""
    _TRUSTED_CHECKPOINTS.add(Path(path).resolve())


def check_checkpoint(run: RunLayout, path: Path | str) -> Path:
    """Return ``path`` if the lab may load it for ``run``, else raise ``LabError``.

    SB3 checkpoints are zip files with cloudpickled fields: loading one can run any code it
    carries. The lab loads only what it wrote itself, the files of ``RUN/checkpoints/``
    (symlinks resolved), and files the user vouched for with ``--trust``.
    """
    resolved = Path(path).resolve()
    inside = run.checkpoints_dir.resolve()
    if resolved.is_relative_to(inside) or resolved in _TRUSTED_CHECKPOINTS:
        return Path(path)
    raise LabError(f"checkpoint {path} is outside run {run.path.name!r}'s checkpoints folder; a checkpoint can "
                   "run code when loaded, so pass --trust if you trust this file")


class RunLock:
    """An exclusive lock on one run: ``fcntl.flock`` on ``RUN/.lock``.

    Held by the process that trains or resumes the run; a second one gets a ``LabError``. The
    kernel releases the lock when the holder exits, however it exits (kill -9 included), so a
    dead process never leaves the run locked. The file holds the holder's pid, for the message.
    """

    def __init__(self, layout: RunLayout) -> None:
        self.path = layout.lock_path
        self.name = layout.path.name
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise LabError(f"run {self.name!r} is in use by another process{who}; "
                           "wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


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
        """``run.json``'s status, ``interrupted`` if its process is gone, ``damaged`` if it cannot be read.

        A ``running`` run written on another host stays ``running`` (:func:`liveness` is ``unknown``).
        """
        if self.problems():
            return "damaged"
        status = self.info.get("status", "failed")
        if status == "running" and liveness(self.info) == "dead":
            return "interrupted"
        return status

    @property
    def liveness(self) -> str:
        """``alive``, ``dead`` or ``unknown``: :func:`liveness` of ``run.json``'s process."""
        return liveness(self.info)

    def problems(self) -> list[str]:
        """What is wrong with ``run.json`` (see :func:`info_problems`); empty for a sound run."""
        return info_problems(self.info)

    def check_sound(self) -> None:
        """Raise ``LabError`` naming the damage if ``run.json`` is damaged."""
        problems = self.problems()
        if problems:
            raise LabError(f"run {self.name!r} is damaged: {'; '.join(problems)} (in {self.run_json})")

    def lock(self) -> RunLock:
        """The run's training lock (not yet acquired): ``with run.lock(): ...``."""
        return RunLock(self)

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

    def cut_metrics(self, step: int) -> int:
        """Drop the ``metrics.jsonl`` lines logged after training step ``step`` (atomically).

        Resuming from a checkpoint at ``step`` repeats the steps after it; their old lines
        are superseded. Torn and unreadable lines go too. Returns the number of lines dropped.
        """
        if not self.metrics_path.is_file():
            return 0
        kept: list[bytes] = []
        dropped = 0
        with open(self.metrics_path, "rb") as fh:
            for raw in fh:
                rec = parse_metrics_line(raw)
                s = rec.get("step") if rec is not None else None
                if rec is None or (s is not None and s > step):
                    dropped += 1
                    continue
                kept.append(raw)
        if dropped:
            write_bytes_atomic(self.metrics_path, b"".join(kept))
        return dropped

    def checkpoints(self) -> list[Path]:
        """Checkpoint files sorted by training step (oldest first); temporary files are not listed."""
        if not self.checkpoints_dir.is_dir():
            return []
        files = [p for p in self.checkpoints_dir.iterdir()
                 if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and not is_temporary(p)]
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
        """The row the ``runs`` listing and the terminal app show.

        Every value has its contract type or is None; a damaged run.json gives status
        ``damaged`` and its reasons in ``error``. Strict JSON (no NaN) as it stands.
        """
        latest = best = None
        for rec in iter_metrics(self.metrics_path):
            r = rec.get("episode_return")
            if isinstance(r, (int, float)) and not isinstance(r, bool):
                latest = r
                best = r if best is None else max(best, r)
        info = self.info if isinstance(self.info, dict) else {}
        problems = self.problems()

        def text(key: str) -> str | None:
            value = info.get(key)
            return value if isinstance(value, str) else None

        def count(key: str) -> int | None:
            value = info.get(key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            return value if ok else None

        error = text("error")
        if problems:
            error = problems[0] if "unreadable" in info else "damaged run.json: " + "; ".join(problems)
        return {
            "name": self.name,
            "env_id": text("env_id"),
            "algo": text("algo"),
            "status": self.status,
            "steps_done": count("steps_done") if "steps_done" in info else 0,
            "total_timesteps": count("total_timesteps"),
            "latest_return": latest,
            "best_return": best,
            "created": text("created"),
            "updated": text("updated"),
            "error": error,
        }


def checkpoint_step(path: Path) -> int:
    """The training step encoded in a checkpoint's name (``step_000001000.zip`` -> 1000)."""
    m = re.search(r"(\d+)$", Path(path).stem)
    return int(m.group(1)) if m else -1


def _no_constant(name: str) -> None:
    return None  # NaN, Infinity, -Infinity: the value is skipped


def clean_metrics_record(rec: dict[str, Any]) -> dict[str, Any]:
    """Keep the values a metrics line may hold: finite numbers, text, booleans; ``step`` a number.

    NaN and infinities (already ``None`` from the parser), lists and objects are dropped, as is a
    non-numeric ``step``, so readers can compare and plot what remains.
    """
    out: dict[str, Any] = {}
    for key, value in rec.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, bool) or isinstance(value, str):
            if key in ("step", "time"):
                continue
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


def parse_metrics_line(raw: bytes) -> dict[str, Any] | None:
    """One metrics line (bytes, with its newline) as a cleaned record, or None if unreadable/torn."""
    if not raw.endswith(b"\n"):
        return None
    try:
        rec = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return clean_metrics_record(rec) if isinstance(rec, dict) else None


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """The readable lines of a ``metrics.jsonl`` as cleaned records (:func:`clean_metrics_record`).

    Lines that are torn (a writer killed mid-line), not UTF-8 or not JSON objects are skipped;
    a missing file, or a folder in its place, gives nothing.
    """
    try:
        fh = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return
    with fh:
        try:
            for raw in fh:
                rec = parse_metrics_line(raw)
                if rec is not None:
                    yield rec
        except OSError:
            return


def read_run_json(path: Path) -> dict[str, Any]:
    try:
        with open(Path(path) / RUN_JSON, "rb") as fh:
            info = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise LabError(f"{path} is not a run directory (no run.json)") from None
    except IsADirectoryError:
        raise LabError(f"{path}/run.json is corrupt: it is a folder") from None
    except UnicodeDecodeError:
        raise LabError(f"{path}/run.json is corrupt: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        reason = f"not JSON ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else "not JSON"
        raise LabError(f"{path}/run.json is corrupt: {reason}") from None
    if not isinstance(info, dict):
        raise LabError(f"{path}/run.json is corrupt: not a JSON object")
    return info


class RunStore:
    """All runs under one directory."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()
        self.layout = RunsDirLayout(self.root)

    def check_root(self) -> None:
        """Raise ``LabError`` if the runs directory exists but is not a folder."""
        if self.root.exists() and not self.root.is_dir():
            raise LabError(f"the runs directory {self.root} is a file, not a folder (see --runs-dir)")

    def path_for(self, name: str) -> Path:
        return self.layout.run_dir(check_run_name(name))

    def has_run(self, name: str) -> bool:
        """Whether run ``name`` exists here (its folder holds a ``run.json``)."""
        return RunLayout(self.path_for(name)).run_json.exists()

    def create(self, name: str, info: dict[str, Any]) -> Run:
        """Create a new run directory; refuses to overwrite an existing run."""
        path = self.path_for(name)
        self.check_root()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise LabError(
                f"run {name!r} already exists in {self.root}; choose another --name "
                "or continue it with --resume"
            ) from None
        run = Run(path, dict(info))
        try:
            run.checkpoints_dir.mkdir()
            run.info.setdefault("name", name)
            run.info.setdefault("created", now_iso())
            run.update()
        except BaseException:
            # A folder without run.json would use up the name: take back what was created.
            shutil.rmtree(path, ignore_errors=True)
            raise
        return run

    def get(self, name_or_path: str | Path) -> Run:
        """A run by name (inside this store) or by a path to its directory."""
        self.check_root()
        name = str(name_or_path)
        if not name:
            raise LabError("the run name is empty")
        candidate = Path(name_or_path)
        if candidate.is_dir() and RunLayout(candidate).run_json.exists():
            return Run(candidate, read_run_json(candidate))
        if len(name) > 200:
            raise LabError(f"no run {name[:60] + '...'!r} (not a run directory, not a run name)")
        if not RUN_NAME.match(name) or name in RESERVED_NAMES:
            raise LabError(f"no run {name!r} (not a run directory, not a run name)")
        path = self.layout.run_dir(name)
        if not path.is_dir():
            raise LabError(f"no run named {name!r} in {self.root}")
        return Run(path, read_run_json(path))

    def get_distinct(self, names_or_paths: Sequence[str | Path]) -> list[Run]:
        """The runs named (names or directories, as :meth:`get`), refusing one named twice."""
        runs = [self.get(name) for name in names_or_paths]
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise LabError("a run is named twice; name each run once")
        return runs

    def list(self) -> list[Run]:
        """Every run directory, newest first; unreadable ones appear with status ``failed``
        and the reason in ``error``; a run.json with a malformed field reads as ``damaged``."""
        self.check_root()
        if not self.root.is_dir():
            return []
        runs = []
        for path in self.root.iterdir():
            if not path.is_dir() or not RunLayout(path).run_json.exists():
                continue
            try:
                runs.append(Run(path, read_run_json(path)))
            except LabError as exc:
                runs.append(Run(path, {"name": path.name, "status": "failed", "error": str(exc),
                                       "unreadable": str(exc)}))

        def created(run: Run) -> str:
            value = run.info.get("created")
            return value if isinstance(value, str) else ""

        runs.sort(key=lambda r: (created(r), r.name), reverse=True)
        return runs
