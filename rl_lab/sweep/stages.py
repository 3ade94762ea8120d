"""What a worker does for one trial: run its pipeline stages, skipping those already done.

Everything here runs in a worker process (a local process pool or a Ray task), so the
entry point :func:`run_trial` takes and returns plain picklable data. A stage that fails
records its error and the stages that depend on it are marked ``skipped``; the exception
never leaves the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

import envs  # noqa: F401  (registers the lab/ ids in each worker)
from probes.activations import ActivationFile
from probes.errors import ProbeError
from probes.layout import SAELayout, probe_output_paths
from probes.linear import probe_file
from probes.results import ProbeResults, read_probe_results
from probes.sae.config import DEFAULT_ARCH, default_out_dir, default_width
from probes.sae.training import train_sae_on_file
from rl_lab.errors import LabError
from rl_lab.record import record_run
from rl_lab.runs import RunStore
from rl_lab.sweep.spec import NEEDS, Trial
from rl_lab.train import train

Job = dict[str, Any]
"""A trial as sent to a worker: ``trial`` (``Trial.to_dict()``), ``pipeline``, ``stages``
(options per stage), ``runs_dir``, ``sweep``, ``position`` (``"3/8"``)."""


def limit_torch_threads(n: int = 1) -> None:
    """Pin this worker process to ``n`` torch threads (workers share the machine's cores).

    ``rl_lab.train.train`` raises the thread count itself for a single run on a whole machine;
    inside a worker process that would oversubscribe the cores, so ``torch.set_num_threads``
    is capped at ``n`` for the life of this process.
    """
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    original = getattr(torch.set_num_threads, "__wrapped_original__", torch.set_num_threads)

    def capped(requested: int) -> None:
        original(max(1, min(int(requested), n)))

    capped.__wrapped_original__ = original  # type: ignore[attr-defined]
    torch.set_num_threads = capped  # type: ignore[assignment]
    original(n)


def _say(job: Job, message: str) -> None:
    sys.stderr.write(f"[sweep {job['sweep']}] {job['position']} {job['trial']['name']}: {message}\n")
    sys.stderr.flush()


def one_line(exc: BaseException) -> str:
    """An exception as one readable line (LabError/ProbeError messages as they are)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (LabError, ProbeError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- stages
def stage_train(job: Job, state: dict[str, Any]) -> dict[str, Any]:
    """Train the trial's run, resume it if it was cut short, or find it finished."""
    trial = Trial(index=0, **job["trial"])
    cfg = trial.train_config(job["stages"].get("train", {}))
    store = RunStore(job["runs_dir"])
    path = store.path_for(trial.name)
    resume: str | None = None
    if store.has_run(trial.name):
        run = store.get(trial.name)
        if run.status == "done" and int(run.info.get("steps_done") or 0) >= cfg.total_timesteps:
            _mark_sweep(run, job["sweep"], trial.condition)
            return {"cached": True, **_train_outputs(run)}
        if run.status == "running" and run.liveness == "alive":
            raise LabError(f"run {trial.name!r} is being trained by another process (pid {run.info.get('pid')})")
        if run.checkpoints():
            resume = trial.name
        else:  # cut short before its first checkpoint: nothing to continue from
            with run.lock():  # held by its process if that still trains it (on another host, too)
                pass
            shutil.rmtree(path)
    elif path.exists():
        shutil.rmtree(path)  # a directory without run.json is not a run (a crash inside create)
    if resume:
        _say(job, f"train resumes from step {store.get(resume).info.get('steps_done', 0)}")
    try:
        run = train(cfg, job["runs_dir"], name=None if resume else trial.name, resume=resume)
    except BaseException:
        if store.has_run(trial.name):
            _mark_sweep(store.get(trial.name), job["sweep"], trial.condition)
        raise
    _mark_sweep(run, job["sweep"], trial.condition)
    return {"resumed": bool(resume), **_train_outputs(run)}


def _mark_sweep(run: Any, sweep: str, condition: str) -> None:
    """Tag the run with its sweep (``sweep``) and condition (``sweep_condition``, for grouping)."""
    if run.info.get("sweep") != sweep or run.info.get("sweep_condition") != condition:
        run.update(sweep=sweep, sweep_condition=condition)


def _train_outputs(run: Any) -> dict[str, Any]:
    returns = [r["episode_return"] for r in run.metrics() if r.get("episode_return") is not None]
    return {"steps_done": int(run.info.get("steps_done") or 0),
            "final_return": float(returns[-1]) if returns else None}


def stage_record(job: Job, state: dict[str, Any]) -> dict[str, Any]:
    """Record the latest checkpoint (unless a complete recording of it exists)."""
    run = RunStore(job["runs_dir"]).get(job["trial"]["name"])
    target = run.activation_path(run.latest_checkpoint().stem)
    opts = job["stages"].get("record", {})
    cached = _complete_h5(target)
    if not cached:
        record_run(run.name, job["runs_dir"], checkpoint="latest", overwrite=target.exists(),
                   episodes=opts.get("episodes", 20), seed=opts.get("seed", 0),
                   deterministic=opts.get("deterministic", False))
    state["activations"] = target
    return {"cached": cached, "file": str(target), "eval_return": _episode_return(target)}


def _complete_h5(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as fh:
            return bool(fh.attrs.get("complete", False))
    except OSError:
        return False


def _episode_return(path: Path) -> float | None:
    """Mean undiscounted return of the recorded episodes."""
    with h5py.File(path, "r") as fh:
        reward = np.asarray(fh["steps/reward"][:], dtype=np.float64)
        episode = np.asarray(fh["steps/episode"][:])
    if reward.size == 0:
        return None
    sums = np.bincount(episode - episode.min(), weights=reward)
    present = np.bincount(episode - episode.min()) > 0
    return float(sums[present].mean())


def stage_probe(job: Job, state: dict[str, Any]) -> dict[str, Any]:
    """Linear probes of the recording into ``RUN/probes/<stem>.json`` (``probes.linear``)."""
    h5: Path = state["activations"]
    out_json, weights = probe_output_paths(h5)
    cached = out_json.exists()
    if cached:
        results = read_probe_results(out_json)
    else:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        doc = probe_file(h5, out_json=out_json, weights_path=weights, **job["stages"].get("probe", {}))
        results = ProbeResults.from_dict(doc)
    return {"cached": cached, "file": str(out_json), "records": [r.summary() for r in results.records]}


def stage_sae(job: Job, state: dict[str, Any]) -> dict[str, Any]:
    """A sparse autoencoder on one hook of the recording (``probes.sae``), in ``RUN/saes/``."""
    h5: Path = state["activations"]
    opts = dict(job["stages"].get("sae", {}))
    hook = opts.pop("hook")
    arch = opts.get("arch", DEFAULT_ARCH)
    width = opts.get("width")
    if width is None:
        with ActivationFile(h5) as af:
            width = default_width(af.hook_dim(hook))
    out_dir = default_out_dir(h5, hook, arch, width)
    sae = SAELayout(out_dir)
    # finished = metrics written and, when asked for (the default), the feature summary too
    cached = sae.metrics_path.exists() and (not opts.get("features", True) or sae.has_features())
    if cached:
        with open(sae.metrics_path) as fh:
            metrics = json.load(fh)
    else:
        # not finished: an SAE left there without its metrics or features is replaced (atomically)
        metrics = train_sae_on_file(h5, hook, out_dir=out_dir, progress=False, **{**opts, "overwrite": True})
    kept = {k: metrics[k] for k in metrics
            if isinstance(metrics[k], (int, float)) and not isinstance(metrics[k], bool)}
    return {"cached": cached, "dir": str(out_dir), "hook": hook, "metrics": kept}


STAGE_FUNCTIONS: dict[str, Callable[[Job, dict[str, Any]], dict[str, Any]]] = {
    "train": stage_train, "record": stage_record, "probe": stage_probe, "sae": stage_sae,
}


# --------------------------------------------------------------------------- the trial
def run_trial(job: Job) -> dict[str, Any]:
    """Run a trial's pipeline; returns ``{"name", "stages": {stage: {status, ...}}}``.

    Each stage entry has ``status`` (``done``, ``failed`` or ``skipped``), ``seconds``,
    ``error`` (one line or None) and the stage's outputs (``final_return``, ``records``, ...).
    """
    state: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    for stage in job["pipeline"]:
        need = NEEDS.get(stage)
        if need is not None and stages.get(need, {}).get("status") != "done":
            stages[stage] = {"status": "skipped", "error": f"stage {need!r} did not finish", "seconds": 0.0}
            _say(job, f"{stage} skipped ({need} did not finish)")
            continue
        _say(job, f"{stage} start")
        t0 = time.time()
        try:
            outputs = STAGE_FUNCTIONS[stage](job, state)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # one trial's failure must not stop the sweep
            if os.environ.get("RL_LAB_DEBUG"):
                traceback.print_exc()
            error = one_line(exc)
            stages[stage] = {"status": "failed", "error": error, "seconds": round(time.time() - t0, 2)}
            _say(job, f"{stage} failed after {time.time() - t0:.1f} s: {error}")
            continue
        seconds = round(time.time() - t0, 2)
        stages[stage] = {"status": "done", "error": None, "seconds": seconds, **outputs}
        note = " (already done)" if outputs.get("cached") else ""
        _say(job, f"{stage} done in {seconds:.1f} s{note}")
    return {"name": job["trial"]["name"], "stages": stages}


def worker_init(threads: int = 1) -> None:
    """Process-pool initializer: one torch thread, lab environments registered."""
    limit_torch_threads(threads)
