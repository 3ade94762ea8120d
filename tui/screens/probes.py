"""Probes: the hook × label grid of held-out probe scores, with baselines and selectivity; drill-down."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Select, Static

from tui.charts import bar, fmt_num, heat_style
from tui.data import ProbeFile, ProbeRecord, checkpoint_order, load_probe_file
from tui.messages import ProbesLoaded
from tui.screens.base import RunScreen
from tui.widgets.chart import LineChart

LEGEND = ("score = out-of-fold R² or accuracy (colour 0→1); b = best baseline; s = selectivity "
          "(score − control task); * beats every baseline (paired episode bootstrap, Holm-corrected over "
          "every cell); † linear by construction")


def record_step(rec: ProbeRecord) -> int:
    """The training step a probe record belongs to (its ``step``, else from the checkpoint name)."""
    return rec.step if rec.step is not None else checkpoint_order(rec.checkpoint)


def cell_text(rec: ProbeRecord | None) -> Text:
    """A grid cell: the score on a heat colour, then best baseline and selectivity."""
    if rec is None:
        return Text("·", style="dim", justify="center")
    text = Text()
    text.append(f" {fmt_num(rec.score):>5} ", style=heat_style(rec.score))
    best = rec.best_baseline
    text.append(f" b{fmt_num(best[1]) if best else '—'}", style="dim")
    if rec.selectivity is not None:
        text.append(f" s{rec.selectivity:+.2f}", style="green" if rec.selectivity > 0.05 else "dim")
    if rec.significant if rec.significant is not None else rec.beats_baselines:
        text.append("*", style="bold green")
    if rec.linear_by_construction:
        text.append("†", style="yellow")
    return text


def record_details(rec: ProbeRecord) -> Text:
    """A multi-line description of one probe record: score, CI, baselines as bars, selectivity."""
    text = Text()
    text.append(f"{rec.label} in {rec.hook}", style="bold")
    text.append(f"   ({rec.metric}, checkpoint {rec.checkpoint})\n")
    ci = f"  CI [{fmt_num(rec.interval[0])}, {fmt_num(rec.interval[1])}]" if rec.interval else ""
    text.append(f"{'score':<16}{fmt_num(rec.score):>7} ")
    text.append(bar(max(rec.score or 0.0, 0.0), 1.0, 20), style="cyan")
    text.append(f"{ci}\n")
    for name, value in sorted(rec.scored_baselines.items(), key=lambda kv: -kv[1]):
        text.append(f"{name:<16}{fmt_num(value):>7} ")
        text.append(bar(max(value, 0.0), 1.0, 20), style="magenta")
        text.append("\n")
    for name, pair in sorted(rec.paired.items()):
        low, high = pair["ci"]
        if pair["difference"] is not None and low is not None and high is not None:
            text.append(f"{'− ' + name:<16}{pair['difference']:+7.3f}  CI [{low:+.3f}, {high:+.3f}]\n",
                        style="green" if low > 0 else "dim")
    if rec.p_adjusted is not None:
        text.append(f"{'p (Holm)':<16}{rec.p_adjusted:7.4f}  {'significant' if rec.significant else 'not significant'}\n")
    sel = "—" if rec.selectivity is None else f"{rec.selectivity:+.3f}"
    text.append(f"{'selectivity':<16}{sel:>7}")
    if rec.linear_by_construction:
        text.append("   linear by construction: a high score is expected, not a finding", style="yellow")
    for key in ("n_train", "n_test", "auroc", "alpha", "C", "kind"):
        value = getattr(rec, key)
        if value is not None:
            text.append(f"\n{key:<16}{fmt_num(value) if isinstance(value, (int, float)) else value:>7}")
    return text


class ProbesScreen(RunScreen):
    """The probe grid of one run; one probe-results file (one recording/checkpoint) at a time."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="probes.back"),
        Binding("enter", "drill", "Details", id="probes.drill", show=False),
        Binding("n", "next_file", "Next file", id="probes.next"),
        Binding("ctrl+r", "reload", "Reload", id="probes.reload"),
    ]

    def __init__(self, run_name: str, file_name: str | None = None) -> None:
        """Args: run_name: the run. file_name: the probe results file to show first (default: newest)."""
        super().__init__(run_name)
        self.file_name = file_name
        self.files: list[ProbeFile] = []
        self.current: ProbeFile | None = None
        self.grid: dict[tuple[str, str], ProbeRecord] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([], prompt="probe results file", id="probe-file", compact=True)
        yield Static("Reading probe results…", id="probe-notes")
        yield DataTable(id="probe-grid", cursor_type="cell")
        yield Static("", id="probe-cell")
        yield Static(LEGEND, id="probe-legend", classes="muted")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"probes — {self.run_name}"
        self.load()

    @work(thread=True, exclusive=True, group="probes")
    def load(self) -> None:
        """Read every ``RUN/probes/*.json`` (results only, not weights) in a worker."""
        layout = self.run_layout  # its own recordings' results, then those on other runs' episodes
        paths = [p for replay in [None, *layout.replays()]
                 for p in sorted(layout.probe_result_files(replay), key=lambda p: checkpoint_order(p.stem))]
        self.post_message(ProbesLoaded([load_probe_file(p) for p in paths]))

    def on_probes_loaded(self, message: ProbesLoaded) -> None:
        message.stop()
        self.files = message.files
        if not self.files:
            self.query_one("#probe-notes", Static).update(
                Text(f"No probe results for {self.run_name} yet: run `rl-lab probe {self.run_name}` "
                     "(or P on the run's detail screen).", style="italic"))
            return
        select = self.query_one("#probe-file", Select)
        names = [self._relative(f.path) for f in self.files]
        select.set_options([(n, n) for n in names])
        own = [n for n in names if "/" not in n]
        chosen = self.file_name if self.file_name in names else (own or names)[-1]
        select.value = chosen
        self.show_file(chosen)

    @on(Select.Changed, "#probe-file")
    def _file_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and (self.current is None or event.value != self._relative(self.current.path)):
            self.show_file(event.value)

    def _relative(self, path: Path) -> str:
        """A results file's name inside ``RUN/probes`` (``replay/RUN2/step_X.json`` for a replay's)."""
        try:
            return path.relative_to(self.run_layout.probes_dir).as_posix()
        except ValueError:
            return path.name

    def show_file(self, name: str) -> None:
        """Fill the grid from the probe file called ``name``."""
        pf = next((f for f in self.files if self._relative(f.path) == name), None)
        if pf is None:
            return
        self.current = pf
        notes = self.query_one("#probe-notes", Static)
        if pf.error:
            notes.update(Text(pf.error, style="bold red"))
            self.notify(pf.error, severity="error")
        else:
            n = Text(f"{len(pf.records)} probes · checkpoint {pf.checkpoint}", style="bold")
            for note in pf.notes[:3]:
                n.append(f"\nnote: {note}", style="yellow")
            notes.update(n)
        hooks = list(dict.fromkeys(r.hook for r in pf.records))
        labels = list(dict.fromkeys(r.label for r in pf.records))
        self.grid = {}
        for r in pf.records:
            self.grid.setdefault((r.hook, r.label), r)
        table = self.query_one("#probe-grid", DataTable)
        table.clear(columns=True)
        table.add_column("hook \\ label", key="__hook__")
        for label in labels:
            table.add_column(label, key=label)
        for hook in hooks:
            table.add_row(Text(hook, style="bold"), *(cell_text(self.grid.get((hook, lab))) for lab in labels), key=hook)
        if hooks and labels:
            table.move_cursor(row=0, column=1)
        table.focus()
        self._show_cell()

    def selected_record(self) -> ProbeRecord | None:
        """The probe record under the grid cursor."""
        table = self.query_one("#probe-grid", DataTable)
        if not table.row_count or table.cursor_column < 1:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.grid.get((str(key.row_key.value), str(key.column_key.value)))

    @on(DataTable.CellHighlighted, "#probe-grid")
    def _show_cell(self) -> None:
        rec = self.selected_record()
        self.query_one("#probe-cell", Static).update(
            record_details(rec) if rec else Text("Move to a cell to see its probe; enter for details.", style="dim"))

    @on(DataTable.CellSelected, "#probe-grid")
    def action_drill(self) -> None:
        rec = self.selected_record()
        if rec is None:
            return
        # Across the checkpoints of the same episodes only: the run's own, or one replay's.
        folder = self.current.path.parent if self.current else None
        history = sorted(
            (r for f in self.files if f.path.parent == folder
             for r in f.records if r.hook == rec.hook and r.label == rec.label),
            key=record_step,
        )
        self.app.push_screen(ProbeDetailScreen(rec, history))

    def action_next_file(self) -> None:
        if not self.files:
            return
        names = [self._relative(f.path) for f in self.files]
        i = names.index(self._relative(self.current.path)) if self.current else -1
        self.query_one("#probe-file", Select).value = names[(i + 1) % len(names)]

    def action_reload(self) -> None:
        self.file_name = self._relative(self.current.path) if self.current else None
        self.load()


class ProbeDetailScreen(ModalScreen[None]):
    """One probe: scores against baselines, CI, and its score across checkpoints."""

    BINDINGS = [Binding("escape", "dismiss", "Close", id="probe-detail.close")]

    def __init__(self, record: ProbeRecord, history: list[ProbeRecord]) -> None:
        """Args: record: the probe shown. history: the same hook × label in every probe file, by step."""
        super().__init__()
        self.record = record
        self.history = history

    def compose(self) -> ComposeResult:
        with Vertical(id="probe-detail"):
            with VerticalScroll():
                yield Static(record_details(self.record), id="probe-detail-text")
                yield Static(self._history_text(), id="probe-history")
            yield LineChart("", id="probe-curve")

    def on_mount(self) -> None:
        chart = self.query_one("#probe-curve", LineChart)
        points = [(record_step(r), r.score) for r in self.history if r.score is not None]
        if len(points) >= 2:
            chart.set_data([float(x) for x, _ in points], [y for _, y in points],
                           f"{self.record.metric} across {len(points)} checkpoints")
        else:
            chart.display = False

    def _history_text(self) -> Text:
        text = Text()
        if len(self.history) < 2:
            text.append("Probed at one checkpoint only; record and probe more checkpoints for a curve.", style="dim")
            return text
        text.append("checkpoint".ljust(28) + "score    best baseline   selectivity\n", style="bold")
        for r in self.history:
            best = r.best_baseline
            sel = "—" if r.selectivity is None else f"{r.selectivity:+.3f}"
            text.append(f"{r.checkpoint[:27]:<28}{fmt_num(r.score):<9}"
                        f"{(best[0] + ' ' + fmt_num(best[1])) if best else '—':<16}{sel}\n")
        return text

    def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(None)
