"""Run detail: status, learning curves, config, log lines, artifacts, jobs; launch record/probe/SAE/steer."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static, TabbedContent, TabPane

from probes.errors import ProbeError
from probes.layout import SAELayout
from probes.results import read_probe_results
from rl_lab.errors import LabError
from rl_lab.runs import Run, info_problems, read_run_json
from tui.charts import fmt_num
from tui.data import Artifacts, MetricsTail, list_artifacts, tail_text
from tui.messages import DetailLoaded
from tui.screens.base import RunScreen
from tui.screens.runs import STATUS_STYLE
from tui.screens.steer import SteerScreen
from tui.widgets.chart import LineChart

#: The analysis commands the detail screen launches: key, command, footer text.
ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("R", "record", "Record"),
    ("P", "probe", "Probe"),
    ("A", "sae", "Train SAE"),
    ("T", "steer", "Steer"),
)


@dataclass
class DetailSnapshot:
    """Everything the detail screen shows, read by a worker."""

    info: dict[str, Any] | None
    status: str
    error: str | None
    n_records: int
    last_record: dict[str, Any] | None
    curve: tuple[list[float], list[float]]
    metric: str
    metric_curve: tuple[list[float], list[float]]
    metric_keys: list[str]
    artifacts: Artifacts | None
    completeness: dict[str, bool | None] = field(default_factory=dict)
    log_name: str = ""
    log_lines: list[str] = field(default_factory=list)


class RunDetailScreen(RunScreen):
    """One run, refreshed from disk while it is on screen."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="detail.back"),
        Binding("m", "next_metric", "Metric", id="detail.metric"),
        *(Binding(k, f"command('{cmd}')", label, id=f"detail.{cmd}") for k, cmd, label in ACTIONS),
        Binding("x", "stop", "Stop", id="detail.stop"),
        Binding("g", "probes", "Probes", id="detail.probes"),
        Binding("f", "features", "Features", id="detail.features"),
        Binding("e", "replay", "Replay", id="detail.replay"),
        Binding("1", "tab('curves')", "Curves", show=False),
        Binding("2", "tab('config')", "Config", show=False),
        Binding("3", "tab('log')", "Log", show=False),
        Binding("4", "tab('artifacts')", "Artifacts", show=False),
        Binding("5", "tab('jobs')", "Jobs", show=False),
    ]

    def __init__(self, run_name: str) -> None:
        """Args: run_name: the run directory's name inside the app's runs directory."""
        super().__init__(run_name)
        self.metric = ""
        self.snapshot: DetailSnapshot | None = None
        self._tail: MetricsTail | None = None
        self._lock = threading.Lock()
        self._complete_cache: dict[str, tuple[float, bool | None]] = {}
        self._artifact_keys: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"[b]{self.run_name}[/b]  reading…", id="detail-status")
        yield ProgressBar(total=100, show_eta=False, id="detail-progress")
        with TabbedContent(initial="curves", id="detail-tabs"):
            with TabPane("Curves", id="curves"):
                with Vertical(id="curves-box"):
                    yield LineChart("episode return", id="chart-return")
                    yield LineChart("", id="chart-metric")
            with TabPane("Config", id="config"):
                with VerticalScroll():
                    yield Static("", id="detail-config", markup=False)
            with TabPane("Log", id="log"):
                with VerticalScroll():
                    yield Static("", id="detail-log", markup=False)
            with TabPane("Artifacts", id="artifacts"):
                table: DataTable[object] = DataTable(id="detail-artifacts", cursor_type="row")
                table.add_columns("kind", "name", "info")
                yield table
            with TabPane("Jobs", id="jobs"):
                with VerticalScroll():
                    yield Static("No jobs started from this app for this run.", id="detail-jobs", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.run_name
        self._tail = MetricsTail(self.run_layout.metrics_path)
        self.refresh_data()
        self.set_interval(self.lab.poll_interval, self.refresh_data)

    # ------------------------------------------------------------------ data

    @work(thread=True, group="detail")
    def refresh_data(self) -> None:
        """Re-read run.json, new metrics, artifacts and the newest log (never blocks input)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self.post_message(DetailLoaded(self._read()))
        except Exception as exc:  # noqa: BLE001 - shown, never raised into the UI
            self.post_message(DetailLoaded(None, f"cannot read {self.run_name}: {exc}"))
        finally:
            self._lock.release()

    def _read(self) -> DetailSnapshot:
        assert self._tail is not None
        path = self.run_layout.path
        info: dict[str, Any] | None
        try:
            info = read_run_json(path)
            status, error = Run(path, info).status, info.get("error")
        except LabError as exc:
            info, status, error = None, "failed", str(exc)
        self._tail.poll()
        keys = self._tail.numeric_keys()
        metric = self.metric or next((k for k in keys if k != "episode_return"), "")
        curve = self._tail.curve("episode_return")
        mcurve = self._tail.curve(metric) if metric else []
        artifacts = list_artifacts(path, self.lab.logs_dir) if path.is_dir() else None
        completeness: dict[str, bool | None] = {}
        if artifacts is not None:
            for h5 in artifacts.activations:
                completeness[str(h5)] = self._complete(h5)
        logs = list(artifacts.logs) if artifacts else []
        newest = max(logs, key=lambda p: p.stat().st_mtime if p.exists() else 0, default=None)
        return DetailSnapshot(
            info=info,
            status=status,
            error=str(error) if error else None,
            n_records=len(self._tail.records),
            last_record=self._tail.records[-1] if self._tail.records else None,
            curve=([x for x, _ in curve], [y for _, y in curve]),
            metric=metric,
            metric_curve=([x for x, _ in mcurve], [y for _, y in mcurve]),
            metric_keys=keys,
            artifacts=artifacts,
            completeness=completeness,
            log_name=newest.name if newest else "",
            log_lines=tail_text(newest, 40) if newest else [],
        )

    def _complete(self, path: Path) -> bool | None:
        """The ``complete`` attribute of an activation file, cached by modification time."""
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._complete_cache.get(path.name)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            import h5py

            with h5py.File(path, "r") as f:
                value: bool | None = bool(f.attrs.get("complete", False))
        except Exception:  # noqa: BLE001 - unreadable means not complete
            value = False
        self._complete_cache[path.name] = (mtime, value)
        return value

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        message.stop()
        snap = message.snapshot
        if snap is None:
            self.query_one("#detail-status", Static).update(Text(message.error or "", style="red"))
            return
        self.snapshot = snap
        self._show_status(snap)
        self._show_curves(snap)
        self._show_config(snap)
        self._show_log(snap)
        self._show_artifacts(snap)
        self._show_jobs()

    def _show_status(self, snap: DetailSnapshot) -> None:
        info = snap.info or {}
        text = Text()
        text.append(self.run_name, style="bold")
        text.append("  ")
        text.append(str(snap.status), style=STATUS_STYLE.get(str(snap.status), "dim"))
        text.append(f"  {info.get('env_id', '?')} · {info.get('algo', '?')} · seed {info.get('seed', '?')}")

        def count(value: object) -> int:  # a damaged run.json may hold anything here
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        done, total = count(info.get("steps_done")), count(info.get("total_timesteps"))
        text.append(f"  steps {fmt_num(done)}/{fmt_num(total or None)}")
        if snap.last_record:
            fps = snap.last_record.get("fps")
            if isinstance(fps, (int, float)):
                text.append(f"  {fps:.0f} fps")
        if snap.status == "running":
            text.append(f"  pid {info.get('pid')}", style="dim")
        problems = info_problems(info)
        if snap.error or problems:
            text.append("\n")
            text.append(str(snap.error or "damaged run.json: " + "; ".join(problems)), style="bold red")
        self.query_one("#detail-status", Static).update(text)
        bar = self.query_one("#detail-progress", ProgressBar)
        if total:
            bar.update(total=float(total), progress=float(min(done, total)))
        bar.display = bool(total) and snap.status == "running"

    def _show_curves(self, snap: DetailSnapshot) -> None:
        xs, ys = snap.curve
        last = f" — latest {fmt_num(ys[-1])}, best {fmt_num(max(ys))}" if ys else ""
        self.query_one("#chart-return", LineChart).set_data(xs, ys, f"episode return vs step{last}")
        chart = self.query_one("#chart-metric", LineChart)
        if snap.metric:
            mx, my = snap.metric_curve
            chart.set_data(mx, my, f"{snap.metric} vs step  (m: next of {len(snap.metric_keys)} metrics)")
        chart.display = bool(snap.metric)

    def _show_config(self, snap: DetailSnapshot) -> None:
        info = snap.info
        if info is None:
            text = snap.error or "run.json is unreadable"
        else:
            shown = {k: info.get(k) for k in ("env_id", "algo", "seed", "total_timesteps", "created", "updated")}
            text = json.dumps(shown, indent=2, default=str)
            text += "\n\nconfig:\n" + json.dumps(info.get("config") or {}, indent=2, default=str)
            text += "\n\nversions:\n" + json.dumps(info.get("versions") or {}, indent=2, default=str)
        self.query_one("#detail-config", Static).update(text)

    def _show_log(self, snap: DetailSnapshot) -> None:
        lines: list[str] = []
        if snap.log_lines:
            lines.append(f"── {snap.log_name} (last {len(snap.log_lines)} lines)")
            lines.extend(snap.log_lines)
        if self._tail is not None and self._tail.records:
            recent = self._tail.records[-15:]
            lines.append(f"── metrics.jsonl (last {len(recent)} of {snap.n_records} records)")
            for rec in recent:
                lines.append("  ".join(f"{k}={fmt_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}" for k, v in rec.items()))
        self.query_one("#detail-log", Static).update("\n".join(lines) or "No log lines or metrics yet.")

    def _show_artifacts(self, snap: DetailSnapshot) -> None:
        art = snap.artifacts
        rows: list[tuple[str, str, str, str]] = []  # key, kind, name, info
        if art is not None:
            for p in art.checkpoints:
                rows.append((f"checkpoint:{p}", "checkpoint", p.name, _size(p)))
            layout = self.run_layout
            for p in art.activations:
                ok = snap.completeness.get(str(p))
                state = "complete" if ok else ("INCOMPLETE (being written or crashed)" if ok is False else "?")
                rows.append((f"activations:{p}", "activations", _within(p, layout.activations_dir),
                             f"{_size(p)}  {state}"))
            for p in art.probes:
                rows.append((f"probes:{p}", "probes", _within(p, layout.probes_dir), "enter: probe grid"))
            for p in art.saes:
                has = SAELayout(p).has_features()
                rows.append((f"sae:{p}", "sae", p.name, "enter: features" if has else "no feature statistics yet"))
            for p in art.steer:
                rows.append((f"steer:{p}", "steer", p.name, _size(p)))
            for p in art.logs:
                rows.append((f"log:{p}", "log", p.name, _size(p)))
        keys = [r[0] for r in rows]
        table = self.query_one("#detail-artifacts", DataTable)
        if keys != self._artifact_keys:
            table.clear()
            for key, kind, name, extra in rows:
                table.add_row(kind, name, extra, key=key)
            self._artifact_keys = keys
        else:
            for key, _, _, extra in rows:
                table.update_cell(key, table.ordered_columns[2].key, extra)

    def _show_jobs(self) -> None:
        jobs = self.lab.jobs.for_run(self.run_name)
        if not jobs:
            return
        lines = []
        for job in jobs:
            frac = job.progress()
            pct = f" {frac:.0%}" if frac is not None and job.state == "running" else ""
            lines.append(f"{job.started:%H:%M:%S}  {job.command:<6} pid {job.pid}  {job.state}{pct}")
            for line in job.last_lines(3):
                lines.append(f"    {line[:200]}")
        self.query_one("#detail-jobs", Static).update("\n".join(lines))

    # ------------------------------------------------------------------ actions

    def action_tab(self, tab: str) -> None:
        self.query_one("#detail-tabs", TabbedContent).active = tab

    def action_next_metric(self) -> None:
        keys = [k for k in (self.snapshot.metric_keys if self.snapshot else []) if k != "episode_return"]
        if not keys:
            self.notify("no other metrics logged yet", severity="warning")
            return
        current = self.snapshot.metric if self.snapshot else ""
        self.metric = keys[(keys.index(current) + 1) % len(keys)] if current in keys else keys[0]
        self.refresh_data()

    def action_command(self, command: str) -> None:
        from tui.screens.dialogs import CommandDialog

        defaults = {"sae": "--hook " + self._default_hook(), "steer": "--direction "}
        self.app.push_screen(
            CommandDialog(command, self.run_name, defaults.get(command, "")),
            lambda args: self._start(command, args),
        )

    def _default_hook(self) -> str:
        """A hook name from the newest probe results, so the SAE dialog starts sensible."""
        art = self.snapshot.artifacts if self.snapshot else None
        for path in reversed(art.probes if art else []):
            try:
                records = read_probe_results(path).records
            except ProbeError:
                continue
            if records:
                return records[0].hook
        return ""

    def _start(self, command: str, args: list[str] | None) -> None:
        if args is None:
            return
        from tui.screens.dialogs import command_help

        if command_help(command) is None:
            self.notify(f"rl-lab {command} is not available in this installation", severity="error")
            return
        try:
            job = self.lab.jobs.start(command, self.run_name, [self.run_name, *args])
        except OSError as exc:
            self.notify(f"cannot start rl-lab {command}: {exc}", severity="error")
            return
        self.notify(f"started rl-lab {command} {self.run_name} (pid {job.pid})")
        self.action_tab("jobs")
        self._show_jobs()

    def action_stop(self) -> None:
        self.lab.stop_run(self.run_name)

    def action_probes(self) -> None:
        self.lab.open_probes(self.run_name)

    def action_features(self) -> None:
        self.lab.open_features(self.run_name)

    def action_replay(self) -> None:
        self.lab.open_replay(self.run_name)

    @on(DataTable.RowSelected, "#detail-artifacts")
    def _artifact_selected(self, event: DataTable.RowSelected) -> None:
        kind, _, full = str(event.row_key.value).partition(":")
        name = Path(full).name
        layout = self.run_layout
        if kind == "activations":
            self.lab.open_replay(self.run_name, _within(Path(full), layout.activations_dir))
        elif kind == "probes":
            self.lab.open_probes(self.run_name, _within(Path(full), layout.probes_dir))
        elif kind == "sae":
            self.lab.open_features(self.run_name, name)
        elif kind == "steer":
            self.app.push_screen(SteerScreen(self.run_name, full))
        else:
            self.notify(full, title=kind)


def _within(path: Path, folder: Path) -> str:
    """``path``'s name inside ``folder`` (``step_X.h5``, or ``replay/RUN2/step_X.h5`` for a replay's)."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


def _size(path: Path) -> str:
    try:
        n = os.stat(path).st_size
    except OSError:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
