"""User callbacks (``train.callbacks``) and experiment trackers (``train.trackers``).

A user callback is named ``"package.module:Class"``; the class is built with no arguments and
any of its ``on_start(s)``, ``on_step_end(s)``, ``on_end(s)`` methods is called with the loop
state (:class:`~sparsetrain.train.loop.LoopState`: step, model, optimizer, engine, loss, and
``extra["last_eval"]``, the latest metrics.jsonl record).

A tracker receives each metrics.jsonl record as it is written (its numbers; per-layer densities
as ``layer_density/<weight name>``, the last update's numbers as ``last_update/<key>``) plus the
FLOPs of the run so far (``flops/train_flops``, ``flops/inference_flops_ratio``, ...; see
docs/flops.md), on the main process. ``wandb`` honours WANDB_MODE (``offline``), WANDB_DIR and
WANDB_PROJECT (default ``sparsetrain``) and resumes the W&B run of a resumed run directory;
``mlflow`` logs to MLFLOW_TRACKING_URI (a local ``mlruns`` store by default) under
MLFLOW_EXPERIMENT_NAME (default ``sparsetrain``), one MLflow run per session.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from ..errors import ConfigError, first_line
from ..registry import load_object
from ..sparsity.run import Callback

HOOKS = ("on_start", "on_step_end", "on_end")


class UserCallback(Callback):
    """Calls the hooks that the user's object has."""

    def __init__(self, obj: Any, spec: str):
        self.obj, self.spec = obj, spec

    def on_start(self, s) -> None:
        self._call("on_start", s)

    def on_step_end(self, s) -> None:
        self._call("on_step_end", s)

    def on_end(self, s) -> None:
        self._call("on_end", s)

    def _call(self, hook: str, s) -> None:
        fn = getattr(self.obj, hook, None)
        if fn is not None:
            fn(s)


def build_user_callbacks(specs: Sequence[str]) -> List[UserCallback]:
    out = []
    for spec in specs:
        cls = load_object(spec, "train.callbacks entry")
        try:
            obj = cls()
        except TypeError as e:
            raise ConfigError(f"train.callbacks entry '{spec}' must be a class built with no arguments "
                              f"({first_line(e)})") from None
        if not any(callable(getattr(obj, h, None)) for h in HOOKS):
            raise ConfigError(f"train.callbacks entry '{spec}' has none of the hooks {', '.join(HOOKS)}")
        out.append(UserCallback(obj, spec))
    return out


def scalars(record: Dict[str, Any], flops: Dict[str, Any]) -> Dict[str, float]:
    """The numbers of a metrics.jsonl record, nested tables flattened as ``key/sub``, plus FLOPs."""
    out: Dict[str, float] = {}
    for k, v in record.items():
        if k == "step":
            continue
        if isinstance(v, dict):
            out.update({f"{k}/{n}": float(x) for n, x in v.items() if _number(x)})
        elif _number(v):
            out[k] = float(v)
    out.update({f"flops/{k}": float(v) for k, v in flops.items() if _number(v)})
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Tracker(Callback):
    """Sends every new evaluation record to a tracker (subclasses: ``start``, ``log``, ``finish``)."""

    def __init__(self, run_dir: Path, config: Dict[str, Any], flops: Callable[[], Dict[str, Any]]):
        self.run_dir, self.config, self.flops = Path(run_dir), config, flops
        self._seen = None
        self.start()

    def on_step_end(self, s) -> None:
        ev = s.extra.get("last_eval")
        if ev and ev["step"] != self._seen:
            self._seen = ev["step"]
            self.log(scalars(ev, self.flops()), int(ev["step"]))

    def on_end(self, s) -> None:
        self.finish()

    def start(self) -> None: ...

    def log(self, values: Dict[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class WandbTracker(Tracker):
    def start(self) -> None:
        import wandb
        # one W&B run per run directory: a resumed run continues it
        run_id = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sparsetrain"), name=self.run_dir.name,
                              id=run_id, resume="allow", config=self.config,
                              dir=os.environ.get("WANDB_DIR") or str(self.run_dir))

    def log(self, values: Dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        self.run.finish()


class MLflowTracker(Tracker):
    def start(self) -> None:
        import mlflow
        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "sparsetrain"))
        self.run = mlflow.start_run(run_name=self.run_dir.name)
        params = {k: str(v)[:500] for k, v in _flat(self.config).items()}
        mlflow.log_params(params)

    def log(self, values: Dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def finish(self) -> None:
        self.mlflow.end_run()


TRACKERS = {"wandb": (WandbTracker, "wandb"), "mlflow": (MLflowTracker, "mlflow")}


def check_trackers(names: Sequence[str]) -> None:
    """Unknown names and missing packages are ConfigErrors (before anything runs)."""
    import importlib.util
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker '{name}' in train.trackers; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name][1]) is None:
            raise ConfigError(f"train.trackers={name} needs the {TRACKERS[name][1]} package: "
                              "pip install 'sparsetrain[trackers]'")


def build_trackers(names: Sequence[str], run_dir: Path, config: Dict[str, Any],
                   flops: Callable[[], Dict[str, Any]]) -> List[Tracker]:
    check_trackers(names)
    return [TRACKERS[name][0](run_dir, config, flops) for name in names]
