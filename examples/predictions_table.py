"""The table of issue 16's pre-registered predictions from the JSON that examples/predictions.sh wrote.

    python examples/predictions_table.py RUNS_DIR/predictions-s0

Steering rows: the prediction, the network, the direction, the dose-response slope of the metric
per unit scale (one standard deviation of the projection) with its 95% CI, where the slope falls
among the 20 random directions' (one-sided percentile in the predicted direction, empirical p),
and whether it is confirmed (predicted sign, CI excluding 0, beyond every control). Intervention
rows: the shift of each probe reading when a predator is placed next to the agent, in units of the
reading's spread over the recording, with its 95% CI; predicted up for threat and fear, down for
prev_td_error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

AGENTS = {"ppo-mlp": "PPO-MLP", "ppo-tf": "PPO-transformer", "rppo": "recurrent PPO", "dt": "DT", "bc": "BC"}
WORLD = {"threat": "up", "fear": "up", "prev_td_error": "down"}



def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"

def agent_of(run: str) -> str:
    return AGENTS.get(run.rsplit("-s", 1)[0], run)


def steering_rows(folder: Path) -> list[str]:
    rows = ["| prediction | network | direction | slope per s.d. [95% CI] | control percentile (p) | confirmed |",
            "|---|---|---|---|---|---|"]
    confirmed = total = 0
    for path in sorted(folder.glob("steer--*.json")):
        _, run, label, _ = path.stem.split("--")
        doc = json.loads(path.read_text())
        e = doc["expect"]
        total += 1
        confirmed += bool(e["confirmed"])
        slope = "n/a" if e["slope"] is None else f"{e['slope']:+.3g} [{e['ci'][0]:+.3g}, {e['ci'][1]:+.3g}]"
        rank = ("n/a" if e.get("control_percentile") is None
                else f"{ordinal(round(e['control_percentile']))} (p = {e['control_p_value']:.2f})")
        direction = doc["direction"]["spec"] if isinstance(doc["direction"], dict) else doc["direction"]
        rows.append(f"| {label} up → {e['metric']} {e['predicted']} | {agent_of(run)} | `{direction}` | "
                    f"{slope} | {rank} | {'**yes**' if e['confirmed'] else 'no'} |")
    rows.append(f"\n{confirmed} of {total} steering predictions confirmed.")
    return rows


def steered_hooks(folder: Path) -> dict[str, set[str]]:
    """The hooks each run was steered at: the intervention table reads the probes there."""
    out: dict[str, set[str]] = {}
    for path in folder.glob("steer--*.json"):
        out.setdefault(path.stem.split("--")[1], set()).add(json.loads(path.read_text())["hook"])
    return out


def world_rows(folder: Path) -> list[str]:
    rows = ["| network | hook | " + " | ".join(f"{k} ({v})" for k, v in WORLD.items()) + " | confirmed |",
            "|---|---|" + "---|" * (len(WORLD) + 1)]
    steered = steered_hooks(folder)
    for path in sorted(folder.glob("intervene--*.json")):
        run = path.stem.split("--")[1]
        doc = json.loads(path.read_text())
        by_hook: dict[str, dict[str, dict]] = {}
        for r in doc["probes"]:
            if steered.get(run) and r["hook"] not in steered[run]:
                continue
            by_hook.setdefault(r["hook"], {})[r["label"]] = r
        for hook, readings in sorted(by_hook.items()):
            cells, ok = [], []
            for label, sign in WORLD.items():
                r = readings.get(label)
                if r is None or r.get("shift") is None:
                    cells.append("—")
                    continue
                lo, hi = r["shift_ci"]
                ok.append(lo > 0 if sign == "up" else hi < 0)
                cells.append(f"{r['shift']:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            verdict = "n/a" if not ok else ("**yes**" if all(ok) else f"{sum(ok)} of {len(ok)}")
            rows.append(f"| {agent_of(run)} | `{hook}` | " + " | ".join(cells) + f" | {verdict} |")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python examples/predictions_table.py PREDICTIONS_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    print("\n".join(steering_rows(folder)))
    print()
    print("\n".join(world_rows(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
