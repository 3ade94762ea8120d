"""Results over seeds: per condition, the mean and a t-interval across seeds.

A condition is everything that defines a trial except its seed (environment, algorithm,
grid values). Seeds are the unit of replication: the interval says how much the mean would
move with other seeds, which is what a claim about an agent needs. With 2-5 seeds a percentile
bootstrap is far too narrow, so the interval is Student's t with ``n - 1`` degrees of freedom,
the lab's one rule for intervals across seeds (``probes.stats.t_interval``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from probes.stats import CONFIDENCE, t_interval
from rl_lab.compare import format_table


def seed_ci(values: Sequence[float | None], confidence: float = CONFIDENCE) -> list[float] | None:
    """t-interval ``[low, high]`` of the mean across seeds; ``None`` with fewer than two values."""
    _, low, high = t_interval(values, confidence)
    return [low, high] if np.isfinite(low) else None


def summarise(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"n", "mean", "std", "ci"}`` of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": None, "std": None, "ci": None}
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "ci": seed_ci(x.tolist())}


def _stage(trial: Mapping[str, Any], stage: str) -> Mapping[str, Any] | None:
    out = (trial.get("stages") or {}).get(stage)
    return out if out and out.get("status") == "done" else None


def aggregate_returns(trials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per condition: final training return and recorded (evaluation) return over seeds."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for trial in trials:
        groups[trial["condition"]].append(trial)
    rows = []
    for condition, members in groups.items():
        train = [(_stage(t, "train") or {}).get("final_return") for t in members]
        evals = [(_stage(t, "record") or {}).get("eval_return") for t in members]
        rows.append({
            "condition": condition,
            "env_id": members[0]["env_id"],
            "algo": members[0]["algo"],
            "params": members[0]["params"],
            "seeds": [t["seed"] for t in members if _stage(t, "train")],
            "train_return": summarise(train),
            "eval_return": summarise(evals),
        })
    return rows


def aggregate_probes(trials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per condition x hook x label: held-out probe score and selectivity over seeds."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, Mapping[str, Any]]]] = defaultdict(list)
    for trial in trials:
        probe = _stage(trial, "probe")
        if not probe:
            continue
        for rec in probe.get("records", []):
            key = (trial["condition"], str(rec.get("hook")), str(rec.get("label")), str(rec.get("metric")))
            groups[key].append((trial["seed"], rec))
    rows = []
    for (condition, hook, label, metric), recs in groups.items():
        rows.append({
            "condition": condition, "hook": hook, "label": label, "metric": metric,
            "seeds": [s for s, _ in recs],
            "score": summarise([_num(r.get("score")) for _, r in recs]),
            "selectivity": summarise([_num(r.get("selectivity")) for _, r in recs]),
        })
    rows.sort(key=lambda r: (r["condition"], r["label"], r["hook"]))
    return rows


def aggregate_saes(trials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per condition x hook: every numeric SAE metric over seeds."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for trial in trials:
        sae = _stage(trial, "sae")
        if sae:
            groups[(trial["condition"], str(sae.get("hook")))].append(sae.get("metrics") or {})
    rows = []
    for (condition, hook), metrics in groups.items():
        keys = sorted({k for m in metrics for k in m})
        rows.append({"condition": condition, "hook": hook, "n": len(metrics),
                     "metrics": {k: summarise([_num(m.get(k)) for m in metrics]) for k in keys}})
    return rows


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- tables
def _fmt(stat: Mapping[str, Any]) -> str:
    if stat.get("mean") is None:
        return "-"
    text = f"{stat['mean']:.3f}"
    if stat.get("ci"):
        text += f" [{stat['ci'][0]:.3f}, {stat['ci'][1]:.3f}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_tables(aggregate: Mapping[str, Any]) -> str:
    """The aggregate as plain-text tables: returns, best probe per label, SAEs."""
    parts = []
    returns = aggregate.get("returns") or []
    if returns:
        rows = [[r["condition"], str(r["train_return"]["n"]), _fmt(r["train_return"]), _fmt(r["eval_return"])]
                for r in returns]
        parts.append("returns over seeds (mean [95% t-interval across seeds])\n"
                     + _table(["condition", "seeds", "train return", "recorded return"], rows))
    probes = aggregate.get("probes") or []
    if aggregate.get("compare"):
        parts.append("probes over seeds by condition (rl_lab.compare: best hook per label, 95% t-interval)\n"
                     + format_table(aggregate["compare"]))
    elif probes:
        best: dict[tuple[str, str], Mapping[str, Any]] = {}
        for row in probes:
            key = (row["condition"], row["label"])
            mean = row["score"]["mean"]
            if mean is not None and (key not in best or mean > best[key]["score"]["mean"]):
                best[key] = row
        rows = [[r["condition"], r["label"], r["hook"], r["metric"], str(r["score"]["n"]), _fmt(r["score"]),
                 _fmt(r["selectivity"])] for r in best.values()]
        parts.append("probes: best hook per label over seeds (held-out score; all rows in the sweep record)\n"
                     + _table(["condition", "label", "hook", "metric", "seeds", "score", "selectivity"], rows))
    saes = aggregate.get("saes") or []
    if saes:
        keys = [k for k in ("explained_variance", "fvu", "l0", "dead_fraction")
                if any(k in r["metrics"] for r in saes)]
        rows = [[r["condition"], r["hook"], str(r["n"]), *(_fmt(r["metrics"].get(k, {})) for k in keys)]
                for r in saes]
        parts.append("sparse autoencoders over seeds\n" + _table(["condition", "hook", "seeds", *keys], rows))
    parts += [f"note: {n}" for n in aggregate.get("notes") or []]
    return "\n\n".join(parts)
