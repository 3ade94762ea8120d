"""Learning curves at equal environment steps: how competent each RL agent was, and when.

Every RL run logs, after each rollout, ``episode_return`` to ``metrics.jsonl``: the mean return of
its last (up to) 100 finished training episodes, at the environment step ``step``. The curve of a
run at a mark ``m`` is the last logged value at or before ``m`` — what the run had achieved by
then — provided the run trained past ``m`` (a run still training, or cut, has no value at the
marks it has not reached, rather than its last value carried forward).

Runs are grouped as ``rl-lab compare`` groups them (``run.json``'s ``agent`` key, ``algo`` or any
dotted key); each group's cell is the mean over its runs (seeds) with a 95% t-interval across
them (``probes.stats.t_interval``), so "the PPO-transformer's return against PPO-MLP's at equal
steps" reads off one table. Runs trained by supervision (DT, BC: gradient steps, no training
episodes) have no such curve and are named in the notes; their competence is ``eval.json``'s.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from rl_lab.compare import group_key, seed_interval
from rl_lab.config import DT_ALGOS
from rl_lab.errors import LabError
from rl_lab.runs import Run, RunStore

METRIC = "episode_return"
"""The ``metrics.jsonl`` key the curves read: mean return of the last 100 training episodes."""
DEFAULT_MARKS = 10
"""Marks when none are given: this many, evenly spaced up to the longest run's last logged step
(those before every run's first log left out; the last step alone if that leaves none)."""
_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_step(text: str) -> int:
    """One environment step count: ``150000``, ``150k``, ``1.6M`` (a positive whole number)."""
    match = _STEP.match(str(text))
    if not match:
        raise LabError(f"bad step {text!r}: expected a positive number of environment steps such as 200000, "
                       "200k or 1.6M")
    number = float(match.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    if number < 1 or number != int(number):
        raise LabError(f"bad step {text!r}: expected a positive whole number of environment steps")
    return int(number)


def parse_marks(text: str) -> list[int]:
    """``"100k,200k,1.6M"`` -> ``[100000, 200000, 1600000]``: sorted, each once."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise LabError("--at names no step: give comma-separated environment steps such as 100k,200k,400k")
    return sorted({parse_step(p) for p in parts})


def default_marks(last_step: int, count: int = DEFAULT_MARKS) -> list[int]:
    """``count`` marks evenly spaced up to ``last_step``, the spacing rounded to two significant digits
    (1.6M steps: 160k, 320k, ..., 1.6M)."""
    if last_step < 1:
        return []
    spacing = last_step / count
    digits = max(0, int(math.floor(math.log10(spacing))) - 1)
    spacing = max(1, int(round(spacing / 10 ** digits)) * 10 ** digits)
    return [spacing * i for i in range(1, last_step // spacing + 1)]


def run_curve(run: Run) -> list[tuple[int, float]]:
    """``(step, episode_return)`` for each logged rollout of ``run``, in step order."""
    points = []
    for rec in run.metrics():
        value, step = rec.get(METRIC), rec.get("step")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and isinstance(step, (int, float)) and not isinstance(step, bool):
            points.append((int(step), float(value)))
    points.sort(key=lambda p: p[0])
    return points


def value_at(points: Sequence[tuple[int, float]], mark: int) -> float | None:
    """The last logged value at or before ``mark``; None before the first log or past the last."""
    if not points or mark > points[-1][0] or mark < points[0][0]:
        return None
    value = None
    for step, v in points:
        if step > mark:
            break
        value = v
    return value


def curves(run_names: Sequence[str], runs_dir: Any = None, marks: Sequence[int] | None = None,
           group_by: str = "agent") -> dict[str, Any]:
    """Every named RL run's training return at each mark, and each group's mean across its runs.

    Returns a JSON-ready document: ``marks``; ``runs`` (name, group, seed, last step, one value per
    mark, None where the run had not reached it); ``groups`` (per group, one cell per mark: mean,
    95% t-interval across runs, n); ``notes``.
    """
    if not run_names:
        raise LabError("name at least one run")
    runs = RunStore(runs_dir).get_distinct(run_names)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    for run in runs:
        points = run_curve(run)
        if not points:
            algo = run.info.get("algo")
            why = "trained by supervision: its competence is its eval.json" if algo in DT_ALGOS \
                else f"no {METRIC} logged yet"
            notes.append(f"run {run.name}: no training-return curve ({why})")
            continue
        rows.append({"name": run.name, "group": group_key(run, group_by), "algo": run.info.get("algo"),
                     "seed": run.info.get("seed"), "env_id": run.info.get("env_id"),
                     "status": run.status, "last_step": points[-1][0], "points": points})
    if not rows:
        raise LabError("none of the named runs logged a training return (episode_return in metrics.jsonl)")
    envs = sorted({str(r["env_id"]) for r in rows})
    if len(envs) > 1:
        raise LabError(f"the runs are in different environments ({', '.join(envs)}), whose returns are not "
                       "comparable: name runs of one environment")
    if marks:
        chosen = list(marks)
    else:  # the default marks a run can have a value at: none before the earliest first log
        longest, first = max(r["last_step"] for r in rows), min(r["points"][0][0] for r in rows)
        chosen = [m for m in default_marks(longest) if m >= first] or [longest]
    for r in rows:
        r["values"] = [value_at(r["points"], m) for m in chosen]
        if r["status"] != "done":
            notes.append(f"run {r['name']} is {r['status']} at step {r['last_step']}: no value past it")
    groups: dict[str, Any] = {}
    for g in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == g]
        cells = []
        for i in range(len(chosen)):
            values = [r["values"][i] for r in members if r["values"][i] is not None]
            if values:
                mean, ci = seed_interval(values)
                cells.append({"mean": mean, "ci": ci, "n": len(values)})
            else:
                cells.append(None)
        groups[g] = {"runs": [r["name"] for r in members], "cells": cells}
    return {
        "schema_version": 1,
        "metric": METRIC,
        "env_id": envs[0],
        "group_by": group_by,
        "marks": chosen,
        "runs": [{k: v for k, v in r.items() if k != "points"} for r in rows],
        "groups": groups,
        "notes": notes,
    }


def _step_text(step: int) -> str:
    """``160000`` -> ``160k``, ``1120000`` -> ``1.12M``; other counts as they are."""
    if step >= 1_000_000 and step % 10_000 == 0:
        return f"{step / 1_000_000:g}M"
    if step % 1_000 == 0:
        return f"{step // 1_000}k"
    return str(step)


def format_table(doc: dict[str, Any]) -> str:
    """The curves as text: each group's mean ± the half-width of its 95% t-interval across runs
    (n runs), then each run's own value, one column per mark."""
    marks = doc["marks"]
    name_width = max([len("group / run")] + [len(g) for g in doc["groups"]]
                     + [len(r["name"]) + 2 for r in doc["runs"]])

    def group_cell(cell: dict[str, Any] | None) -> str:
        if cell is None:
            return "-"
        if cell["ci"] is None:
            return f"{cell['mean']:+.2f}"
        return f"{cell['mean']:+.2f}±{(cell['ci'][1] - cell['ci'][0]) / 2:.2f}"

    grid = {g: [group_cell(c) for c in group["cells"]] for g, group in doc["groups"].items()}
    width = 2 + max([10] + [len(text) for cells in grid.values() for text in cells])
    lines = [f"training return ({doc['metric']}: mean of the last 100 training episodes) at equal environment "
             f"steps, {doc['env_id']}; groups by {doc['group_by']}: mean ± 95% t-interval across runs",
             f"{'group / run':<{name_width}}  " + "".join(f"{_step_text(m):>{width}}" for m in marks)]
    lines.append("-" * len(lines[-1]))
    for g, group in doc["groups"].items():
        lines.append(f"{g:<{name_width}}  " + "".join(text.rjust(width) for text in grid[g])
                     + f"   (n={len(group['runs'])})")
        for r in doc["runs"]:
            if r["group"] != g:
                continue
            vals = "".join(f"{'-':>{width}}" if v is None else f"{v:>+{width}.2f}" for v in r["values"])
            lines.append(f"{'  ' + r['name']:<{name_width}}  " + vals)
    for note in doc["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
