"""The run store: one directory per run configuration, keyed by its hash; runs are idempotent.

Run directory (``out_dir/<data>-<model>-<method>-s<sparsity>-<hash>``): config.json,
checkpoint.pt, metrics.jsonl, summary.json (and tb/ with TensorBoard; ticket.pt, rounds.jsonl,
masks/ for lottery-ticket methods). A run with summary.json is finished and is not run again (a corrupt summary.json is
recomputed); one with checkpoint.pt resumes from it (open_lth keeps runs the same way). The
training itself is :class:`sparsetrain.train.trainer.Trainer`'s.

A process that trains in a run directory holds an exclusive lock on its ``.lock`` file (which
records the holder's PID, and is removed when it is done); the kernel releases the lock when the
process dies, however it dies. A
second process on the same run directory stops with :class:`~sparsetrain.errors.RunLockedError`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Union

from ..config import RunConfig, from_dict, run_hash, to_dict, validate
from ..errors import CheckpointError, ConfigError, RunLockedError
from ..train.checkpoint import atomic_write_text
from ..train.threads import default_threads, threads_for
from ..train.trainer import Trainer

__all__ = ["run_dir_for", "load_run_config", "prepare_run_dir", "finished_summary", "run_trainer", "train_run",
           "run_lock", "remove_partial_writes", "default_threads", "threads_for"]

#: the lock file inside a run directory
LOCK_NAME = ".lock"

log = logging.getLogger(__name__)


def run_dir_for(cfg: RunConfig) -> Path:
    """``out_dir/<data>-<model>-<method>-s<sparsity>-<hash>``: readable, and unique per config."""
    s = cfg.sparsity
    model = re.sub(r"[^A-Za-z0-9_.+-]", "_", cfg.model.name)  # "timm:resnet18" -> "timm_resnet18"
    return Path(cfg.out_dir) / f"{cfg.data.name}-{model}-{s.method}-s{s.sparsity:g}-{run_hash(cfg)}"


def _read_object(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``; None if it is unreadable, not JSON, not UTF-8 or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return None
    return data if isinstance(data, dict) else None


def _saved_config(run_dir: Path) -> Dict[str, Any]:
    """``run_dir``'s config.json as a dict; CheckpointError if it is corrupt."""
    data = _read_object(run_dir / "config.json")
    if data is None:
        raise CheckpointError(f"'{run_dir / 'config.json'}' is corrupt; delete the run directory '{run_dir}' "
                              "to start over")
    return data


def load_run_config(run_dir: Union[str, Path]) -> RunConfig:
    """The config saved in a run directory (for --resume)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a run directory (no config.json); pass the directory "
                              "that `sparsetrain train` created")
    data = _saved_config(Path(run_dir))
    data.pop("_hash", None)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create ``run_dir`` with config.json, or check that the one there is ``cfg``'s (same hash)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    want = {**to_dict(cfg), "_hash": run_hash(cfg)}
    if cfg_path.exists():
        if _saved_config(run_dir).get("_hash") != want["_hash"]:
            raise CheckpointError(f"run directory '{run_dir}' holds a different configuration; "
                                  "choose another out_dir or delete it")
    else:
        atomic_write_text(cfg_path, json.dumps(want, indent=2))


def finished_summary(run_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The summary of a finished run (its summary.json), None if it has not finished. A corrupt
    summary.json counts as not finished (with a warning): the run is resumed and the summary
    written again, so sweeps and reports never silently drop it."""
    done = Path(run_dir) / "summary.json"
    if not done.exists():
        return None
    summary = _read_object(done)
    if summary is None:
        log.warning("%s is corrupt; the run will be finished again to rewrite it", done)
    return summary


def _holder(lock_path: Path) -> str:
    """``process PID`` as recorded in the lock file, or ``another process``."""
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _make_run_dir(run_dir: Path) -> None:
    """``mkdir -p run_dir``; an out_dir that cannot hold it is a ConfigError."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"cannot create run directory '{run_dir}': a file is in the way; "
                          "choose another out_dir") from None
    except OSError as e:
        raise ConfigError(f"cannot create run directory '{run_dir}' ({e.strerror}); "
                          "choose a writable out_dir") from None


def _open_locked(path: Path) -> int:
    """Open ``path`` and take its exclusive lock; retried when the file was replaced meanwhile (the
    holder deletes it when it lets go, so a lock on a deleted file would lock nothing)."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"cannot write in run directory '{path.parent}' ({e.strerror}); "
                              "choose a writable out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"run directory '{path.parent}' is in use by {_holder(path)}; wait for it "
                                 "to finish or stop it, then rerun") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: Union[str, Path]) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the body: ``.lock`` holds
    this process's PID while it trains and is removed after. The kernel releases the lock when
    the process dies, however it dies. Raises RunLockedError naming the holder's PID."""
    run_dir = Path(run_dir)
    _make_run_dir(run_dir)
    path = run_dir / LOCK_NAME
    fd = _open_locked(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing the descriptor releases the lock


def remove_partial_writes(run_dir: Union[str, Path]) -> None:
    """Delete temporary files of atomic writes that a kill interrupted (``.NAME.*.tmp``); only
    safe while holding the run's lock."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        log.info("removing %s, left by an interrupted write", tmp)
        tmp.unlink(missing_ok=True)


def run_trainer(trainer: Trainer) -> Dict[str, Any]:
    """Run a built Trainer in its run directory: config.json first, summary.json at the end.
    The main process holds the run's lock throughout (under torchrun, rank 0 for all ranks)."""
    with run_lock(trainer.run_dir) if trainer.is_main else contextlib.nullcontext():
        done = finished_summary(trainer.run_dir)  # finished while this process waited or loaded data
        if done is not None:
            return {**done, "skipped": True}
        if trainer.is_main:
            remove_partial_writes(trainer.run_dir)
            prepare_run_dir(trainer.cfg, trainer.run_dir)
        summary = trainer.run()
        if trainer.is_main:
            atomic_write_text(trainer.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def train_run(cfg: RunConfig, run_dir: Optional[Union[str, Path]] = None,
              stop: Callable[[], Optional[int]] = lambda: None) -> Dict[str, Any]:
    """Build and run (or finish, or skip if finished) the run for ``cfg`` in ``run_dir``
    (default :func:`run_dir_for`). ``stop()`` returns the signal number of a pending stop
    request (see :mod:`sparsetrain.train.stop`); the run then checkpoints and raises
    StopRequested. A skipped run's summary has ``"skipped": True``."""
    run_dir = Path(run_dir or run_dir_for(cfg))
    done = finished_summary(run_dir)
    if done is not None:
        log.info("%s is finished; not running it again", run_dir)
        return {**done, "skipped": True}
    return run_trainer(Trainer(cfg, run_dir, stop))
