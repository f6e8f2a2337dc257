"""``sparsetrain sweep --launcher submitit``: each run of a sweep as a cluster job, submitted with
submitit (Slurm, or its local executor).

The runs are the sweep's (validated, finished ones skipped before anything is submitted); each job
calls :func:`sparsetrain.experiments.sweep.run_one` on its config, so it trains in its idempotent
run directory, resumes a checkpoint a killed job left, and holds the run directory's lock. The
driver waits for the jobs and reports them like local runs; on Ctrl-C/SIGTERM it cancels the jobs
still queued or running (their last checkpoints stay) and rerunning the command continues.
submitit keeps each job's pickled call and its stdout/stderr in ``folder``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..config import RunConfig
from ..errors import ConfigError, first_line

CLUSTERS = ("auto", "slurm", "local", "debug")


def make_executor(folder: Path, cluster: str, params: Dict[str, Any], jobs: int):
    """A submitit executor; ``params`` go to ``update_parameters`` (``timeout_min``,
    ``slurm_partition``, ``gpus_per_node``, ...), ``jobs`` bounds a Slurm array's parallelism."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs submitit: pip install 'sparsetrain[cluster]'") from None
    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster must be one of {', '.join(CLUSTERS)}, got '{cluster}'")
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=None if cluster == "auto" else cluster)
        executor.update_parameters(**{"slurm_array_parallelism": jobs, **params}
                                   if executor.cluster == "slurm" else params)
    except (NameError, TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"submitit: {first_line(e)}") from None
    return executor


def run_jobs(todo: Sequence[RunConfig], executor, record: Callable[[Any, RunConfig], None],
             stop: Callable[[], Optional[int]], poll: float = 1.0) -> None:
    """Submit one job per config (a Slurm job array) and ``record(outcome_or_exception, cfg)``
    as each finishes."""
    from ..train.stop import StopRequested
    from .sweep import run_one

    with executor.batch():
        jobs = [executor.submit(run_one, cfg) for cfg in todo]
    pending = dict(zip(jobs, todo))
    while pending:
        signum = stop()
        if signum is not None:
            for job in pending:
                job.cancel(check=False)
            raise StopRequested(signum)
        for job in [j for j in pending if j.done()]:
            cfg = pending.pop(job)
            try:
                outcome = job.result()
            except Exception as e:  # the job failed outside run_one (killed, out of memory, requeue limit)
                outcome = e
            record(outcome, cfg)
        if pending:
            time.sleep(poll)
