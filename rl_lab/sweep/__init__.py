"""Sweeps: environments x algorithms x seeds x hyperparameters, each trial a pipeline of stages.

``run_sweep(spec, runs_dir)`` runs every unfinished trial of a :class:`SweepSpec` (a local
process pool, or Ray), records each trial's stage statuses in ``RUNS_DIR/sweeps/<name>.json``
as it finishes, and ends with returns and probe results aggregated over seeds. Each trial is
an ordinary run directory whose ``run.json`` carries ``"sweep": <name>``. See ``docs/sweep.md``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from probes.layout import RunLayout, RunsDirLayout
from rl_lab.compare import compare
from rl_lab.errors import LabError
from rl_lab.runs import RunStore, now_iso, write_json_atomic
from rl_lab.sweep import backends
from rl_lab.sweep.spec import STAGES, SweepSpec, Trial, load_sweep, parse_assignment
from rl_lab.sweep.stats import aggregate_probes, aggregate_returns, aggregate_saes

__all__ = ["SweepSpec", "Trial", "load_sweep", "parse_assignment", "run_sweep", "read_record", "trial_job",
           "aggregate", "summary_line", "STAGES", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def read_record(runs_dir: Path | str, name: str) -> dict[str, Any] | None:
    """The sweep record (``RUNS_DIR/sweeps/<name>.json``), or None if this sweep never ran here."""
    path = RunsDirLayout(runs_dir).sweep_record(name)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabError(f"{path} is corrupt ({exc}); delete it to start the sweep's record afresh") from None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
        raise LabError(f"{path} is not a sweep record; delete it to start afresh")
    return data


def _trial_entry(spec: SweepSpec, trial: Trial, old: dict[str, Any] | None) -> dict[str, Any]:
    entry = {**trial.to_dict(), "fingerprint": spec.trial_fingerprint(trial), "status": "pending",
             "error": None, "stages": {s: {"status": "pending"} for s in spec.pipeline}}
    if old and old.get("fingerprint") == entry["fingerprint"]:
        entry.update(status=old.get("status", "pending"), error=old.get("error"),
                     stages=old.get("stages") or entry["stages"])
    return entry


def _finished(entry: dict[str, Any], pipeline: list[str], runs_dir: Path) -> bool:
    return (all(entry["stages"].get(s, {}).get("status") == "done" for s in pipeline)
            and RunLayout(RunsDirLayout(runs_dir).run_dir(entry["name"])).run_json.exists())


def trial_job(spec: SweepSpec, trial: Trial, runs_dir: Path, position: str) -> dict[str, Any]:
    """The job a worker runs for ``trial`` (``rl_lab.sweep.stages.run_trial``); ``position`` is ``"3/8"``."""
    return {"trial": trial.to_dict(), "pipeline": list(spec.pipeline),
            "stages": {s: dict(spec.stages.get(s, {})) for s in spec.pipeline},
            "runs_dir": str(runs_dir), "sweep": spec.name, "position": position}


def aggregate(trials: list[dict[str, Any]], runs_dir: Path | str | None = None) -> dict[str, Any]:
    """Returns, probe scores and SAE metrics per condition over seeds (bootstrap CIs).

    With ``runs_dir`` and probed trials, ``compare`` also holds ``rl_lab.compare.compare`` over
    the probed runs grouped by condition (``rl-lab compare ... --group-by sweep_condition``);
    when that is not possible (run directories out of reach), ``notes`` says why and the
    bootstrap rows under ``probes`` stand alone.
    """
    out: dict[str, Any] = {"returns": aggregate_returns(trials), "probes": aggregate_probes(trials),
                           "saes": aggregate_saes(trials), "compare": None, "notes": []}
    probed = [t["name"] for t in trials if (t.get("stages") or {}).get("probe", {}).get("status") == "done"]
    if probed and runs_dir is not None:
        try:
            out["compare"] = compare(probed, runs_dir, group_by="sweep_condition", write=False)
        except LabError as exc:
            out["notes"].append(f"rl_lab.compare could not compare the runs: {exc}")
    return out


def run_sweep(
    spec: SweepSpec,
    runs_dir: Path | str,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Run the unfinished trials of ``spec`` and return the sweep record (also written to disk).

    Parameters
    ----------
    spec:
        The validated sweep (``load_sweep``).
    runs_dir:
        Where the trials' run directories and ``sweeps/<name>.json`` live.
    backend:
        ``local`` (a process pool on this machine) or ``ray``.
    workers:
        Trials at once (default: the machine's cores for ``local`` and a local Ray; with
        ``address``: no cap, the cluster decides).
    address:
        A Ray cluster to join (``ray`` backend only); default: ``RAY_ADDRESS`` when set (as Ray
        users expect), else start Ray here. Every node must see ``runs_dir`` at the same path:
        the sweep checks this before its first trial.
    log:
        Receives the progress lines of this process (workers write theirs to stderr).
    """
    if backend not in backends.BACKENDS:
        raise LabError(f"unknown backend {backend!r} (choose from {', '.join(backends.BACKENDS)})")
    if address and backend != "ray":
        raise LabError("--address joins a Ray cluster; use it with --backend ray")
    if backend == "ray" and not backends.ray_available():
        raise LabError(f"--backend ray needs Ray, which is not installed: {backends.RAY_HINT}")
    joined = backends.ray_address(address) if backend == "ray" else None  # recorded: the cluster joined
    runs_dir = Path(runs_dir)
    RunStore(runs_dir).root.mkdir(parents=True, exist_ok=True)
    path = RunsDirLayout(runs_dir).sweep_record(spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_record(runs_dir, spec.name) or {}
    old_trials = {t.get("name"): t for t in old.get("trials", []) if isinstance(t, dict)}
    trials = spec.trials()
    entries = [_trial_entry(spec, t, old_trials.get(t.name)) for t in trials]
    by_name = {e["name"]: e for e in entries}
    todo = [t for t, e in zip(trials, entries) if not _finished(e, spec.pipeline, runs_dir)]
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": spec.name, "file": spec.file, "spec": spec.to_dict(),
        "created": old.get("created") or now_iso(), "updated": now_iso(), "status": "running",
        "backend": backend, "address": joined, "trials": entries, "aggregate": old.get("aggregate") or {},
        "summary": None,
    }
    write_json_atomic(path, record)
    skipped = len(trials) - len(todo)
    log(f"sweep {spec.name}: {len(trials)} trials ({skipped} already finished, {len(todo)} to run); "
        f"record: {path}")

    def on_result(job: dict[str, Any], result: dict[str, Any]) -> None:
        entry = by_name[result["name"]]
        entry["stages"] = result["stages"]
        errors = [f"{s}: {r['error']}" for s, r in result["stages"].items() if r.get("status") == "failed"]
        entry["status"] = "failed" if errors else "done"
        entry["error"] = errors[0] if errors else None
        entry["finished"] = now_iso()
        record["updated"] = now_iso()
        write_json_atomic(path, record)
        log(f"sweep {spec.name}: trial {entry['name']} {entry['status']}"
            + (f" ({entry['error']})" if errors else ""))

    t0 = time.time()
    jobs = [trial_job(spec, t, runs_dir, f"{i + 1}/{len(todo)}") for i, t in enumerate(todo)]
    try:
        if jobs and backend == "ray":
            backends.run_ray(jobs, workers, address, on_result, runs_dir=runs_dir)
        elif jobs:
            n = workers or backends.default_workers()
            extra = ("--backend ray" if backends.ray_available() else backends.RAY_HINT + " then --backend ray")
            log(f"sweep {spec.name}: local backend, {min(n, len(jobs))} worker processes on this machine "
                f"(Ray would add many machines and fault tolerance: {extra})")
            backends.run_local(jobs, n, on_result)
    except BaseException:
        record.update(status="interrupted", updated=now_iso())
        write_json_atomic(path, record)
        raise
    failed = [e for e in entries if e["status"] == "failed"]
    done = [e for e in entries if e["status"] == "done"]
    record["aggregate"] = aggregate(entries, runs_dir)
    record["status"] = "failed" if failed else "done"
    record["summary"] = {"trials": len(entries), "done": len(done), "failed": len(failed),
                         "ran": len(jobs), "seconds": round(time.time() - t0, 2)}
    record["updated"] = now_iso()
    write_json_atomic(path, record)
    return record


def summary_line(record: dict[str, Any], path: Path | None = None) -> str:
    """``sweep NAME: 3/4 trials done, 1 failed (first: ...)`` — the last line of ``rl-lab sweep``."""
    s = record.get("summary") or {}
    text = f"sweep {record['name']}: {s.get('done', 0)}/{s.get('trials', 0)} trials done"
    if s.get("failed"):
        first = next(e for e in record["trials"] if e["status"] == "failed")
        text += f", {s['failed']} failed (first: {first['name']}: {first['error']})"
    if path is not None:
        text += f"; record: {path}"
    return text
