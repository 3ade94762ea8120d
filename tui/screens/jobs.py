"""Jobs: every sub-process started from this app, its state, progress and log tail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from tui.screens.base import LabScreen

if TYPE_CHECKING:
    from tui.jobs import Job


class JobsScreen(LabScreen):
    """A table of jobs (refreshed every poll interval) and the log of the highlighted one."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="jobs.back"),
        Binding("x", "interrupt", "Interrupt", id="jobs.interrupt"),
        Binding("o", "open_run", "Open run", id="jobs.open"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        table: DataTable[object] = DataTable(id="jobs-table", cursor_type="row")
        table.add_columns("started", "command", "run", "pid", "state")
        yield table
        with VerticalScroll(id="jobs-log-box"):
            yield Static("", id="jobs-log", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "jobs"
        self.refresh_jobs()
        self.set_interval(self.lab.poll_interval, self.refresh_jobs)

    def _selected(self) -> "Job | None":
        table = self.query_one("#jobs-table", DataTable)
        jobs = list(reversed(self.lab.jobs.jobs))
        return jobs[table.cursor_row] if 0 <= table.cursor_row < len(jobs) else None

    def refresh_jobs(self) -> None:
        """Rebuild the table (jobs are few) and the highlighted job's log tail."""
        table = self.query_one("#jobs-table", DataTable)
        jobs = list(reversed(self.lab.jobs.jobs))
        row = table.cursor_row
        table.clear()
        for job in jobs:
            frac = job.progress()
            state = job.state + (f" {frac:.0%}" if frac is not None and job.state == "running" else "")
            style = "yellow" if job.state == "running" else ("green" if job.state == "done" else "red")
            table.add_row(f"{job.started:%H:%M:%S}", job.command, job.run_name, str(job.pid), Text(state, style=style))
        if jobs:
            table.move_cursor(row=min(max(row, 0), len(jobs) - 1), animate=False)
        self._show_log()

    @on(DataTable.RowHighlighted, "#jobs-table")
    def _show_log(self) -> None:
        job = self._selected()
        log = self.query_one("#jobs-log", Static)
        if job is None:
            log.update("No jobs started from this app yet (launch training with l, or R/P/A/T on a run).")
            return
        log.update(f"{job.log_path}\n" + "\n".join(job.last_lines(30)))

    def action_interrupt(self) -> None:
        job = self._selected()
        if job is None:
            return
        if job.interrupt():
            self.notify(f"sent SIGINT to {job.label}")
        else:
            self.notify(f"{job.label} is not running", severity="warning")

    def action_open_run(self) -> None:
        job = self._selected()
        if job is not None and self.lab.run_layout(job.run_name).run_json.exists():
            self.lab.open_run(job.run_name)
