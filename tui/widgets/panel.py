"""A fixed-size text panel: setting its text repaints it without a layout pass."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class TextPanel(Widget):
    """Shows ``text`` (a string or :class:`~rich.text.Text`), cropped to the panel.

    Unlike ``Static`` (whose content may change its height), the panel's size comes from CSS
    only, so a new text costs one repaint of the panel and never a re-layout of the screen:
    the right thing for views that change on every key press.
    """

    DEFAULT_CSS = """
    TextPanel {
        height: 1fr;
        padding: 0 1;
    }
    """

    text: reactive[str | Text] = reactive("", layout=False)

    def __init__(self, text: str | Text = "", *, id: str | None = None, classes: str | None = None) -> None:
        """Args: text: the initial text. id, classes: as for any widget."""
        super().__init__(id=id, classes=classes)
        self.set_reactive(TextPanel.text, text)

    def render(self) -> Text:
        if isinstance(self.text, Text):
            out = self.text.copy()
        else:  # only the lines that fit are turned into a Text
            height = max(1, self.content_size.height)
            out = Text("\n".join(self.text.split("\n", height)[:height]))
        out.no_wrap = True
        out.overflow = "crop"
        return out
