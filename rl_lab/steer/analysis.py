"""Statistics of a steering experiment: bootstrap CIs, dose-response slopes, verdicts, the table.

Every interval is a percentile bootstrap over episodes. Episodes are paired across conditions
(common random numbers: episode i of every condition has the same seeds), so one resampling of
episode indices is applied to every condition at once and differences keep their pairing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rl_lab.errors import LabError

CI_LEVEL = 0.95
ZERO_TOL = 1e-12
"""Bounds closer to 0 than this count as 0 (sums of identical paired episodes leave ~1e-16 noise)."""


@dataclass
class Bootstrap:
    """One shared set of resampled episode indices: [n_boot, n_episodes]."""

    idx: np.ndarray

    @classmethod
    def make(cls, n_episodes: int, n_boot: int, seed: int) -> "Bootstrap":
        rng = np.random.default_rng([seed, 0xB007])
        return cls(rng.integers(0, n_episodes, size=(n_boot, n_episodes)))

    def means(self, y: np.ndarray) -> np.ndarray:
        """Bootstrap distribution of the mean over the last axis of ``y`` ([..., E] -> [n_boot, ...])."""
        return np.moveaxis(y[..., self.idx].mean(-1), -1, 0)


def ci(samples: np.ndarray) -> list[float]:
    """Percentile interval of bootstrap samples along axis 0."""
    lo, hi = np.quantile(samples, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2], axis=0)
    return [float(lo), float(hi)]


def slope(xs: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``means`` ([..., S]) against ``xs`` ([S])."""
    xc = xs - xs.mean()
    return (means * xc).sum(-1) / (xc * xc).sum()


def excludes_zero(interval: Sequence[float]) -> bool:
    """True if the interval lies wholly above or wholly below 0 (beyond float noise)."""
    return bool(interval[0] > ZERO_TOL or interval[1] < -ZERO_TOL)


def summarise_metric(
    boot: Bootstrap,
    clean: np.ndarray,
    direction: np.ndarray,
    controls: np.ndarray,
    scales: Sequence[float],
    slope_xs: np.ndarray | None,
    slope_rows: list[int | None] | None,
) -> dict[str, Any]:
    """Everything about one metric.

    Parameters
    ----------
    clean:
        [E] per-episode values without an edit.
    direction:
        [S, E] per scale.
    controls:
        [K, S, E] per random direction and scale.
    slope_xs, slope_rows:
        The x values of the dose-response regression and, for each, the scale index it reads
        (``None``: the clean episodes). ``None`` when there are fewer than two distinct x values.
    """
    K = controls.shape[0]
    b_clean = boot.means(clean)  # [n_boot]
    b_dir = boot.means(direction)  # [n_boot, S]
    b_ctl = boot.means(controls)  # [n_boot, K, S]
    per_scale_dir, per_scale_ctl = [], []
    for s, scale in enumerate(scales):
        d_eff = direction[s].mean() - clean.mean()
        c_means = controls[:, s].mean(-1)  # [K]
        c_eff = c_means - clean.mean()
        vs_ctl = b_dir[:, s] - b_ctl[:, :, s].mean(-1)
        beyond = bool(K > 0 and abs(d_eff) > np.abs(c_eff).max() and excludes_zero(ci(vs_ctl)))
        below = bool(K > 0 and abs(d_eff) < np.abs(c_eff).min() and excludes_zero(ci(vs_ctl)))
        per_scale_dir.append({
            "mean": float(direction[s].mean()),
            "ci": ci(b_dir[:, s]),
            "effect": float(d_eff),
            "effect_ci": ci(b_dir[:, s] - b_clean),
            "minus_controls": float(direction[s].mean() - c_means.mean()) if K else None,
            "minus_controls_ci": ci(vs_ctl) if K else None,
            "exceeds_controls": beyond,
            "below_controls": below,
        })
        per_scale_ctl.append({
            "mean": float(controls[:, s].mean()) if K else None,
            "ci": ci(b_ctl[:, :, s].mean(-1)) if K else None,
            "range": [float(c_means.min()), float(c_means.max())] if K else None,
            "means": [float(m) for m in c_means],
            "max_abs_effect": float(np.abs(c_eff).max()) if K else None,
        })
    out: dict[str, Any] = {
        "clean": {"mean": float(clean.mean()), "ci": ci(b_clean)},
        "direction": per_scale_dir,
        "controls": per_scale_ctl,
        "slope": None,
    }
    if slope_xs is not None and slope_rows is not None:
        def cols(b_one: np.ndarray, b_c: np.ndarray) -> np.ndarray:
            shape = b_one.shape[:-1]
            return np.stack([np.broadcast_to(b_c, shape) if r is None else b_one[..., r] for r in slope_rows],
                            axis=-1)

        def point(y_s: np.ndarray, y_c: np.ndarray) -> np.ndarray:
            return np.stack([y_c if r is None else y_s[..., r] for r in slope_rows], axis=-1)

        d_slope_b = slope(slope_xs, cols(b_dir, b_clean))  # [n_boot]
        c_slope_b = slope(slope_xs, cols(b_ctl, b_clean[:, None]))  # [n_boot, K]
        d_slope = float(slope(slope_xs, point(direction.mean(-1), clean.mean())))
        c_slopes = slope(slope_xs, point(controls.mean(-1), np.full(K, clean.mean()))) if K else np.zeros(0)
        diff = d_slope_b - c_slope_b.mean(-1) if K else d_slope_b
        out["slope"] = {
            "value": d_slope,
            "ci": ci(d_slope_b),
            "controls": [float(c) for c in c_slopes],
            "controls_ci": [ci(c_slope_b[:, k]) for k in range(K)],
            "minus_controls_ci": ci(diff) if K else None,
            "exceeds_controls": bool(K > 0 and abs(d_slope) > np.abs(c_slopes).max()
                                     and excludes_zero(ci(d_slope_b)) and excludes_zero(ci(diff))),
        }
    out["exceeds_controls"] = bool((out["slope"] or {}).get("exceeds_controls")
                                   or any(p["exceeds_controls"] for p in per_scale_dir))
    return out


# --------------------------------------------------------------------------- controls
UNSIGNED = ("kl", "action_change")
"""Metrics that are 0 for the clean policy and grow with any edit: summarised by their mean effect."""


def dose_statistic(name: str, eff: dict[str, Any], scales: Sequence[float]) -> tuple[str, float, list[float]]:
    """The one number per direction that ranks it among the controls, for metric ``name``:
    the dose-response slope; for KL and action change (which any edit raises) the mean effect over
    the scales; without a slope, the effect at the largest |scale|. Returns ``(what, direction,
    controls)``."""
    n_ctl = len(eff["controls"][0]["means"]) if eff["controls"] else 0
    clean = eff["clean"]["mean"]
    if name in UNSIGNED or eff["slope"] is None:
        cols = range(len(scales)) if name in UNSIGNED else [int(np.argmax(np.abs(scales)))]
        d = float(np.mean([eff["direction"][i]["effect"] for i in cols]))
        c = [float(np.mean([eff["controls"][i]["means"][k] - clean for i in cols])) for k in range(n_ctl)]
        what = "mean effect over scales" if name in UNSIGNED else f"effect at scale {scales[list(cols)[0]]:g}"
        return what, d, c
    return "slope", float(eff["slope"]["value"]), [float(v) for v in eff["slope"]["controls"]]


def control_rank(value: float, controls: Sequence[float], sign: str | None = None) -> dict[str, Any]:
    """Where ``value`` falls among the controls' values.

    Without ``sign`` the comparison is of magnitudes (|value| vs |control|); with ``"up"``/``"down"``
    it is one-sided in the predicted direction. ``control_percentile``: the percentage of controls
    below (ties count half); ``control_p_value``: (1 + controls at or beyond) / (K + 1), the
    empirical p-value of "a random direction does as much" (None without controls).
    """
    c = np.asarray(controls, dtype=np.float64)
    if sign is None:
        v, c = abs(value), np.abs(c)
    else:
        f = 1.0 if sign == "up" else -1.0
        v, c = f * value, f * c
    if len(c) == 0:
        return {"control_percentile": None, "control_p_value": None}
    below = float((c < v - ZERO_TOL).sum() + 0.5 * (np.abs(c - v) <= ZERO_TOL).sum())
    at_or_beyond = int((c >= v - ZERO_TOL).sum())
    return {"control_percentile": 100.0 * below / len(c), "control_p_value": (1 + at_or_beyond) / (len(c) + 1)}


# --------------------------------------------------------------------------- predictions
_EXPECT = re.compile(r"^\s*(?P<metric>[^\s:]+)\s*(?:\s|:)\s*(?P<sign>up|down)\s*$")


def parse_expect(text: str) -> tuple[str, str]:
    """``"METRIC up|down"`` or ``METRIC:up|down`` -> ``(metric, "up"|"down")``."""
    m = _EXPECT.match(text or "")
    if not m:
        raise LabError(f"malformed --expect {text!r}: expected \"METRIC up\", \"METRIC down\" or METRIC:up|down")
    return m["metric"], m["sign"]


def expect_verdict(metric: str, sign: str, summary: dict[str, Any], n_controls: int) -> dict[str, Any]:
    """Did the dose-response slope of ``metric`` have the predicted sign, a CI excluding 0, and
    exceed every random control's slope (with the CI of direction minus controls excluding 0)?"""
    sl = summary.get("slope")
    if sl is None:
        return {"metric": metric, "predicted": sign, "confirmed": False, "slope": None,
                "sentence": f"Prediction '{metric} {sign}' cannot be checked: it needs at least two distinct scales."}
    lo, hi = sl["ci"]
    sign_ok = sl["value"] > ZERO_TOL if sign == "up" else sl["value"] < -ZERO_TOL
    ci_ok = lo > ZERO_TOL if sign == "up" else hi < -ZERO_TOL
    diff = sl["minus_controls_ci"]
    ctl_ok = bool(n_controls > 0 and abs(sl["value"]) > max(abs(c) for c in sl["controls"])
                  and diff is not None and (diff[0] > ZERO_TOL if sign == "up" else diff[1] < -ZERO_TOL))
    confirmed = bool(sign_ok and ci_ok and ctl_ok)
    rank = {"control_percentile": summary.get("control_percentile"), "control_p_value": summary.get("control_p_value")}
    stat = summary.get("statistic") or {}
    if stat and stat.get("name") != "slope":  # the rank must be of the slope, one-sided
        rank = control_rank(sl["value"], sl["controls"], sign)
    reasons = []
    if abs(sl["value"]) <= ZERO_TOL:
        reasons.append("the slope is 0")
    elif not sign_ok:
        reasons.append("the slope has the other sign")
    elif not ci_ok:
        reasons.append("its confidence interval includes 0")
    if not ctl_ok:
        reasons.append("random directions of the same norm do as much")
    sentence = (f"Prediction '{metric} {sign}' {'CONFIRMED' if confirmed else 'NOT confirmed'}: slope "
                f"{sl['value']:+.4g} per unit scale (95% CI {lo:+.4g} to {hi:+.4g}); the {n_controls} random "
                f"directions' slopes span {_span(sl['controls'])}")
    if rank["control_percentile"] is not None:
        sentence += (f"; the slope is at the {rank['control_percentile']:.0f}th percentile of theirs in the predicted "
                     f"direction (empirical p = {rank['control_p_value']:.3g})")
    sentence += "." if confirmed else f" ({'; '.join(reasons)})."
    return {"metric": metric, "predicted": sign, "slope": sl["value"], "ci": sl["ci"], **rank,
            "control_slopes": sl["controls"], "sign_ok": bool(sign_ok), "ci_excludes_zero": bool(ci_ok),
            "exceeds_controls": ctl_ok, "confirmed": confirmed, "sentence": sentence}


def _span(values: Sequence[float]) -> str:
    if not values:
        return "nothing (no controls)"
    return f"{min(values):+.4g} to {max(values):+.4g}"


def summary_sentence(effects: dict[str, dict[str, Any]], scales: Sequence[float], n_controls: int,
                     mode: str = "add") -> str:
    """One sentence: on which metrics the direction's effect exceeds the random directions'."""
    kind = {"add": "random directions of the same norm", "erase": "random directions erased the same way",
            "clamp": "random directions clamped the same way",
            "leace": "random subspace erasures of the same rank"}.get(mode, "random directions")
    if n_controls == 0:
        return "No random controls were run, so nothing can be said about specificity (use --controls N)."
    beyond, below = [], []
    for name, eff in effects.items():
        weaker = [f"{scales[i]:g}" for i, p in enumerate(eff["direction"]) if p.get("below_controls")]
        if weaker:
            below.append(f"{name} (scale {', '.join(weaker)})")
        if not eff["exceeds_controls"]:
            continue
        where = []
        if eff["slope"] and eff["slope"]["exceeds_controls"]:
            where.append(f"slope {eff['slope']['value']:+.3g}")
        at = [f"{scales[i]:g}" for i, p in enumerate(eff["direction"]) if p["exceeds_controls"]]
        if at:
            where.append("scale " + ", ".join(at))
        beyond.append(f"{name} ({'; '.join(where)})")
    weaker_text = (f" Its effect is SMALLER than every random direction's on {', '.join(below)}: the policy is "
                   f"less sensitive to this direction than to a random one." if below else "")
    if not beyond:
        return (f"The direction's effect does NOT exceed that of {n_controls} {kind} on any metric: "
                f"by this measurement it is not special at this hook." + weaker_text)
    rest = len(effects) - len(beyond)
    return (f"The direction's effect exceeds all {n_controls} {kind} (and their "
            f"mean, 95% CI excluding 0) on {', '.join(beyond)}; on the other {rest} metric(s) it does not."
            + weaker_text)


# --------------------------------------------------------------------------- table
def _fmt(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.2e}"
    return f"{v:.3g}" if a < 100 else f"{v:.0f}"


def format_table(doc: dict[str, Any]) -> str:
    """The dose-response table: per metric, the direction per scale (mean [CI]) and the controls' range."""
    scales = doc["scales"]
    lines = [
        f"steer {doc['run']}  {doc['direction']['spec']}  at {doc['hook']}  mode {doc['mode']}",
        f"scale unit: {doc['scale_unit']}",
        f"{doc['episodes']} episodes per condition (seeds {doc['seed']}..{doc['seed'] + doc['episodes'] - 1}), "
        f"{doc['n_controls']} random directions of the same norm, {int(CI_LEVEL * 100)}% bootstrap CIs",
        "",
    ]
    grid: list[list[str]] = [["metric", "", "clean"] + [f"scale {s:g}" for s in scales] + ["slope"]]
    for name, eff in doc["effects"].items():
        c = eff["clean"]
        sl = eff["slope"]
        grid.append([name, "dir", _cell(c["mean"], c["ci"])]
                    + [_cell(p["mean"], p["ci"], "*" if p["exceeds_controls"] else "") for p in eff["direction"]]
                    + [_cell(sl["value"], sl["ci"], "*" if sl["exceeds_controls"] else "") if sl else "-"])
        ctl = ["", "ctrl", ""] + [_range(p["range"]) for p in eff["controls"]]
        grid.append(ctl + [_range([min(sl["controls"]), max(sl["controls"])]) if sl and sl["controls"] else "-"])
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    for i, row in enumerate(grid):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [text.rjust(widths[j + 2]) for j, text in enumerate(row[2:])]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("-" * len(lines[-1]))
    lines += ["", "* = beyond every random direction, with the 95% CI of (direction - controls' mean) excluding 0",
              doc["summary"]]
    primary = doc.get("primary_metric")
    if primary in doc["effects"]:
        eff = doc["effects"][primary]
        if eff.get("control_percentile") is not None:
            stat = eff.get("statistic") or {}
            lines.append(f"{primary}: the direction's {stat.get('name', 'effect')} is at the "
                         f"{eff['control_percentile']:.0f}th percentile of the {doc['n_controls']} controls' "
                         f"(empirical p = {eff['control_p_value']:.3g})")
        lines += [""] + dose_plot(doc, primary)
    if doc.get("erasure"):
        er = doc["erasure"]
        rnd = er["random_after"]
        lines.append(f"LEACE of {er['label']!r} (rank {er['rank']}): held-out probe {er['metric']} {_fmt(er['before'])} "
                     f"-> {_fmt(er['after'])} (baseline {_fmt(er['baseline'])}; "
                     f"{'falls to it' if er['falls_to_baseline'] else 'does NOT fall to it'}); after random erasures "
                     f"of the same rank: {_fmt(min(rnd)) if rnd else '-'}..{_fmt(max(rnd)) if rnd else '-'}")
    if doc.get("expect"):
        lines.append(doc["expect"]["sentence"])
    lines += [f"note: {note}" for note in doc.get("notes", [])]
    return "\n".join(lines)


def _cell(mean: float, interval: Sequence[float], mark: str = "") -> str:
    return f"{_fmt(mean)} [{_fmt(interval[0])}, {_fmt(interval[1])}]{mark or ' '}"


def _range(values: Sequence[float] | None) -> str:
    return f"{_fmt(values[0])}..{_fmt(values[1])} " if values else "-"


def dose_plot(doc: dict[str, Any], metric: str, height: int = 9, col: int = 9) -> list[str]:
    """The dose-response of ``metric`` as a small text plot: effect (minus clean) against the scale.

    Each scale is a column: ``:`` spans the controls' range of effects (the control band), ``o``
    is the direction (``*`` where it is beyond every control), ``-`` marks zero.
    """
    eff = doc["effects"][metric]
    clean = eff["clean"]["mean"]
    dirs = [p["effect"] for p in eff["direction"]]
    bands = [[m - clean for m in p["means"]] for p in eff["controls"]]
    values = dirs + [v for band in bands for v in band] + [0.0]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        hi, lo = hi + 1.0, lo - 1.0
    def row(v: float) -> int:
        return int(round((hi - v) / (hi - lo) * (height - 1)))
    grid = [[" "] * (col * len(dirs)) for _ in range(height)]
    zero = row(0.0)
    for x in range(col * len(dirs)):
        grid[zero][x] = "-"
    for i, (d, band) in enumerate(zip(dirs, bands)):
        c = i * col + col // 2
        if band:
            for r in range(row(max(band)), row(min(band)) + 1):
                grid[r][c] = ":"
        grid[row(d)][c] = "*" if eff["direction"][i]["exceeds_controls"] else "o"
    label_w = max(len(_fmt(hi)), len(_fmt(lo)))
    out = [f"dose-response of {metric} (effect = minus clean {_fmt(clean)}); ':' = controls' range, "
           f"o = direction, * = beyond every control"]
    for r in range(height):
        label = _fmt(hi) if r == 0 else (_fmt(lo) if r == height - 1 else ("0" if r == zero else ""))
        out.append(f"{label.rjust(label_w)} |" + "".join(grid[r]).rstrip())
    out.append(" " * label_w + " +" + "-" * (col * len(dirs)))
    out.append(" " * (label_w + 2) + "".join(f"{s:g}".center(col) for s in doc["scales"]).rstrip()
               + f"   ({doc['mode']} scale)")
    return out
