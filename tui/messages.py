"""Messages that workers post to screens (thread-safe via ``post_message``).

One small dataclass per kind of result, with named, typed fields; a worker that could not read
what it was asked for posts the same message with ``error`` set (one readable sentence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from probes.features import FeatureStore

    from tui.data import ProbeFile, RunRow
    from tui.screens.detail import DetailSnapshot
    from tui.screens.replay import Episode, FileMeta
    from tui.screens.sweeps import SweepView


@dataclass
class RunsScanned(Message):
    """A fresh scan of the runs directory."""

    rows: list[RunRow]
    """Every run, newest first."""
    seconds: float
    """How long the scan took."""


@dataclass
class DetailLoaded(Message):
    """The detail screen's run was (re)read."""

    snapshot: DetailSnapshot | None
    """Everything the screen shows; None when ``error`` says why it could not be read."""
    error: str | None = None


@dataclass
class LaunchProgress(Message):
    """The launched training run's state, read while it runs."""

    info: dict[str, Any] | None
    """``run.json``, or None before it is written."""
    status: str
    """The run's status (``starting`` before ``run.json`` exists)."""
    curve: list[tuple[float, float]]
    """``(step, episode return)`` pairs logged so far."""
    returncode: int | None
    """The process's exit code once it has finished."""
    last_line: str
    """The last line of the job's log."""


@dataclass
class ProbesLoaded(Message):
    """Every probe results file of the run, oldest checkpoint first."""

    files: list[ProbeFile]


@dataclass
class FeaturesLoaded(Message):
    """The feature statistics of one SAE were opened."""

    store: FeatureStore | None
    """The statistics; None when ``error`` says why there are none."""
    error: str | None = None


@dataclass
class SweepsLoaded(Message):
    """The sweeps of the runs directory and the one on screen, summarised."""

    names: list[str]
    """Every sweep, by name."""
    view: SweepView | None
    """The sweep on screen; None when there is none."""
    error: str | None = None


@dataclass
class ReplayFileLoaded(Message):
    """An activation file was opened for replay and its episodes found."""

    meta: FileMeta | None
    error: str | None = None


@dataclass
class EpisodeLoaded(Message):
    """One episode of the replayed file was read."""

    episode: Episode | None
    t: int
    """The step to show."""
    error: str | None = None
