"""Features: an SAE's latents, sortable by density or by association with a label.

The statistics are the ones ``probes.features`` writes next to the SAE
(``RUN/saes/<name>/features.json`` + ``features.npz``), read once in a worker through
``probes.features.FeatureStore``. The store holds everything a latent shows, the text views of
its top-activating steps and their neighbours included, so switching latents is a dictionary
look-up (a cache of rendered panels, filled from ``FeatureStore.latent``) and two redraws of
fixed-size panels: no file is read and no worker is started per switch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Header, Select, Static

from probes.layout import SAELayout
from tui.charts import fmt_num, sparkline
from tui.messages import FeaturesLoaded
from tui.screens.base import RunScreen
from tui.widgets.panel import TextPanel
from tui.widgets.footer import LabFooter
from tui.widgets.table import FastTable

if TYPE_CHECKING:
    from probes.features import FeatureStore


def label_score_text(name: str, score: dict[str, Any]) -> str:
    """``fear r +0.53`` or ``threat AUROC 0.91 (1)`` for one entry of ``FeatureStore.label_scores``."""
    if score.get("kind") == "continuous":
        r = score.get("pearson")
        return f"{name} r " + ("—" if r is None else f"{r:+.2f}")
    auc = score.get("auroc")
    return f"{name} AUROC " + ("—" if auc is None else f"{auc:.2f}") + f" ({score.get('class')})"


def _strength(score: dict[str, Any]) -> float:
    """How strongly a label score departs from chance: |r|, or |AUROC - 0.5| * 2."""
    if score.get("kind") == "continuous":
        return abs(score.get("pearson") or 0.0)
    auc = score.get("auroc")
    return 0.0 if auc is None else abs(auc - 0.5) * 2


def latent_summary(info: dict[str, Any]) -> Text:
    """Density, activation range, label associations, histogram and top steps of one latent.

    Args:
        info: ``FeatureStore.latent(i)``.
    """
    text = Text(f"latent {info['index']}", style="bold")
    text.append(f"   density {fmt_num(info['density'])}   max {fmt_num(info['max_activation'])}"
                f"   mean when firing {fmt_num(info['mean_activation'])}\n")
    labels = info.get("labels") or {}
    if labels:
        ranked = sorted(labels.items(), key=lambda kv: -_strength(kv[1]))[:4]
        text.append("labels ", style="dim")
        text.append("   ".join(label_score_text(k, v) for k, v in ranked))
        text.append("\n")
    hist = info.get("histogram") or {}
    counts = hist.get("counts") or []
    if any(counts):
        edges = hist.get("edges") or []
        text.append("histogram ", style="dim")
        text.append(sparkline([math.log1p(c) for c in counts], 40), style="green")
        if edges:
            text.append(f"  (0 … {fmt_num(edges[-1])}, log counts; silent on {hist.get('zero', 0)} rows)", style="dim")
        text.append("\n")
    else:
        text.append("never fires on the analysed file\n", style="italic")
    top = info.get("top") or []
    if top:
        text.append("top steps ", style="dim")
        text.append(", ".join(f"{s['row']} ({fmt_num(s['activation'])})" for s in top[:8]))
    return text


def top_step_text(info: dict[str, Any], pos: int) -> str:
    """The text views of top step ``pos`` of a latent and of its stored neighbours (same episode)."""
    top = info.get("top") or []
    if not top:
        return "This latent never fires on the analysed file, so it has no top-activating steps."
    step = top[pos % len(top)]
    lines = [f"top step {pos % len(top) + 1}/{len(top)}: row {step['row']} · episode {step['episode']} · "
             f"t {step['t']} · activation {fmt_num(step['activation'])}   ([ ] for the others)"]
    context = step.get("context") or [{"offset": 0, "row": step["row"], "text": step.get("text", "")}]
    for ctx in context:
        marker = "▶" if ctx["offset"] == 0 else " "
        lines.append(f"{marker} row {ctx['row']} · t {step['t'] + ctx['offset']}")
        body = ctx.get("text") or "(no text view recorded)"
        lines.extend("  " + line for line in body.splitlines())
    return "\n".join(lines)


def load_store(sae_dir: Path) -> tuple["FeatureStore | None", str | None]:
    """``(store, None)`` or ``(None, reason)`` for the feature statistics of one SAE directory."""
    if not SAELayout(sae_dir).has_features():
        return None, (f"{sae_dir.name} has no feature statistics yet: run "
                      f"`python -m probes.features {sae_dir} RUN/activations/FILE.h5` to compute them.")
    try:
        from probes.features import FeatureStore

        return FeatureStore(sae_dir), None
    except Exception as exc:  # noqa: BLE001 - an unreadable or old-format file is shown, never raised
        return None, f"cannot read the feature statistics of {sae_dir.name}: {exc}"


class FeaturesScreen(RunScreen):
    """An SAE's latents, their statistics and the environment states that activate them."""

    AUTO_FOCUS = "#latents"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="features.back"),
        Binding("d", "sort_density", "Sort density", id="features.density"),
        Binding("a", "sort_label", "Sort by label", id="features.label"),
        Binding("right_square_bracket", "top(1)", "Next top step", id="features.next"),
        Binding("left_square_bracket", "top(-1)", "Prev top step", show=False),
    ]

    def __init__(self, run_name: str, sae_name: str | None = None) -> None:
        """Args: run_name: the run. sae_name: the SAE directory in ``RUN/saes`` (default: newest)."""
        super().__init__(run_name)
        self.sae_name = sae_name
        self.store: FeatureStore | None = None
        self.error: str | None = None
        self.order: list[int] = []
        self.sort_label: str | None = None
        self.sort_desc = True
        self.top_pos = 0
        self.current: int | None = None
        self._infos: dict[int, dict[str, Any]] = {}
        self._summaries: dict[int, Text] = {}
        self._steps: dict[tuple[int, int], str] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([], prompt="SAE", id="sae-select", compact=True)
        yield Static("Reading SAE features…", id="features-info")
        with Horizontal(id="features-body"):
            yield FastTable(id="latents", cursor_type="row")
            with Vertical(id="latent-side"):
                yield TextPanel(id="latent-summary")
                yield TextPanel(id="latent-steps")
        yield LabFooter()

    def on_mount(self) -> None:
        self.sub_title = f"features — {self.run_name}"
        saes = [p.name for p in self.run_layout.sae_dirs()]
        if not saes:
            self.query_one("#features-info", Static).update(Text(
                f"No SAEs for {self.run_name} yet: train one with `rl-lab sae {self.run_name} --hook NAME` "
                "(or A on the run's detail screen).", style="italic"))
            return
        chosen = self.sae_name if self.sae_name in saes else saes[-1]
        self.sae_name = chosen  # before the select announces it, so it is loaded once
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
        """Open the feature statistics of SAE ``sae`` in a worker."""
        self.sae_name = sae
        store, error = load_store(self.run_layout.sae_dir(sae))
        self.post_message(FeaturesLoaded(store, error))

    def on_features_loaded(self, message: FeaturesLoaded) -> None:
        message.stop()
        self.store, self.error = message.store, message.error
        self._infos.clear()
        self._summaries.clear()
        self._steps.clear()
        self.current = None
        info = self.query_one("#features-info", Static)
        if self.store is None:
            info.update(Text(message.error or "no feature statistics", style="bold red" if "cannot" in (message.error or "") else "italic"))
            self.query_one("#latents", FastTable).clear(columns=True)
            self.order = []
            for panel in self.query(TextPanel):
                panel.text = ""
            return
        store = self.store
        alive = int((store.arrays["density"] > 0).sum())
        labels = ", ".join(f"{n} ({m['kind'][:4]})" for n, m in store.labels.items()) or "none"
        info.update(f"{self.sae_name}: {store.d_sae} latents ({alive} fire) · hook {store.index.get('hook_name', '?')} · "
                    f"{store.index.get('n_rows', '?')} rows · labels: {labels}")
        self.sort_label, self.sort_desc = None, True
        self._fill_table()

    def _fill_table(self) -> None:
        store = self.store
        if store is None:
            return
        table = self.query_one("#latents", FastTable)
        table.clear(columns=True)
        table.add_column("latent", key="index")
        table.add_column("density", key="density")
        label = self.sort_label
        density = store.arrays["density"]
        shown = None
        if label:
            kind = store.labels[label]["kind"]
            table.add_column(f"{label[:10]} {'r' if kind == 'continuous' else 'AUC'}", key="assoc")
            order = store.sorted_by("association", label, self.sort_desc)
            shown = store.scores("pearson" if kind == "continuous" else "auroc", label)
        else:
            order = store.sorted_by("density", None, self.sort_desc)
        self.order = [int(i) for i in order]
        rows = []
        for i in self.order:
            row = [str(i), fmt_num(float(density[i]))]
            if shown is not None:
                v = float(shown[i])
                row.append("—" if v != v else f"{v:+.3f}")
            rows.append((str(i), row))
        table.add_keyed_rows(rows)
        if self.order:
            table.move_cursor(row=0, animate=False)
            self.show_latent(self.order[0])

    @on(FastTable.RowHighlighted, "#latents")
    def _highlighted(self, event: FastTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.show_latent(int(event.row_key.value))

    def latent_info(self, index: int) -> dict[str, Any]:
        """``FeatureStore.latent(index)``, computed once per latent."""
        info = self._infos.get(index)
        if info is None:
            assert self.store is not None
            info = self._infos[index] = self.store.latent(index)
        return info

    def show_latent(self, index: int) -> None:
        """Show latent ``index``: cached panels, two redraws, no layout."""
        if self.store is None:
            return
        if self.current != index:
            self.top_pos = 0
        self.current = index
        summary = self._summaries.get(index)
        if summary is None:
            summary = self._summaries[index] = latent_summary(self.latent_info(index))
        key = (index, self.top_pos)
        steps = self._steps.get(key)
        if steps is None:
            steps = self._steps[key] = top_step_text(self.latent_info(index), self.top_pos)
        self.query_one("#latent-summary", TextPanel).text = summary
        self.query_one("#latent-steps", TextPanel).text = steps

    # ------------------------------------------------------------------ actions

    def action_sort_density(self) -> None:
        if self.sort_label is None:
            self.sort_desc = not self.sort_desc
        else:
            self.sort_label, self.sort_desc = None, True
        self._fill_table()

    def action_sort_label(self) -> None:
        labels = list(self.store.labels) if self.store else []
        if not labels:
            self.notify("these feature statistics have no labels", severity="warning")
            return
        i = labels.index(self.sort_label) if self.sort_label in labels else -1
        self.sort_label, self.sort_desc = labels[(i + 1) % len(labels)], True  # the column header names it
        self._fill_table()

    def action_top(self, delta: int) -> None:
        if self.current is None or self.store is None:
            return
        top = self.latent_info(self.current).get("top") or []
        if not top:
            return
        self.top_pos = (self.top_pos + delta) % len(top)
        self.show_latent(self.current)
