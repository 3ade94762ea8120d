"""A line chart drawn with Braille characters; resizes with its container."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.widget import Widget

from tui.charts import band_cells, chart_lines, fmt_num


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


class BandChart(Widget):
    """A titled mean curve (Braille) over a shaded band, e.g. mean ± sd over seeds."""

    DEFAULT_CSS = """
    BandChart {
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
        self.mean: list[float] = []
        self.low: list[float] = []
        self.high: list[float] = []

    def set_data(self, xs: Sequence[float], mean: Sequence[float], low: Sequence[float], high: Sequence[float],
                 title: str | None = None) -> None:
        """Replace the curve and its band (one value of each per x); ``title`` None keeps the title."""
        self.xs, self.mean, self.low, self.high = list(xs), list(mean), list(low), list(high)
        if title is not None:
            self.title = title
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        text = Text(no_wrap=True, overflow="crop")
        text.append(self.title[:width], style="bold")
        if height < 2:
            return text
        if not self.xs:
            text.append("\n" + "(no data yet)".center(width), style="dim")
            return text
        label_w = 8
        plot_w, plot_h = max(4, width - label_w - 1), max(1, height - 2)
        y0, y1 = min(self.low), max(self.high)
        cells = band_cells(self.xs, self.mean, self.low, self.high, plot_w, plot_h, (y0, y1))
        for i, row in enumerate(cells):
            text.append("\n")
            lab = fmt_num(y1, label_w) if i == 0 else fmt_num(y0, label_w) if i == plot_h - 1 else " " * label_w
            text.append(f"{lab}┤", style="dim")
            for ch, in_band in row:
                text.append(ch, style="bold cyan on grey23" if in_band else "bold cyan")
        left, right = fmt_num(self.xs[0]), fmt_num(self.xs[-1])
        axis = left + right.rjust(max(1, plot_w - len(left)))
        text.append("\n" + " " * label_w + "└" + axis[:plot_w], style="dim")
        return text
