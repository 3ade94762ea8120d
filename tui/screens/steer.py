"""A steering result (``RUN/steer/<time>.json``): the dose-response curve against the control band.

For the chosen metric the chart draws the direction's effect (its mean minus the clean policy's)
at every scale, over the band the random control directions span at each scale (their range of
effects); below it, the per-scale numbers, the control percentile and the prediction's verdict.
``m`` cycles through the metrics. An intervention result (``rl-lab intervene``) in the same folder
is shown as its text summary. A binding steering result (``python -m rl_lab.steer.binding``) draws
the rate of reaching the steered object against the controls' band, pooled over the four corners
and (``m``) corner by corner, with the reach rates per object below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Header, Static

from tui.charts import fmt_num
from tui.screens.base import RunScreen
from tui.widgets.chart import BandChart
from tui.widgets.footer import LabFooter


def dose_response(doc: dict[str, Any], metric: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(scales, direction effects, control band low, control band high)`` of ``metric``."""
    eff = doc["effects"][metric]
    clean = eff["clean"]["mean"]
    effects = [p["effect"] for p in eff["direction"]]
    lows, highs = [], []
    for i, p in enumerate(eff["controls"]):
        band = [m - clean for m in p.get("means") or []] or [effects[i]]
        lows.append(min(band + [effects[i]]))
        highs.append(max(band + [effects[i]]))
    order = sorted(range(len(doc["scales"])), key=lambda i: doc["scales"][i])
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return pick([float(s) for s in doc["scales"]]), pick(effects), pick(lows), pick(highs)


def result_text(doc: dict[str, Any], metric: str) -> Text:
    """The numbers under the chart: per scale, the direction's effect with its CI and the band."""
    eff = doc["effects"][metric]
    text = Text()
    text.append(f"{metric}", style="bold")
    text.append(f"  clean {fmt_num(eff['clean']['mean'])}   {eff.get('description', '')}\n")
    for p, c, s in zip(eff["direction"], eff["controls"], doc["scales"]):
        lo, hi = p["effect_ci"]
        rng = c.get("range") or [None, None]
        mark = " *" if p.get("exceeds_controls") else ""
        text.append(f"  scale {s:>6g}: effect {fmt_num(p['effect'])} [{fmt_num(lo)}, {fmt_num(hi)}]{mark}   "
                    f"controls' means {fmt_num(rng[0])}..{fmt_num(rng[1])}\n")
    if eff.get("control_percentile") is not None:
        stat = eff.get("statistic") or {}
        text.append(f"  {stat.get('name', 'effect')}: {fmt_num(stat.get('value'))}, at the "
                    f"{eff['control_percentile']:.0f}th percentile of the {doc.get('n_controls')} controls "
                    f"(empirical p = {eff['control_p_value']:.3g})\n")
    if doc.get("expect", {}).get("metric") == metric:
        text.append(doc["expect"]["sentence"] + "\n", style="bold green" if doc["expect"]["confirmed"] else "bold red")
    if doc.get("erasure"):
        er = doc["erasure"]
        text.append(f"  LEACE of {er['label']}: probe {er['metric']} {fmt_num(er['before'])} -> {fmt_num(er['after'])} "
                    f"(baseline {fmt_num(er['baseline'])})\n")
    text.append(doc.get("summary", ""), style="italic")
    return text


def intervention_text(doc: dict[str, Any], top: int = 20) -> Text:
    """An intervention result: what the world did, the value, the probes that moved most."""
    do = doc.get("do", {})
    text = Text(f"do {do.get('target')} at step {doc.get('at_step')}: {do.get('description', '')}\n", style="bold")
    text.append(f"{doc.get('n_used')} episodes; shifts in units of each reading's spread over the recording\n")
    for name, v in (doc.get("latents") or {}).items():
        text.append(f"  world {name}: {fmt_num(v['before'])} -> {fmt_num(v['after'])}\n")
    value = doc.get("value") or {}
    text.append(f"  value: {fmt_num(value.get('before'))} -> {fmt_num(value.get('after'))}\n")
    probes = sorted((p for p in doc.get("probes", []) if p.get("shift") is not None), key=lambda p: -abs(p["shift"]))
    for p in probes[:top]:
        lo, hi = p["shift_ci"]
        text.append(f"  {p['label']}@{p['hook']}: {p['shift']:+.2f} [{lo:+.2f}, {hi:+.2f}]\n",
                    style="bold" if p.get("excludes_zero") else "")
    return text


BINDING_KIND = "binding_steer"
"""The ``kind`` of a ``python -m rl_lab.steer.binding`` document."""


def binding_views(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The binding document's views: ``("pooled", ...)`` then one per corner."""
    views = [("pooled over the corners", doc["pooled"])]
    views += [(f"corner {c.get('name', c.get('corner'))}", c) for c in doc.get("corners", [])]
    return views


def binding_curve(doc: dict[str, Any], view: dict[str, Any]) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(scales, steered-object rate minus clean, control band low, high)`` of one view."""
    clean = view["clean"]["steered"]
    xs, ys, lo, hi = [], [], [], []
    for r in sorted(view["results"], key=lambda r: r["scale"]):
        band = [m - clean for m in r["controls"].get("steered_means") or []] or [r["steered"] - clean]
        xs.append(float(r["scale"]))
        ys.append(r["steered"] - clean)
        lo.append(min(band + [ys[-1]]))
        hi.append(max(band + [ys[-1]]))
    return xs, ys, lo, hi


def binding_text(doc: dict[str, Any], name: str, view: dict[str, Any]) -> Text:
    """Per scale: the steered-object rate with its CI against the controls, and where episodes ended."""
    text = Text()
    clean = view["clean"]
    text.append(f"{name}", style="bold")
    text.append(f"  clean: steered object {clean['steered']:.1%}; by role "
                + ", ".join(f"{k} {v:.0%}" for k, v in clean["role_rates"].items()) + "\n")
    for r in sorted(view["results"], key=lambda r: r["scale"]):
        lo, hi = r["steered_ci"]
        mark = " *" if r.get("beats_every_control") and r.get("ci_excludes_clean") else ""
        text.append(f"  scale {r['scale']:>4g}: steered object {r['steered']:.1%} [{lo:.1%}, {hi:.1%}]{mark}  "
                    f"controls mean {r['controls']['mean']:.1%}, max {r['controls']['max']:.1%} "
                    f"(p = {r['control_p_value']:.3g})   ended: "
                    + ", ".join(f"{k} {v:.0%}" for k, v in r["rates"].items()) + "\n")
    verdict = doc.get("verdict") or {}
    if verdict.get("sentence"):
        text.append(verdict["sentence"], style="bold green" if verdict.get("moves_to_steered_object") else "bold red")
    return text


class SteerScreen(RunScreen):
    """One steering result: its dose-response curve with the control band, metric by metric."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="steer.back"),
        Binding("m", "next_metric", "Next metric", id="steer.metric"),
    ]

    def __init__(self, run_name: str, path: Path | str) -> None:
        """Args: run_name: the run. path: the result file (``RUN/steer/<name>.json``)."""
        super().__init__(run_name)
        self.path = Path(path)
        self.doc: dict[str, Any] = {}
        self.metrics: list[str] = []
        self.metric = ""
        self.views: list[tuple[str, dict[str, Any]]] = []  # a binding result's views (pooled, corners)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="steer-info")
        yield BandChart(id="steer-chart")
        yield Static("", id="steer-numbers")
        yield LabFooter()

    def on_mount(self) -> None:
        self.sub_title = f"steer — {self.run_name} — {self.path.name}"
        info = self.query_one("#steer-info", Static)
        try:
            self.doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            info.update(Text(f"cannot read {self.path.name}: {exc}", style="red"))
            return
        if self.doc.get("kind") == "intervene":
            info.update(intervention_text(self.doc))
            self.query_one("#steer-chart", BandChart).display = False
            return
        if self.doc.get("kind") == BINDING_KIND and "pooled" in self.doc:
            d = self.doc
            probe = d.get("probe") or {}
            info.update(Text(f"target-cell directions at {d.get('hook')} (probe held-out accuracy "
                             f"{probe.get('held_out_accuracy', float('nan')):.3f}); {d.get('episodes')} episodes, "
                             f"{d.get('n_controls')} controls per corner\nscale: {d.get('scale_unit', '')}"))
            self.views = binding_views(d)
            self.metrics = [name for name, _ in self.views]
            self.metric = self.metrics[0]
            self.show()
            return
        if "effects" not in self.doc:
            info.update(Text(f"{self.path.name} is not a steering result", style="red"))
            return
        d = self.doc
        info.update(Text(f"{d['direction']['spec']} at {d['hook']}, mode {d['mode']}; {d['episodes']} episodes, "
                         f"{d['n_controls']} controls\nscale: {d.get('scale_unit', '')}"))
        self.metrics = list(d["effects"])
        self.metric = d.get("primary_metric") if d.get("primary_metric") in self.metrics else self.metrics[0]
        self.show()

    def show(self) -> None:
        if self.views:
            view = dict(self.views)[self.metric]
            xs, ys, lo, hi = binding_curve(self.doc, view)
            self.query_one("#steer-chart", BandChart).set_data(
                xs, ys, lo, hi, title=f"{self.metric}: steered-object rate minus clean vs scale "
                                      "(curve: the direction; band: the controls' range)")
            self.query_one("#steer-numbers", Static).update(binding_text(self.doc, self.metric, view))
            return
        xs, ys, lo, hi = dose_response(self.doc, self.metric)
        self.query_one("#steer-chart", BandChart).set_data(
            xs, ys, lo, hi, title=f"{self.metric}: effect vs scale (curve: the direction; band: the controls' range)")
        self.query_one("#steer-numbers", Static).update(result_text(self.doc, self.metric))

    def action_next_metric(self) -> None:
        if not self.metrics:
            return
        self.metric = self.metrics[(self.metrics.index(self.metric) + 1) % len(self.metrics)]
        self.show()
