"""Sweeps: a grid of run configurations, expanded, validated, then run with a bound on parallelism.

A sweep file is an ordinary config file (TOML/YAML/JSON) with two optional extra entries:

* ``grid``: a table of dotted config key -> list of values; the sweep is their Cartesian product,
  e.g. ``"sparsity.method" = ["static", "set", "rigl"]`` and ``seed = [0, 1, 2]``.
* ``variants``: a list of tables of dotted key -> value; one more axis whose points set several
  keys together (e.g. Small-Dense = ``{"sparsity.method" = "dense", "model.width" = 0.33}``);
  a variant's keys override grid axes, and points that end up identical run once.

Every point is validated (config keys and types, method options, model and dataset names) before
the first run starts. Runs go through :func:`sparsetrain.experiments.run_store.train_run`, so a sweep is
idempotent: finished runs (``summary.json``) are skipped and interrupted ones resume from
``checkpoint.pt``. Runs execute in worker processes (at most ``jobs`` at once, each with
``max(1, cores // jobs)`` torch threads, and one for small models as the CLI's train command
chooses: :func:`~sparsetrain.train.threads.threads_for`); a failing run is recorded and the sweep
goes on.

Workers never outlive the sweep: each asks the kernel for SIGTERM when its parent dies (Linux
``PR_SET_PDEATHSIG``) and also watches its parent's PID once a second. On SIGTERM or SIGINT a
worker that is training finishes its step, checkpoints and stops; an idle one exits at once. A
stop request to the sweep itself (``stop``) is passed on the same way. Each run holds its run
directory's lock, so a rerun never trains a run that a leftover process still trains.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import RunConfig, apply_override, load_config, parse_value, read_file
from ..errors import ConfigError

log = logging.getLogger(__name__)

Grid = Dict[str, List[Any]]
Variant = Dict[str, Any]


# --- grid specification -----------------------------------------------------------------------
@dataclass
class SweepSpec:
    """A base config (nested dict), grid axes (dotted key -> values) and optional variants."""

    base: Dict[str, Any] = field(default_factory=dict)
    grid: Grid = field(default_factory=dict)
    variants: List[Variant] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of grid points (before duplicates are merged)."""
        n = max(1, len(self.variants))
        for values in self.grid.values():
            n *= len(values)
        return n


def _flatten_grid(table: Mapping[str, Any], prefix: str = "") -> Grid:
    """``{"sparsity": {"method": [...]}}`` and ``{"sparsity.method": [...]}`` both become
    ``{"sparsity.method": [...]}``; every leaf must be a non-empty list."""
    out: Grid = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_grid(value, name + "."))
        elif isinstance(value, (list, tuple)) and len(value) > 0:
            out[name] = list(value)
        else:
            raise ConfigError(f"grid entry '{name}' must be a non-empty list of values, got {value!r}")
    return out


def _check_variants(variants: Any) -> List[Variant]:
    if not isinstance(variants, (list, tuple)) or not all(isinstance(v, Mapping) for v in variants):
        raise ConfigError("'variants' must be a list of tables of key = value, "
                          "e.g. [{\"sparsity.method\" = \"dense\", \"model.width\" = 0.5}]")
    return [dict(v) for v in variants]


def read_sweep_file(path: str | Path) -> SweepSpec:
    """Read a sweep (or plain config) file: its ``grid`` and ``variants`` entries become axes,
    everything else is the base config."""
    data = read_file(path)
    grid = _flatten_grid(data.pop("grid", {}) or {})
    variants = _check_variants(data.pop("variants", []) or [])
    return SweepSpec(base=data, grid=grid, variants=variants)


def parse_grid_flag(text: str) -> Tuple[str, List[Any]]:
    """``--grid key=v1,v2,v3`` (each value parsed like ``--set``), or ``key=[JSON list]``."""
    if "=" not in text:
        raise ConfigError(f"--grid expects key=v1,v2 (e.g. seed=0,1,2), got '{text}'")
    key, values = (s.strip() for s in text.split("=", 1))
    if not key:
        raise ConfigError(f"--grid got an empty key in '{text}'")
    if values.startswith("["):
        parsed = parse_value(values)
        if not isinstance(parsed, list):
            raise ConfigError(f"--grid {key}: '{values}' is not a JSON list")
        items = parsed
    else:
        items = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"--grid {key} has no values; give at least one (key=v1,v2)")
    return key, items


def build_spec(path: Optional[str] = None, grid_flags: Sequence[str] = (),
               overrides: Sequence[str] = ()) -> SweepSpec:
    """File (optional) + ``--grid`` axes (added or replacing the file's) + ``--set`` base overrides.
    A key that is both ``--set`` and a grid axis is an error (it would be ambiguous)."""
    spec = read_sweep_file(path) if path else SweepSpec()
    for flag in grid_flags:
        key, values = parse_grid_flag(flag)
        spec.grid[key] = values
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if key in spec.grid:
            raise ConfigError(f"'{key}' is both --set and a grid axis; drop one of them")
        apply_override(spec.base, assignment)
    return spec


# --- expansion and validation ---------------------------------------------------------------
def _assign(data: Dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` to an already-parsed ``value`` (same rules as ``--set``)."""
    apply_override(data, f"{key}={json.dumps(value)}")


def grid_points(spec: SweepSpec) -> List[Dict[str, Any]]:
    """Every point as {dotted key: value}, in grid order (the last axis varies fastest). A
    variant's keys win over grid axes (a variant is a fixed combination, e.g. dense at
    sparsity 0); points that become identical are merged by :func:`expand`."""
    keys = list(spec.grid)
    variants = spec.variants or [{}]
    points = []
    for variant in variants:
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            points.append({**dict(zip(keys, combo)), **dict(variant)})
    return points


def check_runnable(cfg: RunConfig) -> None:
    """Checks that need the registries but no data: method (and its options), model (and its
    options), dataset name. Raises ConfigError."""
    from ..data import get_dataset
    from ..models import check_model
    from ..registry import METHODS
    from .. import sparsity  # noqa: F401  (registers the built-in methods)

    METHODS.get(cfg.sparsity.method)(**cfg.sparsity.options)
    check_model(cfg.model.name, cfg.model.options)
    get_dataset(cfg.data.name)


def expand(spec: SweepSpec, check: bool = True) -> List[RunConfig]:
    """All run configurations of ``spec``, validated, duplicates (same run directory) merged.

    A ConfigError names the grid point that failed, so nothing runs until every point is valid.
    """
    from .run_store import run_dir_for

    configs, seen = [], set()
    for point in grid_points(spec):
        data = copy.deepcopy(spec.base)
        try:
            for key, value in point.items():
                _assign(data, key, value)
            cfg = load_config(base=data)
            if check:
                check_runnable(cfg)
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in point.items()) or "base config"
            raise ConfigError(f"sweep point [{where}]: {e}") from None
        run_dir = run_dir_for(cfg)
        if run_dir in seen:
            log.info("grid point %s repeats run %s; running it once", point, run_dir.name)
            continue
        seen.add(run_dir)
        configs.append(cfg)
    return configs


# --- status of runs -----------------------------------------------------------------------------
def run_status(cfg: RunConfig) -> str:
    """``finished`` (a readable summary.json), ``partial`` (checkpoint.pt, resumes) or ``new``."""
    from .run_store import finished_summary, run_dir_for

    d = run_dir_for(cfg)
    if finished_summary(d) is not None:
        return "finished"
    return "partial" if (d / "checkpoint.pt").exists() else "new"


@dataclass
class RunOutcome:
    """What happened to one run of a sweep."""

    run_dir: str
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    resumed: bool = False
    test_metric: Optional[str] = None
    error: Optional[str] = None


@dataclass
class SweepResult:
    """Outcomes of every run, in the order they finished."""

    outcomes: List[RunOutcome] = field(default_factory=list)

    def of(self, status: str) -> List[RunOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def counts(self) -> Dict[str, int]:
        return {s: len(self.of(s)) for s in ("done", "skipped", "failed")}

    @property
    def ok(self) -> bool:
        return not self.of("failed")


# --- worker side ----------------------------------------------------------------------------
def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_signals():
    """A worker process's stop handling: while a run trains (``busy``), SIGTERM/SIGINT ask it to
    checkpoint and stop (:class:`~sparsetrain.train.stop.StopSignals`); an idle worker exits at
    once."""
    from ..train.stop import StopSignals, exit_code

    class WorkerSignals(StopSignals):
        busy = False

        def _handle(self, signum: int, frame) -> None:
            if not self.busy:
                os._exit(exit_code(signum))
            super()._handle(signum, frame)

    return WorkerSignals()


#: this worker process's stop handling (set by :func:`_init_worker`; None outside workers)
_WORKER_STOP = None


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies: the kernel's parent-death signal on Linux, and
    a watchdog thread that polls the parent's PID (other systems, or a parent thread exiting)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(threads: int, parent: int) -> None:
    """Runs once in each worker process: bound torch's intra-op threads so ``jobs`` workers
    together use about the machine's cores; stop handling; die with the sweep process ``parent``."""
    global _WORKER_STOP
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _WORKER_STOP = _worker_signals().__enter__()
    _die_with_parent(parent)


def _headline(summary: Mapping[str, Any]) -> Optional[str]:
    test = summary.get("final", {}).get("test", {})
    if "perplexity" in test:
        return f"test ppl {test['perplexity']:.2f}"
    if "accuracy" in test:
        return f"test acc {test['accuracy']:.4f}"
    return None


def run_one(cfg: RunConfig) -> RunOutcome:
    """Train one run to completion (resuming if it has a checkpoint); never raises: a failure is
    returned as an outcome with the error's last lines."""
    from ..train.stop import StopRequested, exit_code
    from .run_store import default_threads, run_dir_for, train_run

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress="off"))
    run_dir, t0 = run_dir_for(cfg), time.time()
    resumed = (run_dir / "checkpoint.pt").exists()
    stop = _WORKER_STOP
    if stop is not None and stop.requested() is not None:  # stopping: take no new run
        os._exit(exit_code(stop.requested()))
    try:
        if stop is not None:
            stop.busy = True
        with default_threads(cfg):  # one thread for small models, as the CLI's train command
            summary = train_run(cfg, stop=stop.requested if stop is not None else lambda: None)
    except StopRequested as e:
        return RunOutcome(str(run_dir), "stopped", time.time() - t0, resumed, error=str(e))
    except Exception as e:  # one bad run must not end the sweep; the message is kept
        tail = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
        log.debug("run %s failed:\n%s", run_dir, traceback.format_exc())
        return RunOutcome(str(run_dir), "failed", time.time() - t0, resumed, error=tail)
    finally:
        if stop is not None:
            stop.busy = False
    status = "skipped" if summary.get("skipped") else "done"  # finished by another process meanwhile
    return RunOutcome(str(run_dir), status, time.time() - t0, resumed, _headline(summary))


# --- driver side ----------------------------------------------------------------------------
class ProgressView:
    """The sweep's progress on stderr: one line per finished run, and on a terminal an overall
    tqdm bar with done/skipped/failed counts (a log file gets the plain lines with the counts in
    them, no bar redraws). ``enabled=False`` makes it silent (library default)."""

    def __init__(self, total: int, enabled: bool):
        self.bar, self.enabled, self.total, self.seen = None, enabled, total, 0
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)

    def update(self, outcome: RunOutcome, result: SweepResult) -> None:
        if not self.enabled:
            return
        self.seen += 1
        name = Path(outcome.run_dir).name
        detail = outcome.error if outcome.status in ("failed", "stopped") else (outcome.test_metric or "")
        extra = " (resumed)" if outcome.resumed and outcome.status == "done" else ""
        timing = f"{outcome.seconds:7.1f}s" if outcome.status != "skipped" else " " * 8
        line = f"{outcome.status:>7}{extra} {timing}  {name}  {detail}"
        if self.bar is None:
            counts = ", ".join(f"{v} {k}" for k, v in result.counts.items())
            print(f"sweep [{self.seen}/{self.total}; {counts}] {line.strip()}", file=sys.stderr, flush=True)
            return
        self.bar.write(line)
        self.bar.set_postfix(result.counts, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _skip_finished(configs: Sequence[RunConfig], result: SweepResult, view: ProgressView) -> List[RunConfig]:
    from .run_store import run_dir_for

    todo = []
    for cfg in configs:
        if run_status(cfg) == "finished":
            outcome = RunOutcome(str(run_dir_for(cfg)), "skipped")
            result.outcomes.append(outcome)
            view.update(outcome, result)
        else:
            todo.append(cfg)
    return todo


def _worker_died(cfg: RunConfig, err: BaseException) -> RunOutcome:
    from .run_store import run_dir_for

    return RunOutcome(str(run_dir_for(cfg)), "failed", error=f"worker process died: {type(err).__name__}: {err}")


def run_sweep(configs: Sequence[RunConfig], jobs: int = 1, progress: bool = False,
              threads: Optional[int] = None,
              on_outcome: Optional[Callable[[RunOutcome], None]] = None,
              stop: Callable[[], Optional[int]] = lambda: None, executor=None) -> SweepResult:
    """Run ``configs`` in at most ``jobs`` worker processes; skip finished runs.

    Args:
        configs: validated run configurations (see :func:`expand`).
        jobs: worker processes at once (each runs one training run at a time).
        progress: show the progress view on stderr.
        threads: torch threads per worker; default ``max(1, cores // jobs)``.
        on_outcome: called in this process with each run's outcome as it arrives.
        stop: the signal number of a pending stop request, or None: on a request the workers
            checkpoint their runs and stop, queued runs are dropped, and StopRequested is raised.
        executor: a submitit executor (:mod:`.submitit_launcher`): each run becomes a job of it
            instead of a local worker process.

    Returns the :class:`SweepResult`; failures are in it, never raised.
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    result = SweepResult()
    view = ProgressView(len(configs), progress)
    try:
        todo = _skip_finished(configs, result, view)
        if todo and executor is not None:
            from .submitit_launcher import run_jobs
            run_jobs(todo, executor, lambda outcome, cfg: _record_outcome(outcome, cfg, result, view, on_outcome),
                     stop)
        elif todo:
            threads = threads or max(1, available_cores() // jobs)
            _run_pool(todo, jobs, threads, result, view, on_outcome, stop)
    finally:
        view.close()
    return result


def _stop_workers(signum: int, grace: float = 120.0) -> None:
    """Pass a stop request on to this process's workers and wait (at most ``grace`` seconds) while
    they checkpoint; kill those still alive after it."""
    children = multiprocessing.active_children()
    for p in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signum)
    deadline = time.monotonic() + grace
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


def _run_pool(todo: Sequence[RunConfig], jobs: int, threads: int, result: SweepResult,
              view: ProgressView, on_outcome, stop: Callable[[], Optional[int]]) -> None:
    from ..train.stop import StopRequested

    # spawn, not fork: a forked child of a process that already ran torch can deadlock in OpenMP
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx,
                             initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(run_one, cfg): cfg for cfg in todo}
        pending = set(futures)
        while pending:
            signum = stop()
            if signum is not None:
                pool.shutdown(wait=False, cancel_futures=True)
                _stop_workers(signum)
                raise StopRequested(signum)
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                _record(fut, futures[fut], result, view, on_outcome)


def _record(fut, cfg: RunConfig, result: SweepResult, view: ProgressView, on_outcome) -> None:
    """Add a finished future's outcome to ``result``, the view and the callback."""
    try:
        outcome = fut.result()
    except Exception as e:  # BrokenProcessPool: a worker was killed (OOM, signal)
        outcome = e
    _record_outcome(outcome, cfg, result, view, on_outcome)


def _record_outcome(outcome, cfg: RunConfig, result: SweepResult, view: ProgressView, on_outcome) -> None:
    """Add a run's outcome (or the exception that ended its worker or job) to ``result``, the
    view and the callback."""
    if isinstance(outcome, BaseException):
        outcome = _worker_died(cfg, outcome)
    result.outcomes.append(outcome)
    view.update(outcome, result)
    if on_outcome is not None:
        on_outcome(outcome)


def sweep(path: Optional[str] = None, grid: Sequence[str] = (), overrides: Sequence[str] = (),
          jobs: int = 1, progress: bool = False) -> SweepResult:
    """Expand (file + ``--grid`` + ``--set``), validate every point, then run the sweep."""
    configs = expand(build_spec(path, grid, overrides))
    log.info("sweep: %d runs, %d jobs", len(configs), jobs)
    return run_sweep(configs, jobs=jobs, progress=progress)


def describe(configs: Sequence[RunConfig]) -> List[Tuple[str, str]]:
    """(status, run directory) of every config, for ``--dry-run``."""
    from .run_store import run_dir_for

    return [(run_status(c), str(run_dir_for(c))) for c in configs]


__all__ = ["SweepSpec", "SweepResult", "RunOutcome", "read_sweep_file", "parse_grid_flag", "build_spec",
           "grid_points", "expand", "check_runnable", "run_status", "run_one", "run_sweep", "sweep",
           "describe"]
