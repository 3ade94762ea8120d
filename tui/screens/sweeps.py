"""Sweeps: a sweep's conditions with their learning curves aggregated over seeds.

Trials are the runs whose ``run.json`` carries ``sweep`` and ``sweep_condition`` (written by
``rl-lab sweep``, see ``docs/sweep.md``); the sweep's record ``RUNS_DIR/sweeps/<name>.json``,
when present, adds the sweep's status and the trials that have not started yet. The chart is
the mean episode return over seeds with a band of ±1 standard deviation, on a common step grid
(``tui.data.aggregate_curves``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Header, Select, Static

from probes.layout import RunLayout, RunsDirLayout
from tui.charts import fmt_num
from tui.data import Band, RunIndex, RunRow, aggregate_curves, group_sweeps, read_json_quiet, read_return_curve, sweep_names
from tui.messages import SweepsLoaded
from tui.screens.base import LabScreen
from tui.widgets.chart import BandChart
from tui.widgets.footer import LabFooter
from tui.widgets.table import FastTable

FINAL_EPISODES = 10
"""Episodes averaged for a trial's final return."""


@dataclass(frozen=True)
class ConditionSummary:
    """One condition of a sweep: its trials, their final returns and the aggregated curve."""

    name: str
    runs: list[RunRow]
    pending: int  # trials in the sweep record without a run directory yet
    finals: list[float]  # final return of every trial that logged episodes
    band: Band

    @property
    def final_mean(self) -> float | None:
        return sum(self.finals) / len(self.finals) if self.finals else None

    @property
    def final_sd(self) -> float | None:
        n = len(self.finals)
        if n < 2:
            return None
        m = sum(self.finals) / n
        return (sum((v - m) ** 2 for v in self.finals) / (n - 1)) ** 0.5


@dataclass(frozen=True)
class SweepView:
    """Everything the screen shows for one sweep."""

    name: str
    conditions: list[ConditionSummary]
    record: dict[str, Any] | None
    record_error: str | None


def summarise_sweep(runs_dir: Path, name: str, rows: list[RunRow]) -> SweepView:
    """Read the curves of every trial of sweep ``name`` and aggregate them per condition."""
    groups = group_sweeps(rows).get(name, {})
    record_path = RunsDirLayout(runs_dir).sweep_record(name)
    record, error = read_json_quiet(record_path) if record_path.exists() else (None, None)
    if record is not None and not isinstance(record, dict):
        record, error = None, f"{record_path.name} is not a JSON object"
    pending: dict[str, int] = {}
    have = {r.name for runs in groups.values() for r in runs}
    for trial in (record or {}).get("trials") or []:
        if isinstance(trial, dict) and trial.get("name") not in have:
            cond = str(trial.get("condition") or "?")
            pending[cond] = pending.get(cond, 0) + 1
    conditions = []
    for cond in sorted(set(groups) | set(pending)):
        runs = groups.get(cond, [])
        curves = [read_return_curve(RunLayout(r.path).metrics_path) for r in runs]
        finals = [sum(ys[-FINAL_EPISODES:]) / len(ys[-FINAL_EPISODES:]) for _, ys in curves if ys]
        conditions.append(ConditionSummary(cond, runs, pending.get(cond, 0), finals, aggregate_curves(curves)))
    return SweepView(name, conditions, record, error)


class SweepsScreen(LabScreen):
    """Every sweep in the runs directory; one at a time, condition by condition."""

    AUTO_FOCUS = "#sweep-conditions"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="sweeps.back"),
        Binding("o", "open_trial", "Open a trial", id="sweeps.open"),
        Binding("ctrl+r", "reload", "Reload", id="sweeps.reload"),
    ]

    def __init__(self, sweep: str | None = None) -> None:
        """Args: sweep: the sweep to show first (default: the first by name)."""
        super().__init__()
        self.sweep = sweep
        self.view: SweepView | None = None
        self._names: list[str] = []
        self._lock = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([], prompt="sweep", id="sweep-select", compact=True)
        yield Static("Reading sweeps…", id="sweep-info")
        with Horizontal(id="sweep-body"):
            table = FastTable(id="sweep-conditions", cursor_type="row")
            table.add_column("condition", key="condition")
            table.add_column("seeds", key="seeds")
            table.add_column("final return", key="final")
            yield table
            yield BandChart("", id="sweep-chart")
        yield LabFooter()

    def on_mount(self) -> None:
        self.sub_title = "sweeps"
        self.reload()
        self.set_interval(max(self.lab.poll_interval, 2.0), self.reload)

    def action_reload(self) -> None:
        self.reload()

    @work(thread=True, group="sweeps")
    def reload(self) -> None:
        """Re-read the trials and the record of the sweep on screen (skipped while one is running)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            rows = list(self.lab.rows) or RunIndex(self.lab.runs_dir).scan()
            names = sweep_names(self.lab.runs_dir, rows)
            name = self.sweep if self.sweep in names else (names[0] if names else None)
            view = summarise_sweep(self.lab.runs_dir, name, rows) if name else None
            self.post_message(SweepsLoaded(names, view))
        except Exception as exc:  # noqa: BLE001 - shown, never raised into the UI
            self.post_message(SweepsLoaded([], None, f"cannot read sweeps: {exc}"))
        finally:
            self._lock.release()

    def on_sweeps_loaded(self, message: SweepsLoaded) -> None:
        message.stop()
        info = self.query_one("#sweep-info", Static)
        if message.error:
            info.update(Text(message.error, style="bold red"))
            return
        names, view = message.names, message.view
        select = self.query_one("#sweep-select", Select)
        if names != self._names:
            self._names = names
            with select.prevent(Select.Changed):
                select.set_options([(n, n) for n in names])
        if view is None:
            info.update(Text(f"No sweeps in {self.lab.runs_dir} yet: run `rl-lab sweep SWEEP_FILE` "
                             "(see docs/sweep.md).", style="italic"))
            return
        if select.value != view.name:
            with select.prevent(Select.Changed):
                select.value = view.name
        self.sweep = view.name
        self.view = view
        self._show_info(view)
        self._show_table(view)
        self._show_chart()

    def _show_info(self, view: SweepView) -> None:
        n_runs = sum(len(c.runs) for c in view.conditions)
        text = Text(view.name, style="bold")
        rec = view.record or {}
        if rec:
            summary = rec.get("summary") or {}
            text.append(f"  {rec.get('status', '?')}", style="yellow" if rec.get("status") == "running" else "")
            if summary:
                text.append(f"  trials {summary.get('done', '?')} done / {summary.get('failed', 0)} failed "
                            f"of {summary.get('trials', '?')}")
            text.append(f"  backend {rec.get('backend', '?')}", style="dim")
        text.append(f"\n{len(view.conditions)} conditions, {n_runs} trial runs · curve: mean episode return "
                    "over seeds, band ±1 sd")
        if view.record_error:
            text.append(f"  ({view.record_error})", style="red")
        self.query_one("#sweep-info", Static).update(text)

    def _show_table(self, view: SweepView) -> None:
        table = self.query_one("#sweep-conditions", FastTable)
        keys = [c.name for c in view.conditions]
        current = self.current_condition()
        table.clear()
        rows = []
        for c in view.conditions:
            done = sum(1 for r in c.runs if r.status == "done")
            sd = c.final_sd
            final = fmt_num(c.final_mean) + (f" ± {fmt_num(sd)}" if sd is not None else "")
            rows.append((c.name, (c.name, f"{done}/{len(c.runs) + c.pending}", final)))
        table.add_keyed_rows(rows)
        if current is not None and current.name in keys:
            table.move_cursor(row=keys.index(current.name), animate=False)

    def current_condition(self) -> ConditionSummary | None:
        """The condition under the cursor."""
        if self.view is None or not self.view.conditions:
            return None
        row = self.query_one("#sweep-conditions", FastTable).cursor_row
        return self.view.conditions[min(max(row, 0), len(self.view.conditions) - 1)]

    def _show_chart(self) -> None:
        cond = self.current_condition()
        chart = self.query_one("#sweep-chart", BandChart)
        if cond is None:
            chart.set_data([], [], [], [], "")
            return
        b = cond.band
        seeds = f"{b.n_curves} seed{'s' if b.n_curves != 1 else ''}"
        final = f", final {fmt_num(b.mean[-1])}" if b.mean else ""
        chart.set_data(b.steps, b.mean, b.low, b.high, f"{cond.name}: return vs step, mean ± sd over {seeds}{final}")

    @on(FastTable.RowHighlighted, "#sweep-conditions")
    def _highlighted(self) -> None:
        self._show_chart()

    @on(Select.Changed, "#sweep-select")
    def _sweep_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.sweep:
            self.sweep = event.value
            self.reload()

    def action_open_trial(self) -> None:
        cond = self.current_condition()
        if cond is None or not cond.runs:
            self.notify("no trial run for this condition yet", severity="warning")
            return
        self.lab.open_run(cond.runs[0].name)
