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


# --------------------------------------------------------------------------- predictions
_EXPECT = re.compile(r"^\s*(?P<metric>\S+)\s+(?P<sign>up|down)\s*$")


def parse_expect(text: str) -> tuple[str, str]:
    """``"METRIC up|down"`` -> ``(metric, "up"|"down")``."""
    m = _EXPECT.match(text or "")
    if not m:
        raise LabError(f"malformed --expect {text!r}: expected \"METRIC up\" or \"METRIC down\"")
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
    sentence += "." if confirmed else f" ({'; '.join(reasons)})."
    return {"metric": metric, "predicted": sign, "slope": sl["value"], "ci": sl["ci"],
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
            "clamp": "random directions clamped the same way"}.get(mode, "random directions")
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
    if doc.get("expect"):
        lines.append(doc["expect"]["sentence"])
    lines += [f"note: {note}" for note in doc.get("notes", [])]
    return "\n".join(lines)


def _cell(mean: float, interval: Sequence[float], mark: str = "") -> str:
    return f"{_fmt(mean)} [{_fmt(interval[0])}, {_fmt(interval[1])}]{mark or ' '}"


def _range(values: Sequence[float] | None) -> str:
    return f"{_fmt(values[0])}..{_fmt(values[1])} " if values else "-"
