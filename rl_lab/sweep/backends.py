"""Where trials run: worker processes on this machine, or tasks on a Ray cluster.

Both backends take a list of jobs and call ``on_result(job, result)`` in the calling
process as each trial finishes, in completion order. A trial whose worker dies is reported
as a failed trial (after a retry), never as the end of the sweep.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

try:
    import ray
except ImportError:  # the optional extra: pip install 'rl-lab[ray]'
    ray = None

from probes.layout import RunsDirLayout
from rl_lab.errors import LabError
from rl_lab.sweep.stages import Job, one_line, run_trial, worker_init

OnResult = Callable[[Job, dict[str, Any]], None]
BACKENDS = ("local", "ray")
RAY_HINT = "pip install 'rl-lab[ray]'"
WORKER_RETRIES = 1
"""How many times a trial whose worker process died is started again."""


def crashed(job: Job, error: str) -> dict[str, Any]:
    """The result of a trial whose worker never returned: its first stage failed with ``error``."""
    first = job["pipeline"][0]
    stages = {first: {"status": "failed", "error": error, "seconds": 0.0}}
    for stage in job["pipeline"][1:]:
        stages[stage] = {"status": "skipped", "error": f"stage {first!r} did not finish", "seconds": 0.0}
    return {"name": job["trial"]["name"], "stages": stages}


def ray_available() -> bool:
    return ray is not None


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- local
PRELOAD = ["rl_lab.sweep.stages", "torch", "stable_baselines3", "envs", "rl_lab.train", "rl_lab.record"]
"""Modules the forkserver imports once, so that each worker starts without importing torch (or
TransformerLens, which ``rl_lab.record`` loads for the decision transformer's adapter) again."""


def _context() -> Any:
    """The forkserver context (modules preloaded), else spawn; never fork (torch + threads)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def run_local(jobs: list[Job], workers: int, on_result: OnResult) -> None:
    """Run ``jobs`` in a pool of ``workers`` fresh processes (forkserver/spawn, 1 torch thread)."""
    attempts = {id(job): 0 for job in jobs}
    pending = list(jobs)
    while pending:
        pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(pending))), mp_context=_context(),
                                   initializer=worker_init, initargs=(1,))
        futures: dict[Future[Any], Job] = {pool.submit(run_trial, job): job for job in pending}
        pending = []
        try:
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = futures[fut]
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        attempts[id(job)] += 1
                        if attempts[id(job)] <= WORKER_RETRIES:
                            pending.append(job)
                        else:
                            on_result(job, crashed(job, "the worker process died (killed or out of memory?)"))
                        continue
                    except Exception as exc:  # e.g. a job that could not be pickled
                        result = crashed(job, one_line(exc))
                    on_result(job, result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------- ray
def _ray_trial(job: Job) -> dict[str, Any]:
    """A trial inside a Ray worker: one torch thread, then the ordinary pipeline.

    When Ray retries the task (its worker died), the train stage finds the run cut short and
    resumes it from its last checkpoint (``rl_lab.sweep.stages.stage_train``).
    """
    worker_init(1)
    return run_trial(job)


def _marker_writer() -> Callable[[str, str], str]:
    """The function a Ray task runs to write a marker: made here, so that Ray ships it by value and
    the worker imports only the standard library (a function of this module would make every node
    import the lab — torch, TransformerLens — first: minutes on a loaded machine)."""

    def write_marker(path: str, token: str) -> str:
        """Write ``token`` to ``path`` (in the runs directory); return this node's name."""
        import os as _os
        import socket as _socket

        _os.makedirs(_os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(token)
        return _socket.gethostname()

    return write_marker


def ray_address(address: str | None) -> str | None:
    """The cluster to join: ``--address``, else ``RAY_ADDRESS`` (as ``ray.init`` reads it), else None
    (start Ray on this machine). ``local`` starts a new local Ray even when ``RAY_ADDRESS`` is set."""
    chosen = address or os.environ.get("RAY_ADDRESS") or None
    return None if chosen == "local" else chosen


CHECK_TIMEOUT_S = 300
"""How long ``check_shared_runs_dir`` waits for each node's marker task (a cold worker is slow)."""


def check_shared_runs_dir(runs_dir: Path | str) -> list[str]:
    """Fail with one line unless every Ray node with CPUs sees ``runs_dir`` (Ray initialised).

    One task pinned to each alive node writes a marker file in the runs directory; the driver
    reads every marker back. A node whose marker does not arrive writes to a directory the
    driver cannot see (not shared, or mounted elsewhere). Returns the nodes' host names.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    layout = RunsDirLayout(runs_dir)
    nodes = [n for n in ray.nodes() if n.get("Alive") and (n.get("Resources") or {}).get("CPU", 0) > 0]
    writer = ray.remote(num_cpus=0, max_retries=0)(_marker_writer())
    tokens = {n["NodeID"]: uuid.uuid4().hex for n in nodes}
    paths = {nid: layout.shared_marker(token) for nid, token in tokens.items()}
    refs = {writer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False))
            .remote(str(paths[nid].resolve()), tokens[nid]): nid for nid in tokens}
    where = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    hosts: list[str] = []
    missing: list[str] = []
    silent: list[str] = []
    try:
        for ref, nid in refs.items():
            try:
                hosts.append(ray.get(ref, timeout=CHECK_TIMEOUT_S))  # a cold worker on a loaded node is slow
            except ray.exceptions.GetTimeoutError:  # no answer: says nothing about the directory
                silent.append(where[nid])
                continue
            except Exception as exc:  # the node could not write there at all
                cause = getattr(exc, "cause", None)
                missing.append(f"{where[nid]} ({one_line(cause if isinstance(cause, BaseException) else exc)})")
                continue
            try:
                ok = paths[nid].read_text() == tokens[nid]
            except OSError:
                ok = False
            if not ok:
                missing.append(where[nid])
    finally:
        for path in paths.values():
            try:
                path.unlink(missing_ok=True)
            except OSError:  # not a directory this host can write either
                pass
    if silent and not missing:
        raise LabError(f"Ray node(s) {', '.join(silent)} did not run the shared-runs-directory check within "
                       f"{CHECK_TIMEOUT_S} s (workers too slow to start on a loaded machine?): try again")
    if missing:
        raise LabError(f"the runs directory {Path(runs_dir).resolve()} is not shared with Ray node(s) "
                       f"{', '.join(missing)}: put it on storage every node mounts at the same path")
    return hosts


def run_ray(jobs: list[Job], workers: int | None, address: str | None, on_result: OnResult,
            runs_dir: Path | str | None = None) -> None:
    """Run ``jobs`` as Ray tasks (one CPU each): a local Ray started here, or the cluster at ``address``.

    ``address`` (else ``RAY_ADDRESS``; see :func:`ray_address`) joins a running cluster; without
    either, Ray starts on this machine with ``workers`` CPUs. ``workers`` caps the trials in
    flight; joining a cluster with no cap, every trial is submitted and the cluster schedules
    them. Before the first trial, :func:`check_shared_runs_dir` proves that every node sees
    ``runs_dir``. Ray retries a task whose worker died once (``max_retries``), and the retried
    trial resumes its run from the last checkpoint.
    """
    if ray is None:
        raise LabError(f"--backend ray needs Ray, which is not installed: {RAY_HINT}")
    address = ray_address(address)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(address="local", num_cpus=workers or default_workers(), include_dashboard=False,
                         log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
            raise LabError(f"cannot {where}: {one_line(exc)}") from None
    try:
        if runs_dir is not None:
            check_shared_runs_dir(runs_dir)
        task = ray.remote(num_cpus=1, max_retries=WORKER_RETRIES)(_ray_trial)
        cap = workers if workers else len(jobs)
        queue = list(jobs)
        in_flight: dict[Any, Job] = {}
        while queue or in_flight:
            while queue and len(in_flight) < cap:
                job = queue.pop(0)
                in_flight[task.remote(job)] = job
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                job = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # RayTaskError, WorkerCrashedError, ...
                    cause = getattr(exc, "cause", None)
                    result = crashed(job, one_line(cause if isinstance(cause, BaseException) else exc))
                on_result(job, result)
    except BaseException:
        if started_here:
            ray.shutdown()
        raise
    if started_here:
        ray.shutdown()
