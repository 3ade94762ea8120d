"""Help: the keys of the screen underneath and a short guide to every screen."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

GUIDE = """\
[b]Runs[/b]      every run with status, env, algo, steps, latest and best return; live.
          / filter (status:running env:forage algo:ppo), s sort, r reverse, enter open.
[b]Detail[/b]    config, learning curves, log lines, artifacts; record, probe, SAE, steer.
[b]Launch[/b]    start training as a separate process; progress and learning curve; stop.
[b]Probes[/b]    hook × label heat map of held-out scores with baselines and selectivity.
[b]Features[/b]  an SAE's latents by density or label association; histogram, top steps.
[b]Replay[/b]    step through a recorded episode: text view, labels, hook activations.
[b]Sweeps[/b]    (w) a sweep's conditions: trials, final return, learning curve mean ± sd over seeds.
[b]Jobs[/b]      sub-processes started from the app, with their logs.

ctrl+p opens the command palette (open a run, launch, probes, ...); ? toggles this help.
Training keeps running if the app quits; x (Stop) sends it SIGINT so it checkpoints."""


def bindings_text(screen: Screen[Any]) -> Text:
    """One line per active key binding of ``screen`` that has a description."""
    text = Text()
    seen: set[tuple[str, str]] = set()
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if not binding.description or (binding.description, key) in seen:
            continue
        seen.add((binding.description, key))
        if text:
            text.append("\n")
        text.append(screen.app.get_key_display(binding).ljust(10), style="bold cyan")
        text.append(binding.description, style="" if active.enabled else "dim")
    return text


class HelpScreen(ModalScreen[None]):
    """Modal help over ``screen``: its active keys and the guide."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="help.close"),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, screen: Screen[Any]) -> None:
        """Args: screen: the screen whose key bindings are listed."""
        super().__init__()
        self.target = screen

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(f"[b]Help — {type(self.target).__name__.replace('Screen', '')}[/b]", id="help-title")
            yield Static(bindings_text(self.target), id="help-keys")
            yield Static(GUIDE, id="help-guide")
            yield Static("[dim]escape or ? to close[/dim]")

    def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(None)
