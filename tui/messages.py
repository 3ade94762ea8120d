"""Messages that workers post to screens (thread-safe via ``post_message``)."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from tui.data import RunRow


class RunsScanned(Message):
    """A fresh scan of the runs directory."""

    def __init__(self, rows: list[RunRow], seconds: float) -> None:
        """Args: rows: every run, newest first. seconds: how long the scan took."""
        self.rows = rows
        self.seconds = seconds
        super().__init__()


class RunLoaded(Message):
    """The detail screen's run was (re)read: ``info`` is ``run.json``, ``error`` why not."""

    def __init__(self, info: dict[str, Any] | None, status: str, error: str | None) -> None:
        """Args: info: run.json content. status: the run's status. error: why it is unreadable."""
        self.info = info
        self.status = status
        self.error = error
        super().__init__()


class MetricsUpdated(Message):
    """New ``metrics.jsonl`` records arrived for the run on screen."""

    def __init__(self, count: int) -> None:
        """Args: count: how many records the screen now holds."""
        self.count = count
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MetricsUpdated)


class Loaded(Message):
    """A worker finished reading something: ``payload`` is what it read, ``error`` why not."""

    def __init__(self, what: str, payload: Any, error: str | None = None) -> None:
        """Args: what: a tag saying what was loaded. payload: the data. error: the reason it failed."""
        self.what = what
        self.payload = payload
        self.error = error
        super().__init__()
