"""Small modal dialogs: the arguments of a command before it is launched."""

from __future__ import annotations

import argparse
import importlib
import shlex

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


def command_help(command: str) -> str | None:
    """``rl-lab <command> --help`` text, built from the command module; None if it does not exist.

    Command modules keep heavy imports inside ``run``, so importing one here is cheap.
    """
    try:
        module = importlib.import_module(f"rl_lab.cli.{command}")
    except ImportError:
        return None
    parser = argparse.ArgumentParser(prog=f"rl-lab {command}", description=getattr(module, "HELP", ""))
    try:
        module.add_arguments(parser)
    except Exception as exc:  # noqa: BLE001 - a broken module must not crash the app
        return f"(cannot build the help of rl-lab {command}: {exc})"
    return parser.format_help()


def command_options(command: str) -> set[str]:
    """Option strings (``--lr``, ...) the ``rl-lab <command>`` parser accepts; empty if unknown."""
    try:
        module = importlib.import_module(f"rl_lab.cli.{command}")
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
    except Exception:  # noqa: BLE001
        return set()
    return {opt for action in parser._actions for opt in action.option_strings}


class CommandDialog(ModalScreen[list[str] | None]):
    """Asks for the extra arguments of ``rl-lab <command> RUN``; dismisses with the argument list."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    DEFAULT_CSS = """
    CommandDialog { align: center middle; }
    CommandDialog > Vertical {
        width: 90%; max-width: 100; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    CommandDialog #cmd-help { height: auto; max-height: 14; color: $text-muted; }
    CommandDialog Horizontal { height: auto; }
    CommandDialog Button { margin: 0 1 0 0; }
    """

    def __init__(self, command: str, run_name: str, default_args: str = "") -> None:
        """Args: command: the sub-command. run_name: its RUN argument. default_args: the prefilled extra arguments."""
        super().__init__()
        self.command = command
        self.run_name = run_name
        self.default_args = default_args

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"[b]rl-lab {self.command} {self.run_name}[/b] — extra arguments (Enter runs, Escape cancels)")
            yield Input(self.default_args, id="cmd-args", placeholder="e.g. --hook mlp_extractor.policy_net.1")
            with VerticalScroll(id="cmd-help"):
                yield Static(command_help(self.command) or f"rl-lab {self.command} is not available yet.", markup=False)
            with Horizontal():
                yield Button("Run", variant="primary", id="cmd-run")
                yield Button("Cancel", id="cmd-cancel")

    def on_mount(self) -> None:
        box = self.query_one("#cmd-args", Input)
        box.focus()
        box.cursor_position = len(box.value)

    @on(Input.Submitted, "#cmd-args")
    @on(Button.Pressed, "#cmd-run")
    def _run(self) -> None:
        text = self.query_one("#cmd-args", Input).value
        try:
            args = shlex.split(text)
        except ValueError as exc:
            self.notify(f"cannot parse the arguments: {exc}", severity="error")
            return
        self.dismiss(args)

    @on(Button.Pressed, "#cmd-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
