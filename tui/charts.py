"""Text charts drawn with Braille dots and block characters (no plotting dependency)."""

from __future__ import annotations

import math
from typing import Sequence

# Braille dot bit for (row 0..3, column 0..1) inside one character cell.
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BLOCKS = " ▁▂▃▄▅▆▇█"


def fmt_num(value: float | None, width: int = 0) -> str:
    """A compact number: ``1.23k``, ``-0.051``, ``—`` for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = "—"
    else:
        a = abs(value)
        if a >= 1e6:
            text = f"{value / 1e6:.2f}M"
        elif a >= 1e4:
            text = f"{value / 1e3:.1f}k"
        elif a >= 100 or float(value).is_integer():
            text = f"{value:.0f}"
        elif a >= 1:
            text = f"{value:.2f}"
        else:
            text = f"{value:.3f}"
    return text.rjust(width) if width else text


def _downsample(xs: Sequence[float], ys: Sequence[float], bins: int) -> tuple[list[float], list[float]]:
    """Mean of ``ys`` in ``bins`` equal-width bins of ``xs`` (empty bins dropped)."""
    if len(xs) <= bins:
        return list(xs), list(ys)
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    sums = [0.0] * bins
    counts = [0] * bins
    xsum = [0.0] * bins
    for x, y in zip(xs, ys):
        b = min(bins - 1, int((x - lo) / span * bins))
        sums[b] += y
        xsum[b] += x
        counts[b] += 1
    return ([xsum[b] / counts[b] for b in range(bins) if counts[b]], [sums[b] / counts[b] for b in range(bins) if counts[b]])


def braille_plot(
    xs: Sequence[float],
    ys: Sequence[float],
    width: int,
    height: int,
    y_range: tuple[float, float] | None = None,
) -> list[str]:
    """A line chart of ``(xs, ys)`` as ``height`` strings of ``width`` Braille characters.

    Args:
        xs: x values, increasing.
        ys: y values, one per x.
        width: chart width in character cells (2 dots each).
        height: chart height in character cells (4 dots each).
        y_range: fixed ``(low, high)``; default is the data's range.
    """
    width, height = max(1, width), max(1, height)
    grid = [[0] * width for _ in range(height)]
    if xs:
        xs, ys = _downsample(xs, ys, width * 2)
        W, H = width * 2, height * 4
        x0, x1 = min(xs), max(xs)
        y0, y1 = y_range if y_range else (min(ys), max(ys))
        xspan = (x1 - x0) or 1.0
        yspan = (y1 - y0) or 1.0

        def to_px(x: float, y: float) -> tuple[int, int]:
            px = round((x - x0) / xspan * (W - 1)) if x1 > x0 else W // 2
            py = round((y - y0) / yspan * (H - 1)) if y1 > y0 else H // 2
            return px, (H - 1) - max(0, min(H - 1, py))

        def dot(px: int, py: int) -> None:
            if 0 <= px < W and 0 <= py < H:
                grid[py // 4][px // 2] |= _DOTS[py % 4][px % 2]

        prev = None
        for x, y in zip(xs, ys):
            cur = to_px(x, y)
            if prev is None:
                dot(*cur)
            else:
                (ax, ay), (bx, by) = prev, cur
                steps = max(abs(bx - ax), abs(by - ay), 1)
                for s in range(steps + 1):
                    dot(round(ax + (bx - ax) * s / steps), round(ay + (by - ay) * s / steps))
            prev = cur
    return ["".join(chr(0x2800 + c) for c in row) for row in grid]


def chart_lines(
    xs: Sequence[float],
    ys: Sequence[float],
    width: int,
    height: int,
) -> list[str]:
    """A Braille line chart with a y axis (min/max) on the left and an x range below.

    Args:
        xs: x values (e.g. training steps), increasing.
        ys: y values.
        width: total width in cells, axis labels included.
        height: total height in cells, the x-axis line included.
    """
    if not xs:
        return ["(no data yet)".center(max(0, width))]
    label_w = 8
    plot_w = max(4, width - label_w - 1)
    plot_h = max(1, height - 1)
    y0, y1 = min(ys), max(ys)
    rows = braille_plot(xs, ys, plot_w, plot_h, (y0, y1))
    out = []
    for i, row in enumerate(rows):
        if i == 0:
            lab = fmt_num(y1, label_w)
        elif i == plot_h - 1:
            lab = fmt_num(y0, label_w)
        else:
            lab = " " * label_w
        out.append(f"{lab}┤{row}")
    left, right = fmt_num(xs[0]), fmt_num(xs[-1])
    axis = left + right.rjust(max(1, plot_w - len(left)))
    out.append(" " * label_w + "└" + axis[:plot_w])
    return out


def sparkline(values: Sequence[float], width: int | None = None) -> str:
    """One line of block characters, scaled to the values' range; ``width`` bins by mean."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return ""
    if width and len(vals) > width:
        _, vals = _downsample(list(range(len(vals))), vals, width)
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(_BLOCKS[1 + int((v - lo) / span * (len(_BLOCKS) - 2))] for v in vals)


def bar(value: float, maximum: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled in proportion ``value / maximum``."""
    if maximum <= 0 or width <= 0:
        return ""
    frac = max(0.0, min(1.0, value / maximum))
    full = int(frac * width)
    rest = frac * width - full
    partial = " ▏▎▍▌▋▊▉"[int(rest * 8)] if full < width else ""
    return ("█" * full + partial).ljust(width)


def heat_style(score: float | None, lo: float = 0.0, hi: float = 1.0) -> str:
    """A Rich style with a background from dark blue (``lo``) to bright yellow (``hi``)."""
    if score is None:
        return "dim"
    t = max(0.0, min(1.0, (score - lo) / ((hi - lo) or 1.0)))
    # viridis-like ramp between a few anchors
    anchors = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
    pos = t * (len(anchors) - 1)
    i = min(len(anchors) - 2, int(pos))
    f = pos - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(anchors[i], anchors[i + 1]))
    fg = "black" if t > 0.55 else "white"
    return f"{fg} on rgb({r},{g},{b})"


def band_cells(
    xs: Sequence[float],
    mean: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    width: int,
    height: int,
    y_range: tuple[float, float],
) -> list[list[tuple[str, bool]]]:
    """A mean curve in Braille over a shaded band: ``height`` rows of ``width`` ``(char, in_band)``.

    Args:
        xs: x values (steps), increasing.
        mean: the curve, one value per x.
        low, high: the band's edges, one value per x.
        width, height: size in character cells.
        y_range: ``(low, high)`` of the y axis.
    """
    width, height = max(1, width), max(1, height)
    line = braille_plot(xs, mean, width, height, y_range)
    band = [[False] * width for _ in range(height)]
    if xs:
        x0, x1 = min(xs), max(xs)
        y0, y1 = y_range
        xspan, yspan = (x1 - x0) or 1.0, (y1 - y0) or 1.0

        def row_of(y: float) -> int:
            frac = max(0.0, min(1.0, (y - y0) / yspan))
            return (height - 1) - min(height - 1, int(frac * height))

        for x, lo, hi in zip(xs, low, high):
            col = min(width - 1, int((x - x0) / xspan * (width - 1) + 0.5)) if x1 > x0 else width // 2
            for r in range(row_of(hi), row_of(lo) + 1):
                band[r][col] = True
        for r in range(height):  # fill the gaps between sampled columns
            cols = [c for c in range(width) if band[r][c]]
            for a, b in zip(cols, cols[1:]):
                if b - a <= max(2, width // max(1, len(xs))):
                    for c in range(a, b):
                        band[r][c] = True
    return [[(line[r][c], band[r][c]) for c in range(width)] for r in range(height)]


def scatter_lines(xs: Sequence[float], ys: Sequence[float], width: int, height: int,
                  x_label: str = "x", y_label: str = "y") -> list[str]:
    """A Braille scatter plot (points, not a line) with y min/max on the left and the x range below.

    Args:
        xs, ys: one point per pair (any order).
        width: total width in cells, axis labels included.
        height: total height in cells, the x-axis lines included.
        x_label, y_label: axis names written under the plot.
    """
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x == x and y == y]
    if not pts:
        return ["(no points)".center(max(0, width))]
    label_w = 8
    plot_w = max(4, width - label_w - 1)
    plot_h = max(1, height - 2)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    W, H = plot_w * 2, plot_h * 4
    grid = [[0] * plot_w for _ in range(plot_h)]
    for x, y in pts:
        px = round((x - x0) / ((x1 - x0) or 1.0) * (W - 1)) if x1 > x0 else W // 2
        py = (H - 1) - (round((y - y0) / ((y1 - y0) or 1.0) * (H - 1)) if y1 > y0 else H // 2)
        grid[py // 4][px // 2] |= _DOTS[py % 4][px % 2]
    rows = ["".join(chr(0x2800 + c) for c in row) for row in grid]
    out = []
    for i, row in enumerate(rows):
        label = fmt_num(y1, label_w) if i == 0 else fmt_num(y0, label_w) if i == len(rows) - 1 else " " * label_w
        out.append(f"{label}┤{row}")
    axis = f"{fmt_num(x0)} … {fmt_num(x1)}"
    out.append(" " * label_w + "└" + "─" * plot_w)
    out.append(" " * (label_w + 1) + f"{x_label} {axis}; {y_label} on the left"[:plot_w])
    return out


def column_chart(counts: Sequence[float], width: int, height: int) -> list[str]:
    """Vertical bars (one per value, binned by sum to ``width`` columns), ``height`` rows of
    eighth-block characters scaled to the largest value."""
    vals = [max(0.0, float(c)) for c in counts]
    if not vals or width <= 0 or height <= 0:
        return []
    if len(vals) > width:
        per = len(vals) / width
        vals = [sum(vals[int(i * per):int((i + 1) * per)]) for i in range(width)]
    top = max(vals) or 1.0
    levels = [v / top * height * 8 for v in vals]
    out = []
    for r in range(height - 1, -1, -1):
        row = ""
        for lv in levels:
            fill = lv - r * 8
            row += "█" if fill >= 8 else (_BLOCKS[int(fill)] if fill > 0 else " ")
        out.append(row)
    return out


def shade(value: float, maximum: float = 1.0) -> str:
    """One cell shaded by ``value / maximum``: ``·`` (at most 2%), then ``░▒▓█`` by quarters."""
    frac = 0.0 if maximum <= 0 else max(0.0, min(1.0, value / maximum))
    return "·" if frac <= 0.02 else "·░▒▓█"[min(4, max(1, math.ceil(frac * 4)))]
