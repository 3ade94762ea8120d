"""Command-palette provider: open any run, launch training, probes, features, replay, stop, jobs."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from tui.app import LabApp


class LabCommands(Provider):
    """Commands for every action of the app and every run on disk."""

    @property
    def lab(self) -> "LabApp":
        return self.app  # type: ignore[return-value]

    def _commands(self) -> Iterator[tuple[str, Callable[[], object], str]]:
        app = self.lab
        yield "Launch training", app.open_launch, "Open the launch form"
        yield "Jobs", app.open_jobs, "Sub-processes started from this app"
        yield "Sweeps", app.open_sweeps, "Sweeps: conditions and learning curves over seeds"
        yield "Help", app.action_help, "Keys and a guide to every screen"
        for sweep in sorted({r.sweep for r in app.rows if r.sweep}):
            yield f"Sweep {sweep}", partial(app.open_sweeps, sweep), "Conditions and learning curves over seeds"
        for row in app.rows:
            yield f"Open run {row.name}", partial(app.open_run, row.name), f"{row.status} · {row.env_id} · {row.algo}"
            yield f"Probes of {row.name}", partial(app.open_probes, row.name), "Hook × label probe scores"
            yield f"Features of {row.name}", partial(app.open_features, row.name), "SAE latents"
            yield f"Replay {row.name}", partial(app.open_replay, row.name), "Step through a recorded episode"
            if row.status == "running":
                yield f"Stop run {row.name}", partial(app.stop_run, row.name), "Send SIGINT; it checkpoints"

    async def discover(self) -> Hits:
        for text, command, help_text in list(self._commands())[:4]:
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, command, help_text in list(self._commands()):
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
