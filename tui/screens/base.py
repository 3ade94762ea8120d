"""The base classes of the app's screens: the typed app, and the run a screen is about."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

from probes.layout import RunLayout

if TYPE_CHECKING:
    from tui.app import LabApp


class LabScreen(Screen[None]):
    """A screen of :class:`tui.app.LabApp`; ``lab`` is the app, typed."""

    @property
    def lab(self) -> "LabApp":
        return self.app  # type: ignore[return-value]


class RunScreen(LabScreen):
    """A screen about one run of the app's runs directory."""

    def __init__(self, run_name: str) -> None:
        """Args: run_name: the run directory's name inside the app's runs directory."""
        super().__init__()
        self.run_name = run_name

    @property
    def run_layout(self) -> RunLayout:
        """Where the run's files are (``probes.layout.RunLayout``)."""
        return self.lab.run_layout(self.run_name)
