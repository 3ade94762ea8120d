"""Sub-processes started from the app (training, record, probe, sae, steer).

Each job runs ``python -m rl_lab <command> ...`` in its own session, so it keeps running if
the app quits; its stdout and stderr go to a log file the app tails for progress.
"""

from __future__ import annotations

from datetime import datetime
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from probes.layout import LOG_SUFFIX
from tui.data import safe_fragment, tail_text

_PERCENT = re.compile(r"(\d{1,3})%")
_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")


def logs_dir(runs_dir: Path) -> Path:
    """Where the app keeps job logs: ``<runs-dir>/.tui-logs`` (never mistaken for a run)."""
    return Path(runs_dir) / ".tui-logs"


@dataclass
class Job:
    """One sub-process the app started."""

    command: str
    run_name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    started: datetime = field(default_factory=datetime.now)
    returncode: int | None = None
    reported: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def label(self) -> str:
        """``probe run-1`` — what the job is, for lists and notifications."""
        return f"{self.command} {self.run_name}"

    def poll(self) -> int | None:
        """The exit code once finished (reaps the process), else None."""
        if self.returncode is None:
            self.returncode = self.process.poll()
        return self.returncode

    @property
    def state(self) -> str:
        code = self.poll()
        if code is None:
            return "running"
        if code == 0:
            return "done"
        if code in (130, -signal.SIGINT):
            return "interrupted"
        return f"failed (exit {code})"

    def last_lines(self, n: int = 10) -> list[str]:
        """The last ``n`` non-empty lines of the job's log."""
        return tail_text(self.log_path, n)

    def progress(self) -> float | None:
        """A fraction parsed from the last log line (``42%`` or ``210/512``), if any."""
        lines = self.last_lines(1)
        if not lines:
            return None
        m = _PERCENT.search(lines[-1])
        if m:
            return min(1.0, int(m.group(1)) / 100)
        m = _FRACTION.search(lines[-1])
        if m and int(m.group(2)) > 0:
            return min(1.0, int(m.group(1)) / int(m.group(2)))
        return None

    def interrupt(self) -> bool:
        """Send SIGINT (the job checkpoints or cleans up and exits); False if already gone."""
        if self.poll() is not None:
            return False
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True


class JobManager:
    """Starts jobs and keeps them so they can be polled and reaped."""

    def __init__(self, runs_dir: Path) -> None:
        """Args: runs_dir: the runs directory passed to every command as ``--runs-dir``."""
        self.runs_dir = Path(runs_dir)
        self.jobs: list[Job] = []

    def start(self, command: str, run_name: str, args: Sequence[str]) -> Job:
        """Launch ``python -m rl_lab <command> <args...> --runs-dir <runs_dir>``.

        Args:
            command: the ``rl-lab`` sub-command (``train``, ``probe``, ...).
            run_name: the run the job works on (used for the log name and listings).
            args: the sub-command's arguments, without ``--runs-dir``.

        Raises:
            OSError: when the process cannot be started.
        """
        log_dir = logs_dir(self.runs_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        log_path = log_dir / f"{safe_fragment(run_name)}-{command}-{stamp}{LOG_SUFFIX}"
        argv = [sys.executable, "-m", "rl_lab", command, *args, "--runs-dir", str(self.runs_dir)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "wb") as log:
            log.write(("$ " + " ".join(argv[1:]) + "\n").encode())
            log.flush()
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        job = Job(command, run_name, argv, log_path, process)
        self.jobs.append(job)
        return job

    def for_run(self, run_name: str) -> list[Job]:
        """Jobs started for ``run_name``, newest first."""
        return [j for j in reversed(self.jobs) if j.run_name == run_name]

    def finished_unreported(self) -> list[Job]:
        """Jobs that ended since the last call (each is returned once)."""
        out = []
        for job in self.jobs:
            if not job.reported and job.poll() is not None:
                job.reported = True
                out.append(job)
        return out


def stop_run(pid: int | None) -> str | None:
    """SIGINT a training process by the pid in its ``run.json``.

    Returns:
        None on success, else one sentence saying why nothing was sent.
    """
    if not pid:
        return "the run has no pid in run.json"
    try:
        os.kill(int(pid), signal.SIGINT)
    except ProcessLookupError:
        return f"process {pid} is not running"
    except PermissionError:
        return f"not allowed to signal process {pid}"
    return None
