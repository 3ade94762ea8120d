"""Probe results of several runs side by side: does RL training make emotion-like labels more
linearly decodable than supervised training on the same data?

For each run, the probe document of its latest recorded checkpoint (``RUN/probes/<stem>.json``,
read as ``probes.results.ProbeResults``; probed on the spot with ``probes.linear.probe_file`` if the run has recordings but no results)
gives, for each label, the run's score: the best held-out score over its hooks, leaving out
hooks where the label is linear by construction (the critic's value layer for ``value``).
The random-weights baseline inside each record gives a second row per run: the same
architecture untrained (``<group> (random weights)``), and each trained cell's
``gain_over_twin``: the run's score minus its own twin's, paired within the run, with a
t-interval across runs — what training added.

``hooks`` (shell-style patterns such as ``mlp_extractor.policy_net.*`` or ``blocks.*``)
restricts the hooks a run's best score is taken over — e.g. the PPO actor only, leaving out
the critic that was trained to predict value, beside the decision transformer's blocks.

Runs are grouped (by ``agent`` — the algorithm and its network, so PPO-MLP and PPO-transformer
are never pooled — or any ``run.json`` key with ``group_by``, dotted for nested keys, e.g.
``algo`` or ``config.env_kwargs.interoception``); each group's score per label is the mean over
its runs (seeds) with a 95% t-interval across them.

``contrasts`` (pairs of groups, e.g. ``("ppo-transformer", "bc")``) answer the lab's question
directly: for each variable, group A's gain over its twin minus group B's, paired by seed (runs of
the two groups with the same ``run.json`` seed), with a t-interval and a paired t-test across
seeds, Holm-corrected over every (contrast, variable) cell. Each run's behaviour — the mean
return of the episodes it was probed on — sits beside, so a reader sees how competent each
group was.

The comparison is written to ``RUNS/comparisons/compare-<time>.json``
(``probes.layout.RunsDirLayout.comparisons_dir``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from probes.activations import file_attribute, stale_reason
from probes.errors import ProbeError
from probes.layout import RunsDirLayout
from probes.linear import best_hook, probe_file
from probes.results import ProbeRecord, ProbeResults, read_probe_results
from probes.stats import holm, paired_t, t_interval
from rl_lab.config import run_agent
from rl_lab.errors import LabError
from rl_lab.labels import default_derived_from, is_readout
from rl_lab.runs import Run, RunStore, checkpoint_step, now_iso, write_json_atomic

RANDOM_SUFFIX = " (random weights)"


def _doc_step(doc: ProbeResults) -> int:
    return doc.step if doc.step is not None else checkpoint_step(Path(doc.checkpoint))


def probe_doc(run: Run, probe: bool = True, labels: Sequence[str] | None = None,
              replay: str | None = None) -> tuple[ProbeResults, Path]:
    """The probe document of the run's latest probed checkpoint (probing its latest recording if needed).

    ``labels`` restricts a probe run made here (default: every label in the recording). Files
    that cannot be read or hold no record are passed over. ``replay``: of the run's recordings on
    that run's episodes (``rl-lab record --replay``) instead of its own.
    """
    docs = []
    for path in run.probe_result_files(replay):
        try:
            doc = read_probe_results(path)
        except ProbeError:
            continue
        if doc.records:
            docs.append((_doc_step(doc), path.name, doc, path))
    if docs:
        _, _, doc, path = max(docs, key=lambda d: (d[0], d[1]))
        return doc, path
    recordings = run.activation_files(replay)
    if not recordings:
        if replay:
            raise LabError(f"run {run.name!r} has no recording on the episodes of run {replay!r}; run "
                           f"`rl-lab record {run.name} --replay {replay}` first")
        raise LabError(f"run {run.name!r} has no recordings or probe results; run `rl-lab record {run.name}` first")
    if not probe:
        raise LabError(f"run {run.name!r} has recordings but no probe results; run the probes on it first")
    latest = max(recordings, key=lambda p: (checkpoint_step(p), p.name))
    out = run.probe_results_path(latest.stem, replay)
    doc = ProbeResults.from_dict(probe_file(latest, out_json=out, labels=list(labels) if labels else None))
    if not doc.records:
        notes = "; ".join(doc.notes) or "no records"
        raise LabError(f"probing {latest} gave no results ({notes})")
    return doc, out


def group_key(run: Run, group_by: str) -> str:
    """The run's group: ``run.json[group_by]`` (dotted path for nested keys). ``agent`` of a run
    written before ``run.json`` had it is named from its ``algo`` and ``config.policy``."""
    if group_by == "agent" and "agent" not in run.info and isinstance(run.info.get("algo"), str):
        return run_agent(run.info)
    value: Any = run.info
    for part in group_by.split("."):
        if not isinstance(value, dict) or part not in value:
            raise LabError(f"run {run.name!r} has no {group_by!r} in run.json to group by")
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)


def hook_matches(hook: str, patterns: Sequence[str] | None) -> bool:
    """Whether ``hook`` matches one of the shell-style ``patterns`` (every hook does without patterns)."""
    return not patterns or any(fnmatch.fnmatchcase(hook, p) for p in patterns)


def record_derived_from(rec: ProbeRecord) -> str:
    """Where a probed label comes from (``derived_from`` of the record; for results written before
    records carried it, the lab's default for that label name)."""
    value = getattr(rec, "derived_from", None) or rec.extra.get("derived_from")
    return str(value) if value else default_derived_from(rec.label)


def best_by_label(doc: ProbeResults, hooks: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """For each label: the best hook, chosen without selection bias (``probes.linear.best_hook``:
    inside the training folds when every hook counts; with ``hooks`` patterns, plainly the maximum
    over the matching hooks, which ``method`` says), and the random twin at that same hook.
    Hooks where the label is linear by construction never count."""
    matching = None
    if hooks:
        probed = sorted({r.hook for r in doc.records})
        matching = [h for h in probed if hook_matches(h, hooks)]
        if matching == probed:
            matching = None  # every hook: the nested choice
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r.label for r in doc.records):
        best = best_hook(doc, label, matching)
        if best is None or best.get("score") is None:
            continue
        rec = next(r for r in doc.records if r.label == label and r.hook == best["hook"])
        out[label] = {"score": best["score"], "hook": best["hook"], "metric": best["metric"],
                      "ci": best.get("ci"), "method": best["method"], "n_hooks": best["n_hooks"],
                      "selectivity": rec.selectivity, "raw_obs": rec.baselines.get("raw_obs"),
                      "random_weights": rec.random_weights, "derived_from": record_derived_from(rec)}
    return out


def seed_interval(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean and 95% t-interval across seeds (None with fewer than two); ``probes.stats.t_interval``."""
    mean, low, high = t_interval(values)
    return mean, ([low, high] if math.isfinite(low) else None)


def recorded_return(path: Path) -> dict[str, Any] | None:
    """Mean (and standard error) of the episode returns in an activation file, or None if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            reward = np.asarray(f["steps/reward"][:], dtype=np.float64)
            episode = np.asarray(f["steps/episode"][:])
    except (OSError, KeyError, ValueError):
        return None
    if reward.size == 0:
        return None
    _, inverse = np.unique(episode, return_inverse=True)
    returns = np.bincount(inverse, weights=reward)
    se = float(returns.std(ddof=1) / math.sqrt(len(returns))) if len(returns) > 1 else None
    return {"mean": float(returns.mean()), "se": se, "episodes": int(len(returns))}


def replayed_recording(path: Path) -> str:
    """The ``replay_recording_id`` of a replay's activation file: which recording it played ("" if unknown)."""
    return file_attribute(path, "replay_recording_id") or ""


def parse_contrast(text: str) -> tuple[str, str]:
    """``"A:B"`` -> ``(A, B)``: two group names (as ``--group-by`` gives them)."""
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise LabError(f"malformed contrast {text!r}: expected GROUP_A:GROUP_B, two different groups")
    return parts[0], parts[1]


def contrast_cells(per_run: Sequence[dict[str, Any]], variables: Sequence[str],
                   contrasts: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """For each contrast and variable: A's gain over its twin minus B's, paired by seed; Holm-corrected."""
    cells: list[dict[str, Any]] = []
    for a, b in contrasts:
        by_seed = {g: {r["seed"]: r for r in per_run if r["group"] == g} for g in (a, b)}
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]), key=str)
        for label in variables:
            diffs, used = [], []
            for seed in seeds:
                ra, rb = by_seed[a][seed]["best"].get(label), by_seed[b][seed]["best"].get(label)
                if not ra or not rb or ra.get("random_weights") is None or rb.get("random_weights") is None:
                    continue
                diffs.append((ra["score"] - ra["random_weights"]) - (rb["score"] - rb["random_weights"]))
                used.append(seed)
            test = paired_t(diffs)
            cells.append({"a": a, "b": b, "label": label, "seeds": used, "differences": diffs,
                          "mean": test["mean"], "ci": ([test["low"], test["high"]] if test["p"] is not None else None),
                          "p": test["p"], "n": test["n"]})
    tested = [c for c in cells if c["p"] is not None]
    for c, adj in zip(tested, holm([c["p"] for c in tested])):
        c["p_holm"] = adj
        c["significant"] = bool(adj < 0.05)
    for c in cells:
        c.setdefault("p_holm", None)
        c.setdefault("significant", False)
    return cells


def compare(
    run_names: Sequence[str],
    runs_dir: Path | str | None = None,
    labels: Sequence[str] | None = None,
    group_by: str = "agent",
    random_baseline: bool = True,
    write: bool = True,
    hooks: Sequence[str] | None = None,
    contrasts: Sequence[tuple[str, str] | str] | None = None,
    replay: str | None = None,
) -> dict[str, Any]:
    """Compare probe results across runs; returns (and writes to ``RUNS/comparisons/compare-<time>.json``) the document.

    ``hooks``: shell-style patterns; a run's score per label is its best over the matching hooks.
    ``contrasts``: pairs of groups (or ``"A:B"`` strings) tested against each other, paired by seed.
    ``replay``: compare every run on run ``replay``'s episodes (its recordings made with
    ``rl-lab record RUN --replay REPLAY``), so that all networks are probed on the same situations;
    runs whose replays are of different recordings of ``replay`` are refused.
    """
    hooks = [h for h in (hooks or []) if h] or None
    pairs = [parse_contrast(c) if isinstance(c, str) else (str(c[0]), str(c[1])) for c in (contrasts or [])]
    if not run_names:
        raise LabError("name at least one run to compare")
    store = RunStore(runs_dir)
    runs = store.get_distinct(run_names)
    per_run: list[dict[str, Any]] = []
    notes: list[str] = []
    replayed: dict[str, str] = {}  # run -> the recording id its replay played
    for run in runs:
        doc, path = probe_doc(run, labels=labels, replay=replay)
        recording = run.activation_path(path.stem, replay)
        stale = stale_reason(doc, recording)
        if replay:
            replayed[run.name] = replayed_recording(recording)
        if stale:
            notes.append(f"run {run.name}: {stale}")
        if hooks and not any(hook_matches(rec.hook, hooks) for rec in doc.records):
            probed = sorted({rec.hook for rec in doc.records})
            raise LabError(f"no probed hook of run {run.name!r} matches --hooks {' '.join(hooks)} "
                           f"(probed: {', '.join(probed[:6])}{', ...' if len(probed) > 6 else ''})")
        per_run.append({"name": run.name, "algo": run.info.get("algo"), "group": group_key(run, group_by),
                        "seed": run.info.get("seed"), "probe_file": str(path), "checkpoint": doc.checkpoint,
                        "return": recorded_return(recording), "best": best_by_label(doc, hooks)})
    if len(set(replayed.values())) > 1:
        names = sorted(replayed, key=lambda n: (replayed[n], n))
        raise LabError(f"runs {names[0]!r} and {names[-1]!r} were recorded on different recordings of run "
                       f"{replay!r} (it was recorded again in between); record them again with --replay "
                       "--overwrite so that every network sees the same episodes")
    envs: dict[str, set[str]] = {}
    for run, r in zip(runs, per_run):
        envs.setdefault(r["group"], set()).add(str(run.info.get("env_id")))
    mixed = {g: sorted(e) for g, e in envs.items() if len(e) > 1}
    if mixed:
        g, e = next(iter(mixed.items()))
        raise LabError(f"group {g!r} mixes runs of different environments ({', '.join(e)}), whose scores "
                       "cannot be averaged: compare runs of one environment, or group by env_id")
    for a, b in pairs:
        for g in (a, b):
            if not any(r["group"] == g for r in per_run):
                known = ", ".join(sorted({str(r["group"]) for r in per_run}))
                raise LabError(f"contrast {a}:{b}: no compared run is in group {g!r} (groups: {known})")
    common = set.intersection(*(set(r["best"]) for r in per_run))
    if labels:
        for label in labels:
            missing = [r["name"] for r in per_run if label not in r["best"]]
            if missing:
                raise LabError(f"label {label!r} has no probe result in run {missing[0]!r}")
        chosen = list(dict.fromkeys(labels))
    else:
        chosen = sorted(common)
        if not chosen:
            raise LabError("the runs share no probed label; probe them on the same labels first")
        dropped = sorted(set().union(*(set(r["best"]) for r in per_run)) - common)
        if dropped:
            notes.append(f"labels not probed in every run were left out: {', '.join(dropped)}")

    groups: list[str] = []
    for r in per_run:
        for g in (r["group"], r["group"] + RANDOM_SUFFIX if random_baseline else None):
            if g is not None and g not in groups:
                groups.append(g)
    table: dict[str, dict[str, Any]] = {}
    for label in chosen:
        metric = next(r["best"][label]["metric"] for r in per_run)
        row: dict[str, Any] = {}
        for g in groups:
            base = g[: -len(RANDOM_SUFFIX)] if g.endswith(RANDOM_SUFFIX) else g
            key = "random_weights" if g.endswith(RANDOM_SUFFIX) else "score"
            members = [r for r in per_run if r["group"] == base]
            scores = [r["best"][label][key] for r in members if r["best"][label].get(key) is not None]
            if not scores:
                continue
            mean, ci = seed_interval(scores)
            cell: dict[str, Any] = {"mean": mean, "ci": ci, "n": len(scores), "scores": scores,
                                    "runs": [r["name"] for r in members if r["best"][label].get(key) is not None]}
            if key == "score":
                cell["hooks"] = [r["best"][label]["hook"] for r in members]
                # Each run's bootstrap interval over its held-out episodes (the within-run uncertainty).
                cell["probe_cis"] = [r["best"][label].get("ci") for r in members]
                # What training added: each run's score minus its own random-weights twin's,
                # paired within the run, then the mean and t-interval across runs.
                gains = [r["best"][label]["score"] - r["best"][label]["random_weights"] for r in members
                         if r["best"][label].get("random_weights") is not None]
                if gains:
                    g_mean, g_ci = seed_interval(gains)
                    cell["gain_over_twin"] = {"mean": g_mean, "ci": g_ci, "n": len(gains), "values": gains}
            row[g] = cell
        sources = {r["name"]: r["best"][label]["derived_from"] for r in per_run}
        table[label] = {"metric": metric, "groups": row, "derived_from": sources,
                        "readout": any(is_readout(v) for v in sources.values())}
    readouts = [label for label in chosen if table[label]["readout"]]
    if readouts:
        notes.append(f"readouts of a compared network's own value or policy output, reported apart and never counted "
                     f"as a variable that training made emerge: {', '.join(readouts)}")
    if any(len([r for r in per_run if r["group"] == g]) < 2 for g in {r["group"] for r in per_run}):
        notes.append("a group with one run has no interval across seeds; train 3 or more seeds per group")
    if random_baseline and any(g.endswith(RANDOM_SUFFIX) and not any(g in t["groups"] for t in table.values())
                               for g in groups):
        notes.append("some runs were recorded without the random-weights baseline")
    variables = [label for label in chosen if label not in readouts]
    behaviour: dict[str, Any] = {}
    for g in dict.fromkeys(r["group"] for r in per_run):
        values = [r["return"]["mean"] for r in per_run if r["group"] == g and r["return"]]
        if values:
            mean, ci = seed_interval(values)
            behaviour[g] = {"mean_return": mean, "ci": ci, "n": len(values), "returns": values}
    cells = contrast_cells(per_run, variables, pairs) if pairs else []
    if pairs and not any(c["p"] is not None for c in cells):
        notes.append("no contrast could be tested: it needs two or more seeds present in both groups")
    result: dict[str, Any] = {
        "schema_version": 1,
        "created": now_iso(),
        "group_by": group_by,
        "hooks": hooks,
        "replay": replay,  # every run probed on this run's episodes (None: each on its own)
        "runs": [{k: v for k, v in r.items() if k != "best"} for r in per_run],
        "labels": chosen,
        "variables": variables,
        "readouts": readouts,
        "behaviour": behaviour,
        "contrasts": cells,
        "groups": [g for g in groups if any(g in t["groups"] for t in table.values())],
        "table": table,
        "notes": notes,
    }
    result["summary"] = summarise(result)
    if write:
        folder = RunsDirLayout(store.root).comparisons_dir
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = folder / f"compare-{stamp}.json"
        n = 1
        while out.exists():
            out = folder / f"compare-{stamp}-{n}.json"
            n += 1
        result["path"] = str(out)
        write_json_atomic(out, result)
    return result


def summarise(result: dict[str, Any]) -> str:
    """One or two sentences in words: which group decodes the labels best, and how clearly.

    Only the variables count: readouts of a network's own outputs (``result["readouts"]``) are left out.
    """
    groups = result["groups"]
    variables = result.get("variables", result["labels"])
    table = {label: result["table"][label] for label in variables}
    if not groups:
        return "Nothing to compare."
    if not table:
        return ("Every compared label is a readout of a network's own value or policy output; "
                "no label is left to count as a variable that training made emerge.")
    means = {g: [t["groups"][g]["mean"] for t in table.values() if g in t["groups"]] for g in groups}
    avg = {g: float(np.mean(v)) for g, v in means.items() if v}
    ranked = sorted(avg, key=avg.get, reverse=True)  # type: ignore[arg-type]
    wins = {g: 0 for g in groups}
    clear = {g: 0 for g in groups}
    for t in table.values():
        cells = t["groups"]
        top = max(cells, key=lambda g: cells[g]["mean"])
        wins[top] += 1
        others = [c for g, c in cells.items() if g != top]
        top_ci = cells[top]["ci"]
        if top_ci is not None and others and all(c["ci"] is not None and top_ci[0] > c["ci"][1] for c in others):
            clear[top] += 1
    n = len(table)
    order = ", ".join(f"{g} {avg[g]:.2f}" for g in ranked)
    best = ranked[0]
    sentence = (f"Averaged over {n} label{'s' if n != 1 else ''}, the held-out probe score is {order}; "
                f"{best} decodes best on {wins[best]} of {n} label{'s' if n != 1 else ''}")
    if clear[best]:
        sentence += f", with a 95% interval across seeds above every other group's on {clear[best]}"
    else:
        sentence += ", though its intervals across seeds overlap another group's on every label" \
            if any(t["groups"].get(best, {}).get("ci") for t in table.values()) else \
            " (no intervals: fewer than two seeds per group)"
    return sentence + "."


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a plain-text table: one row per label, one column per group; the
    readouts of the networks' own outputs in a block of their own, after the variables."""
    groups = result["groups"]
    variables = result.get("variables", result["labels"])
    readouts = result.get("readouts", [])
    width = max(16, *(len(g) for g in groups)) if groups else 16
    lw = max(5, *(len(label) for label in result["labels"])) if result["labels"] else 5

    def score_row(label: str) -> str:
        row = result["table"][label]
        cells = []
        for g in groups:
            c = row["groups"].get(g)
            if c is None:
                cells.append(f"{'-':>{width}}")
            elif c["ci"] is None:
                cells.append(f"{c['mean']:>{width}.3f}")
            else:
                half = (c["ci"][1] - c["ci"][0]) / 2
                cells.append(f"{c['mean']:.3f} ± {half:.3f} (n={c['n']})".rjust(width))
        return f"{label:<{lw}}  {row['metric'] or '?':<8}  " + "  ".join(cells)

    header = f"{'label':<{lw}}  {'metric':<8}  " + "  ".join(f"{g:>{width}}" for g in groups)
    lines = [header] + [score_row(label) for label in variables]
    gain_groups = [g for g in groups if any("gain_over_twin" in result["table"][lab]["groups"].get(g, {})
                                            for lab in variables)]
    if gain_groups:
        lines.append("")
        lines.append("what training added: trained minus its own random-weights twin, paired within each run")
        lines.append(f"{'label':<{lw}}  {'metric':<8}  " + "  ".join(f"{g:>{width}}" for g in gain_groups))
        for label in variables:
            row = result["table"][label]
            cells = []
            for g in gain_groups:
                c = row["groups"].get(g, {}).get("gain_over_twin")
                if c is None:
                    cells.append(f"{'-':>{width}}")
                elif c["ci"] is None:
                    cells.append(f"{c['mean']:>+{width}.3f}")
                else:
                    half = (c["ci"][1] - c["ci"][0]) / 2
                    mark = " *" if c["ci"][0] > 0 or c["ci"][1] < 0 else "  "
                    cells.append(f"{c['mean']:+.3f} ± {half:.3f}{mark}".rjust(width))
            lines.append(f"{label:<{lw}}  {row['metric'] or '?':<8}  " + "  ".join(cells))
        lines.append("* = the 95% interval across runs excludes 0")
    if readouts:
        lines.append("")
        lines.append("readouts: labels computed from a compared network's own value or policy output; decoding them "
                     "shows what the network was built to output, not a variable that training made emerge")
        lines.append(header + "  derived from")
        for label in readouts:
            sources = result["table"][label].get("derived_from", {})
            where = ", ".join(f"{v} in {k}" for k, v in sources.items() if is_readout(v))
            lines.append(score_row(label) + f"  {where}")
    behaviour = result.get("behaviour") or {}
    if behaviour:
        lines.append("")
        lines.append("behaviour: mean return of the probed episodes (mean across runs, 95% interval)"
                     + (f"; every run on run {result['replay']}'s episodes" if result.get("replay") else ""))
        for g, b in behaviour.items():
            ci = f" [{b['ci'][0]:+.2f}, {b['ci'][1]:+.2f}]" if b.get("ci") else ""
            lines.append(f"  {g:<{width}}  {b['mean_return']:+.2f}{ci} (n={b['n']})")
    cells = result.get("contrasts") or []
    if cells:
        lines.append("")
        lines.append("contrasts: A's gain over its twin minus B's, paired by seed; p from a paired t-test, "
                     f"Holm-corrected over {sum(c['p'] is not None for c in cells)} tests")
        for c in cells:
            if c["p"] is None:
                lines.append(f"  {c['a']} - {c['b']}  {c['label']:<{lw}}  {c['mean']:+.3f} (n={c['n']}: untested)")
                continue
            mark = " *" if c["significant"] else ""
            lines.append(f"  {c['a']} - {c['b']}  {c['label']:<{lw}}  {c['mean']:+.3f} "
                         f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]  p={c['p']:.3g}  p_holm={c['p_holm']:.3g}{mark} "
                         f"(n={c['n']})")
        lines.append("* = significant after Holm's correction (p_holm < 0.05)")
    lines.append("")
    if result.get("hooks"):
        lines.append(f"scores are each run's best over the hooks matching {' '.join(result['hooks'])}")
    if result.get("replay"):
        lines.append(f"every network was recorded on the same episodes, run {result['replay']}'s, replayed action "
                     "for action (its own policy never acted)")
    lines.append(result["summary"])
    lines.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(lines)
