"""The app's footer: Textual's, rebuilt only when the keys it shows actually change."""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class LabFooter(Footer):
    """A :class:`Footer` that skips rebuilding when the shown keys are unchanged.

    Textual's footer recomposes (one widget per key, each styled) whenever a screen's bindings
    are refreshed — at mount, on every focus change, whenever a widget refreshes its bindings —
    even if the keys shown stay the same. At start-up that was three rebuilds, about as much
    work as filling a 1,000-row table.
    """

    _shown: Any = None

    def bindings_changed(self, screen: Screen[Any]) -> None:
        shown = tuple(
            (binding.key, binding.description, enabled, tooltip)
            for (_, binding, enabled, tooltip) in screen.active_bindings.values()
            if binding.show or binding.action == "app.command_palette"
        )
        if shown == self._shown and self._bindings_ready:
            return
        self._shown = shown
        super().bindings_changed(screen)
