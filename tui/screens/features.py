"""Features: an SAE's latents, sortable by density or by association with a label.

The statistics are the ones ``probes.features`` writes next to the SAE
(``RUN/saes/<name>/features.json`` + ``features.npz``), read once in a worker through
``probes.features.FeatureStore``. The store holds everything a latent shows, the text views of
its top-activating steps and their neighbours included, so switching latents is a dictionary
look-up (a cache of rendered panels, filled from ``FeatureStore.latent``) and two redraws of
fixed-size panels: no file is read and no worker is started per switch.

Beside them, the SAE's ``metrics.json`` (read in the same worker) gives what only the run's
network can: ``views`` written by ``rl-lab sae`` (``rl_lab.sae_splice.feature_views``) — each
latent's logit effect on the actions, the per-step reconstruction error against L0, which
labels are environment variables, and for a decision transformer the attention of the state
token over its context at several return-to-go targets — and the held-out metrics
(``loss_recovered`` and the live return). Tabs: ``1`` latent, ``2`` SAE, ``3`` attention.
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
from textual.widgets import Header, Select, Static, TabbedContent, TabPane

from probes.layout import SAELayout
from tui.charts import column_chart, fmt_num, scatter_lines, shade
from tui.data import read_sae_metrics, read_sae_slots
from tui.messages import FeaturesLoaded
from tui.screens.base import RunScreen
from tui.widgets.panel import TextPanel
from tui.widgets.footer import LabFooter
from tui.widgets.table import FastTable

if TYPE_CHECKING:
    from probes.features import FeatureStore


ENV_SOURCE = "environment"
"""``derived_from`` of the labels that are the environment's own variables (its latents)."""


def _heldout_suffix(score: dict[str, Any]) -> str:
    """`` (held-out +0.84)`` when the score has a held-out value."""
    from probes.features import heldout_score  # loaded with the store (numpy): not at start-up

    held = heldout_score(score)
    if held is score:
        return ""
    v = held.get("pearson") if held.get("kind") == "continuous" else held.get("auroc")
    return " (held-out " + ("—" if v is None else (f"{v:+.2f}" if held.get("kind") == "continuous" else f"{v:.2f}")) + ")"


def logit_effect_text(views: dict[str, Any], index: int, n: int = 3) -> str | None:
    """``up +0.31  left +0.12 · down −0.25``: the largest positive and negative action-logit
    changes of latent ``index``'s decoder direction (None when not computed)."""
    effects = views.get("logit_effects")
    if not effects or index >= len(effects):
        return None
    row = effects[index]
    names = views.get("action_names") or [f"a{i}" for i in range(len(row))]
    order = sorted(range(len(row)), key=lambda j: -row[j])
    up = [f"{names[j]} {row[j]:+.2f}" for j in order[:n] if row[j] > 0]
    down = [f"{names[j]} {row[j]:+.2f}" for j in reversed(order[-n:]) if row[j] < 0]
    return "  ".join(up) + ("  ·  " if up and down else "") + "  ".join(down)


def slot_text(index: int, d_sae: int, slots: int) -> str:
    """Where latent ``index`` of a binding SAE sits: its slot, its feature and the same feature's
    latents in the other slots (``probes.sae.binding``: latent ``j * m + i`` is feature ``i`` of
    slot ``j``, ``m = d_sae / slots``)."""
    m = d_sae // slots
    slot, feature = divmod(int(index), m)
    partners = ", ".join(f"{j * m + feature} (slot {j})" for j in range(slots) if j != slot)
    return f"slot {slot} of {slots}, feature {feature}; the same feature in the other slots: {partners}"


def latent_summary(info: dict[str, Any], views: dict[str, Any] | None = None, slots: int = 1,
                   d_sae: int = 0) -> Text:
    """Density, activation range, held-out label and env-variable associations, the activation
    histogram, the decoder direction's effect on the actions and the top steps of one latent.

    Args:
        info: ``FeatureStore.latent(i)``.
        views: the SAE's ``metrics.json`` ``views`` (``rl_lab.sae_splice.feature_views``), or None.
        slots, d_sae: a binding SAE's slots and width (``slots`` 1: any other SAE).
    """
    from probes.features import heldout_score, label_score_text, score_strength  # loaded with the store

    views = views or {}
    text = Text(f"latent {info['index']}", style="bold")
    text.append(f"   density {fmt_num(info['density'])}   max {fmt_num(info['max_activation'])}"
                f"   mean when firing {fmt_num(info['mean_activation'])}\n")
    if slots > 1 and d_sae:
        text.append("binding ", style="dim")
        text.append(slot_text(int(info["index"]), d_sae, slots) + "\n")
    labels = info.get("labels") or {}
    sources = views.get("label_sources") or {}
    env_vars = {k: v for k, v in labels.items() if sources.get(k) == ENV_SOURCE}
    others = {k: v for k, v in labels.items() if k not in env_vars}
    for title, group in (("env variables", env_vars), ("labels", others)):
        if group:  # ranked by the held-out association; all rows first, held-out in brackets
            ranked = sorted(group.items(), key=lambda kv: -score_strength(heldout_score(kv[1])))[:2]
            text.append(f"{title} ", style="dim")
            text.append("   ".join(label_score_text(k, v) + _heldout_suffix(v) for k, v in ranked))
            text.append("\n")
    effect = logit_effect_text(views, int(info["index"]))
    if effect is not None:
        text.append("logit effect ", style="dim")
        text.append(effect or "none")
        text.append("\n")
    hist = info.get("histogram") or {}
    counts = hist.get("counts") or []
    if any(counts):
        edges = hist.get("edges") or []
        span = f", 0 … {fmt_num(edges[-1])}" if edges else ""
        text.append(f"histogram (log counts{span}; silent on {hist.get('zero', 0)})\n", style="dim")
        for line in column_chart([math.log1p(c) for c in counts], 40, 3):
            text.append("  " + line + "\n", style="green")
    else:
        text.append("never fires on the analysed file\n", style="italic")
    return text


def top_step_text(info: dict[str, Any], pos: int, width: int = 84) -> str:
    """The env's picture of top step ``pos`` of a latent beside its stored neighbours (same
    episode), as recorded (``/steps/text``: the env's text render); side by side when they fit
    in ``width`` columns, else in rows of as many as fit."""
    top = info.get("top") or []
    if not top:
        return "This latent never fires on the analysed file, so it has no top-activating steps."
    step = top[pos % len(top)]
    lines = [f"top step {pos % len(top) + 1}/{len(top)}: row {step['row']} · episode {step['episode']} · "
             f"t {step['t']} · activation {fmt_num(step['activation'])}   ([ ] for the others)"]
    context = step.get("context") or [{"offset": 0, "row": step["row"], "text": step.get("text", "")}]
    columns = []
    for ctx in context:
        marker = "▶" if ctx["offset"] == 0 else " "
        body = (ctx.get("text") or "(no text view recorded)").splitlines()
        columns.append([f"{marker} row {ctx['row']} · t {step['t'] + ctx['offset']}"] + ["  " + b for b in body])
    col_w = max(len(line) for col in columns for line in col) + 2
    per_row = max(1, width // col_w)
    for lo in range(0, len(columns), per_row):
        group = columns[lo:lo + per_row]
        height = max(len(c) for c in group)
        for i in range(height):
            lines.append("".join((c[i] if i < len(c) else "").ljust(col_w) for c in group).rstrip())
    return "\n".join(lines)


def _num(v: Any, fmt: str = ".3f") -> str:
    return "—" if not isinstance(v, (int, float)) else format(v, fmt)


def sae_text(metrics: dict[str, Any], width: int = 60) -> Text:
    """The SAE's held-out metrics (``loss_recovered`` and the live return included) and the
    per-step reconstruction error against L0 (``views.recon``) as a scatter plot."""
    if not metrics:
        return Text("This SAE has no metrics.json.", style="italic")
    text = Text(f"{metrics.get('architecture', '?')} SAE on {metrics.get('hook_name', '?')}: "
                f"{metrics.get('d_sae', '?')} latents, {metrics.get('test_rows', '?')} held-out steps\n", style="bold")
    text.append(f"L0 {_num(metrics.get('l0'), '.2f')}   explained variance {_num(metrics.get('explained_variance'), '.4f')}   "
                f"MSE {_num(metrics.get('mse'), '.4g')}\ndead {_num(metrics.get('dead_fraction'), '.1%')}   "
                f"dense {_num(metrics.get('dense_fraction'), '.1%')}\n")
    if metrics.get("loss_clean") is not None:
        text.append(f"action loss: clean {_num(metrics['loss_clean'], '.4f')}  spliced {_num(metrics.get('loss_spliced'), '.4f')}  "
                    f"zero-ablated {_num(metrics.get('loss_zero_ablated'), '.4f')}  mean-ablated "
                    f"{_num(metrics.get('loss_mean_ablated'), '.4f')}\n")
        text.append(f"loss recovered {_num(metrics.get('loss_recovered'))} (zero ablation)   "
                    f"{_num(metrics.get('loss_recovered_mean_ablation'))} (mean ablation)\n", style="bold")
    if metrics.get("return_clean") is not None:
        text.append(f"live return: clean {_num(metrics['return_clean'])}  spliced {_num(metrics.get('return_spliced'))}  "
                    f"mean-ablated {_num(metrics.get('return_mean_ablated'))}; recovered "
                    f"{_num(metrics.get('return_recovered'), '.2f')}\n")
    recon = (metrics.get("views") or {}).get("recon") or {}
    if recon.get("l0"):
        text.append(f"\nreconstruction error (MSE) against L0, one dot per held-out step ({len(recon['l0'])}):\n",
                    style="dim")
        for line in scatter_lines(recon["l0"], recon["mse"], width, 10, x_label="L0", y_label="MSE"):
            text.append(line + "\n")
        if len(set(recon["l0"])) == 1:
            text.append(f"every step has L0 {recon['l0'][0]}: a TopK SAE keeps k latents (fewer only where "
                        "pre-activations are negative), so the spread is in the error alone\n", style="dim")
    else:
        text.append("\nno per-step reconstruction data: train the SAE with `rl-lab sae RUN --hook NAME`\n", style="italic")
    return text


def attention_text(views: dict[str, Any], step: int = 0) -> Text:
    """For held-out step ``step`` of ``views.attention``: each head's attention from the state
    token over the context tokens (R, s, a; one cell each, darker = more), one row per
    return-to-go target, and the share of attention on the return-to-go tokens."""
    att = views.get("attention")
    if not att or not att.get("steps"):
        return Text("Attention patterns are shown for decision-transformer (dt/bc) runs, from `rl-lab sae RUN "
                    "--hook NAME` on such a run; this network has none.", style="italic")
    steps = att["steps"]
    st = steps[step % len(steps)]
    tokens = att["tokens"]
    kinds = "".join(t[0] for t in tokens)
    targets = att["targets"]
    text = Text(f"step {step % len(steps) + 1}/{len(steps)} (n for the next): row {st['row']} · episode "
                f"{st['episode']} · t {st['t']}; the state token's attention over the context\n", style="bold")
    text.append("tokens " + " " * 8 + kinds + "   (R return-to-go, s state, a action; the current step last)\n", style="dim")
    for layer in range(att["layers"]):
        for head in range(att["heads"]):
            text.append(f"L{layer}H{head}\n", style="bold")
            for j, target in enumerate(targets):
                row = st["patterns"][j][layer][head]
                top = max(row) or 1.0
                on_r = sum(v for v, k in zip(row, kinds) if k == "R")
                name = "target " + (f"{target:+.2f}" if target is not None else "—")
                mark = "*" if target is not None and abs(target - att.get("record_target", float("nan"))) < 1e-6 else " "
                text.append(f"  {name:<12}{mark}" + "".join(shade(v, top) for v in row))
                best = max(range(len(row)), key=lambda i: row[i])
                text.append(f"  max {tokens[best]} {row[best]:.2f}" + (f", on R {on_r:.2f}" if "R" in kinds else "") + "\n")
    text.append("* the recording's target", style="dim")
    return text


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
        Binding("1", "tab('tab-latent')", "Latent tab", show=False),
        Binding("2", "tab('tab-sae')", "SAE tab", show=False),
        Binding("3", "tab('tab-attention')", "Attention tab", show=False),
        Binding("n", "attention_step", "Next attention step", show=False),
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
        self.metrics: dict[str, Any] = {}
        self._loaded_metrics: dict[str, Any] = {}
        self.slots = 1
        self._loaded_slots = 1
        self.attention_step = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([], prompt="SAE", id="sae-select", compact=True)
        yield Static("Reading SAE features…", id="features-info")
        with Horizontal(id="features-body"):
            yield FastTable(id="latents", cursor_type="row")
            with TabbedContent(id="latent-side", initial="tab-latent"):
                with TabPane("1 latent", id="tab-latent"):
                    with Vertical():
                        yield TextPanel(id="latent-summary")
                        yield TextPanel(id="latent-steps")
                with TabPane("2 SAE", id="tab-sae"):
                    yield TextPanel(id="sae-panel")
                with TabPane("3 attention", id="tab-attention"):
                    yield TextPanel(id="attention-panel")
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
        self._loaded_metrics = read_sae_metrics(self.run_layout.sae_dir(sae))[0]  # read before the message
        self._loaded_slots = read_sae_slots(self.run_layout.sae_dir(sae))
        self.post_message(FeaturesLoaded(store, error))

    def on_features_loaded(self, message: FeaturesLoaded) -> None:
        message.stop()
        self.store, self.error = message.store, message.error
        self.metrics = self._loaded_metrics
        self.slots = self._loaded_slots
        self.attention_step = 0
        self.query_one("#sae-panel", TextPanel).text = sae_text(self.metrics)
        self.query_one("#attention-panel", TextPanel).text = attention_text(self.views, 0)
        self._infos.clear()
        self._summaries.clear()
        self._steps.clear()
        self.current = None
        info = self.query_one("#features-info", Static)
        if self.store is None:
            info.update(Text(message.error or "no feature statistics", style="bold red" if "cannot" in (message.error or "") else "italic"))
            self.query_one("#latents", FastTable).clear(columns=True)
            self.order = []
            for panel in self.query("#latent-summary, #latent-steps").results(TextPanel):
                panel.text = ""
            return
        store = self.store
        alive = int((store.arrays["density"] > 0).sum())
        labels = ", ".join(f"{n} ({m['kind'][:4]})" for n, m in store.labels.items()) or "none"
        binding = f" · binding SAE, {self.slots} slots of {store.d_sae // self.slots}" if self.slots > 1 else ""
        info.update(f"{self.sae_name}: {store.d_sae} latents ({alive} fire){binding} · hook {store.index.get('hook_name', '?')} · "
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
        m = store.d_sae // self.slots
        if self.slots > 1:
            table.add_column("slot·feature", key="slot")
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
            if self.slots > 1:
                row.append(f"{i // m}·{i % m}")
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
            summary = self._summaries[index] = latent_summary(self.latent_info(index), self.views, self.slots,
                                                              self.store.d_sae)
        key = (index, self.top_pos)
        steps = self._steps.get(key)
        if steps is None:
            steps = self._steps[key] = top_step_text(self.latent_info(index), self.top_pos)
        self.query_one("#latent-summary", TextPanel).text = summary
        self.query_one("#latent-steps", TextPanel).text = steps

    @property
    def views(self) -> dict[str, Any]:
        """``views`` of the SAE's metrics.json (empty when ``rl-lab sae`` did not write them)."""
        views = self.metrics.get("views")
        return views if isinstance(views, dict) else {}

    # ------------------------------------------------------------------ actions

    def action_tab(self, tab: str) -> None:
        self.query_one("#latent-side", TabbedContent).active = tab

    def action_attention_step(self) -> None:
        self.attention_step += 1
        self.query_one("#attention-panel", TextPanel).text = attention_text(self.views, self.attention_step)
        self.action_tab("tab-attention")

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
