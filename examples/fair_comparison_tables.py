"""The markdown tables of docs/results.md's fair comparison, from what examples/fair-comparison.sh wrote.

    python examples/fair_comparison_tables.py RUNS_DIR

Reads the newest comparison JSON of each kind in ``RUNS_DIR/comparisons/`` (the three that the
script's closing ``rl-lab compare`` calls write) and the DT's and BC's ``eval.json``, and prints:

1. competence: each agent's mean return over its recorded episodes, seed by seed, with the mean
   across seeds and its 95% t-interval;
2. the DT and BCs as actors: the return achieved (the DT conditioned on the dataset's best
   return), with its 95% interval over episodes, against the best source policy's mean return;
3. the test itself (the comparison with ``--contrast ppo-transformer:bc``): each group's gain over
   its random-weights twin and the paired contrasts, p raw and Holm-corrected, readouts apart;
4. what training added at the acting hooks (the comparison restricted to ``--hooks``), every agent;
5. the test again with every network recorded on the same episodes (``rl-lab compare --replay``),
   when the script has made that comparison.

Every table names the file it was read from; a missing piece is one line saying so. The numbers are
printed, never interpreted: the verdict is written by hand beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from probes.layout import RunsDirLayout

FIVE = ["ppo", "ppo-transformer", "recurrent-ppo", "dt", "bc"]
"""The five agents of issue 14: every comparison the tables read holds at least these."""
GROUPS = [*FIVE, "bc-of-ppo-transformer"]
"""Every agent the script trains, in table order: BC of the PPO-transformer (its own behaviour
copied by the same network) is the competence-matched control."""
NAMES = {"ppo": "PPO-MLP", "ppo-transformer": "PPO-transformer", "recurrent-ppo": "recurrent PPO",
         "dt": "DT", "bc": "BC", "bc-of-ppo-transformer": "BC of PPO-tf"}
ACTORS = ("dt", "bc", "bc-tf")
"""The supervised runs (``<prefix>-s<seed>``) whose ``eval.json`` the actors table reads."""


def signed(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def interval(ci: list[float] | None, digits: int = 2) -> str:
    return "" if not ci else f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def written_order(path: Path) -> tuple[str, int]:
    """``compare-<date>-<time>[-n].json``: the time, then n for a second comparison in the same second."""
    parts = path.stem.split("-")
    return "-".join(parts[1:3]), int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0


def comparisons(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable comparison JSON, oldest first."""
    out = []
    for path in sorted(RunsDirLayout(runs_dir).comparisons_dir.glob("compare-*.json"), key=written_order):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            print(f"note: {path} is unreadable, skipped")
    return out


def newest(docs: list[tuple[Path, dict[str, Any]]], want) -> tuple[Path, dict[str, Any]] | None:
    found = [(p, d) for p, d in docs if want(d)]
    return found[-1] if found else None


def groups_of(doc: dict[str, Any]) -> set[str]:
    return {r.get("group") for r in doc.get("runs", [])}


def competence(found: tuple[Path, dict[str, Any]] | None) -> list[str]:
    if found is None:
        return ["no comparison of all five agents in RUNS/comparisons/"]
    path, doc = found
    seeds = sorted({r["seed"] for r in doc["runs"] if r.get("seed") is not None})
    rows = [f"Competence: mean return of the recorded episodes (± s.e. over episodes), from `{path.name}`",
            "", "| agent | " + " | ".join(f"s{s}" for s in seeds) + " | mean across seeds [95% t-interval] |",
            "|---|" + "---|" * (len(seeds) + 1)]
    for group in GROUPS:
        by_seed = {r["seed"]: r.get("return") for r in doc["runs"] if r.get("group") == group}
        if not by_seed:
            continue
        cells = []
        for s in seeds:
            ret = by_seed.get(s)
            cells.append("" if not ret else f"{ret['mean']:+.2f} ± {ret['se']:.2f}")
        b = doc.get("behaviour", {}).get(group)
        mean = "" if not b else f"{b['mean_return']:+.2f}{interval(b.get('ci'))} (n={b['n']})"
        rows.append(f"| {NAMES[group]} | " + " | ".join(cells) + f" | {mean} |")
    return rows


def actors(runs_dir: Path, seeds: list[int]) -> list[str]:
    rows = ["DT and BCs as actors (`RUN/eval.json`): return achieved (the DT's when conditioned on the dataset's "
            "best return) [95% interval over episodes], against the best source policy's mean return",
            "", "| run | episodes | target | achieved [95% CI] | best source policy (mean) | fraction |",
            "|---|---|---|---|---|---|"]
    for algo in ACTORS:
        for s in seeds:
            path = runs_dir / f"{algo}-s{s}" / "eval.json"
            try:
                ev = json.loads(path.read_text())
            except (OSError, ValueError):
                rows.append(f"| {algo}-s{s} | no readable eval.json | | | | |")
                continue
            best = ev["dataset_best_return"]
            row = min(ev["rows"], key=lambda r: abs(r["target"] - best))
            frac = ev.get("fraction_of_best_policy_mean")
            target = "(none)" if ev.get("algo") == "bc" else f"{row['target']:g}"  # BC is not conditioned
            rows.append(f"| {algo}-s{s} | {ev['episodes']} | {target} | {row['mean_return']:+.2f}"
                        f"{interval(row.get('ci'))} | {ev.get('best_policy')} "
                        f"({signed(ev.get('best_policy_mean_return'))}) | {'n/a' if frac is None else f'{frac:.0%}'} |")
    return rows


def gain(cell: dict[str, Any], group: str) -> dict[str, Any] | None:
    return cell["groups"].get(group, {}).get("gain_over_twin")


def is_the_test(doc: dict[str, Any]) -> bool:
    """The comparison with ``--contrast ppo-transformer:bc``."""
    return any(c["a"] == "ppo-transformer" and c["b"] == "bc" for c in doc.get("contrasts", []))


def the_test(found: tuple[Path, dict[str, Any]] | None) -> list[str]:
    if found is None:
        return ["no comparison with --contrast ppo-transformer:bc in RUNS/comparisons/"]
    path, doc = found
    contrasts: dict[tuple[str, str], dict[str, Any]] = {(c["b"], c["label"]): c for c in doc["contrasts"]
                                                          if c["a"] == "ppo-transformer"}
    others = sorted({b for b, _ in contrasts}, key=lambda b: GROUPS.index(b) if b in GROUPS else 99)
    n_tests = sum(1 for c in doc["contrasts"] if c.get("p") is not None)
    where = (f"every network on the same episodes, run {doc['replay']}'s, replayed action for action"
             if doc.get("replay") else "each network on its own episodes")
    rows = [f"The test itself ({where}): gain over the random-weights twin at each run's best hook of "
            f"{doc['hooks']} (chosen inside the training folds); PPO-transformer minus each supervised agent, "
            f"paired by seed, paired t-test, Holm over {n_tests} tests; from `{path.name}`", "",
            "| label | " + " | ".join(f"{NAMES.get(g, g)} gain" for g in ["ppo-transformer", *others])
            + " | " + " | ".join(f"PPO-tf − {NAMES.get(b, b)} [95% CI] | p (raw / Holm)" for b in others) + " |",
            "|---|" + "---|" * (1 + len(others) * 3)]
    significant = 0
    for label in doc["variables"]:
        cell = doc["table"][label]
        gains = []
        for g in ["ppo-transformer", *others]:
            gv = gain(cell, g)
            gains.append("" if not gv else signed(gv["mean"], 3))
        tests = []
        for b in others:
            c = contrasts.get((b, label))
            if c is None or c.get("p") is None:
                tests.append("untested | ")
                continue
            significant += bool(c["significant"])
            mark = "**" if c["significant"] else ""
            tests.append(f"{mark}{signed(c['mean'], 3)}{interval(c['ci'], 3)}{mark} | "
                         f"{c['p']:.2g} / {c['p_holm']:.2g}")
        rows.append(f"| {label} | " + " | ".join(gains) + " | " + " | ".join(tests) + " |")
    rows += ["", f"{significant} of {n_tests} contrasts significant after Holm's correction.",
             f"Readouts, reported apart: {', '.join(doc['readouts']) or 'none'}."]
    return rows


def acting_gains(found: tuple[Path, dict[str, Any]] | None) -> list[str]:
    if found is None:
        return ["no comparison of all five agents restricted to acting hooks in RUNS/comparisons/"]
    path, doc = found
    present = [g for g in GROUPS if g in groups_of(doc)]
    rows = [f"What training added at the acting hooks {doc['hooks']}: gain over the random-weights twin, "
            f"mean across seeds [95% t-interval], * = interval excludes 0; from `{path.name}`", "",
            "| label | " + " | ".join(NAMES[g] for g in present) + " |", "|---|" + "---|" * len(present)]
    for label in doc["variables"]:
        cells = []
        for g in present:
            gv = gain(doc["table"][label], g)
            if not gv:
                cells.append("")
                continue
            ci = gv.get("ci")
            star = "*" if ci and (ci[0] > 0 or ci[1] < 0) else ""
            cells.append(f"{signed(gv['mean'], 3)}{interval(ci, 3)}{star}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python examples/fair_comparison_tables.py RUNS_DIR", file=sys.stderr)
        return 2
    runs_dir = Path(argv[0])
    folder = RunsDirLayout(runs_dir).comparisons_dir
    if not folder.is_dir():
        print(f"error: {folder} does not exist: run examples/fair-comparison.sh {runs_dir} first", file=sys.stderr)
        return 2
    docs = comparisons(runs_dir)
    own = [(p, d) for p, d in docs if not d.get("replay")]  # each network on its own episodes
    replays = [(p, d) for p, d in docs if d.get("replay")]  # every network on one run's episodes
    five = newest(own, lambda d: set(FIVE) <= groups_of(d) and not d.get("hooks"))
    acting = newest(own, lambda d: set(FIVE) <= groups_of(d) and bool(d.get("hooks")))
    test = newest(own, is_the_test)
    test_replayed = newest(replays, is_the_test)
    seeds = sorted({r["seed"] for _, d in docs for r in d.get("runs", []) if isinstance(r.get("seed"), int)})
    blocks = [competence(five), actors(runs_dir, seeds), the_test(test), acting_gains(acting)]
    if test_replayed is not None:
        blocks.append(the_test(test_replayed))
    for block in blocks:
        print("\n".join(block))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
