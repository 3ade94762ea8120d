"""Where trials run: worker processes on this machine, or tasks on a Ray cluster.

Both backends take a list of jobs and call ``on_result(job, result)`` in the calling
process as each trial finishes, in completion order. A trial whose worker dies is reported
as a failed trial (after a retry), never as the end of the sweep.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

try:
    import ray
except ImportError:  # the optional extra: pip install 'rl-lab[ray]'
    ray = None

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
    """A trial inside a Ray worker: one torch thread, then the ordinary pipeline."""
    worker_init(1)
    return run_trial(job)


def run_ray(jobs: list[Job], workers: int | None, address: str | None, on_result: OnResult) -> None:
    """Run ``jobs`` as Ray tasks (one CPU each): a local Ray started here, or the cluster at ``address``.

    ``workers`` caps the trials in flight (and the CPUs of a local Ray); with ``address`` and no
    cap, every trial is submitted and the cluster schedules them. Ray retries a task whose worker
    died once (``max_retries``); the runs directory must be on storage every node can reach.
    """
    if ray is None:
        raise LabError(f"--backend ray needs Ray, which is not installed: {RAY_HINT}")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(num_cpus=workers or default_workers(), include_dashboard=False, log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
            raise LabError(f"cannot {where}: {one_line(exc)}") from None
    try:
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
