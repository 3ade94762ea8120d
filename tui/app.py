"""The RL Lab terminal app: ``rl-lab tui`` or ``python -m tui``.

Start-up imports only Textual and the light run store; screens import what they need when
opened, and anything heavy (h5py) is imported inside workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from probes.layout import RunLayout, RunsDirLayout
from tui.data import RunRow
from tui.jobs import JobManager, logs_dir


def _lab_commands() -> type:
    """The command-palette provider, imported when the palette first opens (keeps start-up light)."""
    from tui.commands import LabCommands

    return LabCommands


class LabApp(App[None]):
    """The app. ``runs_dir`` is the runs directory every screen and job works on."""

    TITLE = "RL Lab"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {_lab_commands}
    BINDINGS = [
        Binding("question_mark", "help", "Help", id="help"),
        Binding("ctrl+q", "quit", "Quit", id="quit", show=False, priority=True),
    ]

    def __init__(self, runs_dir: Path | str, poll_interval: float = 1.0) -> None:
        """Args: runs_dir: the runs directory. poll_interval: seconds between refreshes of live views."""
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.poll_interval = poll_interval
        self.jobs = JobManager(self.runs_dir)
        self.rows: list[RunRow] = []
        self.first_paint_at: float | None = None
        self.runs_ready_at: float | None = None

    @property
    def logs_dir(self) -> Path:
        """Where job logs go (``<runs-dir>/.tui-logs``)."""
        return logs_dir(self.runs_dir)

    def get_default_screen(self) -> Screen[Any]:
        from tui.screens.runs import RunsScreen

        return RunsScreen()

    def on_mount(self) -> None:
        import time

        self.call_after_refresh(lambda: setattr(self, "first_paint_at", time.perf_counter()))
        self.set_interval(self.poll_interval, self._check_jobs)

    def _check_jobs(self) -> None:
        for job in self.jobs.finished_unreported():
            state = job.state
            if state == "done":
                self.notify(f"{job.label} finished", title="Job done")
            elif state == "interrupted":
                self.notify(f"{job.label} was interrupted", title="Job stopped", severity="warning")
            else:
                last = job.last_lines(1)
                reason = last[-1] if last else "no output"
                self.notify(f"{job.label}: {state}: {reason}", title="Job failed", severity="error", timeout=10)

    def run_layout(self, name: str) -> RunLayout:
        """Where the files of run ``name`` (in :attr:`runs_dir`) are."""
        return RunLayout(RunsDirLayout(self.runs_dir).run_dir(name))

    def row(self, name: str) -> RunRow | None:
        """The last scanned row of run ``name``."""
        return next((r for r in self.rows if r.name == name), None)

    # ------------------------------------------------------------------ navigation actions

    def action_help(self) -> None:
        """Show the keys of the current screen and what each screen does."""
        from tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(self.screen))

    def open_run(self, name: str) -> None:
        """Push the detail screen of run ``name``."""
        from tui.screens.detail import RunDetailScreen

        self.push_screen(RunDetailScreen(name))

    def open_launch(self) -> None:
        """Push the launch form."""
        from tui.screens.launch import LaunchScreen

        self.push_screen(LaunchScreen())

    def open_probes(self, name: str, file_name: str | None = None) -> None:
        """Push the probe grid of run ``name``, showing results file ``file_name`` (default: newest)."""
        from tui.screens.probes import ProbesScreen

        self.push_screen(ProbesScreen(name, file_name))

    def open_features(self, name: str, sae_name: str | None = None) -> None:
        """Push the SAE features screen of run ``name``, showing SAE ``sae_name`` (default: newest)."""
        from tui.screens.features import FeaturesScreen

        self.push_screen(FeaturesScreen(name, sae_name))

    def open_replay(self, name: str, file_name: str | None = None) -> None:
        """Push the episode replay of run ``name``, of activation file ``file_name`` (default: newest)."""
        from tui.screens.replay import ReplayScreen

        self.push_screen(ReplayScreen(name, file_name))

    def open_sweeps(self, sweep: str | None = None) -> None:
        """Push the sweeps screen, showing ``sweep`` (default: the first sweep)."""
        from tui.screens.sweeps import SweepsScreen

        self.push_screen(SweepsScreen(sweep))

    def open_jobs(self) -> None:
        """Push the list of jobs started from this app."""
        from tui.screens.jobs import JobsScreen

        self.push_screen(JobsScreen())

    def stop_run(self, name: str) -> None:
        """SIGINT the training process of run ``name`` (it checkpoints and marks itself interrupted)."""
        from rl_lab.runs import Run, owned_pid, read_run_json
        from rl_lab.errors import LabError
        from tui.jobs import stop_run

        path = self.run_layout(name).path
        try:
            run = Run(path, read_run_json(path))
        except LabError as exc:
            self.notify(str(exc), severity="error")
            return
        if run.status != "running":
            self.notify(f"{name} is not running (status: {run.status})", severity="warning")
            return
        pid = owned_pid(run.info)  # only a live process started when run.json says: never -1, 1 or a reused pid
        if pid is None:
            self.notify(f"cannot stop {name}: its process cannot be proven to be the run's own "
                        "(no live process with the recorded start time)", severity="error")
            return
        problem = stop_run(pid)
        if problem:
            self.notify(f"cannot stop {name}: {problem}", severity="error")
        else:
            self.notify(f"sent SIGINT to {name}; it will checkpoint and stop")


def main(argv: list[str] | None = None) -> None:
    """Run the app on ``argv[0]`` or the default runs directory."""
    import sys

    from rl_lab.runs import default_runs_dir

    args = sys.argv[1:] if argv is None else argv
    app = LabApp(Path(args[0]) if args else default_runs_dir())
    app.run()
    if app.return_code:
        sys.exit(app.return_code)


if __name__ == "__main__":
    main()
