"""A line chart drawn with Braille characters; resizes with its container."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.widget import Widget

from tui.charts import chart_lines


class LineChart(Widget):
    """A titled line chart of one series; call :meth:`set_data` to update it."""

    DEFAULT_CSS = """
    LineChart {
        height: 12;
        min-height: 5;
        padding: 0 1;
    }
    """

    def __init__(self, title: str = "", *, id: str | None = None, classes: str | None = None) -> None:
        """Args: title: the line shown above the plot. id, classes: as for any widget."""
        super().__init__(id=id, classes=classes)
        self.title = title
        self.xs: list[float] = []
        self.ys: list[float] = []

    def set_data(self, xs: Sequence[float], ys: Sequence[float], title: str | None = None) -> None:
        """Replace the series.

        Args:
            xs: x values (steps), increasing.
            ys: y values, one per x.
            title: a new title, or None to keep the current one.
        """
        self.xs, self.ys = list(xs), list(ys)
        if title is not None:
            self.title = title
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        text = Text(no_wrap=True, overflow="crop")
        text.append(self.title[:width], style="bold")
        if height < 2:
            return text
        for line in chart_lines(self.xs, self.ys, width, height - 1):
            text.append("\n")
            text.append(line, style="cyan" if self.xs else "dim")
        return text
