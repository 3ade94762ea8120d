"""Features: an SAE's latents, sortable by density or by association with a label.

``saes/<name>/features.json`` is read defensively (``tui.data.load_features``). Switching
latents only re-renders already-parsed data; the environment text views of the latent's
top-activating steps (and the steps around them) are read from the activation file in a
worker, a few rows at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Select, Static

from tui.charts import fmt_num, sparkline
from tui.data import FeatureSet, Latent, load_features
from tui.messages import Loaded

if TYPE_CHECKING:
    from tui.app import LabApp

CONTEXT = 2  # steps shown before and after a top-activating step


def latent_summary(lat: Latent, labels: list[str]) -> Text:
    """Density, strongest label associations and the activation histogram of one latent."""
    text = Text(f"latent {lat.index}", style="bold")
    text.append(f"   density {fmt_num(lat.density)}\n")
    if lat.associations:
        text.append("associations ", style="dim")
        ranked = sorted(lat.associations.items(), key=lambda kv: -abs(kv[1]))[:6]
        text.append("  ".join(f"{k} {v:+.2f}" for k, v in ranked))
        text.append("\n")
    if lat.histogram is not None:
        edges, counts = lat.histogram
        text.append("histogram ", style="dim")
        text.append(sparkline(counts, 48), style="green")
        if edges:
            text.append(f"  [{fmt_num(edges[0])} … {fmt_num(edges[-1])}]", style="dim")
        text.append("\n")
    if lat.top_steps:
        text.append("top steps ", style="dim")
        text.append(", ".join(f"{row}" + (f" ({fmt_num(v)})" if v is not None else "") for row, v in lat.top_steps[:8]))
        text.append("\n")
    for key, value in list(lat.extra.items())[:4]:
        if isinstance(value, (str, int, float)):
            text.append(f"{key} {value}\n", style="dim")
    return text


def read_context(path: Path, row: int, context: int = CONTEXT) -> list[tuple[int, int, int, str]]:
    """``(row, episode, t, text)`` for ``row`` and up to ``context`` steps around it in its episode."""
    from probes.activations import ActivationFile

    with ActivationFile(path, allow_incomplete=True) as f:
        if row >= f.n:
            raise IndexError(f"row {row} is beyond the {f.n} steps of {path.name}")
        lo, hi = max(0, row - context), min(f.n, row + context + 1)
        eps = f.steps("episode", slice(lo, hi))
        ts = f.steps("t", slice(lo, hi))
        has_text = "text" in f._h5["steps"]
        texts = f.steps("text", slice(lo, hi)) if has_text else [b""] * (hi - lo)
        ep = eps[row - lo]
        out = []
        for i, r in enumerate(range(lo, hi)):
            if eps[i] != ep:
                continue
            raw = texts[i]
            s = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            out.append((r, int(eps[i]), int(ts[i]), s or "(no text view recorded)"))
        return out


class FeaturesScreen(Screen[None]):
    """An SAE's latents, their statistics and the environment states that activate them."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="features.back"),
        Binding("d", "sort_density", "Sort density", id="features.density"),
        Binding("a", "sort_label", "Sort by label", id="features.label"),
        Binding("right_square_bracket", "top(1)", "Next top step", id="features.next"),
        Binding("left_square_bracket", "top(-1)", "Prev top step", show=False),
    ]

    def __init__(self, run_name: str, sae_name: str | None = None) -> None:
        """Args: run_name: the run. sae_name: the SAE directory in ``RUN/saes`` (default: newest)."""
        super().__init__()
        self.run_name = run_name
        self.sae_name = sae_name
        self.features: FeatureSet | None = None
        self.by_index: dict[int, Latent] = {}
        self.order: list[int] = []
        self.sort_label: str | None = None
        self.sort_desc = True
        self.top_pos = 0
        self.current: Latent | None = None

    @property
    def lab(self) -> "LabApp":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([], prompt="SAE", id="sae-select", compact=True)
        yield Static("Reading SAE features…", id="features-info")
        with Horizontal(id="features-body"):
            yield DataTable(id="latents", cursor_type="row")
            with Vertical(id="latent-side"):
                yield Static("", id="latent-summary")
                with VerticalScroll(id="latent-steps-box"):
                    yield Static("", id="latent-steps", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"features — {self.run_name}"
        folder = self.lab.runs_dir / self.run_name / "saes"
        saes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if not saes:
            self.query_one("#features-info", Static).update(Text(
                f"No SAEs for {self.run_name} yet: train one with `rl-lab sae {self.run_name} --hook NAME` "
                "(or A on the run's detail screen).", style="italic"))
            return
        chosen = self.sae_name if self.sae_name in saes else saes[-1]
        select = self.query_one("#sae-select", Select)
        select.set_options([(s, s) for s in saes])
        select.value = chosen
        self.load(chosen)

    @on(Select.Changed, "#sae-select")
    def _sae_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.sae_name:
            self.load(event.value)

    @work(thread=True, exclusive=True, group="features")
    def load(self, sae: str) -> None:
        """Parse ``features.json`` of SAE ``sae`` in a worker."""
        self.sae_name = sae
        self.post_message(Loaded("features", load_features(self.lab.runs_dir / self.run_name / "saes" / sae)))

    def on_loaded(self, message: Loaded) -> None:
        if message.what == "features":
            message.stop()
            self._show_features(message.payload)
        elif message.what == "feature-steps":
            message.stop()
            index, payload = message.payload
            if self.current is not None and self.current.index == index:
                self.query_one("#latent-steps", Static).update(
                    Text(message.error, style="red") if message.error else payload)

    def _show_features(self, fs: FeatureSet) -> None:
        self.features = fs
        info = self.query_one("#features-info", Static)
        if fs.error:
            info.update(Text(fs.error, style="bold red" if "cannot" in fs.error else "italic"))
            self.query_one("#latents", DataTable).clear(columns=True)
            return
        self.by_index = {lat.index: lat for lat in fs.latents}
        alive = sum(1 for lat in fs.latents if (lat.density or 0) > 0)
        info.update(f"{self.sae_name}: {len(fs.latents)} latents ({alive} ever active) · hook {fs.hook or '?'} · "
                    f"labels: {', '.join(fs.labels) or 'none'}")
        self.sort_label = None
        self._fill_table()

    def _fill_table(self) -> None:
        fs = self.features
        if fs is None:
            return
        table = self.query_one("#latents", DataTable)
        table.clear(columns=True)
        table.add_column("latent", key="index")
        table.add_column("density", key="density")
        label = self.sort_label
        if label:
            table.add_column(label[:14], key="assoc")
            key = lambda lat: abs(lat.associations.get(label, 0.0))  # noqa: E731
        else:
            key = lambda lat: lat.density if lat.density is not None else -1.0  # noqa: E731
        ordered = sorted(fs.latents, key=key, reverse=self.sort_desc)
        self.order = [lat.index for lat in ordered]
        rows: list[list[Any]] = []
        for lat in ordered:
            row: list[Any] = [str(lat.index), fmt_num(lat.density)]
            if label:
                v = lat.associations.get(label)
                row.append("—" if v is None else f"{v:+.3f}")
            rows.append(row)
        for lat, row in zip(ordered, rows):
            table.add_row(*row, key=str(lat.index))
        table.focus()
        if ordered:
            table.move_cursor(row=0)
            self.show_latent(ordered[0].index)

    @on(DataTable.RowHighlighted, "#latents")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.show_latent(int(event.row_key.value))

    def show_latent(self, index: int) -> None:
        """Show latent ``index``: its statistics now, its top steps' text views when read."""
        lat = self.by_index.get(index)
        if lat is None or self.features is None:
            return
        if self.current is None or self.current.index != index:
            self.top_pos = 0
        self.current = lat
        self.query_one("#latent-summary", Static).update(latent_summary(lat, self.features.labels))
        steps = self.query_one("#latent-steps", Static)
        if not lat.top_steps:
            steps.update("features.json lists no top-activating steps for this latent.")
            return
        row, value = lat.top_steps[self.top_pos % len(lat.top_steps)]
        steps.update(f"reading step {row}…")
        path = self._activation_path()
        if path is None:
            steps.update("No activation file found for this SAE, so its steps cannot be shown.")
            return
        self._read_steps(index, path, row, value, self.top_pos % len(lat.top_steps), len(lat.top_steps))

    def _activation_path(self) -> Path | None:
        fs = self.features
        run = self.lab.runs_dir / self.run_name
        if fs is not None and fs.activation_file:
            p = Path(fs.activation_file)
            for cand in (p, run / p, run / "activations" / p.name):
                if cand.exists():
                    return cand
        files = sorted((run / "activations").glob("*.h5")) if (run / "activations").is_dir() else []
        return files[-1] if files else None

    @work(thread=True, exclusive=True, group="feature-steps")
    def _read_steps(self, index: int, path: Path, row: int, value: float | None, pos: int, count: int) -> None:
        try:
            context = read_context(path, row)
        except Exception as exc:  # noqa: BLE001 - shown, never raised
            self.post_message(Loaded("feature-steps", (index, None), f"cannot read step {row} of {path.name}: {exc}"))
            return
        lines = [f"top step {pos + 1}/{count}: row {row}" + (f", activation {fmt_num(value)}" if value is not None else "")
                 + f"  ({path.name}; [ ] for other top steps)"]
        for r, ep, t, text in context:
            marker = "▶" if r == row else " "
            lines.append(f"{marker} row {r} · episode {ep} · t {t}")
            lines.extend("  " + line for line in text.splitlines())
        self.post_message(Loaded("feature-steps", (index, "\n".join(lines))))

    # ------------------------------------------------------------------ actions

    def action_sort_density(self) -> None:
        if self.sort_label is None:
            self.sort_desc = not self.sort_desc
        else:
            self.sort_label, self.sort_desc = None, True
        self._fill_table()

    def action_sort_label(self) -> None:
        labels = self.features.labels if self.features else []
        if not labels:
            self.notify("features.json has no label associations", severity="warning")
            return
        i = labels.index(self.sort_label) if self.sort_label in labels else -1
        self.sort_label, self.sort_desc = labels[(i + 1) % len(labels)], True
        self.notify(f"sorted by |association| with {self.sort_label}")
        self._fill_table()

    def action_top(self, delta: int) -> None:
        if self.current is None or not self.current.top_steps:
            return
        self.top_pos = (self.top_pos + delta) % len(self.current.top_steps)
        self.show_latent(self.current.index)
