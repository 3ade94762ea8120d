"""The runs screen: every run with status, env, algo, steps and returns; live, filterable, sortable."""

from __future__ import annotations

import threading
import time
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Header, Input, Static

from tui.charts import fmt_num
from tui.data import RUN_COLUMNS, SORT_KEYS, RunIndex, RunRow, filter_rows, sort_rows
from tui.messages import RunsScanned
from tui.screens.base import LabScreen
from tui.widgets.footer import LabFooter
from tui.widgets.table import FastTable

STATUS_STYLE = {"running": "bold yellow", "done": "green", "failed": "bold red", "interrupted": "magenta"}


def status_text(status: str) -> Text:
    """The status word coloured by status (shared, immutable instances for the four statuses)."""
    return _STATUS_TEXT.get(status) or Text(status, style="dim")


#: Width the return columns are right-aligned to (plain strings, no per-cell Rich objects).
NUM_WIDTH = 8
_STATUS_TEXT = {s: Text(s, style=style) for s, style in STATUS_STYLE.items()}


def row_cells(row: RunRow) -> tuple[object, ...]:
    """The table cells of one run, in :data:`RUN_COLUMNS` order (plain strings but the status)."""
    steps = fmt_num(row.steps_done)
    if row.total_timesteps:
        steps += f"/{fmt_num(row.total_timesteps)}"
        if row.status == "running" and row.progress is not None:
            steps += f" {row.progress:4.0%}"
    return (
        row.name,
        status_text(row.status),
        row.env_id,
        row.algo,
        steps,
        ("…" if row.returns_partial and row.latest_return is None else fmt_num(row.latest_return)).rjust(NUM_WIDTH),
        ("…" if row.returns_partial else fmt_num(row.best_return)).rjust(NUM_WIDTH),
        row.created[:19].replace("T", " "),
    )


class RunsScreen(LabScreen):
    """Every run in the runs directory; refreshed from disk every ``poll_interval`` seconds.

    Start-up: the first scan is a quick one (metrics of the newest runs only, large files from
    their tail) and the table is filled in one pass of plain-string rows; the first poll
    completes the returns. Later scans re-render only the cells that changed.
    """

    AUTO_FOCUS = "#runs"

    BINDINGS = [
        Binding("enter", "open", "Open", id="runs.open", show=False),
        Binding("l", "launch", "Launch", id="runs.launch"),
        Binding("p", "probes", "Probes", id="runs.probes"),
        Binding("f", "features", "Features", id="runs.features"),
        Binding("e", "replay", "Replay", id="runs.replay"),
        Binding("w", "sweeps", "Sweeps", id="runs.sweeps"),
        Binding("x", "stop", "Stop run", id="runs.stop"),
        Binding("j", "jobs", "Jobs", id="runs.jobs", show=False),
        Binding("slash", "filter", "Filter", id="runs.filter"),
        Binding("s", "sort", "Sort", id="runs.sort"),
        Binding("r", "reverse", "Reverse", id="runs.reverse", show=False),
        Binding("escape", "clear_filter", "Clear filter", id="runs.clear", show=False),
        Binding("q", "app.quit", "Quit", id="runs.quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort_key = "created"
        self.sort_reverse = True
        self.query_text = ""
        self._rows: list[RunRow] = []
        self._shown: list[str] = []
        self._cells: dict[str, tuple[object, ...]] = {}
        self._index: RunIndex | None = None
        self._scan_lock = threading.Lock()
        self.scans = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="runs-bar"):
            yield Input(placeholder="filter: text, status:running, env:forage, algo:ppo  (/ to focus)", id="filter")
            yield Static("", id="sort-info")
        table = FastTable(id="runs", cursor_type="row", zebra_stripes=True)
        for key, header in RUN_COLUMNS:
            table.add_column(header, key=key)
        yield table
        yield Static("Reading runs…", id="run-info")
        yield LabFooter()

    def on_mount(self) -> None:
        self.sub_title = str(self.lab.runs_dir)
        self._index = RunIndex(self.lab.runs_dir)
        self._update_sort_info()
        self.scan(quick=True)
        self.set_interval(self.lab.poll_interval, self.scan)

    # ------------------------------------------------------------------ data

    @work(thread=True, group="scan")
    def scan(self, quick: bool = False) -> None:
        """Re-read the runs directory (skipped while a previous scan is still running).

        Args:
            quick: the first pass: metrics of the newest runs only, large files from their tail
                (``RunIndex.scan``).
        """
        if not self._scan_lock.acquire(blocking=False):
            return
        try:
            assert self._index is not None
            t0 = time.perf_counter()
            rows = self._index.scan(quick=quick)
            self.post_message(RunsScanned(rows, time.perf_counter() - t0))
        finally:
            self._scan_lock.release()

    def on_runs_scanned(self, message: RunsScanned) -> None:
        first = self.scans == 0
        changed = message.rows != self._rows or first
        self._rows = message.rows
        self.lab.rows = message.rows
        self.scans += 1
        if changed:
            self._refresh_table()
        if first:  # the next poll reads what this quick scan left (rows off screen, tails of big files)
            self.lab.runs_ready_at = time.perf_counter()

    def _refresh_table(self) -> None:
        table = self.query_one("#runs", DataTable)
        visible = sort_rows(filter_rows(self._rows, self.query_text), self.sort_key, self.sort_reverse)
        keys = [r.name for r in visible]
        if keys == self._shown:
            for row in visible:
                cells = row_cells(row)
                old = self._cells.get(row.name)
                if old == cells:
                    continue
                for (col, _), new, prev in zip(RUN_COLUMNS, cells, old or (None,) * len(cells)):
                    if new != prev:
                        table.update_cell(row.name, col, new, update_width=True)
                self._cells[row.name] = cells
        else:
            current = self.selected_name()
            table.clear()
            self._cells = {row.name: row_cells(row) for row in visible}
            table.add_keyed_rows(self._cells.items())
            self._shown = keys
            if current in keys:
                table.move_cursor(row=keys.index(current), animate=False)
        self._update_info()

    def _update_info(self) -> None:
        info = self.query_one("#run-info", Static)
        total, shown = len(self._rows), len(self._shown)
        counts: dict[str, int] = {}
        for r in self._rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        summary = Text(f"{shown}/{total} runs  ")
        for status in ("running", "done", "failed", "interrupted"):
            if counts.get(status):
                summary.append(f"{status} {counts[status]}  ", style=STATUS_STYLE[status])
        if total == 0:
            summary = Text(f"No runs in {self.lab.runs_dir}. Press l to launch training.", style="italic")
        row = self.selected_row()
        if row is not None:
            summary.append("\n")
            summary.append(f"{row.name}: ", style="bold")
            if row.error:
                summary.append(row.error, style="red")
            elif row.status == "running" and row.progress is not None:
                summary.append(f"training, {row.progress:.0%} of {fmt_num(row.total_timesteps)} steps (pid {row.pid})")
            else:
                summary.append(f"{row.status}, {fmt_num(row.steps_done)} steps, updated {row.updated[:19].replace('T', ' ')}")
        info.update(summary)

    def _update_sort_info(self) -> None:
        arrow = "↓" if self.sort_reverse else "↑"
        self.query_one("#sort-info", Static).update(f"sort: {self.sort_key} {arrow}")

    # ------------------------------------------------------------------ selection

    def selected_name(self) -> str | None:
        """Name of the run under the cursor, or None for an empty table."""
        table = self.query_one("#runs", DataTable)
        if not self._shown or table.cursor_row < 0 or table.cursor_row >= len(self._shown):
            return None
        return self._shown[table.cursor_row]

    def selected_row(self) -> RunRow | None:
        name = self.selected_name()
        return next((r for r in self._rows if r.name == name), None) if name else None

    def _need_selection(self) -> str | None:
        name = self.selected_name()
        if name is None:
            self.notify("no run selected", severity="warning")
        return name

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self) -> None:
        self._update_info()

    @on(DataTable.RowSelected, "#runs")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.lab.open_run(str(event.row_key.value))

    @on(DataTable.HeaderSelected, "#runs")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key in SORT_KEYS:
            if self.sort_key == key:
                self.sort_reverse = not self.sort_reverse
            else:
                self.sort_key, self.sort_reverse = key, key in ("created", "latest_return", "best_return", "steps")
            self._update_sort_info()
            self._refresh_table()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self._refresh_table()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.query_one("#runs", DataTable).focus()

    # ------------------------------------------------------------------ actions

    def action_open(self) -> None:
        if name := self._need_selection():
            self.lab.open_run(name)

    def action_launch(self) -> None:
        self.lab.open_launch()

    def action_probes(self) -> None:
        if name := self._need_selection():
            self.lab.open_probes(name)

    def action_features(self) -> None:
        if name := self._need_selection():
            self.lab.open_features(name)

    def action_replay(self) -> None:
        if name := self._need_selection():
            self.lab.open_replay(name)

    def action_stop(self) -> None:
        if name := self._need_selection():
            self.lab.stop_run(name)

    def action_jobs(self) -> None:
        self.lab.open_jobs()

    def action_sweeps(self) -> None:
        row = self.selected_row()
        self.lab.open_sweeps(row.sweep if row is not None else None)

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        self.query_one("#runs", DataTable).focus()

    def action_sort(self) -> None:
        i = SORT_KEYS.index(self.sort_key) if self.sort_key in SORT_KEYS else -1
        self.sort_key = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
        self.sort_reverse = self.sort_key in ("created", "latest_return", "best_return", "steps")
        self._update_sort_info()
        self._refresh_table()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._update_sort_info()
        self._refresh_table()
